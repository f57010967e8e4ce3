/*
 * A growable byte buffer for dbgate's C helpers (dbgate/pii/_rows.c,
 * dbgate/audit/_seal.c): PyMem memory that doubles as it fills. Callers hold the GIL.
 */
#ifndef DBGATE_WBUF_H
#define DBGATE_WBUF_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

typedef struct {
    char *p;
    Py_ssize_t len, cap;
} wbuf;

/* Room for `extra` more bytes; -1 with MemoryError set when there is none. */
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
    if (n <= 0) /* nothing to copy; w->p may still be NULL, which memcpy must not get */
        return 0;
    if (wb_reserve(w, n) < 0)
        return -1;
    memcpy(w->p + w->len, src, (size_t)n);
    w->len += n;
    return 0;
}

#endif
