/*
 * Hot-path message scanner for dbgate's relay (see dbgate/wire/framing.py).
 *
 * scan(buf, start, max_size, mask) walks the typed PostgreSQL messages in
 * buf[start:], stops at the first incomplete one, and returns
 * (end, frames): `end` is the offset just past the last complete message and
 * `frames` lists (type, body_start, body_end) only for message types whose byte
 * in the 256-byte `mask` is non-zero. A relay that streams a million DataRows
 * and only needs to see ReadyForQuery therefore builds no Python object per row.
 *
 * A type whose mask byte is 2 is *folded*: a run of consecutive messages of that
 * type is one frame (0x100 | type, body_start of the first, body_end of the last).
 * While a result is rewritten or counted the relay folds DataRows, so a read of a
 * thousand rows costs one frame and one rewriter call, not a thousand.
 *
 * A length below 4 or above max_size raises ValueError("badlen", offset, type,
 * length); the Python wrapper turns it into the length error (ProtocolError, or
 * LimitExceeded for a message over max_size).
 *
 * count(buf, start, end[, split_last]) is the number of messages in buf[start:end]
 * (complete messages only, as a folded frame holds; with split_last the last one
 * may run past end, as in a run the reader split), and skip(buf, start, n) the
 * offset just past the first n messages from start: what a row limit needs of a
 * folded run.
 *
 * Collector(size) gathers the reads that carry one long message into a single
 * bytes object of the message's size, allocated once when the message starts:
 * add(data) copies a read in (growing the object only for what runs past the
 * message, the rest of the last read) and take() hands the bytes over. Joining a
 * list of reads instead holds the message twice while it is joined, and leaves the
 * reads' freed memory scattered through the C heap. The bytes object is built
 * with the documented PyBytes_FromStringAndSize(NULL, n) / _PyBytes_Resize pair
 * and is never seen by Python code before take().
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

static int
append_frame(PyObject *frames, int type, Py_ssize_t start, Py_ssize_t end)
{
    PyObject *t = Py_BuildValue("(inn)", type, start, end);
    if (t == NULL)
        return -1;
    int r = PyList_Append(frames, t);
    Py_DECREF(t);
    return r;
}

static PyObject *
scan(PyObject *self, PyObject *args)
{
    Py_buffer buf, mask;
    Py_ssize_t start;
    unsigned long long max_size;
    if (!PyArg_ParseTuple(args, "y*nKy*", &buf, &start, &max_size, &mask))
        return NULL;
    PyObject *frames = NULL;
    if (mask.len != 256) {
        PyErr_SetString(PyExc_ValueError, "mask must be 256 bytes");
        goto fail;
    }
    frames = PyList_New(0);
    if (frames == NULL)
        goto fail;
    const unsigned char *p = (const unsigned char *)buf.buf;
    const unsigned char *m = (const unsigned char *)mask.buf;
    Py_ssize_t n = buf.len, pos = start < 0 ? 0 : start;
    int run_type = -1; /* the folded type whose run is open, its first body start */
    Py_ssize_t run_start = 0, run_end = 0;
    while (n - pos >= 5) {
        unsigned long long len = ((unsigned long long)p[pos + 1] << 24) |
                                 ((unsigned long long)p[pos + 2] << 16) |
                                 ((unsigned long long)p[pos + 3] << 8) |
                                 (unsigned long long)p[pos + 4];
        if (len < 4 || len > max_size) {
            PyErr_Format(PyExc_ValueError, "badlen %zd %d %llu", pos, (int)p[pos], len);
            goto fail;
        }
        Py_ssize_t end = pos + 1 + (Py_ssize_t)len;
        if (end > n)
            break;
        int type = p[pos];
        if (run_type >= 0 && type != run_type) {
            if (append_frame(frames, 0x100 | run_type, run_start, run_end) < 0)
                goto fail;
            run_type = -1;
        }
        if (m[type] == 2) {
            if (run_type < 0) {
                run_type = type;
                run_start = pos + 5;
            }
            run_end = end;
        } else if (m[type] && append_frame(frames, type, pos + 5, end) < 0) {
            goto fail;
        }
        pos = end;
    }
    if (run_type >= 0 && append_frame(frames, 0x100 | run_type, run_start, run_end) < 0)
        goto fail;
    PyBuffer_Release(&buf);
    PyBuffer_Release(&mask);
    PyObject *res = Py_BuildValue("(nN)", pos, frames);
    return res;
