/*
 * Hot loop of PII row rewriting (see dbgate/pii/rows.py, which holds the Python
 * reference implementation and says why).
 *
 * rewrite(body, positions, tables, fns, cache_value_bytes, cache_entries)
 *
 *   body       a DataRow body: int16 column count, then per column an int32 length
 *              (-1: NULL) and the value;
 *   positions  tuple of increasing column indexes to replace;
 *   tables     tuple of dicts, one per position: raw value -> replacement *with* its
 *              4-byte length prefix (the cache, shared with Python);
 *   fns        one per position: a callable raw value -> replacement value, or the
 *              tuple (prefix, keyed state, person, issued, issued_value_bytes,
 *              issued_entries, evict, key) of a hashed token, computed here with the
 *              BLAKE2b below (keyed_state() makes the state).
 *
 * Returns the new body, or `body` itself when nothing was replaced (all PII columns
 * NULL). Values up to cache_value_bytes are cached; a table that reaches
 * cache_entries is emptied first. A body that does not parse raises ValueError, as
 * the Python version does.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

static inline int32_t
rd32(const unsigned char *p)
{
    return (int32_t)(((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) |
                     (uint32_t)p[3]);
}

/* ------------------------------------------------------------------ BLAKE2b (RFC 7693)
 * Keyed, with a 16-byte personalization, as hashlib.blake2b(value, key=..., person=...,
 * digest_size=16) computes it: the hashed tokens of rows.py, without a Python call per
 * value. A property test checks it against hashlib byte for byte. */
static const uint64_t b2b_iv[8] = {
    0x6A09E667F3BCC908ULL, 0xBB67AE8584CAA73BULL, 0x3C6EF372FE94F82BULL, 0xA54FF53A5F1D36F1ULL,
    0x510E527FADE682D1ULL, 0x9B05688C2B3E6C1FULL, 0x1F83D9ABFB41BD6BULL, 0x5BE0CD19137E2179ULL};
static const uint8_t b2b_sigma[12][16] = {
    {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15},
    {14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3},
    {11, 8, 12, 0, 5, 2, 15, 13, 10, 14, 3, 6, 7, 1, 9, 4},
    {7, 9, 3, 1, 13, 12, 11, 14, 2, 6, 5, 10, 4, 0, 15, 8},
    {9, 0, 5, 7, 2, 4, 10, 15, 14, 1, 11, 12, 6, 8, 3, 13},
    {2, 12, 6, 10, 0, 11, 8, 3, 4, 13, 7, 5, 15, 14, 1, 9},
    {12, 5, 1, 15, 14, 13, 4, 10, 0, 7, 6, 3, 9, 2, 8, 11},
    {13, 11, 7, 14, 12, 1, 3, 9, 5, 0, 15, 4, 8, 6, 2, 10},
    {6, 15, 14, 9, 11, 3, 0, 8, 12, 2, 13, 7, 1, 4, 10, 5},
    {10, 2, 8, 4, 7, 6, 1, 5, 15, 11, 9, 14, 3, 12, 13, 0},
    {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15},
    {14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3}};

typedef struct {
    uint64_t h[8], t[2];
    uint8_t b[128];
    size_t c;
} b2b_ctx;

static inline uint64_t
ld64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

#define ROTR64(x, y) (((x) >> (y)) ^ ((x) << (64 - (y))))
#define B2B_G(a, b, c, d, x, y)                                                                    \
    do {                                                                                           \
        v[a] = v[a] + v[b] + x;                                                                    \
        v[d] = ROTR64(v[d] ^ v[a], 32);                                                            \
        v[c] = v[c] + v[d];                                                                        \
        v[b] = ROTR64(v[b] ^ v[c], 24);                                                            \
        v[a] = v[a] + v[b] + y;                                                                    \
        v[d] = ROTR64(v[d] ^ v[a], 16);                                                            \
        v[c] = v[c] + v[d];                                                                        \
        v[b] = ROTR64(v[b] ^ v[c], 63);                                                            \
    } while (0)

static void
b2b_compress(b2b_ctx *ctx, int last)
{
    uint64_t v[16], m[16];
    for (int i = 0; i < 8; i++) {
        v[i] = ctx->h[i];
        v[i + 8] = b2b_iv[i];
    }
    v[12] ^= ctx->t[0];
    v[13] ^= ctx->t[1];
    if (last)
        v[14] = ~v[14];
    for (int i = 0; i < 16; i++)
        m[i] = ld64(&ctx->b[8 * i]);
    for (int i = 0; i < 12; i++) {
        const uint8_t *s = b2b_sigma[i];
        B2B_G(0, 4, 8, 12, m[s[0]], m[s[1]]);
        B2B_G(1, 5, 9, 13, m[s[2]], m[s[3]]);
        B2B_G(2, 6, 10, 14, m[s[4]], m[s[5]]);
        B2B_G(3, 7, 11, 15, m[s[6]], m[s[7]]);
        B2B_G(0, 5, 10, 15, m[s[8]], m[s[9]]);
        B2B_G(1, 6, 11, 12, m[s[10]], m[s[11]]);
        B2B_G(2, 7, 8, 13, m[s[12]], m[s[13]]);
        B2B_G(3, 4, 9, 14, m[s[14]], m[s[15]]);
    }
    for (int i = 0; i < 8; i++)
        ctx->h[i] ^= v[i] ^ v[i + 8];
}

