// SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause
/*
 * tcpconn: one event per finished TCP connection end, aggregated in the kernel.
 *
 * Only the classic tracepoint sock:inet_sock_set_state is used: kprobes and fentry are not
 * available on every kernel we target, and this tracepoint sees every state change of every
 * TCP socket (client and server, IPv4 and IPv6) with the socket pointer as a stable key.
 *
 *   CLOSE -> SYN_SENT         connect(): start a client, take pid/comm (process context)
 *   LISTEN -> SYN_RECV        a child socket is born: start a server (softirq: no pid here)
 *   * -> ESTABLISHED          connect latency for clients; snapshot the byte counters
 *   * -> FIN_WAIT1 / LAST_ACK close()/shutdown() by the owner: pid/comm for servers
 *   * -> CLOSE                read tcp_sock, emit one event, forget the socket
 *
 * Design after bcc libbpf-tools tcplife/tcpconnlat; differences: both roles, cgroup of the
 * socket (not of `current`), exact payload byte counts, losses counted in a map.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>
#include "tcpconn.h"

/* Not in BTF (they are #defines in the kernel). */
#define AF_INET 2
#define AF_INET6 10

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* What we remember about a socket between its first state change and TCP_CLOSE. */
struct sock_info {
	__u64 start_ns;
	__u64 established_ns;
	/*
	 * tcp_sock.bytes_acked/bytes_received when ESTABLISHED was reached. bytes_acked counts
	 * every acked sequence number, and the active opener's SYN is one (measured: a client
	 * reads 1 here, a server 0). Subtracting the snapshot removes the SYN whatever the
	 * kernel version does.
	 */
	__u64 bytes_acked_base;
	__u64 bytes_received_base;
	__u32 pid;
	__u32 flags;
	__u8 role;
	__u8 _pad[7];
	char comm[TCPCONN_COMM_LEN];
};

/* Live sockets: key is the struct sock pointer, valid from the first event to TCP_CLOSE. */
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

