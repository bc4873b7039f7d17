/*
 * collector.tcp._encode: ring-buffer records (struct tcpconn_event, bpf/tcpconn.h) straight to
 * the Kafka messages of a batch: JSON arrays of RawTcpConnection records grouped by partition
 * key, byte for byte what the reference (collector/tcp/events.py, collector/tcp/record.py, then
 * collector/tcp/messages.py:split_messages) makes. tests/unit/collector/test_collector_native.py
 * and test_collector_encode_properties.py compare the two over every kind of record.
 *
 * Why C: the reference builds several Python objects per record (a 28-value event, a
 * 33-field struct) and costs several µs per record; the collector's budget is 2.5 µs per
 * record for everything (kernel reader, Kafka and its compression included).
 *
 * What stays in Python, called back from here: the cgroup -> pod attribution (once per
 * distinct cgroup per batch, as the Python path does), comm names that are not plain
 * printable ASCII (cached), and every record whose remote address is in a Service range
 * (conntrack lookup: rare, and done by the Python path, which returns the record's JSON).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <arpa/inet.h>
#include <endian.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>

#include <errno.h>
#include <linux/types.h>
#include <netinet/tcp.h> /* TCP_ESTABLISHED...: the kernel's state numbers */
#include <stddef.h>

#include "tcpconn.h" /* bpf/: the ABI, included rather than copied */

#define EVENT_SIZE ((Py_ssize_t)sizeof(struct tcpconn_event))
#define COMM_LEN TCPCONN_COMM_LEN
/* The record layout collector/tcp/events.py reads too (test_collector_abi.py checks both). */
_Static_assert(sizeof(struct tcpconn_event) == 152, "struct tcpconn_event changed size");

/* Offsets in struct tcpconn_event (little-endian; read with memcpy: unaligned-safe). */
#define O(field) offsetof(struct tcpconn_event, field)
#define O_START O(start_ns)
#define O_END O(end_ns)
#define O_CGROUP O(cgroup_id)
#define O_BYTES_SENT O(bytes_sent)
#define O_BYTES_RECEIVED O(bytes_received)
#define O_RETRANS_BYTES O(retrans_bytes)
#define O_SADDR O(saddr)
#define O_DADDR O(daddr)
#define O_CONNECT_US O(connect_us)
#define O_SRTT_US O(srtt_us)
#define O_MIN_RTT_US O(min_rtt_us)
#define O_RETRANS_SEGS O(retrans_segs)
#define O_SEGS_IN O(segs_in)
#define O_SEGS_OUT O(segs_out)
#define O_PID O(pid)
#define O_FLAGS O(flags)
#define O_SEQ O(seq)
#define O_SK_ERR O(sk_err)
#define O_SPORT O(sport)
#define O_DPORT O(dport)
#define O_FAMILY O(family)
#define O_ROLE O(role)
#define O_OLDSTATE O(oldstate)
#define O_KIND O(kind)
#define O_SYN_RETRIES O(syn_retries)
#define O_COMM O(comm)

#define F_ESTABLISHED ((uint32_t)TCPCONN_F_ESTABLISHED)
#define F_START_UNKNOWN ((uint32_t)TCPCONN_F_START_UNKNOWN)
#define ROLE_CLIENT TCPCONN_ROLE_CLIENT
#define ROLE_SERVER TCPCONN_ROLE_SERVER
#define KIND_INTERIM TCPCONN_KIND_INTERIM

/* The most a record adds besides its node, cgroup and comm fragments (field names and
 * punctuation ~460 bytes, numbers, two IPv6 addresses). */
#define RECORD_FIXED_MAX 1024

static const char *const TCP_STATES[] = {
    "?", "ESTABLISHED", "SYN_SENT", "SYN_RECV", "FIN_WAIT1", "FIN_WAIT2", "TIME_WAIT",
    "CLOSE", "CLOSE_WAIT", "LAST_ACK", "LISTEN", "CLOSING", "NEW_SYN_RECV",
};
#define N_TCP_STATES ((int)(sizeof(TCP_STATES) / sizeof(TCP_STATES[0])))

static uint64_t load64(const unsigned char *p) { uint64_t v; memcpy(&v, p, 8); return le64toh(v); }
static uint32_t load32(const unsigned char *p) { uint32_t v; memcpy(&v, p, 4); return le32toh(v); }
static uint16_t load16(const unsigned char *p) { uint16_t v; memcpy(&v, p, 2); return le16toh(v); }

/* ---- JSON writing ---------------------------------------------------------------------- */

static char *put(char *p, const char *s, size_t n) { memcpy(p, s, n); return p + n; }
#define PUT_LIT(p, lit) put((p), (lit), sizeof(lit) - 1)

