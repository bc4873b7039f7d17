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
#include <bpf/bpf_endian.h>
#include "udpflow.h"

#define AF_INET 2
#define AF_INET6 10
#define ETH_P_IP 0x0800
#define ETH_P_IPV6 0x86DD

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
	__u64 *value = bpf_map_lookup_elem(&udp_counters, &idx);

	if (value)
		__sync_fetch_and_add(value, 1);
}

static __always_inline int account(struct __sk_buff *skb, bool egress)
{
	struct udpflow_key key = {};
	struct udpflow_value *value, fresh = {};
	struct udphdr udp;
	__u32 zero = 0, *g;
	__u16 sport, dport;
	__u32 l4;
	void *map;

	/* Most packets are not UDP (every TCP segment passes here too): decide from the
	 * linear header with direct packet access, no helper call, whenever it is there. */
	if (skb->protocol == bpf_htons(ETH_P_IP)) {
		struct iphdr ip;
		struct iphdr *hdr = (void *)(long)skb->data;

		if ((void *)(hdr + 1) <= (void *)(long)skb->data_end) {
			if (hdr->protocol != IPPROTO_UDP)
				return 1;
			ip = *hdr;
		} else if (bpf_skb_load_bytes(skb, 0, &ip, sizeof(ip)) || ip.protocol != IPPROTO_UDP) {
			return 1;
		}
		/* A non-first fragment has no UDP header (only seen if not reassembled). */
		if (ip.frag_off & bpf_htons(0x1fff))
			return 1;
		l4 = ip.ihl * 4;
		key.family = AF_INET;
		__builtin_memcpy(egress ? key.local : key.remote, &ip.saddr, 4);
		__builtin_memcpy(egress ? key.remote : key.local, &ip.daddr, 4);
	} else if (skb->protocol == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr ip6;
		struct ipv6hdr *hdr6 = (void *)(long)skb->data;

		/* Extension headers are not walked: UDP right after the fixed header only. */
		if ((void *)(hdr6 + 1) <= (void *)(long)skb->data_end) {
			if (hdr6->nexthdr != IPPROTO_UDP)
				return 1;
			ip6 = *hdr6;
		} else if (bpf_skb_load_bytes(skb, 0, &ip6, sizeof(ip6)) ||
			   ip6.nexthdr != IPPROTO_UDP) {
			return 1;
		}
		l4 = sizeof(ip6);
		key.family = AF_INET6;
		__builtin_memcpy(egress ? key.local : key.remote, &ip6.saddr, 16);
		__builtin_memcpy(egress ? key.remote : key.local, &ip6.daddr, 16);
	} else {
		return 1;
	}
	if (bpf_skb_load_bytes(skb, l4, &udp, sizeof(udp)))
		return 1;
	sport = bpf_ntohs(udp.source);
	dport = bpf_ntohs(udp.dest);
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
