/*
 * The writer's quick path for a statement record, compiled (see dbgate/audit/rows.py,
 * RowBuilder.sealed; the Python path there is the reference and the fallback).
 *
 * A statement executed again and again (one shape: same text, session, decision,
 * rule) gives records that differ only in a few fields: when it ran, its place in the
 * chain, its parameters, outcome, rows and duration. The shape keeps its record's
 * values, the canonical text around the varying fields (fragments, UTF-8) and the
 * binary COPY row around them (blocks). seal() fills in the varying fields of one
 * execution and returns what RowBuilder.sealed returns:
 *
 *     seal(shape, event, prev_hash, seq, logged_us) -> (values, hash, row) | None
 *
 * `shape` is the tuple made by rows.py (_native): (values, fragments, blocks,
 * canonical order, row order, mac key, max_text_chars, chain). `event` is a
 * StatementEvent. None means "take the full path": a field of an unexpected type or
 * range, text that does not encode, or a NUL to escape, exactly where the Python quick
 * path gives up too, so both paths give the same record byte for byte (a property
 * test checks it).
 *
 * Parameters are stored as "h:" + hex(keyed BLAKE2b-128) (dbgate/pii/_blake2b.c, the
 * same bytes as hashlib's; the state after the key block is kept for the next value,
 * and rows.py takes the Python path under an empty key); the record's hash is
 * sha256(prev || sha256(canonical)) with OpenSSL's SHA-256 (SHA-NI where the CPU has
 * it).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <string.h>
#include <structmember.h>

#define OPENSSL_API_COMPAT 0x10100000L
#include <openssl/sha.h>

#include "../_wbuf.h"
#include "../pii/_blake2b.h"

/* The varying fields, as the order tuples name them (rows.py's _NATIVE_CODES). */
enum { V_SEQ, V_LOGGED, V_AT, V_ROWS, V_DURATION, V_OUTCOME, V_PARAMS, V_COUNT };

#define PG_EPOCH_US 946684800000000LL
#define INT64_LIM 9223372036854775807LL

/* Set once by configure(), from rows.py: the range of `at` (seconds) the quick path
 * takes, and the positions in FIELDS of chain, then of each V_* field. */
static double min_s, max_s;
static Py_ssize_t pos_chain = -1, pos[V_COUNT];

/* sha256(prev || sha256(content)). The low-level calls: in OpenSSL 3 the one-shot
 * SHA256() looks the digest up by name each time, several times the hashing here. */
static void
link_hash(unsigned char h[32], const void *prev, size_t prev_len, const void *content, size_t n)
{
    SHA256_CTX c;
    unsigned char d[32];
    SHA256_Init(&c);
    SHA256_Update(&c, content, n);
    SHA256_Final(d, &c);
    SHA256_Init(&c);
    SHA256_Update(&c, prev, prev_len);
    SHA256_Update(&c, d, 32);
    SHA256_Final(h, &c);
}

static PyObject *s_at, *s_session_id, *s_tokenized, *s_outcome, *s_rows, *s_duration_us,
    *s_params;

/* Reads of a slotted class's attributes straight from the object (its member
 * descriptors' offsets), for the exact class they were found in: an event, a queue
 * item, a shape are read several times each per record, and PyObject_GetAttr finds
 * the descriptor through the type every time. Another class, a descriptor that is not
 * a plain object slot, or an unset slot takes PyObject_GetAttr (same value, same
 * error). */
#define MAX_SLOTS 24
typedef struct {
    PyTypeObject *type; /* the class the offsets are of (a strong reference), or NULL */
    unsigned int version; /* its tp_version_tag then (it changes with the class) */
    int ok;               /* every name is a plain object slot of `type` */
    Py_ssize_t off[MAX_SLOTS];
} slots_t;

static void
slots_learn(slots_t *s, PyTypeObject *type, PyObject *const *names, int n)
{
    Py_XSETREF(s->type, (PyTypeObject *)Py_NewRef(type));
    int ok = type->tp_getattro == PyObject_GenericGetAttr;
    for (int i = 0; ok && i < n; i++) {
        PyObject *d = _PyType_Lookup(type, names[i]); /* borrowed; no error set */
        if (d == NULL || !Py_IS_TYPE(d, &PyMemberDescr_Type)) {
            ok = 0;
            break;
        }
        PyMemberDef *m = ((PyMemberDescrObject *)d)->d_member;
        if (m->type != T_OBJECT_EX || (m->flags & READONLY) ||
            m->offset < (Py_ssize_t)sizeof(PyObject) ||
            m->offset + (Py_ssize_t)sizeof(PyObject *) > type->tp_basicsize) {
            ok = 0;
            break;
        }
        s->off[i] = m->offset;
    }
    /* read after the lookups, which give the class a version tag if it had none: what
     * was learnt holds while the tag does (a class without one, which may change
     * unseen, is read with PyObject_GetAttr and learnt again once it has one) */
    s->version = type->tp_version_tag;
    s->ok = ok && s->version != 0;
}

/* obj.<names[i]> as a new reference (NULL with an error set, as PyObject_GetAttr). */
static inline PyObject *
slot_get(slots_t *s, PyObject *obj, PyObject *const *names, int n, int i)
{
    PyTypeObject *type = Py_TYPE(obj);
    if (type != s->type || type->tp_version_tag != s->version)
        slots_learn(s, type, names, n);
    if (s->ok) {
        PyObject *v = *(PyObject **)((char *)obj + s->off[i]);
        if (v != NULL)
            return Py_NewRef(v);
    }
    return PyObject_GetAttr(obj, names[i]);
}

