// SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause
/*
 * tcpconn: one event per finished TCP connection end (failed connects included), plus an
 * interim event now and then for long-lived ones, aggregated in the kernel.
 *
 * Only tracepoints are used (kprobes and fentry are not available on every kernel we target),
 * as BTF-typed raw tracepoints (tp_btf, kernel 5.5+ with BTF, which CO-RE needs anyway): the
 * kernel passes the socket pointer itself, so no trace record is formatted for us on every
 * state change, and the socket's fields are plain loads instead of bpf_probe_read calls.
 * Measured on 6.18 (bench/collector_bench.py): the state-change program went from ~600 ns
 * to ~400 ns per run. sock:inet_sock_set_state sees every state change of every TCP socket
 * (client and server, IPv4 and IPv6) with the socket pointer as a stable key; tcp:tcp_probe
 * sees every segment an established socket receives, which is where interim records are cut.
 *
 *   CLOSE -> SYN_SENT         connect(): start a client, take pid/comm (process context)
 *   LISTEN -> SYN_RECV        a child socket is born: start a server (softirq: no pid here)
 *   * -> ESTABLISHED          connect latency for clients; snapshot the byte counters
 *   * -> FIN_WAIT1 / LAST_ACK close()/shutdown() by the owner: pid/comm for servers
 *   * -> CLOSE                read tcp_sock and sk_err, emit the final event, forget it
 *   tcp_probe                 interval elapsed: emit an interim event with the deltas
 *
 * Design after bcc libbpf-tools tcplife/tcpconnlat; differences: both roles, cgroup of the
 * socket (not of `current`), exact payload byte counts, losses counted in a map.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>
#include "common.bpf.h"
#include "tcpconn.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* Load-time knobs, set by name by the collector before load (collector/kernel/libbpf.py); const:
 * the verifier prunes what they disable. */
const volatile __u64 targ_interim_ns = 30ULL * 1000 * 1000 * 1000; /* an open connection
								    * reports at most this often;
								    * 0: never */
/* Wake the reader only once this much is waiting (0: on every event). The collector polls on
 * a timeout as well, so a quiet ring is still read; a busy one is read in big batches instead
 * of one wakeup (and context switch) per event. */
const volatile __u64 targ_wakeup_bytes = 0;

/*
 * The counters of a connection already reported (absolute tcp_sock values). A record carries
 * the current value minus these, then they move up: deltas that sum to the totals. At
 * ESTABLISHED they are set to the handshake's values, so the SYN (one sequence number in
 * bytes_acked, measured: a client reads 1, a server 0) and any SYN retransmission are not
 * counted as payload or as retransmissions of data.
 */
struct reported {
	__u64 bytes_acked;
	__u64 bytes_received;
	__u64 bytes_retrans;
	__u32 total_retrans;
	__u32 segs_in;
	__u32 segs_out;
	__u32 _pad;
};

/* What we remember about a socket between its first state change and TCP_CLOSE. */
struct sock_info {
	__u64 start_ns;
	__u64 established_ns;  /* clients only (connect latency) */
	__u64 next_interim;    /* an interim record is due at the first segment from this
				* interim_clock() time on; 0 until established */
	struct reported base;
	__u32 pid;
	__u32 flags;
	__u32 seq; /* records emitted so far */
	__u8 role;
	__u8 syn_retries;
	__u8 _pad[2];
	char comm[TCPCONN_COMM_LEN];
};

/*
 * Live sockets: key is the struct sock pointer, valid from the first event to TCP_CLOSE.
 * Not BPF_MAP_TYPE_SK_STORAGE, though its lookups are cheaper: measured on 6.18 with
 * kernel.bpf_stats_enabled, creating a socket's storage (two allocations, two locks) cost
 * ~1 us more than a hash update (~0.18 us), twice per connection, against ~0.5 us saved on
 * lookups and deletes (hash lookup ~45 ns, delete ~145 ns): short connections lose.
 */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 262144);
	__type(key, __u64);
	__type(value, struct sock_info);
} socks SEC(".maps");

