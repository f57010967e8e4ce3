/*
 * IssuedTokens(generation_size, generations): the store of dbgate/pii/issued.py (which
 * says why, and holds the Python reference). Each generation is an arena of entries
 * (16-byte digest, u8 prefix length, prefix, u32 value length, value; 8-byte aligned)
 * and an open-addressing index at most two thirds full of 8-byte slots: 32 bits of the
 * digest as a tag, and where the entry is (in 8-byte units, + 1; 0: empty). The
 * digest is a keyed PRF's output, so its bits are the hash. Small slots keep the index
 * of a 20,000-token generation in 256 KB (in the CPU's cache: with 24-byte slots its
 * random probes were a seventh of the time of streaming distinct e-mails). Dropping a
 * generation empties its arena and index for reuse: no Python object per token, none
 * freed one by one. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

#include "_issued.h"

#if defined(__GNUC__)
#define PREFETCH(p) __builtin_prefetch((p), 1)
#else
#define PREFETCH(p) ((void)(p))
#endif

/* tokens per generation at most (issued.py's PyIssuedTokens has the same bound) */
#define MAX_GENERATION_SIZE ((Py_ssize_t)1 << 40)

/* an arena holds at most this many bytes (islot.at is 32 bits of 8-byte units) */
#define ARENA_MAX ((size_t)0xFFFFFFF0u * 8)

static inline uint64_t
digest_hash(const uint8_t *d)
{
    uint64_t h;
    memcpy(&h, d, 8);
    return h;
}

static inline uint32_t
digest_tag(const uint8_t *d)
{
    uint32_t t;
    memcpy(&t, d + 8, 4);
    return t;
}

static inline const unsigned char *
entry_at(igen *g, uint32_t at)
{
    return (const unsigned char *)g->arena + (size_t)(at - 1) * 8;
}

/* the slot of (prefix, digest) in g, or the empty slot where it would go */
static islot *
igen_slot(igen *g, const char *prefix, Py_ssize_t plen, const uint8_t *digest)
{
    size_t i = (size_t)digest_hash(digest) & g->mask;
    uint32_t tag = digest_tag(digest);
    for (;;) {
        islot *sl = &g->index[i];
        if (sl->at == 0)
            return sl;
        if (sl->tag == tag) {
            const unsigned char *e = entry_at(g, sl->at);
            if (memcmp(e, digest, 16) == 0 && e[16] == plen &&
                memcmp(e + 17, prefix, (size_t)plen) == 0)
                return sl;
        }
        i = (i + 1) & g->mask;
    }
}

static void
igen_clear(igen *g)
{
    if (g->index != NULL)
        memset(g->index, 0, (g->mask + 1) * sizeof(islot));
    g->used = 0;
    g->count = 0;
}

static void
igen_free(igen *g)
{
    PyMem_Free(g->index);
    PyMem_Free(g->arena);
    memset(g, 0, sizeof *g);
}

/* the value stored at an arena entry */
static inline const char *
entry_value(igen *g, uint32_t at, uint32_t *vlen)
{
    const unsigned char *e = entry_at(g, at);
    const unsigned char *v = e + 17 + e[16];
    *vlen = ((uint32_t)v[0] << 24) | ((uint32_t)v[1] << 16) | ((uint32_t)v[2] << 8) | v[3];
    return (const char *)v + 4;
}

/* Start loading the index slot a digest will probe (its cache line is likely cold):
 * the caller has the token's hex to write meanwhile. */
void
issued_prefetch(IssuedObject *self, const uint8_t *digest)
{
    if (self->ngens == 0)
        return;
    igen *g = &self->gens[self->newest];
    if (g->mask != 0)
        PREFETCH(&g->index[(size_t)digest_hash(digest) & g->mask]);
}

/* Remember (prefix, digest) -> value in the newest generation, starting a new one
 * first when it is full (or its arena is); on_forget() after a generation was
 * dropped. 0, or -1. */
