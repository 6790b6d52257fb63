/* OTLP encoding of audit records (part of otel_audit._speedups; pure CPU, no I/O).
 *
 * otlp_encode_logs() is the counterpart of otel_audit.forward.otlp.encode_request(...)
 * .SerializeToString(): the same ExportLogsServiceRequest bytes (one resource per service
 * name in first-seen order, one scope, the log records in order), written straight in the
 * protobuf wire format instead of filling one message object per field. Fields come out
 * in field-number order and proto3 defaults are left out, as the protobuf runtime
 * serializes them. The attribute plan (which record field becomes which attribute, which
 * are JSON texts) comes from the caller, built from otel_audit.mapping, so the mapping
 * stays in one place. Anything the encoder does not expect (a value of another type, a
 * time before 1970) raises, and the caller then takes the Python path, which raises or
 * encodes exactly as before. tests/forward/test_otlp_encode.py holds both paths equal.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#include "_speedups_buffer.h"

typedef struct {
    char *p;
    Py_ssize_t len;
    Py_ssize_t cap;
} obuf;

static int
ob_reserve(obuf *b, Py_ssize_t more)
{
    return buffer_grow(&b->p, b->len, &b->cap, more, 256);
}

static int
ob_put(obuf *b, const void *data, Py_ssize_t n)
{
    if (ob_reserve(b, n) < 0) {
        return -1;
    }
    if (n) {
        memcpy(b->p + b->len, data, (size_t)n);
    }
    b->len += n;
    return 0;
}

static int
varint_size(uint64_t v)
{
    int n = 1;
    while (v >= 0x80) {
        v >>= 7;
        n++;
    }
    return n;
}

static int
ob_varint(obuf *b, uint64_t v)
{
    if (ob_reserve(b, 10) < 0) {
        return -1;
    }
    while (v >= 0x80) {
        b->p[b->len++] = (char)((v & 0x7F) | 0x80);
        v >>= 7;
    }
    b->p[b->len++] = (char)v;
    return 0;
}

static int
ob_byte(obuf *b, unsigned char c)
{
    return ob_put(b, &c, 1);
}

static int
ob_fixed64(obuf *b, unsigned char tag, uint64_t v)
{
    unsigned char out[9];
    out[0] = tag;
    for (int i = 0; i < 8; i++) {
        out[1 + i] = (unsigned char)(v >> (8 * i));
    }
    return ob_put(b, out, 9);
}

/* tag, length, bytes */
static int
ob_field(obuf *b, unsigned char tag, const char *data, Py_ssize_t n)
{
    if (ob_byte(b, tag) < 0 || ob_varint(b, (uint64_t)n) < 0) {
        return -1;
    }
    return ob_put(b, data, n);
}

/* a field whose payload is itself length-prefixed: tag, len(prefix + n), tag2, n, data */
static Py_ssize_t
string_value_size(Py_ssize_t n)
{
    return 1 + varint_size((uint64_t)n) + n;
}

static const char *
utf8_of(PyObject *text, Py_ssize_t *size)
{
    if (!PyUnicode_Check(text)) {
        PyErr_SetString(PyExc_TypeError, "expected str");
        return NULL;
    }
    return PyUnicode_AsUTF8AndSize(text, size);
}

/* One KeyValue (LogRecord.attributes or Resource.attributes: field 6 / field 1) of
 * ``value`` as forward/otlp.py's _set_value() sets it: bool, int (int64), float, else
 * str(value). */
static int
put_attribute(obuf *b, unsigned char tag, const char *key, Py_ssize_t key_len,
              PyObject *value)
{
    unsigned char head[11];
    int head_len = 0;
    const char *text = NULL;
    Py_ssize_t text_len = 0;
    PyObject *as_text = NULL;
    uint64_t number = 0;
    Py_ssize_t value_len;
    if (PyBool_Check(value)) {
        head[0] = 0x10;  /* bool_value */
        head[1] = value == Py_True ? 1 : 0;
        head_len = 2;
        value_len = 2;
    }
    else if (PyLong_Check(value)) {
        int overflow = 0;
        long long v = PyLong_AsLongLongAndOverflow(value, &overflow);
        if (overflow) {
            PyErr_SetString(PyExc_ValueError, "integer attribute out of int64 range");
            return -1;
        }
        if (v == -1 && PyErr_Occurred()) {
            return -1;
        }
        number = (uint64_t)v;
        value_len = 1 + varint_size(number);
        head[0] = 0x18;  /* int_value */
        head_len = 1;
    }
    else if (PyFloat_Check(value)) {
        double d = PyFloat_AS_DOUBLE(value);
        uint64_t bits;
        memcpy(&bits, &d, 8);
        head[0] = 0x21;  /* double_value */
        for (int i = 0; i < 8; i++) {
            head[1 + i] = (unsigned char)(bits >> (8 * i));
        }
        head_len = 9;
        value_len = 9;
    }
    else {
        as_text = PyObject_Str(value);
        if (as_text == NULL) {
            return -1;
        }
        text = PyUnicode_AsUTF8AndSize(as_text, &text_len);
        if (text == NULL) {
            Py_DECREF(as_text);
            return -1;
        }
        value_len = string_value_size(text_len);  /* string_value */
    }
    Py_ssize_t kv_len = 1 + varint_size((uint64_t)key_len) + key_len
                        + 1 + varint_size((uint64_t)value_len) + value_len;
    int rc = -1;
    if (ob_byte(b, tag) < 0 || ob_varint(b, (uint64_t)kv_len) < 0
        || ob_field(b, 0x0a, key, key_len) < 0  /* key */
        || ob_byte(b, 0x12) < 0 || ob_varint(b, (uint64_t)value_len) < 0) {  /* value */
        goto done;
    }
    if (as_text != NULL) {
        if (ob_field(b, 0x0a, text, text_len) < 0) {
            goto done;
        }
    }
    else {
        if (ob_put(b, head, head_len) < 0) {
            goto done;
        }
        if (head[0] == 0x18 && ob_varint(b, number) < 0) {
            goto done;
        }
    }
    rc = 0;
done:
    Py_XDECREF(as_text);
    return rc;
}

/* bytes.fromhex(text) into ``field`` when ``text`` is truthy; 1 if set, 0 if not hex or
 * empty, -1 on error */
