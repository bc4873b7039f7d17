// SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause
/*
 * udpflow: UDP bytes and packets per (cgroup, local, remote) pair, summed in the kernel.
 *
 * cgroup_skb programs attached to the cgroup v2 root see every packet of every socket on the
 * host, in every network namespace, with the socket's cgroup: egress before fragmentation,
 * ingress after reassembly, so a datagram counts once whatever the MTU. They never drop a
 * packet (return 1). The collector reads and empties the inactive map every interval.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include "common.bpf.h"
#include "udpflow.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

struct flows {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct udpflow_key);
	__type(value, struct udpflow_value);
};

/* Two generations: programs add to flows[gen], the collector drains the other one. */
struct flows flows0 SEC(".maps");
struct flows flows1 SEC(".maps");

/* gen[0]: which map the programs write now (0 or 1); written by the collector. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} gen SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, UDPFLOW_CTR_MAX);
	__type(key, __u32);
	__type(value, __u64);
} udp_counters SEC(".maps");

static __always_inline void count(__u32 idx)
{
	counter_inc(&udp_counters, idx);
}

static __always_inline int account(struct __sk_buff *skb, bool egress)
{
	struct udpflow_key key = {};
	struct udpflow_value *value, fresh = {};
	struct l3 ip = {};
	__u32 zero = 0, *g, l4, payload_off;
	__u16 sport, dport;
	bool later_fragment;
	__u8 protocol;
	void *map;
	int rc;

	/* Most packets are not UDP (every TCP segment passes here too): decide from the
	 * linear header in place whenever it is there. A non-first fragment has no UDP
	 * header (only seen if not reassembled). */
	rc = l3_peek(skb, &protocol, &l4, &later_fragment);
	if (rc == 0 || (rc > 0 && (protocol != IPPROTO_UDP || later_fragment)))
		return 1;
	if (l3_read(skb, &ip) <= 0 || ip.protocol != IPPROTO_UDP || ip.later_fragment)
		return 1;
	key.family = ip.family;
	__builtin_memcpy(egress ? key.local : key.remote, ip.saddr, sizeof(key.local));
	__builtin_memcpy(egress ? key.remote : key.local, ip.daddr, sizeof(key.local));
	if (l4_read(skb, &ip, &sport, &dport, &payload_off))
		return 1;
	key.local_port = egress ? sport : dport;
	key.remote_port = egress ? dport : sport;
	key.cgroup_id = bpf_skb_cgroup_id(skb);

	g = bpf_map_lookup_elem(&gen, &zero);
	map = (g && *g) ? (void *)&flows1 : (void *)&flows0;
	value = bpf_map_lookup_elem(map, &key);
	if (!value) {
		/* Two CPUs may race to create it: NOEXIST lets one win, the other adds to it. */
		bpf_map_update_elem(map, &key, &fresh, BPF_NOEXIST);
		value = bpf_map_lookup_elem(map, &key);
		if (!value) {
			count(UDPFLOW_CTR_MAP_FULL);
			return 1;
		}
	}
	if (egress) {
		__sync_fetch_and_add(&value->bytes_out, skb->len);
		__sync_fetch_and_add(&value->packets_out, 1);
	} else {
		__sync_fetch_and_add(&value->bytes_in, skb->len);
		__sync_fetch_and_add(&value->packets_in, 1);
	}
	count(UDPFLOW_CTR_PACKETS);
	return 1;
}

SEC("cgroup_skb/egress")
int udp_egress(struct __sk_buff *skb)
{
	return account(skb, true);
}

SEC("cgroup_skb/ingress")
int udp_ingress(struct __sk_buff *skb)
{
	return account(skb, false);
}