int
issued_add(IssuedObject *self, const char *prefix, Py_ssize_t plen, const uint8_t *digest,
           const char *value, Py_ssize_t vlen)
{
    if (self->ngens == 0)
        return 0;
    if (plen > 255 || vlen > 0x7FFFFFFF) {
        PyErr_SetString(PyExc_ValueError, "token prefix or value too long to remember");
        return -1;
    }
    size_t need = (16 + 1 + (size_t)plen + 4 + (size_t)vlen + 7) & ~(size_t)7;
    int forgot = 0;
    igen *g = &self->gens[self->newest];
    if (g->count >= self->generation_size || g->used + need > ARENA_MAX) {
        self->newest = (self->newest + 1) % self->ngens;
        if (self->live < self->ngens)
            self->live++;
        else
            forgot = 1; /* the oldest generation is reused as the newest */
        g = &self->gens[self->newest];
        igen_clear(g);
    }
    if (g->mask == 0) {
        size_t size = 16;
        while (2 * size < 3 * (size_t)self->generation_size + 2)
            size *= 2;
        g->index = PyMem_Calloc(size, sizeof(islot));
        if (g->index == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        g->mask = size - 1;
    }
    islot *sl = igen_slot(g, prefix, plen, digest);
    if (sl->at != 0) { /* issued again in this generation: keep one entry */
        uint32_t have;
        const char *v = entry_value(g, sl->at, &have);
        if (have == (uint32_t)vlen && memcmp(v, value, (size_t)vlen) == 0)
            goto done;
    }
    if (g->used + need > g->cap) {
        size_t cap = g->cap ? g->cap : 4096;
        while (cap < g->used + need)
            cap *= 2;
        char *a = PyMem_Realloc(g->arena, cap);
        if (a == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        g->arena = a;
        g->cap = cap;
    }
    unsigned char *e = (unsigned char *)g->arena + g->used;
    memcpy(e, digest, 16);
    e[16] = (unsigned char)plen;
    memcpy(e + 17, prefix, (size_t)plen);
    unsigned char *v = e + 17 + plen;
    v[0] = (unsigned char)((uint32_t)vlen >> 24);
    v[1] = (unsigned char)((uint32_t)vlen >> 16);
    v[2] = (unsigned char)((uint32_t)vlen >> 8);
    v[3] = (unsigned char)vlen;
    memcpy(v + 4, value, (size_t)vlen);
    if (sl->at == 0) {
        sl->tag = digest_tag(digest);
        g->count++;
    }
    sl->at = (uint32_t)(g->used / 8 + 1);
    g->used += need;
done:
    if (forgot && self->on_forget != NULL && self->on_forget != Py_None) {
        PyObject *r = PyObject_CallNoArgs(self->on_forget);
        if (r == NULL)
            return -1;
        Py_DECREF(r);
    }
    return 0;
}

/* token bytes -> (prefix, digest); 0 when it is not prefix + 32 lower-case hex digits */
static int
split_token(const char *tok, Py_ssize_t n, Py_ssize_t *plen, uint8_t *digest)
{
    if (n < 32 || n - 32 > 255)
        return 0;
    const char *h = tok + n - 32;
    for (int i = 0; i < 32; i++) {
        char c = h[i];
        int v = (c >= '0' && c <= '9') ? c - '0' : (c >= 'a' && c <= 'f') ? c - 'a' + 10 : -1;
        if (v < 0)
            return 0;
        if (i % 2 == 0)
            digest[i / 2] = (uint8_t)(v << 4);
        else
            digest[i / 2] |= (uint8_t)v;
    }
    *plen = n - 32;
    return 1;
}

static PyObject *
Issued_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"generation_size", "generations", NULL};
    Py_ssize_t size, ngens;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "nn", kwlist, &size, &ngens))
        return NULL;
    /* the index of a generation has 3 * size / 2 slots or more: a size whose count
     * would overflow that (a typo'd pii.token_cache_entries) gave a 16-slot index that a
     * 17th token filled, and the probe for the next one never ended */
    if (size < 1 || size > MAX_GENERATION_SIZE || ngens < 0 || ngens > 1000000) {
        PyErr_SetString(PyExc_ValueError,
                        "generation_size must be 1 to 2**40 and generations 0 to 1000000");
        return NULL;
    }
    IssuedObject *self = (IssuedObject *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    self->generation_size = size;
    self->ngens = ngens;
    self->live = 1;
    if (ngens > 0) {
        self->gens = PyMem_Calloc((size_t)ngens, sizeof(igen));
        if (self->gens == NULL) {
            Py_DECREF(self);
            return PyErr_NoMemory();
        }
    }
    self->on_forget = Py_NewRef(Py_None);
    return (PyObject *)self;
}

static int
Issued_traverse(IssuedObject *self, visitproc visit, void *arg)
{
    Py_VISIT(self->on_forget);
    return 0;
}

