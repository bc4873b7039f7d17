/*
 * collector.dns._native: the DNS hot path in C. Ring-buffer records (struct dns_event,
 * bpf/dns.h) -> strict parse -> query/response matching -> the JSON of each RawDnsQuery,
 * with its partition key. The Python modules are the spec this follows line by line:
 * collector/dns/abi.py (decode), parser.py (parse), matcher.py (match), pipeline.py (TCP
 * framing) and record.py (the record). tests/unit/collector/test_dns_native.py runs both on
 * the same hostile input (hypothesis) and compares records and counters.
 *
 * Why C: the Python path costs ~40 µs of CPU per query (four packets, two records); a DNS
 * node sees tens of thousands of queries per second.
 *
 * What stays in Python, called back from here: cgroup -> pod attribution (once per distinct
 * cgroup per batch), search-path marking of each new client query (in wire order), the
 * settling of each client result with the search tracker (which may hold its record), name
 * hashing when names are not kept plain, the conntrack lookup of a client's query to a
 * Service address, and the text of the few IPv6 addresses glibc and Python's ipaddress
 * print differently (v4-compatible, v4-mapped).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <arpa/inet.h>
#include <endian.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>

#include <linux/types.h>
#include <netinet/in.h>
#include <stddef.h>

#include "dns.h" /* bpf/: the ABI, included rather than copied */

/* struct dns_event (little-endian; read with memcpy: unaligned-safe). test_dns_abi.py checks
 * dns.h against abi.py, which the Python path decodes with. */
#define EVENT_SIZE ((Py_ssize_t)sizeof(struct dns_event))
_Static_assert(sizeof(struct dns_event) == 600, "struct dns_event changed size");
#define PAYLOAD_MAX DNS_PAYLOAD_MAX
#define EV(field) offsetof(struct dns_event, field)
#define O_TS EV(ts_ns)
#define O_CGROUP EV(cgroup_id)
#define O_SADDR EV(saddr)
#define O_DADDR EV(daddr)
#define O_SOCK_DADDR EV(sock_daddr)
#define O_PAYLOAD_LEN EV(payload_len)
#define O_CAPTURED EV(captured_len)
#define O_SPORT EV(sport)
#define O_DPORT EV(dport)
#define O_SOCK_DPORT EV(sock_dport)
#define O_FAMILY EV(family)
#define O_DIRECTION EV(direction)
#define O_PROTOCOL EV(protocol)
#define O_PAYLOAD EV(payload)
#define ADDR_LEN DNS_ADDR_LEN

#define AF4 AF_INET
#define AF6 AF_INET6
#define PROTO_TCP IPPROTO_TCP
#define PROTO_UDP IPPROTO_UDP
#define RB_BUSY (1u << 31)
#define RB_DISCARD (1u << 30)

/* RFC 1035 wire format (collector/dns/parser.py names the same) */
#define HEADER_SIZE 12
#define RR_FIXED 10 /* type, class, ttl, rdlength */
#define QUESTION_FIXED 4 /* type, class */
#define RCODE_MASK 0xF
#define TYPE_A 1
#define TYPE_CNAME 5
#define TYPE_AAAA 28
#define TYPE_OPT 41
#define A_LEN 4
#define AAAA_LEN 16
enum section { SEC_ANSWER, SEC_AUTHORITY, SEC_ADDITIONAL, SEC_COUNT };
#define MAX_NAME_WIRE 255
#define MAX_LABEL 63
#define MAX_POINTERS 127
#define NAME_TEXT_MAX 1100 /* 255 wire bytes, each up to 4 as \DDD, plus dots */
#define EXPIRED_MEMORY 16384

