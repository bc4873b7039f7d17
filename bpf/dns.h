/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * dns.h: the ABI between dns.bpf.c and the collector (collector/dns/abi.py mirrors every
 * definition below; tests/unit/collector/test_dns_abi.py checks that it does).
 *
 * A UDP query is held in the kernel (map "pending", one entry per query and observing
 * socket) until its response passes the same socket: then one struct dns_pair_event carries
 * both, the query once whatever its retransmissions (counted in attempts). Queries not
 * answered are taken from the map by user space after the timeout (collector/dns/source.py).
 * Everything else is one struct dns_event per packet (UDP datagram, or TCP segment with
 * payload): TCP, queries too long or odd to hold (no plain question), responses with no query
 * held, queries when the map is full. The kernel reads only the header's id and flags and the
 * question's labels; the full parse (compression pointers, answers) stays in user space.
 */
#ifndef __DNS_H
#define __DNS_H

#define DNS_ADDR_LEN 16
/* Header (12) + the longest question (255 + 4) fit with room for the first answers. Longer
 * messages are clipped here and flagged by payload_len > captured_len. */
#define DNS_PAYLOAD_MAX 512
/* Queries up to this size are held whole in the kernel (a power of 2: offsets are masked). */
#define DNS_QUERY_MAX 256

/* dns_event.direction, from the socket's point of view */
enum dns_direction {
	DNS_DIR_EGRESS = 0,  /* the local socket sent it */
	DNS_DIR_INGRESS = 1, /* the local socket received it */
};

/* Indexes of the per-CPU "counters" array map; user space sums over CPUs. */
enum dns_counter {
	DNS_CTR_EVENTS = 0,       /* events submitted to the ring buffer */
	DNS_CTR_LOST_RINGBUF = 1, /* ring buffer full: the packet is not reported */
	DNS_CTR_CLIPPED = 2,      /* payload longer than DNS_PAYLOAD_MAX: reported clipped */
	DNS_CTR_FRAGMENTS = 3,    /* non-first IPv4 fragment on the DNS port: not reported */
	DNS_CTR_BAD_HEADER = 4,   /* IP/UDP/TCP header could not be read: not reported */
	DNS_CTR_PAIRS = 5,        /* queries answered in the kernel: one pair event each */
	DNS_CTR_HELD_RETRIES = 6, /* retransmissions of a held query (its attempts count) */
	DNS_CTR_PENDING_FULL = 7, /* map "pending" full: the query went out as a packet */
	DNS_CTR_MAX = 8,
};

/*
 * One DNS packet. 600 bytes, a multiple of 8, no implicit padding.
 * ts_ns is CLOCK_MONOTONIC (bpf_ktime_get_ns); ports and family in host byte order;
 * addresses in network byte order, IPv4 in the first 4 bytes of the 16.
 */
struct dns_event {
	__u64 ts_ns;
	__u64 cgroup_id;                 /* cgroup v2 id of the socket that sent/received it */
	__u8 saddr[DNS_ADDR_LEN];        /* packet source (egress: after NAT on this host) */
	__u8 daddr[DNS_ADDR_LEN];        /* packet destination */
	/* The socket's connected peer, zero when the socket is not connected. glibc connects
	 * its UDP socket, so for a client this is the server address the application used,
	 * before any Service DNAT (which egress packets have already been through). */
	__u8 sock_daddr[DNS_ADDR_LEN];
	__u32 payload_len;               /* DNS bytes in the packet (UDP payload, TCP segment data) */
	__u32 captured_len;              /* bytes copied into payload[] */
	__u16 sport;
	__u16 dport;
	__u16 sock_dport;                /* the socket's connected peer port; 0 if unconnected */
	__u16 family;                    /* AF_INET (2) or AF_INET6 (10), of the packet */
	__u8 direction;                  /* enum dns_direction */
	__u8 protocol;                   /* IPPROTO_UDP (17) or IPPROTO_TCP (6) */
	__u8 _pad[6];
	__u8 payload[DNS_PAYLOAD_MAX];
};

/* map "pending": one query awaiting its response, by the socket that sees both. */
struct dns_pending_key {
	__u64 cgroup_id;
	__u8 remote[DNS_ADDR_LEN]; /* server role only (many clients reuse ids); else zero */
	__u16 remote_port;         /* server role only; else zero */
	__u16 local_port;
	__u16 txid;
	__u8 role;                 /* 0: client (sent the query), 1: server (received it) */
	__u8 family;               /* AF_INET or AF_INET6 */
};

/* The query's packet as struct dns_event would have carried it (the value of "pending"). */
struct dns_query_side {
	__u64 ts_ns;                     /* the first attempt */
	__u8 saddr[DNS_ADDR_LEN];
	__u8 daddr[DNS_ADDR_LEN];
	__u8 sock_daddr[DNS_ADDR_LEN];
	__u64 qhash;                     /* FNV-1a of the lower-cased question: a retransmission */
	__u32 payload_len;               /* the whole query: never clipped */
	__u32 attempts;                  /* 1 + retransmissions seen while held */
	__u16 sport;
	__u16 dport;
	__u16 sock_dport;
	__u8 _pad[2];
	__u8 payload[DNS_QUERY_MAX];
};

/* A query and its response: the response's packet, then the query's (same cgroup, family
 * and protocol UDP; the opposite direction). 936 bytes. */
struct dns_pair_event {
	struct dns_event response;
	struct dns_query_side query;
};

#endif /* __DNS_H */