static int
Issued_clear(IssuedObject *self)
{
    Py_CLEAR(self->on_forget);
    return 0;
}

static void
Issued_dealloc(IssuedObject *self)
{
    PyObject_GC_UnTrack(self);
    Issued_clear(self);
    for (Py_ssize_t i = 0; i < self->ngens && self->gens != NULL; i++)
        igen_free(&self->gens[i]);
    PyMem_Free(self->gens);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *
Issued_add(IssuedObject *self, PyObject *args)
{
    Py_buffer token, value;
    if (!PyArg_ParseTuple(args, "y*y*", &token, &value))
        return NULL;
    PyObject *res = NULL;
    Py_ssize_t plen;
    uint8_t digest[16];
    if (!split_token(token.buf, token.len, &plen, digest))
        PyErr_SetString(PyExc_ValueError, "a hashed token ends with 32 lower-case hex digits");
    else if (issued_add(self, token.buf, plen, digest, value.buf, value.len) == 0)
        res = Py_NewRef(Py_None);
    PyBuffer_Release(&token);
    PyBuffer_Release(&value);
    return res;
}

static PyObject *
Issued_get(IssuedObject *self, PyObject *arg)
{
    char *tok;
    Py_ssize_t n, plen;
    uint8_t digest[16];
    if (PyBytes_AsStringAndSize(arg, &tok, &n) < 0)
        return NULL;
    if (self->ngens == 0 || !split_token(tok, n, &plen, digest))
        Py_RETURN_NONE;
    for (Py_ssize_t k = 0; k < self->live; k++) {
        igen *g = &self->gens[(self->newest - k + self->ngens) % self->ngens];
        if (g->mask == 0)
            continue;
        islot *sl = igen_slot(g, tok, plen, digest);
        if (sl->at != 0) {
            uint32_t vlen;
            const char *v = entry_value(g, sl->at, &vlen);
            return PyBytes_FromStringAndSize(v, vlen);
        }
    }
    Py_RETURN_NONE;
}

static Py_ssize_t
Issued_len(IssuedObject *self)
{
    Py_ssize_t n = 0;
    for (Py_ssize_t k = 0; k < self->live && self->ngens > 0; k++)
        n += self->gens[(self->newest - k + self->ngens) % self->ngens].count;
    return n;
}

static PyObject *
Issued_get_on_forget(IssuedObject *self, void *closure)
{
    return Py_NewRef(self->on_forget ? self->on_forget : Py_None);
}

static int
Issued_set_on_forget(IssuedObject *self, PyObject *value, void *closure)
{
    if (value == NULL) {
        PyErr_SetString(PyExc_TypeError, "on_forget cannot be deleted (set None)");
        return -1;
    }
    Py_XSETREF(self->on_forget, Py_NewRef(value));
    return 0;
}

static PyObject *
Issued_get_size(IssuedObject *self, void *closure)
{
    return PyLong_FromSsize_t(self->generation_size);
}

static PyObject *
Issued_get_ngens(IssuedObject *self, void *closure)
{
    return PyLong_FromSsize_t(self->ngens);
}

static PyMethodDef Issued_methods[] = {
    {"add", (PyCFunction)Issued_add, METH_VARARGS,
     "Remember token (prefix + 32 lower-case hex digits) for value."},
    {"get", (PyCFunction)Issued_get, METH_O,
     "The value of a token, or None when it was not issued or is forgotten."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Issued_getset[] = {
    {"on_forget", (getter)Issued_get_on_forget, (setter)Issued_set_on_forget,
     "Called (no arguments) after a generation was dropped.", NULL},
    {"generation_size", (getter)Issued_get_size, NULL, "Tokens per generation.", NULL},
    {"generations", (getter)Issued_get_ngens, NULL, "Generations kept.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PySequenceMethods Issued_as_sequence = {.sq_length = (lenfunc)Issued_len};

PyTypeObject IssuedType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "dbgate.pii._rows.IssuedTokens",
    .tp_doc = "Issued hashed tokens -> values, in generations (see dbgate/pii/issued.py).",
    .tp_basicsize = sizeof(IssuedObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_new = Issued_new,
    .tp_dealloc = (destructor)Issued_dealloc,
    .tp_traverse = (traverseproc)Issued_traverse,
    .tp_clear = (inquiry)Issued_clear,
    .tp_methods = Issued_methods,
    .tp_getset = Issued_getset,
    .tp_as_sequence = &Issued_as_sequence,
};