static uint64_t load64(const uint8_t *p) { uint64_t v; memcpy(&v, p, 8); return le64toh(v); }
static uint32_t load32(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return le32toh(v); }
static uint16_t load16(const uint8_t *p) { uint16_t v; memcpy(&v, p, 2); return le16toh(v); }
static uint16_t be16(const uint8_t *p) { return (uint16_t)((p[0] << 8) | p[1]); }
static uint32_t be32(const uint8_t *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

/* ---- parser (collector/dns/parser.py) --------------------------------------------------- */

enum reason {
    RSN_OK = 0, RSN_SHORT_HEADER, RSN_TRUNCATED, RSN_BAD_POINTER, RSN_BAD_LABEL, RSN_NAME_TOO_LONG,
    RSN_CLIPPED_QUESTION, RSN_TRAILING_BYTES, RSN_BAD_RDATA, RSN_NO_QUESTION, RSN_MAX,
};
static const char *const REASONS[RSN_MAX] = {
    "", "short_header", "truncated", "bad_pointer", "bad_label", "name_too_long",
    "clipped_question", "trailing_bytes", "bad_rdata", "no_question",
};
#define CLIPPED (-1) /* ran off the end of a clipped capture: not an error of the message */

typedef struct {
    int reason;      /* RSN_OK or why it failed */
    int has_header;
    uint16_t txid, flags, qd, an, ns, ar;
    int has_question;
    char name[NAME_TEXT_MAX]; /* the first question's name, presentation form */
    int name_len;
    uint16_t qtype, qclass;
    int rcode;
    int complete;
    /* A/AAAA rdata of the answer section: offsets into the message, and 4 or 16 */
    int naddrs, cap_addrs;
    uint16_t *addr_off;
    uint8_t *addr_len;
    int64_t min_ttl; /* smallest TTL of the answer section's A/AAAA/CNAME records; -1: none */
    /* CNAME records of the answer section: offsets of their owner and target names */
    int ncnames, cap_cnames;
    uint16_t *cname_owner;
    uint16_t *cname_target;
    int end; /* the message's length: where its names must end */
} Msg;

static int is_plain(uint8_t b) { return b >= 0x21 && b < 0x7F && b != '.' && b != '\\'; }

/* The name at off: 0 and *after set, CLIPPED, or a reason. out (if given) gets the text. */
static int walk_name(const uint8_t *d, int end, int off, int clipped, char *out, int *out_len,
                     int *after_out)
{
    int pos = off, after = -1, wire = 0, pointers = 0, lowest = off, n = 0, labels = 0;
    for (;;) {
        if (pos >= end)
            return clipped ? CLIPPED : RSN_TRUNCATED;
        int len = d[pos];
        if (len >= 0xC0) {
            if (pos + 1 >= end)
                return clipped ? CLIPPED : RSN_TRUNCATED;
            int target = ((len & 0x3F) << 8) | d[pos + 1];
            if (target >= lowest)
                return RSN_BAD_POINTER;
            if (++pointers > MAX_POINTERS)
                return RSN_BAD_POINTER;
            if (after < 0)
                after = pos + 2;
            pos = lowest = target;
            continue;
        }
        if (len > MAX_LABEL)
            return RSN_BAD_LABEL;
        wire += len + 1;
        if (wire > MAX_NAME_WIRE)
            return RSN_NAME_TOO_LONG;
        if (len == 0) {
            *after_out = after >= 0 ? after : pos + 1;
            if (out)
                *out_len = n;
            return 0;
        }
        if (pos + 1 + len > end)
            return clipped ? CLIPPED : RSN_TRUNCATED;
        if (out) {
            if (labels++)
                out[n++] = '.';
            for (int i = pos + 1; i <= pos + len; i++) {
                uint8_t b = d[i];
                if (is_plain(b)) {
                    out[n++] = (char)b;
                } else {
                    out[n++] = '\\';
                    out[n++] = (char)('0' + b / 100);
                    out[n++] = (char)('0' + b / 10 % 10);
                    out[n++] = (char)('0' + b % 10);
                }
            }
        }
        pos += 1 + len;
    }
}

static int add_addr(Msg *m, int off, int len)
{
    if (m->naddrs == m->cap_addrs) {
        int cap = m->cap_addrs ? m->cap_addrs * 2 : 64;
        uint16_t *o = PyMem_Realloc(m->addr_off, (size_t)cap * sizeof(*o));
        if (!o)
            return -1;
        m->addr_off = o;
        uint8_t *l = PyMem_Realloc(m->addr_len, (size_t)cap);
        if (!l)
            return -1;
        m->addr_len = l;
        m->cap_addrs = cap;
    }
    m->addr_off[m->naddrs] = (uint16_t)off;
    m->addr_len[m->naddrs++] = (uint8_t)len;
    return 0;
}

static int add_cname(Msg *m, int owner, int target)
{
    if (m->ncnames == m->cap_cnames) {
        int cap = m->cap_cnames ? m->cap_cnames * 2 : 16;
        uint16_t *o = PyMem_Realloc(m->cname_owner, (size_t)cap * sizeof(*o));
        if (!o)
            return -1;
        m->cname_owner = o;
        uint16_t *t = PyMem_Realloc(m->cname_target, (size_t)cap * sizeof(*t));
        if (!t)
            return -1;
        m->cname_target = t;
        m->cap_cnames = cap;
    }
    m->cname_owner[m->ncnames] = (uint16_t)owner;
    m->cname_target[m->ncnames++] = (uint16_t)target;
    return 0;
}

static void free_msg(Msg *m)
{
    PyMem_Free(m->addr_off);
    PyMem_Free(m->addr_len);
    PyMem_Free(m->cname_owner);
    PyMem_Free(m->cname_target);
}

/* Parse one message of at most 65535 bytes into m. Returns -1 only on memory errors. */
static int parse_msg(const uint8_t *d, int end, int clipped, Msg *m)
{
    m->reason = RSN_OK;
    m->has_header = m->has_question = 0;
    m->naddrs = 0;
    m->ncnames = 0;
    m->end = end;
    m->min_ttl = -1;
    m->complete = 0;
    if (end < HEADER_SIZE) {
        m->reason = RSN_SHORT_HEADER;
        return 0;
    }
    m->has_header = 1;
    m->txid = be16(d);
    m->flags = be16(d + 2);
    m->qd = be16(d + 4);
    m->an = be16(d + 6);
    m->ns = be16(d + 8);
    m->ar = be16(d + 10);
    m->rcode = m->flags & RCODE_MASK;
    int pos = HEADER_SIZE, rc = 0, nq = 0;
    for (int i = 0; i < m->qd; i++) {
        int after;
        rc = walk_name(d, end, pos, clipped, i == 0 ? m->name : NULL, &m->name_len, &after);
        if (rc)
            goto stop;
        pos = after;
        if (pos + QUESTION_FIXED > end) {
            rc = clipped ? CLIPPED : RSN_TRUNCATED;
            goto stop;
        }
        if (i == 0) {
            m->qtype = be16(d + pos);
            m->qclass = be16(d + pos + 2);
            m->has_question = 1;
        }
        pos += QUESTION_FIXED;
        nq++;
    }
    const int counts[SEC_COUNT] = {m->an, m->ns, m->ar};
    for (int section = 0; section < SEC_COUNT; section++) {
        for (int i = 0; i < counts[section]; i++) {
            int after, owner = pos;
            rc = walk_name(d, end, pos, clipped, NULL, NULL, &after);
            if (rc)
                goto stop;
            pos = after;
            if (pos + RR_FIXED > end) {
                rc = clipped ? CLIPPED : RSN_TRUNCATED;
                goto stop;
            }
            uint16_t rtype = be16(d + pos);
            uint32_t ttl = be32(d + pos + 4);
            int rdlength = be16(d + pos + 8);
            pos += RR_FIXED;
            if (pos + rdlength > end) {
                rc = clipped ? CLIPPED : RSN_TRUNCATED;
                goto stop;
            }
            if (section == SEC_ANSWER) {
                if (rtype == TYPE_A || rtype == TYPE_AAAA || rtype == TYPE_CNAME) {
                    /* as parser._TTL_TYPES; RFC 2181 8: a TTL with the top bit set is 0 */
                    int64_t t = ttl < 0x80000000u ? (int64_t)ttl : 0;
                    if (m->min_ttl < 0 || t < m->min_ttl)
                        m->min_ttl = t;
                }
                if (rtype == TYPE_A || rtype == TYPE_AAAA) {
                    if (rdlength != (rtype == TYPE_A ? A_LEN : AAAA_LEN)) {
                        rc = RSN_BAD_RDATA;
                        goto stop;
                    }
                    if (add_addr(m, pos, rdlength) < 0)
                        return -1;
                } else if (rtype == TYPE_CNAME) {
                    /* as parser._answer: read_name(data, pos), never in clipped mode */
                    int cend;
                    rc = walk_name(d, end, pos, 0, NULL, NULL, &cend);
                    if (rc)
                        goto stop;
                    if (cend != pos + rdlength) {
                        rc = RSN_BAD_RDATA;
                        goto stop;
                    }
                    /* as parser._answer: then read_name(data, owner) */
                    rc = walk_name(d, end, owner, 0, NULL, NULL, &cend);
                    if (rc)
                        goto stop;
                    if (add_cname(m, owner, pos) < 0)
                        return -1;
                }
            } else if (section == SEC_ADDITIONAL && rtype == TYPE_OPT) {
                /* EDNS: the OPT record's TTL carries the rcode's upper 8 bits */
                m->rcode |= (int)(ttl >> 24) << 4;
            }
            pos += rdlength;
        }
    }
    if (pos != end && !clipped) {
        m->reason = RSN_TRAILING_BYTES;
        return 0;
    }
    m->complete = 1;
    return 0;
stop:
    if (rc == CLIPPED) {
        if (nq == 0 && m->qd) {
            m->reason = RSN_CLIPPED_QUESTION;
            return 0;
        }
        return 0; /* what was complete, complete = 0 */
    }
    m->reason = rc;
    return 0;
}

/* ---- the engine's state ------------------------------------------------------------------ */

/* One packet as the matcher and the record need it (abi.DnsPacket). */
typedef struct {
    int64_t time_ns;
    uint64_t mono_ns, cgroup;
    uint8_t saddr[ADDR_LEN], daddr[ADDR_LEN], sock_daddr[ADDR_LEN];
    uint16_t sport, dport, sock_dport, family;
    uint8_t egress, transport; /* transport: 0 udp, 1 tcp */
    uint32_t payload_len, captured;
} Pkt;

/* A pending query (matcher._Pending plus its key). */
typedef struct Entry {
    struct Entry *next_bucket;
    struct Entry *older, *newer; /* first-seen order, which is deadline order */
    uint64_t prefix_hash, key_hash;
    uint64_t deadline_ns;
    Pkt query;
    uint8_t role; /* 0 client, 1 server */
    uint16_t txid, local_port, remote_port;
    uint8_t remote[ADDR_LEN]; /* server side only */
    uint16_t qtype, qclass;
    int attempts;
    int expansion; /* -1 None, 0, 1 */
    PyObject *asked_name; /* str or NULL */
    int name_len;
    char *lname; /* lower-cased name text, then the name as sent, each name_len bytes */
} Entry;

typedef struct {
    PyObject_HEAD
    uint64_t timeout_ns;
    Py_ssize_t max_pending, pending;
    Entry **buckets;
    size_t mask;
    Entry *oldest, *newest;
    /* expired keys (matcher._expired): a dict for membership, a ring for age */
    PyObject *expired;
    uint64_t *expired_ring;
    Py_ssize_t expired_head, expired_count;
    /* callbacks and constants */
    PyObject *node_json;   /* bytes: the node's name as a JSON string */
    PyObject *label_json;  /* bytes: the privacy label as a JSON string */
    PyObject *cgroup_cb;   /* cgroup_id -> (key: str, fragment: bytes) */
    PyObject *mark_cb;     /* (cgroup_id, qtype, name, mono_ns) -> (bool|None, str|None), or None */
    PyObject *settle_cb;   /* SearchTracker.settle_outcome -> bool (True: it holds the pair), or None */
    PyObject *privacy_cb;  /* name -> str|None, or None when names stay plain */
    PyObject *backend_cb;  /* (family, proto, laddr, lport, raddr, rport) -> (addr, port)|None */
    PyObject *v6_cb;       /* bytes16 -> str (Python's ipaddress text), or None */
    PyObject *out;         /* list of (key, value) being filled */
    /* per-batch cgroup cache */
    uint64_t cg_ids[32];
    PyObject *cg_vals[32];
    int cg_used;
    int64_t offset_ns;
    Msg msg;
    /* counters (matcher.MatcherStats, pipeline.PipelineStats, abi.DecodeStats) */
    uint64_t queries, retransmissions, answered, timeouts, malformed, unmatched_responses,
        late_responses, question_mismatches, evicted, malformed_packets;
    uint64_t reasons[RSN_MAX];
    uint64_t packets, messages, clipped, tcp_unframed, decoded, decode_errors, discarded;
    char *buf;
    size_t buf_cap;
} Engine;

static uint64_t fnv(uint64_t h, const void *p, size_t n)
{
    const uint8_t *b = p;
    for (size_t i = 0; i < n; i++) {
        h ^= b[i];
        h *= 0x100000001b3ULL;
    }
    return h;
}

static uint64_t mix(uint64_t x)
{
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdULL;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ULL;
    x ^= x >> 33;
    return x;
}

typedef struct {
    uint64_t cgroup;
    uint8_t role, transport;
    uint16_t local_port, remote_port, txid;
    uint16_t remote_family;
    uint8_t remote[ADDR_LEN];
} PrefixKey;

static uint64_t prefix_hash(const PrefixKey *k)
{
    return mix(fnv(0xcbf29ce484222325ULL, k, sizeof(*k)));
}

static uint64_t key_hash(uint64_t ph, const char *lname, int n, uint16_t qtype, uint16_t qclass)
{
    uint64_t h = fnv(ph, lname, (size_t)n);
    uint16_t tc[2] = {qtype, qclass};
    return mix(fnv(h, tc, sizeof(tc)) ^ (uint64_t)n);
}

static int same_prefix(const Entry *e, const PrefixKey *k)
{
    return e->query.cgroup == k->cgroup && e->role == k->role &&
           e->query.transport == k->transport && e->local_port == k->local_port &&
           e->txid == k->txid && e->remote_port == k->remote_port &&
           (k->role == 0 || (e->query.family == k->remote_family &&
                             memcmp(e->remote, k->remote, ADDR_LEN) == 0));
}

static int same_qkey(const Entry *e, const char *lname, int n, uint16_t qtype, uint16_t qclass)
{
    return e->name_len == n && e->qtype == qtype && e->qclass == qclass &&
           memcmp(e->lname, lname, (size_t)n) == 0;
}

static void unlink_entry(Engine *s, Entry *e)
{
    Entry **pp = &s->buckets[e->prefix_hash & s->mask];
    while (*pp != e)
        pp = &(*pp)->next_bucket;
    *pp = e->next_bucket;
    if (e->older)
        e->older->newer = e->newer;
    else
        s->oldest = e->newer;
    if (e->newer)
        e->newer->older = e->older;
    else
        s->newest = e->older;
    s->pending--;
}

static void free_entry(Entry *e)
{
    Py_XDECREF(e->asked_name);
    PyMem_Free(e);
}

static int grow(Engine *s)
{
    size_t cap = (s->mask + 1) * 2;
    Entry **b = PyMem_Calloc(cap, sizeof(*b));
    if (!b) {
        PyErr_NoMemory();
        return -1;
    }
    for (Entry *e = s->oldest; e; e = e->newer) {
        size_t i = e->prefix_hash & (cap - 1);
        e->next_bucket = b[i];
        b[i] = e;
    }
    PyMem_Free(s->buckets);
    s->buckets = b;
    s->mask = cap - 1;
    return 0;
}

/* ---- JSON output ------------------------------------------------------------------------- */

static int reserve(Engine *s, size_t *len, size_t more)
{
    if (*len + more <= s->buf_cap)
        return 0;
    size_t cap = s->buf_cap * 2;
    while (cap < *len + more)
        cap *= 2;
    char *b = PyMem_Realloc(s->buf, cap);
    if (!b) {
        PyErr_NoMemory();
        return -1;
    }
    s->buf = b;
    s->buf_cap = cap;
    return 0;
}

#define W(lit)                                                                              \
    do {                                                                                    \
        if (reserve(s, &n, sizeof(lit)) < 0)                                                \
            return -1;                                                                      \
        memcpy(s->buf + n, lit, sizeof(lit) - 1);                                           \
        n += sizeof(lit) - 1;                                                               \
    } while (0)

static int w_raw(Engine *s, size_t *n, const char *p, size_t len)
{
    if (reserve(s, n, len) < 0)
        return -1;
    memcpy(s->buf + *n, p, len);
    *n += len;
    return 0;
}

static int w_int(Engine *s, size_t *n, int64_t v)
{
    char tmp[24];
    int k = snprintf(tmp, sizeof(tmp), "%lld", (long long)v);
    return w_raw(s, n, tmp, (size_t)k);
}

/* A JSON string of UTF-8 bytes: escapes what JSON requires, the rest as is. */
static int w_str(Engine *s, size_t *n, const char *p, size_t len)
{
    if (reserve(s, n, len * 6 + 2) < 0)
        return -1;
    char *o = s->buf + *n;
    *o++ = '"';
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)p[i];
        if (c == '"' || c == '\\') {
            *o++ = '\\';
            *o++ = (char)c;
        } else if (c < 0x20) {
            o += sprintf(o, "\\u%04x", c);
        } else {
            *o++ = (char)c;
        }
    }
    *o++ = '"';
    *n = (size_t)(o - s->buf);
    return 0;
}