static int
hex_bytes(PyObject *text, PyObject **out)
{
    *out = NULL;
    int truthy = PyObject_IsTrue(text);
    if (truthy <= 0) {
        return truthy;
    }
    PyObject *raw = PyObject_CallMethod((PyObject *)&PyBytes_Type, "fromhex", "O", text);
    if (raw == NULL) {
        if (PyErr_ExceptionMatches(PyExc_ValueError)) {
            PyErr_Clear();
            return 0;
        }
        return -1;
    }
    *out = raw;
    return 1;
}

/* time_unix_nano of a timestamp as _fill_log_record computes it:
 * (int(ts.timestamp()) * 1_000_000 + ts.microsecond) * 1000 */
static int
time_ns_of(PyObject *ts, uint64_t *out)
{
    PyObject *seconds = PyObject_CallMethod(ts, "timestamp", NULL);
    if (seconds == NULL) {
        return -1;
    }
    PyObject *whole = PyNumber_Long(seconds);
    Py_DECREF(seconds);
    if (whole == NULL) {
        return -1;
    }
    int overflow = 0;
    long long secs = PyLong_AsLongLongAndOverflow(whole, &overflow);
    Py_DECREF(whole);
    if (secs == -1 && PyErr_Occurred()) {
        return -1;
    }
    PyObject *micro = PyObject_GetAttrString(ts, "microsecond");
    if (micro == NULL) {
        return -1;
    }
    long us = PyLong_AsLong(micro);
    Py_DECREF(micro);
    if (us == -1 && PyErr_Occurred()) {
        return -1;
    }
    /* outside 0 .. 2**64 - 1 nanoseconds the Python path raises (ValueError) */
    if (overflow || secs < 0 || us < 0 || us >= 1000000 || secs > 18446744072LL) {
        PyErr_SetString(PyExc_ValueError, "timestamp out of range for time_unix_nano");
        return -1;
    }
    unsigned __int128 ns = ((unsigned __int128)secs * 1000000u + (unsigned long)us) * 1000u;
    if (ns > (unsigned __int128)UINT64_MAX) {
        PyErr_SetString(PyExc_ValueError, "timestamp out of range for time_unix_nano");
        return -1;
    }
    *out = (uint64_t)ns;
    return 0;
}

typedef struct {
    Py_ssize_t index;
    const char *key;
    Py_ssize_t key_len;
    int kind;  /* 0: value, None left out; 1: JSON text, None left out; 2: always */
} plan_entry;

static int
put_log_record(obuf *rec, PyObject *record, const plan_entry *plan, Py_ssize_t n_plan,
               Py_ssize_t ts_index, Py_ssize_t action_index, Py_ssize_t success_index,
               Py_ssize_t trace_index, Py_ssize_t span_index, PyObject *dumps)
{
    Py_ssize_t width = PyTuple_GET_SIZE(record);
    if (ts_index >= width || action_index >= width || success_index >= width
        || trace_index >= width || span_index >= width) {
        PyErr_SetString(PyExc_ValueError, "record shorter than the plan");
        return -1;
    }
    uint64_t time_ns;
    if (time_ns_of(PyTuple_GET_ITEM(record, ts_index), &time_ns) < 0) {
        return -1;
    }
    int success = PyObject_IsTrue(PyTuple_GET_ITEM(record, success_index));
    if (success < 0) {
        return -1;
    }
    Py_ssize_t action_len;
    const char *action = utf8_of(PyTuple_GET_ITEM(record, action_index), &action_len);
    if (action == NULL) {
        return -1;
    }
    if (time_ns && ob_fixed64(rec, 0x09, time_ns) < 0) {  /* time_unix_nano */
        return -1;
    }
    if (ob_byte(rec, 0x10) < 0 || ob_byte(rec, success ? 9 : 13) < 0  /* severity_number */
        || ob_field(rec, 0x1a, success ? "INFO" : "WARN", 4) < 0  /* severity_text */
        || ob_byte(rec, 0x2a) < 0  /* body: AnyValue{string_value} */
        || ob_varint(rec, (uint64_t)string_value_size(action_len)) < 0
        || ob_field(rec, 0x0a, action, action_len) < 0) {
        return -1;
    }
    for (Py_ssize_t i = 0; i < n_plan; i++) {
        const plan_entry *entry = &plan[i];
        if (entry->index >= width) {
            PyErr_SetString(PyExc_ValueError, "record shorter than the plan");
            return -1;
        }
        PyObject *value = PyTuple_GET_ITEM(record, entry->index);
        if (value == Py_None && entry->kind != 2) {
            continue;
        }
        if (entry->kind == 1) {
            PyObject *text = PyObject_CallOneArg(dumps, value);
            if (text == NULL) {
                return -1;
            }
            int rc = put_attribute(rec, 0x32, entry->key, entry->key_len, text);
            Py_DECREF(text);
            if (rc < 0) {
                return -1;
            }
        }
        else if (put_attribute(rec, 0x32, entry->key, entry->key_len, value) < 0) {
            return -1;
        }
    }
    PyObject *trace = NULL, *span = NULL;
    int has = hex_bytes(PyTuple_GET_ITEM(record, trace_index), &trace);
    if (has < 0) {
        return -1;
    }
    if (has) {  /* the span ID only with a trace ID, as the Python path */
        if (hex_bytes(PyTuple_GET_ITEM(record, span_index), &span) < 0) {
            Py_DECREF(trace);
            return -1;
        }
    }
    int rc = 0;
    if (trace != NULL && PyBytes_GET_SIZE(trace) > 0) {
        rc = ob_field(rec, 0x4a, PyBytes_AS_STRING(trace), PyBytes_GET_SIZE(trace));
    }
    if (rc == 0 && span != NULL && PyBytes_GET_SIZE(span) > 0) {
        rc = ob_field(rec, 0x52, PyBytes_AS_STRING(span), PyBytes_GET_SIZE(span));
    }
    Py_XDECREF(trace);
    Py_XDECREF(span);
    if (rc < 0) {
        return -1;
    }
    if (time_ns && ob_fixed64(rec, 0x59, time_ns) < 0) {  /* observed_time_unix_nano */
        return -1;
    }
    return ob_field(rec, 0x62, "audit", 5);  /* event_name */
}

