/*
 * Hot loop of PII row rewriting (see dbgate/pii/rows.py, which holds the Python
 * reference implementation and says why).
 *
 * rewrite_rows(buf, start, end, positions, tables, fns, cache_value_bytes, cache_entries)
 * rewrite(body, positions, tables, fns, cache_value_bytes, cache_entries)
 *
 *   buf[start:end]  complete framed messages, as the relay reads them: a run of
 *              DataRows (other messages are copied as they are);
 *   body       one DataRow body: int16 column count, then per column an int32 length
 *              (-1: NULL) and the value;
 *   positions  tuple of increasing column indexes to replace;
 *   tables     tuple of dicts, one per position: raw value -> replacement value (the
 *              cache, shared with Python);
 *   fns        one per position: a callable raw value -> replacement value, or the
 *              tuple (prefix, keyed state, person, issued, issued_value_bytes, key,
 *              stats) of a hashed token, computed here with _blake2b.c's BLAKE2b
 *              (keyed_state() makes the state) and remembered in `issued` (an
 *              IssuedTokens, _issued.c) as Tokenizer.hasher does; stats: a
 *              bytearray(24) the rewriter keeps for the cache's hit counts.
 *
 * rewrite_rows returns the new messages, or None when nothing was replaced (every PII
 * value NULL); rewrite returns the new body, or `body` itself. Only values up to
 * cache_value_bytes are looked up and cached; a table that reaches cache_entries is
 * emptied first. A body that does not parse up to its last PII column (a length word
 * or a value past its end, a negative length other than -1) and messages that are not
 * whole raise ValueError, where the Python version raises it.
 *
 * A run costs one call: the plan is read once, each value is one dict lookup (and on a
 * miss one BLAKE2b compression per 128 bytes, two stores), and the output is written
 * into one buffer, with no Python object per row.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

#include "../_wbuf.h"
#include "_blake2b.h"
#include "_issued.h"

static inline int32_t
rd32(const unsigned char *p)
{
    return (int32_t)(((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) |
                     (uint32_t)p[3]);
}

/* keyed_state(key, person) -> the 64-byte state rewrite() takes in a hashed spec */
static PyObject *
keyed_state(PyObject *self, PyObject *args)
{
    Py_buffer key, person;
    if (!PyArg_ParseTuple(args, "y*y*", &key, &person))
        return NULL;
    PyObject *res = NULL;
    if (key.len < 1 || key.len > 64 || person.len != 16) {
        PyErr_SetString(PyExc_ValueError, "key must be 1..64 bytes, person 16");
    } else {
        uint64_t h[8];
        b2b_key_state(h, 16, key.buf, (size_t)key.len, person.buf);
        res = PyBytes_FromStringAndSize((const char *)h, sizeof h);
    }
    PyBuffer_Release(&key);
    PyBuffer_Release(&person);
    return res;
}

/* hashed(prefix, key, person, value) -> prefix + hex(blake2b-128): one token, for tests */
static PyObject *
hashed_token(PyObject *self, PyObject *args)
{
    Py_buffer prefix, key, person, value;
    if (!PyArg_ParseTuple(args, "y*y*y*y*", &prefix, &key, &person, &value))
        return NULL;
    PyObject *res = NULL;
    if (key.len < 1 || key.len > 64 || person.len != 16) {
        PyErr_SetString(PyExc_ValueError, "key must be 1..64 bytes, person 16");
    } else {
        res = PyBytes_FromStringAndSize(NULL, prefix.len + 32);
        if (res != NULL) {
            uint8_t d[16];
            char *o = PyBytes_AS_STRING(res);
            b2b_keyed(d, 16, key.buf, (size_t)key.len, person.buf, value.buf, (size_t)value.len);
            memcpy(o, prefix.buf, (size_t)prefix.len);
            b2b_hex32(o + prefix.len, d);
        }
    }
    PyBuffer_Release(&prefix);
    PyBuffer_Release(&key);
    PyBuffer_Release(&person);
    PyBuffer_Release(&value);
    return res;
}


/* use_simd(flag) -> whether the AVX2 compressions are now in use (tests compare both) */
static PyObject *
use_simd(PyObject *self, PyObject *arg)
{
    int want = PyObject_IsTrue(arg);
    if (want < 0)
        return NULL;
    return PyBool_FromLong(b2b_use_simd(want));
}

