/* The enricher's hot loop in C: decoded raw records -> enriched JSON bytes.
 *
 * Byte for byte what the reference gives (enricher.join.render.Renderer.reference: enrich.enrich
 * then msgspec); the unit and property tests compare the two, and render.self_check at start
 * falls back to the reference on any difference.
 * Only the common path lives here: both ends' fragments found in the index's caches and the
 * peer class of two named ends found in the locality cache, or a remote IPv4 address on the
 * internet that nobody in the cluster has. Everything else (a cache miss, Service NAT, an
 * unnamed or unresolved end) calls back into the Renderer's Python methods, which also fill
 * the caches, so the next record with the same ends stays in C.
 *
 * Why C: the reference costs ~10 us per record on the bench machine, most of it building
 * objects that live for one record; even a fused Python loop spent ~9 us in bytecode.
 * Strings are escaped exactly as msgspec does it only in the plain case (no byte below 0x20,
 * no quote, no backslash: the bytes are copied); any other string is encoded by msgspec.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>
#include <structmember.h>

/* --- configuration, set once by configure() ------------------------------------------ */

static PyTypeObject *rendered_type; /* enricher.join.render.Rendered (a NamedTuple of 6) */
static PyObject *observed_set;      /* remote attributions whose client side is observed */
static PyObject *json_encode;       /* msgspec.json.Encoder().encode, for unusual strings */
#define N_COPIED 5                  /* render._FAST_COPIED: outcome ... syn_retries */
static PyObject *copied_keys[N_COPIED]; /* b',"outcome":' ... in the record's wire names */

enum { F_TEMPLATE, F_BODY, F_KEY, F_UNNAMED, F_WHERE, F_ATTRIBUTION, F_LEN };

/* The raw record's fields read here, interned once. */
enum {
    A_POD_UID, A_REMOTE_ADDR, A_START, A_END, A_ORIGINAL, A_CONTAINER, A_PID, A_COMM,
    A_ROLE, A_LOCAL_ADDR, A_LOCAL_PORT, A_REMOTE_PORT, A_SENT, A_RECEIVED, A_NODE, A_FAMILY,
    A_LATENCY, A_SRTT, A_RETRANS, A_OUTCOME, A_INTERIM, A_SEQUENCE, A_SEGS_OUT,
    A_SYN_RETRIES, A_COUNT
};
static const char *const attr_names[A_COUNT] = {
    "pod_uid", "remote_addr", "start_time_ns", "end_time_ns", "original_remote_addr",
    "container_id", "pid", "comm", "role", "local_addr", "local_port", "remote_port",
    "bytes_sent", "bytes_received", "node", "family", "connect_latency_us", "srtt_us",
    "retrans_segs", "outcome", "interim", "sequence", "segs_out", "syn_retries",
};
static PyObject *attrs[A_COUNT];
/* The raw record type and where each field's slot is in its instances: msgspec keeps a
 * Struct's fields in slots described by member descriptors, read here without a lookup. */
static PyTypeObject *raw_type;
static Py_ssize_t attr_offsets[A_COUNT];
static Py_ssize_t v_offset; /* the schema version's slot */
static PyObject *s_local_of, *s_remote_of, *s_with_service, *s_finish, *s_v;

/* --- a growable output buffer --------------------------------------------------------- */

typedef struct {
    char *data;
    Py_ssize_t len, cap;
} Buf;