static void
b2b_update(b2b_ctx *ctx, const uint8_t *in, size_t inlen)
{
    while (inlen > 0) {
        if (ctx->c == 128) {
            ctx->t[0] += ctx->c;
            if (ctx->t[0] < ctx->c)
                ctx->t[1]++;
            b2b_compress(ctx, 0);
            ctx->c = 0;
        }
        size_t take = 128 - ctx->c;
        if (take > inlen)
            take = inlen;
        memcpy(ctx->b + ctx->c, in, take);
        ctx->c += take;
        in += take;
        inlen -= take;
    }
}

/* The state after the key block: the same for every value under one key and person,
 * so it is computed once per column (keyed_state) and each value costs one
 * compression per 128 bytes. 64 bytes: h[0..7], little-endian. */
static void
b2b_key_state(uint64_t *h, size_t outlen, const uint8_t *key, size_t keylen, const uint8_t *person)
{
    b2b_ctx ctx;
    for (int i = 0; i < 8; i++)
        ctx.h[i] = b2b_iv[i];
    ctx.h[0] ^= 0x01010000ULL ^ ((uint64_t)keylen << 8) ^ (uint64_t)outlen;
    ctx.h[6] ^= ld64(person);
    ctx.h[7] ^= ld64(person + 8);
    ctx.t[0] = 128;
    ctx.t[1] = 0;
    memset(ctx.b, 0, sizeof ctx.b);
    memcpy(ctx.b, key, keylen);
    b2b_compress(&ctx, 0);
    for (int i = 0; i < 8; i++)
        h[i] = ctx.h[i];
}

/* digest of `in` continuing from a key state (the key block already counted) */
static void
b2b_from_state(uint8_t *out, size_t outlen, const uint64_t *state, const uint8_t *in, size_t inlen)
{
    b2b_ctx ctx;
    for (int i = 0; i < 8; i++)
        ctx.h[i] = state[i];
    ctx.t[0] = 128;
    ctx.t[1] = 0;
    ctx.c = 0;
    b2b_update(&ctx, in, inlen);
    ctx.t[0] += ctx.c;
    if (ctx.t[0] < ctx.c)
        ctx.t[1]++;
    memset(ctx.b + ctx.c, 0, 128 - ctx.c);
    b2b_compress(&ctx, 1);
    for (size_t i = 0; i < outlen; i++)
        out[i] = (uint8_t)((ctx.h[i >> 3] >> (8 * (i & 7))) & 0xFF);
}

/* the whole computation (RFC 7693): with an empty value the key block is the last */
static void
b2b_keyed(uint8_t *out, size_t outlen, const uint8_t *key, size_t keylen, const uint8_t *person,
          const uint8_t *in, size_t inlen)
{
    b2b_ctx ctx;
    for (int i = 0; i < 8; i++)
        ctx.h[i] = b2b_iv[i];
    ctx.h[0] ^= 0x01010000ULL ^ ((uint64_t)keylen << 8) ^ (uint64_t)outlen;
    ctx.h[6] ^= ld64(person);
    ctx.h[7] ^= ld64(person + 8);
    ctx.t[0] = ctx.t[1] = 0;
    memset(ctx.b, 0, sizeof ctx.b);
    memcpy(ctx.b, key, keylen);
    ctx.c = 128;
    b2b_update(&ctx, in, inlen);
    ctx.t[0] += ctx.c;
    if (ctx.t[0] < ctx.c)
        ctx.t[1]++;
    memset(ctx.b + ctx.c, 0, 128 - ctx.c);
    b2b_compress(&ctx, 1);
    for (size_t i = 0; i < outlen; i++)
        out[i] = (uint8_t)((ctx.h[i >> 3] >> (8 * (i & 7))) & 0xFF);
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
            static const char hex[] = "0123456789abcdef";
            char *o = PyBytes_AS_STRING(res);
            b2b_keyed(d, 16, key.buf, (size_t)key.len, person.buf, value.buf, (size_t)value.len);
            memcpy(o, prefix.buf, (size_t)prefix.len);
            for (int i = 0; i < 16; i++) {
                o[prefix.len + 2 * i] = hex[d[i] >> 4];
                o[prefix.len + 2 * i + 1] = hex[d[i] & 15];
            }
        }
    }
    PyBuffer_Release(&prefix);
    PyBuffer_Release(&key);
    PyBuffer_Release(&person);
    PyBuffer_Release(&value);
    return res;
}


