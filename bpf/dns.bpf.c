// SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause
/*
 * dns: every DNS query of every local socket with its response (UDP: matched here, one
 * event per answered query and socket), and every other DNS packet (TCP, odd ones), with the
 * socket's cgroup, to user space through a ring buffer.
 *
 * Hook: cgroup_skb ingress and egress, attached once to the cgroup v2 root. Why this one:
 *  - it runs for every packet of every socket in any descendant cgroup, so one attachment
 *    covers all pods, present and future, and hostNetwork pods too; no per-interface
 *    attachment to follow as veths come and go (TC would need that);
 *  - the socket is known (the kernel sets skb->sk before running it, also on ingress), so
 *    bpf_skb_cgroup_id() names the pod by its cgroup, which IPs cannot do under hostNetwork
 *    and NAT; at TC on a veth there is no socket;
 *  - it needs no kprobe/fentry (not available on every kernel we target) and sees both
 *    directions, with the payload readable through bpf_skb_load_bytes();
 *  - ingress runs at delivery to the socket, after conntrack has undone a Service DNAT, so
 *    a response's source is the address the client asked. Egress runs after NAT; the
 *    socket's connected peer (sock_daddr) gives the pre-NAT address there.
 * Cost: it runs for every packet of every local socket, DNS or not; the non-DNS path reads
 * the IP header and the ports in place (surely_not_dns) and compares.
 *
 * Always returns 1 (allow): observing never drops traffic.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include "common.bpf.h"
#include "dns.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* Load-time knobs, set by name by the collector before load (collector/kernel/libbpf.py). */
const volatile __u16 targ_port = 53; /* the DNS port, host byte order */

/* DNS packets to user space. Size can be changed before load (collector setting). */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 4 << 20);
} events SEC(".maps");

/* UDP queries awaiting their response, one per query and observing socket (the client's
 * and the server's are two). A plain hash, not LRU: an entry leaves only answered (the pair
 * event) or swept by user space after the timeout; when full, queries go out as packets. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct dns_pending_key);
	__type(value, struct dns_query_side);
} pending SEC(".maps");

/* Per-CPU room to build a held query (too big for the stack), one slot per direction: an
 * ingress run in softirq may interrupt an egress run on the same CPU. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, struct dns_query_side);
} scratch SEC(".maps");

/* Losses and totals, indexed by enum dns_counter; user space sums the CPUs. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, DNS_CTR_MAX);
	__type(key, __u32);
	__type(value, __u64);
} counters SEC(".maps");

static __always_inline void count(__u32 idx)
{
	counter_inc(&counters, idx);
}

/* The socket's connected peer: where the application sent, before NAT. */
static __always_inline void read_sock_peer(struct __sk_buff *skb, __u8 *daddr, __u16 *dport)
{
	struct bpf_sock *sk = skb->sk;

	__builtin_memset(daddr, 0, DNS_ADDR_LEN);
	*dport = 0;
	if (!sk)
		return;
	sk = bpf_sk_fullsock(sk);
	if (!sk)
		return;
	*dport = bpf_ntohs(sk->dst_port);
	if (sk->family == AF_INET) {
		__u32 ip4 = sk->dst_ip4;

		__builtin_memcpy(daddr, &ip4, 4);
	} else if (sk->family == AF_INET6) {
		__u32 ip6[4];

		ip6[0] = sk->dst_ip6[0];
		ip6[1] = sk->dst_ip6[1];
		ip6[2] = sk->dst_ip6[2];
		ip6[3] = sk->dst_ip6[3];
		__builtin_memcpy(daddr, ip6, 16);
	}
}

/*
 * Most packets are not DNS (every TCP segment of every socket passes here): tell from the
 * linear header with direct packet access, no helper call, whenever it is there. 1: not a
 * DNS packet, nothing to count; 0: look closer (handle() decides, counting what it must).
 * Measured (bench/collector_bench.py, bpf_stats, its clock reads included): 139-152 ns per
 * run on a non-DNS packet with the helper reads alone, 67 ns with this, ~20 runs per short
 * TCP connection. tests/integration/collector/test_dns_ports.py checks what passes.
 */