static int buf_reserve(Buf *b, Py_ssize_t extra)
{
    if (b->len + extra <= b->cap)
        return 0;
    Py_ssize_t cap = b->cap ? b->cap : 1024;
    while (cap < b->len + extra)
        cap *= 2;
    char *data = PyMem_Realloc(b->data, (size_t)cap);
    if (data == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    b->data = data;
    b->cap = cap;
    return 0;
}

static int put(Buf *b, const char *s, Py_ssize_t n)
{
    if (buf_reserve(b, n) < 0)
        return -1;
    memcpy(b->data + b->len, s, (size_t)n);
    b->len += n;
    return 0;
}

#define PUT(b, lit) put((b), (lit), (Py_ssize_t)(sizeof(lit) - 1))

static int put_bytes(Buf *b, PyObject *o)
{
    if (!PyBytes_Check(o)) {
        PyErr_Format(PyExc_TypeError, "expected bytes, got %.100s", Py_TYPE(o)->tp_name);
        return -1;
    }
    return put(b, PyBytes_AS_STRING(o), PyBytes_GET_SIZE(o));
}

/* An int as Python's b"%d" writes it (bools included: True is 1). */
static int put_int(Buf *b, PyObject *o)
{
    if (!PyLong_Check(o)) {
        PyErr_Format(PyExc_TypeError, "%%d format: a real number is required, not %.100s",
                     Py_TYPE(o)->tp_name);
        return -1;
    }
    int overflow = 0;
    long long v = PyLong_AsLongLongAndOverflow(o, &overflow);
    if (v == -1 && PyErr_Occurred())
        return -1;
    if (overflow) { /* beyond 64 bits: rare enough to go through Python */
        PyObject *text = PyObject_Str(o);
        if (text == NULL)
            return -1;
        Py_ssize_t n;
        const char *s = PyUnicode_AsUTF8AndSize(text, &n);
        int rc = s == NULL ? -1 : put(b, s, n);
        Py_DECREF(text);
        return rc;
    }
    /* By hand: snprintf's format parsing cost more than the rest of a record's ints. */
    char tmp[24];
    char *end = tmp + sizeof tmp, *p = end;
    unsigned long long u = v < 0 ? 0ULL - (unsigned long long)v : (unsigned long long)v;
    do {
        *--p = (char)('0' + u % 10);
        u /= 10;
    } while (u);
    if (v < 0)
        *--p = '-';
    return put(b, p, end - p);
}

/* A str as msgspec's JSON encoder writes it. */
static int put_str(Buf *b, PyObject *o)
{
    if (PyUnicode_Check(o)) {
        Py_ssize_t n;
        const char *s = PyUnicode_AsUTF8AndSize(o, &n);
        if (s == NULL) {
            PyErr_Clear(); /* e.g. a lone surrogate: msgspec says what is wrong */
        } else {
            Py_ssize_t i = 0;
            for (; i < n; i++) {
                unsigned char c = (unsigned char)s[i];
                if (c < 0x20 || c == '"' || c == '\\')
                    break;
            }
            if (i == n) {
                if (buf_reserve(b, n + 2) < 0)
                    return -1;
                b->data[b->len++] = '"';
                memcpy(b->data + b->len, s, (size_t)n);
                b->len += n;
                b->data[b->len++] = '"';
                return 0;
            }
        }
    }
    PyObject *encoded = PyObject_CallOneArg(json_encode, o);
    if (encoded == NULL)
        return -1;
    int rc = put_bytes(b, encoded);
    Py_DECREF(encoded);
    return rc;
}

static int is_ascii(PyObject *s, const char *text)
{
    return PyUnicode_Check(s) && PyUnicode_CompareWithASCIIString(s, text) == 0;
}

/* A fragment (enricher.join.render.Fragment) checked once, so items can be read unchecked. */
static int check_fragment(PyObject *f)
{
    if (!PyTuple_Check(f) || PyTuple_GET_SIZE(f) != F_LEN) {
        PyErr_Format(PyExc_TypeError, "expected a Fragment, got %.100s", Py_TYPE(f)->tp_name);
        return -1;
    }
    if (!PyBytes_Check(PyTuple_GET_ITEM(f, F_BODY)) ||
        !PyUnicode_Check(PyTuple_GET_ITEM(f, F_ATTRIBUTION))) {
        PyErr_SetString(PyExc_TypeError, "Fragment: body must be bytes, attribution str");
        return -1;
    }
    return 0;
}

/* --- one record ------------------------------------------------------------------------- */

/* A record's fields. Read from the slots of the known record type, they are borrowed: the
 * type is frozen, so one reference to the record keeps every field alive (one incref per
 * record instead of one per field). Read through getattr, each is owned. */
typedef struct {
    PyObject *v[A_COUNT];
    PyObject *record; /* set when the fields are borrowed from it */
} Fields;

static void fields_clear(Fields *f)
{
    if (f->record != NULL) {
        Py_CLEAR(f->record);
        return;
    }
    for (int i = 0; i < A_COUNT; i++)
        Py_CLEAR(f->v[i]);
}

static int fields_read(Fields *f, PyObject *raw)
{
    if (Py_TYPE(raw) == raw_type) { /* read the slots directly (offsets from configure) */
        Py_INCREF(raw);
        f->record = raw; /* first: on an error below, fields_clear releases only the record */
        for (int i = 0; i < A_COUNT; i++) {
            PyObject *v = *(PyObject **)((char *)raw + attr_offsets[i]);
            if (v == NULL) {
                PyErr_Format(PyExc_AttributeError, "%U is not set", attrs[i]);
                return -1;
            }
            f->v[i] = v;
        }
        return 0;
    }
    for (int i = 0; i < A_COUNT; i++) {
        f->v[i] = PyObject_GetAttr(raw, attrs[i]);
        if (f->v[i] == NULL)
            return -1;
    }
    return 0;
}

/* The remote end's fragment from the address shortcut, if its span covers t (new ref), or
 * NULL with no error set when the shortcut does not apply. */
static PyObject *remote_shortcut(PyObject *ip_frags, PyObject *addr, PyObject *t)
{
    PyObject *hit = PyDict_GetItemWithError(ip_frags, addr);
    if (hit == NULL || !PyTuple_Check(hit) || PyTuple_GET_SIZE(hit) != 3)
        return NULL;
    int ge = PyObject_RichCompareBool(t, PyTuple_GET_ITEM(hit, 0), Py_GE);
    if (ge <= 0)
        return NULL;
    int lt = PyObject_RichCompareBool(t, PyTuple_GET_ITEM(hit, 1), Py_LT);
    if (lt <= 0)
        return NULL;
    PyObject *frag = PyTuple_GET_ITEM(hit, 2);
    Py_INCREF(frag);
    return frag;
}

/* --- remote addresses nobody in the cluster has: the internet, without Python ------------ */

/* What render_batch's ``internet`` argument holds (Renderer._internet), read once per batch:
 * the index's address tables, the IPv4 ranges that are not the internet (this cluster's and
 * other clusters' CIDRs, the special-purpose ranges) and the external end's fragment. */
typedef struct {
    PyObject *pod_ips, *node_ips, *service_ips; /* dicts keyed by address */
    const uint32_t *ranges;                     /* (network, mask) pairs */
    Py_ssize_t n_ranges;
    PyObject *external; /* the Fragment of enrich.EXTERNAL */
    PyObject *peer;     /* b"internet" */
} Internet;

static int internet_read(PyObject *o, Internet *in)
{
    if (!PyTuple_Check(o) || PyTuple_GET_SIZE(o) != 6 || !PyDict_Check(PyTuple_GET_ITEM(o, 0)) ||
        !PyDict_Check(PyTuple_GET_ITEM(o, 1)) || !PyDict_Check(PyTuple_GET_ITEM(o, 2)) ||
        !PyBytes_Check(PyTuple_GET_ITEM(o, 3)) || PyBytes_GET_SIZE(PyTuple_GET_ITEM(o, 3)) % 8 ||
        !PyBytes_Check(PyTuple_GET_ITEM(o, 5))) {
        PyErr_SetString(PyExc_TypeError, "internet: (pod_ips, node_ips, service_ips: dict, "
                                         "ranges: bytes of uint32 pairs, fragment, peer: bytes)");
        return -1;
    }
    in->pod_ips = PyTuple_GET_ITEM(o, 0);
    in->node_ips = PyTuple_GET_ITEM(o, 1);
    in->service_ips = PyTuple_GET_ITEM(o, 2);
    in->ranges = (const uint32_t *)PyBytes_AS_STRING(PyTuple_GET_ITEM(o, 3));
    in->n_ranges = PyBytes_GET_SIZE(PyTuple_GET_ITEM(o, 3)) / 8;
    in->external = PyTuple_GET_ITEM(o, 4);
    in->peer = PyTuple_GET_ITEM(o, 5);
    return check_fragment(in->external);
}

/* A dotted quad as inet_pton reads it, but only its one canonical spelling (no leading zeros):
 * anything else is left to Python, which classifies it the long way. */
static int parse_v4(const char *s, Py_ssize_t n, uint32_t *out)
{
    uint32_t v = 0;
    Py_ssize_t i = 0;
    for (int part = 0; part < 4; part++) {
        if (part > 0 && (i >= n || s[i++] != '.'))
            return 0;
        Py_ssize_t start = i;
        unsigned octet = 0;
        while (i < n && i - start < 3 && s[i] >= '0' && s[i] <= '9')
            octet = octet * 10 + (unsigned)(s[i++] - '0');
        if (i == start || octet > 255 || (s[start] == '0' && i - start > 1))
            return 0;
        v = v << 8 | octet;
    }
    if (i != n)
        return 0;
    *out = v;
    return 1;
}

/* 1 if ``addr`` is an IPv4 address on the internet that no pod ever held and that is neither a
 * node's nor a ClusterIP: its end is the external one whatever the time (what Renderer._remote
 * answers, without the call and without a cache entry per address); 0 if Python must look. */
static int unknown_internet(const Internet *in, PyObject *addr)
{
    if (!PyUnicode_Check(addr) || !PyUnicode_IS_COMPACT_ASCII(addr))
        return 0;
    uint32_t v;
    if (!parse_v4((const char *)PyUnicode_DATA(addr), PyUnicode_GET_LENGTH(addr), &v))
        return 0;
    for (Py_ssize_t i = 0; i < in->n_ranges; i++) {
        if ((v & in->ranges[2 * i + 1]) == in->ranges[2 * i])
            return 0;
    }
    PyObject *tables[3] = {in->pod_ips, in->node_ips, in->service_ips};
    for (int i = 0; i < 3; i++) {
        if (PyDict_GetItemWithError(tables[i], addr) != NULL)
            return 0;
        if (PyErr_Occurred())
            return -1;
    }
    return 1;
}

/* The local end with the process fields, as render.py's _LOCAL_PROCESS / _LOCAL. */
static int put_local(Buf *b, Fields *f, PyObject *local, int with_process)
{
    if (PUT(b, "{\"address\":") < 0 || put_str(b, f->v[A_LOCAL_ADDR]) < 0 ||
        PUT(b, ",\"port\":") < 0 || put_int(b, f->v[A_LOCAL_PORT]) < 0 || PUT(b, ",") < 0 ||
        put_bytes(b, PyTuple_GET_ITEM(local, F_BODY)) < 0)
        return -1;
    PyObject *cid = f->v[A_CONTAINER], *pid = f->v[A_PID], *comm = f->v[A_COMM];
    if (with_process) {
        if (PUT(b, ",\"container.id\":") < 0 || put_str(b, cid) < 0 ||
            PUT(b, ",\"process.pid\":") < 0 || put_int(b, pid) < 0 ||
            PUT(b, ",\"process.command\":") < 0 || put_str(b, comm) < 0)
            return -1;
    } else {
        if (cid != Py_None && (PUT(b, ",\"container.id\":") < 0 || put_str(b, cid) < 0))
            return -1;
        int has_pid = PyObject_IsTrue(pid);
        if (has_pid < 0 || (has_pid && (PUT(b, ",\"process.pid\":") < 0 || put_int(b, pid) < 0)))
            return -1;
        int has_comm = PyObject_IsTrue(comm);
        if (has_comm < 0 ||
            (has_comm && (PUT(b, ",\"process.command\":") < 0 || put_str(b, comm) < 0)))
            return -1;
    }
    return PUT(b, "}");
}

static int put_remote(Buf *b, Fields *f, PyObject *remote)
{
    if (PUT(b, "{\"address\":") < 0 || put_str(b, f->v[A_REMOTE_ADDR]) < 0 ||
        PUT(b, ",\"port\":") < 0 || put_int(b, f->v[A_REMOTE_PORT]) < 0 || PUT(b, ",") < 0 ||
        put_bytes(b, PyTuple_GET_ITEM(remote, F_BODY)) < 0)
        return -1;
    return PUT(b, "}");
}

/* The peer class and what the record still waits for: from the locality cache when both
 * ends are named, else from the renderer's Python (which also fills the cache). */
static int peer_and_missing(PyObject *slow, PyObject *locality, PyObject *unnamed,
                            PyObject *raw, PyObject *addr, PyObject *local, PyObject *remote,
                            PyObject *internet_peer, PyObject **peer, PyObject **missing)
{
    int la_unresolved = is_ascii(PyTuple_GET_ITEM(local, F_ATTRIBUTION), "unresolved");
    if (!la_unresolved && internet_peer != NULL) {
        /* An internet peer (unknown_internet): nothing to wait for. */
        Py_INCREF(internet_peer);
        Py_INCREF(Py_None);
        *peer = internet_peer;
        *missing = Py_None;
        return 0;
    }
    if (!la_unresolved && PyTuple_GET_ITEM(remote, F_UNNAMED) == Py_True) {
        /* An unnamed remote end: both answers depend on its address only (Renderer._finish
         * keeps them per address). */
        PyObject *found = PyDict_GetItemWithError(unnamed, addr);
        if (found != NULL && PyTuple_Check(found) && PyTuple_GET_SIZE(found) == 2 &&
            PyBytes_Check(PyTuple_GET_ITEM(found, 0))) {
            *peer = PyTuple_GET_ITEM(found, 0);
            *missing = PyTuple_GET_ITEM(found, 1);
            Py_INCREF(*peer);
            Py_INCREF(*missing);
            return 0;
        }
        if (PyErr_Occurred())
            return -1;
    }
    if (!la_unresolved && PyTuple_GET_ITEM(remote, F_UNNAMED) == Py_False) {
        PyObject *key = PyTuple_Pack(2, PyTuple_GET_ITEM(local, F_WHERE),
                                     PyTuple_GET_ITEM(remote, F_WHERE));
        if (key == NULL)
            return -1;
        PyObject *found = PyDict_GetItemWithError(locality, key);
        Py_DECREF(key);
        if (found != NULL) {
            Py_INCREF(found);
            Py_INCREF(Py_None);
            *peer = found;
            *missing = Py_None;
            return 0;
        }
        if (PyErr_Occurred())
            return -1;
    }
    PyObject *res = PyObject_CallMethodObjArgs(slow, s_finish, raw, local, remote, NULL);
    if (res == NULL)
        return -1;
    if (!PyTuple_Check(res) || PyTuple_GET_SIZE(res) != 2 ||
        !PyBytes_Check(PyTuple_GET_ITEM(res, 0))) {
        Py_DECREF(res);
        PyErr_SetString(PyExc_TypeError, "_finish must return (bytes, str | None)");
        return -1;
    }
    *peer = PyTuple_GET_ITEM(res, 0);
    *missing = PyTuple_GET_ITEM(res, 1);
    Py_INCREF(*peer);
    Py_INCREF(*missing);
    Py_DECREF(res);
    return 0;
}

static PyObject *render_one(Buf *b, PyObject *raw, PyObject *frags, PyObject *ip_frags,
                            PyObject *locality, PyObject *unnamed, PyObject *slow,
                            const Internet *internet)
{
    Fields f = {{NULL}, NULL};
    PyObject *local = NULL, *remote = NULL, *peer = NULL, *missing = NULL, *value = NULL;
    PyObject *key = NULL, *out = NULL;
    if (fields_read(&f, raw) < 0)
        goto done;

    PyObject *uid = f.v[A_POD_UID];
    if (uid != Py_None) {
        local = PyDict_GetItemWithError(frags, uid);
        Py_XINCREF(local);
        if (local == NULL && PyErr_Occurred())
            goto done;
    }
    if (local == NULL && (local = PyObject_CallMethodObjArgs(slow, s_local_of, raw, NULL)) == NULL)
        goto done;
    if (check_fragment(local) < 0)
        goto done;

    PyObject *addr = f.v[A_REMOTE_ADDR];
    PyObject *internet_peer = NULL; /* set when the remote end is an unknown internet peer */
    remote = remote_shortcut(ip_frags, addr, f.v[A_START]);
    if (remote == NULL) {
        if (PyErr_Occurred())
            goto done;
        int on_internet = internet != NULL ? unknown_internet(internet, addr) : 0;
        if (on_internet < 0)
            goto done;
        if (on_internet) {
            remote = internet->external;
            Py_INCREF(remote);
            internet_peer = internet->peer;
        } else {
            remote = PyObject_CallMethodObjArgs(slow, s_remote_of, addr, f.v[A_START], NULL);
            if (remote == NULL)
                goto done;
        }
    }
    if (f.v[A_ORIGINAL] != Py_None) {
        PyObject *dialed = PyObject_CallMethodObjArgs(slow, s_with_service, remote, raw, NULL);
        if (dialed == NULL)
            goto done;
        Py_SETREF(remote, dialed);
    }
    if (check_fragment(remote) < 0)
        goto done;
    PyObject *la = PyTuple_GET_ITEM(local, F_ATTRIBUTION);
    PyObject *ra = PyTuple_GET_ITEM(remote, F_ATTRIBUTION);

    PyObject *role = f.v[A_ROLE];
    int client_side = !is_ascii(role, "server");
    if (client_side && !is_ascii(role, "client") && !is_ascii(role, "unknown")) {
        PyErr_SetObject(PyExc_KeyError, role);
        goto done;
    }
    int observed = 1;
    if (!client_side && (observed = PySet_Contains(observed_set, ra)) < 0)
        goto done;
    const char *network;
    long family = PyLong_Check(f.v[A_FAMILY]) ? PyLong_AsLong(f.v[A_FAMILY]) : -1;
    if (family == 4) {
        network = "ipv4";
    } else if (family == 6) {
        network = "ipv6";
    } else {
        if (!PyErr_Occurred())
            PyErr_SetObject(PyExc_KeyError, f.v[A_FAMILY]);
        goto done;
    }
    int pid_set = PyObject_IsTrue(f.v[A_PID]);
    int comm_set = PyObject_IsTrue(f.v[A_COMM]);
    if (pid_set < 0 || comm_set < 0)
        goto done;
    int with_process = f.v[A_CONTAINER] != Py_None && pid_set && comm_set;
    if (peer_and_missing(slow, locality, unnamed, raw, addr, local, remote, internet_peer, &peer,
                         &missing) < 0)
        goto done;

    b->len = 0;
    if (PUT(b, "{\"schema_version\":1,\"start_time_unix_nano\":") < 0 ||
        put_int(b, f.v[A_START]) < 0 || PUT(b, ",\"end_time_unix_nano\":") < 0 ||
        put_int(b, f.v[A_END]) < 0 || PUT(b, ",\"flowscope.observer.node\":") < 0 ||
        put_str(b, f.v[A_NODE]) < 0 || PUT(b, ",\"flowscope.observer.role\":\"") < 0)
        goto done;
    Py_ssize_t role_len;
    const char *role_text = PyUnicode_AsUTF8AndSize(role, &role_len);
    if (role_text == NULL || put(b, role_text, role_len) < 0 ||
        PUT(b, "\",\"flowscope.client.observed\":") < 0 ||
        (observed ? PUT(b, "true") : PUT(b, "false")) < 0 ||
        PUT(b, ",\"network.transport\":\"tcp\",\"network.type\":\"") < 0 ||
        put(b, network, 4) < 0 || PUT(b, "\",\"client\":") < 0)
        goto done;
    if (client_side) {
        if (put_local(b, &f, local, with_process) < 0 || PUT(b, ",\"server\":") < 0 ||
            put_remote(b, &f, remote) < 0 || PUT(b, ",\"bytes_client_to_server\":") < 0 ||
            put_int(b, f.v[A_SENT]) < 0 || PUT(b, ",\"bytes_server_to_client\":") < 0 ||
            put_int(b, f.v[A_RECEIVED]) < 0)
            goto done;
    } else {
        if (put_remote(b, &f, remote) < 0 || PUT(b, ",\"server\":") < 0 ||
            put_local(b, &f, local, with_process) < 0 ||
            PUT(b, ",\"bytes_client_to_server\":") < 0 || put_int(b, f.v[A_RECEIVED]) < 0 ||
            PUT(b, ",\"bytes_server_to_client\":") < 0 || put_int(b, f.v[A_SENT]) < 0)
            goto done;
    }
    if (PUT(b, ",\"connect_latency_us\":") < 0 ||
        (f.v[A_LATENCY] == Py_None ? PUT(b, "null") : put_int(b, f.v[A_LATENCY])) < 0 ||
        PUT(b, ",\"srtt_us\":") < 0 || put_int(b, f.v[A_SRTT]) < 0 ||
        PUT(b, ",\"retrans_segs\":") < 0 || put_int(b, f.v[A_RETRANS]) < 0 ||
        PUT(b, ",\"flowscope.peer.class\":\"") < 0 || put_bytes(b, peer) < 0 || PUT(b, "\"") < 0 ||
        put_bytes(b, copied_keys[0]) < 0 || put_str(b, f.v[A_OUTCOME]) < 0 ||
        put_bytes(b, copied_keys[1]) < 0 ||
        (PyObject_IsTrue(f.v[A_INTERIM]) ? PUT(b, "true") : PUT(b, "false")) < 0 ||
        put_bytes(b, copied_keys[2]) < 0 || put_int(b, f.v[A_SEQUENCE]) < 0 ||
        put_bytes(b, copied_keys[3]) < 0 || put_int(b, f.v[A_SEGS_OUT]) < 0 ||
        put_bytes(b, copied_keys[4]) < 0 || put_int(b, f.v[A_SYN_RETRIES]) < 0 || PUT(b, "}") < 0)
        goto done;
    if ((value = PyBytes_FromStringAndSize(b->data, b->len)) == NULL)
        goto done;

    /* The Kafka key: the client's workload key, or its attribution and address. */
    PyObject *client_frag = client_side ? local : remote;
    key = PyTuple_GET_ITEM(client_frag, F_KEY);
    if (key != Py_None) {
        Py_INCREF(key);
    } else {
        key = PyUnicode_FromFormat("%U/%U", client_side ? la : ra,
                                   client_side ? f.v[A_LOCAL_ADDR] : addr);
        if (key == NULL)
            goto done;
    }
    out = rendered_type->tp_alloc(rendered_type, 6);
    if (out == NULL)
        goto done;
    PyObject *plain = (is_ascii(ra, "pod") && !is_ascii(la, "unresolved")) ? Py_True : Py_False;
    PyObject *items[6] = {value, key, la, ra, missing, plain};
    for (int i = 0; i < 6; i++) {
        Py_INCREF(items[i]);
        PyTuple_SET_ITEM(out, i, items[i]);
    }
done:
    fields_clear(&f);
    Py_XDECREF(local);
    Py_XDECREF(remote);
    Py_XDECREF(peer);
    Py_XDECREF(missing);
    Py_XDECREF(value);
    Py_XDECREF(key);
    return out;
}

/* --- routing rendered records into the outbox (enricher.join.outbox.Outbox.add_rendered) ---- */

/* Group each plain record's value under its output partition, in order; the others (not
 * plain, waiting for metadata, or of an unknown schema version) go through ``attend(raw,
 * out)`` first, which counts them, holds them back or dead-letters them and says whether
 * to add them. A full group is sent at once with ``send(key, values)``. Returns how many
 * records were added. The reference is Outbox.add_rendered_py. */
static PyObject *route(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 9) {
        PyErr_SetString(PyExc_TypeError,
                        "route(outs, raws, version, attend, partition_by_key, partition_of, "
                        "partitions, groups, (max_records, send))");
        return NULL;
    }
    PyObject *outs = args[0], *raws = args[1], *version = args[2], *attend = args[3];
    PyObject *by_key = args[4], *partition_of = args[5], *groups = args[7], *limits = args[8];
    Py_ssize_t partitions = PyLong_AsSsize_t(args[6]);
    if (partitions == -1 && PyErr_Occurred())
        return NULL;
    if (!PyList_Check(outs) || !PyList_Check(raws) || PyList_GET_SIZE(outs) != PyList_GET_SIZE(raws) ||
        !PyDict_Check(by_key) || !PyDict_Check(groups) || !PyTuple_Check(limits) ||
        PyTuple_GET_SIZE(limits) != 2) {
        PyErr_SetString(PyExc_TypeError, "route: outs and raws must be lists of one length");
        return NULL;
    }
    Py_ssize_t max_records = PyLong_AsSsize_t(PyTuple_GET_ITEM(limits, 0));
    if (max_records == -1 && PyErr_Occurred())
        return NULL;
    PyObject *send = PyTuple_GET_ITEM(limits, 1);
    PyObject *zero = PyLong_FromLong(0);
    if (zero == NULL)
        return NULL;
    Py_ssize_t added = 0;
    Py_ssize_t n = PyList_GET_SIZE(outs);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *out = PyList_GET_ITEM(outs, i);
        if (out == Py_None)
            continue; /* dead-lettered while rendering */
        if (!PyTuple_Check(out) || PyTuple_GET_SIZE(out) != 6) {
            PyErr_SetString(PyExc_TypeError, "route: expected Rendered records");
            goto fail;
        }
        PyObject *raw = PyList_GET_ITEM(raws, i);
        int usual = PyTuple_GET_ITEM(out, 5) == Py_True && PyTuple_GET_ITEM(out, 4) == Py_None;
        if (usual) {
            PyObject *v = raw_type != NULL && Py_TYPE(raw) == raw_type
                              ? *(PyObject **)((char *)raw + v_offset)
                              : NULL;
            int same = v != NULL ? PyObject_RichCompareBool(v, version, Py_EQ) : 0;
            if (same < 0)
                goto fail;
            usual = same;
        }
        if (!usual) {
            PyObject *verdict = PyObject_CallFunctionObjArgs(attend, raw, out, NULL);
            if (verdict == NULL)
                goto fail;
            int add = PyObject_IsTrue(verdict);
            Py_DECREF(verdict);
            if (add < 0)
                goto fail;
            if (!add)
                continue;
        }
        PyObject *value = PyTuple_GET_ITEM(out, 0), *key = PyTuple_GET_ITEM(out, 1);
        PyObject *part; /* new reference */
        if (partitions == 1) {
            part = zero;
            Py_INCREF(part);
        } else {
            part = PyDict_GetItemWithError(by_key, key);
            if (part != NULL) {
                Py_INCREF(part);
            } else {
                if (PyErr_Occurred() ||
                    (part = PyObject_CallOneArg(partition_of, key)) == NULL)
                    goto fail;
            }
        }
        PyObject *group = PyDict_GetItemWithError(groups, part);
        if (group == NULL) {
            PyObject *values = PyErr_Occurred() ? NULL : PyList_New(1);
            PyObject *entry = values != NULL ? PyTuple_Pack(2, key, values) : NULL;
            if (values != NULL) {
                Py_INCREF(value);
                PyList_SET_ITEM(values, 0, value);
            }
            int rc = entry != NULL ? PyDict_SetItem(groups, part, entry) : -1;
            Py_XDECREF(entry);
            Py_XDECREF(values);
            if (rc < 0) {
                Py_DECREF(part);
                goto fail;
            }
        } else {
            PyObject *values = PyTuple_GET_ITEM(group, 1);
            if (PyList_Append(values, value) < 0) {
                Py_DECREF(part);
                goto fail;
            }
            if (PyList_GET_SIZE(values) >= max_records) {
                /* Full: out now, so memory stays bounded however large the consumed batch. */
                Py_INCREF(values);
                int rc = PyDict_DelItem(groups, part);
                PyObject *sent = rc < 0 ? NULL
                                        : PyObject_CallFunctionObjArgs(send, key, values, NULL);
                Py_DECREF(values);
                if (sent == NULL) {
                    Py_DECREF(part);
                    goto fail;
                }
                Py_DECREF(sent);
            }
        }
        Py_DECREF(part);
        added++;
    }
    Py_DECREF(zero);
    return PyLong_FromSsize_t(added);
