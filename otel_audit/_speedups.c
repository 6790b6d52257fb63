/* Compiled hot paths of otel_audit (optional: without the module the Python paths run).
 *
 * seal_plain() is the counterpart of ChainSealer._seal_columns
 * (otel_audit/integrity/chain.py): it seals a plain batch -- records that need neither
 * canonical numbers nor personal-key handling -- exactly as the Python code does, one
 * record after the other, without the interpreter's per-record overhead. It writes the
 * bytes the Python code's orjson call writes, and hashes (SHA-256, HMAC-SHA256) with
 * OpenSSL's libcrypto, the library behind hashlib. The payload and personal texts go
 * straight into one buffer (json_item() writes the types a plain batch holds; orjson
 * writes a record holding any other value), then the batch is hashed with the GIL
 * released: the store thread and the application's threads run meanwhile.
 * tests/pipeline/test_batch_paths.py and tests/integrity/test_seal_values.py hold the
 * compiled and Python paths equal.
 */
#define _GNU_SOURCE  /* memmem */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <datetime.h>
#include <openssl/evp.h>

#include "_speedups_buffer.h"

/* AuditRecord field positions (store/writer.py asserts AuditRecord._fields) */
enum {
    R_ID, R_TIMESTAMP, R_ACTION, R_USER_ID, R_CORRELATION_ID, R_TRACE_ID, R_SPAN_ID,
    R_RESOURCE_TYPE, R_RESOURCE_ID, R_RESOURCE_NAME, R_USER_EMAIL, R_TEAM_ID,
    R_CLIENT_IP, R_USER_AGENT, R_REQUEST_PATH, R_REQUEST_METHOD, R_REQUEST_ID,
    R_OLD_VALUES, R_NEW_VALUES, R_CHANGES, R_DATA_CLASSIFICATION, R_REQUIRES_REVIEW,
    R_SUCCESS, R_ERROR_MESSAGE, R_CONTEXT, R_SERVICE_NAME, R_ACTING_AS,
    R_SCHEMA_VERSION, R_AUTH_METHOD, R_DELEGATION_CHAIN, R_FIELDS
};

#define N_BODY 24     /* hashed fields: HASHED_FIELDS (format 3) and the row's first ones */
#define N_JSON 5      /* JSON_FIELDS: old_values, new_values, changes, context, delegation */
#define N_ROW 37      /* ROW_COLUMNS */
#define ROW_HASH 33   /* where ROW_COLUMNS has hash, auth_method, delegation_chain, mac */
#define ROW_AUTH 34
#define ROW_DELEGATION 35
#define ROW_MAC 36
#define N_PREPARED 10
#define HASH_WITHOUT_GIL 32  /* records from which seal_plain hashes without the GIL */

/* ``value`` in ``width`` decimal digits, zero-padded, at ``out`` (0 <= value < 10^width) */
static void
put_digits(char *out, int value, int width)
{
    for (int i = width - 1; i >= 0; i--) {
        out[i] = (char)('0' + value % 10);
        value /= 10;
    }
}

/* ``x`` in decimal at ``out`` (room for 20 characters); returns the length (what
 * snprintf's "%lld" gives, without its cost on every row) */
static int
put_ll(char *out, long long x)
{
    char tmp[20];
    int n = 0;
    unsigned long long u = x < 0 ? 0ULL - (unsigned long long)x : (unsigned long long)x;
    do {
        tmp[n++] = (char)('0' + u % 10);
        u /= 10;
    } while (u != 0);
    int len = 0;
    if (x < 0) {
        out[len++] = '-';
    }
    while (n > 0) {
        out[len++] = tmp[--n];
    }
    return len;
}

/* "YYYY-MM-DD HH:MM:SS.ffffff": what isoformat(" ", "microseconds")[:26] gives */
static PyObject *
timestamp_text(PyObject *ts)
{
    char buf[26];
    if (!PyDateTime_Check(ts)) {
        PyErr_SetString(PyExc_TypeError, "timestamp is not a datetime");
        return NULL;
    }
    /* datetime's years are 1..9999: every field fits its width */
    const int fields[7] = {
        PyDateTime_GET_YEAR(ts), PyDateTime_GET_MONTH(ts), PyDateTime_GET_DAY(ts),
        PyDateTime_DATE_GET_HOUR(ts), PyDateTime_DATE_GET_MINUTE(ts),
        PyDateTime_DATE_GET_SECOND(ts), PyDateTime_DATE_GET_MICROSECOND(ts),
    };
    static const int widths[7] = {4, 2, 2, 2, 2, 2, 6};
    static const char after[7] = "-- ::.";  /* the separator after each field */
    char *at = buf;
    for (int i = 0; i < 7; i++) {
        put_digits(at, fields[i], widths[i]);
        at += widths[i];
        if (i < 6) {
            *at++ = after[i];
        }
    }
    return PyUnicode_FromStringAndSize(buf, 26);
}

/*
 * Takes a tuple, or an instance of a tuple subclass that adds no fields (a NamedTuple),
 * out of the cycle collector when it can never be part of a reference cycle: CPython's
 * own rule for exact tuples (_PyTuple_MaybeUntrack), each item is an object the
 * collector does not handle (strings, numbers, datetimes, None) or a tuple it has
 * untracked. A container that is untracked *now* does not qualify: a dict holding only
 * strings is untracked until it is given a tracked object, and the caller may still
 * hold it (``d = {}; rec = build_record(context=d); d["self"] = rec`` is a cycle that
 * an untracked record would leak). CPython applies the rule at a tuple's first
 * collection; records queued for the worker live through many collections, each of
 * which would otherwise traverse them all. Anything else stays tracked.
 */
static void
maybe_untrack(PyObject *obj)
{
    PyTypeObject *type = Py_TYPE(obj);
    if (!PyTuple_Check(obj) || !PyObject_GC_IsTracked(obj)
            || type->tp_basicsize != PyTuple_Type.tp_basicsize
            || type->tp_dictoffset != 0 || type->tp_weaklistoffset != 0) {
        return;
    }
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(obj); i++) {
        PyObject *item = PyTuple_GET_ITEM(obj, i);
        if (PyObject_IS_GC(item)
                && (!PyTuple_CheckExact(item) || PyObject_GC_IsTracked(item))) {
            return;
        }
    }
    PyObject_GC_UnTrack(obj);
}

static PyObject *kw_option;      /* ("option",) */

/* dumps(value, option=option) with no keyword dict built per call */
static PyObject *
call_dumps(PyObject *dumps, PyObject *option, PyObject *value)
{
    PyObject *args[2] = {value, option};
    PyObject *out = PyObject_Vectorcall(dumps, args, 1, kw_option);
    if (out != NULL && !PyBytes_Check(out)) {
        Py_DECREF(out);
        PyErr_SetString(PyExc_TypeError, "dumps did not return bytes");
        return NULL;
    }
    return out;
}

/* One record of a batch between the three phases of seal_plain(): where its texts
 * are in the batch's arena, and its hash. */
typedef struct {
    size_t personal, personal_len;  /* salt "\0" personal JSON */
    size_t payload, payload_len;    /* payload JSON, placeholders for prev and digest */
    size_t prev_at;                 /* where the previous hash goes in the payload */
    char hash[64];                  /* the record's hash, hex */
    char mac[64];                   /* HMAC-SHA256 of the hash with the key, hex */
} sealing;

/* A growing buffer of the batch's texts. The JSON is written in as soon as it is made,
 * so the allocator reuses one block instead of holding a batch of bytes objects (freeing
 * those at once made glibc trim and re-fault the heap). */
typedef struct {
    char *data;
    Py_ssize_t len, cap;
} arena;

/* Room for ``more`` bytes at the end of the arena: where they go, or NULL with
 * MemoryError set. */
static char *
arena_room(arena *a, size_t more)
{
    if (buffer_grow(&a->data, a->len, &a->cap, (Py_ssize_t)more, 65536) < 0) {
        return NULL;
    }
    return a->data + a->len;
}

static int
arena_add(arena *a, const char *data, size_t len, size_t *at)
{
    char *out = arena_room(a, len);
    if (out == NULL) {
        return 0;
    }
    memcpy(out, data, len);
    *at = (size_t)a->len;
    a->len += (Py_ssize_t)len;
    return 1;
}

static const char HEX[] = "0123456789abcdef";

static void
to_hex(const unsigned char *md, char *out)
{
    for (int k = 0; k < 32; k++) {
        out[2 * k] = HEX[md[k] >> 4];
        out[2 * k + 1] = HEX[md[k] & 15];
    }
}

/*
 * One payload element as orjson.dumps(value, option=PAYLOAD_OPTIONS) writes it, for the
 * types a plain batch holds: None, exact bool, exact int within 64 bits, exact str
 * (escaped as orjson escapes: '"', '\\' and the control characters, five of them as
 * \b \t \n \f \r, the others as \u00xx; everything else is its UTF-8). 1 when written,
 * 0 for any other value (nothing written, no error set: orjson writes that record),
 * -1 with MemoryError set.
 */