/* A StatementEvent's varying fields, in this order (read_varying). */
enum { E_AT, E_SID, E_TOK, E_OUTCOME, E_ROWS, E_DURATION, E_PARAMS, E_COUNT };
static PyObject *event_names[E_COUNT];
static slots_t event_slots;
#define EVENT_GET(event, i) slot_get(&event_slots, (event), event_names, E_COUNT, (i))

static int
buf_bytes(wbuf *b, PyObject *bytes)
{
    return wb_put(b, PyBytes_AS_STRING(bytes), PyBytes_GET_SIZE(bytes));
}

static int
buf_int(wbuf *b, long long v)
{
    char tmp[24], *o = tmp + sizeof tmp;
    unsigned long long u = v < 0 ? 0ULL - (unsigned long long)v : (unsigned long long)v;
    do {
        *--o = (char)('0' + u % 10);
        u /= 10;
    } while (u);
    if (v < 0)
        *--o = '-';
    return wb_put(b, o, tmp + sizeof tmp - o);
}

static int
buf_be32(wbuf *b, int32_t v)
{
    uint32_t u = (uint32_t)v;
    unsigned char o[4] = {u >> 24, u >> 16, u >> 8, u};
    return wb_put(b, o, 4);
}

static int
buf_int8_field(wbuf *b, long long v)
{
    uint64_t u = (uint64_t)v;
    unsigned char o[12] = {0, 0, 0, 8};
    for (int i = 0; i < 8; i++)
        o[4 + i] = (unsigned char)(u >> (56 - 8 * i));
    return wb_put(b, o, 12);
}

static const char NULL_FIELD[4] = {'\xff', '\xff', '\xff', '\xff'};

/* JSON string of UTF-8 `s` as json.encoder.encode_basestring writes it (quotes,
 * backslashes and control characters escaped; everything else as is). */
static int
buf_json_string(wbuf *b, const char *s, Py_ssize_t n)
{
    static const char hex[] = "0123456789abcdef";
    if (wb_reserve(b, n * 6 + 2) < 0)
        return -1;
    char *o = b->p + b->len;
    *o++ = '"';
    for (Py_ssize_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c >= 0x20 && c != '"' && c != '\\') {
            *o++ = (char)c;
            continue;
        }
        *o++ = '\\';
        switch (c) {
        case '"': *o++ = '"'; break;
        case '\\': *o++ = '\\'; break;
        case '\n': *o++ = 'n'; break;
        case '\r': *o++ = 'r'; break;
        case '\t': *o++ = 't'; break;
        case '\b': *o++ = 'b'; break;
        case '\f': *o++ = 'f'; break;
        default:
            *o++ = 'u';
            *o++ = '0';
            *o++ = '0';
            *o++ = hex[c >> 4];
            *o++ = hex[c & 15];
        }
    }
    *o++ = '"';
    b->len = o - b->p;
    return 0;
}

/* An optional int64 field of the event: 0 ok (*present says whether it is not None),
 * 1 take the full path, -1 error. Only an exact int within +-(2**63 - 1) is taken. */
static int
opt_int64(PyObject *v, long long *out, int *present)
{
    if (v == Py_None) {
        *present = 0;
        return 0;
    }
    if (!PyLong_CheckExact(v))
        return 1;
    int overflow = 0;
    long long x = PyLong_AsLongLongAndOverflow(v, &overflow);
    if (x == -1 && PyErr_Occurred())
        return -1;
    if (overflow || x < -INT64_LIM)
        return 1;
    *out = x;
    *present = 1;
    return 0;
}

typedef struct {
    long long seq, logged, at, rows, duration;
    int has_rows, has_duration;
    PyObject *outcome_obj; /* the event's outcome (a str) */
    const char *outcome;   /* its UTF-8, NULL when empty */
    Py_ssize_t outcome_len;
    wbuf params_json;  /* canonical text of the params field */
    wbuf params_field; /* its binary COPY field */
    PyObject *hashed;   /* list of "h:..." / None, or None */
} varying_t;

/* The BLAKE2b state after the key block, for the key object it was made from: the
 * same for every parameter the writer hashes, so each value costs one compression
 * instead of two. The key is the shape's bytes object (immutable), held here; the
 * personalization is always hash_params' zero block. */
static PyObject *state_key;
static uint64_t key_state[8];

static const uint64_t *
state_for(PyObject *key_obj, const uint8_t *person)
{
    if (key_obj != state_key) {
        b2b_key_state(key_state, 16, (const uint8_t *)PyBytes_AS_STRING(key_obj),
                      (size_t)PyBytes_GET_SIZE(key_obj), person);
        Py_XSETREF(state_key, Py_NewRef(key_obj));
    }
    return key_state;
}

/* The parameters' hashes, their canonical text and their COPY field: 0 ok, 1 full
 * path, -1 error. */
