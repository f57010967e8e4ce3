/*
 * The compiled store of issued hashed tokens (dbgate/pii/issued.py says why; _issued.c
 * how), for the PII row loop (_rows.c), which adds to it with no Python object.
 */
#ifndef DBGATE_PII_ISSUED_H
#define DBGATE_PII_ISSUED_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

typedef struct {
    uint32_t tag;
    uint32_t at; /* arena offset / 8 + 1; 0: empty */
} islot;

typedef struct {
    islot *index;
    size_t mask; /* index size - 1 (0: not allocated yet) */
    char *arena;
    size_t used, cap;
    Py_ssize_t count;
} igen;

typedef struct {
    PyObject_HEAD
    igen *gens; /* a ring of `ngens`, `live` of them in use, `newest` the current */
    Py_ssize_t ngens, newest, live, generation_size;
    PyObject *on_forget;
} IssuedObject;

/* dbgate.pii._rows.IssuedTokens; _rows.c readies it and adds it to the module. */
extern PyTypeObject IssuedType;

/* Remember (prefix, digest) -> value in the newest generation, starting a new one
 * first when it is full; calls on_forget() after a generation was dropped. 0, or -1
 * with an exception set. */
int issued_add(IssuedObject *self, const char *prefix, Py_ssize_t plen, const uint8_t *digest,
               const char *value, Py_ssize_t vlen);

/* Start loading the index slot a digest will probe. */
void issued_prefetch(IssuedObject *self, const uint8_t *digest);

#endif