static int w_pystr(Engine *s, size_t *n, PyObject *str)
{
    if (str == NULL || str == Py_None)
        return w_raw(s, n, "null", 4);
    Py_ssize_t len;
    const char *p = PyUnicode_AsUTF8AndSize(str, &len);
    if (!p)
        return -1;
    return w_str(s, n, p, (size_t)len);
}

static int same_name(const char *a, int alen, const char *b, int blen)
{
    if (alen != blen)
        return 0;
    for (int i = 0; i < alen; i++) {
        char x = a[i], y = b[i];
        if (x >= 'A' && x <= 'Z')
            x = (char)(x - 'A' + 'a');
        if (y >= 'A' && y <= 'Z')
            y = (char)(y - 'A' + 'a');
        if (x != y)
            return 0;
    }
    return 1;
}

/* parser.Message.cname_chain as JSON array items: from the question's name, each owner to
 * its target, at most as many steps as CNAME records. Names were validated by parse_msg. */
static int w_cname_chain(Engine *s, size_t *n, const Msg *m, const uint8_t *d)
{
    if (!m->has_question || m->ncnames == 0)
        return 0;
    char cur[NAME_TEXT_MAX], name[NAME_TEXT_MAX];
    int cur_len = m->name_len, len, after;
    memcpy(cur, m->name, (size_t)cur_len);
    for (int step = 0; step < m->ncnames; step++) {
        int found = -1;
        for (int i = 0; i < m->ncnames && found < 0; i++) {
            if (walk_name(d, m->end, m->cname_owner[i], 0, name, &len, &after) == 0 &&
                same_name(name, len, cur, cur_len))
                found = i;
        }
        if (found < 0)
            return 0;
        if (walk_name(d, m->end, m->cname_target[found], 0, name, &len, &after))
            return 0;
        if (step && w_raw(s, n, ",", 1))
            return -1;
        if (w_str(s, n, name, (size_t)len))
            return -1;
        memcpy(cur, name, (size_t)len);
        cur_len = len;
    }
    return 0;
}