fail:
    Py_XDECREF(frames);
    PyBuffer_Release(&buf);
    PyBuffer_Release(&mask);
    return NULL;
}

/* the offset just past at most n messages from start (fewer when buf ends first) and
 * how many were passed; the lengths are those scan() already checked */
static Py_ssize_t
skip_messages(const unsigned char *p, Py_ssize_t size, Py_ssize_t pos, Py_ssize_t n,
              Py_ssize_t *passed)
{
    Py_ssize_t k = 0;
    while (k < n && size - pos >= 5) {
        uint32_t len = ((uint32_t)p[pos + 1] << 24) | ((uint32_t)p[pos + 2] << 16) |
                       ((uint32_t)p[pos + 3] << 8) | (uint32_t)p[pos + 4];
        if (len < 4 || (Py_ssize_t)len > size - pos - 1)
            break;
        pos += 1 + (Py_ssize_t)len;
        k++;
    }
    *passed = k;
    return pos;
}

static PyObject *
count(PyObject *self, PyObject *args)
{
    Py_buffer buf;
    Py_ssize_t start, end;
    int split_last = 0;
    if (!PyArg_ParseTuple(args, "y*nn|p", &buf, &start, &end, &split_last))
        return NULL;
    PyObject *res = NULL;
    if (start < 0 || end > buf.len || start > end) {
        PyErr_SetString(PyExc_ValueError, "start and end must lie within the buffer");
    } else {
        const unsigned char *p = (const unsigned char *)buf.buf;
        Py_ssize_t k;
        Py_ssize_t stop = skip_messages(p, end, start, PY_SSIZE_T_MAX, &k);
        if (split_last && stop != end && end - stop >= 5) {
            /* the last message starts here and runs past end (its header is here) */
            uint32_t len = ((uint32_t)p[stop + 1] << 24) | ((uint32_t)p[stop + 2] << 16) |
                           ((uint32_t)p[stop + 3] << 8) | (uint32_t)p[stop + 4];
            if (len >= 4 && (Py_ssize_t)len > end - stop - 1) {
                stop = end;
                k++;
            }
        }
        if (stop != end)
            PyErr_SetString(PyExc_ValueError, "incomplete message in a run of messages");
        else
            res = PyLong_FromSsize_t(k);
    }
    PyBuffer_Release(&buf);
    return res;
}

static PyObject *
skip(PyObject *self, PyObject *args)
{
    Py_buffer buf;
    Py_ssize_t start, n;
    if (!PyArg_ParseTuple(args, "y*nn", &buf, &start, &n))
        return NULL;
    PyObject *res = NULL;
    if (start < 0 || start > buf.len || n < 0) {
        PyErr_SetString(PyExc_ValueError, "start must lie within the buffer, n >= 0");
    } else {
        Py_ssize_t k;
        Py_ssize_t stop = skip_messages((const unsigned char *)buf.buf, buf.len, start, n, &k);
        if (k != n)
            PyErr_SetString(PyExc_ValueError, "fewer complete messages than asked to skip");
        else
            res = PyLong_FromSsize_t(stop);
    }
    PyBuffer_Release(&buf);
    return res;
}

typedef struct {
    PyObject_HEAD
    PyObject *bytes; /* owned alone until take(); NULL once taken */
    Py_ssize_t have;
} Collector;

