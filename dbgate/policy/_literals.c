/*
 * C port of dbgate.policy.literals.mask (see literals.py for what it is and why it
 * is sound). mask(sql) -> str | None: the text with each literal replaced by NUL
 * plus a kind letter (N, M, F, G, S), or None when the lexer cannot tell.
 *
 * It must return exactly what the Python reference returns for every input; the
 * property tests in tests/unit/policy/test_literals.py compare the two.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

typedef struct {
    Py_ssize_t s, e;
    char kind;
} span_t;

static int
is_ident(Py_UCS4 c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           c == '_' || c >= 0x80;
}

static int
is_digit(Py_UCS4 c)
{
    return c >= '0' && c <= '9';
}

static int
sign_context(Py_UCS4 c)
{
    switch (c) {
    case ' ': case '\t': case '\n': case '\r': case '\f': case '(': case ',': case '=':
    case '<': case '>': case '+': case '*': case '/': case '%': case '^': case '|':
    case '[': case ':':
        return 1;
    }
    return 0;
}

#define R(i) PyUnicode_READ(kind, d, (i))

/* Returns the number of spans, -1 when the text cannot be masked, -2 on MemoryError.
 * *spans starts as a caller's stack array of *cap entries (`local`); it is moved to
 * the heap when a text has more literals than that. */
static Py_ssize_t
find_spans(int kind, const void *d, Py_ssize_t n, span_t **spans, Py_ssize_t *cap,
           const span_t *local)
{
    Py_ssize_t count = 0, i = 0;
    for (Py_ssize_t k = 0; k < n; k++) {
        Py_UCS4 c = R(k);
        if (c == '$' || c == 0)
            return -1;
    }
#define PUSH(S, E, K)                                                                  \
    do {                                                                               \
        if (count == *cap) {                                                           \
            Py_ssize_t nc = *cap * 2;                                                  \
            span_t *ns;                                                                \
            if (*spans == local) {                                                     \
                ns = PyMem_Malloc((size_t)nc * sizeof(span_t));                        \
                if (ns != NULL)                                                        \
                    memcpy(ns, local, (size_t)*cap * sizeof(span_t));                  \
            }                                                                          \
            else                                                                       \
                ns = PyMem_Realloc(*spans, (size_t)nc * sizeof(span_t));               \
            if (ns == NULL)                                                            \
                return -2;                                                             \
            *spans = ns;                                                               \
            *cap = nc;                                                                 \
        }                                                                              \
        (*spans)[count].s = (S);                                                       \
        (*spans)[count].e = (E);                                                       \
        (*spans)[count].kind = (K);                                                    \
        count++;                                                                       \
    } while (0)

    while (i < n) {
        Py_UCS4 c = R(i);
        Py_UCS4 nxt = i + 1 < n ? R(i + 1) : 0;
        if (c == '\'') {
            Py_UCS4 prev = i ? R(i - 1) : ' ';
            if (is_ident(prev) || prev == '&')
                return -1;
            Py_ssize_t j = i + 1;
            for (;;) {
                while (j < n && R(j) != '\'')
                    j++;
                if (j >= n)
                    return -1;
                if (j + 1 < n && R(j + 1) == '\'') {
                    j += 2;
                    continue;
                }
                break;
            }
            PUSH(i, j + 1, 'S');
            i = j + 1;
        }
        else if (c == '"') {
            Py_ssize_t j = i + 1;
            for (;;) {
                while (j < n && R(j) != '"')
                    j++;
                if (j >= n)
                    return -1;
                if (j + 1 < n && R(j + 1) == '"') {
                    j += 2;
                    continue;
                }
                break;
            }
            i = j + 1;
        }
        else if (c == '-' && nxt == '-') {
            Py_ssize_t j = i + 2;
            while (j < n && R(j) != '\n' && R(j) != '\r')
                j++;
            i = j;
        }
        else if (c == '/' && nxt == '*') {
            Py_ssize_t depth = 1, j = i + 2;
            while (depth) {
                if (j >= n)
                    return -1;
                if (R(j) == '/' && j + 1 < n && R(j + 1) == '*') {
                    depth++;
                    j += 2;
                }
                else if (R(j) == '*' && j + 1 < n && R(j + 1) == '/') {
                    depth--;
                    j += 2;
                }
                else
                    j++;
            }
            i = j;
        }
        else if (is_digit(c) || (c == '-' && is_digit(nxt) && (!i || sign_context(R(i - 1))))) {
            int negative = c == '-';
            Py_ssize_t start = i, j = negative ? i + 1 : i;
            if (!negative && i && (is_ident(R(i - 1)) || R(i - 1) == '.')) {
                while (j < n && is_ident(R(j)))
                    j++;
                i = j;
                continue;
            }
            while (j < n && is_digit(R(j)))
                j++;
            Py_ssize_t digits = j - start - negative;
            char k = negative ? 'M' : 'N';
            if (j + 1 < n && R(j) == '.' && is_digit(R(j + 1))) {
                j++;
                while (j < n && is_digit(R(j)))
                    j++;
                k = negative ? 'G' : 'F';
            }
            Py_UCS4 follow = j < n ? R(j) : ' ';
            if (is_ident(follow) || follow == '.' || ((k == 'N' || k == 'M') && digits > 9)) {
                while (j < n && (is_ident(R(j)) || R(j) == '.'))
                    j++;
                i = j;
                continue;
            }
            PUSH(start, j, k);
            i = j;
        }
        else
            i++;
    }
#undef PUSH
    return count;
}