static __always_inline int surely_not_dns(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	bool later_fragment;
	__u8 protocol;
	__u16 *ports;
	__u32 l4;
	int rc;

	rc = l3_peek(skb, &protocol, &l4, &later_fragment);
	if (rc <= 0)
		return rc == 0; /* not IP: nothing to see; not linear: look closer */
	if (protocol != IPPROTO_UDP && protocol != IPPROTO_TCP)
		return 1;
	if (later_fragment)
		return 0; /* counted there */
	/* UDP and TCP both start with the source and destination ports. */
	ports = data + l4;
	if ((void *)(ports + 2) > data_end)
		return 0;
	return bpf_ntohs(ports[0]) != targ_port && bpf_ntohs(ports[1]) != targ_port;
}

/* The packet's fields and the first DNS_PAYLOAD_MAX bytes of its payload into ev. */
static __always_inline void fill_packet(struct __sk_buff *skb, const struct l3 *p,
					struct dns_event *ev, __u8 direction, __u16 sport,
					__u16 dport, __u32 payload_off, __u32 payload_len)
{
	__u64 captured;

	ev->ts_ns = bpf_ktime_get_ns();
	ev->cgroup_id = bpf_skb_cgroup_id(skb);
	__builtin_memcpy(ev->saddr, p->saddr, sizeof(ev->saddr));
	__builtin_memcpy(ev->daddr, p->daddr, sizeof(ev->daddr));
	read_sock_peer(skb, ev->sock_daddr, &ev->sock_dport);
	ev->payload_len = payload_len;
	ev->sport = sport;
	ev->dport = dport;
	ev->family = p->family;
	ev->direction = direction;
	ev->protocol = p->protocol;
	__builtin_memset(ev->_pad, 0, sizeof(ev->_pad));

	captured = payload_len;
	if (captured > DNS_PAYLOAD_MAX) {
		captured = DNS_PAYLOAD_MAX;
		count(DNS_CTR_CLIPPED);
	}
	/* The verifier needs the length provably within [1, DNS_PAYLOAD_MAX] in the register
	 * passed to the helper: the barrier stops clang from reusing an unclamped copy. */
	barrier_var(captured);
	if (captured == 0 || captured > DNS_PAYLOAD_MAX ||
	    bpf_skb_load_bytes(skb, payload_off, ev->payload, captured)) {
		/* Unreadable payload: still report the packet, with nothing captured, so that
		 * user space counts it as malformed rather than never hearing of it. */
		captured = 0;
	}
	ev->captured_len = captured;
}

#define E2BIG 7 /* errno.h: not in vmlinux.h */
#define FNV64_OFFSET 0xcbf29ce484222325ULL
#define FNV64_PRIME 0x100000001b3ULL
#define QMASK (DNS_QUERY_MAX - 1)

struct qwalk {
	const struct dns_query_side *q;
	__u64 h;
	__u32 len;
	__u32 next; /* offset of the next label's length byte */
	__u32 end;  /* offset just past the name's root label; 0 until found */
	__u32 bad;
};

/* One byte of the question name (bpf_loop callback): 1 stops the walk. */
static long qwalk_byte(__u64 index, void *ctx)
{
	struct qwalk *w = ctx;
	__u32 i = 12 + (__u32)index;
	__u8 c;

	if (i >= w->len || i >= DNS_QUERY_MAX) {
		w->bad = 1;
		return 1;
	}
	barrier_var(i); /* keep the mask: the verifier does not see the test above */
	c = w->q->payload[i & QMASK];
	if (i == w->next) {
		if (c & 0xC0) {
			w->bad = 1; /* a pointer or extended label in a question: user space */
			return 1;
		}
		if (c == 0) {
			w->end = i + 1;
			return 1;
		}
		w->next = i + 1 + c;
	} else if (c >= 'A' && c <= 'Z') {
		c += 'a' - 'A';
	}
	w->h = (w->h ^ c) * FNV64_PRIME;
	return 0;
}