static int
Collector_init(Collector *self, PyObject *args, PyObject *kwds)
{
    Py_ssize_t size;
    static char *kwlist[] = {"size", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "n", kwlist, &size))
        return -1;
    if (size < 0) {
        PyErr_SetString(PyExc_ValueError, "size must be >= 0");
        return -1;
    }
    Py_CLEAR(self->bytes);
    self->bytes = PyBytes_FromStringAndSize(NULL, size);
    self->have = 0;
    return self->bytes == NULL ? -1 : 0;
}

static void
Collector_dealloc(Collector *self)
{
    Py_CLEAR(self->bytes);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *
Collector_add(Collector *self, PyObject *arg)
{
    Py_buffer data;
    if (self->bytes == NULL) {
        PyErr_SetString(PyExc_ValueError, "the collector was taken");
        return NULL;
    }
    if (PyObject_GetBuffer(arg, &data, PyBUF_SIMPLE) < 0)
        return NULL;
    Py_ssize_t need = self->have + data.len;
    if (need > PyBytes_GET_SIZE(self->bytes) && _PyBytes_Resize(&self->bytes, need) < 0) {
        PyBuffer_Release(&data);
        return NULL; /* self->bytes is NULL now: the collector is spent */
    }
    memcpy(PyBytes_AS_STRING(self->bytes) + self->have, data.buf, data.len);
    self->have = need;
    PyBuffer_Release(&data);
    return PyLong_FromSsize_t(need);
}

static PyObject *
Collector_take(Collector *self, PyObject *Py_UNUSED(ignored))
{
    if (self->bytes == NULL) {
        PyErr_SetString(PyExc_ValueError, "the collector was taken");
        return NULL;
    }
    if (self->have < PyBytes_GET_SIZE(self->bytes) &&
        _PyBytes_Resize(&self->bytes, self->have) < 0)
        return NULL;
    PyObject *out = self->bytes;
    self->bytes = NULL;
    self->have = 0;
    return out;
}

static Py_ssize_t
Collector_len(Collector *self)
{
    return self->have;
}

static PyMethodDef Collector_methods[] = {
    {"add", (PyCFunction)Collector_add, METH_O,
     "Copy one read in; return how many bytes are held."},
    {"take", (PyCFunction)Collector_take, METH_NOARGS,
     "The bytes held, as one bytes object; the collector is empty after."},
    {NULL, NULL, 0, NULL},
};

static PySequenceMethods Collector_as_sequence = {
    .sq_length = (lenfunc)Collector_len,
};

static PyTypeObject CollectorType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "dbgate.wire._scan.Collector",
    .tp_doc = PyDoc_STR("The reads of one long message, gathered into one bytes object."),
    .tp_basicsize = sizeof(Collector),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Collector_init,
    .tp_dealloc = (destructor)Collector_dealloc,
    .tp_methods = Collector_methods,
    .tp_as_sequence = &Collector_as_sequence,
};

/* The int16 count at *at and that many int32-length-prefixed values after it (-1:
 * NULL): a tuple of bytes or None, *at moved past the last; NULL with ValueError. */
static PyObject *
read_tuple(const unsigned char *p, Py_ssize_t size, Py_ssize_t *at)
{
    Py_ssize_t pos = *at;
    PyObject *out = NULL;
    if (pos < 0 || pos > size - 2)
        goto bad;
    Py_ssize_t n = ((Py_ssize_t)p[pos] << 8) | p[pos + 1];
    pos += 2;
    if (4 * n > size - pos)
        goto bad;
    out = PyTuple_New(n);
    if (out == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (pos > size - 4)
            goto bad;
        int32_t len = (int32_t)(((uint32_t)p[pos] << 24) | ((uint32_t)p[pos + 1] << 16) |
                                ((uint32_t)p[pos + 2] << 8) | (uint32_t)p[pos + 3]);
        pos += 4;
        PyObject *item;
        if (len < 0) {
            if (len != -1)
                goto bad;
            item = Py_NewRef(Py_None);
        } else {
            if ((Py_ssize_t)len > size - pos)
                goto bad;
            item = PyBytes_FromStringAndSize((const char *)p + pos, len);
            if (item == NULL) {
                Py_DECREF(out);
                return NULL;
            }
            pos += len;
        }
        PyTuple_SET_ITEM(out, i, item);
    }
    *at = pos;
    return out;
bad:
    Py_XDECREF(out);
    PyErr_SetString(PyExc_ValueError, "malformed values");
    return NULL;
}