static int
hash_params(PyObject *params, PyObject *key_obj, varying_t *v)
{
    const uint8_t *key = (const uint8_t *)PyBytes_AS_STRING(key_obj);
    Py_ssize_t keylen = PyBytes_GET_SIZE(key_obj);
    int truth = PyObject_IsTrue(params);
    if (truth < 0)
        return -1;
    if (!truth) {
        v->hashed = Py_NewRef(Py_None);
        if (wb_put(&v->params_json, "[]", 2) < 0 || wb_put(&v->params_field, NULL_FIELD, 4) < 0)
            return -1;
        return 0;
    }
    if (!PyTuple_CheckExact(params))
        return 1;
    Py_ssize_t n = PyTuple_GET_SIZE(params);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *p = PyTuple_GET_ITEM(params, i);
        if (p != Py_None && !PyBytes_CheckExact(p))
            return 1; /* masked text is scrubbed: the full path */
    }
    v->hashed = PyList_New(n);
    if (v->hashed == NULL)
        return -1;
    static const uint8_t person[16] = {0};
    wbuf lit = {0}; /* the text[] literal */
    int rc = -1;
    if (wb_put(&v->params_json, "[", 1) < 0 || wb_put(&lit, "{", 1) < 0)
        goto done;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *p = PyTuple_GET_ITEM(params, i);
        if (i && (wb_put(&v->params_json, ",", 1) < 0 || wb_put(&lit, ",", 1) < 0))
            goto done;
        if (p == Py_None) {
            PyList_SET_ITEM(v->hashed, i, Py_NewRef(Py_None));
            if (wb_put(&v->params_json, "null", 4) < 0 || wb_put(&lit, "NULL", 4) < 0)
                goto done;
            continue;
        }
        uint8_t d[16];
        char text[36] = {'h', ':'};
        const uint8_t *value = (const uint8_t *)PyBytes_AS_STRING(p);
        size_t len = (size_t)PyBytes_GET_SIZE(p);
        if (len > 0 && keylen > 0) /* else the key block is the last block */
            b2b_from_state(d, 16, state_for(key_obj, person), value, len);
        else
            b2b_keyed(d, 16, key, (size_t)keylen, person, value, len);
        b2b_hex32(text + 2, d);
        PyObject *s = PyUnicode_FromStringAndSize(text, 34);
        if (s == NULL)
            goto done;
        PyList_SET_ITEM(v->hashed, i, s);
        if (wb_put(&v->params_json, "\"", 1) < 0 || wb_put(&v->params_json, text, 34) < 0 ||
            wb_put(&v->params_json, "\"", 1) < 0 || wb_put(&lit, "\"", 1) < 0 ||
            wb_put(&lit, text, 34) < 0 || wb_put(&lit, "\"", 1) < 0)
            goto done;
    }
    if (wb_put(&v->params_json, "]", 1) < 0 || wb_put(&lit, "}", 1) < 0)
        goto done;
    if (buf_be32(&v->params_field, (int32_t)lit.len) < 0 || wb_put(&v->params_field, lit.p, lit.len) < 0)
        goto done;
    rc = 0;
done:
    PyMem_Free(lit.p);
    return rc;
}

/* The varying fields of `event`: 0 ok, 1 full path, -1 error. */
static int
read_varying(PyObject *event, PyObject *key, Py_ssize_t max_text, varying_t *v)
{
    int rc = -1;
    PyObject *at = NULL, *sid = NULL, *tok = NULL, *outcome = NULL, *rows = NULL,
             *duration = NULL, *params = NULL;
    if ((at = EVENT_GET(event, E_AT)) == NULL)
        goto done;
    rc = 1;
    if (!PyFloat_CheckExact(at))
        goto done;
    double a = PyFloat_AS_DOUBLE(at);
    if (!(min_s < a && a < max_s))
        goto done;
    v->at = (long long)nearbyint(a * 1000000.0); /* round(): half to even, as Python */
    rc = -1;
    if ((sid = EVENT_GET(event, E_SID)) == NULL)
        goto done;
    rc = 1;
    if (sid != Py_None && !PyLong_CheckExact(sid))
        goto done; /* 1, 1.0 and True are one key; only an int is what the shape holds */
    rc = -1;
    if ((tok = EVENT_GET(event, E_TOK)) == NULL)
        goto done;
    rc = 1;
    if (tok != Py_None && !PyBool_Check(tok))
        goto done;
    rc = -1;
    if ((outcome = EVENT_GET(event, E_OUTCOME)) == NULL)
        goto done;
    rc = 1;
    if (!PyUnicode_CheckExact(outcome) || PyUnicode_GET_LENGTH(outcome) > max_text)
        goto done;
    v->outcome = NULL;
    v->outcome_len = 0;
    if (PyUnicode_GET_LENGTH(outcome)) {
        v->outcome = PyUnicode_AsUTF8AndSize(outcome, &v->outcome_len);
        if (v->outcome == NULL) { /* a lone surrogate: it does not encode */
            PyErr_Clear();
            goto done;
        }
    }
    if ((rows = EVENT_GET(event, E_ROWS)) == NULL ||
        (duration = EVENT_GET(event, E_DURATION)) == NULL) {
        rc = -1;
        goto done;
    }
    if ((rc = opt_int64(rows, &v->rows, &v->has_rows)) != 0)
        goto done;
    if ((rc = opt_int64(duration, &v->duration, &v->has_duration)) != 0)
        goto done;
    if ((params = EVENT_GET(event, E_PARAMS)) == NULL) {
        rc = -1;
        goto done;
    }
    rc = hash_params(params, key, v);
done:
    Py_XDECREF(at);
    Py_XDECREF(sid);
    Py_XDECREF(tok);
    v->outcome_obj = outcome; /* kept: its UTF-8 lives as long as it does */
    Py_XDECREF(rows);
    Py_XDECREF(duration);
    Py_XDECREF(params);
    return rc;
}

