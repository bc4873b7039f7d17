/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * drops.h: the ABI between drops.bpf.c and the collector (collector/drops/reporter.py mirrors it;
 * tests/unit/collector/test_collector_drops.py checks that it does).
 *
 * Packets the kernel dropped, counted per (socket cgroup, network namespace, drop reason,
 * addresses) in one of two maps; the collector flips `gen` every interval and drains the
 * map nobody writes any more, as for udpflow.
 */
#ifndef __DROPS_H
#define __DROPS_H

#define DROPS_ADDR_LEN 16

/* 56 bytes. Addresses in network byte order (IPv4 in the first 4 bytes); all zero when the
 * packet had no IP header the program could read (family 0). */
struct drops_key {
	__u64 cgroup_id;            /* cgroup v2 id of the packet's socket; 0: no socket */
	__u32 netns_ino;            /* netns inode of the device (else the socket); 0: unknown */
	__u32 reason;               /* enum skb_drop_reason of the running kernel */
	__u8 saddr[DROPS_ADDR_LEN];
	__u8 daddr[DROPS_ADDR_LEN];
	__u16 family;               /* AF_INET (2), AF_INET6 (10), 0: not IP */
	__u8 ip_proto;              /* IPPROTO_TCP (6), IPPROTO_UDP (17)... 0: unknown */
	__u8 _pad[5];
};

/* 16 bytes. */
struct drops_value {
	__u64 packets;
	__u64 bytes;                /* skb->len at the drop */
};

/* Indexes of the per-CPU "drop_counters" array map. */
enum drops_counter {
	DROPS_CTR_DROPS = 0,        /* drops counted */
	DROPS_CTR_MAP_FULL = 1,     /* a new key did not fit in the map: drop not counted */
	DROPS_CTR_NO_REASON = 2,    /* the kernel's tracepoint has no reason field (< 5.17) */
	DROPS_CTR_MAX = 3,
};

#endif /* __DROPS_H */