static char *put_u64(char *p, uint64_t v)
{
    char tmp[20];
    int n = 0;
    do {
        tmp[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    while (n)
        *p++ = tmp[--n];
    return p;
}

static char *put_i64(char *p, int64_t v)
{
    if (v < 0) {
        *p++ = '-';
        return put_u64(p, (uint64_t)0 - (uint64_t)v);
    }
    return put_u64(p, (uint64_t)v);
}

/* ---- small caches ----------------------------------------------------------------------- */

/* cgroup id -> group index and attribution fragment, for one batch: open addressing. */
typedef struct {
    uint64_t id;
    Py_ssize_t group; /* -1: empty slot */
    PyObject *fragment; /* bytes, borrowed from `fragments` */
} CgroupSlot;

typedef struct {
    CgroupSlot *slots;
    size_t mask, used;
} CgroupTable;

static size_t hash64(uint64_t x)
{
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdULL;
    x ^= x >> 33;
    return (size_t)x;
}

static int table_init(CgroupTable *t, size_t cap)
{
    t->slots = PyMem_Malloc(cap * sizeof(CgroupSlot));
    if (t->slots == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    for (size_t i = 0; i < cap; i++)
        t->slots[i].group = -1;
    t->mask = cap - 1;
    t->used = 0;
    return 0;
}

static CgroupSlot *table_find(CgroupTable *t, uint64_t id)
{
    size_t i = hash64(id) & t->mask;
    while (t->slots[i].group >= 0 && t->slots[i].id != id)
        i = (i + 1) & t->mask;
    return &t->slots[i];
}

static int table_grow(CgroupTable *t)
{
    CgroupTable bigger;
    if (table_init(&bigger, (t->mask + 1) * 2) < 0)
        return -1;
    for (size_t i = 0; i <= t->mask; i++)
        if (t->slots[i].group >= 0)
            *table_find(&bigger, t->slots[i].id) = t->slots[i];
    bigger.used = t->used;
    PyMem_Free(t->slots);
    *t = bigger;
    return 0;
}

/* ---- the encoder object ----------------------------------------------------------------- */

typedef struct {
    uint8_t version; /* 4 or 6 */
    uint8_t prefix;
    unsigned char net[16];
} Network;

typedef struct {
    PyObject_HEAD
    PyObject *head;      /* bytes: {"v":1,"node":<node>,"start_time_ns": */
    PyObject *cgroup;    /* callable(cgroup_id) -> (key: str, fragment: bytes) */
    PyObject *comm;      /* callable(raw: bytes) -> bytes (JSON string) */
    PyObject *fallback;  /* callable(offset) -> bytes (JSON object of a Service record) */
    PyObject *comms;     /* dict raw comm bytes -> JSON bytes */
    Network *nets;
    Py_ssize_t n_nets;
    Py_ssize_t batch_records, batch_bytes;
} Encoder;

static int Encoder_traverse(Encoder *self, visitproc visit, void *arg)
{
    Py_VISIT(self->head);
    Py_VISIT(self->cgroup);
    Py_VISIT(self->comm);
    Py_VISIT(self->fallback);
    Py_VISIT(self->comms);
    return 0;
}

static int Encoder_clear(Encoder *self)
{
    Py_CLEAR(self->head);
    Py_CLEAR(self->cgroup);
    Py_CLEAR(self->comm);
    Py_CLEAR(self->fallback);
    Py_CLEAR(self->comms);
    return 0;
}

static void Encoder_dealloc(Encoder *self)
{
    PyObject_GC_UnTrack(self);
    Encoder_clear(self);
    PyMem_Free(self->nets);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int parse_networks(Encoder *self, PyObject *networks)
{
    PyObject *seq = PySequence_Fast(networks, "networks must be a sequence");
    if (seq == NULL)
        return -1;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    self->nets = PyMem_Calloc(n ? (size_t)n : 1, sizeof(Network));
    if (self->nets == NULL) {
        Py_DECREF(seq);
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        int version, prefix;
        Py_buffer net;
        if (!PyArg_ParseTuple(PySequence_Fast_GET_ITEM(seq, i), "iy*i;network: (version, "
                              "packed address, prefix length)", &version, &net, &prefix)) {
            Py_DECREF(seq);
            return -1;
        }
        Py_ssize_t size = version == 4 ? 4 : 16;
        int ok = (version == 4 || version == 6) && net.len == size && prefix >= 0 &&
                 prefix <= size * 8;
        if (ok) {
            self->nets[i].version = (uint8_t)version;
            self->nets[i].prefix = (uint8_t)prefix;
            memcpy(self->nets[i].net, net.buf, (size_t)size);
        }
        PyBuffer_Release(&net);
        if (!ok) {
            Py_DECREF(seq);
            PyErr_SetString(PyExc_ValueError, "network: bad version, address or prefix");
            return -1;
        }
    }
    self->n_nets = n;
    Py_DECREF(seq);
    return 0;
}

static int Encoder_init(Encoder *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"node_json", "cgroup", "comm", "fallback", "networks",
                             "batch_records", "batch_bytes", NULL};
    Py_buffer node;
    PyObject *cgroup, *comm, *fallback, *networks;
    Py_ssize_t batch_records, batch_bytes;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "y*OOOOnn", kwlist, &node, &cgroup, &comm,
                                     &fallback, &networks, &batch_records, &batch_bytes))
        return -1;
    if (!PyCallable_Check(cgroup) || !PyCallable_Check(comm) || !PyCallable_Check(fallback)) {
        PyBuffer_Release(&node);
        PyErr_SetString(PyExc_TypeError, "cgroup, comm and fallback must be callable");
        return -1;
    }
    if (batch_records < 1 || batch_bytes < 1) {
        PyBuffer_Release(&node);
        PyErr_SetString(PyExc_ValueError, "batch_records and batch_bytes must be >= 1");
        return -1;
    }
    static const char open[] = "{\"v\":1,\"node\":";
    static const char start[] = ",\"start_time_ns\":";
    PyObject *head = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(sizeof(open) - 1) + node.len +
                                                         (Py_ssize_t)(sizeof(start) - 1));
    if (head == NULL) {
        PyBuffer_Release(&node);
        return -1;
    }
    char *p = PyBytes_AS_STRING(head);
    p = put(p, open, sizeof(open) - 1);
    p = put(p, node.buf, (size_t)node.len);
    put(p, start, sizeof(start) - 1);
    PyBuffer_Release(&node);
    PyObject *comms = PyDict_New();
    if (comms == NULL) {
        Py_DECREF(head);
        return -1;
    }
    Encoder_clear(self);
    PyMem_Free(self->nets);
    self->nets = NULL;
    self->head = head;
    self->comms = comms;
    Py_INCREF(cgroup);
    self->cgroup = cgroup;
    Py_INCREF(comm);
    self->comm = comm;
    Py_INCREF(fallback);
    self->fallback = fallback;
    self->batch_records = batch_records;
    self->batch_bytes = batch_bytes;
    return parse_networks(self, networks);
}