static int
render_text(wbuf *b, int code, const varying_t *v)
{
    switch (code) {
    case V_SEQ: return buf_int(b, v->seq);
    case V_LOGGED: return buf_int(b, v->logged);
    case V_AT: return buf_int(b, v->at);
    case V_ROWS: return v->has_rows ? buf_int(b, v->rows) : wb_put(b, "null", 4);
    case V_DURATION: return v->has_duration ? buf_int(b, v->duration) : wb_put(b, "null", 4);
    case V_OUTCOME:
        return v->outcome ? buf_json_string(b, v->outcome, v->outcome_len) : wb_put(b, "\"\"", 2);
    case V_PARAMS: return wb_put(b, v->params_json.p, v->params_json.len);
    }
    PyErr_SetString(PyExc_ValueError, "unknown varying field");
    return -1;
}

static int
render_field(wbuf *b, int code, const varying_t *v)
{
    switch (code) {
    case V_SEQ: return buf_int8_field(b, v->seq);
    case V_LOGGED: return buf_int8_field(b, v->logged - PG_EPOCH_US);
    case V_AT: return buf_int8_field(b, v->at - PG_EPOCH_US);
    case V_ROWS: return v->has_rows ? buf_int8_field(b, v->rows) : wb_put(b, NULL_FIELD, 4);
    case V_DURATION:
        return v->has_duration ? buf_int8_field(b, v->duration) : wb_put(b, NULL_FIELD, 4);
    case V_OUTCOME:
        if (!v->outcome)
            return wb_put(b, NULL_FIELD, 4);
        if (buf_be32(b, (int32_t)v->outcome_len) < 0)
            return -1;
        return wb_put(b, v->outcome, v->outcome_len);
    case V_PARAMS: return wb_put(b, v->params_field.p, v->params_field.len);
    }
    PyErr_SetString(PyExc_ValueError, "unknown varying field");
    return -1;
}

/* (values, hash, row) of one execution; None for the full path. */
static PyObject *
seal_one(PyObject *shape, PyObject *event, PyObject *prev, PyObject *seq_o, PyObject *logged_o)
{
    /* (values, fragments, blocks, text order, row order, key, max_text, chain): what
     * PyArg_ParseTuple(shape, "O!O!O!O!O!SOO", ...) checks, without parsing a format
     * once per record */
    if (!PyTuple_Check(shape) || PyTuple_GET_SIZE(shape) != 8) {
        PyErr_SetString(PyExc_TypeError, "a shape is a tuple of 8 items");
        return NULL;
    }
    PyObject *values = PyTuple_GET_ITEM(shape, 0), *fragments = PyTuple_GET_ITEM(shape, 1),
             *blocks = PyTuple_GET_ITEM(shape, 2), *text_order = PyTuple_GET_ITEM(shape, 3),
             *row_order = PyTuple_GET_ITEM(shape, 4), *key = PyTuple_GET_ITEM(shape, 5),
             *max_text_o = PyTuple_GET_ITEM(shape, 6), *chain = PyTuple_GET_ITEM(shape, 7);
    if (!PyList_Check(values) || !PyTuple_Check(fragments) || !PyTuple_Check(blocks) ||
        !PyTuple_Check(text_order) || !PyTuple_Check(row_order) || !PyBytes_Check(key)) {
        PyErr_SetString(PyExc_TypeError, "malformed shape");
        return NULL;
    }
    Py_ssize_t nv = PyTuple_GET_SIZE(text_order);
    if (PyTuple_GET_SIZE(fragments) != nv + 1 || PyTuple_GET_SIZE(blocks) != nv + 1 ||
        PyTuple_GET_SIZE(row_order) != nv || PyBytes_GET_SIZE(prev) != 32 ||
        pos_chain < 0) {
        PyErr_SetString(PyExc_ValueError, "malformed shape");
        return NULL;
    }
    Py_ssize_t max_text = PyLong_AsSsize_t(max_text_o);
    if (max_text == -1 && PyErr_Occurred())
        return NULL;
    varying_t v = {0};
    v.seq = PyLong_AsLongLong(seq_o);
    if (v.seq == -1 && PyErr_Occurred())
        return NULL;
    v.logged = PyLong_AsLongLong(logged_o);
    if (v.logged == -1 && PyErr_Occurred())
        return NULL;
    PyObject *result = NULL, *out_values = NULL;
    wbuf text = {0}, row = {0};
    Py_ssize_t text_size = 256, row_size = 256;
    for (Py_ssize_t i = 0; i <= nv; i++) {
        PyObject *f = PyTuple_GET_ITEM(fragments, i), *b = PyTuple_GET_ITEM(blocks, i);
        if (!PyBytes_Check(f) || !PyBytes_Check(b)) {
            PyErr_SetString(PyExc_TypeError, "fragments and blocks must be bytes");
            return NULL;
        }
        text_size += PyBytes_GET_SIZE(f);
        row_size += PyBytes_GET_SIZE(b);
    }
    if (wb_reserve(&text, text_size) < 0 || wb_reserve(&row, row_size) < 0)
        goto done;
    int rc = read_varying(event, key, max_text, &v);
    if (rc < 0)
        goto done;
    if (rc > 0) {
        result = Py_NewRef(Py_None);
        goto done;
    }
    for (Py_ssize_t i = 0; i <= nv; i++) {
        if (buf_bytes(&text, PyTuple_GET_ITEM(fragments, i)) < 0 ||
            buf_bytes(&row, PyTuple_GET_ITEM(blocks, i)) < 0)
            goto done;
        if (i == nv)
            break;
        int tc = (int)PyLong_AsLong(PyTuple_GET_ITEM(text_order, i));
        int fc = (int)PyLong_AsLong(PyTuple_GET_ITEM(row_order, i));
        if (PyErr_Occurred() || render_text(&text, tc, &v) < 0 || render_field(&row, fc, &v) < 0)
            goto done;
    }
    /* A NUL is escaped by the full path (see rows.seal); the quick path leaves it */
    for (const char *q = text.p, *end = text.p + text.len;
         (q = memchr(q, '\\', end - q)) != NULL; q++) {
        if (end - q >= 6 && memcmp(q, "\\u0000", 6) == 0) {
            result = Py_NewRef(Py_None);
            goto done;
        }
    }
    unsigned char h[32];
    link_hash(h, PyBytes_AS_STRING(prev), 32, text.p, (size_t)text.len);
    if (wb_put(&row, PyBytes_AS_STRING(prev), 32) < 0 || buf_be32(&row, 32) < 0 || wb_put(&row, h, 32) < 0)
        goto done;
    out_values = PyList_GetSlice(values, 0, PyList_GET_SIZE(values));
    if (out_values == NULL)
        goto done;
    for (int i = 0; i < V_COUNT; i++) {
        if (pos[i] >= PyList_GET_SIZE(out_values) || pos_chain >= PyList_GET_SIZE(out_values)) {
            PyErr_SetString(PyExc_ValueError, "shape values too short");
            goto done;
        }
    }
    PyObject *set[V_COUNT + 1] = {
        [V_SEQ] = Py_NewRef(seq_o),
        [V_LOGGED] = Py_NewRef(logged_o),
        [V_AT] = PyLong_FromLongLong(v.at),
        [V_ROWS] = v.has_rows ? PyLong_FromLongLong(v.rows) : Py_NewRef(Py_None),
        [V_DURATION] = v.has_duration ? PyLong_FromLongLong(v.duration) : Py_NewRef(Py_None),
        [V_OUTCOME] = Py_NewRef(v.outcome ? v.outcome_obj : Py_None),
        [V_PARAMS] = Py_NewRef(v.hashed),
        [V_COUNT] = Py_NewRef(chain),
    };
    int failed = 0;
    for (int i = 0; i <= V_COUNT; i++) {
        if (set[i] == NULL)
            failed = 1;
    }
    for (int i = 0; i <= V_COUNT; i++) {
        Py_ssize_t at = i == V_COUNT ? pos_chain : pos[i];
        if (!failed)
            PyList_SetItem(out_values, at, set[i]); /* steals the reference */
        else
            Py_XDECREF(set[i]);
    }
    if (failed)
        goto done;
    PyObject *hash = PyBytes_FromStringAndSize((const char *)h, 32);
    PyObject *row_b = PyBytes_FromStringAndSize(row.p, row.len);
    if (hash != NULL && row_b != NULL)
        result = PyTuple_Pack(3, out_values, hash, row_b);
    Py_XDECREF(hash);
    Py_XDECREF(row_b);
done:
    Py_XDECREF(out_values);
    Py_XDECREF(v.hashed);
    Py_XDECREF(v.outcome_obj);
    PyMem_Free(v.params_json.p);
    PyMem_Free(v.params_field.p);
    PyMem_Free(text.p);
    PyMem_Free(row.p);
    return result;
}