/* Finished connections to user space. Size can be changed before load (collector setting). */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 4 << 20);
} events SEC(".maps");

/* Losses and totals, indexed by enum tcpconn_counter; user space sums the CPUs. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, TCPCONN_CTR_MAX);
	__type(key, __u32);
	__type(value, __u64);
} counters SEC(".maps");

/* Endpoints of flowscope's own services (see struct tcpconn_endpoint); value unused. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 256);
	__type(key, struct tcpconn_endpoint);
	__type(value, __u8);
} pipeline SEC(".maps");

/* From the kernel's config (libbpf reads /boot/config-$(uname -r) or /proc/config.gz);
 * 0 when neither is there. */
extern unsigned int CONFIG_HZ __kconfig __weak;

/*
 * The clock interim records are scheduled on: jiffies when HZ is known, else ns. Whether a
 * record is due is asked at every segment an established socket receives (3 times in the
 * shortest connection), where bpf_ktime_get_ns() was the dearest thing left: measured ~55 ns
 * a call here (Firecracker VM, tsc), bpf_jiffies64() ~1 ns. An interval of seconds needs no
 * better than a tick; the records themselves still carry bpf_ktime_get_ns() times.
 * CONFIG_HZ is a load-time constant: the verifier drops the branch not taken.
 */
static __always_inline __u64 interim_clock(void)
{
	return CONFIG_HZ ? bpf_jiffies64() : bpf_ktime_get_ns();
}

static __always_inline __u64 interim_period(void)
{
	return CONFIG_HZ ? targ_interim_ns * CONFIG_HZ / 1000000000ULL : targ_interim_ns;
}

static __always_inline void count(__u32 idx)
{
	counter_inc(&counters, idx);
}

static __always_inline void take_process(struct sock_info *info)
{
	info->pid = bpf_get_current_pid_tgid() >> 32;
	bpf_get_current_comm(info->comm, sizeof(info->comm));
}

static __always_inline void track(__u64 key, __u8 role, __u64 now)
{
	struct sock_info info = {};

	info.start_ns = now;
	info.role = role;
	/* Only connect() runs CLOSE -> SYN_SENT, so `current` is the owner here; a server's
	 * child is created in softirq, where `current` is whatever task was interrupted. */
	if (role == TCPCONN_ROLE_CLIENT)
		take_process(&info);
	if (bpf_map_update_elem(&socks, &key, &info, BPF_ANY))
		count(TCPCONN_CTR_TRACK_FAILED);
}

static __always_inline void submit(struct tcpconn_event *ev)
{
	__u64 flags = 0;

	if (targ_wakeup_bytes)
		flags = bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA) >= targ_wakeup_bytes ?
				BPF_RB_FORCE_WAKEUP : BPF_RB_NO_WAKEUP;
	bpf_ringbuf_submit(ev, flags);
}

static __always_inline __u8 saturate_u8(__u32 value)
{
	return value > 255 ? 255 : value;
}

/* The socket's fields are read with plain loads: tp is a BTF pointer (from a tp_btf argument
 * through bpf_skc_to_tcp_sock), which the verifier turns into fault-safe loads, with CO-RE
 * relocating each offset (vmlinux.h marks the structs preserve_access_index). */
static __always_inline void read_counters(struct tcp_sock *tp, struct reported *now)
{
	now->bytes_acked = tp->bytes_acked;
	now->bytes_received = tp->bytes_received;
	now->bytes_retrans = tp->bytes_retrans;
	now->total_retrans = tp->total_retrans;
	now->segs_in = tp->segs_in;
	now->segs_out = tp->segs_out;
}