static int
json_item(arena *a, PyObject *v)
{
    static const char SHORT[32] = {
        0, 0, 0, 0, 0, 0, 0, 0, 'b', 't', 'n', 0, 'f', 'r', 0, 0,
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    };
    char *out;
    if (v == Py_None || v == Py_True || v == Py_False) {
        const char *word = v == Py_None ? "null" : v == Py_True ? "true" : "false";
        size_t len = strlen(word);
        if ((out = arena_room(a, len)) == NULL) {
            return -1;
        }
        memcpy(out, word, len);
        a->len += (Py_ssize_t)len;
        return 1;
    }
    if (PyLong_CheckExact(v)) {
        int overflow;
        long long x = PyLong_AsLongLongAndOverflow(v, &overflow);
        if (overflow || (x == -1 && PyErr_Occurred())) {
            PyErr_Clear();
            return 0;  /* past 64 bits: orjson's own rules */
        }
        if ((out = arena_room(a, 20)) == NULL) {
            return -1;
        }
        a->len += put_ll(out, x);
        return 1;
    }
    if (!PyUnicode_CheckExact(v)) {
        return 0;
    }
    Py_ssize_t n;
    const char *text = PyUnicode_AsUTF8AndSize(v, &n);
    if (text == NULL) {  /* a lone surrogate: orjson refuses it */
        PyErr_Clear();
        return 0;
    }
    if ((out = arena_room(a, 6 * (size_t)n + 2)) == NULL) {
        return -1;
    }
    char *at = out;
    *at++ = '"';
    for (Py_ssize_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)text[i];
        if (c >= 0x20 && c != '"' && c != '\\') {
            *at++ = (char)c;
        }
        else if (c >= 0x20) {
            *at++ = '\\';
            *at++ = (char)c;
        }
        else if (SHORT[c]) {
            *at++ = '\\';
            *at++ = SHORT[c];
        }
        else {
            memcpy(at, "\\u00", 4);
            at[4] = HEX[c >> 4];
            at[5] = HEX[c & 15];
            at += 6;
        }
    }
    *at++ = '"';
    a->len += at - out;
    return 1;
}

/* A 64-character placeholder for a hash (chain_hashes() writes the hash over it). */
static const char HASH_SLOT[] = "0000000000000000000000000000000000000000000000000000000000000000";

/*
 * A record's personal text (salt "\0" [user_id, email, ip, agent, acting_as,
 * delegation_chain text, []]) and its payload ([fmt, stream, seq, "<prev>", *body, null,
 * "<digest>"]), written into the arena as seal_plain's orjson calls write them (``head``:
 * the payload's start, [fmt,stream). 1 when written; 0 for a value json_item() leaves to
 * orjson (the arena as it was); -1 with MemoryError set.
 */
static int
record_texts(arena *a, sealing *s, PyObject *salt, PyObject *const *personal,
             PyObject *const *body, const char *head, size_t head_len, long long seq)
{
    Py_ssize_t mark = a->len, salt_len;
    const char *salt_text = PyUnicode_AsUTF8AndSize(salt, &salt_len);
    size_t at;
    int r = -1;
    char digits[24];
    if (salt_text == NULL
            || !arena_add(a, salt_text, (size_t)salt_len, &s->personal)
            || !arena_add(a, "\0[", 2, &at)) {
        return -1;
    }
    for (int k = 0; k < 6; k++) {
        if ((k > 0 && !arena_add(a, ",", 1, &at)) || (r = json_item(a, personal[k])) <= 0) {
            goto out;
        }
    }
    if (!arena_add(a, ",[]]", 4, &at)) {
        goto fail;
    }
    s->personal_len = (size_t)a->len - s->personal;
    if (!arena_add(a, head, head_len, &s->payload) || !arena_add(a, ",", 1, &at)
            || !arena_add(a, digits, (size_t)put_ll(digits, seq), &at)
            || !arena_add(a, ",\"", 2, &at)
            || !arena_add(a, HASH_SLOT, 64, &at) || !arena_add(a, "\",", 2, &s->prev_at)) {
        goto fail;
    }
    s->prev_at -= 64 + s->payload;
    for (int k = 0; k < N_BODY; k++) {
        if ((k > 0 && !arena_add(a, ",", 1, &at)) || (r = json_item(a, body[k])) <= 0) {
            goto out;
        }
    }
    if (!arena_add(a, ",null,\"", 7, &at) || !arena_add(a, HASH_SLOT, 64, &at)
            || !arena_add(a, "\"]", 2, &at)) {
        goto fail;
    }
    s->payload_len = (size_t)a->len - s->payload;
    return 1;
fail:
    r = -1;
out:
    if (r == 0) {
        a->len = mark;
    }
    return r;
}

static const EVP_MD *sha256_md;  /* fetched once: no implicit fetch per digest */

static int
digest(EVP_MD_CTX *ctx, const EVP_MD_CTX *from, const void *data, size_t len,
       unsigned char *md)
{
    unsigned int md_len;
    if (from != NULL) {
        if (!EVP_MD_CTX_copy_ex(ctx, from)) {
            return 0;
        }
    }
    else if (!EVP_DigestInit_ex(ctx, sha256_md, NULL)) {
        return 0;
    }
    return EVP_DigestUpdate(ctx, data, len) && EVP_DigestFinal_ex(ctx, md, &md_len);
}

/*
 * The hash chain of a batch (it touches no Python object). For each record in order:
 * the personal digest (sha256 of its salted personal JSON, hex) and the previous
 * record's hash go into their places in the payload, which is then hashed with SHA-256
 * (format otel-audit/3: the chain is public). With pads (the key's inner and outer pad
 * states), each record's mac is HMAC-SHA256 (RFC 2104) of its hash's 64 hex characters.
 */
static int
chain_hashes(sealing *s, Py_ssize_t n, const char *prev, EVP_MD_CTX *const *pads,
             char *texts)
{
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    if (ctx == NULL) {
        return 0;
    }
    unsigned char md[EVP_MAX_MD_SIZE];
    int ok = 1;
    for (Py_ssize_t i = 0; i < n && ok; i++) {
        char *payload = texts + s[i].payload;
        size_t len = s[i].payload_len;
        ok = digest(ctx, NULL, texts + s[i].personal, s[i].personal_len, md);
        if (!ok) {
            break;
        }
        to_hex(md, payload + len - 66);  /* ...,"<digest>"] */
        memcpy(payload + s[i].prev_at, prev, 64);
        ok = digest(ctx, NULL, payload, len, md);
        to_hex(md, s[i].hash);
        if (ok && pads != NULL) {
            ok = digest(ctx, pads[0], s[i].hash, 64, md) && digest(ctx, pads[1], md, 32, md);
            to_hex(md, s[i].mac);
        }
        prev = s[i].hash;
    }
    EVP_MD_CTX_free(ctx);
    return ok;
}

/* The inner and outer pad states of HMAC-SHA256 for key (RFC 2104). */
static int
hmac_pads(PyObject *key, EVP_MD_CTX **pads)
{
    unsigned char block[64] = {0}, pad[64], md[EVP_MAX_MD_SIZE];
    char *k;
    Py_ssize_t k_len;
    if (PyBytes_AsStringAndSize(key, &k, &k_len) < 0) {
        return 0;
    }
    pads[0] = EVP_MD_CTX_new();
    pads[1] = EVP_MD_CTX_new();
    if (pads[0] == NULL || pads[1] == NULL) {
        goto fail;
    }
    if (k_len > 64) {
        if (!digest(pads[0], NULL, k, (size_t)k_len, md)) {
            goto fail;
        }
        memcpy(block, md, 32);
    }
    else {
        memcpy(block, k, (size_t)k_len);
    }
    for (int j = 0; j < 2; j++) {
        for (int b = 0; b < 64; b++) {
            pad[b] = block[b] ^ (j == 0 ? 0x36 : 0x5C);
        }
        if (!EVP_DigestInit_ex(pads[j], sha256_md, NULL)
                || !EVP_DigestUpdate(pads[j], pad, 64)) {
            goto fail;
        }
    }
    return 1;

fail:
    EVP_MD_CTX_free(pads[0]);
    EVP_MD_CTX_free(pads[1]);
    pads[0] = pads[1] = NULL;
    PyErr_SetString(PyExc_RuntimeError, "seal_plain: OpenSSL could not set up HMAC");
    return 0;
}

/* seal_plain(batch, stream, first_seq, prev_hash, salts, dumps, option, key, fmt,
 *            json_keys, prepared_type) -> list of PreparedRecord
 *
 * batch: list of unsealed PreparedRecord (an AuditRecord, then a dict json_keys -> text
 * or None; the rest is not read); prev_hash: 64 lowercase hex characters; salts: one
 * str of 32 hex characters per record, end to end; dumps(value, option=option) is the
 * payload serialiser (orjson.dumps); key: None (SHA-256 of the payload) or bytes
 * (HMAC-SHA256).
 *
 * Three phases: each record's row and its payload and personal JSON (placeholders where
 * the hashes go); the chain of hashes (OpenSSL); the hashes into the rows and the
 * PreparedRecords. A payload whose placeholders are not where they must be raises
 * TypeError (the caller then seals record by record).
 */