static PyObject *
seal(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 5) {
        PyErr_Format(PyExc_TypeError, "seal() takes 5 arguments (%zd given)", nargs);
        return NULL;
    }
    if (!PyTuple_Check(args[0]) || !PyBytes_Check(args[2])) {
        PyErr_SetString(PyExc_TypeError, "seal(shape: tuple, event, prev: bytes, seq, logged)");
        return NULL;
    }
    return seal_one(args[0], args[1], args[2], args[3], args[4]);
}

static PyObject *s_event, *s_size, *s_waiters, *s_native, *s_popleft;

/* A queued Item's fields (waiters, event, size) and a shape's native form. */
enum { I_WAITERS, I_EVENT, I_SIZE, I_COUNT };
static PyObject *item_names[I_COUNT];
static slots_t item_slots, shape_slots;

/* A record's fields, in the order of rec_type's arguments. A class that says its
 * __init__ only stores them (a true class attribute `plain_init`) is filled in here,
 * without a call of its __init__. */
enum { R_VALUES, R_PREV, R_HASH, R_ROW, R_WAITERS, R_SIZE, R_COUNT };
static PyObject *rec_names[R_COUNT], *s_plain_init;
static slots_t rec_slots;

/* rec_type(*args) (a new reference), or NULL with an error set. */
static PyObject *
make_rec(PyObject *rec_type, int plain, PyObject *const *args)
{
    if (plain) {
        PyTypeObject *type = (PyTypeObject *)rec_type;
        if (type != rec_slots.type || type->tp_version_tag != rec_slots.version)
            slots_learn(&rec_slots, type, rec_names, R_COUNT);
        if (rec_slots.ok) {
            PyObject *rec = type->tp_alloc(type, 0);
            if (rec == NULL)
                return NULL;
            for (int i = 0; i < R_COUNT; i++)
                *(PyObject **)((char *)rec + rec_slots.off[i]) = Py_NewRef(args[i]);
            return rec;
        }
    }
    return PyObject_Vectorcall(rec_type, args, R_COUNT, NULL);
}