/* Text of a 16-byte IPv6 address as Python's ipaddress prints it (into out, >= 46 bytes). */
static int v6_text(Engine *s, const uint8_t *raw, char *out, int *len)
{
    static const uint8_t zeros[10] = {0};
    if (memcmp(raw, zeros, 10) == 0 && ((raw[10] == 0 && raw[11] == 0) ||
                                        (raw[10] == 0xFF && raw[11] == 0xFF))) {
        /* glibc prints these with an embedded IPv4 address, Python does not: ask Python */
        PyObject *t = PyObject_CallFunction(s->v6_cb, "y#", (const char *)raw, (Py_ssize_t)16);
        if (!t)
            return -1;
        Py_ssize_t tl;
        const char *p = PyUnicode_AsUTF8AndSize(t, &tl);
        if (!p || tl > 45) {
            Py_DECREF(t);
            if (p)
                PyErr_SetString(PyExc_ValueError, "address text too long");
            return -1;
        }
        memcpy(out, p, (size_t)tl);
        *len = (int)tl;
        Py_DECREF(t);
        return 0;
    }
    if (!inet_ntop(AF_INET6, raw, out, 46)) {
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    *len = (int)strlen(out);
    return 0;
}

/* abi._addr: socket.inet_ntop of a packet address (glibc, as here). */
static int pkt_addr(const uint8_t *raw, uint16_t family, char *out, int *len)
{
    if (!inet_ntop(family == AF4 ? AF_INET : AF_INET6, raw, out, 46)) {
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    *len = (int)strlen(out);
    return 0;
}

static int v4_text(const uint8_t *raw, char *out, int *len)
{
    *len = sprintf(out, "%u.%u.%u.%u", raw[0], raw[1], raw[2], raw[3]);
    return 0;
}

/* abi._sock_peer_text: the socket's connected peer, v4-mapped shown as IPv4. */
static int sock_peer_text(Engine *s, const uint8_t *raw, uint16_t family, char *out, int *len)
{
    static const uint8_t zeros[12] = {0};
    static const uint8_t mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF};
    if (family != AF6 && memcmp(raw + 4, zeros, 12) == 0)
        return v4_text(raw, out, len);
    if (memcmp(raw, mapped, 12) == 0)
        return v4_text(raw + 12, out, len);
    return v6_text(s, raw, out, len);
}

/* The record's cgroup (key, fragment), cached for one batch. Borrowed reference. */
static PyObject *cgroup_of(Engine *s, uint64_t id)
{
    for (int i = 0; i < s->cg_used; i++)
        if (s->cg_ids[i] == id)
            return s->cg_vals[i];
    PyObject *v = PyObject_CallFunction(s->cgroup_cb, "K", (unsigned long long)id);
    if (!v)
        return NULL;
    if (!PyTuple_Check(v) || PyTuple_GET_SIZE(v) != 2 ||
        !PyBytes_Check(PyTuple_GET_ITEM(v, 1))) {
        Py_DECREF(v);
        PyErr_SetString(PyExc_TypeError, "cgroup callback must return (key, bytes)");
        return NULL;
    }
    if (s->cg_used == 32) {
        Py_DECREF(s->cg_vals[0]);
        memmove(s->cg_ids, s->cg_ids + 1, 31 * sizeof(uint64_t));
        memmove(s->cg_vals, s->cg_vals + 1, 31 * sizeof(PyObject *));
        s->cg_used--;
    }
    s->cg_ids[s->cg_used] = id;
    s->cg_vals[s->cg_used++] = v;
    return v;
}

static void cgroup_reset(Engine *s)
{
    for (int i = 0; i < s->cg_used; i++)
        Py_DECREF(s->cg_vals[i]);
    s->cg_used = 0;
}

enum outcome { O_ANSWERED, O_TIMEOUT, O_MALFORMED };
static const char *const OUTCOMES[] = {"\"answered\"", "\"timeout\"", "\"malformed\""};

static const char *type_name(uint16_t t)
{
    switch (t) {
    case 1: return "A"; case 2: return "NS"; case 5: return "CNAME"; case 6: return "SOA";
    case 12: return "PTR"; case 13: return "HINFO"; case 15: return "MX"; case 16: return "TXT";
    case 28: return "AAAA"; case 33: return "SRV"; case 35: return "NAPTR"; case 41: return "OPT";
    case 43: return "DS"; case 46: return "RRSIG"; case 47: return "NSEC";
    case 48: return "DNSKEY"; case 64: return "SVCB"; case 65: return "HTTPS";
    case 252: return "AXFR"; case 255: return "ANY"; case 257: return "CAA";
    }
    return NULL;
}

static const char *rcode_name(int r)
{
    static const char *const names[] = {"NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP",
                                        "REFUSED", "YXDOMAIN", "YXRRSET", "NXRRSET", "NOTAUTH",
                                        "NOTZONE"};
    if (r >= 0 && r <= 10)
        return names[r];
    if (r == 16)
        return "BADVERS";
    return NULL;
}

/*
 * One record (record.build_record), appended to s->out as (key, value).
 * q: the query packet; role; txid; question (name/qtype, or has_q 0); attempts; outcome;
 * r/m/d: the response packet, its parsed message and bytes (NULL for none); reason.
 */
typedef struct {
    const Pkt *q;
    int role;
    uint16_t txid;
    int has_q;
    const char *name;
    int name_len;
    uint16_t qtype;
    int attempts;
    int outcome;
    const Pkt *r;
    const Msg *m;
    const uint8_t *d; /* the response message's bytes (for its addresses) */
    int reason;       /* RSN_OK: none */
    int expansion;
    PyObject *asked_name;
} Result;

/* pipeline._emit's search.settle(result) for a client result with a question, from the same
 * summary (search.SearchTracker.settle_outcome). 1: the tracker holds pair, 0: it does not. */
static int settle(Engine *s, const Result *x, PyObject *pair)
{
    const Pkt *q = x->q;
    uint64_t end = x->r && x->r->mono_ns > q->mono_ns ? x->r->mono_ns : q->mono_ns;
    PyObject *rcode = x->m ? PyLong_FromLong(x->m->rcode) : Py_NewRef(Py_None);
    if (!rcode)
        return -1;
    PyObject *exp = x->expansion < 0 ? Py_None : x->expansion ? Py_True : Py_False;
    PyObject *asked = x->asked_name ? x->asked_name : Py_None;
    PyObject *r = PyObject_CallFunction(s->settle_cb, "KHs#NiOOKO", (unsigned long long)q->cgroup,
                                        x->qtype, x->name, (Py_ssize_t)x->name_len, rcode,
                                        x->m ? (int)x->m->an : 0, exp, asked,
                                        (unsigned long long)end, pair);
    if (!r)
        return -1;
    int held = PyObject_IsTrue(r);
    Py_DECREF(r);
    return held;
}

static int emit(Engine *s, const Result *x)
{
    const Pkt *q = x->q;
    char laddr[46], raddr[46], orig[46];
    int llen, rlen, olen = -1;
    const uint8_t *lraw = q->egress ? q->saddr : q->daddr;
    const uint8_t *rraw = q->egress ? q->daddr : q->saddr;
    int lport = q->egress ? q->sport : q->dport;
    int rport = q->egress ? q->dport : q->sport;
    if (pkt_addr(lraw, q->family, laddr, &llen) < 0 || pkt_addr(rraw, q->family, raddr, &rlen) < 0)
        return -1;
    int backend_used = 0;
    if (s->backend_cb != Py_None && x->role == 0) {
        PyObject *b = PyObject_CallFunction(s->backend_cb, "iis#is#i", q->family == AF4 ? 4 : 6,
                                            q->transport ? PROTO_TCP : PROTO_UDP, laddr,
                                            (Py_ssize_t)llen, lport, raddr, (Py_ssize_t)rlen,
                                            rport);
        if (!b)
            return -1;
        if (b != Py_None) {
            const char *ba;
            Py_ssize_t bal;
            int bport;
            if (!PyArg_ParseTuple(b, "s#i", &ba, &bal, &bport) || bal > 45) {
                Py_DECREF(b);
                if (!PyErr_Occurred())
                    PyErr_SetString(PyExc_ValueError, "backend address too long");
                return -1;
            }
            if (!(bal == rlen && memcmp(ba, raddr, (size_t)rlen) == 0 && bport == rport)) {
                memcpy(orig, raddr, (size_t)rlen);
                olen = rlen;
                memcpy(raddr, ba, (size_t)bal);
                rlen = (int)bal;
                rport = bport;
                backend_used = 1;
            }
        }
        Py_DECREF(b);
    }
    if (!backend_used && x->role == 0) {
        int have = 0;
        if (q->sock_dport) {
            if (sock_peer_text(s, q->sock_daddr, q->family, orig, &olen) < 0)
                return -1;
            have = 1;
        } else if (x->r) {
            if (pkt_addr(x->r->saddr, x->r->family, orig, &olen) < 0)
                return -1;
            have = 1;
        }
        if (have && olen == rlen && memcmp(orig, raddr, (size_t)rlen) == 0)
            olen = -1;
        if (!have)
            olen = -1;
    }
    PyObject *cg = cgroup_of(s, q->cgroup);
    if (!cg)
        return -1;
    size_t n = 0;
    W("{\"v\":1,\"node\":");
    if (w_raw(s, &n, PyBytes_AS_STRING(s->node_json), (size_t)PyBytes_GET_SIZE(s->node_json)))
        return -1;
    if (x->role == 0)
        W(",\"role\":\"client\",\"time_ns\":");
    else
        W(",\"role\":\"server\",\"time_ns\":");
    if (w_int(s, &n, q->time_ns))
        return -1;
    W(",\"response_time_ns\":");
    if (x->r) {
        if (w_int(s, &n, x->r->time_ns))
            return -1;
        W(",\"latency_us\":");
        int64_t lat = (int64_t)(x->r->mono_ns - q->mono_ns);
        if (x->r->mono_ns < q->mono_ns)
            lat = 0;
        if (w_int(s, &n, lat / 1000))
            return -1;
    } else {
        W("null,\"latency_us\":null");
    }
    if (q->family == AF4)
        W(",\"family\":4");
    else
        W(",\"family\":6");
    if (q->transport)
        W(",\"transport\":\"tcp\",\"local_addr\":");
    else
        W(",\"transport\":\"udp\",\"local_addr\":");
    if (w_str(s, &n, laddr, (size_t)llen))
        return -1;
    W(",\"local_port\":");
    if (w_int(s, &n, lport))
        return -1;
    W(",\"remote_addr\":");
    if (w_str(s, &n, raddr, (size_t)rlen))
        return -1;
    W(",\"remote_port\":");
    if (w_int(s, &n, rport))
        return -1;
    W(",\"original_remote_addr\":");
    if (olen >= 0) {
        if (w_str(s, &n, orig, (size_t)olen))
            return -1;
    } else {
        W("null");
    }
    W(",\"cgroup_id\":");
    if (w_int(s, &n, (int64_t)q->cgroup))
        return -1;
    W(",");
    PyObject *frag = PyTuple_GET_ITEM(cg, 1);
    if (w_raw(s, &n, PyBytes_AS_STRING(frag), (size_t)PyBytes_GET_SIZE(frag)))
        return -1;
    W(",\"txid\":");
    if (w_int(s, &n, x->txid))
        return -1;
    W(",\"query_name\":");
    if (!x->has_q) {
        W("null,\"query_type\":null");
    } else {
        if (s->privacy_cb == Py_None) {
            if (w_str(s, &n, x->name, (size_t)x->name_len))
                return -1;
        } else {
            PyObject *h = PyObject_CallFunction(s->privacy_cb, "s#", x->name,
                                                (Py_ssize_t)x->name_len);
            if (!h)
                return -1;
            int rc = w_pystr(s, &n, h);
            Py_DECREF(h);
            if (rc)
                return -1;
        }
        W(",\"query_type\":");
        const char *tn = type_name(x->qtype);
        char tmp[16];
        if (!tn) {
            snprintf(tmp, sizeof(tmp), "TYPE%u", x->qtype);
            tn = tmp;
        }
        if (w_str(s, &n, tn, strlen(tn)))
            return -1;
    }
    W(",\"name_privacy\":");
    if (w_raw(s, &n, PyBytes_AS_STRING(s->label_json), (size_t)PyBytes_GET_SIZE(s->label_json)))
        return -1;
    W(",\"outcome\":");
    if (w_raw(s, &n, OUTCOMES[x->outcome], strlen(OUTCOMES[x->outcome])))
        return -1;
    W(",\"rcode\":");
    const Msg *m = x->m;
    if (m) {
        const char *rn = rcode_name(m->rcode);
        char tmp[24];
        if (!rn) {
            snprintf(tmp, sizeof(tmp), "RCODE%d", m->rcode);
            rn = tmp;
        }
        if (w_str(s, &n, rn, strlen(rn)))
            return -1;
        W(",\"answer_count\":");
        if (w_int(s, &n, m->an))
            return -1;
        W(",\"answer_addrs\":[");
        for (int i = 0; i < m->naddrs; i++) {
            char a[46];
            int al;
            const uint8_t *raw = x->d + m->addr_off[i];
            if (m->addr_len[i] == 4)
                v4_text(raw, a, &al);
            else if (v6_text(s, raw, a, &al) < 0)
                return -1;
            if (i)
                W(",");
            if (w_str(s, &n, a, (size_t)al))
                return -1;
        }
        W("],\"answer_cnames\":[");
        if (s->privacy_cb == Py_None && w_cname_chain(s, &n, m, x->d))
            return -1;
        W("],\"answer_ttl_s\":");
        if (m->min_ttl < 0)
            W("null");
        else if (w_int(s, &n, m->min_ttl))
            return -1;
        if (m->flags & 0x0200)
            W(",\"response_truncated\":true");
        else
            W(",\"response_truncated\":false");
    } else {
        W("null,\"answer_count\":null,\"answer_addrs\":[],\"answer_cnames\":[],"
          "\"answer_ttl_s\":null,"
          "\"response_truncated\":false");
    }
    W(",\"attempts\":");
    if (w_int(s, &n, x->attempts))
        return -1;
    W(",\"search_expansion\":");
    if (x->expansion < 0)
        W("null");
    else if (x->expansion)
        W("true");
    else
        W("false");
    W(",\"asked_name\":");
    if (x->asked_name && s->privacy_cb != Py_None) {
        PyObject *h = PyObject_CallFunctionObjArgs(s->privacy_cb, x->asked_name, NULL);
        if (!h)
            return -1;
        int rc = w_pystr(s, &n, h);
        Py_DECREF(h);
        if (rc)
            return -1;
    } else if (w_pystr(s, &n, x->asked_name)) {
        return -1;
    }
    W(",\"malformed_reason\":");
    if (x->reason == RSN_OK) {
        W("null}");
    } else {
        if (w_str(s, &n, REASONS[x->reason], strlen(REASONS[x->reason])))
            return -1;
        W("}");
    }
    PyObject *value = PyBytes_FromStringAndSize(s->buf, (Py_ssize_t)n);
    if (!value)
        return -1;
    PyObject *pair = PyTuple_Pack(2, PyTuple_GET_ITEM(cg, 0), value);
    Py_DECREF(value);
    if (!pair)
        return -1;
    if (x->role == 0 && x->has_q && s->settle_cb != Py_None) {
        int held = settle(s, x, pair);
        if (held != 0) {
            Py_DECREF(pair);
            return held < 0 ? -1 : 0; /* held: the tracker hands it back when decided */
        }
    }
    int rc = PyList_Append(s->out, pair);
    Py_DECREF(pair);
    return rc;
}

static void entry_result(Entry *e, Result *x)
{
    memset(x, 0, sizeof(*x));
    x->q = &e->query;
    x->role = e->role;
    x->txid = e->txid;
    x->has_q = 1;
    x->name = e->lname + e->name_len;
    x->name_len = e->name_len;
    x->qtype = e->qtype;
    x->attempts = e->attempts;
    x->expansion = e->expansion;
    x->asked_name = e->asked_name;
}

/* ---- matcher (collector/dns/matcher.py) --------------------------------------------------- */

static int expired_contains(Engine *s, uint64_t h)
{
    PyObject *k = PyLong_FromUnsignedLongLong(h);
    if (!k)
        return -1;
    int rc = PyDict_Contains(s->expired, k);
    Py_DECREF(k);
    return rc;
}

static int expired_add(Engine *s, uint64_t h)
{
    PyObject *k = PyLong_FromUnsignedLongLong(h);
    if (!k)
        return -1;
    int rc = PyDict_Contains(s->expired, k);
    if (rc == 0) {
        rc = PyDict_SetItem(s->expired, k, Py_None);
        if (rc == 0) {
            Py_ssize_t slot = (s->expired_head + s->expired_count) % (EXPIRED_MEMORY + 1);
            s->expired_ring[slot] = h;
            s->expired_count++;
            if (s->expired_count > EXPIRED_MEMORY) {
                PyObject *old = PyLong_FromUnsignedLongLong(s->expired_ring[s->expired_head]);
                if (!old)
                    rc = -1;
                else {
                    rc = PyDict_DelItem(s->expired, old);
                    Py_DECREF(old);
                }
                s->expired_head = (s->expired_head + 1) % (EXPIRED_MEMORY + 1);
                s->expired_count--;
            }
        }
    }
    Py_DECREF(k);
    return rc < 0 ? -1 : 0;
}

static void lower(char *dst, const char *src, int n)
{
    for (int i = 0; i < n; i++) {
        char c = src[i];
        dst[i] = (c >= 'A' && c <= 'Z') ? (char)(c + 32) : c;
    }
}

/* One parsed message of packet p (matcher.observe), d/dlen its bytes. */
static int observe(Engine *s, const Pkt *p, const uint8_t *d, Msg *m)
{
    if (m->reason != RSN_OK) {
        s->reasons[m->reason]++;
        if (!m->has_header) {
            s->malformed_packets++;
            return 0;
        }
    }
    int is_response = (m->flags & 0x8000) != 0;
    int role = (p->egress != is_response) ? 0 : 1;
    PrefixKey k;
    memset(&k, 0, sizeof(k));
    k.cgroup = p->cgroup;
    k.role = (uint8_t)role;
    k.transport = p->transport;
    k.local_port = p->egress ? p->sport : p->dport;
    k.txid = m->txid;
    if (role == 1) {
        k.remote_family = p->family;
        memcpy(k.remote, p->egress ? p->daddr : p->saddr, ADDR_LEN);
        k.remote_port = p->egress ? p->dport : p->sport;
    }
    uint64_t ph = prefix_hash(&k);
    int has_q = m->reason == RSN_OK && m->has_question;
    char lname[NAME_TEXT_MAX];
    uint64_t kh = 0;
    if (has_q) {
        lower(lname, m->name, m->name_len);
        kh = key_hash(ph, lname, m->name_len, m->qtype, m->qclass);
    }
    Entry *bucket = s->buckets[ph & s->mask];
    if (!is_response) {
        if (!has_q) {
            s->queries++;
            s->malformed++;
            Result x;
            memset(&x, 0, sizeof(x));
            x.q = p;
            x.role = role;
            x.txid = m->txid;
            x.attempts = 1;
            x.outcome = O_MALFORMED;
            x.reason = m->reason != RSN_OK ? m->reason : RSN_NO_QUESTION;
            x.expansion = -1;
            return emit(s, &x);
        }
        for (Entry *e = bucket; e; e = e->next_bucket) {
            if (e->key_hash == kh && same_prefix(e, &k) &&
                same_qkey(e, lname, m->name_len, m->qtype, m->qclass)) {
                e->attempts++;
                s->retransmissions++;
                return 0;
            }
        }
        if (s->pending >= s->max_pending) {
            Entry *old = s->oldest;
            unlink_entry(s, old);
            free_entry(old);
            s->evicted++;
        }
        s->queries++;
        Entry *e = PyMem_Malloc(sizeof(Entry) + 2 * (size_t)m->name_len + 1);
        if (!e) {
            PyErr_NoMemory();
            return -1;
        }
        memset(e, 0, sizeof(*e));
        e->lname = (char *)(e + 1);
        memcpy(e->lname, lname, (size_t)m->name_len);
        memcpy(e->lname + m->name_len, m->name, (size_t)m->name_len);
        e->name_len = m->name_len;
        e->prefix_hash = ph;
        e->key_hash = kh;
        e->deadline_ns = p->mono_ns + s->timeout_ns;
        e->query = *p;
        e->role = (uint8_t)role;
        e->txid = m->txid;
        e->local_port = k.local_port;
        e->remote_port = k.remote_port;
        memcpy(e->remote, k.remote, ADDR_LEN);
        e->qtype = m->qtype;
        e->qclass = m->qclass;
        e->attempts = 1;
        e->expansion = -1;
        if (s->pending >= (Py_ssize_t)(s->mask + 1) && grow(s) < 0) {
            PyMem_Free(e);
            return -1;
        }
        size_t i = ph & s->mask;
        e->next_bucket = s->buckets[i];
        s->buckets[i] = e;
        e->older = s->newest;
        if (s->newest)
            s->newest->newer = e;
        else
            s->oldest = e;
        s->newest = e;
        s->pending++;
        if (s->mark_cb != Py_None && p->egress) {
            /* a new client query, in wire order: place it in a search sequence */
            PyObject *mk = PyObject_CallFunction(s->mark_cb, "KHs#K",
                                                 (unsigned long long)p->cgroup, m->qtype,
                                                 m->name, (Py_ssize_t)m->name_len,
                                                 (unsigned long long)p->mono_ns);
            if (!mk)
                return -1;
            PyObject *exp, *asked;
            if (!PyArg_ParseTuple(mk, "OO", &exp, &asked)) {
                Py_DECREF(mk);
                return -1;
            }
            e->expansion = exp == Py_None ? -1 : PyObject_IsTrue(exp);
            if (asked != Py_None) {
                Py_INCREF(asked);
                e->asked_name = asked;
            }
            Py_DECREF(mk);
        }
        return 0;
    }
    /* a response */
    Entry *found = NULL;
    int same = 0;
    for (Entry *e = bucket; e; e = e->next_bucket) {
        if (e->prefix_hash != ph || !same_prefix(e, &k))
            continue;
        same++;
        if (has_q) {
            if (e->key_hash == kh && same_qkey(e, lname, m->name_len, m->qtype, m->qclass))
                found = e;
        } else {
            found = e;
        }
    }
    if (has_q) {
        if (!found) {
            if (same) {
                s->question_mismatches++;
            } else {
                int rc = expired_contains(s, kh);
                if (rc < 0)
                    return -1;
                if (rc)
                    s->late_responses++;
                else
                    s->unmatched_responses++;
            }
            return 0;
        }
    } else if (same != 1) {
        s->unmatched_responses++;
        return 0;
    }
    unlink_entry(s, found);
    Result x;
    entry_result(found, &x);
    x.r = p;
    x.d = d;
    if (m->reason != RSN_OK) {
        x.outcome = O_MALFORMED;
        x.reason = m->reason;
        x.m = NULL;
        s->malformed++;
    } else {
        x.outcome = O_ANSWERED;
        x.m = m;
        s->answered++;
    }
    int rc = emit(s, &x);
    free_entry(found);
    return rc;
}

/* ---- packets ------------------------------------------------------------------------------- */

static int handle_message(Engine *s, const Pkt *p, const uint8_t *d, int len, int clipped)
{
    s->messages++;
    if (parse_msg(d, len, clipped, &s->msg) < 0) {
        PyErr_NoMemory();
        return -1;
    }
    return observe(s, p, d, &s->msg);
}

/* The fixed part of a dns_event into p; 0 if it is not a valid one. */
static int decode_pkt(Engine *s, const uint8_t *ev, Pkt *p)
{
    p->family = load16(ev + O_FAMILY);
    uint8_t proto = ev[O_PROTOCOL];
    p->payload_len = load32(ev + O_PAYLOAD_LEN);
    p->captured = load32(ev + O_CAPTURED);
    if ((p->family != AF4 && p->family != AF6) || (proto != PROTO_UDP && proto != PROTO_TCP) ||
        p->captured > PAYLOAD_MAX || p->captured > p->payload_len)
        return 0;
    p->mono_ns = load64(ev + O_TS);
    p->time_ns = (int64_t)p->mono_ns + s->offset_ns;
    p->cgroup = load64(ev + O_CGROUP);
    memcpy(p->saddr, ev + O_SADDR, ADDR_LEN);
    memcpy(p->daddr, ev + O_DADDR, ADDR_LEN);
    memcpy(p->sock_daddr, ev + O_SOCK_DADDR, ADDR_LEN);
    if (p->family == AF4) {
        /* abi._addr keys IPv4 on the first 4 bytes: the rest is not part of the address */
        memset(p->saddr + 4, 0, 12);
        memset(p->daddr + 4, 0, 12);
    }
    p->sport = load16(ev + O_SPORT);
    p->dport = load16(ev + O_DPORT);
    p->sock_dport = load16(ev + O_SOCK_DPORT);
    p->egress = ev[O_DIRECTION] == DNS_DIR_EGRESS;
    p->transport = proto == PROTO_TCP;
    return 1;
}

static int handle_pkt(Engine *s, const Pkt *pp, const uint8_t *d)
{
    Pkt p = *pp;
    s->packets++;
    int clipped = p.payload_len > p.captured;
    if (clipped)
        s->clipped++;
    int len = (int)p.captured;
    if (!p.transport)
        return handle_message(s, &p, d, len, clipped);
    /* DNS over TCP: each message after its 2-byte length (pipeline._messages) */
    int pos = 0;
    while (pos + 2 <= len) {
        int mlen = be16(d + pos);
        int end = pos + 2 + mlen;
        if (mlen == 0 || (end > len && !clipped)) {
            s->tcp_unframed++;
            return 0;
        }
        int stop = end > len ? len : end;
        if (handle_message(s, &p, d + pos + 2, stop - pos - 2, end > len) < 0)
            return -1;
        pos = end;
    }
    if (pos != len && !clipped)
        s->tcp_unframed++;
    return 0;
}

#define PAIR_SIZE ((Py_ssize_t)sizeof(struct dns_pair_event))
#define MAX_ATTEMPTS 65535 /* abi.MAX_ATTEMPTS */
_Static_assert(sizeof(struct dns_query_side) == 336, "struct dns_query_side changed size");
#define Q(field) (EVENT_SIZE + offsetof(struct dns_query_side, field))

/* A query matched in the kernel and its response (abi.decode_pair): the query once per
 * attempt, then the response, as their packets would have come. */
static int handle_pair(Engine *s, const uint8_t *ev)
{
    Pkt r, q;
    if (!decode_pkt(s, ev, &r) || r.transport) {
        s->decode_errors++;
        return 0;
    }
    uint32_t qlen = load32(ev + Q(payload_len));
    uint32_t attempts = load32(ev + Q(attempts));
    if (qlen < HEADER_SIZE || qlen > DNS_QUERY_MAX || attempts < 1 || attempts > MAX_ATTEMPTS) {
        s->decode_errors++;
        return 0;
    }
    s->decoded++;
    q = r;
    q.mono_ns = load64(ev + Q(ts_ns));
    q.time_ns = (int64_t)q.mono_ns + s->offset_ns;
    memcpy(q.saddr, ev + Q(saddr), ADDR_LEN);
    memcpy(q.daddr, ev + Q(daddr), ADDR_LEN);
    memcpy(q.sock_daddr, ev + Q(sock_daddr), ADDR_LEN);
    if (q.family == AF4) {
        memset(q.saddr + 4, 0, 12);
        memset(q.daddr + 4, 0, 12);
    }
    q.sport = load16(ev + Q(sport));
    q.dport = load16(ev + Q(dport));
    q.sock_dport = load16(ev + Q(sock_dport));
    q.egress = !r.egress;
    q.payload_len = q.captured = qlen;
    for (uint32_t i = 0; i < attempts; i++)
        if (handle_pkt(s, &q, ev + Q(payload)) < 0)
            return -1;
    return handle_pkt(s, &r, ev + O_PAYLOAD);
}

static int handle_event(Engine *s, const uint8_t *ev, Py_ssize_t length)
{
    if (length == PAIR_SIZE)
        return handle_pair(s, ev);
    Pkt p;
    if (length != EVENT_SIZE || !decode_pkt(s, ev, &p)) {
        s->decode_errors++;
        return 0;
    }
    s->decoded++;
    return handle_pkt(s, &p, ev + O_PAYLOAD);
}

/* ---- the Python type ----------------------------------------------------------------------- */

static int Engine_traverse(Engine *s, visitproc visit, void *arg)
{
    Py_VISIT(s->expired);
    Py_VISIT(s->node_json);
    Py_VISIT(s->label_json);
    Py_VISIT(s->cgroup_cb);
    Py_VISIT(s->mark_cb);
    Py_VISIT(s->settle_cb);
    Py_VISIT(s->privacy_cb);
    Py_VISIT(s->backend_cb);
    Py_VISIT(s->v6_cb);
    for (Entry *e = s->oldest; e; e = e->newer)
        Py_VISIT(e->asked_name);
    return 0;
}

static void drop_all(Engine *s)
{
    Entry *e = s->oldest;
    while (e) {
        Entry *next = e->newer;
        free_entry(e);
        e = next;
    }
    s->oldest = s->newest = NULL;
    s->pending = 0;
    if (s->buckets)
        memset(s->buckets, 0, (s->mask + 1) * sizeof(*s->buckets));
}

static int Engine_clear(Engine *s)
{
    drop_all(s);
    cgroup_reset(s);
    Py_CLEAR(s->expired);
    Py_CLEAR(s->node_json);
    Py_CLEAR(s->label_json);
    Py_CLEAR(s->cgroup_cb);
    Py_CLEAR(s->mark_cb);
    Py_CLEAR(s->settle_cb);
    Py_CLEAR(s->privacy_cb);
    Py_CLEAR(s->backend_cb);
    Py_CLEAR(s->v6_cb);
    Py_CLEAR(s->out);
    return 0;
}

static void Engine_dealloc(Engine *s)
{
    PyObject_GC_UnTrack(s);
    Engine_clear(s);
    PyMem_Free(s->buckets);
    PyMem_Free(s->expired_ring);
    PyMem_Free(s->buf);
    free_msg(&s->msg);
    Py_TYPE(s)->tp_free((PyObject *)s);
}

static int Engine_init(Engine *s, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"timeout_ns", "max_pending", "node_json", "label_json", "cgroup",
                             "mark", "settle", "privacy", "backend", "v6_text", NULL};
    unsigned long long timeout;
    Py_ssize_t max_pending;
    PyObject *node, *label, *cgroup, *mark, *settle_fn, *privacy, *backend, *v6;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "KnSSOOOOOO", kwlist, &timeout, &max_pending,
                                     &node, &label, &cgroup, &mark, &settle_fn, &privacy,
                                     &backend, &v6))
        return -1;
    if (max_pending < 1) {
        PyErr_SetString(PyExc_ValueError, "max_pending must be >= 1");
        return -1;
    }
    Engine_clear(s);
    s->timeout_ns = timeout;
    s->max_pending = max_pending;
