/* The worker's preparation of a batch: compiled checks with a pure-Python twin.
 *
 * redact_clean() is the counterpart of Redactor._batch_clean (otel_audit/redact.py):
 * whether no record of a batch has anything to redact, decided from the redactor's
 * cache of key decisions. It answers True only where the Python check does; False
 * means "ask the Python check" (a key not decided yet, a value of another type), so
 * the result of redact_batch() never depends on which ran. tests/pipeline/
 * test_batch_paths.py holds the two equal.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "_speedups_buffer.h"

/* None, exact str, int, float and bool: redact.py's _SCALARS */
static int
scalar(PyObject *v)
{
    return v == Py_None || PyUnicode_CheckExact(v) || PyLong_CheckExact(v)
           || PyFloat_CheckExact(v) || PyBool_Check(v);
}

/* redact_clean(records, positions, decisions) -> bool
 *
 * records: list of AuditRecord; positions: the JSON fields' positions (redact.py's
 * _FIELDS); decisions: the redactor's {key: is secret} cache. True when every value at
 * those positions is a scalar, or an exact dict of scalars whose keys are exact str the
 * cache holds as not secret. Runs no Python code of the values' (no hash, no compare
 * beyond exact str keys).
 */
PyObject *
redact_clean(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (!takes("redact_clean", nargs, 3)) {
        return NULL;
    }
    PyObject *records = args[0], *positions = args[1], *decisions = args[2];
    if (!PyList_Check(records) || !PyTuple_Check(positions) || !PyDict_CheckExact(decisions)) {
        PyErr_SetString(PyExc_TypeError, "redact_clean: bad argument types");
        return NULL;
    }
    Py_ssize_t n_pos = PyTuple_GET_SIZE(positions);
    Py_ssize_t pos[8];
    if (n_pos > 8) {
        PyErr_SetString(PyExc_ValueError, "redact_clean: too many positions");
        return NULL;
    }
    for (Py_ssize_t k = 0; k < n_pos; k++) {
        pos[k] = PyLong_AsSsize_t(PyTuple_GET_ITEM(positions, k));
        if (pos[k] < 0) {
            if (!PyErr_Occurred()) {
                PyErr_SetString(PyExc_ValueError, "redact_clean: negative position");
            }
            return NULL;
        }
    }
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(records); i++) {
        PyObject *r = PyList_GET_ITEM(records, i);
        if (!PyTuple_Check(r)) {
            Py_RETURN_FALSE;
        }
        for (Py_ssize_t k = 0; k < n_pos; k++) {
            if (pos[k] >= PyTuple_GET_SIZE(r)) {
                Py_RETURN_FALSE;
            }
            PyObject *value = PyTuple_GET_ITEM(r, pos[k]);
            if (scalar(value)) {
                continue;
            }
            if (!PyDict_CheckExact(value)) {
                Py_RETURN_FALSE;
            }
            Py_ssize_t at = 0;
            PyObject *key, *item;
            while (PyDict_Next(value, &at, &key, &item)) {
                if (!PyUnicode_CheckExact(key) || !scalar(item)) {
                    Py_RETURN_FALSE;
                }
                PyObject *decided = PyDict_GetItemWithError(decisions, key);
                if (decided != Py_False) {
                    if (decided == NULL && PyErr_Occurred()) {
                        return NULL;
                    }
                    Py_RETURN_FALSE;  /* secret, or not decided yet: the Python check */
                }
            }
        }
    }
    Py_RETURN_TRUE;
}

/* unsealed(records, texts, prepared_type) -> list of PreparedRecord
 *
 * PreparedRecord(record, texts) for each pair, the chain fields None: what
 * Preparation._prepare builds with map(tuple.__new__, ...) over zip() (prepared_type: a
 * tuple subclass adding no fields, of ``width`` items). Each is left in the cycle
 * collector: its texts are a dict.
 */