static PyObject *
replacement(PyObject *table, PyObject *fn, const char *raw, Py_ssize_t len,
            Py_ssize_t cache_value_bytes, Py_ssize_t cache_entries)
{
    PyObject *key = PyBytes_FromStringAndSize(raw, len);
    if (key == NULL)
        return NULL;
    PyObject *hit = PyDict_GetItemWithError(table, key);
    if (hit != NULL) {
        Py_INCREF(hit);
        Py_DECREF(key);
        return hit;
    }
    if (PyErr_Occurred()) {
        Py_DECREF(key);
        return NULL;
    }
    PyObject *value;
    if (PyTuple_Check(fn)) {
        /* (prefix, keyed state, person, issued, issued_value_bytes, issued_entries, evict, key):
         * a hashed token computed here, remembered in `issued` so that it resolves */
        PyObject *prefix = PyTuple_GET_ITEM(fn, 0), *k = PyTuple_GET_ITEM(fn, 1),
                 *issued = PyTuple_GET_ITEM(fn, 3);
        if (PyTuple_GET_SIZE(fn) != 8 || !PyBytes_Check(k) || PyBytes_GET_SIZE(k) != 64) {
            Py_DECREF(key);
            PyErr_SetString(PyExc_ValueError, "a hashed spec needs the 64-byte keyed state");
            return NULL;
        }
        Py_ssize_t plen = PyBytes_GET_SIZE(prefix);
        value = PyBytes_FromStringAndSize(NULL, plen + 32);
        if (value == NULL) {
            Py_DECREF(key);
            return NULL;
        }
        uint8_t d[16];
        static const char hex[] = "0123456789abcdef";
        char *o = PyBytes_AS_STRING(value);
        if (len > 0) {
            uint64_t state[8];
            memcpy(state, PyBytes_AS_STRING(k), sizeof state);
            b2b_from_state(d, 16, state, (const uint8_t *)raw, (size_t)len);
        } else { /* the key block is the last block: no shortcut */
            PyObject *fullkey = PyTuple_GET_ITEM(fn, 7);
            b2b_keyed(d, 16, (const uint8_t *)PyBytes_AS_STRING(fullkey),
                      (size_t)PyBytes_GET_SIZE(fullkey),
                      (const uint8_t *)PyBytes_AS_STRING(PyTuple_GET_ITEM(fn, 2)), NULL, 0);
        }
        memcpy(o, PyBytes_AS_STRING(prefix), (size_t)plen);
        for (int i = 0; i < 16; i++) {
            o[plen + 2 * i] = hex[d[i] >> 4];
            o[plen + 2 * i + 1] = hex[d[i] & 15];
        }
        if (len <= PyLong_AsSsize_t(PyTuple_GET_ITEM(fn, 4))) {
            if (PyDict_SetItem(issued, value, key) < 0) {
                Py_DECREF(key);
                Py_DECREF(value);
                return NULL;
            }
            if (PyDict_GET_SIZE(issued) > PyLong_AsSsize_t(PyTuple_GET_ITEM(fn, 5))) {
                PyObject *r = PyObject_CallNoArgs(PyTuple_GET_ITEM(fn, 6));
                if (r == NULL) {
                    Py_DECREF(key);
                    Py_DECREF(value);
                    return NULL;
                }
                Py_DECREF(r);
            }
        }
    } else {
        value = PyObject_CallOneArg(fn, key);
    }
    if (value == NULL) {
        Py_DECREF(key);
        return NULL;
    }
    if (!PyBytes_Check(value)) {
        Py_DECREF(key);
        Py_DECREF(value);
        PyErr_SetString(PyExc_TypeError, "a PII replacement must be bytes");
        return NULL;
    }
    Py_ssize_t vlen = PyBytes_GET_SIZE(value);
    PyObject *out = PyBytes_FromStringAndSize(NULL, vlen + 4);
    if (out == NULL) {
        Py_DECREF(key);
        Py_DECREF(value);
        return NULL;
    }
    unsigned char *o = (unsigned char *)PyBytes_AS_STRING(out);
    o[0] = (unsigned char)((uint32_t)vlen >> 24);
    o[1] = (unsigned char)((uint32_t)vlen >> 16);
    o[2] = (unsigned char)((uint32_t)vlen >> 8);
    o[3] = (unsigned char)vlen;
    memcpy(o + 4, PyBytes_AS_STRING(value), (size_t)vlen);
    Py_DECREF(value);
    if (len <= cache_value_bytes) {
        if (PyDict_GET_SIZE(table) >= cache_entries)
            PyDict_Clear(table);
        if (PyDict_SetItem(table, key, out) < 0) {
            Py_DECREF(key);
            Py_DECREF(out);
            return NULL;
        }
    }
    Py_DECREF(key);
    return out;
}