static PyObject *
seal_plain(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (!takes("seal_plain", nargs, 11)) {
        return NULL;
    }
    PyObject *batch = args[0], *stream = args[1];
    PyObject *first_seq = args[2], *prev = args[3], *salt_text = args[4];
    PyObject *dumps = args[5], *option = args[6], *key = args[7];
    PyObject *fmt = args[8], *json_keys = args[9], *prepared_type = args[10];

    if (!PyList_Check(batch) || !PyUnicode_Check(salt_text)
            || !PyTuple_Check(json_keys) || PyTuple_GET_SIZE(json_keys) != N_JSON
            || !PyType_Check(prepared_type) || (key != Py_None && !PyBytes_Check(key))) {
        PyErr_SetString(PyExc_TypeError, "seal_plain: bad argument types");
        return NULL;
    }
    Py_ssize_t n = PyList_GET_SIZE(batch);
    if (PyUnicode_GET_LENGTH(salt_text) != 32 * n) {
        PyErr_SetString(PyExc_ValueError, "seal_plain: not 32 salt characters a record");
        return NULL;
    }
    Py_ssize_t prev_len;
    const char *prev_text = PyUnicode_Check(prev) ? PyUnicode_AsUTF8AndSize(prev, &prev_len)
                                                  : NULL;
    if (prev_text == NULL || prev_len != 64) {
        PyErr_Clear();
        PyErr_SetString(PyExc_TypeError, "seal_plain: prev_hash is not 64 hex characters");
        return NULL;
    }
    long long seq0 = PyLong_AsLongLong(first_seq);
    if (seq0 == -1 && PyErr_Occurred()) {
        return NULL;
    }
    PyTypeObject *ptype = (PyTypeObject *)prepared_type;

    PyObject *out = PyList_New(n);
    PyObject *salts = PyList_New(n);  /* each record's, cut from salt_text */
    sealing *s = PyMem_Calloc(n > 0 ? (size_t)n : 1, sizeof(sealing));
    PyObject **rows = PyMem_Calloc(n > 0 ? (size_t)n : 1, sizeof(PyObject *));
    PyObject *head = NULL, *placeholder = NULL, *personal = NULL, *dumped = NULL;
    PyObject *payload = NULL, *hashes = NULL, *head_text = NULL;
    EVP_MD_CTX *pads[2] = {NULL, NULL};
    arena texts_of = {NULL, 0, 0};
    if (out == NULL || salts == NULL || s == NULL || rows == NULL) {
        if (!PyErr_Occurred()) {
            PyErr_NoMemory();
        }
        goto fail;
    }
    placeholder = PyUnicode_New(64, 127);
    if (placeholder == NULL) {
        goto fail;
    }
    memset(PyUnicode_1BYTE_DATA(placeholder), '0', 64);
    /* the payload starts [fmt,stream,seq," and the previous hash follows */
    head = PyList_New(2);
    if (head == NULL) {
        goto fail;
    }
    PyList_SET_ITEM(head, 0, Py_NewRef(fmt));
    PyList_SET_ITEM(head, 1, Py_NewRef(stream));
    if ((dumped = call_dumps(dumps, option, head)) == NULL) {
        goto fail;
    }
    Py_ssize_t head_len = PyBytes_GET_SIZE(dumped) - 1;  /* without the "]" */
    head_text = dumped;
    dumped = NULL;

    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *p = PyList_GET_ITEM(batch, i);
        if (!PyTuple_Check(p) || PyTuple_GET_SIZE(p) < 2) {
            PyErr_SetString(PyExc_TypeError, "seal_plain: not a PreparedRecord");
            goto fail;
        }
        PyObject *r = PyTuple_GET_ITEM(p, 0), *t = PyTuple_GET_ITEM(p, 1);
        if (!PyTuple_Check(r) || PyTuple_GET_SIZE(r) != R_FIELDS || !PyDict_Check(t)) {
            PyErr_SetString(PyExc_TypeError, "seal_plain: not an AuditRecord and its texts");
            goto fail;
        }
        PyObject *salt = PyUnicode_Substring(salt_text, 32 * i, 32 * i + 32);
        if (salt == NULL) {
            goto fail;
        }
        PyList_SET_ITEM(salts, i, salt);
        PyObject *doc[N_JSON];
        for (int k = 0; k < N_JSON; k++) {
            doc[k] = PyDict_GetItemWithError(t, PyTuple_GET_ITEM(json_keys, k));
            if (doc[k] == NULL) {
                if (PyErr_Occurred()) {
                    goto fail;
                }
                doc[k] = Py_None;  /* texts prepared by an older release: no such field */
            }
        }
        int review = PyObject_IsTrue(PyTuple_GET_ITEM(r, R_REQUIRES_REVIEW));
        int success = PyObject_IsTrue(PyTuple_GET_ITEM(r, R_SUCCESS));
        if (review < 0 || success < 0) {
            goto fail;
        }
        /* the store row (ROW_COLUMNS order), prev_hash and hash left None for now */
        PyObject *row = rows[i] = PyTuple_New(N_ROW);
        if (row == NULL) {
            goto fail;
        }
        for (int k = 0; k < N_ROW; k++) {
            PyTuple_SET_ITEM(row, k, Py_NewRef(Py_None));
        }
        PyObject *seq = PyLong_FromLongLong(seq0 + i);
        PyObject *ts = timestamp_text(PyTuple_GET_ITEM(r, R_TIMESTAMP));
        PyObject *flags[2] = {PyLong_FromLong(review), PyLong_FromLong(success)};
        if (seq == NULL || ts == NULL || flags[0] == NULL || flags[1] == NULL) {
            Py_XDECREF(seq);
            Py_XDECREF(ts);
            Py_XDECREF(flags[0]);
            Py_XDECREF(flags[1]);
            goto fail;
        }
        /* the hashed fields of format 3, in HASHED_FIELDS order; the row (ROW_COLUMNS)
         * holds the same first 22, then acting_as and schema_version (items 3..26) */
        PyObject *fields[N_BODY] = {
            PyTuple_GET_ITEM(r, R_ID), ts, PyTuple_GET_ITEM(r, R_CORRELATION_ID),
            PyTuple_GET_ITEM(r, R_REQUEST_ID), PyTuple_GET_ITEM(r, R_TRACE_ID),
            PyTuple_GET_ITEM(r, R_SPAN_ID), PyTuple_GET_ITEM(r, R_ACTION),
            PyTuple_GET_ITEM(r, R_RESOURCE_TYPE), PyTuple_GET_ITEM(r, R_RESOURCE_ID),
            PyTuple_GET_ITEM(r, R_RESOURCE_NAME), PyTuple_GET_ITEM(r, R_TEAM_ID),
            PyTuple_GET_ITEM(r, R_REQUEST_PATH), PyTuple_GET_ITEM(r, R_REQUEST_METHOD),
            doc[0], doc[1], doc[2], PyTuple_GET_ITEM(r, R_DATA_CLASSIFICATION),
            flags[0], flags[1], PyTuple_GET_ITEM(r, R_ERROR_MESSAGE), doc[3],
            PyTuple_GET_ITEM(r, R_SERVICE_NAME), PyTuple_GET_ITEM(r, R_SCHEMA_VERSION),
            PyTuple_GET_ITEM(r, R_AUTH_METHOD),
        };
        /* the personal fields (PERSONAL_FIELDS), then the salt */
        PyObject *tail[7] = {PyTuple_GET_ITEM(r, R_USER_ID), PyTuple_GET_ITEM(r, R_USER_EMAIL),
                             PyTuple_GET_ITEM(r, R_CLIENT_IP), PyTuple_GET_ITEM(r, R_USER_AGENT),
                             PyTuple_GET_ITEM(r, R_ACTING_AS), doc[4], salt};
        Py_SETREF(((PyTupleObject *)row)->ob_item[0], Py_NewRef(stream));
        Py_SETREF(((PyTupleObject *)row)->ob_item[1], seq);
        for (int k = 0; k < N_BODY - 2; k++) {
            Py_SETREF(((PyTupleObject *)row)->ob_item[3 + k], Py_NewRef(fields[k]));
        }
        Py_SETREF(((PyTupleObject *)row)->ob_item[3 + N_BODY - 2], Py_NewRef(tail[4]));
        Py_SETREF(((PyTupleObject *)row)->ob_item[3 + N_BODY - 1], Py_NewRef(fields[N_BODY - 2]));
        for (int k = 0; k < 4; k++) {  /* user_id, email, ip, agent */
            Py_SETREF(((PyTupleObject *)row)->ob_item[3 + N_BODY + k], Py_NewRef(tail[k]));
        }
        Py_SETREF(((PyTupleObject *)row)->ob_item[3 + N_BODY + 4], Py_NewRef(salt));
        Py_SETREF(((PyTupleObject *)row)->ob_item[ROW_AUTH], Py_NewRef(fields[N_BODY - 1]));
        Py_SETREF(((PyTupleObject *)row)->ob_item[ROW_DELEGATION], Py_NewRef(doc[4]));
        /* the row holds them now: the payload below takes them from fields[] */
        Py_DECREF(ts);
        Py_DECREF(flags[0]);
        Py_DECREF(flags[1]);

        /* the personal text and the payload, written directly; a value outside the
         * types json_item() writes goes through orjson (which may refuse it) */
        int written = record_texts(&texts_of, &s[i], salt, tail, fields,
                                   PyBytes_AS_STRING(head_text), (size_t)head_len, seq0 + i);
        if (written < 0) {
            goto fail;
        }
        if (written) {
            continue;
        }
        /* personal JSON: salt "\0" dumps([user_id, email, ip, agent, acting_as,
         * delegation_chain text, []]) */
        personal = Py_BuildValue("[OOOOOO[]]", tail[0], tail[1], tail[2], tail[3], tail[4],
                                 tail[5]);
        if (personal == NULL || (dumped = call_dumps(dumps, option, personal)) == NULL) {
            goto fail;
        }
        Py_ssize_t salt_len;
        const char *salt_text = PyUnicode_AsUTF8AndSize(salt, &salt_len);
        size_t unused;
        if (salt_text == NULL
                || !arena_add(&texts_of, salt_text, (size_t)salt_len, &s[i].personal)
                || !arena_add(&texts_of, "", 1, &unused)
                || !arena_add(&texts_of, PyBytes_AS_STRING(dumped),
                              (size_t)PyBytes_GET_SIZE(dumped), &unused)) {
            goto fail;
        }
        s[i].personal_len = (size_t)salt_len + 1 + (size_t)PyBytes_GET_SIZE(dumped);
        Py_CLEAR(personal);
        Py_CLEAR(dumped);

        /* payload: [FORMAT, stream, seq, prev, *body, null (no personal keys), digest] */
        payload = PyList_New(4 + N_BODY + 2);
        if (payload == NULL) {
            goto fail;
        }
        PyList_SET_ITEM(payload, 0, Py_NewRef(fmt));
        PyList_SET_ITEM(payload, 1, Py_NewRef(stream));
        PyList_SET_ITEM(payload, 2, Py_NewRef(seq));
        PyList_SET_ITEM(payload, 3, Py_NewRef(placeholder));
        for (int k = 0; k < N_BODY; k++) {
            PyList_SET_ITEM(payload, 4 + k, Py_NewRef(fields[k]));
        }
        PyList_SET_ITEM(payload, 4 + N_BODY, Py_NewRef(Py_None));
        PyList_SET_ITEM(payload, 4 + N_BODY + 1, Py_NewRef(placeholder));
        if ((dumped = call_dumps(dumps, option, payload)) == NULL) {
            goto fail;
        }
        Py_CLEAR(payload);
        /* the placeholders must be exactly where the hashes go */
        char digits[24];
        Py_ssize_t len = PyBytes_GET_SIZE(dumped);
        const char *text = PyBytes_AS_STRING(dumped);
        Py_ssize_t prev_at = head_len + 3 + put_ll(digits, seq0 + i);  /* ,<seq>," */
        if (len < prev_at + 64 + 68 || text[prev_at - 1] != '"' || text[prev_at + 64] != '"'
                || memcmp(text + prev_at, PyUnicode_1BYTE_DATA(placeholder), 64) != 0
                || memcmp(text + len - 68, ",\"", 2) != 0 || memcmp(text + len - 2, "\"]", 2) != 0
                || memcmp(text + len - 66, PyUnicode_1BYTE_DATA(placeholder), 64) != 0) {
            PyErr_SetString(PyExc_TypeError, "seal_plain: unexpected payload layout");
            goto fail;
        }
        if (!arena_add(&texts_of, text, (size_t)len, &s[i].payload)) {
            goto fail;
        }
        s[i].payload_len = (size_t)len;
        s[i].prev_at = (size_t)prev_at;
        Py_CLEAR(dumped);
    }

    if (key != Py_None && !hmac_pads(key, pads)) {
        goto fail;
    }
    /* the chain touches no Python object: other threads run while it is hashed (a
     * batch of a few records keeps the GIL: letting it go would cost more than it frees) */
    int ok;
    if (n >= HASH_WITHOUT_GIL) {
        Py_BEGIN_ALLOW_THREADS
        ok = chain_hashes(s, n, prev_text, key != Py_None ? pads : NULL, texts_of.data);
        Py_END_ALLOW_THREADS
    }
    else {
        ok = chain_hashes(s, n, prev_text, key != Py_None ? pads : NULL, texts_of.data);
    }
    if (!ok) {
        PyErr_SetString(PyExc_RuntimeError, "seal_plain: OpenSSL failed to hash");
        goto fail;
    }

    /* the hashes (and macs) into the rows; PreparedRecord(record, texts, stream, seq,
     * prev_hash, hash, salt, None, mac, row) */
    PyObject *previous = Py_NewRef(prev);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *row = rows[i];
        PyObject *hash = PyUnicode_FromStringAndSize(s[i].hash, 64);
        PyObject *mac = key == Py_None ? Py_NewRef(Py_None)
                                       : PyUnicode_FromStringAndSize(s[i].mac, 64);
        PyObject *prepared = hash == NULL || mac == NULL ? NULL
                             : ptype->tp_alloc(ptype, N_PREPARED);
        if (prepared == NULL) {
            Py_XDECREF(hash);
            Py_XDECREF(mac);
            Py_DECREF(previous);
            goto fail;
        }
        Py_SETREF(((PyTupleObject *)row)->ob_item[2], Py_NewRef(previous));
        Py_SETREF(((PyTupleObject *)row)->ob_item[ROW_HASH], Py_NewRef(hash));
        Py_SETREF(((PyTupleObject *)row)->ob_item[ROW_MAC], mac);  /* the row takes it */
        maybe_untrack(row);
        PyObject *given = PyList_GET_ITEM(batch, i);
        PyObject *items[N_PREPARED] = {
            PyTuple_GET_ITEM(given, 0), PyTuple_GET_ITEM(given, 1), stream,
            PyTuple_GET_ITEM(row, 1), previous, hash, PyList_GET_ITEM(salts, i), Py_None,
            mac, row,
        };
        for (int k = 0; k < N_PREPARED; k++) {
            PyTuple_SET_ITEM(prepared, k, Py_NewRef(items[k]));
        }
        maybe_untrack(prepared);
        PyList_SET_ITEM(out, i, prepared);
        Py_SETREF(previous, hash);  /* the next record chains to this one */
    }
    Py_DECREF(previous);
    hashes = out;
    out = NULL;