static __always_inline void on_established(__u64 key, struct tcp_sock *tp)
{
	struct sock_info *info = bpf_map_lookup_elem(&socks, &key);
	struct reported base = {};

	if (!info)
		return;
	/* Only a client's connect latency needs the time: ~55 ns saved for the server end. */
	if (info->role == TCPCONN_ROLE_CLIENT)
		info->established_ns = bpf_ktime_get_ns();
	info->flags |= TCPCONN_F_ESTABLISHED;
	info->next_interim = interim_clock() + interim_period();
	read_counters(tp, &base);
	/* Segments are reported as the kernel counts them (handshake included): keep 0. */
	base.segs_in = 0;
	base.segs_out = 0;
	info->base = base;
	/* Every retransmission so far was of the SYN (client) or SYN-ACK (server child). */
	if (info->role == TCPCONN_ROLE_CLIENT)
		info->syn_retries = saturate_u8(base.total_retrans);
}

/* FIN_WAIT1 and LAST_ACK are only entered from close()/shutdown() (tcp_close_state), so
 * `current` is a process using the socket: the only reliable pid for a server. */
static __always_inline void on_app_close(__u64 key)
{
	struct sock_info *info = bpf_map_lookup_elem(&socks, &key);
	struct sock_info fresh = {};

	if (info) {
		if (!info->pid) {
			take_process(info);
			info->flags |= TCPCONN_F_PID_AT_CLOSE;
		}
		return;
	}
	/* Opened before we were attached: remember the process for the close event. */
	fresh.flags = TCPCONN_F_START_UNKNOWN | TCPCONN_F_PID_AT_CLOSE;
	take_process(&fresh);
	bpf_map_update_elem(&socks, &key, &fresh, BPF_ANY);
}

static __always_inline bool is_fin_state(int state)
{
	return state == TCP_FIN_WAIT1 || state == TCP_FIN_WAIT2 || state == TCP_CLOSING ||
	       state == TCP_LAST_ACK;
}

static __always_inline __u64 delta64(__u64 now, __u64 base)
{
	return now > base ? now - base : 0;
}

static __always_inline __u32 delta32(__u32 now, __u32 base)
{
	return now > base ? now - base : 0;
}

/* Who, where and the timing fields shared by final and interim records. Addresses and ports
 * as the inet_sock_set_state tracepoint reports them (inet_saddr, not rcv_saddr, for IPv4). */
static __always_inline void fill_common(struct tcpconn_event *ev, struct tcp_sock *tp,
					struct sock_info *info, __u64 now, __u16 family)
{
	struct inet_sock *inet = &tp->inet_conn.icsk_inet;
	struct sock *sk = &inet->sk;
	__u32 min_rtt;

	ev->start_ns = info->start_ns;
	ev->end_ns = now;
	ev->role = info->role;
	ev->pid = info->pid;
	__builtin_memcpy(ev->comm, info->comm, sizeof(ev->comm));
	ev->flags = info->flags;
	ev->seq = info->seq;
	ev->syn_retries = info->syn_retries;
	ev->sk_err = 0;
	__builtin_memset(ev->_pad, 0, sizeof(ev->_pad));
	ev->connect_us = 0;
	if (info->role == TCPCONN_ROLE_CLIENT && (info->flags & TCPCONN_F_ESTABLISHED))
		ev->connect_us = (info->established_ns - info->start_ns) / 1000;
	ev->srtt_us = tp->srtt_us >> 3;
	/* minmax starts at ~0U until the first RTT sample. */
	min_rtt = tp->rtt_min.s[0].v;
	ev->min_rtt_us = min_rtt == ~0U ? 0 : min_rtt;
	/* The network namespace names the conntrack table that NATed this connection. */
	ev->netns_ino = sk->__sk_common.skc_net.net->ns.inum;
	/* The socket's cgroup (set when it was created, inherited by accepted children), not
	 * `current`'s: in softirq `current` is unrelated. kn->id is the directory's inode. */
	ev->cgroup_id = 0;
	if (bpf_core_field_exists(sk->sk_cgrp_data))
		ev->cgroup_id = sk->sk_cgrp_data.cgroup->kn->id;
	ev->family = family;
	ev->sport = bpf_ntohs(inet->inet_sport);
	ev->dport = bpf_ntohs(sk->__sk_common.skc_dport);
	__builtin_memset(ev->saddr, 0, sizeof(ev->saddr));
	__builtin_memset(ev->daddr, 0, sizeof(ev->daddr));
	if (family == AF_INET) {
		*(__u32 *)ev->saddr = inet->inet_saddr;
		*(__u32 *)ev->daddr = sk->__sk_common.skc_daddr;
	} else {
		__builtin_memcpy(ev->saddr, &sk->__sk_common.skc_v6_rcv_saddr, 16);
		__builtin_memcpy(ev->daddr, &sk->__sk_common.skc_v6_daddr, 16);
	}
}

