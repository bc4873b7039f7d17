/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * udpflow.h: the ABI between udpflow.bpf.c and the collector (collector/udp/flows.py mirrors it;
 * tests/unit/collector/test_collector_udp.py checks that it does).
 *
 * UDP volume per (socket cgroup, local address/port, remote address/port), summed in the
 * kernel into one of two maps; the collector flips `gen` every interval and drains the map
 * nobody writes any more, so nothing is lost between a read and a delete.
 */
#ifndef __UDPFLOW_H
#define __UDPFLOW_H

#define UDPFLOW_ADDR_LEN 16

/* 48 bytes. Addresses in network byte order (IPv4 in the first 4 bytes), ports host order. */
struct udpflow_key {
	__u64 cgroup_id;               /* cgroup v2 id of the sending/receiving socket */
	__u8 local[UDPFLOW_ADDR_LEN];
	__u8 remote[UDPFLOW_ADDR_LEN];
	__u16 local_port;
	__u16 remote_port;
	__u16 family;                  /* AF_INET (2) or AF_INET6 (10) */
	__u16 _pad;
};

/* 32 bytes. Bytes are IP packet bytes (IP and UDP headers included), whole datagrams. */
struct udpflow_value {
	__u64 bytes_out;
	__u64 packets_out;
	__u64 bytes_in;
	__u64 packets_in;
};

/* Indexes of the per-CPU "udp_counters" array map. */
enum udpflow_counter {
	UDPFLOW_CTR_PACKETS = 0,  /* UDP packets counted */
	UDPFLOW_CTR_MAP_FULL = 1, /* a new pair did not fit in the map: packet not counted */
	UDPFLOW_CTR_MAX = 2,
};

#endif /* __UDPFLOW_H */