fail:
    for (Py_ssize_t i = 0; rows != NULL && i < n; i++) {
        Py_XDECREF(rows[i]);
    }
    PyMem_Free(s);
    PyMem_Free(rows);
    PyMem_Free(texts_of.data);
    EVP_MD_CTX_free(pads[0]);
    EVP_MD_CTX_free(pads[1]);
    Py_XDECREF(head);
    Py_XDECREF(head_text);
    Py_XDECREF(placeholder);
    Py_XDECREF(personal);
    Py_XDECREF(dumped);
    Py_XDECREF(payload);
    Py_XDECREF(out);
    Py_XDECREF(salts);
    return hashes;
}

/* ------------------------------------------------------------------ plain_texts */

/* Whether a JSON text has a key that looks numeric: [{,]"-?[0-9] (record._NUMERIC_KEY) */
/*
 * Whether orjson writes exactly the stdlib encoder's text for value: a tree of exact
 * dicts (str keys), lists and tuples over exact str and int, bool and None. Floats are
 * not (the two format exponents differently and orjson writes NaN as null), nor is any
 * other type (orjson serialises UUIDs, enums and subclasses the stdlib encoder
 * rejects), nor a tree deeper than the limit.
 */
static int
orjson_equal(PyObject *value, int depth)
{
    if (value == Py_None || PyBool_Check(value) || PyUnicode_CheckExact(value)
            || PyLong_CheckExact(value)) {
        return 1;
    }
    if (depth >= 32) {
        return 0;
    }
    if (PyDict_CheckExact(value)) {
        Py_ssize_t pos = 0;
        PyObject *k, *v;
        while (PyDict_Next(value, &pos, &k, &v)) {
            if (!PyUnicode_CheckExact(k) || !orjson_equal(v, depth + 1)) {
                return 0;
            }
        }
        return 1;
    }
    if (PyList_CheckExact(value) || PyTuple_CheckExact(value)) {
        PyObject **items = PySequence_Fast_ITEMS(value);
        for (Py_ssize_t i = 0; i < PySequence_Fast_GET_SIZE(value); i++) {
            if (!orjson_equal(items[i], depth + 1)) {
                return 0;
            }
        }
        return 1;
    }
    return 0;
}

/* The canonical JSON text of value through orjson where that gives the stdlib
 * encoder's text; NULL without an error set where it may not (or orjson refused). */
static PyObject *
orjson_text(PyObject *value, PyObject *dumps, PyObject *option)
{
    if (dumps == Py_None || !orjson_equal(value, 0)) {
        return NULL;
    }
    PyObject *dumped = call_dumps(dumps, option, value);
    if (dumped == NULL) {
        if (PyErr_ExceptionMatches(PyExc_TypeError)) {  /* e.g. an int beyond 64 bits */
            PyErr_Clear();
        }
        return NULL;
    }
    PyObject *text = PyUnicode_DecodeUTF8(PyBytes_AS_STRING(dumped),
                                          PyBytes_GET_SIZE(dumped), NULL);
    Py_DECREF(dumped);
    return text;
}

