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
 *              tuple (prefix, keyed state, person, issued cell, issued_value_bytes,
 *              generation_size, rotate, key) of a hashed token, computed here with the
 *              BLAKE2b below (keyed_state() makes the state) and remembered in the
 *              newest generation of issued tokens, cell[0], as Tokenizer.hasher does;
 *              rotate() starts a new generation when that one is full.
 *
 * rewrite_rows returns the new messages, or None when nothing was replaced (every PII
 * value NULL); rewrite returns the new body, or `body` itself. Only values up to
 * cache_value_bytes are looked up and cached; a table that reaches cache_entries is
 * emptied first. A body that does not parse raises ValueError, as the Python version
 * does.
 *
 * A run costs one call: the plan is read once, each value is one dict lookup (and on a
 * miss one BLAKE2b compression per 128 bytes, two stores), and the output is written
 * into one buffer, with no Python object per row.
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
    /* the twelve rounds unrolled: the message word indexes become constants (about a
     * third faster than a loop over b2b_sigma, which the compiler keeps) */
#define B2B_ROUND(r)                                                                               \
    do {                                                                                           \
        B2B_G(0, 4, 8, 12, m[b2b_sigma[r][0]], m[b2b_sigma[r][1]]);                                \
        B2B_G(1, 5, 9, 13, m[b2b_sigma[r][2]], m[b2b_sigma[r][3]]);                                \
        B2B_G(2, 6, 10, 14, m[b2b_sigma[r][4]], m[b2b_sigma[r][5]]);                               \
        B2B_G(3, 7, 11, 15, m[b2b_sigma[r][6]], m[b2b_sigma[r][7]]);                               \
        B2B_G(0, 5, 10, 15, m[b2b_sigma[r][8]], m[b2b_sigma[r][9]]);                               \
        B2B_G(1, 6, 11, 12, m[b2b_sigma[r][10]], m[b2b_sigma[r][11]]);                             \
        B2B_G(2, 7, 8, 13, m[b2b_sigma[r][12]], m[b2b_sigma[r][13]]);                              \
        B2B_G(3, 4, 9, 14, m[b2b_sigma[r][14]], m[b2b_sigma[r][15]]);                              \
    } while (0)
    B2B_ROUND(0);
    B2B_ROUND(1);
    B2B_ROUND(2);
    B2B_ROUND(3);
    B2B_ROUND(4);
    B2B_ROUND(5);
    B2B_ROUND(6);
    B2B_ROUND(7);
    B2B_ROUND(8);
    B2B_ROUND(9);
    B2B_ROUND(10);
    B2B_ROUND(11);
#undef B2B_ROUND
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


/* ------------------------------------------------------------------ the plan of a call */

/* Caching a hashed token pays only when values repeat: a hit saves a BLAKE2b and a
 * store of the issued token, a miss costs a lookup and a store more (about half of
 * what a hit saves). Each hashed column of a rewriter counts its lookups and hits in
 * windows of CACHE_WINDOW; when fewer than a third hit (a million distinct e-mails),
 * the next CACHE_SKIP values are hashed without the cache, then it is tried again.
 * The tokens are the same either way. */
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
    PyObject *cell;         /* borrowed list: [the newest generation of issued tokens] */
    Py_ssize_t issued_value_bytes, generation_size;
    PyObject *rotate;    /* borrowed: starts a new generation */
    struct stats *stats; /* in the spec's bytearray, kept across calls */
} slot_t;

typedef struct {
    slot_t *slots;
    Py_ssize_t n;
    Py_ssize_t cache_value_bytes, cache_entries;
} plan_t;

