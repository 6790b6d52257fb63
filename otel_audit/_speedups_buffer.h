/* A growable byte buffer's one growth rule, shared by the accelerator's source files. */
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

#endif