/* otlp_encode_logs(records, plan, positions, scope_name, dumps) -> bytes
 *
 * records: list of AuditRecord; plan: tuple of (field index, attribute name, kind);
 * positions: (timestamp, action, success, trace_id, span_id, service_name) indexes;
 * dumps: the JSON serializer of the JSON fields (returns str). */
PyObject *
otlp_encode_logs(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 5 || !PyList_Check(args[0]) || !PyTuple_Check(args[1])
        || !PyTuple_Check(args[2]) || PyTuple_GET_SIZE(args[2]) != 6
        || !PyUnicode_Check(args[3])) {
        PyErr_SetString(PyExc_TypeError,
                        "otlp_encode_logs(records: list, plan: tuple, positions: tuple[6], "
                        "scope_name: str, dumps)");
        return NULL;
    }
    PyObject *records = args[0], *plan_obj = args[1], *dumps = args[4];
    Py_ssize_t positions[6];
    for (int i = 0; i < 6; i++) {
        positions[i] = PyLong_AsSsize_t(PyTuple_GET_ITEM(args[2], i));
        if (positions[i] < 0) {
            if (!PyErr_Occurred()) {
                PyErr_SetString(PyExc_ValueError, "negative position");
            }
            return NULL;
        }
    }
    Py_ssize_t scope_len;
    const char *scope = PyUnicode_AsUTF8AndSize(args[3], &scope_len);
    if (scope == NULL) {
        return NULL;
    }
    Py_ssize_t n_plan = PyTuple_GET_SIZE(plan_obj);
    plan_entry *plan = PyMem_Calloc((size_t)(n_plan ? n_plan : 1), sizeof(plan_entry));
    if (plan == NULL) {
        return PyErr_NoMemory();
    }
    PyObject *groups = NULL, *result = NULL;
    obuf rec = {0}, group = {0}, out = {0};
    for (Py_ssize_t i = 0; i < n_plan; i++) {
        PyObject *item = PyTuple_GET_ITEM(plan_obj, i);
        if (!PyTuple_Check(item) || PyTuple_GET_SIZE(item) != 3) {
            PyErr_SetString(PyExc_TypeError, "plan entries are (index, name, kind)");
            goto done;
        }
        plan[i].index = PyLong_AsSsize_t(PyTuple_GET_ITEM(item, 0));
        plan[i].kind = (int)PyLong_AsLong(PyTuple_GET_ITEM(item, 2));
        plan[i].key = utf8_of(PyTuple_GET_ITEM(item, 1), &plan[i].key_len);
        if (plan[i].key == NULL || PyErr_Occurred()) {
            goto done;
        }
        if (plan[i].index < 0) {
            PyErr_SetString(PyExc_ValueError, "negative plan index");
            goto done;
        }
    }
    /* service name -> list of records, in first-seen order (dicts keep it) */
    groups = PyDict_New();
    if (groups == NULL) {
        goto done;
    }
    Py_ssize_t n = PyList_GET_SIZE(records);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *record = PyList_GET_ITEM(records, i);
        if (!PyTuple_Check(record) || PyTuple_GET_SIZE(record) <= positions[5]) {
            PyErr_SetString(PyExc_TypeError, "records are AuditRecord tuples");
            goto done;
        }
        PyObject *service = PyTuple_GET_ITEM(record, positions[5]);
        PyObject *members = PyDict_GetItemWithError(groups, service);
        if (members == NULL) {
            if (PyErr_Occurred()) {
                goto done;
            }
            members = PyList_New(0);
            if (members == NULL) {
                goto done;
            }
            int rc = PyDict_SetItem(groups, service, members);
            Py_DECREF(members);
            if (rc < 0) {
                goto done;
            }
        }
        if (PyList_Append(members, record) < 0) {
            goto done;
        }
    }
    Py_ssize_t pos = 0;
    PyObject *service, *members;
    while (PyDict_Next(groups, &pos, &service, &members)) {
        group.len = 0;
        for (Py_ssize_t i = 0; i < PyList_GET_SIZE(members); i++) {
            rec.len = 0;
            if (put_log_record(&rec, PyList_GET_ITEM(members, i), plan, n_plan,
                               positions[0], positions[1], positions[2], positions[3],
                               positions[4], dumps) < 0) {
                goto done;
            }
            if (ob_field(&group, 0x12, rec.p, rec.len) < 0) {  /* ScopeLogs.log_records */
                goto done;
            }
        }
        /* ScopeLogs: scope {name}, log records */
        Py_ssize_t scope_msg = scope_len ? string_value_size(scope_len) : 0;
        Py_ssize_t scope_logs = 1 + varint_size((uint64_t)scope_msg) + scope_msg + group.len;
        /* Resource {attributes: [service.name]} when the group has a service name */
        rec.len = 0;
        if (service != Py_None) {
            if (put_attribute(&rec, 0x0a, "service.name", 12, service) < 0) {
                goto done;
            }
            if (!PyUnicode_Check(service)) {  /* string_value = service (not str()) */
                PyErr_SetString(PyExc_TypeError, "service name is not a str");
                goto done;
            }
        }
        Py_ssize_t resource_logs = 1 + varint_size((uint64_t)scope_logs) + scope_logs;
        if (service != Py_None) {
            resource_logs += 1 + varint_size((uint64_t)rec.len) + rec.len;
        }
        if (ob_byte(&out, 0x0a) < 0 || ob_varint(&out, (uint64_t)resource_logs) < 0) {
            goto done;
        }
        if (service != Py_None && ob_field(&out, 0x0a, rec.p, rec.len) < 0) {
            goto done;
        }
        if (ob_byte(&out, 0x12) < 0 || ob_varint(&out, (uint64_t)scope_logs) < 0
            || ob_byte(&out, 0x0a) < 0 || ob_varint(&out, (uint64_t)scope_msg) < 0
            || (scope_len && ob_field(&out, 0x0a, scope, scope_len) < 0)
            || ob_put(&out, group.p, group.len) < 0) {
            goto done;
        }
    }
    result = PyBytes_FromStringAndSize(out.p ? out.p : "", out.len);