/* chain_run(shapes, key_of, event_type, queue, limit, prev, seq, logged, rec_type,
 *           pending) -> None
 *
 * The writer's chaining loop (dbgate/audit/writer/batching.py, _chain_some) for a run
 * of ordinary statements of known shapes: while the item at the head of `queue` (a
 * deque of Items) holds an event of exactly `event_type` whose shape (`shapes`, keyed
 * by `key_of(event)`) has a native form that seals it, and nobody waits for it, it is
 * popped and rec_type(values, prev, hash, row, None, size) appended to `pending`, as
 * record `seq`, `seq` + 1, ... chained from `prev`; at most `limit` of them. The first
 * item that is not such is left at the head for the Python path, which gives the same
 * record (RowBuilder.sealed). The caller learns how many were chained from `pending`
 * (also after an error: each record is appended just before its item is popped). */
static PyObject *
chain_run(PyObject *self, PyObject *args)
{
    PyObject *shapes, *key_of, *event_type, *queue, *prev, *rec_type, *pending;
    Py_ssize_t limit;
    long long seq, logged;
    if (!PyArg_ParseTuple(args, "O!OOOnSLLOO!", &PyDict_Type, &shapes, &key_of, &event_type,
                          &queue, &limit, &prev, &seq, &logged, &rec_type, &PyList_Type,
                          &pending))
        return NULL;
    int plain = 0;
    if (PyType_Check(rec_type) && !((PyTypeObject *)rec_type)->tp_dictoffset) {
        PyObject *flag = PyObject_GetAttr(rec_type, s_plain_init);
        if (flag == NULL)
            PyErr_Clear();
        plain = flag == Py_True;
        Py_XDECREF(flag);
    }
    PyObject *popleft = PyObject_GetAttr(queue, s_popleft); /* found once a run */
    if (popleft == NULL)
        return NULL;
    PyObject *logged_o = PyLong_FromLongLong(logged);
    if (logged_o == NULL) {
        Py_DECREF(popleft);
        return NULL;
    }
    Py_INCREF(prev);
    PyObject *ret = NULL;
    for (Py_ssize_t n = 0; n < limit; n++) {
        Py_ssize_t len = PyObject_Length(queue);
        if (len < 0)
            goto done;
        if (len == 0)
            break;
        /* the head of the deque, without popping it yet */
        PyObject *item = PySequence_GetItem(queue, 0);
        if (item == NULL)
            goto done;
        PyObject *waiters = slot_get(&item_slots, item, item_names, I_COUNT, I_WAITERS);
        PyObject *event =
            waiters == NULL ? NULL : slot_get(&item_slots, item, item_names, I_COUNT, I_EVENT);
        PyObject *size =
            event == NULL ? NULL : slot_get(&item_slots, item, item_names, I_COUNT, I_SIZE);
        Py_DECREF(item);
        if (size == NULL) {
            Py_XDECREF(waiters);
            Py_XDECREF(event);
            goto done;
        }
        int stop = waiters != Py_None || (PyObject *)Py_TYPE(event) != event_type;
        Py_DECREF(waiters);
        PyObject *native = NULL, *sealed = NULL;
        if (!stop) {
            PyObject *key = PyObject_CallOneArg(key_of, event);
            if (key == NULL) {
                Py_DECREF(event);
                Py_DECREF(size);
                goto done;
            }
            PyObject *shape = PyDict_GetItemWithError(shapes, key); /* borrowed */
            Py_DECREF(key);
            if (shape == NULL) {
                if (PyErr_Occurred()) {
                    if (!PyErr_ExceptionMatches(PyExc_TypeError)) {
                        Py_DECREF(event);
                        Py_DECREF(size);
                        goto done;
                    }
                    PyErr_Clear(); /* a caller's unhashable value: the Python path */
                }
                stop = 1;
            } else {
                native = slot_get(&shape_slots, shape, &s_native, 1, 0);
                if (native == NULL) {
                    Py_DECREF(event);
                    Py_DECREF(size);
                    goto done;
                }
                if (!PyTuple_Check(native))
                    stop = 1;
            }
        }
        if (!stop) {
            PyObject *seq_o = PyLong_FromLongLong(seq);
            sealed = seq_o == NULL ? NULL : seal_one(native, event, prev, seq_o, logged_o);
            Py_XDECREF(seq_o);
            if (sealed == NULL) {
                Py_XDECREF(native);
                Py_DECREF(event);
                Py_DECREF(size);
                goto done;
            }
            if (sealed == Py_None)
                stop = 1;
        }
        Py_XDECREF(native);
        Py_DECREF(event);
        if (stop) {
            Py_XDECREF(sealed);
            Py_DECREF(size);
            break;
        }
        /* the record first, then the item off the queue (a deque's popleft of a
         * non-empty deque does not fail): an error leaves the item queued, unchained */
        PyObject *hash = PyTuple_GET_ITEM(sealed, 1);
        PyObject *rec_args[6] = {PyTuple_GET_ITEM(sealed, 0), prev, hash,
                                 PyTuple_GET_ITEM(sealed, 2), Py_None, size};
        PyObject *rec = make_rec(rec_type, plain, rec_args);
        Py_DECREF(size);
        if (rec == NULL || PyList_Append(pending, rec) < 0) {
            Py_XDECREF(rec);
            Py_DECREF(sealed);
            goto done;
        }
        Py_DECREF(rec);
        Py_SETREF(prev, Py_NewRef(hash));
        Py_DECREF(sealed);
        seq++;
        PyObject *popped = PyObject_CallNoArgs(popleft);
        if (popped == NULL)
            goto done;
        Py_DECREF(popped);
    }
    ret = Py_NewRef(Py_None);
done:
    Py_DECREF(prev);
    Py_DECREF(logged_o);
    Py_DECREF(popleft);
    return ret;
}