/* ------------------------------------------------------------------ the plan of a call */

/* Caching a hashed token pays only when values repeat: a hit saves a BLAKE2b and a
 * store of the issued token, a miss costs a lookup, two objects and a store more.
 * Each hashed column of a rewriter counts its lookups and hits in windows of
 * CACHE_WINDOW; when fewer than a third hit (a million distinct e-mails), the next
 * CACHE_SKIP values are hashed without the cache (and without any Python object),
 * then it is tried again. The tokens are the same either way. */
#define CACHE_WINDOW 1024
#define CACHE_SKIP 16384
struct stats {
    int64_t seen, hits, skip;
};

/* One PII column: where it is, its cache, and how to replace a value. */
typedef struct {
    long position;
    PyObject *table; /* borrowed: raw value -> replacement value */
    PyObject *fn;    /* borrowed: a callable, or NULL for a hashed token computed here */
    /* a hashed token (fn == NULL) */
    const char *prefix;
    Py_ssize_t plen;
    uint64_t state[8];
    PyObject *key, *person; /* borrowed: the whole computation, for the empty value */
    IssuedObject *issued;   /* borrowed: where the token is remembered */
    Py_ssize_t issued_value_bytes;
    struct stats *stats; /* in the spec's bytearray, kept across calls */
} slot_t;

/* A hashed token whose hex digits wait in the output for the batch's BLAKE2b. */
typedef struct {
    slot_t *slot;
    const char *raw; /* the value, in the caller's buffer */
    Py_ssize_t len;
    Py_ssize_t at;   /* where its 32 hex digits go in the output */
    PyObject *key;   /* the value as bytes when it is to be cached, else NULL */
} pending_t;

typedef struct {
    slot_t *slots;
    Py_ssize_t n;
    Py_ssize_t cache_value_bytes, cache_entries;
    pending_t batch[4];
    int nbatch;
} plan_t;

static void
plan_free(plan_t *plan)
{
    for (int i = 0; i < plan->nbatch; i++)
        Py_XDECREF(plan->batch[i].key);
    plan->nbatch = 0;
    PyMem_Free(plan->slots);
    plan->slots = NULL;
}