done:
    PyMem_Free(plan);
    PyMem_Free(rec.p);
    PyMem_Free(group.p);
    PyMem_Free(out.p);
    Py_XDECREF(groups);
    return result;
}

/* ------------------------------------------------------------------ decoding
 *
 * otlp_decode_logs() is the counterpart of otel_audit.server.otlp.python_log_fields():
 * from the bytes of an ExportLogsServiceRequest the protobuf runtime has already parsed
 * (so validated: UTF-8 strings, well-formed lengths), one tuple per log record with the
 * values the receiver's conversion reads -- attributes as a dict (AnyValue as
 * server/otlp.py's any_value() converts it), event name, body, times, trace and span
 * IDs -- without a Python object per KeyValue and AnyValue. Anything it does not
 * expect (a known field with another wire type, a singular message field given twice,
 * which the runtime would merge) makes it return None, and the caller reads the parsed
 * message instead. tests/server/test_otlp_decode.py holds both equal.
 */

typedef struct {
    const unsigned char *p;
    const unsigned char *end;
} rd;

/* 0 ok, -1 malformed (no Python error set) */
static int
rd_varint(rd *r, uint64_t *out)
{
    uint64_t v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
        if (r->p >= r->end) {
            return -1;
        }
        unsigned char c = *r->p++;
        v |= (uint64_t)(c & 0x7F) << shift;
        if (!(c & 0x80)) {
            *out = v;
            return 0;
        }
    }
    return -1;
}

static int
rd_fixed64(rd *r, uint64_t *out)
{
    if (r->end - r->p < 8) {
        return -1;
    }
    uint64_t v = 0;
    for (int i = 0; i < 8; i++) {
        v |= (uint64_t)r->p[i] << (8 * i);
    }
    r->p += 8;
    *out = v;
    return 0;
}

/* the bytes of a length-delimited field */
static int
rd_len(rd *r, rd *sub)
{
    uint64_t n;
    if (rd_varint(r, &n) < 0 || n > (uint64_t)(r->end - r->p)) {
        return -1;
    }
    sub->p = r->p;
    sub->end = r->p + n;
    r->p += n;
    return 0;
}

/* skip a field of wire type ``wt`` */
static int
rd_skip(rd *r, unsigned wt)
{
    uint64_t v;
    rd sub;
    switch (wt) {
    case 0:
        return rd_varint(r, &v);
    case 1:
        return rd_fixed64(r, &v);
    case 2:
        return rd_len(r, &sub);
    case 5:
        if (r->end - r->p < 4) {
            return -1;
        }
        r->p += 4;
        return 0;
    default:  /* groups and anything else: let the runtime's view decide */
        return -1;
    }
}

/* return codes of the decoders: 0 ok, -1 Python error, -2 not handled here (fallback) */
#define FALLBACK (-2)

static int decode_kvlist(rd *r, PyObject *dict);

static PyObject *
text_of(rd *s)
{
    return PyUnicode_DecodeUTF8((const char *)s->p, s->end - s->p, "strict");
}

/* AnyValue -> Python value (None when empty), as server/otlp.py's any_value() */
static int
decode_any(rd *r, PyObject **out)
{
    PyObject *value = NULL;
    int seen = 0;
    *out = NULL;
    while (r->p < r->end) {
        uint64_t key;
        if (rd_varint(r, &key) < 0) {
            goto fallback;
        }
        unsigned field = (unsigned)(key >> 3), wt = (unsigned)(key & 7);
        if (field >= 1 && field <= 7) {
            if (seen) {  /* two members of the oneof: the runtime keeps/merges; not here */
                goto fallback;
            }
            seen = 1;
        }
        uint64_t v;
        rd sub;
        switch (field) {
        case 1:  /* string_value */
            if (wt != 2 || rd_len(r, &sub) < 0) {
                goto fallback;
            }
            value = text_of(&sub);
            break;
        case 2:  /* bool_value */
            if (wt != 0 || rd_varint(r, &v) < 0) {
                goto fallback;
            }
            value = Py_NewRef(v ? Py_True : Py_False);
            break;
        case 3:  /* int_value */
            if (wt != 0 || rd_varint(r, &v) < 0) {
                goto fallback;
            }
            value = PyLong_FromLongLong((long long)v);
            break;
        case 4: {  /* double_value */
            if (wt != 1 || rd_fixed64(r, &v) < 0) {
                goto fallback;
            }
            double d;
            memcpy(&d, &v, 8);
            value = PyFloat_FromDouble(d);
            break;
        }
        case 5: {  /* array_value: ArrayValue{repeated AnyValue values = 1} */
            if (wt != 2 || rd_len(r, &sub) < 0) {
                goto fallback;
            }
            value = PyList_New(0);
            if (value == NULL) {
                return -1;
            }
            while (sub.p < sub.end) {
                uint64_t k;
                rd item;
                if (rd_varint(&sub, &k) < 0) {
                    goto fallback;
                }
                if ((k >> 3) != 1) {
                    if (rd_skip(&sub, (unsigned)(k & 7)) < 0) {
                        goto fallback;
                    }
                    continue;
                }
                if ((k & 7) != 2 || rd_len(&sub, &item) < 0) {
                    goto fallback;
                }
                PyObject *element;
                int rc = decode_any(&item, &element);
                if (rc < 0) {
                    Py_DECREF(value);
                    return rc;
                }
                rc = PyList_Append(value, element);
                Py_DECREF(element);
                if (rc < 0) {
                    Py_DECREF(value);
                    return -1;
                }
            }
            break;
        }
        case 6: {  /* kvlist_value: KeyValueList{repeated KeyValue values = 1} */
            if (wt != 2 || rd_len(r, &sub) < 0) {
                goto fallback;
            }
            value = PyDict_New();
            if (value == NULL) {
                return -1;
            }
            int rc = decode_kvlist(&sub, value);
            if (rc < 0) {
                Py_DECREF(value);
                return rc;
            }
            break;
        }
        case 7: {  /* bytes_value: stored as base64 text, as OTLP/JSON spells bytes */
            if (wt != 2 || rd_len(r, &sub) < 0) {
                goto fallback;
            }
            static PyObject *b64encode = NULL;
            if (b64encode == NULL) {
                PyObject *module = PyImport_ImportModule("base64");
                if (module == NULL) {
                    return -1;
                }
                b64encode = PyObject_GetAttrString(module, "b64encode");
                Py_DECREF(module);
                if (b64encode == NULL) {
                    return -1;
                }
            }
            PyObject *raw = PyBytes_FromStringAndSize((const char *)sub.p, sub.end - sub.p);
            if (raw == NULL) {
                return -1;
            }
            PyObject *encoded = PyObject_CallOneArg(b64encode, raw);
            Py_DECREF(raw);
            if (encoded == NULL || !PyBytes_Check(encoded)) {
                Py_XDECREF(encoded);
                return -1;
            }
            value = PyUnicode_DecodeASCII(PyBytes_AS_STRING(encoded),
                                          PyBytes_GET_SIZE(encoded), "strict");
            Py_DECREF(encoded);
            break;
        }
        default:
            if (rd_skip(r, wt) < 0) {
                goto fallback;
            }
            continue;
        }
        if (value == NULL) {
            return -1;
        }
    }
    *out = value != NULL ? value : Py_NewRef(Py_None);
    return 0;
fallback:
    if (PyErr_Occurred()) {
        PyErr_Clear();
    }
    Py_XDECREF(value);
    return FALLBACK;
}

