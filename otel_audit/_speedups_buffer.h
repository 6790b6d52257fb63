/* What the accelerator's source files share: a growable byte buffer's one growth rule,
 * a hexadecimal digit's value, and the argument count check of an entry point. */
#ifndef OTEL_AUDIT_SPEEDUPS_BUFFER_H
#define OTEL_AUDIT_SPEEDUPS_BUFFER_H

#include <Python.h>

/* Make room for ``more`` bytes after ``len`` in ``*data`` (capacity ``*cap``), doubling
 * from ``first``; 0, or -1 with MemoryError set (``*data`` is then unchanged). */
static inline int
buffer_grow(char **data, Py_ssize_t len, Py_ssize_t *cap, Py_ssize_t more, Py_ssize_t first)
{
    if (len + more <= *cap) {
        return 0;
    }
    Py_ssize_t size = *cap ? *cap : first;
    while (size < len + more) {
        size *= 2;
    }
    char *grown = PyMem_Realloc(*data, (size_t)size);
    if (grown == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    *data = grown;
    *cap = size;
    return 0;
}

/* The value of the hexadecimal digit ``c`` (either case), or -1. */
static inline int
hex_value(unsigned char c)
{
    if (c >= '0' && c <= '9') {
        return c - '0';
    }
    if (c >= 'a' && c <= 'f') {
        return c - 'a' + 10;
    }
    if (c >= 'A' && c <= 'F') {
        return c - 'A' + 10;
    }
    return -1;
}

/* Whether a METH_FASTCALL entry point got the number of arguments it takes (if not,
 * a TypeError is set). */
static inline int
takes(const char *name, Py_ssize_t nargs, Py_ssize_t expected)
{
    if (nargs != expected) {
        PyErr_Format(PyExc_TypeError, "%s takes %zd arguments", name, expected);
        return 0;
    }
    return 1;
}

#endif
