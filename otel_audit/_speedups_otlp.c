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

typedef struct {
    char *p;
    Py_ssize_t len;
    Py_ssize_t cap;
} obuf;

static int
ob_reserve(obuf *b, Py_ssize_t more)
{
    if (b->len + more <= b->cap) {
        return 0;
    }
    Py_ssize_t cap = b->cap ? b->cap : 256;
    while (cap < b->len + more) {
        cap *= 2;
    }
    char *p = PyMem_Realloc(b->p, (size_t)cap);
    if (p == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    b->p = p;
    b->cap = cap;
    return 0;
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
