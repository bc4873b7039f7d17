// SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause
/*
 * drops: packets the kernel dropped, with the kernel's own drop reason, summed in the kernel.
 *
 * Hook: the skb:kfree_skb tracepoint. Since 5.17 it carries `enum skb_drop_reason`, and since
 * consume_skb took over the normal frees it fires for drops only, so its cost is paid per drop,
 * not per packet. (kprobes on kfree_skb_reason are not available everywhere; tracepoints are.)
 * The reason's numbers change between kernels: the program stores the number and the collector
 * names it from the running kernel's BTF.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include "common.bpf.h"
#include "drops.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

struct drops {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, struct drops_key);
	__type(value, struct drops_value);
};

/* Two generations: the program adds to drops[gen], the collector drains the other one. */
struct drops drops0 SEC(".maps");
struct drops drops1 SEC(".maps");

/* gen[0]: which map the program writes now (0 or 1); written by the collector. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} gen SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, DROPS_CTR_MAX);
	__type(key, __u32);
	__type(value, __u64);
} drop_counters SEC(".maps");

static __always_inline void count(__u32 idx)
{
	counter_inc(&drop_counters, idx);
}

/* The IP header at skb->network_header, when the drop happened after it was set. */
static __always_inline void read_addresses(struct sk_buff *skb, __u16 protocol,
					   struct drops_key *key)
{
	unsigned char *head = BPF_CORE_READ(skb, head);
	__u16 nh = BPF_CORE_READ(skb, network_header);

	/* (u16)~0: not set yet (dropped before the stack parsed the frame). */
	if (!head || nh == (__u16)~0U)
		return;
	if (protocol == bpf_htons(ETH_P_IP)) {
		struct iphdr ip;

		if (bpf_probe_read_kernel(&ip, sizeof(ip), head + nh) || ip.version != 4)
			return;
		key->family = AF_INET;
		key->ip_proto = ip.protocol;
		__builtin_memcpy(key->saddr, &ip.saddr, 4);
		__builtin_memcpy(key->daddr, &ip.daddr, 4);
	} else if (protocol == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr ip6;

		if (bpf_probe_read_kernel(&ip6, sizeof(ip6), head + nh) || ip6.version != 6)
			return;
		key->family = AF_INET6;
		key->ip_proto = ip6.nexthdr;
		__builtin_memcpy(key->saddr, &ip6.saddr, 16);
		__builtin_memcpy(key->daddr, &ip6.daddr, 16);
	}
}

SEC("tracepoint/skb/kfree_skb")
int on_kfree_skb(struct trace_event_raw_kfree_skb *ctx)
{
	struct drops_key key = {};
	struct drops_value *value, fresh = {};
	struct sk_buff *skb = ctx->skbaddr;
	struct net_device *dev;
	struct sock *sk;
	__u32 zero = 0, *g;
	void *map;

	if (!bpf_core_field_exists(ctx->reason)) {
		count(DROPS_CTR_NO_REASON);
		return 0;
	}
	key.reason = BPF_CORE_READ(ctx, reason);
	sk = BPF_CORE_READ(skb, sk);
	if (sk && bpf_core_field_exists(sk->sk_cgrp_data))
		key.cgroup_id = BPF_CORE_READ(sk, sk_cgrp_data.cgroup, kn, id);
	/* The device's namespace is where the packet was when it was dropped (a forwarded
	 * packet has no socket); a socket's is the fallback (e.g. dropped before a device). */
	dev = BPF_CORE_READ(skb, dev);
	if (dev)
		key.netns_ino = BPF_CORE_READ(dev, nd_net.net, ns.inum);
	else if (sk)
		key.netns_ino = BPF_CORE_READ(sk, __sk_common.skc_net.net, ns.inum);
	/* skb->protocol itself (network order): the tracepoint's copy is in host order. */
	read_addresses(skb, BPF_CORE_READ(skb, protocol), &key);

	g = bpf_map_lookup_elem(&gen, &zero);
	map = (g && *g) ? (void *)&drops1 : (void *)&drops0;
	value = bpf_map_lookup_elem(map, &key);
	if (!value) {
		/* Two CPUs may race to create it: NOEXIST lets one win, the other adds to it. */
		bpf_map_update_elem(map, &key, &fresh, BPF_NOEXIST);
		value = bpf_map_lookup_elem(map, &key);
		if (!value) {
			count(DROPS_CTR_MAP_FULL);
			return 0;
		}
	}
	__sync_fetch_and_add(&value->packets, 1);
	__sync_fetch_and_add(&value->bytes, BPF_CORE_READ(skb, len));
	count(DROPS_CTR_DROPS);
	return 0;
}