static __always_inline void fill_volume(struct tcpconn_event *ev, struct reported *now,
					struct reported *base)
{
	ev->bytes_sent = delta64(now->bytes_acked, base->bytes_acked);
	ev->bytes_received = delta64(now->bytes_received, base->bytes_received);
	ev->retrans_bytes = delta64(now->bytes_retrans, base->bytes_retrans);
	ev->retrans_segs = delta32(now->total_retrans, base->total_retrans);
	ev->segs_in = delta32(now->segs_in, base->segs_in);
	ev->segs_out = delta32(now->segs_out, base->segs_out);
}

static __always_inline bool endpoint_known(struct tcpconn_endpoint *key, const __u8 *addr,
					   __u16 port)
{
	__builtin_memcpy(key->addr, addr, TCPCONN_ADDR_LEN);
	key->port = port;
	return bpf_map_lookup_elem(&pipeline, key) != NULL;
}

/* Whether this is a connection of flowscope's own services: its remote end, or its local
 * end (with this address or any), is in the pipeline map. Only asked when a record is due
 * (close, interim), three lookups of ~45 ns. */
static __always_inline bool is_pipeline(struct tcpconn_event *ev)
{
	struct tcpconn_endpoint key = {};
	__u8 any[TCPCONN_ADDR_LEN] = {};

	key.family = ev->family;
	return endpoint_known(&key, ev->daddr, ev->dport) ||
	       endpoint_known(&key, ev->saddr, ev->sport) || endpoint_known(&key, any, ev->sport);
}