/* chain_hash(prev, content) -> sha256(prev || sha256(content)): a record's hash
 * (prev of any length, as hashlib would take it: the verifier reads it from rows). */
static PyObject *
chain_hash(PyObject *self, PyObject *args)
{
    Py_buffer prev, content;
    if (!PyArg_ParseTuple(args, "y*y*", &prev, &content))
        return NULL;
    unsigned char h[32];
    link_hash(h, prev.buf, (size_t)prev.len, content.buf, (size_t)content.len);
    PyObject *out = PyBytes_FromStringAndSize((const char *)h, 32);
    PyBuffer_Release(&prev);
    PyBuffer_Release(&content);
    return out;
}

/* A statement's shape key (rows.py's _SHAPE_NAMES): configure_key(names) once, then
 * shape_key(event) is the tuple operator.attrgetter(*names)(event) gives. */
static PyObject *key_names[MAX_SLOTS];
static int key_count;
static slots_t key_slots;

static PyObject *
configure_key(PyObject *self, PyObject *names)
{
    if (!PyTuple_Check(names) || PyTuple_GET_SIZE(names) < 1 ||
        PyTuple_GET_SIZE(names) > MAX_SLOTS) {
        PyErr_SetString(PyExc_ValueError, "a tuple of 1 to 24 attribute names");
        return NULL;
    }
    int n = (int)PyTuple_GET_SIZE(names);
    PyObject *interned[MAX_SLOTS];
    for (int i = 0; i < n; i++) {
        PyObject *name = PyTuple_GET_ITEM(names, i);
        if (!PyUnicode_CheckExact(name) || PyUnicode_FindChar(name, '.', 0, PY_SSIZE_T_MAX, 1) != -1) {
            for (int j = 0; j < i; j++)
                Py_DECREF(interned[j]);
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_ValueError, "plain attribute names only");
            return NULL;
        }
        Py_INCREF(name);
        PyUnicode_InternInPlace(&name);
        interned[i] = name;
    }
    for (int i = 0; i < key_count; i++)
        Py_CLEAR(key_names[i]);
    memcpy(key_names, interned, sizeof(PyObject *) * (size_t)n);
    key_count = n;
    Py_CLEAR(key_slots.type); /* learnt again for these names */
    Py_RETURN_NONE;
}

static PyObject *
shape_key(PyObject *self, PyObject *event)
{
    if (key_count == 0) {
        PyErr_SetString(PyExc_RuntimeError, "configure_key() was not called");
        return NULL;
    }
    PyObject *key = PyTuple_New(key_count);
    if (key == NULL)
        return NULL;
    for (int i = 0; i < key_count; i++) {
        PyObject *v = slot_get(&key_slots, event, key_names, key_count, i);
        if (v == NULL) {
            Py_DECREF(key);
            return NULL;
        }
        PyTuple_SET_ITEM(key, i, v);
    }
    return key;
}

/* A statement's event made from another of its class (events.statement_like): the
 * relay's records of one statement shape in one session differ only in a few fields,
 * and copying the others beats passing 23 arguments to the dataclass's __init__.
 * configure_like(type, fields, varying): every field of `type` (a slotted class without
 * __dict__ or weak references), and the 7 varying ones (event, at, params, outcome,
 * rows, duration_us, tokenized) as indexes into them; True when `type` can be copied
 * so. */
enum { L_EVENT, L_AT, L_PARAMS, L_OUTCOME, L_ROWS, L_DURATION, L_TOKENIZED, L_COUNT };
static PyObject *like_names[MAX_SLOTS];
static int like_count, like_at[L_COUNT];
static slots_t like_slots;

static PyObject *
configure_like(PyObject *self, PyObject *args)
{
    PyTypeObject *type;
    PyObject *fields, *varying;
    if (!PyArg_ParseTuple(args, "O!O!O!", &PyType_Type, &type, &PyTuple_Type, &fields,
                          &PyTuple_Type, &varying))
        return NULL;
    Py_ssize_t n = PyTuple_GET_SIZE(fields);
    if (n < 1 || n > MAX_SLOTS || PyTuple_GET_SIZE(varying) != L_COUNT) {
        PyErr_SetString(PyExc_ValueError, "1 to 24 fields, 7 of them varying");
        return NULL;
    }
    for (int i = 0; i < like_count; i++)
        Py_CLEAR(like_names[i]);
    like_count = 0;
    Py_CLEAR(like_slots.type);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *name = PyTuple_GET_ITEM(fields, i);
        if (!PyUnicode_CheckExact(name)) {
            PyErr_SetString(PyExc_TypeError, "field names are str");
            goto fail;
        }
        Py_INCREF(name);
        PyUnicode_InternInPlace(&name);
        like_names[like_count++] = name;
    }
    for (int i = 0; i < L_COUNT; i++) {
        long at = PyLong_AsLong(PyTuple_GET_ITEM(varying, i));
        if (at == -1 && PyErr_Occurred())
            goto fail;
        if (at < 0 || at >= n) {
            PyErr_SetString(PyExc_ValueError, "a varying field's index is out of range");
            goto fail;
        }
        like_at[i] = (int)at;
    }
    slots_learn(&like_slots, type, like_names, like_count);
    /* every slot of the instance is a field (nothing else to copy or leave unset) */
    Py_ssize_t slots_size = type->tp_basicsize - (Py_ssize_t)sizeof(PyObject);
    if (!like_slots.ok || type->tp_dictoffset != 0 || type->tp_weaklistoffset != 0 ||
        type->tp_itemsize != 0 || slots_size != n * (Py_ssize_t)sizeof(PyObject *) ||
        type->tp_alloc == NULL) {
        Py_CLEAR(like_slots.type);
        Py_RETURN_FALSE;
    }
    Py_RETURN_TRUE;