fail:
    Py_DECREF(zero);
    return NULL;
}

/* --- module functions ----------------------------------------------------------------- */

static PyObject *render_batch(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (rendered_type == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "enricher.join._render: configure() was not called");
        return NULL;
    }
    if (nargs != 7) {
        PyErr_SetString(PyExc_TypeError, "render_batch(raws, fragments, ip_fragments, "
                                         "locality, unnamed, renderer, internet)");
        return NULL;
    }
    PyObject *frags = args[1], *ip_frags = args[2], *locality = args[3], *unnamed = args[4];
    PyObject *slow = args[5];
    if (!PyDict_Check(frags) || !PyDict_Check(ip_frags) || !PyDict_Check(locality) ||
        !PyDict_Check(unnamed)) {
        PyErr_SetString(PyExc_TypeError, "render_batch: the caches must be dicts");
        return NULL;
    }
    Internet internet_buf, *internet = NULL; /* None: every unshortcut address asks Python */
    if (args[6] != Py_None) {
        if (internet_read(args[6], &internet_buf) < 0)
            return NULL;
        internet = &internet_buf;
    }
    PyObject *seq = PySequence_Fast(args[0], "render_batch: raws must be a sequence");
    if (seq == NULL)
        return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    PyObject *out = PyList_New(n);
    Buf b = {NULL, 0, 0};
    if (out != NULL) {
        for (Py_ssize_t i = 0; i < n; i++) {
            PyObject *r = render_one(&b, PySequence_Fast_GET_ITEM(seq, i), frags, ip_frags,
                                     locality, unnamed, slow, internet);
            if (r == NULL) {
                Py_CLEAR(out);
                break;
            }
            PyList_SET_ITEM(out, i, r);
        }
    }
    PyMem_Free(b.data);
    Py_DECREF(seq);
    return out;
}