#define KEEP(field, v) do { Py_INCREF(v); s->field = v; } while (0)
    KEEP(node_json, node);
    KEEP(label_json, label);
    KEEP(cgroup_cb, cgroup);
    KEEP(mark_cb, mark);
    KEEP(settle_cb, settle_fn);
    KEEP(privacy_cb, privacy);
    KEEP(backend_cb, backend);
    KEEP(v6_cb, v6);
#undef KEEP
    s->expired = PyDict_New();
    if (!s->expired)
        return -1;
    if (!s->buckets) {
        s->mask = 1023;
        s->buckets = PyMem_Calloc(s->mask + 1, sizeof(*s->buckets));
        s->expired_ring = PyMem_Malloc((EXPIRED_MEMORY + 1) * sizeof(uint64_t));
        s->buf_cap = 4096;
        s->buf = PyMem_Malloc(s->buf_cap);
        if (!s->buckets || !s->expired_ring || !s->buf) {
            PyErr_NoMemory();
            return -1;
        }
    }
    s->expired_head = s->expired_count = 0;
    return 0;
}

static PyObject *start_out(Engine *s)
{
    Py_CLEAR(s->out);
    s->out = PyList_New(0);
    return s->out;
}

static PyObject *finish_out(Engine *s, int rc)
{
    cgroup_reset(s);
    PyObject *out = s->out;
    s->out = NULL;
    if (rc < 0) {
        Py_XDECREF(out);
        return NULL;
    }
    return out;
}