/*
 * FNV-1a of the question (labels lower-cased, then type and class) of the query in
 * q->payload[0, len); 0 when there is no plain question to hold it by (no question, a
 * compression pointer or a label running past the end): user space parses those.
 * bpf_loop, not a bounded loop: the label walk's state defeats the verifier's pruning.
 */
static __always_inline __u64 question_hash(const struct dns_query_side *q, __u32 len)
{
	struct qwalk w = {.q = q, .h = FNV64_OFFSET, .len = len, .next = 12};
	__u32 i;

	if (len < 12 + 5 || len > DNS_QUERY_MAX)
		return 0;
	if (q->payload[4] == 0 && q->payload[5] == 0)
		return 0; /* qdcount 0 */
	bpf_loop(DNS_QUERY_MAX - 12, qwalk_byte, &w, 0);
	if (w.bad || !w.end || w.end + 4 > len)
		return 0;
	for (i = 0; i < 4; i++) {
		__u32 at = w.end + i;

		barrier_var(at);
		w.h = (w.h ^ q->payload[at & QMASK]) * FNV64_PRIME;
	}
	return w.h | 1;
}

/* A query to hold: 1 if held (or counted as a retransmission of a held one), 0 if user
 * space must see it as a packet. */
static __always_inline int hold_query(struct __sk_buff *skb, const struct l3 *p,
				      const struct dns_pending_key *key, __u8 direction,
				      __u16 sport, __u16 dport, __u32 payload_off, __u32 len)
{
	struct dns_query_side *q, *held;
	__u32 slot = direction;
	__u64 n;
	long err;

	if (len > DNS_QUERY_MAX)
		return 0;
	q = bpf_map_lookup_elem(&scratch, &slot);
	if (!q)
		return 0;
	/* As in fill_packet: a 64-bit copy, bounded in the register the helper gets. */
	n = len;
	barrier_var(n);
	if (n < 12 || n > DNS_QUERY_MAX || bpf_skb_load_bytes(skb, payload_off, q->payload, n))
		return 0;
	q->qhash = question_hash(q, len);
	if (!q->qhash)
		return 0;
	held = bpf_map_lookup_elem(&pending, key);
	if (held) {
		if (held->qhash != q->qhash)
			return 0; /* another question on the same id: user space matches it */
		__sync_fetch_and_add(&held->attempts, 1);
		count(DNS_CTR_HELD_RETRIES);
		return 1;
	}
	q->ts_ns = bpf_ktime_get_ns();
	__builtin_memcpy(q->saddr, p->saddr, sizeof(q->saddr));
	__builtin_memcpy(q->daddr, p->daddr, sizeof(q->daddr));
	read_sock_peer(skb, q->sock_daddr, &q->sock_dport);
	q->payload_len = len;
	q->attempts = 1;
	q->sport = sport;
	q->dport = dport;
	__builtin_memset(q->_pad, 0, sizeof(q->_pad));
	err = bpf_map_update_elem(&pending, key, q, BPF_NOEXIST);
	if (err) {
		if (err == -E2BIG)
			count(DNS_CTR_PENDING_FULL);
		return 0; /* full, or the same key just held on another CPU: a packet */
	}
	return 1;
}

/* A response: 1 if its query was held (one pair event, or a counted loss), 0 if not. */
static __always_inline int answer(struct __sk_buff *skb, const struct l3 *p,
				  const struct dns_pending_key *key, __u8 direction, __u16 sport,
				  __u16 dport, __u32 payload_off, __u32 payload_len)
{
	struct dns_query_side *held, *q;
	struct dns_pair_event *ev;
	__u32 slot = direction;

	held = bpf_map_lookup_elem(&pending, key);
	if (!held)
		return 0;
	q = bpf_map_lookup_elem(&scratch, &slot);
	if (!q)
		return 0;
	/* Copy before deleting: a preallocated element is reused at once by another CPU's
	 * insert. The delete decides against user space's timeout sweep: whoever deletes owns
	 * the query; if the sweep did, this response is late and goes out as a packet. */
	__builtin_memcpy(q, held, sizeof(*q));
	if (bpf_map_delete_elem(&pending, key))
		return 0;
	ev = bpf_ringbuf_reserve(&events, sizeof(*ev), 0);
	if (!ev) {
		count(DNS_CTR_LOST_RINGBUF);
		return 1;
	}
	fill_packet(skb, p, &ev->response, direction, sport, dport, payload_off, payload_len);
	__builtin_memcpy(&ev->query, q, sizeof(*q));
	bpf_ringbuf_submit(ev, 0);
	count(DNS_CTR_EVENTS);
	count(DNS_CTR_PAIRS);
	return 1;
}