static int in_networks(const Encoder *self, int version, const unsigned char *addr)
{
    for (Py_ssize_t i = 0; i < self->n_nets; i++) {
        const Network *n = &self->nets[i];
        if (n->version != version)
            continue;
        int full = n->prefix / 8, rest = n->prefix % 8;
        if (memcmp(addr, n->net, (size_t)full) != 0)
            continue;
        if (rest) {
            unsigned char mask = (unsigned char)(0xff << (8 - rest));
            if ((addr[full] & mask) != (n->net[full] & mask))
                continue;
        }
        return 1;
    }
    return 0;
}

/* An address as the Python path formats it: IPv4, v4-mapped IPv6 as IPv4, else IPv6.
 * Returns the family (4 or 6) and writes the text (no quotes) at p; sets *end. */
static const unsigned char V4_MAPPED[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};

static char *put_v4(char *p, const unsigned char *a)
{
    for (int i = 0; i < 4; i++) {
        if (i)
            *p++ = '.';
        p = put_u64(p, a[i]);
    }
    return p;
}

static int put_address(char *p, char **end, int family, const unsigned char *raw,
                       const unsigned char **v4)
{
    if (family == AF_INET || memcmp(raw, V4_MAPPED, 12) == 0) {
        *v4 = family == AF_INET ? raw : raw + 12;
        *end = put_v4(p, *v4);
        return 4;
    }
    *v4 = NULL;
    if (inet_ntop(AF_INET6, raw, p, INET6_ADDRSTRLEN) == NULL)
        return -1;
    *end = p + strlen(p);
    return 6;
}

/* The comm as a JSON string: plain printable ASCII inline, anything else through Python
 * (msgspec's escaping, and errors="replace" decoding), cached. */
static char *put_comm(Encoder *self, char *p, const unsigned char *raw, int *failed)
{
    size_t n = 0;
    int plain = 1;
    while (n < COMM_LEN && raw[n]) {
        unsigned char c = raw[n++];
        if (c < 0x20 || c > 0x7e || c == '"' || c == '\\')
            plain = 0;
    }
    if (plain) {
        *p++ = '"';
        p = put(p, (const char *)raw, n);
        *p++ = '"';
        return p;
    }
    PyObject *key = PyBytes_FromStringAndSize((const char *)raw, COMM_LEN);
    if (key == NULL)
        goto error;
    PyObject *json = PyDict_GetItemWithError(self->comms, key); /* borrowed */
    if (json == NULL) {
        if (PyErr_Occurred()) {
            Py_DECREF(key);
            goto error;
        }
        json = PyObject_CallOneArg(self->comm, key);
        if (json == NULL || !PyBytes_Check(json) || PyBytes_GET_SIZE(json) > 6 * COMM_LEN + 2) {
            if (json != NULL)
                PyErr_SetString(PyExc_TypeError, "comm callback: expected a JSON string");
            Py_XDECREF(json);
            Py_DECREF(key);
            goto error;
        }
        if (PyDict_GET_SIZE(self->comms) >= 4096)
            PyDict_Clear(self->comms);
        int set = PyDict_SetItem(self->comms, key, json);
        Py_DECREF(json); /* the dict holds it now (or failed: then we return before use) */
        if (set < 0) {
            Py_DECREF(key);
            goto error;
        }
    }
    Py_DECREF(key);
    return put(p, PyBytes_AS_STRING(json), (size_t)PyBytes_GET_SIZE(json));
error:
    *failed = 1;
    return p;
}