/* Whether text[at:] starts with the ASCII word followed by a '"' */
static int
quoted_word_at(PyObject *text, Py_ssize_t at, const char *word)
{
    Py_ssize_t n = PyUnicode_GET_LENGTH(text);
    int kind = PyUnicode_KIND(text);
    const void *data = PyUnicode_DATA(text);
    Py_ssize_t len = (Py_ssize_t)strlen(word);
    if (at + len >= n) {
        return 0;
    }
    for (Py_ssize_t j = 0; j < len; j++) {
        if (PyUnicode_READ(kind, data, at + j) != (Py_UCS4)(unsigned char)word[j]) {
            return 0;
        }
    }
    return PyUnicode_READ(kind, data, at + len) == '"';
}

/* Whether a JSON text may have a key that was not a string: record._NUMERIC_KEY,
 * [{,]"(?:-?[0-9]|(?:true|false|null|NaN|-?Infinity)") -- what the stdlib encoder
 * writes for int, float, bool and None keys (a string key written alike only takes
 * the slow path, which gives the same text) */
static int
numeric_key(PyObject *text)
{
    static const char *const words[] = {"true", "false", "null", "NaN", "Infinity",
                                        "-Infinity"};
    Py_ssize_t n = PyUnicode_GET_LENGTH(text);
    int kind = PyUnicode_KIND(text);
    const void *data = PyUnicode_DATA(text);
    for (Py_ssize_t i = 0; i + 2 < n; i++) {
        Py_UCS4 c = PyUnicode_READ(kind, data, i);
        if ((c == '{' || c == ',') && PyUnicode_READ(kind, data, i + 1) == '"') {
            Py_UCS4 d = PyUnicode_READ(kind, data, i + 2);
            if (d == '-' && i + 3 < n) {
                d = PyUnicode_READ(kind, data, i + 3);
            }
            if (d >= '0' && d <= '9') {
                return 1;
            }
            for (size_t w = 0; w < sizeof(words) / sizeof(words[0]); w++) {
                if (quoted_word_at(text, i + 2, words[w])) {
                    return 1;
                }
            }
        }
    }
    return 0;
}

/* What _fast_texts() checks of every text: no NUL, no escaped NUL, valid UTF-8.
 * Returns 1 when clean (adding its UTF-8 size to *bytes), 0 when not, -1 on error. */
static int
clean_text(PyObject *text, Py_ssize_t *chars, Py_ssize_t *bytes)
{
    Py_ssize_t n = PyUnicode_GET_LENGTH(text);
    if (PyUnicode_KIND(text) == PyUnicode_1BYTE_KIND) {  /* one byte a character: memchr */
        const char *data = (const char *)PyUnicode_1BYTE_DATA(text);
        if (memchr(data, 0, (size_t)n) != NULL) {
            return 0;
        }
        for (const char *at = data; (at = memchr(at, '\\', (size_t)(data + n - at))) != NULL;
                at++) {
            if (data + n - at >= 6 && memcmp(at + 1, "u0000", 5) == 0) {
                return 0;
            }
        }
        Py_ssize_t size = n;
        if (!PyUnicode_IS_ASCII(text) && PyUnicode_AsUTF8AndSize(text, &size) == NULL) {
            return -1;  /* latin-1 text always has a UTF-8 form: only memory fails */
        }
        *chars += n;
        *bytes += size;
        return 1;
    }
    if (PyUnicode_FindChar(text, 0, 0, n, 1) != -1) {
        return 0;
    }
    static PyObject *escaped_nul;
    if (escaped_nul == NULL && (escaped_nul = PyUnicode_FromString("\\u0000")) == NULL) {
        return -1;
    }
    int has = PyUnicode_Contains(text, escaped_nul);
    if (has != 0) {
        return has < 0 ? -1 : 0;
    }
    Py_ssize_t size = n;
    if (!PyUnicode_IS_ASCII(text)) {
        if (PyUnicode_AsUTF8AndSize(text, &size) == NULL) {  /* lone surrogates */
            PyErr_Clear();
            return 0;
        }
    }
    *chars += n;
    *bytes += size;
    return 1;
}

/* plain_texts(records, cap, bounded, text_positions, json_fields, encode, utc, dumps,
 *             option) -> list of dicts | None
 *
 * The compiled form of record.plain_texts(): for each record the check of
 * normalise()'s fast path (_fast_texts) and its JSON texts; None as soon as one record
 * needs normalising. bounded: ((position, limit), ...); json_fields: ((name,
 * position), ...); encode(value, 0) returns the chunks of the canonical JSON text;
 * dumps(value, option=option) returns the same text as UTF-8 for the values
 * orjson_equal() accepts (orjson.dumps with sorted keys; None: encode only).
 */