/* KeyValue{key = 1, value = 2} into ``dict`` (a later duplicate key wins) */
static int
decode_keyvalue(rd *r, PyObject *dict)
{
    PyObject *key = NULL, *value = NULL;
    int rc = FALLBACK;
    while (r->p < r->end) {
        uint64_t k;
        rd sub;
        if (rd_varint(r, &k) < 0) {
            goto done;
        }
        unsigned field = (unsigned)(k >> 3), wt = (unsigned)(k & 7);
        if (field == 1) {
            if (wt != 2 || key != NULL || rd_len(r, &sub) < 0) {
                goto done;
            }
            key = text_of(&sub);
            if (key == NULL) {
                rc = -1;
                goto done;
            }
        }
        else if (field == 2) {
            if (wt != 2 || value != NULL || rd_len(r, &sub) < 0) {
                goto done;
            }
            int got = decode_any(&sub, &value);
            if (got < 0) {
                rc = got;
                goto done;
            }
        }
        else if (rd_skip(r, wt) < 0) {
            goto done;
        }
    }
    if (key == NULL) {
        key = PyUnicode_FromStringAndSize("", 0);
        if (key == NULL) {
            rc = -1;
            goto done;
        }
    }
    rc = PyDict_SetItem(dict, key, value != NULL ? value : Py_None) < 0 ? -1 : 0;
done:
    Py_XDECREF(key);
    Py_XDECREF(value);
    return rc;
}

/* repeated KeyValue (field 1 of KeyValueList, Resource) into ``dict`` */
static int
decode_kvlist(rd *r, PyObject *dict)
{
    while (r->p < r->end) {
        uint64_t k;
        rd sub;
        if (rd_varint(r, &k) < 0) {
            return FALLBACK;
        }
        if ((k >> 3) == 1) {
            if ((k & 7) != 2 || rd_len(r, &sub) < 0) {
                return FALLBACK;
            }
            int rc = decode_keyvalue(&sub, dict);
            if (rc < 0) {
                return rc;
            }
        }
        else if (rd_skip(r, (unsigned)(k & 7)) < 0) {
            return FALLBACK;
        }
    }
    return 0;
}

/* One LogRecord: (resource, (r, s, l), attributes, event_name, body, time_unix_nano,
 * observed_time_unix_nano, trace_id, span_id) appended to ``out`` */
static int
decode_log_record(rd *r, PyObject *resource, Py_ssize_t ri, Py_ssize_t si, Py_ssize_t li,
                  PyObject *out)
{
    uint64_t time_ns = 0, observed_ns = 0;
    rd trace = {NULL, NULL}, span = {NULL, NULL}, event = {NULL, NULL}, body = {NULL, NULL};
    int has_body = 0;
    PyObject *attrs = PyDict_New();
    if (attrs == NULL) {
        return -1;
    }
    int rc = FALLBACK;
    while (r->p < r->end) {
        uint64_t k;
        rd sub;
        if (rd_varint(r, &k) < 0) {
            goto done;
        }
        unsigned field = (unsigned)(k >> 3), wt = (unsigned)(k & 7);
        switch (field) {
        case 1:
        case 11:
            if (wt != 1 || rd_fixed64(r, field == 1 ? &time_ns : &observed_ns) < 0) {
                goto done;
            }
            break;
        case 5:
            if (wt != 2 || has_body || rd_len(r, &body) < 0) {
                goto done;
            }
            has_body = 1;
            break;
        case 6: {
            if (wt != 2 || rd_len(r, &sub) < 0) {
                goto done;
            }
            int got = decode_keyvalue(&sub, attrs);
            if (got < 0) {
                rc = got;
                goto done;
            }
            break;
        }
        case 9:
        case 10:
        case 12:
            if (wt != 2 || rd_len(r, field == 9 ? &trace : field == 10 ? &span : &event) < 0) {
                goto done;
            }
            break;
        default:
            if (rd_skip(r, wt) < 0) {
                goto done;
            }
        }
    }
    PyObject *body_value = NULL;
    if (has_body) {
        int got = decode_any(&body, &body_value);
        if (got < 0) {
            rc = got;
            goto done;
        }
    }
    else {
        body_value = Py_NewRef(Py_None);
    }
    PyObject *item = Py_BuildValue(
        "(O(nnn)ONNKKy#y#)", resource, ri, si, li, attrs,
        event.p ? PyUnicode_DecodeUTF8((const char *)event.p, event.end - event.p, "strict")
                : PyUnicode_FromStringAndSize("", 0),
        body_value, (unsigned long long)time_ns, (unsigned long long)observed_ns,
        trace.p ? (const char *)trace.p : "", (Py_ssize_t)(trace.p ? trace.end - trace.p : 0),
        span.p ? (const char *)span.p : "", (Py_ssize_t)(span.p ? span.end - span.p : 0));
    if (item == NULL) {
        rc = -1;
        goto done;
    }
    rc = PyList_Append(out, item) < 0 ? -1 : 0;
    Py_DECREF(item);
done:
    Py_DECREF(attrs);
    return rc;
}