PyObject *
unsealed(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (!takes("unsealed", nargs, 3)) {
        return NULL;
    }
    PyObject *records = args[0], *texts = args[1], *prepared_type = args[2];
    if (!PyList_Check(records) || !PyList_Check(texts) || !PyType_Check(prepared_type)
            || !PyType_IsSubtype((PyTypeObject *)prepared_type, &PyTuple_Type)
            || ((PyTypeObject *)prepared_type)->tp_basicsize != PyTuple_Type.tp_basicsize) {
        PyErr_SetString(PyExc_TypeError, "unsealed: bad argument types");
        return NULL;
    }
    Py_ssize_t n = PyList_GET_SIZE(records);
    if (PyList_GET_SIZE(texts) != n) {
        PyErr_SetString(PyExc_ValueError, "unsealed: columns of different lengths");
        return NULL;
    }
    PyTypeObject *ptype = (PyTypeObject *)prepared_type;
    PyObject *fields = PyObject_GetAttrString(prepared_type, "_fields");
    if (fields == NULL) {
        return NULL;
    }
    Py_ssize_t width = PyObject_Length(fields);
    Py_DECREF(fields);
    if (width < 2) {
        if (!PyErr_Occurred()) {
            PyErr_SetString(PyExc_TypeError, "unsealed: a type of fewer than two fields");
        }
        return NULL;
    }
    PyObject *out = PyList_New(n);
    if (out == NULL) {
        return NULL;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *p = ptype->tp_alloc(ptype, width);
        if (p == NULL) {
            Py_DECREF(out);
            return NULL;
        }
        PyTuple_SET_ITEM(p, 0, Py_NewRef(PyList_GET_ITEM(records, i)));
        PyTuple_SET_ITEM(p, 1, Py_NewRef(PyList_GET_ITEM(texts, i)));
        for (Py_ssize_t k = 2; k < width; k++) {
            PyTuple_SET_ITEM(p, k, Py_NewRef(Py_None));
        }
        PyList_SET_ITEM(out, i, p);
    }
    return out;
}

/* custody(batch, prepared_type, held) -> None
 *
 * The records of a batch in the pipeline's hands, out of the cycle collector (held
 * true), or back in it (held false). A PreparedRecord sealed on the worker lives until
 * the store stage has committed it: through several collections of the young
 * generations, which promote it to the oldest, whose growth is what starts the full
 * collections that traverse every object of the process. Yet while the pipeline holds
 * it nothing can make a cycle through it: only the pipeline's own code reaches it (a
 * cycle needs something reachable from the record to refer back to it). The pipeline
 * takes it back into the collector (held false) before any code of another module can
 * see it (a post-write hook, an exporter), which may then make such a cycle.
 *
 * Held: each item that is exactly ``prepared_type`` and tracked, whose texts are a
 * dict, whose row is None or a tuple the collector does not track, and whose other
 * items after the record are objects the collector does not handle (strings,
 * numbers, None), leaves the collector; anything else is left as it is. Not held:
 * each item that is exactly ``prepared_type`` and untracked returns to it.
 */
PyObject *
custody(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3 || !PyList_Check(args[0]) || !PyType_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "custody(batch: list, prepared_type: type, held)");
        return NULL;
    }
    PyObject *batch = args[0];
    PyTypeObject *ptype = (PyTypeObject *)args[1];
    int held = PyObject_IsTrue(args[2]);
    if (held < 0) {
        return NULL;
    }
    if (!PyType_IsSubtype(ptype, &PyTuple_Type)
            || ptype->tp_basicsize != PyTuple_Type.tp_basicsize
            || ptype->tp_dictoffset != 0 || ptype->tp_weaklistoffset != 0) {
        PyErr_SetString(PyExc_TypeError, "custody: not a tuple type adding no fields");
        return NULL;
    }
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(batch); i++) {
        PyObject *p = PyList_GET_ITEM(batch, i);
        if (!Py_IS_TYPE(p, ptype)) {
            continue;
        }
        if (!held) {
            if (!PyObject_GC_IsTracked(p)) {
                PyObject_GC_Track(p);
            }
            continue;
        }
        Py_ssize_t width = PyTuple_GET_SIZE(p);
        if (!PyObject_GC_IsTracked(p) || width < 3 || !PyDict_CheckExact(PyTuple_GET_ITEM(p, 1))) {
            continue;
        }
        PyObject *row = PyTuple_GET_ITEM(p, width - 1);
        if (row != Py_None && (!PyTuple_CheckExact(row) || PyObject_GC_IsTracked(row))) {
            continue;
        }
        int atoms = 1;
        for (Py_ssize_t k = 2; k < width - 1 && atoms; k++) {
            atoms = !PyObject_IS_GC(PyTuple_GET_ITEM(p, k));
        }
        if (atoms) {
            PyObject_GC_UnTrack(p);
        }
    }
    Py_RETURN_NONE;
}