/* UDP DNS matched in the kernel: 1 if handled here, 0 to report the packet. */
static __always_inline int match_udp(struct __sk_buff *skb, const struct l3 *p, __u8 direction,
				     __u16 sport, __u16 dport, __u32 payload_off,
				     __u32 payload_len)
{
	struct dns_pending_key key = {};
	__u16 hdr[2]; /* id, flags */
	bool is_response, egress = direction == DNS_DIR_EGRESS;

	if (payload_len < 12 || bpf_skb_load_bytes(skb, payload_off, hdr, sizeof(hdr)))
		return 0;
	is_response = bpf_ntohs(hdr[1]) & 0x8000;
	key.cgroup_id = bpf_skb_cgroup_id(skb);
	key.txid = bpf_ntohs(hdr[0]);
	key.family = p->family;
	key.local_port = egress ? sport : dport;
	/* A query leaving (or a response arriving) is the client's side of the exchange. */
	key.role = egress != is_response ? 0 : 1;
	if (key.role == 1) {
		__builtin_memcpy(key.remote, egress ? p->daddr : p->saddr, sizeof(key.remote));
		key.remote_port = egress ? dport : sport;
	}
	if (!is_response)
		return hold_query(skb, p, &key, direction, sport, dport, payload_off, payload_len);
	return answer(skb, p, &key, direction, sport, dport, payload_off, payload_len);
}

static __always_inline int handle(struct __sk_buff *skb, __u8 direction)
{
	struct l3 p = {};
	struct dns_event *ev;
	__u32 payload_off, payload_len;
	__u16 sport, dport;
	int rc;

	if (surely_not_dns(skb))
		return 1;
	rc = l3_read(skb, &p);
	if (rc == 0 || (rc > 0 && p.protocol != IPPROTO_UDP && p.protocol != IPPROTO_TCP))
		return 1;
	if (rc < 0) {
		count(DNS_CTR_BAD_HEADER);
		return 1;
	}
	if (p.later_fragment) {
		/* Without the transport header the port is unknown: every later UDP/TCP
		 * fragment is counted (a large DNS answer over UDP would fragment). */
		count(DNS_CTR_FRAGMENTS);
		return 1;
	}
	if (l4_read(skb, &p, &sport, &dport, &payload_off)) {
		count(DNS_CTR_BAD_HEADER);
		return 1;
	}
	if (sport != targ_port && dport != targ_port)
		return 1;
	if (skb->len <= payload_off)
		return 1; /* TCP handshake, ACKs, FINs: no DNS bytes */
	payload_len = skb->len - payload_off;
	if (p.protocol == IPPROTO_UDP &&
	    match_udp(skb, &p, direction, sport, dport, payload_off, payload_len))
		return 1;

	ev = bpf_ringbuf_reserve(&events, sizeof(*ev), 0);
	if (!ev) {
		count(DNS_CTR_LOST_RINGBUF);
		return 1;
	}
	fill_packet(skb, &p, ev, direction, sport, dport, payload_off, payload_len);
	bpf_ringbuf_submit(ev, 0);
	count(DNS_CTR_EVENTS);
	return 1;
}

SEC("cgroup_skb/egress")
int dns_egress(struct __sk_buff *skb)
{
	return handle(skb, DNS_DIR_EGRESS);
}

SEC("cgroup_skb/ingress")
int dns_ingress(struct __sk_buff *skb)
{
	return handle(skb, DNS_DIR_INGRESS);
}