static void
plan_free(plan_t *plan)
{
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
        /* (prefix, keyed state, person, issued cell, issued_value_bytes, generation_size,
         *  rotate, key, stats) */
        if (PyTuple_GET_SIZE(fn) != 9) {
            PyErr_SetString(PyExc_ValueError, "a hashed spec has 9 items");
            goto fail;
        }
        PyObject *stats = PyTuple_GET_ITEM(fn, 8);
        if (!PyByteArray_Check(stats) || PyByteArray_GET_SIZE(stats) != sizeof(struct stats)) {
            PyErr_SetString(PyExc_ValueError, "a hashed spec ends with a 24-byte bytearray");
            goto fail;
        }
        s->stats = (struct stats *)PyByteArray_AS_STRING(stats);
        PyObject *prefix = PyTuple_GET_ITEM(fn, 0), *state = PyTuple_GET_ITEM(fn, 1);
        s->person = PyTuple_GET_ITEM(fn, 2);
        s->cell = PyTuple_GET_ITEM(fn, 3);
        s->rotate = PyTuple_GET_ITEM(fn, 6);
        s->key = PyTuple_GET_ITEM(fn, 7);
        if (!PyBytes_Check(prefix) || !PyBytes_Check(state) || PyBytes_GET_SIZE(state) != 64 ||
            !PyBytes_Check(s->person) || PyBytes_GET_SIZE(s->person) != 16 ||
            !PyBytes_Check(s->key) || PyBytes_GET_SIZE(s->key) < 1 ||
            PyBytes_GET_SIZE(s->key) > 64 || !PyList_Check(s->cell) ||
            PyList_GET_SIZE(s->cell) != 1) {
            PyErr_SetString(PyExc_ValueError,
                            "a hashed spec needs a prefix, the 64-byte keyed state, a 16-byte "
                            "person, the one-item issued cell and the key");
            goto fail;
        }
        s->prefix = PyBytes_AS_STRING(prefix);
        s->plen = PyBytes_GET_SIZE(prefix);
        memcpy(s->state, PyBytes_AS_STRING(state), sizeof s->state);
        s->issued_value_bytes = PyLong_AsSsize_t(PyTuple_GET_ITEM(fn, 4));
        s->generation_size = PyLong_AsSsize_t(PyTuple_GET_ITEM(fn, 5));
        if (PyErr_Occurred())
            goto fail;
    }
    return 0;
fail:
    plan_free(plan);
    return -1;
}

/* ------------------------------------------------------------------ replacements */

/* A new hashed token (prefix + 32 hex digits) of raw, remembered as issued (so that it
 * resolves) when the value is not too long. */
static PyObject *
hashed_value(slot_t *s, const char *raw, Py_ssize_t len, PyObject **key)
{
    static const char hex[] = "0123456789abcdef";
    uint8_t d[16];
    if (len > 0) {
        b2b_from_state(d, 16, s->state, (const uint8_t *)raw, (size_t)len);
    } else { /* the key block is the last block: no shortcut */
        b2b_keyed(d, 16, (const uint8_t *)PyBytes_AS_STRING(s->key),
                  (size_t)PyBytes_GET_SIZE(s->key), (const uint8_t *)PyBytes_AS_STRING(s->person),
                  NULL, 0);
    }
    PyObject *token = PyBytes_FromStringAndSize(NULL, s->plen + 32);
    if (token == NULL)
        return NULL;
    char *o = PyBytes_AS_STRING(token);
    memcpy(o, s->prefix, (size_t)s->plen);
    for (int i = 0; i < 16; i++) {
        o[s->plen + 2 * i] = hex[d[i] >> 4];
        o[s->plen + 2 * i + 1] = hex[d[i] & 15];
    }
    if (len <= s->issued_value_bytes) {
        if (*key == NULL && (*key = PyBytes_FromStringAndSize(raw, len)) == NULL)
            goto fail;
        PyObject *issued = PyList_GET_ITEM(s->cell, 0);
        if (PyDict_GET_SIZE(issued) >= s->generation_size) {
            PyObject *r = PyObject_CallNoArgs(s->rotate);
            if (r == NULL)
                goto fail;
            Py_DECREF(r);
            if (!PyList_Check(s->cell) || PyList_GET_SIZE(s->cell) != 1) {
                PyErr_SetString(PyExc_RuntimeError, "the issued-token cell lost its generation");
                goto fail;
            }
            issued = PyList_GET_ITEM(s->cell, 0);
        }
        if (!PyDict_Check(issued)) {
            PyErr_SetString(PyExc_TypeError, "a generation of issued tokens must be a dict");
            goto fail;
        }
        if (PyDict_SetItem(issued, token, *key) < 0)
            goto fail;
    }
    return token;
fail:
    Py_DECREF(token);
    return NULL;
}

/* The replacement value for raw in slot s (a new reference to bytes), from the cache
 * or made and cached. */