/* process(data, spans | None, offset_ns) -> [(key, value)] */
static PyObject *Engine_process(Engine *s, PyObject *args)
{
    Py_buffer buf;
    PyObject *spans;
    long long offset;
    if (!PyArg_ParseTuple(args, "y*OL", &buf, &spans, &offset))
        return NULL;
    if (!start_out(s)) {
        PyBuffer_Release(&buf);
        return NULL;
    }
    s->offset_ns = offset;
    const uint8_t *data = buf.buf;
    Py_ssize_t size = buf.len;
    int rc = 0;
    if (spans == Py_None) {
        Py_ssize_t pos = 0;
        while (rc == 0 && pos + 8 <= size) {
            uint32_t header = load32(data + pos);
            Py_ssize_t length = header & ~(RB_BUSY | RB_DISCARD);
            if (!(header & RB_DISCARD)) {
                if (pos + 8 + length > size)
                    s->decode_errors++;
                else
                    rc = handle_event(s, data + pos + 8, length);
            }
            pos += (length + 8 + 7) & ~(Py_ssize_t)7;
        }
    } else {
        PyObject *seq = PySequence_Fast(spans, "spans must be a sequence");
        if (!seq)
            rc = -1;
        for (Py_ssize_t i = 0; rc == 0 && i < PySequence_Fast_GET_SIZE(seq); i++) {
            Py_ssize_t off, length;
            if (!PyArg_ParseTuple(PySequence_Fast_GET_ITEM(seq, i), "nn", &off, &length)) {
                rc = -1;
                break;
            }
            if (off < 0 || length < 0 || off + length > size)
                s->decode_errors++;
            else
                rc = handle_event(s, data + off, length);
        }
        Py_XDECREF(seq);
    }
    PyBuffer_Release(&buf);
    return finish_out(s, rc);
}