static PyObject *
plain_texts(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (!takes("plain_texts", nargs, 9)) {
        return NULL;
    }
    PyObject *records = args[0], *bounded = args[2], *text_pos = args[3];
    PyObject *json_fields = args[4], *encode = args[5], *utc = args[6];
    PyObject *dumps = args[7], *dumps_option = args[8];
    Py_ssize_t cap = PyLong_AsSsize_t(args[1]);
    if (cap == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (!PyList_Check(records) || !PyTuple_Check(bounded) || !PyTuple_Check(text_pos)
            || !PyTuple_Check(json_fields)) {
        PyErr_SetString(PyExc_TypeError, "plain_texts: bad argument types");
        return NULL;
    }
    Py_ssize_t n = PyList_GET_SIZE(records);
    PyObject *out = PyList_New(n);
    PyObject *zero = PyLong_FromLong(0);
    PyObject *empty = PyUnicode_FromStringAndSize(NULL, 0);
    if (out == NULL || zero == NULL || empty == NULL) {
        goto fail;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *r = PyList_GET_ITEM(records, i);
        if (!PyTuple_Check(r) || PyTuple_GET_SIZE(r) != R_FIELDS) {
            goto not_plain;
        }
        Py_ssize_t chars = 0, bytes = 0;
        int ok;
        for (Py_ssize_t k = 0; k < PyTuple_GET_SIZE(bounded); k++) {
            PyObject *pair = PyTuple_GET_ITEM(bounded, k);
            Py_ssize_t pos = PyLong_AsSsize_t(PyTuple_GET_ITEM(pair, 0));
            Py_ssize_t limit = PyLong_AsSsize_t(PyTuple_GET_ITEM(pair, 1));
            PyObject *value = PyTuple_GET_ITEM(r, pos);
            if (value == Py_None) {
                continue;
            }
            if (!PyUnicode_CheckExact(value) || PyUnicode_GET_LENGTH(value) > limit) {
                goto not_plain;
            }
            if ((ok = clean_text(value, &chars, &bytes)) <= 0) {
                goto error_or_not_plain;
            }
        }
        PyObject *action = PyTuple_GET_ITEM(r, R_ACTION), *user = PyTuple_GET_ITEM(r, R_USER_ID);
        PyObject *id = PyTuple_GET_ITEM(r, R_ID);
        if (action == Py_None || PyUnicode_GET_LENGTH(action) == 0 || user == Py_None
                || PyUnicode_GET_LENGTH(user) == 0 || id == Py_None
                || PyUnicode_GET_LENGTH(id) == 0) {
            goto not_plain;
        }
        /* schema_version: an int the store's INTEGER column holds */
        PyObject *version = PyTuple_GET_ITEM(r, R_SCHEMA_VERSION);
        if (!PyLong_CheckExact(version)) {
            goto not_plain;
        }
        int overflow;
        long long v = PyLong_AsLongLongAndOverflow(version, &overflow);
        if (overflow || v < 0 || v > 2147483647LL) {
            goto not_plain;
        }
        for (Py_ssize_t k = 0; k < PyTuple_GET_SIZE(text_pos); k++) {
            PyObject *value = PyTuple_GET_ITEM(r, PyLong_AsSsize_t(PyTuple_GET_ITEM(text_pos, k)));
            if (value == Py_None) {
                continue;
            }
            if (!PyUnicode_CheckExact(value)) {
                goto not_plain;
            }
            if ((ok = clean_text(value, &chars, &bytes)) <= 0) {
                goto error_or_not_plain;
            }
        }
        if (!PyBool_Check(PyTuple_GET_ITEM(r, R_REQUIRES_REVIEW))
                || !PyBool_Check(PyTuple_GET_ITEM(r, R_SUCCESS))) {
            goto not_plain;
        }
        PyObject *ts = PyTuple_GET_ITEM(r, R_TIMESTAMP);
        if (!PyDateTime_CheckExact(ts) || PyDateTime_DATE_GET_TZINFO(ts) != utc) {
            goto not_plain;
        }
        PyObject *texts = PyDict_New();
        if (texts == NULL) {
            goto fail;
        }
        PyList_SET_ITEM(out, i, texts);
        for (Py_ssize_t k = 0; k < PyTuple_GET_SIZE(json_fields); k++) {
            PyObject *pair = PyTuple_GET_ITEM(json_fields, k);
            PyObject *value = PyTuple_GET_ITEM(r, PyLong_AsSsize_t(PyTuple_GET_ITEM(pair, 1)));
            PyObject *text;
            if (value == Py_None) {
                text = Py_NewRef(Py_None);
            }
            else {
                if (!PyDict_CheckExact(value) && !PyList_CheckExact(value)) {
                    goto not_plain;
                }
                text = orjson_text(value, dumps, dumps_option);
                if (text == NULL) {
                    if (PyErr_Occurred()) {
                        goto fail;
                    }
                    PyObject *call_args[2] = {value, zero};
                    PyObject *chunks = PyObject_Vectorcall(encode, call_args, 2, NULL);
                    if (chunks == NULL) {
                        if (PyErr_ExceptionMatches(PyExc_TypeError)
                                || PyErr_ExceptionMatches(PyExc_ValueError)
                                || PyErr_ExceptionMatches(PyExc_RecursionError)) {
                            PyErr_Clear();
                            goto not_plain;
                        }
                        goto fail;
                    }
                    text = PyUnicode_Join(empty, chunks);
                    Py_DECREF(chunks);
                    if (text == NULL) {
                        goto fail;
                    }
                }
                if (numeric_key(text) || (ok = clean_text(text, &chars, &bytes)) == 0) {
                    Py_DECREF(text);
                    goto not_plain;
                }
                if (ok < 0) {
                    Py_DECREF(text);
                    goto fail;
                }
            }
            int set = PyDict_SetItem(texts, PyTuple_GET_ITEM(pair, 0), text);
            Py_DECREF(text);
            if (set < 0) {
                goto fail;
            }
        }
        /* the cap: _fast_texts' cheap bound first, then UTF-8 bytes */
        if (chars + 2048 > cap / 4 && bytes + 2048 > cap) {
            goto not_plain;
        }
        continue;
error_or_not_plain:
        if (ok < 0) {
            goto fail;
        }
        goto not_plain;
    }
    Py_DECREF(zero);
    Py_DECREF(empty);
    return out;

not_plain:
    Py_DECREF(out);
    Py_DECREF(zero);
    Py_DECREF(empty);
    Py_RETURN_NONE;

fail:
    Py_XDECREF(out);
    Py_XDECREF(zero);
    Py_XDECREF(empty);
    return NULL;
}

/* ------------------------------------------------------------------ copy_text */

typedef struct {
    char *data;
    Py_ssize_t len, cap;
} buffer;

static int
reserve(buffer *b, Py_ssize_t more)
{
    return buffer_grow(&b->data, b->len, &b->cap, more, 4096);
}

/* copy_text(rows) -> bytes
 *
 * Rows in PostgreSQL's COPY text format: tab-separated fields, one line per row, NULL
 * as \N, text as UTF-8 with backslash, backspace, form feed, newline, carriage
 * return, tab and vertical tab escaped (what psycopg's write_row writes for str, int
 * and None). Any other value type raises TypeError: the caller writes row by row.
 */
/* The letter COPY text escapes a byte with after a backslash; 0: the byte as it is. */
static const char COPY_ESCAPE[256] = {
    ['\\'] = '\\', ['\b'] = 'b', ['\f'] = 'f', ['\n'] = 'n', ['\r'] = 'r', ['\t'] = 't',
    ['\v'] = 'v',
};

static PyObject *
copy_text(PyObject *self, PyObject *rows)
{
    if (!PyList_Check(rows)) {
        PyErr_SetString(PyExc_TypeError, "copy_text takes a list of tuples");
        return NULL;
    }
    buffer b = {NULL, 0, 0};
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(rows); i++) {
        PyObject *row = PyList_GET_ITEM(rows, i);
        if (!PyTuple_Check(row)) {
            PyErr_SetString(PyExc_TypeError, "copy_text: a row is not a tuple");
            goto fail;
        }
        for (Py_ssize_t k = 0; k < PyTuple_GET_SIZE(row); k++) {
            PyObject *v = PyTuple_GET_ITEM(row, k);
            if (reserve(&b, 32) < 0) {
                goto fail;
            }
            if (k > 0) {
                b.data[b.len++] = '\t';
            }
            if (v == Py_None) {
                b.data[b.len++] = '\\';
                b.data[b.len++] = 'N';
            }
            else if (PyLong_CheckExact(v)) {
                long long x = PyLong_AsLongLong(v);
                if (x == -1 && PyErr_Occurred()) {
                    goto fail;
                }
                b.len += put_ll(b.data + b.len, x);
            }
            else if (PyUnicode_CheckExact(v)) {
                Py_ssize_t n;
                const char *s = PyUnicode_AsUTF8AndSize(v, &n);
                if (s == NULL || reserve(&b, 2 * n) < 0) {
                    goto fail;
                }
                /* runs of bytes that need no escape are copied whole */
                Py_ssize_t run = 0;
                for (Py_ssize_t j = 0; j < n; j++) {
                    char e = COPY_ESCAPE[(unsigned char)s[j]];
                    if (e) {
                        memcpy(b.data + b.len, s + run, (size_t)(j - run));
                        b.len += j - run;
                        b.data[b.len++] = '\\';
                        b.data[b.len++] = e;
                        run = j + 1;
                    }
                }
                memcpy(b.data + b.len, s + run, (size_t)(n - run));
                b.len += n - run;
            }
            else {
                PyErr_Format(PyExc_TypeError, "copy_text: cannot write %.100s",
                             Py_TYPE(v)->tp_name);
                goto fail;
            }
        }
        if (reserve(&b, 1) < 0) {
            goto fail;
        }
        b.data[b.len++] = '\n';
    }
    PyObject *out = PyBytes_FromStringAndSize(b.data, b.len);
    PyMem_Free(b.data);
    return out;

fail:
    PyMem_Free(b.data);
    return NULL;
}

/*
 * sqlite_params(rows) -> (kept, params)
 *
 * The parameters of a multi-row INSERT of rows (tuples of one length) that leaves out
 * the columns NULL in every row: kept is the tuple of the other columns' positions,
 * params their values row after row (what store/writer.py's Python path builds with
 * zip passes).
 */
static PyObject *
sqlite_params(PyObject *self, PyObject *rows)
{
    if (!PyList_Check(rows)) {
        PyErr_SetString(PyExc_TypeError, "sqlite_params takes a list of tuples");
        return NULL;
    }
    Py_ssize_t n = PyList_GET_SIZE(rows), width = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *row = PyList_GET_ITEM(rows, i);
        if (!PyTuple_Check(row) || (i > 0 && PyTuple_GET_SIZE(row) != width)) {
            PyErr_SetString(PyExc_ValueError, "sqlite_params: rows of different lengths");
            return NULL;
        }
        width = PyTuple_GET_SIZE(row);
    }
    Py_ssize_t kept_n = 0;
    Py_ssize_t *kept_pos = PyMem_New(Py_ssize_t, width > 0 ? width : 1);
    if (kept_pos == NULL) {
        return PyErr_NoMemory();
    }
    for (Py_ssize_t k = 0; k < width; k++) {
        for (Py_ssize_t i = 0; i < n; i++) {
            if (PyTuple_GET_ITEM(PyList_GET_ITEM(rows, i), k) != Py_None) {
                kept_pos[kept_n++] = k;
                break;
            }
        }
    }
    PyObject *kept = PyTuple_New(kept_n);
    PyObject *params = PyList_New(n * kept_n);
    if (kept == NULL || params == NULL) {
        goto fail;
    }
    for (Py_ssize_t j = 0; j < kept_n; j++) {
        PyObject *pos = PyLong_FromSsize_t(kept_pos[j]);
        if (pos == NULL) {
            goto fail;
        }
        PyTuple_SET_ITEM(kept, j, pos);
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *row = PyList_GET_ITEM(rows, i);
        for (Py_ssize_t j = 0; j < kept_n; j++) {
            PyList_SET_ITEM(params, i * kept_n + j, Py_NewRef(PyTuple_GET_ITEM(row, kept_pos[j])));
        }
    }
    PyMem_Free(kept_pos);
    PyObject *out = PyTuple_Pack(2, kept, params);
    Py_DECREF(kept);
    Py_DECREF(params);
    return out;

fail:
    PyMem_Free(kept_pos);
    Py_XDECREF(kept);
    Py_XDECREF(params);
    return NULL;
}

/*
 * texts_special(texts, marks) -> bool
 *
 * Whether any text in texts (a list of dicts of str or None) may need canonical numbers
 * or holds a personal key: contains "-0.0", an ASCII digit followed by 'e' or 'E' (an
 * exponent), or one of marks (strs). The compiled form of ChainSealer._special over a
 * batch's texts. Searched in UTF-8, where every one of those is found exactly where it
 * is in the text.
 */
/* Whether text[0:len] contains "-0.0", a digit followed by 'e'/'E' or one of the marks:
 * one pass, trying the needles that start with the byte at hand (first[c]). */
static int
text_special(const char *text, Py_ssize_t len, const char *const *marks,
             const Py_ssize_t *mark_lens, Py_ssize_t n_marks, const unsigned char *first)
{
    int digit = 0;  /* whether the previous byte was an ASCII digit */
    for (Py_ssize_t j = 0; j < len; j++) {
        unsigned char c = (unsigned char)text[j];
        if ((c == 'e' || c == 'E') && digit) {
            return 1;
        }
        digit = c >= '0' && c <= '9';
        if (!first[c]) {
            continue;
        }
        if (c == '-' && len - j >= 4 && memcmp(text + j, "-0.0", 4) == 0) {
            return 1;
        }
        for (Py_ssize_t m = 0; m < n_marks; m++) {
            if ((unsigned char)marks[m][0] == c && len - j >= mark_lens[m]
                    && memcmp(text + j, marks[m], (size_t)mark_lens[m]) == 0) {
                return 1;
            }
        }
    }
    return 0;
}

