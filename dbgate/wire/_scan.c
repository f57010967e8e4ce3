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
 * A length below 4 or above max_size raises ValueError("badlen", offset, type,
 * length); the Python wrapper turns it into the length error (ProtocolError, or
 * LimitExceeded for a message over max_size).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

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
        if (m[p[pos]]) {
            PyObject *t = Py_BuildValue("(inn)", (int)p[pos], pos + 5, end);
            if (t == NULL || PyList_Append(frames, t) < 0) {
                Py_XDECREF(t);
                goto fail;
            }
            Py_DECREF(t);
        }
        pos = end;
    }
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

static PyMethodDef methods[] = {
    {"scan", scan, METH_VARARGS, "Scan complete messages; return (end, selected frames)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_scan", NULL, -1, methods};

PyMODINIT_FUNC
PyInit__scan(void)
{
    return PyModule_Create(&module);
}