#define MAX_SLOTS 1600

static PyObject *
rewrite(PyObject *self, PyObject *args)
{
    PyObject *body, *positions, *tables, *fns;
    Py_ssize_t cache_value_bytes, cache_entries;
    if (!PyArg_ParseTuple(args, "SO!O!O!nn", &body, &PyTuple_Type, &positions, &PyTuple_Type,
                          &tables, &PyTuple_Type, &fns, &cache_value_bytes, &cache_entries))
        return NULL;
    Py_ssize_t nslots = PyTuple_GET_SIZE(positions);
    if (nslots == 0) {
        Py_INCREF(body);
        return body;
    }
    if (nslots > MAX_SLOTS || PyTuple_GET_SIZE(tables) != nslots || PyTuple_GET_SIZE(fns) != nslots) {
        PyErr_SetString(PyExc_ValueError, "positions, tables and fns must match (at most 1600)");
        return NULL;
    }
    const unsigned char *p = (const unsigned char *)PyBytes_AS_STRING(body);
    Py_ssize_t size = PyBytes_GET_SIZE(body);
    if (size < 2) {
        Py_INCREF(body);
        return body;
    }
    long ncols = ((long)p[0] << 8) | p[1];
    /* spans of the replaced values in the body, and their replacements */
    Py_ssize_t starts[MAX_SLOTS], ends[MAX_SLOTS];
    PyObject *repl[MAX_SLOTS];
    int nrepl = 0;
    Py_ssize_t pos = 2, total = size;
    long col = 0;
    Py_ssize_t slot = 0;
    long target = PyLong_AsLong(PyTuple_GET_ITEM(positions, 0));
    if (target == -1 && PyErr_Occurred())
        return NULL;
    while (slot < nslots && col < ncols) {
        if (pos + 4 > size)
            goto bad;
        int32_t len = rd32(p + pos);
        if (col == target) {
            if (len >= 0) {
                Py_ssize_t end = pos + 4 + len;
                if (end > size)
                    goto bad;
                PyObject *r = replacement(PyTuple_GET_ITEM(tables, slot), PyTuple_GET_ITEM(fns, slot),
                                          (const char *)p + pos + 4, len, cache_value_bytes,
                                          cache_entries);
                if (r == NULL)
                    goto fail;
                starts[nrepl] = pos;
                ends[nrepl] = end;
                repl[nrepl++] = r;
                total += PyBytes_GET_SIZE(r) - (end - pos);
                pos = end;
            } else {
                pos += 4;
            }
            slot++;
            if (slot < nslots) {
                target = PyLong_AsLong(PyTuple_GET_ITEM(positions, slot));
                if (target == -1 && PyErr_Occurred())
                    goto fail;
            }
        } else {
            pos += 4 + (len > 0 ? len : 0);
            if (pos > size)
                goto bad;
        }
        col++;
    }
    if (nrepl == 0) {
        Py_INCREF(body);
        return body;
    }
    PyObject *out = PyBytes_FromStringAndSize(NULL, total);
    if (out == NULL)
        goto fail;
    char *o = PyBytes_AS_STRING(out);
    Py_ssize_t copied = 0;
    for (int i = 0; i < nrepl; i++) {
        memcpy(o, p + copied, (size_t)(starts[i] - copied));
        o += starts[i] - copied;
        Py_ssize_t rl = PyBytes_GET_SIZE(repl[i]);
        memcpy(o, PyBytes_AS_STRING(repl[i]), (size_t)rl);
        o += rl;
        copied = ends[i];
        Py_DECREF(repl[i]);
    }
    memcpy(o, p + copied, (size_t)(size - copied));
    return out;
bad:
    PyErr_SetString(PyExc_ValueError, "DataRow value runs past the body");
fail:
    for (int i = 0; i < nrepl; i++)
        Py_DECREF(repl[i]);
    return NULL;
}

static PyMethodDef methods[] = {
    {"rewrite", rewrite, METH_VARARGS, "Rewrite the PII columns of one DataRow body."},
    {"hashed_token", hashed_token, METH_VARARGS, "prefix + hex(keyed BLAKE2b-128 of value)."},
    {"keyed_state", keyed_state, METH_VARARGS, "BLAKE2b-128 state after a key block."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_rows", NULL, -1, methods};

PyMODINIT_FUNC
PyInit__rows(void)
{
    return PyModule_Create(&module);
}