fail:
    for (int i = 0; i < like_count; i++)
        Py_CLEAR(like_names[i]);
    like_count = 0;
    return NULL;
}

/* statement_like(proto, event, at, params, outcome, rows, duration_us, tokenized) */
static PyObject *
statement_like(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 1 + L_COUNT) {
        PyErr_Format(PyExc_TypeError, "statement_like() takes 8 arguments (%zd given)", nargs);
        return NULL;
    }
    PyObject *proto = args[0];
    PyTypeObject *type = Py_TYPE(proto);
    if (like_slots.type == NULL || type != like_slots.type) {
        PyErr_SetString(PyExc_TypeError, "statement_like() copies the configured class only");
        return NULL;
    }
    if (type->tp_version_tag != like_slots.version || !like_slots.ok) {
        /* the class changed since (an attribute set on it): its fields learnt again */
        slots_learn(&like_slots, type, like_names, like_count);
        if (!like_slots.ok) {
            PyErr_SetString(PyExc_TypeError, "statement_like(): the class's fields moved");
            return NULL;
        }
    }
    PyObject *obj = type->tp_alloc(type, 0);
    if (obj == NULL)
        return NULL;
    for (int i = 0; i < like_count; i++) {
        PyObject *v = *(PyObject **)((char *)proto + like_slots.off[i]);
        *(PyObject **)((char *)obj + like_slots.off[i]) = Py_XNewRef(v);
    }
    for (int i = 0; i < L_COUNT; i++) {
        PyObject **slot = (PyObject **)((char *)obj + like_slots.off[like_at[i]]);
        Py_XSETREF(*slot, Py_NewRef(args[1 + i]));
    }
    return obj;
}

/* configure(min_s, max_s, chain_position, positions) (see min_s above) */
static PyObject *
configure(PyObject *self, PyObject *args)
{
    PyObject *positions;
    Py_ssize_t chain;
    if (!PyArg_ParseTuple(args, "ddnO!", &min_s, &max_s, &chain, &PyTuple_Type, &positions))
        return NULL;
    if (PyTuple_GET_SIZE(positions) != V_COUNT || chain < 0) {
        PyErr_SetString(PyExc_ValueError, "positions must name the seven varying fields");
        return NULL;
    }
    for (int i = 0; i < V_COUNT; i++) {
        pos[i] = PyLong_AsSsize_t(PyTuple_GET_ITEM(positions, i));
        if (pos[i] < 0) {
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_ValueError, "a position is negative");
            return NULL;
        }
    }
    pos_chain = chain;
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"configure", configure, METH_VARARGS, "The range of `at` and the varying fields' positions."},
    {"seal", (PyCFunction)(void (*)(void))seal, METH_FASTCALL, "(values, hash, row) of a statement of a known shape, or None."},
    {"chain_run", chain_run, METH_VARARGS, "Chain a run of queued statements of known shapes."},
    {"configure_like", configure_like, METH_VARARGS, "The class statement_like() copies."},
    {"statement_like", (PyCFunction)(void (*)(void))statement_like, METH_FASTCALL,
     "A copy of an event with its varying fields given."},
    {"configure_key", configure_key, METH_O, "The attributes shape_key() reads."},
    {"shape_key", shape_key, METH_O, "A statement's shape key: its configured attributes."},
    {"chain_hash", chain_hash, METH_VARARGS, "sha256(prev || sha256(content))."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_seal", NULL, -1, methods};

PyMODINIT_FUNC
PyInit__seal(void)
{
    if (!(s_at = PyUnicode_InternFromString("at")) ||
        !(s_session_id = PyUnicode_InternFromString("session_id")) ||
        !(s_tokenized = PyUnicode_InternFromString("tokenized")) ||
        !(s_outcome = PyUnicode_InternFromString("outcome")) ||
        !(s_rows = PyUnicode_InternFromString("rows")) ||
        !(s_duration_us = PyUnicode_InternFromString("duration_us")) ||
        !(s_params = PyUnicode_InternFromString("params")) ||
        !(s_event = PyUnicode_InternFromString("event")) ||
        !(s_size = PyUnicode_InternFromString("size")) ||
        !(s_waiters = PyUnicode_InternFromString("waiters")) ||
        !(s_native = PyUnicode_InternFromString("native")) ||
        !(s_popleft = PyUnicode_InternFromString("popleft")))
        return NULL;
    PyObject *const ev[E_COUNT] = {s_at, s_session_id, s_tokenized, s_outcome, s_rows,
                                   s_duration_us, s_params};
    memcpy(event_names, ev, sizeof ev);
    static const char *const rec_fields[R_COUNT] = {"values", "prev", "hash",
                                                    "row", "waiters", "size"};
    for (int i = 0; i < R_COUNT; i++)
        if (!(rec_names[i] = PyUnicode_InternFromString(rec_fields[i])))
            return NULL;
    if (!(s_plain_init = PyUnicode_InternFromString("plain_init")))
        return NULL;
    item_names[I_WAITERS] = s_waiters;
    item_names[I_EVENT] = s_event;
    item_names[I_SIZE] = s_size;
    b2b_use_simd(1);
    return PyModule_Create(&module);
}