/* ---- a batch: one open message per group, written in place -------------------------------
 *
 * Records are written straight into the bytes object of their group's open message (an
 * array of up to batch_records records, or one object when batch_records is 1), which grows
 * by doubling and is shrunk to size when it closes: each record's JSON is copied once, into
 * librdkafka, after this. */

typedef struct {
    PyObject *key;      /* str */
    PyObject *done;     /* list of closed messages (key, value, records), in order */
    PyObject *open;     /* bytes being filled (its size is the capacity), or NULL */
    Py_ssize_t len;     /* bytes used in open */
    Py_ssize_t *starts; /* where each record of open starts (for the byte-bound split) */
    Py_ssize_t n, cap_starts;
} Group;

typedef struct {
    Group *groups;
    Py_ssize_t n_groups, cap_groups;
    PyObject *keys;      /* dict key -> group index */
    PyObject *fragments; /* list: owns the cgroup fragments of this batch */
    CgroupTable cgroups;
} Batch;

static void batch_free(Batch *b)
{
    for (Py_ssize_t i = 0; i < b->n_groups; i++) {
        Py_XDECREF(b->groups[i].key);
        Py_XDECREF(b->groups[i].done);
        Py_XDECREF(b->groups[i].open);
        PyMem_Free(b->groups[i].starts);
    }
    PyMem_Free(b->groups);
    Py_XDECREF(b->keys);
    Py_XDECREF(b->fragments);
    PyMem_Free(b->cgroups.slots);
}