#define MAX_MARKS 64

static PyObject *
texts_special(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (!takes("texts_special", nargs, 2)) {
        return NULL;
    }
    if (!PyList_Check(args[0]) || !PyTuple_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "texts_special(list of dicts, tuple of str)");
        return NULL;
    }
    PyObject *texts = args[0], *marks = args[1];
    Py_ssize_t n_marks = PyTuple_GET_SIZE(marks);
    if (n_marks > MAX_MARKS) {
        PyErr_SetString(PyExc_ValueError, "texts_special: more than 64 marks");
        return NULL;
    }
    const char *mark_text[MAX_MARKS];
    Py_ssize_t mark_len[MAX_MARKS];
    unsigned char first[256] = {0};
    int empty = 0;
    first['-'] = 1;
    for (Py_ssize_t m = 0; m < n_marks; m++) {
        PyObject *mark = PyTuple_GET_ITEM(marks, m);
        if (!PyUnicode_Check(mark)) {
            PyErr_SetString(PyExc_TypeError, "texts_special: a mark is not a str");
            return NULL;
        }
        mark_text[m] = PyUnicode_AsUTF8AndSize(mark, &mark_len[m]);
        if (mark_text[m] == NULL) {
            return NULL;
        }
        if (mark_len[m] == 0) {
            empty = 1;  /* found in any text */
        }
        else {
            first[(unsigned char)mark_text[m][0]] = 1;
        }
    }
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(texts); i++) {
        PyObject *t = PyList_GET_ITEM(texts, i);
        if (!PyDict_Check(t)) {
            PyErr_SetString(PyExc_TypeError, "texts_special: not a dict of texts");
            return NULL;
        }
        Py_ssize_t pos = 0;
        PyObject *key, *value;
        while (PyDict_Next(t, &pos, &key, &value)) {
            if (value == Py_None) {
                continue;
            }
            if (!PyUnicode_Check(value)) {
                PyErr_SetString(PyExc_TypeError, "texts_special: a text is not a str");
                return NULL;
            }
            Py_ssize_t len;
            const char *text = PyUnicode_AsUTF8AndSize(value, &len);
            if (text == NULL) {
                return NULL;
            }
            if (empty || text_special(text, len, mark_text, mark_len, n_marks, first)) {
                Py_RETURN_TRUE;
            }
        }
    }
    Py_RETURN_FALSE;
}

/* ------------------------------------------------------------------ snapshot */

/* Whether v is kept as it is by a snapshot: None, bool, exact str, int and float, a str
 * subclass (what is stored of it is its characters), an enum member, or an instance of
 * exactly one of the types in atoms (datetime, Decimal, UUID, bytes...). None of these
 * can change after the call. */
static int
snapshot_atom(PyObject *v, PyObject *atoms, PyTypeObject *enum_meta)
{
    PyTypeObject *t = Py_TYPE(v);
    if (v == Py_None || t == &PyUnicode_Type || t == &PyLong_Type || t == &PyBool_Type
            || t == &PyFloat_Type || PyUnicode_Check(v)) {
        return 1;
    }
    if (PyType_IsSubtype(Py_TYPE((PyObject *)t), enum_meta)) {
        return 1;
    }
    if (Py_TYPE((PyObject *)t) != &PyType_Type) {
        return 0;  /* a metaclass's __hash__ would run Python code: the fallback decides */
    }
    return PySet_Contains(atoms, (PyObject *)t);  /* 1, 0 or -1 */
}

/* A copy of v, the caller holding a reference to it: plain containers (exact dict with
 * exact str keys, exact list and tuple) copied, atoms shared. NULL without an error
 * set when v holds anything else or nests deeper than the normaliser keeps (the Python
 * snapshot decides); NULL with an error on failure. No Python code of the value runs,
 * so another thread cannot change it half-way; each item is held while it is copied
 * (an allocation can run a collection, and a finaliser any code). */
static PyObject *
copy_plain(PyObject *v, int depth, PyObject *atoms, PyTypeObject *enum_meta)
{
    int atom = snapshot_atom(v, atoms, enum_meta);
    if (atom != 0) {
        return atom < 0 ? NULL : Py_NewRef(v);
    }
    if (depth >= 32) {
        return NULL;
    }
    if (PyDict_CheckExact(v)) {
        /* the common case, a flat dict of atoms: PyDict_Copy clones its table whole */
        Py_ssize_t pos = 0;
        PyObject *key, *item;
        int flat = 1;
        while (flat && PyDict_Next(v, &pos, &key, &item)) {
            if (!PyUnicode_CheckExact(key)) {
                return NULL;
            }
            int atom = snapshot_atom(item, atoms, enum_meta);
            if (atom < 0) {
                return NULL;
            }
            flat = atom;
        }
        if (flat) {
            return PyDict_Copy(v);
        }
        PyObject *out = PyDict_New();
        if (out == NULL) {
            return NULL;
        }
        pos = 0;
        while (PyDict_Next(v, &pos, &key, &item)) {
            if (!PyUnicode_CheckExact(key)) {
                Py_DECREF(out);
                return NULL;
            }
            Py_INCREF(key);
            Py_INCREF(item);
            PyObject *copy = copy_plain(item, depth + 1, atoms, enum_meta);
            int failed = copy == NULL || PyDict_SetItem(out, key, copy) < 0;
            Py_DECREF(key);
            Py_DECREF(item);
            Py_XDECREF(copy);
            if (failed) {
                Py_DECREF(out);
                return NULL;
            }
        }
        return out;
    }
    if (PyList_CheckExact(v)) {
        PyObject *out = PyList_New(0);
        if (out == NULL) {
            return NULL;
        }
        for (Py_ssize_t i = 0; i < PyList_GET_SIZE(v); i++) {
            PyObject *item = Py_NewRef(PyList_GET_ITEM(v, i));
            PyObject *copy = copy_plain(item, depth + 1, atoms, enum_meta);
            Py_DECREF(item);
            if (copy == NULL || PyList_Append(out, copy) < 0) {
                Py_XDECREF(copy);
                Py_DECREF(out);
                return NULL;
            }
            Py_DECREF(copy);
        }
        return out;
    }
    if (PyTuple_CheckExact(v)) {
        Py_ssize_t n = PyTuple_GET_SIZE(v);
        PyObject *out = PyTuple_New(n);
        if (out == NULL) {
            return NULL;
        }
        int same = 1;
        for (Py_ssize_t i = 0; i < n; i++) {
            PyObject *item = PyTuple_GET_ITEM(v, i);
            PyObject *copy = copy_plain(item, depth + 1, atoms, enum_meta);
            if (copy == NULL) {
                Py_DECREF(out);
                return NULL;
            }
            same &= copy == item;
            PyTuple_SET_ITEM(out, i, copy);
        }
        if (same) {  /* a tuple of atoms is itself immutable */
            Py_DECREF(out);
            return Py_NewRef(v);
        }
        return out;
    }
    return NULL;
}

/* snapshot(record, atoms, enum_meta, fallback) -> record
 *
 * The record as it will be queued: its JSON fields (old_values, new_values, changes,
 * context) copied where they are plain data, every other field checked to be an atom
 * (see snapshot_atom; the timestamp an exact datetime). A record holding anything else
 * is given to fallback(record) (record.snapshot(), which converts what it must now).
 * The result leaves the cycle collector when maybe_untrack() allows it. */