static PyObject *configure(PyObject *self, PyObject *args)
{
    PyObject *type, *raw, *observed, *encode, *keys;
    if (!PyArg_ParseTuple(args, "O!O!OOO!:configure", &PyType_Type, &type, &PyType_Type, &raw,
                          &observed, &encode, &PyTuple_Type, &keys))
        return NULL;
    Py_ssize_t offsets[A_COUNT + 1];
    for (int i = 0; i <= A_COUNT; i++) {
        PyObject *descr = PyObject_GetAttr(raw, i < A_COUNT ? attrs[i] : s_v);
        if (descr == NULL)
            return NULL;
        int is_member = Py_IS_TYPE(descr, &PyMemberDescr_Type) &&
                        ((PyMemberDescrObject *)descr)->d_member->type == T_OBJECT_EX;
        offsets[i] = is_member ? ((PyMemberDescrObject *)descr)->d_member->offset : -1;
        Py_DECREF(descr);
    }
    if (!PyType_IsSubtype((PyTypeObject *)type, &PyTuple_Type) || !PyAnySet_Check(observed) ||
        !PyCallable_Check(encode) || PyTuple_GET_SIZE(keys) != N_COPIED) {
        PyErr_SetString(PyExc_TypeError,
                        "configure(Rendered, RawTcpConnection, observed: frozenset, encode, 5 keys)");
        return NULL;
    }
    for (int i = 0; i < N_COPIED; i++) {
        if (!PyBytes_Check(PyTuple_GET_ITEM(keys, i))) {
            PyErr_SetString(PyExc_TypeError, "configure: copied-field keys must be bytes");
            return NULL;
        }
    }
    Py_INCREF(type);
    Py_XSETREF(rendered_type, (PyTypeObject *)type);
    /* Direct slot reads only if every field is a plain object slot; else getattr. */
    int direct = offsets[A_COUNT] > 0;
    v_offset = offsets[A_COUNT];
    for (int i = 0; i < A_COUNT; i++) {
        attr_offsets[i] = offsets[i];
        direct = direct && offsets[i] > 0;
    }
    if (direct) {
        Py_INCREF(raw);
        Py_XSETREF(raw_type, (PyTypeObject *)raw);
    } else {
        Py_CLEAR(raw_type);
    }
    Py_INCREF(observed);
    Py_XSETREF(observed_set, observed);
    Py_INCREF(encode);
    Py_XSETREF(json_encode, encode);
    for (int i = 0; i < N_COPIED; i++) {
        Py_INCREF(PyTuple_GET_ITEM(keys, i));
        Py_XSETREF(copied_keys[i], PyTuple_GET_ITEM(keys, i));
    }
    return PyBool_FromLong(raw_type != NULL); /* whether fields are read from slots */
}