/* expire(now_mono_ns) -> [(key, value)]: every query pending since before now - timeout. */
static PyObject *Engine_expire(Engine *s, PyObject *arg)
{
    unsigned long long now = PyLong_AsUnsignedLongLongMask(arg);
    if (PyErr_Occurred())
        return NULL;
    if (!start_out(s))
        return NULL;
    int rc = 0;
    while (rc == 0 && s->oldest && s->oldest->deadline_ns <= now) {
        Entry *e = s->oldest;
        unlink_entry(s, e);
        rc = expired_add(s, e->key_hash);
        if (rc == 0) {
            s->timeouts++;
            Result x;
            entry_result(e, &x);
            x.outcome = O_TIMEOUT;
            rc = emit(s, &x);
        }
        free_entry(e);
    }
    return finish_out(s, rc);
}

static Py_ssize_t Engine_len(Engine *s) { return s->pending; }

static PyObject *Engine_counters(Engine *s, PyObject *unused)
{
    PyObject *reasons = PyDict_New();
    if (!reasons)
        return NULL;
    for (int i = 1; i < RSN_MAX; i++) {
        if (!s->reasons[i])
            continue;
        PyObject *v = PyLong_FromUnsignedLongLong(s->reasons[i]);
        if (!v || PyDict_SetItemString(reasons, REASONS[i], v) < 0) {
            Py_XDECREF(v);
            Py_DECREF(reasons);
            return NULL;
        }
        Py_DECREF(v);
    }
    return Py_BuildValue(
        "{sKsKsKsKsKsKsKsKsKsKsNsKsKsKsKsKsKsK}",
        "queries", s->queries, "retransmissions", s->retransmissions, "answered", s->answered,
        "timeouts", s->timeouts, "malformed", s->malformed,
        "unmatched_responses", s->unmatched_responses, "late_responses", s->late_responses,
        "question_mismatches", s->question_mismatches, "evicted", s->evicted,
        "malformed_packets", s->malformed_packets, "reasons", reasons,
        "packets", s->packets, "messages", s->messages, "clipped", s->clipped,
        "tcp_unframed", s->tcp_unframed, "decoded", s->decoded,
        "decode_errors", s->decode_errors, "discarded", s->discarded);
}