static int
decode_scope_logs(rd *r, PyObject *resource, Py_ssize_t ri, Py_ssize_t si, PyObject *out)
{
    Py_ssize_t li = 0;
    while (r->p < r->end) {
        uint64_t k;
        rd sub;
        if (rd_varint(r, &k) < 0) {
            return FALLBACK;
        }
        if ((k >> 3) == 2) {
            if ((k & 7) != 2 || rd_len(r, &sub) < 0) {
                return FALLBACK;
            }
            int rc = decode_log_record(&sub, resource, ri, si, li++, out);
            if (rc < 0) {
                return rc;
            }
        }
        else if (rd_skip(r, (unsigned)(k & 7)) < 0) {
            return FALLBACK;
        }
    }
    return 0;
}

/* ResourceLogs: the resource's attributes first (wherever the field is), then scopes */
static int
decode_resource_logs(rd r, Py_ssize_t ri, PyObject *out)
{
    rd scan = r, resource_bytes = {NULL, NULL};
    while (scan.p < scan.end) {
        uint64_t k;
        rd sub;
        if (rd_varint(&scan, &k) < 0) {
            return FALLBACK;
        }
        if ((k >> 3) == 1) {
            if ((k & 7) != 2 || resource_bytes.p != NULL || rd_len(&scan, &sub) < 0) {
                return FALLBACK;  /* a resource given twice is merged by the runtime */
            }
            resource_bytes = sub;
        }
        else if (rd_skip(&scan, (unsigned)(k & 7)) < 0) {
            return FALLBACK;
        }
    }
    PyObject *resource = PyDict_New();
    if (resource == NULL) {
        return -1;
    }
    int rc = 0;
    if (resource_bytes.p != NULL) {
        rc = decode_kvlist(&resource_bytes, resource);  /* Resource.attributes = 1 */
    }
    Py_ssize_t si = 0;
    while (rc == 0 && r.p < r.end) {
        uint64_t k;
        rd sub;
        if (rd_varint(&r, &k) < 0) {
            rc = FALLBACK;
            break;
        }
        if ((k >> 3) == 2) {
            if ((k & 7) != 2 || rd_len(&r, &sub) < 0) {
                rc = FALLBACK;
                break;
            }
            rc = decode_scope_logs(&sub, resource, ri, si++, out);
        }
        else if (rd_skip(&r, (unsigned)(k & 7)) < 0) {
            rc = FALLBACK;
        }
    }
    Py_DECREF(resource);
    return rc;
}

/* otlp_decode_logs(payload: bytes) -> list[tuple] | None */
PyObject *
otlp_decode_logs(PyObject *Py_UNUSED(module), PyObject *payload)
{
    if (!PyBytes_Check(payload)) {
        PyErr_SetString(PyExc_TypeError, "otlp_decode_logs(payload: bytes)");
        return NULL;
    }
    rd r = {(const unsigned char *)PyBytes_AS_STRING(payload),
            (const unsigned char *)PyBytes_AS_STRING(payload) + PyBytes_GET_SIZE(payload)};
    PyObject *out = PyList_New(0);
    if (out == NULL) {
        return NULL;
    }
    Py_ssize_t ri = 0;
    int rc = 0;
    while (rc == 0 && r.p < r.end) {
        uint64_t k;
        rd sub;
        if (rd_varint(&r, &k) < 0) {
            rc = FALLBACK;
            break;
        }
        if ((k >> 3) == 1) {
            if ((k & 7) != 2 || rd_len(&r, &sub) < 0) {
                rc = FALLBACK;
                break;
            }
            rc = decode_resource_logs(sub, ri++, out);
        }
        else if (rd_skip(&r, (unsigned)(k & 7)) < 0) {
            rc = FALLBACK;
        }
    }
    if (rc == 0) {
        return out;
    }
    Py_DECREF(out);
    if (rc == FALLBACK) {
        if (PyErr_Occurred()) {
            PyErr_Clear();
        }
        Py_RETURN_NONE;
    }
    return NULL;
}

/* ------------------------------------------------------------------------------------
 * otlp_attributes_to_fields(attributes, resource_attributes, table, scan_once, add_notes)
 *     -> dict | NotImplemented
 *
 * The compiled twin of otel_audit.mapping._python_attributes_to_fields: the same dict
 * (same keys, values, key order, notes), built in one C pass. ``table`` is mapping's
 * _ATTRIBUTE_TABLE (attribute name -> (field, preference rank, kind): kind 1 a JSON
 * field, 2 a flag); ``scan_once`` the scanner of mapping's JSON decoder (what its
 * decode() calls, with the same whitespace rules around it); ``add_notes`` mapping's
 * _add_notes, called as the Python function calls it. Where the Python function could
 * run code of the caller's objects before it is done (attributes that are not an exact
 * dict, a key that is not an exact str, a JSON or flag value that is a str subclass),
 * nothing has happened yet and NotImplemented answers: the caller then runs the Python
 * function. tests/test_mapping_compiled.py holds both equal on hostile input.
 * ---------------------------------------------------------------------------------- */

static PyObject *s_too_deep, *s_text, *s_field, *s_kind, *s_stored, *s_service_name,
    *s_service_name_attr, *s_strip, *s_lower, *s_true, *s_one, *s_yes, *s_false,
    *s_zero, *s_no;

static int
a2f_init_strings(void)
{
    if (s_too_deep != NULL) {
        return 0;
    }
#define INTERN(var, text)                                 \
    if ((var = PyUnicode_InternFromString(text)) == NULL) \
        return -1;
    INTERN(s_text, "text")
    INTERN(s_field, "field")
    INTERN(s_kind, "kind")
    INTERN(s_stored, "stored")
    INTERN(s_service_name, "service_name")
    INTERN(s_service_name_attr, "service.name")
    INTERN(s_strip, "strip")
    INTERN(s_lower, "lower")
    INTERN(s_true, "true")
    INTERN(s_one, "1")
    INTERN(s_yes, "yes")
    INTERN(s_false, "false")
    INTERN(s_zero, "0")
    INTERN(s_no, "no")
    INTERN(s_too_deep, "json_too_deep") /* last: the guard above */
#undef INTERN
    return 0;
}