static PyMethodDef methods[] = {
    {"render_batch", (PyCFunction)(void (*)(void))render_batch, METH_FASTCALL,
     "render_batch(raws, fragments, ip_fragments, locality, unnamed, renderer, internet) -> list"},
    {"route", (PyCFunction)(void (*)(void))route, METH_FASTCALL,
     "route(outs, raws, version, attend, partition_by_key, partition_of, partitions, groups, "
     "(max_records, send)) -> records added"},
    {"configure", configure, METH_VARARGS,
     "configure(Rendered, RawTcpConnection, observed, encode, copied_keys): once, first"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "enricher.join._render",
    "The enricher's render loop in C (enricher/join/render.py drives it; enrich.py is its spec).", -1,
    methods,
};

PyMODINIT_FUNC PyInit__render(void)
{
    for (int i = 0; i < A_COUNT; i++) {
        if ((attrs[i] = PyUnicode_InternFromString(attr_names[i])) == NULL)
            return NULL;
    }
    if ((s_local_of = PyUnicode_InternFromString("_local_of")) == NULL ||
        (s_remote_of = PyUnicode_InternFromString("_remote")) == NULL ||
        (s_with_service = PyUnicode_InternFromString("_with_service")) == NULL ||
        (s_finish = PyUnicode_InternFromString("_finish")) == NULL ||
        (s_v = PyUnicode_InternFromString("v")) == NULL)
        return NULL;
    return PyModule_Create(&module);
}