static __always_inline void count(__u32 idx)
{
	__u64 *value = bpf_map_lookup_elem(&counters, &idx);

	/* Atomic because a program on this CPU can be preempted by another run of itself. */
	if (value)
		__sync_fetch_and_add(value, 1);
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

static __always_inline void on_established(__u64 key, struct tcp_sock *tp, __u64 now)
{
	struct sock_info *info = bpf_map_lookup_elem(&socks, &key);

	if (!info)
		return;
	info->established_ns = now;
	info->flags |= TCPCONN_F_ESTABLISHED;
	info->bytes_acked_base = BPF_CORE_READ(tp, bytes_acked);
	info->bytes_received_base = BPF_CORE_READ(tp, bytes_received);
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

static __always_inline void on_close(struct trace_event_raw_inet_sock_set_state *ctx, __u64 key,
				     __u64 now)
{
	struct tcp_sock *tp = (struct tcp_sock *)ctx->skaddr;
	struct sock *sk = (struct sock *)ctx->skaddr;
	struct sock_info *info = bpf_map_lookup_elem(&socks, &key);
	struct sock_info untracked = {};
	struct tcpconn_event *ev;
	__u64 acked, received, sk_flags;
	__u16 family = ctx->family;
	int oldstate = ctx->oldstate;

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

	ev->start_ns = info->start_ns;
	ev->end_ns = now;
	ev->role = info->role;
	ev->pid = info->pid;
	__builtin_memcpy(ev->comm, info->comm, sizeof(ev->comm));
	ev->flags = info->flags;
	ev->oldstate = oldstate;
	ev->family = family;
	ev->sport = ctx->sport;
	ev->dport = ctx->dport;
	__builtin_memset(ev->_pad, 0, sizeof(ev->_pad));
	__builtin_memset(ev->saddr, 0, sizeof(ev->saddr));
	__builtin_memset(ev->daddr, 0, sizeof(ev->daddr));
	if (family == AF_INET) {
		bpf_probe_read_kernel(ev->saddr, 4, ctx->saddr);
		bpf_probe_read_kernel(ev->daddr, 4, ctx->daddr);
	} else {
		bpf_probe_read_kernel(ev->saddr, 16, ctx->saddr_v6);
		bpf_probe_read_kernel(ev->daddr, 16, ctx->daddr_v6);
	}

	ev->connect_us = 0;
	if (info->role == TCPCONN_ROLE_CLIENT && (info->flags & TCPCONN_F_ESTABLISHED))
		ev->connect_us = (info->established_ns - info->start_ns) / 1000;

	/*
	 * Payload bytes. bytes_acked and bytes_received count sequence numbers, and SYN and
	 * FIN each take one. The SYN is removed by the snapshot taken at ESTABLISHED. The FIN:
	 *  - ours is in write_seq once queued (only in the FIN states) and counted in
	 *    bytes_acked when acked, i.e. when snd_una has caught up with write_seq;
	 *  - the peer's is counted in bytes_received by the same rcv_nxt update that calls
	 *    tcp_fin(), which sets SOCK_DONE; nothing else sets it on a TCP socket before close.
	 * Measured on 6.18, client sends 1234 and reads 5678, both close normally: raw
	 * bytes_acked/bytes_received are 1236/5679 on the client (SYN + FIN / FIN; snapshot 1/0)
	 * and 5679/1235 on the server (FIN / FIN; snapshot 0/0). After an RST there is no FIN
	 * and the raw counts are the payload. tests/integration/collector checks both cases.
	 */
	acked = BPF_CORE_READ(tp, bytes_acked);
	received = BPF_CORE_READ(tp, bytes_received);
	if (is_fin_state(oldstate) && BPF_CORE_READ(tp, snd_una) == BPF_CORE_READ(tp, write_seq)) {
		ev->flags |= TCPCONN_F_FIN_ACKED;
		acked -= acked > 0;
	}
	sk_flags = BPF_CORE_READ(sk, __sk_common.skc_flags); /* sock_flag(sk, ...) */
	if (sk_flags & (1ULL << bpf_core_enum_value(enum sock_flags, SOCK_DONE))) {
		ev->flags |= TCPCONN_F_FIN_RECEIVED;
		received -= received > 0;
	}
	ev->bytes_sent = acked > info->bytes_acked_base ? acked - info->bytes_acked_base : 0;
	ev->bytes_received =
		received > info->bytes_received_base ? received - info->bytes_received_base : 0;

	ev->srtt_us = BPF_CORE_READ(tp, srtt_us) >> 3;
	ev->retrans_segs = BPF_CORE_READ(tp, total_retrans);
	/* The socket's cgroup (set when it was created, inherited by accepted children), not
	 * `current`'s: in softirq `current` is unrelated. kn->id is the directory's inode. */
	ev->cgroup_id = 0;
	if (bpf_core_field_exists(sk->sk_cgrp_data))
		ev->cgroup_id = BPF_CORE_READ(sk, sk_cgrp_data.cgroup, kn, id);

	bpf_ringbuf_submit(ev, 0);
	count(TCPCONN_CTR_EVENTS);
forget:
	bpf_map_delete_elem(&socks, &key);
}

SEC("tracepoint/sock/inet_sock_set_state")
int handle_set_state(struct trace_event_raw_inet_sock_set_state *ctx)
{
	__u64 key = (__u64)ctx->skaddr;
	__u64 now;
	int oldstate, newstate;

	if (ctx->protocol != IPPROTO_TCP)
		return 0;
	if (ctx->family != AF_INET && ctx->family != AF_INET6)
		return 0;
	oldstate = ctx->oldstate;
	newstate = ctx->newstate;
	now = bpf_ktime_get_ns();

	switch (newstate) {
	case TCP_SYN_SENT:
		track(key, TCPCONN_ROLE_CLIENT, now);
		break;
	case TCP_SYN_RECV:
		/* SYN_SENT -> SYN_RECV is a simultaneous open: keep the client entry. */
		if (oldstate == TCP_LISTEN)
			track(key, TCPCONN_ROLE_SERVER, now);
		break;
	case TCP_ESTABLISHED:
		on_established(key, (struct tcp_sock *)ctx->skaddr, now);
		break;
	case TCP_FIN_WAIT1:
	case TCP_LAST_ACK:
		on_app_close(key);
		break;
	case TCP_CLOSE:
		/* A listener closing is not a connection; CLOSE -> CLOSE is not a transition. */
		if (oldstate != TCP_LISTEN && oldstate != TCP_CLOSE)
			on_close(ctx, key, now);
		break;
	default:
		break;
	}
	return 0;
}