/* read_tuple's values and the offset past the last, as a pair. */
static PyObject *
read_values(const unsigned char *p, Py_ssize_t size, Py_ssize_t pos)
{
    PyObject *out = read_tuple(p, size, &pos);
    return out == NULL ? NULL : Py_BuildValue("(Nn)", out, pos);
}

/* values(buf, pos): read_values, for dbgate.wire.primitives.values_at (a Bind's or a
 * DataRow's values). Any fault raises ValueError: the Python loop then reads the body
 * again to name the fault exactly. */
static PyObject *
values(PyObject *self, PyObject *args)
{
    Py_buffer buf;
    Py_ssize_t pos;
    if (!PyArg_ParseTuple(args, "y*n", &buf, &pos))
        return NULL;
    PyObject *res = read_values((const unsigned char *)buf.buf, buf.len, pos);
    PyBuffer_Release(&buf);
    return res;
}

/* bind_values(body): the parameter values of a Bind body (past the portal and
 * statement names and the format codes), as dbgate.wire.codec.bind_params reads them;
 * ValueError on any fault (the Python reader then names it). */
static PyObject *
bind_values_of(const unsigned char *p, Py_ssize_t size)
{
    Py_ssize_t pos = 0;
    for (int names = 0; names < 2; names++) {
        const unsigned char *nul = memchr(p + pos, 0, (size_t)(size - pos));
        if (nul == NULL)
            goto bad;
        pos = (nul - p) + 1;
    }
    if (pos > size - 2)
        goto bad;
    pos += 2 + 2 * (((Py_ssize_t)p[pos] << 8) | p[pos + 1]);
    return read_tuple(p, size, &pos);
bad:
    PyErr_SetString(PyExc_ValueError, "malformed Bind");
    return NULL;
}

/* One argument (METH_O): a bytes body is read in place (what the relay hands it,
 * once per recorded Execute), any other buffer through the buffer protocol. */
static PyObject *
bind_values(PyObject *self, PyObject *arg)
{
    if (PyBytes_CheckExact(arg))
        return bind_values_of((const unsigned char *)PyBytes_AS_STRING(arg),
                              PyBytes_GET_SIZE(arg));
    Py_buffer buf;
    if (PyObject_GetBuffer(arg, &buf, PyBUF_SIMPLE) < 0)
        return NULL;
    PyObject *res = bind_values_of((const unsigned char *)buf.buf, buf.len);
    PyBuffer_Release(&buf);
    return res;
}

static PyMethodDef methods[] = {
    {"scan", scan, METH_VARARGS, "Scan complete messages; return (end, selected frames)."},
    {"values", values, METH_VARARGS, "(values, end) of the counted values at pos."},
    {"bind_values", bind_values, METH_O, "The parameter values of a Bind body."},
    {"count", count, METH_VARARGS, "Number of the messages in buf[start:end] (complete ones; with split_last the last may run past end)."},
    {"skip", skip, METH_VARARGS, "Offset just past n messages from start."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_scan", NULL, -1, methods};

PyMODINIT_FUNC
PyInit__scan(void)
{
    if (PyType_Ready(&CollectorType) < 0)
        return NULL;
    PyObject *mod = PyModule_Create(&module);
    if (mod == NULL)
        return NULL;
    if (PyModule_AddType(mod, &CollectorType) < 0) {
        Py_DECREF(mod);
        return NULL;
    }
    return mod;
}
