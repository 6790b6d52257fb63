/* PostgreSQL's COPY text format read back into rows (the verifier's PostgreSQL source).
 *
 * copy_rows(data, kinds, order) -> (rows, consumed)
 *
 * data: bytes-like, COPY TO STDOUT text (columns separated by a tab, rows ended by a
 * newline); kinds: bytes, one letter per column: 't' text (str), 'i' integer (int);
 * order: a tuple of column positions, the columns of each row's tuple (a column may
 * come more than once, or not at all). Every complete row of data becomes a tuple (a
 * field of exactly \N is None); consumed
 * is how many bytes those rows took (a row not yet ended stays for the next call, so a
 * row may be split across read blocks anywhere). Escapes as PostgreSQL's COPY FROM reads
 * them: \b \f \n \r \t \v, \N for NULL (the whole field), \ and 1 to 3 octal digits, \x and
 * 1 or 2 hex digits, a backslash before any other character is that character. Text is
 * decoded as UTF-8 (strictly: UnicodeDecodeError); an integer field must be -?[0-9]+
 * (else ValueError); a row with another number of columns is a ValueError.
 *
 * The pure-Python twin is otel_audit/integrity/copyparse.py (python_copy_rows); the tests
 * hold the two to the same results. A pure CPU transform: no I/O.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

#include "_speedups_buffer.h"

PyObject *copy_rows(PyObject *self, PyObject *const *args, Py_ssize_t nargs);

#define MAX_COLUMNS 256

static int
octal(unsigned char c)
{
    return c >= '0' && c <= '7';
}

/* The value of an integer field: -?[0-9]+ (as int() reads it), else ValueError. */
static PyObject *
integer(const char *p, Py_ssize_t n)
{
    Py_ssize_t i = n > 0 && p[0] == '-' ? 1 : 0;
    if (i >= n) {
        goto bad;
    }
    for (Py_ssize_t j = i; j < n; j++) {
        if (p[j] < '0' || p[j] > '9') {
            goto bad;
        }
    }
    if (n - i <= 18) {
        long long v = 0;
        for (Py_ssize_t j = i; j < n; j++) {
            v = v * 10 + (p[j] - '0');
        }
        return PyLong_FromLongLong(i ? -v : v);
    }
    /* long: Python's own reading (and its limit on digits) */
    PyObject *text = PyUnicode_FromStringAndSize(p, n);
    if (text == NULL) {
        return NULL;
    }
    PyObject *v = PyLong_FromUnicodeObject(text, 10);
    Py_DECREF(text);
    return v;
bad:
    PyErr_SetString(PyExc_ValueError, "copy_rows: an integer column holds a non-integer");
    return NULL;
}

typedef struct {
    const char *p;      /* the raw field (escaped) */
    Py_ssize_t n;
    PyObject *value;    /* its value (a new reference) */
} cached;

