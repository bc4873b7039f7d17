/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * tcpconn.h: the ABI between tcpconn.bpf.c and the collector (collector/tcp/events.py mirrors
 * every definition below; tests/unit/collector/test_collector_abi.py checks that it does).
 *
 * Only the event, its enums and the counters live here (the load-time knobs are the
 * program's targ_* globals): one final event per finished TCP connection end (also failed
 * connects), plus interim events for long-lived connections, aggregated in the kernel.
 */
#ifndef __TCPCONN_H
#define __TCPCONN_H

#define TCPCONN_COMM_LEN 16
#define TCPCONN_ADDR_LEN 16

/* Which end of the connection this socket is. */
enum tcpconn_role {
	TCPCONN_ROLE_UNKNOWN = 0, /* closed without having been seen opening */
	TCPCONN_ROLE_CLIENT = 1,  /* went CLOSE -> SYN_SENT (connect()) */
	TCPCONN_ROLE_SERVER = 2,  /* child socket went LISTEN -> SYN_RECV */
};

/* tcpconn_event.kind */
enum tcpconn_kind {
	TCPCONN_KIND_FINAL = 0,   /* the socket reached TCP_CLOSE: the last record */
	TCPCONN_KIND_INTERIM = 1, /* still open: deltas since the previous record */
};

/* Bits of tcpconn_event.flags. */
enum tcpconn_flag {
	TCPCONN_F_ESTABLISHED = 1 << 0,    /* reached ESTABLISHED while tracked */
	/* Opened before the program was attached: start_ns is 0, role unknown, and a client's
	 * bytes_sent may count its SYN (+1) because no ESTABLISHED snapshot was taken. */
	TCPCONN_F_START_UNKNOWN = 1 << 1,
	TCPCONN_F_FIN_ACKED = 1 << 2,      /* our FIN was acked: 1 taken off bytes_sent */
	TCPCONN_F_FIN_RECEIVED = 1 << 3,   /* peer's FIN was received: 1 taken off bytes_received */
	TCPCONN_F_PID_AT_CLOSE = 1 << 4,   /* pid/comm from close()/shutdown(), not connect() */
};

/* Indexes of the per-CPU "counters" array map; user space sums over CPUs. */
enum tcpconn_counter {
	TCPCONN_CTR_EVENTS = 0,          /* final events submitted to the ring buffer */
	TCPCONN_CTR_LOST_RINGBUF = 1,    /* ring buffer full: final event dropped */
	TCPCONN_CTR_UNTRACKED_CLOSE = 2, /* close of a socket never seen opening (emitted) */
	TCPCONN_CTR_TRACK_FAILED = 3,    /* socks map full: connection not tracked */
	TCPCONN_CTR_INTERIM_EVENTS = 4,  /* interim events submitted */
	/* Ring buffer full for an interim event: nothing is lost, its deltas go into the
	 * connection's next record, which comes later than it should. */
	TCPCONN_CTR_INTERIM_DEFERRED = 5,
	/* Connections of flowscope's own services (an endpoint in the "pipeline" map): not
	 * emitted, so that a Kafka outage does not read as the workloads' failures. */
	TCPCONN_CTR_PIPELINE_CLOSED = 6, /* ... that were established */
	TCPCONN_CTR_PIPELINE_FAILED = 7, /* ... that never were (refused, timed out) */
	TCPCONN_CTR_MAX = 8,
};

/*
 * Key of the "pipeline" hash map, which user space fills: an endpoint of flowscope's own
 * services (a Kafka broker, the API server, a metrics port). A connection whose remote end,
 * or whose local end, is one is the pipeline's; addr all zero matches any local address.
 */
struct tcpconn_endpoint {
	__u8 addr[TCPCONN_ADDR_LEN]; /* network byte order, IPv4 in the first 4 bytes */
	__u16 port;                  /* host byte order */
	__u16 family;                /* AF_INET (2) or AF_INET6 (10) */
	__u32 _pad;
};

/*
 * One record of a connection end. 152 bytes, a multiple of 8, no implicit padding.
 * Times are CLOCK_MONOTONIC ns (bpf_ktime_get_ns); ports and family in host byte order;
 * addresses in network byte order, IPv4 in the first 4 bytes of the 16.
 * Volume fields are deltas since the connection's previous record (seq - 1), so the sum
 * over a connection's records is its total.
 */
struct tcpconn_event {
	__u64 start_ns;       /* SYN_SENT (client) or SYN_RECV (server); 0 if unknown */
	__u64 end_ns;         /* reached TCP_CLOSE (final) or time of this report (interim) */
	__u64 cgroup_id;      /* cgroup v2 id of the socket's owner (= inode of its dir) */
	__u64 bytes_sent;     /* payload bytes acked by the peer (SYN and FIN removed) */
	__u64 bytes_received; /* payload bytes received in order (FIN removed) */
	__u64 retrans_bytes;  /* tcp_sock.bytes_retrans */
	__u8 saddr[TCPCONN_ADDR_LEN]; /* local address */
	__u8 daddr[TCPCONN_ADDR_LEN]; /* remote address */
	__u32 connect_us;     /* SYN_SENT -> ESTABLISHED, clients only; 0 otherwise */
	__u32 srtt_us;        /* smoothed RTT now */
	__u32 min_rtt_us;     /* minimum RTT seen (tcp_sock.rtt_min); 0 if none */
	__u32 retrans_segs;   /* tcp_sock.total_retrans after the handshake */
	__u32 segs_in;        /* tcp_sock.segs_in: every segment, handshake included */
	__u32 segs_out;       /* tcp_sock.segs_out (a server's excludes the SYN-ACK, sent by the
			       * listener's request socket) */
	__u32 pid;            /* tgid of the owner; 0 if never seen in process context */
	__u32 flags;          /* enum tcpconn_flag bits */
	__u32 netns_ino;      /* inode of the socket's network namespace (/proc/<pid>/ns/net) */
	__u32 seq;            /* 0, 1, 2...: this record's place among the connection's records */
	__s32 sk_err;         /* sk->sk_err at close (ECONNREFUSED, ETIMEDOUT, ECONNRESET...) */
	__u16 sport;          /* local port */
	__u16 dport;          /* remote port */
	__u16 family;         /* AF_INET (2) or AF_INET6 (10) */
	__u8 role;            /* enum tcpconn_role */
	__u8 oldstate;        /* TCP state the socket closed from (final), or its state now */
	__u8 kind;            /* enum tcpconn_kind */
	__u8 syn_retries;     /* SYNs retransmitted by a client, also one opened before the attach
			       * that closes from SYN_SENT (saturates at 255) */
	__u8 _pad[2];
	char comm[TCPCONN_COMM_LEN]; /* task comm matching pid */
};

#endif /* __TCPCONN_H */