/* positions, tables and fns as rewrite() takes them -> plan (0), or -1 with an error */
static int
plan_parse(plan_t *plan, PyObject *positions, PyObject *tables, PyObject *fns,
           Py_ssize_t cache_value_bytes, Py_ssize_t cache_entries)
{
    Py_ssize_t n = PyTuple_GET_SIZE(positions);
    plan->slots = NULL;
    plan->nbatch = 0;
    plan->n = n;
    plan->cache_value_bytes = cache_value_bytes;
    plan->cache_entries = cache_entries;
    if (PyTuple_GET_SIZE(tables) != n || PyTuple_GET_SIZE(fns) != n) {
        PyErr_SetString(PyExc_ValueError, "positions, tables and fns must have one item each");
        return -1;
    }
    if (n == 0)
        return 0;
    plan->slots = PyMem_Calloc((size_t)n, sizeof(slot_t));
    if (plan->slots == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    long last = -1;
    for (Py_ssize_t i = 0; i < n; i++) {
        slot_t *s = &plan->slots[i];
        s->position = PyLong_AsLong(PyTuple_GET_ITEM(positions, i));
        if (s->position == -1 && PyErr_Occurred())
            goto fail;
        if (s->position <= last) {
            PyErr_SetString(PyExc_ValueError, "positions must increase");
            goto fail;
        }
        last = s->position;
        s->table = PyTuple_GET_ITEM(tables, i);
        if (!PyDict_Check(s->table)) {
            PyErr_SetString(PyExc_TypeError, "a cache table must be a dict");
            goto fail;
        }
        PyObject *fn = PyTuple_GET_ITEM(fns, i);
        if (!PyTuple_Check(fn)) {
            s->fn = fn;
            continue;
        }
        /* (prefix, keyed state, person, issued, issued_value_bytes, key, stats) */
        if (PyTuple_GET_SIZE(fn) != 7) {
            PyErr_SetString(PyExc_ValueError, "a hashed spec has 7 items");
            goto fail;
        }
        PyObject *prefix = PyTuple_GET_ITEM(fn, 0), *state = PyTuple_GET_ITEM(fn, 1);
        PyObject *issued = PyTuple_GET_ITEM(fn, 3), *stats = PyTuple_GET_ITEM(fn, 6);
        s->person = PyTuple_GET_ITEM(fn, 2);
        s->key = PyTuple_GET_ITEM(fn, 5);
        if (!PyBytes_Check(prefix) || PyBytes_GET_SIZE(prefix) > 255 || !PyBytes_Check(state) ||
            PyBytes_GET_SIZE(state) != 64 || !PyBytes_Check(s->person) ||
            PyBytes_GET_SIZE(s->person) != 16 || !PyBytes_Check(s->key) ||
            PyBytes_GET_SIZE(s->key) < 1 || PyBytes_GET_SIZE(s->key) > 64 ||
            !PyObject_TypeCheck(issued, &IssuedType) || !PyByteArray_Check(stats) ||
            PyByteArray_GET_SIZE(stats) != sizeof(struct stats)) {
            PyErr_SetString(PyExc_ValueError,
                            "a hashed spec needs a prefix, the 64-byte keyed state, a 16-byte "
                            "person, an IssuedTokens, the key and a 24-byte bytearray");
            goto fail;
        }
        s->prefix = PyBytes_AS_STRING(prefix);
        s->plen = PyBytes_GET_SIZE(prefix);
        memcpy(s->state, PyBytes_AS_STRING(state), sizeof s->state);
        s->issued = (IssuedObject *)issued;
        s->stats = (struct stats *)PyByteArray_AS_STRING(stats);
        s->issued_value_bytes = PyLong_AsSsize_t(PyTuple_GET_ITEM(fn, 4));
        if (PyErr_Occurred())
            goto fail;
    }
    return 0;
fail:
    plan_free(plan);
    return -1;
}

/* ------------------------------------------------------------------ output */

static inline void
put32(unsigned char *o, uint32_t n)
{
    o[0] = (unsigned char)(n >> 24);
    o[1] = (unsigned char)(n >> 16);
    o[2] = (unsigned char)(n >> 8);
    o[3] = (unsigned char)n;
}

/* a replacement value with its int32 length word */
static int
wb_value(wbuf *w, PyObject *value)
{
    if (!PyBytes_Check(value)) {
        PyErr_SetString(PyExc_TypeError, "a PII replacement must be bytes");
        return -1;
    }
    Py_ssize_t n = PyBytes_GET_SIZE(value);
    if (n > 0x7FFFFFFF) {
        PyErr_SetString(PyExc_ValueError, "a PII replacement is over 2 GB");
        return -1;
    }
    if (wb_reserve(w, n + 4) < 0)
        return -1;
    put32((unsigned char *)w->p + w->len, (uint32_t)n);
    memcpy(w->p + w->len + 4, PyBytes_AS_STRING(value), (size_t)n);
    w->len += n + 4;
    return 0;
}

/* ------------------------------------------------------------------ replacements */

/* After a token's hex is in the output: remember it as issued, and cache it (taking
 * the reference to key, which may be NULL: not cached). */
static int
token_made(plan_t *plan, slot_t *s, const uint8_t *d, const char *raw, Py_ssize_t len,
           wbuf *w, Py_ssize_t at, PyObject *key)
{
    /* issued_add may call on_forget, which empties the cache tables: the new token
     * goes into the cache after it */
    if (len <= s->issued_value_bytes && issued_add(s->issued, s->prefix, s->plen, d, raw, len) < 0)
        goto fail;
    if (key != NULL) {
        PyObject *value = PyBytes_FromStringAndSize(w->p + at - s->plen, s->plen + 32);
        if (value == NULL)
            goto fail;
        if (PyDict_GET_SIZE(s->table) >= plan->cache_entries)
            PyDict_Clear(s->table);
        int rc = PyDict_SetItem(s->table, key, value);
        Py_DECREF(value);
        if (rc < 0)
            goto fail;
        Py_DECREF(key);
    }
    return 0;
fail:
    Py_XDECREF(key);
    return -1;
}

/* Hash the batched values (four at a time, see b2b_last_x4) and finish their tokens. */
static int
flush_hashes(plan_t *plan, wbuf *w)
{
    int n = plan->nbatch;
    if (n == 0)
        return 0;
    int rc = 0;
#ifdef B2B_AVX2
    uint8_t blk[4][128], d[4][16];
    const uint64_t *h[4];
    uint64_t t[4];
    for (int k = 0; k < 4; k++) { /* a short batch repeats its first value */
        pending_t *it = &plan->batch[k < n ? k : 0];
        memset(blk[k], 0, 128);
        memcpy(blk[k], it->raw, (size_t)it->len);
        h[k] = it->slot->state;
        t[k] = 128 + (uint64_t)it->len;
    }
    b2b_last_x4(d, h, blk, t);
    for (int k = 0; k < n; k++) /* their index slots load while the hex is written */
        if (plan->batch[k].len <= plan->batch[k].slot->issued_value_bytes)
            issued_prefetch(plan->batch[k].slot->issued, d[k]);
    plan->nbatch = 0; /* the keys are handed over below, whatever happens */
    for (int k = 0; k < n; k++) {
        pending_t *it = &plan->batch[k];
        if (rc < 0) {
            Py_XDECREF(it->key);
            continue;
        }
        b2b_hex32(w->p + it->at, d[k]);
        rc = token_made(plan, it->slot, d[k], it->raw, it->len, w, it->at, it->key);
    }
#else
    plan->nbatch = 0;
    (void)w;
    PyErr_SetString(PyExc_SystemError, "no batched hashing in this build");
    rc = -1;
#endif
    return rc;
}

/* Write the hashed token of raw (prefix + 32 hex digits, with its length word) to w,
 * remember it as issued and cache it (taking the reference to key, NULL: not
 * cached). A value of 1 to 128 bytes (one block) waits in the batch for its hex when
 * batching is on. */
static int
emit_hashed(plan_t *plan, slot_t *s, const char *raw, Py_ssize_t len, wbuf *w, PyObject *key)
{
    Py_ssize_t n = s->plen + 32;
    if (wb_reserve(w, n + 4) < 0) {
        Py_XDECREF(key);
        return -1;
    }
    char *o = w->p + w->len;
    put32((unsigned char *)o, (uint32_t)n);
    memcpy(o + 4, s->prefix, (size_t)s->plen);
    Py_ssize_t at = w->len + 4 + s->plen;
    w->len += n + 4;
    if (b2b_batch && len >= 1 && len <= 128) {
        pending_t *it = &plan->batch[plan->nbatch++];
        it->slot = s;
        it->raw = raw;
        it->len = len;
        it->at = at;
        it->key = key;
        return plan->nbatch == 4 ? flush_hashes(plan, w) : 0;
    }
    uint8_t d[16];
    if (len > 0) {
        b2b_from_state(d, 16, s->state, (const uint8_t *)raw, (size_t)len);
    } else { /* the key block is the last block: no shortcut */
        b2b_keyed(d, 16, (const uint8_t *)PyBytes_AS_STRING(s->key),
                  (size_t)PyBytes_GET_SIZE(s->key), (const uint8_t *)PyBytes_AS_STRING(s->person),
                  NULL, 0);
    }
    if (len <= s->issued_value_bytes)
        issued_prefetch(s->issued, d);
    b2b_hex32(w->p + at, d);
    return token_made(plan, s, d, raw, len, w, at, key);
}

/* Write the replacement of raw in slot s (with its length word) to w: from the cache,
 * or made (and cached). 0, or -1 with an error. */
static int
emit(plan_t *plan, slot_t *s, const char *raw, Py_ssize_t len, wbuf *w)
{
    PyObject *key = NULL, *value = NULL;
    int cacheable = len <= plan->cache_value_bytes; /* a longer value is never cached */
    struct stats *st = s->fn == NULL ? s->stats : NULL;
    if (cacheable && st != NULL && st->skip > 0) {
        st->skip--;
        cacheable = 0;
    }
    if (cacheable) {
        key = PyBytes_FromStringAndSize(raw, len);
        if (key == NULL)
            return -1;
        PyObject *hit = PyDict_GetItemWithError(s->table, key);
        if (st != NULL && ++st->seen == CACHE_WINDOW) {
            if (3 * (st->hits + (hit != NULL)) < CACHE_WINDOW)
                st->skip = CACHE_SKIP;
            st->seen = st->hits = 0;
        } else if (st != NULL && hit != NULL) {
            st->hits++;
        }
        if (hit != NULL) {
            int rc = wb_value(w, hit);
            Py_DECREF(key);
            return rc;
        }
        if (PyErr_Occurred())
            goto fail;
    }
    if (s->fn == NULL)
        return emit_hashed(plan, s, raw, len, w, key); /* takes key */
    if (key == NULL && (key = PyBytes_FromStringAndSize(raw, len)) == NULL)
        return -1;
    value = PyObject_CallOneArg(s->fn, key);
    if (value == NULL || wb_value(w, value) < 0)
        goto fail;
    if (cacheable) {
        if (PyDict_GET_SIZE(s->table) >= plan->cache_entries)
            PyDict_Clear(s->table);
        if (PyDict_SetItem(s->table, key, value) < 0)
            goto fail;
    }
    Py_XDECREF(value);
    Py_XDECREF(key);
    return 0;
fail:
    Py_XDECREF(value);
    Py_XDECREF(key);
    return -1;
}

/* ------------------------------------------------------------------ rows */

/* Write the rewritten DataRow body p[0:size] to w; *replaced counts the values
 * replaced. 0, or -1 with an error (ValueError for a body that does not parse). */
static int
rewrite_body(plan_t *plan, const unsigned char *p, Py_ssize_t size, wbuf *w, Py_ssize_t *replaced)
{
    if (plan->n == 0 || size < 2)
        return wb_put(w, p, size);
    long ncols = ((long)p[0] << 8) | p[1];
    Py_ssize_t pos = 2, copied = 0;
    long col = 0;
    Py_ssize_t slot = 0;
    long target = plan->slots[0].position;
    while (slot < plan->n && col < ncols) {
        if (pos + 4 > size)
            goto bad;
        int32_t len = rd32(p + pos);
        if (len < -1) /* -1 is NULL; no other length is negative */
            goto bad;
        if (col == target) {
            if (len >= 0) {
                Py_ssize_t end = pos + 4 + len;
                if (end > size)
                    goto bad;
                if (wb_put(w, p + copied, pos - copied) < 0 ||
                    emit(plan, &plan->slots[slot], (const char *)p + pos + 4, len, w) < 0)
                    return -1;
                (*replaced)++;
                copied = pos = end;
            } else {
                pos += 4;
            }
            slot++;
            if (slot < plan->n)
                target = plan->slots[slot].position;
        } else {
            pos += 4 + (len > 0 ? (Py_ssize_t)len : 0);
            if (pos > size)
                goto bad;
        }
        col++;
    }
    return wb_put(w, p + copied, size - copied);
bad:
    PyErr_SetString(PyExc_ValueError, "DataRow value runs past the body");
    return -1;
}

/* rewrite(body, positions, tables, fns, cache_value_bytes, cache_entries): one row */
static PyObject *
rewrite(PyObject *self, PyObject *args)
{
    PyObject *body, *positions, *tables, *fns;
    Py_ssize_t cache_value_bytes, cache_entries;
    if (!PyArg_ParseTuple(args, "SO!O!O!nn", &body, &PyTuple_Type, &positions, &PyTuple_Type,
                          &tables, &PyTuple_Type, &fns, &cache_value_bytes, &cache_entries))
        return NULL;
    plan_t plan;
    if (plan_parse(&plan, positions, tables, fns, cache_value_bytes, cache_entries) < 0)
        return NULL;
    wbuf w = {NULL, 0, 0};
    Py_ssize_t replaced = 0;
    PyObject *res = NULL;
    if (rewrite_body(&plan, (const unsigned char *)PyBytes_AS_STRING(body),
                     PyBytes_GET_SIZE(body), &w, &replaced) == 0 &&
        flush_hashes(&plan, &w) == 0) {
        if (replaced == 0) {
            Py_INCREF(body);
            res = body;
        } else {
            res = PyBytes_FromStringAndSize(w.p, w.len);
        }
    }
    PyMem_Free(w.p);
    plan_free(&plan);
    return res;
}

/* rewrite_rows(buf, start, end, positions, tables, fns, cache_value_bytes, cache_entries):
 * the complete messages buf[start:end], DataRows rewritten; None when nothing changed */
static PyObject *
rewrite_rows(PyObject *self, PyObject *args)
{
    Py_buffer buf;
    Py_ssize_t start, end;
    PyObject *positions, *tables, *fns;
    Py_ssize_t cache_value_bytes, cache_entries;
    if (!PyArg_ParseTuple(args, "y*nnO!O!O!nn", &buf, &start, &end, &PyTuple_Type, &positions,
                          &PyTuple_Type, &tables, &PyTuple_Type, &fns, &cache_value_bytes,
                          &cache_entries))
        return NULL;
    PyObject *res = NULL;
    wbuf w = {NULL, 0, 0};
    plan_t plan = {NULL, 0, 0, 0};
    if (start < 0 || end > buf.len || start > end) {
        PyErr_SetString(PyExc_ValueError, "start and end must lie within the buffer");
        goto done;
    }
    if (plan_parse(&plan, positions, tables, fns, cache_value_bytes, cache_entries) < 0)
        goto done;
    const unsigned char *p = (const unsigned char *)buf.buf;
    if (plan.n == 0) { /* nothing to rewrite, but the messages must be whole (rows.py) */
        for (Py_ssize_t pos = start; pos < end;) {
            if (end - pos < 5)
                goto incomplete;
            uint32_t len = ((uint32_t)p[pos + 1] << 24) | ((uint32_t)p[pos + 2] << 16) |
                           ((uint32_t)p[pos + 3] << 8) | (uint32_t)p[pos + 4];
            if (len < 4 || (Py_ssize_t)len > end - pos - 1)
                goto incomplete;
            pos += 1 + (Py_ssize_t)len;
        }
        res = Py_NewRef(Py_None);
        goto done;
    }
    /* tokens are usually longer than the values they replace */
    Py_ssize_t size = end - start;
    if (wb_reserve(&w, size + (size < 65536 ? size : 65536) + 256) < 0)
        goto done;
    Py_ssize_t pos = start, replaced = 0;
    while (pos < end) {
        if (end - pos < 5)
            goto incomplete;
        uint32_t len = ((uint32_t)p[pos + 1] << 24) | ((uint32_t)p[pos + 2] << 16) |
                       ((uint32_t)p[pos + 3] << 8) | (uint32_t)p[pos + 4];
        if (len < 4 || (Py_ssize_t)len > end - pos - 1)
            goto incomplete;
        Py_ssize_t next = pos + 1 + (Py_ssize_t)len;
        if (p[pos] != 'D') {
            if (wb_put(&w, p + pos, next - pos) < 0)
                goto done;
        } else {
            Py_ssize_t hdr = w.len;
            if (wb_put(&w, p + pos, 5) < 0 ||
                rewrite_body(&plan, p + pos + 5, (Py_ssize_t)len - 4, &w, &replaced) < 0)
                goto done;
            Py_ssize_t n = w.len - hdr - 1;
            if (n > 0x7FFFFFFF) {
                PyErr_SetString(PyExc_ValueError, "a rewritten DataRow is over 2 GB");
                goto done;
            }
            put32((unsigned char *)w.p + hdr + 1, (uint32_t)n);
        }
        pos = next;
    }
    if (flush_hashes(&plan, &w) < 0)
        goto done;
    res = replaced ? PyBytes_FromStringAndSize(w.p, w.len) : Py_NewRef(Py_None);
    goto done;
incomplete:
    PyErr_SetString(PyExc_ValueError, "incomplete message in DataRow buffer");
done:
    PyMem_Free(w.p);
    plan_free(&plan);
    PyBuffer_Release(&buf);
    return res;
}

static PyMethodDef methods[] = {
    {"rewrite", rewrite, METH_VARARGS, "Rewrite the PII columns of one DataRow body."},
    {"rewrite_rows", rewrite_rows, METH_VARARGS,
     "Rewrite the PII columns of the DataRows in a run of complete messages."},
    {"hashed_token", hashed_token, METH_VARARGS, "prefix + hex(keyed BLAKE2b-128 of value)."},
    {"keyed_state", keyed_state, METH_VARARGS, "BLAKE2b-128 state after a key block."},
    {"use_simd", use_simd, METH_O, "Use the AVX2 BLAKE2b when the CPU has it; whether it is."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_rows", NULL, -1, methods};

PyMODINIT_FUNC
PyInit__rows(void)
{
    if (PyType_Ready(&IssuedType) < 0)
        return NULL;
    b2b_use_simd(1);
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    if (PyModule_AddObjectRef(m, "IssuedTokens", (PyObject *)&IssuedType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