PyObject *
copy_rows(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    if (!takes("copy_rows", nargs, 3)) {
        return NULL;
    }
    if (!PyBytes_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "copy_rows: kinds must be bytes");
        return NULL;
    }
    const char *kinds = PyBytes_AS_STRING(args[1]);
    Py_ssize_t width = PyBytes_GET_SIZE(args[1]);
    if (width < 1 || width > MAX_COLUMNS) {
        PyErr_SetString(PyExc_ValueError, "copy_rows: 1 to 256 columns");
        return NULL;
    }
    for (Py_ssize_t k = 0; k < width; k++) {
        if (kinds[k] != 't' && kinds[k] != 'i') {
            PyErr_SetString(PyExc_ValueError, "copy_rows: a kind is not 't' or 'i'");
            return NULL;
        }
    }
    PyObject *order_arg = args[2];
    if (!PyTuple_Check(order_arg) || PyTuple_GET_SIZE(order_arg) > MAX_COLUMNS) {
        PyErr_SetString(PyExc_TypeError, "copy_rows: order must be a tuple of up to 256 positions");
        return NULL;
    }
    Py_ssize_t out_width = PyTuple_GET_SIZE(order_arg), order[MAX_COLUMNS];
    for (Py_ssize_t k = 0; k < out_width; k++) {
        PyObject *o = PyTuple_GET_ITEM(order_arg, k);
        order[k] = PyLong_Check(o) ? PyLong_AsSsize_t(o) : -1;
        if (order[k] < 0 || order[k] >= width) {
            if (!PyErr_Occurred() || PyErr_ExceptionMatches(PyExc_OverflowError)) {
                PyErr_Clear();
                PyErr_SetString(PyExc_ValueError, "copy_rows: a position is not a column's");
            }
            return NULL;
        }
    }
    Py_buffer view;
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    const char *data = view.buf;
    Py_ssize_t size = view.len;
    PyObject *rows = PyList_New(0);
    char *scratch = NULL;
    Py_ssize_t scratch_cap = 0;
    /* the previous row's fields (raw bytes and value) for each column: an equal raw
     * field shares the value (stream, format tag, repeated texts) */
    cached prev[MAX_COLUMNS];
    memset(prev, 0, sizeof prev);
    PyObject *values[MAX_COLUMNS];
    Py_ssize_t starts[MAX_COLUMNS + 1], ends[MAX_COLUMNS + 1];
    char escaped[MAX_COLUMNS + 1];
    Py_ssize_t at = 0, consumed = 0;
    if (rows == NULL) {
        goto fail;
    }
    while (at < size) {
        /* one row: its fields' raw extents, or stop where it does not end here */
        Py_ssize_t col = 0, i = at;
        int ended = 0;
        starts[0] = at;
        escaped[0] = 0;
        while (i < size) {
            char c = data[i];
            if (c == '\\') {
                if (i + 1 >= size) {
                    break;  /* the escaped character comes in the next block */
                }
                if (col <= MAX_COLUMNS) {
                    escaped[col] = 1;
                }
                i += 2;
                continue;
            }
            if (c == '\t' || c == '\n') {
                if (col >= MAX_COLUMNS) {
                    col = MAX_COLUMNS + 1;  /* too many: reported below */
                }
                else {
                    ends[col] = i;
                    col++;
                }
                if (c == '\n') {
                    ended = 1;
                    i++;
                    break;
                }
                if (col <= MAX_COLUMNS) {
                    starts[col] = i + 1;
                    escaped[col] = 0;
                }
                i++;
                continue;
            }
            i++;
        }
        if (!ended) {
            break;
        }
        if (col != width) {
            PyErr_Format(PyExc_ValueError, "copy_rows: a row not of %zd columns", width);
            goto fail;
        }
        Py_ssize_t made = 0;
        for (Py_ssize_t f = 0; f < width; f++) {
            const char *p = data + starts[f];
            Py_ssize_t n = ends[f] - starts[f];
            PyObject *v;
            if (n == 2 && p[0] == '\\' && p[1] == 'N') {
                v = Py_NewRef(Py_None);
            }
            else if (prev[f].value != NULL && prev[f].n == n && memcmp(prev[f].p, p, (size_t)n) == 0) {
                v = Py_NewRef(prev[f].value);
            }
            else {
                const char *q = p;
                Py_ssize_t m = n;
                if (escaped[f]) {
                    if (buffer_grow(&scratch, 0, &scratch_cap, n, 256) < 0) {
                        goto fail_row;
                    }
                    m = 0;
                    for (Py_ssize_t j = 0; j < n; j++) {
                        unsigned char c = (unsigned char)p[j];
                        if (c != '\\') {
                            scratch[m++] = (char)c;
                            continue;
                        }
                        c = (unsigned char)p[++j];  /* a field never ends in a lone '\' */
                        switch (c) {
                        case 'b': c = '\b'; break;
                        case 'f': c = '\f'; break;
                        case 'n': c = '\n'; break;
                        case 'r': c = '\r'; break;
                        case 't': c = '\t'; break;
                        case 'v': c = '\v'; break;
                        case 'x':
                            if (j + 1 < n && hex_value((unsigned char)p[j + 1]) >= 0) {
                                int val = hex_value((unsigned char)p[++j]);
                                if (j + 1 < n && hex_value((unsigned char)p[j + 1]) >= 0) {
                                    val = (val << 4) + hex_value((unsigned char)p[++j]);
                                }
                                c = (unsigned char)(val & 0xff);
                            }
                            break;
                        default:
                            if (octal(c)) {
                                int val = c - '0';
                                for (int d = 0; d < 2 && j + 1 < n && octal((unsigned char)p[j + 1]); d++) {
                                    val = (val << 3) + (p[++j] - '0');
                                }
                                c = (unsigned char)(val & 0xff);
                            }
                        }
                        scratch[m++] = (char)c;
                    }
                    q = scratch;
                }
                v = kinds[f] == 'i' ? integer(q, m) : PyUnicode_DecodeUTF8(q, m, NULL);
                if (v == NULL) {
                    goto fail_row;
                }
                Py_XSETREF(prev[f].value, Py_NewRef(v));
                prev[f].p = p;
                prev[f].n = n;
            }
            values[made++] = v;
            continue;
        fail_row:
            for (Py_ssize_t k = 0; k < made; k++) {
                Py_DECREF(values[k]);
            }
            goto fail;
        }
        PyObject *row = PyTuple_New(out_width);
        if (row != NULL) {
            for (Py_ssize_t k = 0; k < out_width; k++) {
                PyTuple_SET_ITEM(row, k, Py_NewRef(values[order[k]]));
            }
        }
        for (Py_ssize_t k = 0; k < width; k++) {
            Py_DECREF(values[k]);
        }
        if (row == NULL) {
            goto fail;
        }
        /* str, int and None only: no cycle through this tuple, so the cycle collector
         * need not visit it (a batch of rows would make each collection walk them all) */
        PyObject_GC_UnTrack(row);
        int appended = PyList_Append(rows, row);
        Py_DECREF(row);
        if (appended < 0) {
            goto fail;
        }
        at = consumed = i;
    }
    for (Py_ssize_t k = 0; k < width; k++) {
        Py_XDECREF(prev[k].value);
    }
    PyMem_Free(scratch);
    PyBuffer_Release(&view);
    PyObject *out = Py_BuildValue("(Nn)", rows, consumed);
    return out;
fail:
    for (Py_ssize_t k = 0; k < width; k++) {
        Py_XDECREF(prev[k].value);
    }
    PyMem_Free(scratch);
    PyBuffer_Release(&view);
    Py_XDECREF(rows);
    return NULL;
}