static PyObject *
snapshot(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (!takes("snapshot", nargs, 4)) {
        return NULL;
    }
    PyObject *record = args[0], *atoms = args[1], *fallback = args[3];
    if (!PyType_Check(args[2]) || !PyAnySet_Check(atoms)) {
        PyErr_SetString(PyExc_TypeError, "snapshot: bad argument types");
        return NULL;
    }
    PyTypeObject *enum_meta = (PyTypeObject *)args[2];
    PyTypeObject *type = Py_TYPE(record);
    if (!PyTuple_Check(record) || PyTuple_GET_SIZE(record) != R_FIELDS
            || type->tp_basicsize != PyTuple_Type.tp_basicsize) {
        return PyObject_CallOneArg(fallback, record);
    }
    static const int json_pos[N_JSON] = {R_OLD_VALUES, R_NEW_VALUES, R_CHANGES, R_CONTEXT,
                                         R_DELEGATION_CHAIN};
    PyObject *copies[N_JSON] = {NULL, NULL, NULL, NULL, NULL};
    int changed = 0;
    for (int k = 0; k < R_FIELDS; k++) {
        PyObject *v = PyTuple_GET_ITEM(record, k);
        int atom = k == R_TIMESTAMP ? PyDateTime_CheckExact(v)
                                    : snapshot_atom(v, atoms, enum_meta);
        if (atom < 0) {
            goto fail;
        }
        if (atom) {
            continue;
        }
        int j = 0;
        while (j < N_JSON && json_pos[j] != k) {
            j++;
        }
        if (j == N_JSON) {
            goto slow;  /* an odd value in a column: converted now, in Python */
        }
        copies[j] = copy_plain(v, 0, atoms, enum_meta);
        if (copies[j] == NULL) {
            if (PyErr_Occurred()) {
                goto fail;
            }
            goto slow;
        }
        changed |= copies[j] != v;
    }
    PyObject *out;
    if (!changed) {
        out = Py_NewRef(record);
    }
    else if (Py_REFCNT(record) == 1) {
        /* only the call holds it (build_record passes the tuple it has just made):
         * nobody can see it change, so the copies go in place of the originals */
        out = Py_NewRef(record);
        for (int j = 0; j < N_JSON; j++) {
            if (copies[j] != NULL) {
                Py_SETREF(((PyTupleObject *)out)->ob_item[json_pos[j]], Py_NewRef(copies[j]));
            }
        }
    }
    else {
        out = type->tp_alloc(type, R_FIELDS);
        if (out == NULL) {
            goto fail;
        }
        for (int k = 0; k < R_FIELDS; k++) {
            PyTuple_SET_ITEM(out, k, Py_NewRef(PyTuple_GET_ITEM(record, k)));
        }
        for (int j = 0; j < N_JSON; j++) {
            if (copies[j] != NULL) {
                Py_SETREF(((PyTupleObject *)out)->ob_item[json_pos[j]], Py_NewRef(copies[j]));
            }
        }
    }
    for (int j = 0; j < N_JSON; j++) {
        Py_XDECREF(copies[j]);
    }
    maybe_untrack(out);
    return out;

slow:
    for (int j = 0; j < N_JSON; j++) {
        Py_XDECREF(copies[j]);
    }
    return PyObject_CallOneArg(fallback, record);

fail:
    for (int j = 0; j < N_JSON; j++) {
        Py_XDECREF(copies[j]);
    }
    return NULL;
}

/* untrack(obj) -> obj (see maybe_untrack) */
static PyObject *
untrack(PyObject *self, PyObject *obj)
{
    maybe_untrack(obj);
    return Py_NewRef(obj);
}

/* queued_copy(record) -> record
 *
 * The record the trail queues for its worker in place of the one record() returns: a
 * copy outside the cycle collector when every value of the record is untracked (atoms,
 * and the flat dicts of atoms that the snapshot made), else the record itself. Queued
 * records live through many collections, each of which would traverse them all (and
 * promote them, calling for full collections) while a burst waits for the worker.
 * The returned record stays tracked, as maybe_untrack() requires: its caller can put
 * it in its own dicts. The copy can be in a cycle only if code that holds it puts it,
 * or something referencing it, into one of its values: the trail queues it only while
 * nothing but the library's own stages can see queued records (own_code_only() in
 * otel_audit/pipeline/prepare.py). */
static PyObject *
queued_copy(PyObject *self, PyObject *record)
{
    PyTypeObject *type = Py_TYPE(record);
    if (!PyTuple_Check(record) || PyTuple_GET_SIZE(record) != R_FIELDS
            || !PyObject_GC_IsTracked(record)
            || type->tp_basicsize != PyTuple_Type.tp_basicsize
            || type->tp_dictoffset != 0 || type->tp_weaklistoffset != 0) {
        return Py_NewRef(record);
    }
    for (Py_ssize_t k = 0; k < R_FIELDS; k++) {
        PyObject *item = PyTuple_GET_ITEM(record, k);
        if (PyObject_IS_GC(item) && PyObject_GC_IsTracked(item)) {
            return Py_NewRef(record);
        }
    }
    PyObject *out = type->tp_alloc(type, R_FIELDS);
    if (out == NULL) {
        return NULL;
    }
    for (Py_ssize_t k = 0; k < R_FIELDS; k++) {
        PyTuple_SET_ITEM(out, k, Py_NewRef(PyTuple_GET_ITEM(record, k)));
    }
    PyObject_GC_UnTrack(out);
    return out;
}

/* otel_audit/_speedups_otlp.c */
PyObject *otlp_encode_logs(PyObject *self, PyObject *const *args, Py_ssize_t nargs);
PyObject *otlp_decode_logs(PyObject *self, PyObject *payload);
PyObject *otlp_attributes_to_fields(PyObject *self, PyObject *const *args, Py_ssize_t nargs);

/* otel_audit/_speedups_prepare.c */
PyObject *redact_clean(PyObject *self, PyObject *const *args, Py_ssize_t nargs);
PyObject *unsealed(PyObject *self, PyObject *const *args, Py_ssize_t nargs);
PyObject *custody(PyObject *self, PyObject *const *args, Py_ssize_t nargs);

/* otel_audit/_speedups_store.c */
PyObject *merkle_extend(PyObject *self, PyObject *const *args, Py_ssize_t nargs);

/* otel_audit/_speedups_verify.c */
PyObject *verify_flags(PyObject *self, PyObject *const *args, Py_ssize_t nargs);

/* otel_audit/_speedups_copyparse.c */
PyObject *copy_rows(PyObject *self, PyObject *const *args, Py_ssize_t nargs);

static PyMethodDef methods[] = {
    {"texts_special", (PyCFunction)(void (*)(void))texts_special, METH_FASTCALL,
     "Whether a batch's texts need canonical numbers or hold a personal key."},
    {"sqlite_params", (PyCFunction)sqlite_params, METH_O,
     "The kept column positions and flat parameters of a multi-row INSERT."},
    {"untrack", (PyCFunction)untrack, METH_O,
     "Take a tuple of untracked items out of the cycle collector; return it."},
    {"copy_text", (PyCFunction)copy_text, METH_O,
     "Rows in PostgreSQL's COPY text format (str, int and None values)."},
    {"seal_plain", (PyCFunction)(void (*)(void))seal_plain, METH_FASTCALL,
     "Seal a plain batch: the compiled form of ChainSealer._seal_columns."},
    {"plain_texts", (PyCFunction)(void (*)(void))plain_texts, METH_FASTCALL,
     "The compiled form of record.plain_texts()."},
    {"snapshot", (PyCFunction)(void (*)(void))snapshot, METH_FASTCALL,
     "A record's values as at the call: plain containers copied, atoms shared."},
    {"queued_copy", (PyCFunction)queued_copy, METH_O,
     "The untracked copy of a record whose values are all untracked, else the record."},
    {"otlp_encode_logs", (PyCFunction)(void (*)(void))otlp_encode_logs, METH_FASTCALL,
     "Audit records as OTLP ExportLogsServiceRequest bytes (otel_audit/_speedups_otlp.c)."},
    {"otlp_decode_logs", (PyCFunction)otlp_decode_logs, METH_O,
     "The values of an OTLP logs request's records (otel_audit/_speedups_otlp.c)."},
    {"otlp_attributes_to_fields", (PyCFunction)(void (*)(void))otlp_attributes_to_fields,
     METH_FASTCALL, "The compiled otel_audit.mapping.attributes_to_fields "
     "(otel_audit/_speedups_otlp.c)."},
    {"redact_clean", (PyCFunction)(void (*)(void))redact_clean, METH_FASTCALL,
     "Whether a batch has nothing to redact (otel_audit/_speedups_prepare.c)."},
    {"unsealed", (PyCFunction)(void (*)(void))unsealed, METH_FASTCALL,
     "Unsealed PreparedRecords of records and their texts (otel_audit/_speedups_prepare.c)."},
    {"custody", (PyCFunction)(void (*)(void))custody, METH_FASTCALL,
     "A batch in the pipeline's hands out of the cycle collector, or back "
     "(otel_audit/_speedups_prepare.c)."},
    {"merkle_extend", (PyCFunction)(void (*)(void))merkle_extend, METH_FASTCALL,
     "Add leaves to a Merkle compact range (otel_audit/_speedups_store.c)."},
    {"verify_flags", (PyCFunction)(void (*)(void))verify_flags, METH_FASTCALL,
     "Which chain rows of a batch match their hash (otel_audit/integrity/fastwalk.py)."},
    {"copy_rows", (PyCFunction)(void (*)(void))copy_rows, METH_FASTCALL,
     "Rows of PostgreSQL COPY text (otel_audit/_speedups_copyparse.c)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_speedups",
    "Compiled hot paths of otel_audit (optional; pure-Python fallbacks exist).", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC
PyInit__speedups(void)
{
    PyDateTime_IMPORT;
    if (PyDateTimeAPI == NULL) {
        return NULL;
    }
#if OPENSSL_VERSION_NUMBER >= 0x30000000L
    sha256_md = EVP_MD_fetch(NULL, "SHA256", NULL);
#else
    sha256_md = EVP_sha256();
#endif
    if (sha256_md == NULL) {
        PyErr_SetString(PyExc_ImportError, "OpenSSL has no SHA-256");
        return NULL;
    }
    PyObject *option = PyUnicode_InternFromString("option");  /* keyword names: interned */
    if (option == NULL) {
        return NULL;
    }
    kw_option = PyTuple_Pack(1, option);
    Py_DECREF(option);
    if (kw_option == NULL) {
        return NULL;
    }
    return PyModule_Create(&module);
}