static __always_inline void on_close(struct tcp_sock *tp, __u64 key, int oldstate,
				     __u16 family, __u64 now)
{
	struct sock *sk = &tp->inet_conn.icsk_inet.sk;
	struct sock_info *info = bpf_map_lookup_elem(&socks, &key);
	struct sock_info untracked = {};
	struct reported current_counters = {};
	struct tcpconn_event *ev;
	__u64 sk_flags;
	int sk_err;

	/* Sockets open before attach: emitted with role unknown, start 0 (user space uses the
	 * end time), so long-lived connections still count their bytes. on_app_close() may have
	 * made an entry for one, to keep its pid. */
	if (!info) {
		untracked.flags = TCPCONN_F_START_UNKNOWN;
		info = &untracked;
	}
	if (info->flags & TCPCONN_F_START_UNKNOWN)
		count(TCPCONN_CTR_UNTRACKED_CLOSE);

	ev = bpf_ringbuf_reserve(&events, sizeof(*ev), 0);
	if (!ev) {
		count(TCPCONN_CTR_LOST_RINGBUF);
		goto forget;
	}

	/* Why it ended: tcp_reset() (ECONNREFUSED in SYN_SENT, EPIPE in CLOSE_WAIT, else
	 * ECONNRESET), tcp_write_err() (ETIMEDOUT) and ICMP errors set sk_err *before* moving
	 * to TCP_CLOSE; a local abort (close() with unread data, SO_LINGER 0) sets it after, so
	 * it reads 0 here and user space tells it by the state it closed from. */
	sk_err = sk->sk_err;
	/* A local abort runs in close()/disconnect(): `current` is the owner, the only chance
	 * to learn a server's pid when it never went through FIN_WAIT1/LAST_ACK. */
	if (!info->pid && !sk_err &&
	    (oldstate == TCP_ESTABLISHED || oldstate == TCP_CLOSE_WAIT)) {
		take_process(info);
		info->flags |= TCPCONN_F_PID_AT_CLOSE;
	}
	fill_common(ev, tp, info, now, family);
	if (is_pipeline(ev)) {
		count(info->flags & TCPCONN_F_ESTABLISHED || sk_err == 0 ?
			      TCPCONN_CTR_PIPELINE_CLOSED : TCPCONN_CTR_PIPELINE_FAILED);
		bpf_ringbuf_discard(ev, BPF_RB_NO_WAKEUP);
		goto forget;
	}
	ev->kind = TCPCONN_KIND_FINAL;
	ev->oldstate = oldstate;
	ev->sk_err = sk_err;

	/*
	 * Payload bytes. bytes_acked and bytes_received count sequence numbers, and SYN and
	 * FIN each take one. The SYN is removed by the base taken at ESTABLISHED. The FIN:
	 *  - ours is in write_seq once queued (only in the FIN states) and counted in
	 *    bytes_acked when acked, i.e. when snd_una has caught up with write_seq;
	 *  - the peer's is counted in bytes_received by the same rcv_nxt update that calls
	 *    tcp_fin(), which sets SOCK_DONE; nothing else sets it on a TCP socket before close.
	 * Measured on 6.18, client sends 1234 and reads 5678, both close normally: raw
	 * bytes_acked/bytes_received are 1236/5679 on the client (SYN + FIN / FIN; base 1/0)
	 * and 5679/1235 on the server (FIN / FIN; base 0/0). After an RST there is no FIN
	 * and the raw counts are the payload. tests/integration/collector checks both cases.
	 */
	read_counters(tp, &current_counters);
	if (is_fin_state(oldstate) && tp->snd_una == tp->write_seq) {
		ev->flags |= TCPCONN_F_FIN_ACKED;
		current_counters.bytes_acked -= current_counters.bytes_acked > 0;
	}
	sk_flags = sk->__sk_common.skc_flags; /* sock_flag(sk, ...) */
	if (sk_flags & (1ULL << bpf_core_enum_value(enum sock_flags, SOCK_DONE))) {
		ev->flags |= TCPCONN_F_FIN_RECEIVED;
		current_counters.bytes_received -= current_counters.bytes_received > 0;
	}
	/* Never established: seen opening and never ESTABLISHED, or opened before the attach and
	 * closing from a handshake state (user space applies the same rule to the flags). */
	if (info->flags & TCPCONN_F_ESTABLISHED ||
	    (info->flags & TCPCONN_F_START_UNKNOWN && oldstate != TCP_SYN_SENT &&
	     oldstate != TCP_SYN_RECV)) {
		fill_volume(ev, &current_counters, &info->base);
	} else {
		/* Every retransmission was a SYN; no payload moved. A socket closing from SYN_SENT
		 * is a client even when its start was not seen (role unknown): its SYN retries tell
		 * the application's connect timeout from a cancelled connect. */
		if (info->role == TCPCONN_ROLE_CLIENT || oldstate == TCP_SYN_SENT)
			ev->syn_retries = saturate_u8(current_counters.total_retrans);
		current_counters.bytes_acked = 0;
		current_counters.bytes_received = 0;
		current_counters.bytes_retrans = 0;
		current_counters.total_retrans = 0;
		fill_volume(ev, &current_counters, &untracked.base);
	}

	submit(ev);
	count(TCPCONN_CTR_EVENTS);
forget:
	bpf_map_delete_elem(&socks, &key);
}

/*
 * tcp:tcp_probe runs for every segment an ESTABLISHED socket receives: a connection that
 * moves data (or at least its ACKs) passes here often, so the first segment after the
 * interval emits its interim record. A connection that receives nothing has nothing new
 * to report; its final record carries whatever is left.
 */