/* The group of a key, made on first sight (groups keep the order keys first appear in). */
static Py_ssize_t group_of(Batch *b, PyObject *key)
{
    PyObject *found = PyDict_GetItemWithError(b->keys, key);
    if (found != NULL)
        return PyLong_AsSsize_t(found);
    if (PyErr_Occurred())
        return -1;
    if (b->n_groups == b->cap_groups) {
        Py_ssize_t cap = b->cap_groups ? b->cap_groups * 2 : 8;
        Group *groups = PyMem_Realloc(b->groups, (size_t)cap * sizeof(Group));
        if (groups == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        b->groups = groups;
        b->cap_groups = cap;
    }
    PyObject *done = PyList_New(0);
    if (done == NULL)
        return -1;
    PyObject *index = PyLong_FromSsize_t(b->n_groups);
    if (index == NULL) {
        Py_DECREF(done);
        return -1;
    }
    int set = PyDict_SetItem(b->keys, key, index);
    Py_DECREF(index);
    if (set < 0) {
        Py_DECREF(done);
        return -1;
    }
    Group *g = &b->groups[b->n_groups];
    memset(g, 0, sizeof(*g));
    Py_INCREF(key);
    g->key = key;
    g->done = done;
    return b->n_groups++;
}

/* The slot of a cgroup for this batch: attribution asked from Python on first sight. */
static CgroupSlot *cgroup_of(Encoder *self, Batch *b, uint64_t id)
{
    CgroupSlot *slot = table_find(&b->cgroups, id);
    if (slot->group >= 0)
        return slot;
    PyObject *result = PyObject_CallFunction(self->cgroup, "K", (unsigned long long)id);
    if (result == NULL)
        return NULL;
    if (!PyTuple_Check(result) || PyTuple_GET_SIZE(result) != 2 ||
        !PyUnicode_Check(PyTuple_GET_ITEM(result, 0)) ||
        !PyBytes_Check(PyTuple_GET_ITEM(result, 1))) {
        Py_DECREF(result);
        PyErr_SetString(PyExc_TypeError, "cgroup callback: expected (key: str, fragment: bytes)");
        return NULL;
    }
    PyObject *fragment = PyTuple_GET_ITEM(result, 1);
    Py_ssize_t group = group_of(b, PyTuple_GET_ITEM(result, 0));
    if (group < 0 || PyList_Append(b->fragments, fragment) < 0) {
        Py_DECREF(result);
        return NULL;
    }
    Py_DECREF(result); /* the fragment lives on in b->fragments */
    slot->id = id;
    slot->group = group;
    slot->fragment = fragment;
    if (++b->cgroups.used * 2 > b->cgroups.mask + 1) {
        if (table_grow(&b->cgroups) < 0)
            return NULL;
        slot = table_find(&b->cgroups, id);
    }
    return slot;
}

/* Room for one more record of at most `room` bytes (plus its separator and the closing
 * bracket) in the group's open message; returns where to write it, or NULL. */
static char *record_begin(Encoder *self, Group *g, Py_ssize_t room)
{
    room += 2;
    if (g->open == NULL) {
        Py_ssize_t expect = self->batch_records < 64 ? self->batch_records : 64;
        g->open = PyBytes_FromStringAndSize(NULL, expect * room);
        if (g->open == NULL)
            return NULL;
        g->len = 0;
        g->n = 0;
    } else if (PyBytes_GET_SIZE(g->open) - g->len < room) {
        Py_ssize_t cap = PyBytes_GET_SIZE(g->open) * 2;
        if (_PyBytes_Resize(&g->open, cap < g->len + room ? g->len + room : cap) < 0)
            return NULL; /* g->open is NULL now */
    }
    if (g->n == g->cap_starts) {
        Py_ssize_t cap = g->cap_starts ? g->cap_starts * 2 : 64;
        Py_ssize_t *starts = PyMem_Realloc(g->starts, (size_t)cap * sizeof(Py_ssize_t));
        if (starts == NULL) {
            PyErr_NoMemory();
            return NULL;
        }
        g->starts = starts;
        g->cap_starts = cap;
    }
    char *p = PyBytes_AS_STRING(g->open) + g->len;
    if (self->batch_records > 1)
        *p++ = g->n ? ',' : '[';
    g->starts[g->n] = p - PyBytes_AS_STRING(g->open);
    return p;
}

static int append_message(PyObject *list, PyObject *key, PyObject *value, Py_ssize_t n)
{
    if (value == NULL)
        return -1;
    PyObject *item = Py_BuildValue("(ONn)", key, value, n);
    if (item == NULL)
        return -1;
    int appended = PyList_Append(list, item);
    Py_DECREF(item);
    return appended;
}

/* The array of records [first, first + n) of a closed message over batch_bytes, halved (in
 * order) while it is over, as collector.tcp.messages.split_messages does. Rare: copies. */
static int split_array(Encoder *self, Group *g, const char *data, Py_ssize_t total,
                       Py_ssize_t first, Py_ssize_t n)
{
    /* record i spans starts[i] up to the separator (or the closing bracket) after it */
    Py_ssize_t from = g->starts[first];
    Py_ssize_t to = first + n < g->n ? g->starts[first + n] - 1 : total - 1;
    Py_ssize_t size = to - from + 2;
    if (size > self->batch_bytes && n > 1) {
        Py_ssize_t half = n / 2;
        if (split_array(self, g, data, total, first, half) < 0)
            return -1;
        return split_array(self, g, data, total, first + half, n - half);
    }
    PyObject *value = PyBytes_FromStringAndSize(NULL, size);
    if (value == NULL)
        return -1;
    char *p = PyBytes_AS_STRING(value);
    *p = '[';
    memcpy(p + 1, data + from, (size_t)(to - from));
    p[size - 1] = ']';
    return append_message(g->done, g->key, value, n);
}

/* Close the group's open message: to its list of messages. */
static int message_close(Encoder *self, Group *g)
{
    if (self->batch_records > 1)
        PyBytes_AS_STRING(g->open)[g->len++] = ']';
    Py_ssize_t n = g->n;
    g->n = 0;
    if (self->batch_records > 1 && g->len > self->batch_bytes && n > 1) {
        g->n = n; /* split_array reads the starts */
        int split = split_array(self, g, PyBytes_AS_STRING(g->open), g->len, 0, n);
        g->n = 0;
        Py_CLEAR(g->open);
        return split;
    }
    if (_PyBytes_Resize(&g->open, g->len) < 0)
        return -1;
    PyObject *value = g->open;
    g->open = NULL;
    return append_message(g->done, g->key, value, n);
}

static int record_end(Encoder *self, Group *g, const char *end)
{
    g->len = end - PyBytes_AS_STRING(g->open);
    if (++g->n == self->batch_records)
        return message_close(self, g);
    return 0;
}

typedef struct {
    long long decoded, errors, failed, interim;
} Counts;

#define FITS_I128(v) ((v) >= -((__int128)1 << 63) && (v) < ((__int128)1 << 64))

static char *put_i128(char *p, __int128 v)
{
    return v < 0 ? put_i64(p, (int64_t)v) : put_u64(p, (uint64_t)v);
}

/* Encode one 152-byte event. Returns 0, 1 (decode error, nothing written) or -1. */
static int encode_one(Encoder *self, Batch *b, const unsigned char *ev, Py_ssize_t offset,
                      int64_t clock_offset, Counts *counts)
{
    int family_raw = load16(ev + O_FAMILY);
    if (family_raw != AF_INET && family_raw != AF_INET6)
        return 1;
    uint32_t flags = load32(ev + O_FLAGS);
    int oldstate = ev[O_OLDSTATE], kind = ev[O_KIND], role = ev[O_ROLE];
    int32_t sk_err = (int32_t)load32(ev + O_SK_ERR);
    int established = flags & F_START_UNKNOWN
                          ? oldstate != TCP_SYN_SENT && oldstate != TCP_SYN_RECV
                          : (flags & F_ESTABLISHED) != 0;
    int interim = kind == KIND_INTERIM;
    if (interim)
        counts->interim++;
    else if (!established)
        counts->failed++;
    CgroupSlot *cgroup = cgroup_of(self, b, load64(ev + O_CGROUP));
    if (cgroup == NULL)
        return -1;
    Group *g = &b->groups[cgroup->group];
    char local[INET6_ADDRSTRLEN + 1], remote[INET6_ADDRSTRLEN + 1];
    char *local_end, *remote_end;
    const unsigned char *remote_v4;
    const unsigned char *local_v4;
    int family = put_address(local, &local_end, family_raw, ev + O_SADDR, &local_v4);
    int remote_family = put_address(remote, &remote_end, family_raw, ev + O_DADDR, &remote_v4);
    if (family < 0 || remote_family < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    __int128 end = (__int128)load64(ev + O_END) + clock_offset;
    uint64_t start_ns = load64(ev + O_START);
    __int128 begin = start_ns ? (__int128)start_ns + clock_offset : end;
    int service = self->n_nets && role != ROLE_SERVER &&
                  in_networks(self, remote_family,
                              remote_family == 4 ? remote_v4 : ev + O_DADDR);
    if (service || !FITS_I128(end) || !FITS_I128(begin)) {
        /* A Service address (conntrack lookup), or times beyond 64 bits (an impossible
         * clock, which msgspec still writes): the Python path makes this record. */
        PyObject *json = PyObject_CallFunction(self->fallback, "n", offset);
        if (json == NULL)
            return -1;
        if (!PyBytes_Check(json)) {
            Py_DECREF(json);
            PyErr_SetString(PyExc_TypeError, "fallback: expected bytes");
            return -1;
        }
        char *p = record_begin(self, g, PyBytes_GET_SIZE(json));
        if (p != NULL)
            p = put(p, PyBytes_AS_STRING(json), (size_t)PyBytes_GET_SIZE(json));
        Py_DECREF(json);
        if (p == NULL)
            return -1;
        counts->decoded++;
        return record_end(self, g, p);
    }
    Py_ssize_t room = RECORD_FIXED_MAX + PyBytes_GET_SIZE(self->head) +
                      PyBytes_GET_SIZE(cgroup->fragment) + 6 * COMM_LEN;
    char *p = record_begin(self, g, room);
    if (p == NULL)
        return -1;
    p = put(p, PyBytes_AS_STRING(self->head), (size_t)PyBytes_GET_SIZE(self->head));
    p = put_i128(p, begin);
    p = PUT_LIT(p, ",\"end_time_ns\":");
    p = put_i128(p, end);
    p = PUT_LIT(p, ",\"role\":");
    p = role == ROLE_CLIENT   ? PUT_LIT(p, "\"client\"")
        : role == ROLE_SERVER ? PUT_LIT(p, "\"server\"")
                              : PUT_LIT(p, "\"unknown\"");
    p = family == 4 ? PUT_LIT(p, ",\"family\":4,\"local_addr\":\"")
                    : PUT_LIT(p, ",\"family\":6,\"local_addr\":\"");
    p = put(p, local, (size_t)(local_end - local));
    p = PUT_LIT(p, "\",\"local_port\":");
    p = put_u64(p, load16(ev + O_SPORT));
    p = PUT_LIT(p, ",\"remote_addr\":\"");
    p = put(p, remote, (size_t)(remote_end - remote));
    p = PUT_LIT(p, "\",\"remote_port\":");
    p = put_u64(p, load16(ev + O_DPORT));
    p = PUT_LIT(p, ",\"pid\":");
    p = put_u64(p, load32(ev + O_PID));
    p = PUT_LIT(p, ",\"comm\":");
    int comm_failed = 0;
    p = put_comm(self, p, ev + O_COMM, &comm_failed);
    if (comm_failed)
        return -1;
    p = PUT_LIT(p, ",\"cgroup_id\":");
    p = put_u64(p, cgroup->id);
    *p++ = ',';
    p = put(p, PyBytes_AS_STRING(cgroup->fragment), (size_t)PyBytes_GET_SIZE(cgroup->fragment));
    p = PUT_LIT(p, ",\"bytes_sent\":");
    p = put_u64(p, load64(ev + O_BYTES_SENT));
    p = PUT_LIT(p, ",\"bytes_received\":");
    p = put_u64(p, load64(ev + O_BYTES_RECEIVED));
    p = PUT_LIT(p, ",\"srtt_us\":");
    p = put_u64(p, load32(ev + O_SRTT_US));
    p = PUT_LIT(p, ",\"retrans_segs\":");
    p = put_u64(p, load32(ev + O_RETRANS_SEGS));
    p = PUT_LIT(p, ",\"connect_latency_us\":");
    if (role == ROLE_CLIENT && (flags & F_ESTABLISHED))
        p = put_u64(p, load32(ev + O_CONNECT_US));
    else
        p = PUT_LIT(p, "null");
    p = interim ? PUT_LIT(p, ",\"interim\":true,\"sequence\":")
                : PUT_LIT(p, ",\"interim\":false,\"sequence\":");
    p = put_u64(p, load32(ev + O_SEQ));
    p = PUT_LIT(p, ",\"outcome\":\"");
    const char *outcome;
    if (interim)
        outcome = "open";
    else if (sk_err == ECONNREFUSED)
        outcome = "refused";
    else if (sk_err == ETIMEDOUT)
        outcome = "timed_out";
    else if (sk_err == ECONNRESET || sk_err == EPIPE)
        outcome = "reset_by_peer";
    else if (sk_err == ENETUNREACH || sk_err == EHOSTDOWN || sk_err == EHOSTUNREACH)
        outcome = "unreachable";
    else if (sk_err == ECONNABORTED)
        outcome = "aborted";
    else if (sk_err)
        outcome = "error";
    else if (!established) /* closed by its own side: after a SYN retransmission, the
                              application's connect timeout; before any, cancelled */
        outcome = ev[O_SYN_RETRIES] ? "connect_timeout" : "cancelled";
    else if (oldstate == TCP_ESTABLISHED || oldstate == TCP_CLOSE_WAIT ||
             oldstate == TCP_FIN_WAIT1) /* straight to CLOSE with no error: local abort */
        outcome = "reset_locally";
    else
        outcome = "closed";
    p = put(p, outcome, strlen(outcome));
    p = PUT_LIT(p, "\",\"close_state\":");
    if (interim) {
        p = PUT_LIT(p, "null");
    } else {
        *p++ = '"';
        if (oldstate < N_TCP_STATES)
            p = put(p, TCP_STATES[oldstate], strlen(TCP_STATES[oldstate]));
        else
            p = put_u64(p, (uint64_t)oldstate);
        *p++ = '"';
    }
    p = PUT_LIT(p, ",\"sk_err\":");
    p = put_i64(p, sk_err);
    p = PUT_LIT(p, ",\"syn_retries\":");
    p = put_u64(p, ev[O_SYN_RETRIES]);
    p = PUT_LIT(p, ",\"segs_in\":");
    p = put_u64(p, load32(ev + O_SEGS_IN));
    p = PUT_LIT(p, ",\"segs_out\":");
    p = put_u64(p, load32(ev + O_SEGS_OUT));
    p = PUT_LIT(p, ",\"retrans_bytes\":");
    p = put_u64(p, load64(ev + O_RETRANS_BYTES));
    p = PUT_LIT(p, ",\"min_rtt_us\":");
    p = put_u64(p, load32(ev + O_MIN_RTT_US));
    p = PUT_LIT(p, ",\"original_remote_addr\":null,\"original_remote_port\":null}");
    counts->decoded++;
    return record_end(self, g, p);
}

/* Every group's messages, groups in the order their keys first appeared. */
static PyObject *build_messages(Encoder *self, Batch *b)
{
    PyObject *messages = PyList_New(0);
    if (messages == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i < b->n_groups; i++) {
        Group *g = &b->groups[i];
        if ((g->open != NULL && g->n && message_close(self, g) < 0) ||
            PyList_SetSlice(messages, PY_SSIZE_T_MAX, PY_SSIZE_T_MAX, g->done) < 0) {
            Py_DECREF(messages);
            return NULL;
        }
    }
    return messages;
}

#define HEADER_SIZE 8
#define BUSY_BIT (1u << 31)
#define DISCARD_BIT (1u << 30)

static int encode_span(Encoder *self, Batch *b, const Py_buffer *data, Py_ssize_t offset,
                       Py_ssize_t length, int64_t clock_offset, Counts *counts)
{
    if (length != EVENT_SIZE) {
        counts->errors++;
        return 0;
    }
    if (offset < 0 || offset > data->len - EVENT_SIZE) {
        PyErr_SetString(PyExc_ValueError, "a record lies outside the data");
        return -1;
    }
    int r = encode_one(self, b, (const unsigned char *)data->buf + offset, offset, clock_offset,
                       counts);
    if (r > 0)
        counts->errors += r;
    return r < 0 ? -1 : 0;
}

PyDoc_STRVAR(Encoder_encode_doc,
"encode(data, spans, clock_offset) -> (messages, decoded, errors, failed_connects, interim)\n\n"
"``spans``: [(offset, length)] of the records in ``data``, or None: walk the ring buffer's\n"
"record headers in ``data`` (8 bytes each, discarded records skipped).\n"
"``messages``: [(key, value, records)] in the order the Python path makes them.");

static PyObject *Encoder_encode(Encoder *self, PyObject *args)
{
    Py_buffer data;
    PyObject *spans;
    long long clock_offset;
    if (!PyArg_ParseTuple(args, "y*OL", &data, &spans, &clock_offset))
        return NULL;
    Batch b = {0};
    Counts counts = {0};
    PyObject *result = NULL;
    if (spans != Py_None && !PyList_Check(spans)) {
        PyErr_SetString(PyExc_TypeError, "spans: expected a list or None");
        goto done;
    }
    b.keys = PyDict_New();
    b.fragments = PyList_New(0);
    if (b.keys == NULL || b.fragments == NULL || table_init(&b.cgroups, 16) < 0)
        goto done;
    if (spans == Py_None) {
        const unsigned char *base = data.buf;
        Py_ssize_t pos = 0;
        while (pos + HEADER_SIZE <= data.len) {
            uint32_t header = load32(base + pos);
            Py_ssize_t length = header & ~(BUSY_BIT | DISCARD_BIT);
            if (header & BUSY_BIT) {
                PyErr_SetString(PyExc_ValueError, "a record in the batch is not committed");
                goto done;
            }
            if (!(header & DISCARD_BIT) &&
                encode_span(self, &b, &data, pos + HEADER_SIZE, length,
                            (int64_t)clock_offset, &counts) < 0)
                goto done;
            pos += (length + HEADER_SIZE + 7) & ~(Py_ssize_t)7;
        }
    } else {
        for (Py_ssize_t i = 0; i < PyList_GET_SIZE(spans); i++) {
            PyObject *span = PyList_GET_ITEM(spans, i);
            if (!PyTuple_Check(span) || PyTuple_GET_SIZE(span) != 2) {
                PyErr_SetString(PyExc_TypeError, "spans: expected (offset, length) tuples");
                goto done;
            }
            Py_ssize_t offset = PyLong_AsSsize_t(PyTuple_GET_ITEM(span, 0));
            Py_ssize_t length = PyLong_AsSsize_t(PyTuple_GET_ITEM(span, 1));
            if ((offset == -1 || length == -1) && PyErr_Occurred())
                goto done;
            if (encode_span(self, &b, &data, offset, length, (int64_t)clock_offset, &counts) < 0)
                goto done;
        }
    }
    PyObject *built = build_messages(self, &b);
    if (built != NULL)
        result = Py_BuildValue("(NLLLL)", built, counts.decoded, counts.errors, counts.failed,
                               counts.interim);
done:
    batch_free(&b);
    PyBuffer_Release(&data);
    return result;
}

static PyMethodDef Encoder_methods[] = {
    {"encode", (PyCFunction)Encoder_encode, METH_VARARGS, Encoder_encode_doc},
    {NULL, NULL, 0, NULL},
};

PyDoc_STRVAR(Encoder_doc,
"Encoder(node_json, cgroup, comm, fallback, networks, batch_records, batch_bytes)\n\n"
"``node_json``: the node name as JSON; ``cgroup(id) -> (key, fragment)``: the partition key\n"
"and the JSON of cgroup_path, pod_uid and container_id; ``comm(raw16) -> JSON string``;\n"
"``fallback(offset) -> JSON object`` of a record whose remote address is in one of\n"
"``networks`` [(4 or 6, packed network address, prefix length)] (clients only).");

static PyTypeObject EncoderType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "collector.tcp._encode.Encoder",
    .tp_basicsize = sizeof(Encoder),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = Encoder_doc,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Encoder_init,
    .tp_dealloc = (destructor)Encoder_dealloc,
    .tp_traverse = (traverseproc)Encoder_traverse,
    .tp_clear = (inquiry)Encoder_clear,
    .tp_methods = Encoder_methods,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "collector.tcp._encode",
    .m_doc = "tcpconn ring-buffer records to Kafka-ready JSON batches (see _encode.c).",
    .m_size = -1,
};

PyMODINIT_FUNC PyInit__encode(void)
{
    if (PyType_Ready(&EncoderType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    Py_INCREF(&EncoderType);
    if (PyModule_AddObject(m, "Encoder", (PyObject *)&EncoderType) < 0) {
        Py_DECREF(&EncoderType);
        Py_DECREF(m);
        return NULL;
    }
    if (PyModule_AddIntConstant(m, "EVENT_SIZE", EVENT_SIZE) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