static PyObject *
replacement(plan_t *plan, slot_t *s, const char *raw, Py_ssize_t len)
{
    PyObject *key = NULL, *value;
    int cacheable = len <= plan->cache_value_bytes; /* a longer value is never cached */
    struct stats *st = s->fn == NULL ? s->stats : NULL;
    if (cacheable && st != NULL && st->skip > 0) {
        st->skip--;
        cacheable = 0;
    }
    if (cacheable) {
        key = PyBytes_FromStringAndSize(raw, len);
        if (key == NULL)
            return NULL;
        PyObject *hit = PyDict_GetItemWithError(s->table, key);
        if (st != NULL && ++st->seen == CACHE_WINDOW) {
            if (3 * (st->hits + (hit != NULL)) < CACHE_WINDOW)
                st->skip = CACHE_SKIP;
            st->seen = st->hits = 0;
        } else if (st != NULL && hit != NULL) {
            st->hits++;
        }
        if (hit != NULL) {
            Py_INCREF(hit);
            Py_DECREF(key);
            return hit;
        }
        if (PyErr_Occurred())
            goto fail;
    }
    if (s->fn == NULL) {
        value = hashed_value(s, raw, len, &key);
    } else {
        if (key == NULL && (key = PyBytes_FromStringAndSize(raw, len)) == NULL)
            return NULL;
        value = PyObject_CallOneArg(s->fn, key);
    }
    if (value == NULL)
        goto fail;
    if (!PyBytes_Check(value)) {
        Py_DECREF(value);
        PyErr_SetString(PyExc_TypeError, "a PII replacement must be bytes");
        goto fail;
    }
    if (cacheable) {
        if (PyDict_GET_SIZE(s->table) >= plan->cache_entries)
            PyDict_Clear(s->table);
        if (PyDict_SetItem(s->table, key, value) < 0) {
            Py_DECREF(value);
            goto fail;
        }
    }
    Py_XDECREF(key);
    return value;
fail:
    Py_XDECREF(key);
    return NULL;
}

/* ------------------------------------------------------------------ output */

typedef struct {
    char *p;
    Py_ssize_t len, cap;
} wbuf;

static int
wb_reserve(wbuf *w, Py_ssize_t extra)
{
    if (w->len + extra <= w->cap)
        return 0;
    Py_ssize_t cap = w->cap ? w->cap : 256;
    while (cap < w->len + extra) {
        if (cap > PY_SSIZE_T_MAX / 2) {
            PyErr_NoMemory();
            return -1;
        }
        cap *= 2;
    }
    char *p = PyMem_Realloc(w->p, (size_t)cap);
    if (p == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    w->p = p;
    w->cap = cap;
    return 0;
}

static inline int
wb_put(wbuf *w, const void *src, Py_ssize_t n)
{
    if (wb_reserve(w, n) < 0)
        return -1;
    memcpy(w->p + w->len, src, (size_t)n);
    w->len += n;
    return 0;
}

/* a replacement value with its int32 length word */
static int
wb_value(wbuf *w, PyObject *value)
{
    Py_ssize_t n = PyBytes_GET_SIZE(value);
    if (n > 0x7FFFFFFF) {
        PyErr_SetString(PyExc_ValueError, "a PII replacement is over 2 GB");
        return -1;
    }
    if (wb_reserve(w, n + 4) < 0)
        return -1;
    unsigned char *o = (unsigned char *)w->p + w->len;
    o[0] = (unsigned char)((uint32_t)n >> 24);
    o[1] = (unsigned char)((uint32_t)n >> 16);
    o[2] = (unsigned char)((uint32_t)n >> 8);
    o[3] = (unsigned char)n;
    memcpy(o + 4, PyBytes_AS_STRING(value), (size_t)n);
    w->len += n + 4;
    return 0;
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
        if (col == target) {
            if (len >= 0) {
                Py_ssize_t end = pos + 4 + len;
                if (end > size)
                    goto bad;
                PyObject *r =
                    replacement(plan, &plan->slots[slot], (const char *)p + pos + 4, len);
                if (r == NULL)
                    return -1;
                int rc = wb_put(w, p + copied, pos - copied);
                if (rc == 0)
                    rc = wb_value(w, r);
                Py_DECREF(r);
                if (rc < 0)
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
            pos += 4 + (len > 0 ? len : 0);
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
                     PyBytes_GET_SIZE(body), &w, &replaced) == 0) {
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
    if (plan.n == 0) {
        res = Py_NewRef(Py_None);
        goto done;
    }
    const unsigned char *p = (const unsigned char *)buf.buf;
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
            unsigned char *o = (unsigned char *)w.p + hdr + 1;
            o[0] = (unsigned char)((uint32_t)n >> 24);
            o[1] = (unsigned char)((uint32_t)n >> 16);
            o[2] = (unsigned char)((uint32_t)n >> 8);
            o[3] = (unsigned char)n;
        }
        pos = next;
    }
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
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_rows", NULL, -1, methods};

PyMODINIT_FUNC
PyInit__rows(void)
{
    return PyModule_Create(&module);
}