SEC("tp_btf/tcp_probe")
int BPF_PROG(handle_probe, struct sock *sk, const struct sk_buff *skb)
{
	__u64 key = (__u64)sk;
	struct sock_info *info;
	struct sock_info fresh = {};
	struct reported now_counters = {};
	struct tcpconn_event *ev;
	struct tcp_sock *tp;
	__u64 now;
	__u16 family;

	if (!targ_interim_ns)
		return 0;
	info = bpf_map_lookup_elem(&socks, &key);
	if (!info) {
		/* Established before we were attached: report from now on, all-time totals first
		 * (as its final record would without this entry). */
		fresh.flags = TCPCONN_F_START_UNKNOWN;
		fresh.next_interim = interim_clock() + interim_period();
		bpf_map_update_elem(&socks, &key, &fresh, BPF_NOEXIST);
		return 0;
	}
	if (info->next_interim == 0 || interim_clock() < info->next_interim)
		return 0;
	now = bpf_ktime_get_ns();
	tp = bpf_skc_to_tcp_sock(sk);
	if (!tp)
		return 0;
	family = sk->__sk_common.skc_family;

	ev = bpf_ringbuf_reserve(&events, sizeof(*ev), 0);
	if (!ev) {
		/* The base does not move: these deltas go into the next record. */
		count(TCPCONN_CTR_INTERIM_DEFERRED);
		return 0;
	}
	fill_common(ev, tp, info, now, family);
	if (is_pipeline(ev)) {
		bpf_ringbuf_discard(ev, BPF_RB_NO_WAKEUP);
		info->next_interim = interim_clock() + interim_period();
		return 0;
	}
	ev->kind = TCPCONN_KIND_INTERIM;
	ev->oldstate = sk->__sk_common.skc_state;
	read_counters(tp, &now_counters);
	fill_volume(ev, &now_counters, &info->base);
	submit(ev);
	count(TCPCONN_CTR_INTERIM_EVENTS);

	info->base = now_counters;
	info->seq += 1;
	info->next_interim = interim_clock() + interim_period();
	return 0;
}

SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(handle_set_state, const struct sock *sk, const int oldstate, const int newstate)
{
	__u64 key = (__u64)sk;
	struct tcp_sock *tp;
	__u16 family;

	/* Cheapest tests first: most transitions (CLOSE_WAIT, FIN_WAIT2, TIME_WAIT...) need
	 * nothing, and the tracepoint fires for every protocol using inet sockets (SCTP...). */
	switch (newstate) {
	case TCP_SYN_SENT:
	case TCP_ESTABLISHED:
	case TCP_FIN_WAIT1:
	case TCP_LAST_ACK:
		break;
	case TCP_SYN_RECV:
		/* SYN_SENT -> SYN_RECV is a simultaneous open: keep the client entry. */
		if (oldstate != TCP_LISTEN)
			return 0;
		break;
	case TCP_CLOSE:
		/* A listener closing is not a connection; CLOSE -> CLOSE is not a transition. */
		if (oldstate == TCP_LISTEN || oldstate == TCP_CLOSE)
			return 0;
		break;
	default:
		return 0;
	}
	if (sk->sk_protocol != IPPROTO_TCP)
		return 0;
	family = sk->__sk_common.skc_family;
	if (family != AF_INET && family != AF_INET6)
		return 0;

	switch (newstate) {
	case TCP_SYN_SENT:
		track(key, TCPCONN_ROLE_CLIENT, bpf_ktime_get_ns());
		break;
	case TCP_SYN_RECV:
		track(key, TCPCONN_ROLE_SERVER, bpf_ktime_get_ns());
		break;
	case TCP_ESTABLISHED:
		tp = bpf_skc_to_tcp_sock((void *)sk);
		if (tp)
			on_established(key, tp);
		break;
	case TCP_FIN_WAIT1:
	case TCP_LAST_ACK:
		on_app_close(key);
		break;
	default: /* TCP_CLOSE */
		tp = bpf_skc_to_tcp_sock((void *)sk);
		if (tp)
			on_close(tp, key, oldstate, family, bpf_ktime_get_ns());
		break;
	}
	return 0;
}