static PyObject *Engine_add_discarded(Engine *s, PyObject *arg)
{
    unsigned long long n = PyLong_AsUnsignedLongLong(arg);
    if (PyErr_Occurred())
        return NULL;
    s->discarded += n;
    Py_RETURN_NONE;
}

static PyMethodDef Engine_methods[] = {
    {"process", (PyCFunction)Engine_process, METH_VARARGS,
     "process(data, spans, offset_ns) -> [(key, record JSON)]"},
    {"expire", (PyCFunction)Engine_expire, METH_O, "expire(now_mono_ns) -> [(key, record JSON)]"},
    {"counters", (PyCFunction)Engine_counters, METH_NOARGS, "the counters, as a dict"},
    {"add_discarded", (PyCFunction)Engine_add_discarded, METH_O, "count discarded records"},
    {NULL, NULL, 0, NULL},
};

static PySequenceMethods Engine_as_sequence = {.sq_length = (lenfunc)Engine_len};

static PyTypeObject EngineType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "collector.dns._native.Engine",
    .tp_basicsize = sizeof(Engine),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "DNS events -> matched queries -> RawDnsQuery JSON (see the module docstring)",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Engine_init,
    .tp_dealloc = (destructor)Engine_dealloc,
    .tp_traverse = (traverseproc)Engine_traverse,
    .tp_clear = (inquiry)Engine_clear,
    .tp_methods = Engine_methods,
    .tp_as_sequence = &Engine_as_sequence,
};

/* parse(data, clipped) -> (reason | None, header | None, question | None, rcode, addr
 * offsets, complete): the C parser's view, for the tests against parser.parse. */
static PyObject *mod_parse(PyObject *mod, PyObject *args)
{
    Py_buffer buf;
    int clipped;
    if (!PyArg_ParseTuple(args, "y*p", &buf, &clipped))
        return NULL;
    if (buf.len > 65535) {
        PyBuffer_Release(&buf);
        PyErr_SetString(PyExc_ValueError, "a DNS message is at most 65535 bytes");
        return NULL;
    }
    Msg m;
    memset(&m, 0, sizeof(m));
    int rc = parse_msg(buf.buf, (int)buf.len, clipped, &m);
    PyBuffer_Release(&buf);
    PyObject *addrs = NULL, *result = NULL;
    if (rc < 0) {
        PyErr_NoMemory();
        goto done;
    }
    addrs = PyTuple_New(m.naddrs);
    if (!addrs)
        goto done;
    for (int i = 0; i < m.naddrs; i++) {
        PyObject *t = Py_BuildValue("(ii)", m.addr_off[i], m.addr_len[i]);
        if (!t)
            goto done;
        PyTuple_SET_ITEM(addrs, i, t);
    }
    PyObject *reason = m.reason ? PyUnicode_FromString(REASONS[m.reason]) : Py_NewRef(Py_None);
    PyObject *header = m.has_header ? Py_BuildValue("(HHHHHH)", m.txid, m.flags, m.qd, m.an,
                                                    m.ns, m.ar)
                                    : Py_NewRef(Py_None);
    PyObject *question = (m.reason == RSN_OK && m.has_question)
                             ? Py_BuildValue("(s#HH)", m.name, (Py_ssize_t)m.name_len, m.qtype,
                                             m.qclass)
                             : Py_NewRef(Py_None);
    if (reason && header && question)
        result = Py_BuildValue("(NNNiOO)", reason, header, question, m.rcode, addrs,
                               m.complete ? Py_True : Py_False);
    else {
        Py_XDECREF(reason);
        Py_XDECREF(header);
        Py_XDECREF(question);
    }
done:
    Py_XDECREF(addrs);
    free_msg(&m);
    return result;
}

static PyMethodDef module_methods[] = {
    {"parse", mod_parse, METH_VARARGS, "the C parser's view of one message (for tests)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "collector.dns._native",
    "The DNS hot path in C: see collector/dns/native.py.", -1, module_methods,
};

PyMODINIT_FUNC PyInit__native(void)
{
    if (PyType_Ready(&EngineType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (!m)
        return NULL;
    if (PyModule_AddObjectRef(m, "Engine", (PyObject *)&EngineType) < 0 ||
        PyModule_AddIntConstant(m, "EVENT_SIZE", EVENT_SIZE) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