static int
json_start(Py_UCS4 c)
{
    return c == '{' || c == '[' || c == '"' || c == '-' || (c >= '0' && c <= '9') ||
           c == 't' || c == 'f' || c == 'n';
}

static int
json_space(Py_UCS4 c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

/* mapping._as_json: a new reference to the value to store, NULL with an error set */
static PyObject *
a2f_as_json(PyObject *value, PyObject *field, PyObject *scan, PyObject *notes)
{
    if (!PyUnicode_Check(value)) {
        return Py_NewRef(value);
    }
    Py_ssize_t n = PyUnicode_GET_LENGTH(value);
    int kind = PyUnicode_KIND(value);
    const void *data = PyUnicode_DATA(value);
    int parse = 0;
    if (n > 0 && json_start(PyUnicode_READ(kind, data, 0))) {
        parse = 1;
    }
    else {
        /* value.lstrip()[:1] in _JSON_START: str.lstrip strips what str.isspace() says */
        for (Py_ssize_t i = 0; i < n; i++) {
            Py_UCS4 c = PyUnicode_READ(kind, data, i);
            if (!Py_UNICODE_ISSPACE(c)) {
                parse = json_start(c);
                break;
            }
        }
    }
    if (!parse) {
        return Py_NewRef(value);
    }
    /* JSONDecoder.decode: skip JSON whitespace, scan_once, skip JSON whitespace, the
     * text must end there; StopIteration and any ValueError mean "not JSON" */
    Py_ssize_t idx = 0;
    while (idx < n && json_space(PyUnicode_READ(kind, data, idx))) {
        idx++;
    }
    PyObject *pos = PyLong_FromSsize_t(idx);
    if (pos == NULL) {
        return NULL;
    }
    PyObject *result = PyObject_CallFunctionObjArgs(scan, value, pos, NULL);
    Py_DECREF(pos);
    if (result == NULL) {
        if (PyErr_ExceptionMatches(PyExc_StopIteration) ||
            PyErr_ExceptionMatches(PyExc_ValueError)) {
            PyErr_Clear();
            return Py_NewRef(value);
        }
        if (PyErr_ExceptionMatches(PyExc_RecursionError)) {
            PyErr_Clear();
            PyObject *note = PyDict_New();
            if (note == NULL || PyDict_SetItem(note, s_field, field) < 0 ||
                PyDict_SetItem(note, s_kind, s_too_deep) < 0 ||
                PyDict_SetItem(note, s_stored, s_text) < 0 || PyList_Append(notes, note) < 0) {
                Py_XDECREF(note);
                return NULL;
            }
            Py_DECREF(note);
            return Py_NewRef(value);
        }
        return NULL;
    }
    if (!PyTuple_Check(result) || PyTuple_GET_SIZE(result) != 2) {
        Py_DECREF(result);
        PyErr_SetString(PyExc_SystemError, "scan_once did not answer (value, end)");
        return NULL;
    }
    Py_ssize_t end = PyLong_AsSsize_t(PyTuple_GET_ITEM(result, 1));
    if (end == -1 && PyErr_Occurred()) {
        Py_DECREF(result);
        return NULL;
    }
    while (end < n && json_space(PyUnicode_READ(kind, data, end))) {
        end++;
    }
    if (end != n) { /* "Extra data": not JSON, stored as the text it is */
        Py_DECREF(result);
        return Py_NewRef(value);
    }
    PyObject *doc = Py_NewRef(PyTuple_GET_ITEM(result, 0));
    Py_DECREF(result);
    return doc;
}

/* mapping._as_bool: a new reference, NULL with an error set */
static PyObject *
a2f_as_bool(PyObject *value)
{
    if (!PyUnicode_Check(value)) {
        return Py_NewRef(value);
    }
    PyObject *stripped = PyObject_CallMethodNoArgs(value, s_strip);
    if (stripped == NULL) {
        return NULL;
    }
    PyObject *lowered = PyObject_CallMethodNoArgs(stripped, s_lower);
    Py_DECREF(stripped);
    if (lowered == NULL) {
        return NULL;
    }
    PyObject *answer = value;
    if (PyUnicode_Check(lowered)) {
        if (PyUnicode_Compare(lowered, s_true) == 0 || PyUnicode_Compare(lowered, s_one) == 0 ||
            PyUnicode_Compare(lowered, s_yes) == 0) {
            answer = Py_True;
        }
        else if (PyUnicode_Compare(lowered, s_false) == 0 ||
                 PyUnicode_Compare(lowered, s_zero) == 0 ||
                 PyUnicode_Compare(lowered, s_no) == 0) {
            answer = Py_False;
        }
    }
    Py_DECREF(lowered);
    return Py_NewRef(answer);
}

#define A2F_MAX 64 /* JSON or flag fields in one call: more than the record has */

PyObject *
otlp_attributes_to_fields(PyObject *Py_UNUSED(module), PyObject *const *args,
                          Py_ssize_t nargs)
{
    if (nargs != 5 || !PyDict_CheckExact(args[2])) {
        PyErr_SetString(PyExc_TypeError,
                        "otlp_attributes_to_fields(attributes, resource_attributes, "
                        "table: dict, scan_once, add_notes)");
        return NULL;
    }
    PyObject *attributes = args[0], *resource = args[1], *table = args[2];
    PyObject *scan = args[3], *add_notes = args[4];
    if ((attributes != Py_None && !PyDict_CheckExact(attributes)) ||
        (resource != Py_None && !PyDict_CheckExact(resource))) {
        Py_RETURN_NOTIMPLEMENTED;
    }
    if (a2f_init_strings() < 0) {
        return NULL;
    }
    if (resource != Py_None) { /* its service.name lookup compares no caller's key */
        Py_ssize_t pos = 0;
        PyObject *name, *value;
        while (PyDict_Next(resource, &pos, &name, &value)) {
            if (!PyUnicode_CheckExact(name)) {
                Py_RETURN_NOTIMPLEMENTED;
            }
        }
    }
    PyObject *fields = PyDict_New();
    if (fields == NULL) {
        return NULL;
    }
    PyObject *ranks = NULL; /* field -> rank of the alternative name that set it */
    PyObject *json_fields[A2F_MAX], *bool_fields[A2F_MAX]; /* borrowed from the table */
    Py_ssize_t n_json = 0, n_bool = 0;
    PyObject *notes = NULL;
    if (attributes != Py_None) {
        Py_ssize_t pos = 0;
        PyObject *name, *value;
        /* pass 1: nothing of the caller's runs in the loop below when this holds */
        while (PyDict_Next(attributes, &pos, &name, &value)) {
            if (!PyUnicode_CheckExact(name)) {
                goto not_here;
            }
        }
        pos = 0;
        while (PyDict_Next(attributes, &pos, &name, &value)) {
            PyObject *hit = PyDict_GetItemWithError(table, name);
            if (hit == NULL) {
                if (PyErr_Occurred()) {
                    goto error;
                }
                continue;
            }
            if (value == Py_None) {
                continue;
            }
            if (!PyTuple_CheckExact(hit) || PyTuple_GET_SIZE(hit) != 3) {
                PyErr_SetString(PyExc_TypeError, "table values must be (field, rank, kind)");
                goto error;
            }
            PyObject *field = PyTuple_GET_ITEM(hit, 0);
            long rank = PyLong_AsLong(PyTuple_GET_ITEM(hit, 1));
            long kind = PyLong_AsLong(PyTuple_GET_ITEM(hit, 2));
            if ((rank == -1 || kind == -1) && PyErr_Occurred()) {
                goto error;
            }
            if (!PyUnicode_CheckExact(field)) {
                PyErr_SetString(PyExc_TypeError, "table fields must be str");
                goto error;
            }
            if (kind && PyUnicode_Check(value) && !PyUnicode_CheckExact(value)) {
                goto not_here; /* its methods are the caller's: the Python function */
            }
            int present = PyDict_Contains(fields, field);
            if (present < 0) {
                goto error;
            }
            if (rank) { /* an alternative name: a preferred attribute of the field wins */
                if (ranks == NULL && (ranks = PyDict_New()) == NULL) {
                    goto error;
                }
                if (present) {
                    PyObject *had = PyDict_GetItemWithError(ranks, field);
                    long had_rank = 0;
                    if (had != NULL) {
                        had_rank = PyLong_AsLong(had);
                        if (had_rank == -1 && PyErr_Occurred()) {
                            goto error;
                        }
                    }
                    else if (PyErr_Occurred()) {
                        goto error;
                    }
                    if (had_rank < rank) {
                        continue;
                    }
                }
                if (PyDict_SetItem(ranks, field, PyTuple_GET_ITEM(hit, 1)) < 0) {
                    goto error;
                }
            }
            else if (ranks != NULL && PyDict_GET_SIZE(ranks)) {
                int ranked = PyDict_Contains(ranks, field);
                if (ranked < 0 || (ranked && PyDict_DelItem(ranks, field) < 0)) {
                    goto error;
                }
            }
            if (kind && !present) {
                if (kind == 1) {
                    if (n_json == A2F_MAX) {
                        goto not_here;
                    }
                    json_fields[n_json++] = field;
                }
                else {
                    if (n_bool == A2F_MAX) {
                        goto not_here;
                    }
                    bool_fields[n_bool++] = field;
                }
            }
            if (PyDict_SetItem(fields, field, value) < 0) {
                goto error;
            }
        }
    }
    Py_CLEAR(ranks);
    if (n_json) {
        /* notes in field order: the field names sorted (str order is code point order) */
        for (Py_ssize_t i = 1; i < n_json; i++) {
            PyObject *x = json_fields[i];
            Py_ssize_t j = i;
            while (j > 0 && PyUnicode_Compare(json_fields[j - 1], x) > 0) {
                json_fields[j] = json_fields[j - 1];
                j--;
            }
            json_fields[j] = x;
        }
        if ((notes = PyList_New(0)) == NULL) {
            goto error;
        }
        for (Py_ssize_t i = 0; i < n_json; i++) {
            PyObject *value = PyDict_GetItemWithError(fields, json_fields[i]);
            if (value == NULL) {
                if (!PyErr_Occurred()) {
                    PyErr_SetObject(PyExc_KeyError, json_fields[i]);
                }
                goto error;
            }
            Py_INCREF(value);
            PyObject *doc = a2f_as_json(value, json_fields[i], scan, notes);
            Py_DECREF(value);
            if (doc == NULL) {
                goto error;
            }
            int rc = PyDict_SetItem(fields, json_fields[i], doc);
            Py_DECREF(doc);
            if (rc < 0) {
                goto error;
            }
        }
        if (PyList_GET_SIZE(notes)) {
            PyObject *done = PyObject_CallFunctionObjArgs(add_notes, fields, notes, NULL);
            if (done == NULL) {
                goto error;
            }
            Py_DECREF(done);
        }
        Py_CLEAR(notes);
    }
    for (Py_ssize_t i = 0; i < n_bool; i++) {
        PyObject *value = PyDict_GetItemWithError(fields, bool_fields[i]);
        if (value == NULL) {
            if (!PyErr_Occurred()) {
                PyErr_SetObject(PyExc_KeyError, bool_fields[i]);
            }
            goto error;
        }
        PyObject *flag = a2f_as_bool(value);
        if (flag == NULL) {
            goto error;
        }
        int rc = PyDict_SetItem(fields, bool_fields[i], flag);
        Py_DECREF(flag);
        if (rc < 0) {
            goto error;
        }
    }
    if (resource != Py_None && PyDict_GET_SIZE(resource)) {
        PyObject *service = PyDict_GetItemWithError(resource, s_service_name_attr);
        if (service == NULL && PyErr_Occurred()) {
            goto error;
        }
        if (service != NULL && service != Py_None) {
            Py_INCREF(service);
            PyObject *text = PyObject_Str(service);
            Py_DECREF(service);
            if (text == NULL) {
                goto error;
            }
            int rc = PyDict_SetItem(fields, s_service_name, text);
            Py_DECREF(text);
            if (rc < 0) {
                goto error;
            }
        }
    }
    return fields;
not_here:
    Py_XDECREF(ranks);
    Py_DECREF(fields);
    Py_RETURN_NOTIMPLEMENTED;
error:
    Py_XDECREF(ranks);
    Py_XDECREF(notes);
    Py_DECREF(fields);
    return NULL;
}
