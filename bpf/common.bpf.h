/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * common.bpf.h: what the programs (tcpconn, udpflow, dns, drops) share. Kernel side only
 * (the ABI with user space stays in each program's own header): constants the kernel keeps
 * as #defines (so not in vmlinux.h), the per-CPU counters helper, and IPv4/IPv6 and L4
 * header reads for cgroup_skb programs. Include after vmlinux.h and bpf_helpers.h.
 */
#ifndef __COMMON_BPF_H
#define __COMMON_BPF_H

#include <bpf/bpf_endian.h>

/* Not in BTF: #defines in the kernel. */
#define AF_INET 2
#define AF_INET6 10
#define ETH_P_IP 0x0800
#define ETH_P_IPV6 0x86DD
#define IP_MF 0x2000     /* more fragments follow */
#define IP_OFFSET 0x1FFF /* fragment offset: non-zero on every fragment but the first */

/*
 * Add one to slot idx of a per-CPU u64 array map (a program's "counters", indexed by an enum
 * its header shares with user space, which sums the CPUs). Atomic because a program on this
 * CPU can be preempted by another run of itself.
 */
static __always_inline void counter_inc(void *map, __u32 idx)
{
	__u64 *value = bpf_map_lookup_elem(map, &idx);

	if (value)
		__sync_fetch_and_add(value, 1);
}

/* An IPv4 or IPv6 packet's network header, as cgroup_skb programs see it (skb->data at the
 * IP header). Addresses in network byte order, IPv4 in the first 4 bytes of the 16. */
struct l3 {
	__u32 l4_off;       /* where the transport header starts */
	__u16 family;       /* AF_INET or AF_INET6 */
	__u8 protocol;      /* IPv4 protocol or IPv6 next header (extension headers not walked) */
	__u8 later_fragment; /* an IPv4 fragment after the first: no transport header */
	__u8 saddr[16];
	__u8 daddr[16];
};

/*
 * In place, no helper call: the transport protocol and offset of a packet whose IP header is
 * in the linear data. Most packets a cgroup_skb program sees are not the ones it wants (every
 * TCP segment passes the UDP and DNS programs): this is what decides that cheaply.
 * 1: read; 0: neither IPv4 nor IPv6; -1: the header is not in the linear data (use l3_read).
 */
static __always_inline int l3_peek(struct __sk_buff *skb, __u8 *protocol, __u32 *l4_off,
				   bool *later_fragment)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;

	if (skb->protocol == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = data;

		if ((void *)(ip + 1) > data_end)
			return -1;
		*protocol = ip->protocol;
		*l4_off = ip->ihl * 4;
		*later_fragment = (ip->frag_off & bpf_htons(IP_OFFSET)) != 0;
		return 1;
	}
	if (skb->protocol == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = data;

		if ((void *)(ip6 + 1) > data_end)
			return -1;
		*protocol = ip6->nexthdr;
		*l4_off = sizeof(*ip6);
		*later_fragment = false;
		return 1;
	}
	return 0;
}

/* The whole network header, in place when it is linear, else copied out with a helper.
 * 1: read; 0: neither IPv4 nor IPv6; -1: unreadable. */
static __always_inline int l3_read(struct __sk_buff *skb, struct l3 *out)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;

	if (skb->protocol == bpf_htons(ETH_P_IP)) {
		struct iphdr ip;
		struct iphdr *hdr = data;

		if ((void *)(hdr + 1) <= data_end)
			ip = *hdr;
		else if (bpf_skb_load_bytes(skb, 0, &ip, sizeof(ip)))
			return -1;
		out->family = AF_INET;
		out->protocol = ip.protocol;
		out->l4_off = ip.ihl * 4;
		out->later_fragment = (ip.frag_off & bpf_htons(IP_OFFSET)) != 0;
		__builtin_memcpy(out->saddr, &ip.saddr, 4);
		__builtin_memcpy(out->daddr, &ip.daddr, 4);
		return 1;
	}
	if (skb->protocol == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr ip6;
		struct ipv6hdr *hdr6 = data;

		if ((void *)(hdr6 + 1) <= data_end)
			ip6 = *hdr6;
		else if (bpf_skb_load_bytes(skb, 0, &ip6, sizeof(ip6)))
			return -1;
		out->family = AF_INET6;
		out->protocol = ip6.nexthdr;
		out->l4_off = sizeof(ip6);
		out->later_fragment = 0;
		__builtin_memcpy(out->saddr, &ip6.saddr, 16);
		__builtin_memcpy(out->daddr, &ip6.daddr, 16);
		return 1;
	}
	return 0;
}

/*
 * The source and destination ports (host byte order) and where the payload starts, for UDP
 * and TCP. 0: read; -1: the transport header is unreadable or not UDP/TCP.
 */
static __always_inline int l4_read(struct __sk_buff *skb, const struct l3 *l3, __u16 *sport,
				   __u16 *dport, __u32 *payload_off)
{
	if (l3->protocol == IPPROTO_UDP) {
		struct udphdr udp;

		if (bpf_skb_load_bytes(skb, l3->l4_off, &udp, sizeof(udp)))
			return -1;
		*sport = bpf_ntohs(udp.source);
		*dport = bpf_ntohs(udp.dest);
		*payload_off = l3->l4_off + sizeof(udp);
		return 0;
	}
	if (l3->protocol == IPPROTO_TCP) {
		struct tcphdr tcp;

		if (bpf_skb_load_bytes(skb, l3->l4_off, &tcp, sizeof(tcp)))
			return -1;
		*sport = bpf_ntohs(tcp.source);
		*dport = bpf_ntohs(tcp.dest);
		*payload_off = l3->l4_off + tcp.doff * 4;
		return 0;
	}
	return -1;
}

#endif /* __COMMON_BPF_H */