static PyObject *
mask(PyObject *self, PyObject *arg)
{
    if (!PyUnicode_Check(arg)) {
        PyErr_SetString(PyExc_TypeError, "mask() takes a str");
        return NULL;
    }
    if (PyUnicode_READY(arg) < 0)
        return NULL;
    int kind = PyUnicode_KIND(arg);
    const void *d = PyUnicode_DATA(arg);
    Py_ssize_t n = PyUnicode_GET_LENGTH(arg);
    span_t local[16];
    span_t *spans = local;
    Py_ssize_t cap = 16;
    Py_ssize_t count = find_spans(kind, d, n, &spans, &cap, local);
    if (count < 0) {
        if (spans != local)
            PyMem_Free(spans);
        if (count == -2)
            return PyErr_NoMemory();
        Py_RETURN_NONE;
    }
    Py_ssize_t out_len = n;
    for (Py_ssize_t k = 0; k < count; k++)
        out_len += 2 - (spans[k].e - spans[k].s);
    /* A str must be built with its true maximum character (CPython compares the
     * storage kind first): literals removed may have held the only wide ones. */
    Py_UCS4 maxchar = PyUnicode_MAX_CHAR_VALUE(arg);
    if (maxchar > 127) {
        Py_ssize_t pos = 0;
        maxchar = 127;
        for (Py_ssize_t k = 0; k <= count; k++) {
            Py_ssize_t stop = k < count ? spans[k].s : n;
            for (; pos < stop; pos++) {
                Py_UCS4 c = R(pos);
                if (c > maxchar)
                    maxchar = c;
            }
            if (k < count)
                pos = spans[k].e;
        }
    }
    PyObject *out = PyUnicode_New(out_len, maxchar);
    if (out == NULL) {
        if (spans != local)
            PyMem_Free(spans);
        return NULL;
    }
    int okind = PyUnicode_KIND(out);
    void *od = PyUnicode_DATA(out);
    Py_ssize_t pos = 0, w = 0;
    for (Py_ssize_t k = 0; k <= count; k++) {
        Py_ssize_t stop = k < count ? spans[k].s : n;
        for (; pos < stop; pos++)
            PyUnicode_WRITE(okind, od, w++, R(pos));
        if (k < count) {
            PyUnicode_WRITE(okind, od, w++, 0);
            PyUnicode_WRITE(okind, od, w++, (Py_UCS4)spans[k].kind);
            pos = spans[k].e;
        }
    }
    if (spans != local)
        PyMem_Free(spans);
    return out;
}

static PyMethodDef methods[] = {
    {"mask", mask, METH_O, "The literal-masked cache key of a SQL text, or None."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_literals", "C port of dbgate.policy.literals.mask", -1, methods,
};

PyMODINIT_FUNC
PyInit__literals(void)
{
    return PyModule_Create(&module);
}
