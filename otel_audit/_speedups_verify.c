/* verify_flags(): the compiled form of otel_audit.integrity.fastwalk.python_verify_flags.
 *
 * For a batch of source rows (otel_audit/integrity/sources.py) it tells which rows'
 * content matches their stored hash: bit 1 = verified, unset = not verified here (the
 * row then takes the exact Python check, chain_hash, which decides); bit 2 = the row
 * links to the row before it in the batch (same stream, next seq, prev_hash = its hash). A row gets 1 only when the
 * payload built here is byte for byte the payload chain_hash builds; whatever this code
 * does not handle exactly (a personal-key or erased row, a type other than str, int or
 * None, a format tag without a key entry, a JSON text it does not read) gets 0.
 *
 * Two row layouts:
 *  mode 0 (SQLite): stream, seq, prev_hash, hash, id, pii, then one JSON array SQLite
 *         built (json_array): the format tag and the chain row's columns. Its elements
 *         are copied as SQLite wrote them into the personal array and the payload, so
 *         the bytes hashed are those SQLite's json_array would give for those columns.
 *  mode 1 (PostgreSQL, DuckDB): the header (6 values), the chain row, the format tag.
 *         JSON documents are put in canonical form here (PostgreSQL prints JSONB with
 *         spaces and its own key order): compact, keys sorted by code point, strings
 *         escaped as json.dumps(ensure_ascii=False) escapes them, numbers as written
 *         when they are in canonical spelling (else 0: the exact check refuses them).
 *
 * The values are read under the GIL; the payloads are built and hashed (OpenSSL) with
 * the GIL released, so threads can share the work.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <openssl/evp.h>
#include <limits.h>
#include <stdint.h>
#include <string.h>

#include "_speedups_buffer.h"

PyObject *verify_flags(PyObject *self, PyObject *const *args, Py_ssize_t nargs);

enum { K_NULL, K_STR, K_INT, K_JSON };

typedef struct {
    int kind;
    const char *p;
    Py_ssize_t len;
    long long n;
} item;

typedef struct {
    char *d;
    size_t len, cap;
    int oom;
} buf;

static void
put(buf *b, const char *s, size_t n)
{
    if (b->oom) {
        return;
    }
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->len + n) {
            cap *= 2;
        }
        char *g = PyMem_RawRealloc(b->d, cap);
        if (g == NULL) {
            b->oom = 1;
            return;
        }
        b->d = g;
        b->cap = cap;
    }
    memcpy(b->d + b->len, s, n);
    b->len += n;
}

static void
putc_(buf *b, char c)
{
    put(b, &c, 1);
}

static const char HEXD[] = "0123456789abcdef";

/* A JSON string of UTF-8 text ``s``, escaped as json.dumps(ensure_ascii=False) does. */
static void
put_string(buf *b, const char *s, size_t n)
{
    putc_(b, '"');
    size_t run = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c >= 0x20 && c != '"' && c != '\\') {
            continue;
        }
        put(b, s + run, i - run);
        run = i + 1;
        char esc[6] = {'\\', 0, 0, 0, 0, 0};
        size_t len = 2;
        switch (c) {
        case '"': esc[1] = '"'; break;
        case '\\': esc[1] = '\\'; break;
        case '\n': esc[1] = 'n'; break;
        case '\r': esc[1] = 'r'; break;
        case '\t': esc[1] = 't'; break;
        case '\b': esc[1] = 'b'; break;
        case '\f': esc[1] = 'f'; break;
        default:
            esc[1] = 'u'; esc[2] = '0'; esc[3] = '0';
            esc[4] = HEXD[c >> 4]; esc[5] = HEXD[c & 15];
            len = 6;
        }
        put(b, esc, len);
    }
    put(b, s + run, n - run);
    putc_(b, '"');
}

/* ------------------------------------------------------------ canonical JSON (format 2+) */

#define MAX_DEPTH 500
#define MAX_INT_DIGITS 4300  /* Python's default int_max_str_digits */

typedef struct {
    const char *p, *end;
} cursor;

static void
skip_ws(cursor *c)
{
    while (c->p < c->end && (*c->p == ' ' || *c->p == '\t' || *c->p == '\n' || *c->p == '\r')) {
        c->p++;
    }
}

static int
hex4(const char *p, unsigned *out)
{
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
        char h = p[i];
        v <<= 4;
        if (h >= '0' && h <= '9') v |= (unsigned)(h - '0');
        else if (h >= 'a' && h <= 'f') v |= (unsigned)(h - 'a' + 10);
        else if (h >= 'A' && h <= 'F') v |= (unsigned)(h - 'A' + 10);
        else return 0;
    }
    *out = v;
    return 1;
}

static void
put_utf8(buf *b, unsigned cp)
{
    char u[4];
    if (cp < 0x80) {
        u[0] = (char)cp;
        put(b, u, 1);
    }
    else if (cp < 0x800) {
        u[0] = (char)(0xC0 | (cp >> 6));
        u[1] = (char)(0x80 | (cp & 0x3F));
        put(b, u, 2);
    }
    else if (cp < 0x10000) {
        u[0] = (char)(0xE0 | (cp >> 12));
        u[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        u[2] = (char)(0x80 | (cp & 0x3F));
        put(b, u, 3);
    }
    else {
        u[0] = (char)(0xF0 | (cp >> 18));
        u[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
        u[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
        u[3] = (char)(0x80 | (cp & 0x3F));
        put(b, u, 4);
    }
}

/* Decode the JSON string at c->p (at its opening quote) into UTF-8 in ``out``. 0: not a
 * string this code reads as Python does (a raw control character, a bad escape, a lone
 * surrogate: Python could not encode the result either). */
static int
read_string(cursor *c, buf *out)
{
    c->p++;
    const char *run = c->p;
    while (c->p < c->end) {
        unsigned char ch = (unsigned char)*c->p;
        if (ch == '"') {
            put(out, run, (size_t)(c->p - run));
            c->p++;
            return 1;
        }
        if (ch < 0x20) {
            return 0;  /* json.loads (strict) refuses it */
        }
        if (ch != '\\') {
            c->p++;
            continue;
        }
        put(out, run, (size_t)(c->p - run));
        if (c->end - c->p < 2) {
            return 0;
        }
        char e = c->p[1];
        c->p += 2;
        switch (e) {
        case '"': putc_(out, '"'); break;
        case '\\': putc_(out, '\\'); break;
        case '/': putc_(out, '/'); break;
        case 'b': putc_(out, '\b'); break;
        case 'f': putc_(out, '\f'); break;
        case 'n': putc_(out, '\n'); break;
        case 'r': putc_(out, '\r'); break;
        case 't': putc_(out, '\t'); break;
        case 'u': {
            unsigned cp, lo;
            if (c->end - c->p < 4 || !hex4(c->p, &cp)) {
                return 0;
            }
            c->p += 4;
            if (cp >= 0xDC00 && cp <= 0xDFFF) {
                return 0;  /* a lone low surrogate */
            }
            if (cp >= 0xD800 && cp <= 0xDBFF) {
                if (c->end - c->p < 6 || c->p[0] != '\\' || c->p[1] != 'u'
                        || !hex4(c->p + 2, &lo) || lo < 0xDC00 || lo > 0xDFFF) {
                    return 0;
                }
                c->p += 6;
                cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
            }
            put_utf8(out, cp);
            break;
        }
        default:
            return 0;
        }
        run = c->p;
    }
    return 0;
}

/* A number token in canonical spelling, copied; 0 for anything else (an exponent, a
 * negative zero, a leading zero: the exact check refuses those). */
static int
copy_number(cursor *c, buf *out)
{
    const char *start = c->p, *p = c->p;
    int nonzero = 0;
    if (p < c->end && *p == '-') {
        p++;
    }
    if (p >= c->end || *p < '0' || *p > '9') {
        return 0;
    }
    if (*p == '0') {
        p++;
        if (p < c->end && *p >= '0' && *p <= '9') {
            return 0;
        }
    }
    else {
        while (p < c->end && *p >= '0' && *p <= '9') {
            p++;
        }
        nonzero = 1;
    }
    int fraction = 0;
    if (p < c->end && *p == '.') {
        p++;
        const char *digits = p;
        while (p < c->end && *p >= '0' && *p <= '9') {
            nonzero |= *p != '0';
            p++;
        }
        if (p == digits) {
            return 0;
        }
        fraction = 1;
    }
    if (p < c->end && (*p == 'e' || *p == 'E')) {
        return 0;
    }
    if (*start == '-' && !nonzero) {
        return 0;
    }
    if (!fraction && p - start - (*start == '-') > MAX_INT_DIGITS) {
        return 0;
    }
    put(out, start, (size_t)(p - start));
    c->p = p;
    return 1;
}

typedef struct {
    size_t key, key_len;  /* decoded key in the scratch buffer */
    size_t out, out_len;  /* "key":value in the output */
    size_t found, found_len;  /* the personal values read inside it (masking) */
} member;

/* The personal JSON keys of a row: the list inside its pii text {"k": ["a", "b"]},
 * from the first key's opening quote to the last one's closing quote. Only keys of
 * printable ASCII without a quote or a backslash are taken (each key is then its own
 * JSON text: json.dumps writes it as it is). */
typedef struct {
    const char *p;
    size_t len;
} keyset;

/* Whether the pii text s is {"k": [keys]} as json.dumps writes it, with keys as above
 * and no '"d"' anywhere (the walk counts such a row as erased): sets ks; else 0, and
 * the row takes the exact check. */
static int
pii_keys(const char *s, Py_ssize_t n, keyset *ks)
{
    if (n < 11 || memcmp(s, "{\"k\": [", 7) != 0 || s[n - 2] != ']' || s[n - 1] != '}') {
        return 0;
    }
    const char *p = s + 7, *end = s + n - 2;
    ks->p = p;
    ks->len = (size_t)(end - p);
    for (;;) {
        if (p >= end || *p != '"') {
            return 0;
        }
        p++;
        while (p < end && *p != '"') {
            unsigned char ch = (unsigned char)*p;
            if (ch < 0x20 || ch > 0x7e || ch == '\\') {
                return 0;
            }
            p++;
        }
        if (p >= end) {
            return 0;
        }
        p++;
        if (p == end) {
            break;
        }
        if (end - p < 3 || p[0] != ',' || p[1] != ' ') {
            return 0;
        }
        p += 2;
    }
    for (Py_ssize_t i = 0; i + 3 <= n; i++) {
        if (s[i] == '"' && s[i + 1] == 'd' && s[i + 2] == '"') {
            return 0;
        }
    }
    return 1;
}

/* A document masked for personal keys is read only when nested at most MASK_DEPTH + 1
 * deep (fastwalk.MASK_DEPTH): the exact check masks and writes it by Python recursion. */
#define MASK_DEPTH 100

/* How deep the brackets outside strings of s nest (fastwalk._too_deep's count). */
static int
nesting(const char *s, Py_ssize_t n)
{
    int depth = 0, top = 0, in_string = 0, escaped = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        char ch = s[i];
        if (in_string) {
            if (escaped) {
                escaped = 0;
            }
            else if (ch == '\\') {
                escaped = 1;
            }
            else if (ch == '"') {
                in_string = 0;
            }
        }
        else if (ch == '"') {
            in_string = 1;
        }
        else if (ch == '[' || ch == '{') {
            depth++;
            top = depth > top ? depth : top;
        }
        else if (ch == ']' || ch == '}') {
            depth--;
        }
    }
    return top;
}

/* Whether the decoded key k is one of ks's keys. */
static int
is_personal(const keyset *ks, const char *k, size_t n)
{
    const char *p = ks->p, *end = ks->p + ks->len;
    while (p < end) {
        const char *s = p + 1;
        const char *e = memchr(s, '"', (size_t)(end - s));
        if (e == NULL) {
            return 0;
        }
        if ((size_t)(e - s) == n && memcmp(s, k, n) == 0) {
            return 1;
        }
        p = e + 3;  /* past '", ' to the next opening quote */
    }
    return 0;
}

/* The keys as the payload's JSON array: ["a","b"]. */
static void
put_keys(buf *b, const keyset *ks)
{
    const char *p = ks->p, *end = ks->p + ks->len;
    putc_(b, '[');
    while (p < end) {
        const char *e = memchr(p + 1, '"', (size_t)(end - p - 1));
        if (p != ks->p) {
            putc_(b, ',');
        }
        put(b, p, (size_t)(e - p + 1));
        p = e + 3;
    }
    putc_(b, ']');
}

static int value(cursor *c, buf *out, buf *scratch, int depth, const keyset *ks,
                 buf *found);

static int
key_less(const buf *scratch, const member *a, const member *b)
{
    size_t n = a->key_len < b->key_len ? a->key_len : b->key_len;
    int r = memcmp(scratch->d + a->key, scratch->d + b->key, n);
    return r < 0 || (r == 0 && a->key_len < b->key_len);
}

/* ks (masking, format 2+ with personal JSON keys): the value under a personal key is
 * written as "$pii" and its canonical text appended to found, followed by ','; found's
 * values come in the order canonical._mask collects them (keys sorted, depth first). */
static int
object(cursor *c, buf *out, buf *scratch, int depth, const keyset *ks, buf *found)
{
    c->p++;
    size_t start = out->len, scratch_start = scratch->len;
    size_t found_start = found != NULL ? found->len : 0;
    member *m = NULL;
    size_t count = 0, cap = 0;
    int ok = 0;
    skip_ws(c);
    if (c->p < c->end && *c->p == '}') {
        c->p++;
        putc_(out, '{');
        putc_(out, '}');
        return 1;
    }
    for (;;) {
        skip_ws(c);
        if (c->p >= c->end || *c->p != '"') {
            goto done;
        }
        if (count == cap) {
            cap = cap ? cap * 2 : 16;
            member *g = PyMem_RawRealloc(m, cap * sizeof(member));
            if (g == NULL) {
                goto done;
            }
            m = g;
        }
        member *it = &m[count++];
        it->key = scratch->len;
        if (!read_string(c, scratch)) {
            goto done;
        }
        it->key_len = scratch->len - it->key;
        it->out = out->len;
        put_string(out, scratch->d + it->key, it->key_len);
        skip_ws(c);
        if (c->p >= c->end || *c->p != ':') {
            goto done;
        }
        c->p++;
        putc_(out, ':');
        it->found = found != NULL ? found->len : 0;
        if (ks != NULL && is_personal(ks, scratch->d + it->key, it->key_len)) {
            put_string(out, "$pii", 4);
            if (!value(c, found, scratch, depth + 1, NULL, NULL)) {
                goto done;
            }
            putc_(found, ',');
        }
        else if (!value(c, out, scratch, depth + 1, ks, found)) {
            goto done;
        }
        it->out_len = out->len - it->out;
        it->found_len = found != NULL ? found->len - it->found : 0;
        skip_ws(c);
        if (c->p < c->end && *c->p == ',') {
            c->p++;
            continue;
        }
        if (c->p < c->end && *c->p == '}') {
            c->p++;
            break;
        }
        goto done;
    }
    if (scratch->oom || out->oom || (found != NULL && found->oom)) {
        goto done;
    }
    /* insertion sort by decoded key (code point order = UTF-8 byte order) */
    for (size_t i = 1; i < count; i++) {
        member x = m[i];
        size_t j = i;
        while (j > 0 && key_less(scratch, &x, &m[j - 1])) {
            m[j] = m[j - 1];
            j--;
        }
        m[j] = x;
    }
    for (size_t i = 1; i < count; i++) {
        if (!key_less(scratch, &m[i - 1], &m[i])) {
            goto done;  /* a duplicate key: the exact check decides */
        }
    }
    {
        size_t body = out->len - start;
        char *copy = PyMem_RawMalloc(body ? body : 1);
        if (copy == NULL) {
            goto done;
        }
        memcpy(copy, out->d + start, body);
        out->len = start;
        putc_(out, '{');
        for (size_t i = 0; i < count; i++) {
            if (i) {
                putc_(out, ',');
            }
            put(out, copy + (m[i].out - start), m[i].out_len);
        }
        putc_(out, '}');
        PyMem_RawFree(copy);
    }
    if (found != NULL && found->len > found_start) {  /* the found values in key order */
        size_t span = found->len - found_start;
        char *copy = PyMem_RawMalloc(span);
        if (copy == NULL) {
            goto done;
        }
        memcpy(copy, found->d + found_start, span);
        found->len = found_start;
        for (size_t i = 0; i < count; i++) {
            put(found, copy + (m[i].found - found_start), m[i].found_len);
        }
        PyMem_RawFree(copy);
    }
    ok = !out->oom && !(found != NULL && found->oom);
done:
    PyMem_RawFree(m);
    scratch->len = scratch_start;
    return ok;
}

/* depth: how many containers enclose the value; a container inside more than
 * MAX_DEPTH others is not read here (fastwalk.MAX_DEPTH) */
static int
value(cursor *c, buf *out, buf *scratch, int depth, const keyset *ks, buf *found)
{
    skip_ws(c);
    if (c->p >= c->end) {
        return 0;
    }
    switch (*c->p) {
    case '{':
        return depth <= MAX_DEPTH && object(c, out, scratch, depth, ks, found);
    case '[': {
        if (depth > MAX_DEPTH) {
            return 0;
        }
        c->p++;
        putc_(out, '[');
        skip_ws(c);
        if (c->p < c->end && *c->p == ']') {
            c->p++;
            putc_(out, ']');
            return 1;
        }
        for (int first = 1;; first = 0) {
            if (!first) {
                putc_(out, ',');
            }
            if (!value(c, out, scratch, depth + 1, ks, found)) {
                return 0;
            }
            skip_ws(c);
            if (c->p < c->end && *c->p == ',') {
                c->p++;
                continue;
            }
            if (c->p < c->end && *c->p == ']') {
                c->p++;
                putc_(out, ']');
                return 1;
            }
            return 0;
        }
    }
    case '"': {
        size_t at = scratch->len;
        if (!read_string(c, scratch)) {
            return 0;
        }
        put_string(out, scratch->d + at, scratch->len - at);
        scratch->len = at;
        return !scratch->oom;
    }
    case 't':
    case 'f':
    case 'n': {
        static const char *const words[] = {"true", "false", "null"};
        for (int i = 0; i < 3; i++) {
            size_t n = strlen(words[i]);
            if ((size_t)(c->end - c->p) >= n && memcmp(c->p, words[i], n) == 0) {
                put(out, c->p, n);
                c->p += n;
                return 1;
            }
        }
        return 0;
    }
    default:
        return copy_number(c, out);
    }
}

/* The canonical text of the JSON document ``s`` appended to ``out``; 0 if not read.
 * ks and found: values under personal keys masked (see object). */
static int
canonical(const char *s, Py_ssize_t n, buf *out, buf *scratch, const keyset *ks,
          buf *found)
{
    cursor c = {s, s + n};
    size_t at = out->len;
    if (!value(&c, out, scratch, 0, ks, found)) {
        out->len = at;
        return 0;
    }
    skip_ws(&c);
    if (c.p != c.end || out->oom || scratch->oom || (found != NULL && found->oom)) {
        out->len = at;
        return 0;
    }
    return 1;
}

/* ------------------------------------------------------------ SQLite's arrays */

/* One element of a JSON array as SQLite's json_array writes it (a string with its
 * quotes, or a bare number or null), as a span of the array's text. */
typedef struct {
    const char *p;
    Py_ssize_t len;
} span;

#define MAX_ELEMENTS 64

/* The first i' >= i with s[i'] a quote or a backslash, or n: eight bytes at a time
 * (a word has a byte equal to c when (w ^ c...) has a zero byte). */
static inline Py_ssize_t
quote_or_backslash(const char *s, Py_ssize_t i, Py_ssize_t n)
{
    const uint64_t ones = 0x0101010101010101ULL, highs = 0x8080808080808080ULL;
    while (i + 8 <= n) {
        uint64_t w, a, b;
        memcpy(&w, s + i, 8);
        a = w ^ (ones * '"');
        b = w ^ (ones * '\\');
        if ((((a - ones) & ~a) | ((b - ones) & ~b)) & highs) {
            break;  /* in these eight bytes */
        }
        i += 8;
    }
    while (i < n && s[i] != '"' && s[i] != '\\') {
        i++;
    }
    return i;
}

/* Appending array elements joined by ',': adjacent elements of the source text (one
 * ',' between them) are copied in one run. */
typedef struct {
    const char *start, *end;
} run;

static void
run_add(buf *b, run *r, const span *e)
{
    if (r->start != NULL && e->p == r->end + 1 && *r->end == ',') {
        r->end = e->p + e->len;
        return;
    }
    if (r->start != NULL) {
        put(b, r->start, (size_t)(r->end - r->start));
        putc_(b, ',');
    }
    r->start = e->p;
    r->end = e->p + e->len;
}

/* the last run, and its ',' when ``comma`` */
static void
run_end(buf *b, run *r, int comma)
{
    if (r->start != NULL) {
        put(b, r->start, (size_t)(r->end - r->start));
        if (comma) {
            putc_(b, ',');
        }
    }
    r->start = r->end = NULL;
}

/* The top-level elements of the array text s: '[' element (',' element)* ']', each a
 * string (a backslash escapes the next byte, whatever it is) or a non-empty run of
 * bytes other than '"' ',' '[' ']' '{' '}' (fastwalk._ELEMENT). The count, or -1 for
 * any other text (nested arrays and objects included: json_array of columns has none)
 * and for more than ``max`` elements. */
static int
split_array(const char *s, Py_ssize_t n, span *out, int max)
{
    if (n < 2 || s[0] != '[' || s[n - 1] != ']') {
        return -1;
    }
    if (n == 2) {
        return 0;
    }
    int count = 0;
    Py_ssize_t i = 1;
    for (;;) {
        Py_ssize_t start = i;
        if (i < n && s[i] == '"') {
            i++;
            for (;;) {  /* to the closing quote, past escaped bytes */
                i = quote_or_backslash(s, i, n);
                if (i >= n) {
                    return -1;
                }
                if (s[i] == '"') {
                    i++;
                    break;
                }
                i += 2;
            }
        }
        else {
            while (i < n && s[i] != '"' && s[i] != ',' && s[i] != '[' && s[i] != ']'
                   && s[i] != '{' && s[i] != '}') {
                i++;
            }
            if (i == start) {
                return -1;
            }
        }
        if (count >= max || i >= n) {
            return -1;
        }
        out[count].p = s + start;
        out[count].len = i - start;
        count++;
        if (s[i] == ']') {
            return i == n - 1 ? count : -1;
        }
        if (s[i] != ',') {
            return -1;
        }
        i++;
    }
}

/* The text inside a string element without escapes (a salt, a mac), or 0. */
static int
plain_string(const span *e, item *it)
{
    if (e->len < 2 || e->p[0] != '"' || e->p[e->len - 1] != '"'
            || memchr(e->p + 1, '\\', (size_t)(e->len - 2)) != NULL) {
        return 0;
    }
    it->kind = K_STR;
    it->p = e->p + 1;
    it->len = e->len - 2;
    return 1;
}

/* ------------------------------------------------------------ hashing */

static const EVP_MD *md_sha256;
/* '{"k": [': how the pii text of a row with personal JSON keys starts */
static PyObject *personal_start;

static int
sha(EVP_MD_CTX *ctx, const EVP_MD_CTX *from, const void *data, size_t len,
    unsigned char *md)
{
    unsigned int md_len;
    if (from != NULL ? !EVP_MD_CTX_copy_ex(ctx, from) : !EVP_DigestInit_ex(ctx, md_sha256, NULL)) {
        return 0;
    }
    return EVP_DigestUpdate(ctx, data, len) && EVP_DigestFinal_ex(ctx, md, &md_len);
}

static void
hexify(const unsigned char *md, char *out)
{
    for (int k = 0; k < 32; k++) {
        out[2 * k] = HEXD[md[k] >> 4];
        out[2 * k + 1] = HEXD[md[k] & 15];
    }
}

/* A key's HMAC pad states (RFC 2104), or none (plain SHA-256) for key None. */
typedef struct {
    EVP_MD_CTX *pads[2];
    int keyed;
} keyinfo;

static int
key_setup(PyObject *key, keyinfo *k)
{
    k->keyed = 0;
    k->pads[0] = k->pads[1] = NULL;
    if (key == Py_None) {
        return 1;
    }
    char *kp;
    Py_ssize_t klen;
    if (PyBytes_AsStringAndSize(key, &kp, &klen) < 0) {
        return 0;
    }
    unsigned char block[64] = {0}, pad[64], md[EVP_MAX_MD_SIZE];
    k->pads[0] = EVP_MD_CTX_new();
    k->pads[1] = EVP_MD_CTX_new();
    if (k->pads[0] == NULL || k->pads[1] == NULL) {
        goto fail;
    }
    if (klen > 64) {
        if (!sha(k->pads[0], NULL, kp, (size_t)klen, md)) {
            goto fail;
        }
        memcpy(block, md, 32);
    }
    else {
        memcpy(block, kp, (size_t)klen);
    }
    for (int j = 0; j < 2; j++) {
        for (int b = 0; b < 64; b++) {
            pad[b] = block[b] ^ (j == 0 ? 0x36 : 0x5C);
        }
        if (!EVP_DigestInit_ex(k->pads[j], md_sha256, NULL)
                || !EVP_DigestUpdate(k->pads[j], pad, 64)) {
            goto fail;
        }
    }
    k->keyed = 1;
    return 1;
fail:
    EVP_MD_CTX_free(k->pads[0]);
    EVP_MD_CTX_free(k->pads[1]);
    k->pads[0] = k->pads[1] = NULL;
    PyErr_SetString(PyExc_RuntimeError, "verify_flags: OpenSSL could not set up HMAC");
    return 0;
}

static int
payload_hash(EVP_MD_CTX *ctx, const keyinfo *k, const char *data, size_t len, char *hex)
{
    unsigned char md[EVP_MAX_MD_SIZE];
    int ok = k->keyed ? sha(ctx, k->pads[0], data, len, md) && sha(ctx, k->pads[1], md, 32, md)
                      : sha(ctx, NULL, data, len, md);
    if (ok) {
        hexify(md, hex);
    }
    return ok;
}

/* ------------------------------------------------------------ the batch */

/* a str's UTF-8, or NULL (no error left set) for a string UTF-8 cannot hold */
static const char *
utf8(PyObject *s, Py_ssize_t *len)
{
    const char *p = PyUnicode_AsUTF8AndSize(s, len);
    if (p == NULL) {
        PyErr_Clear();
    }
    return p;
}

/* one value as an item; 0 for a type the fast path does not take */
static int
take(PyObject *v, int json, item *it)
{
    if (v == Py_None) {
        it->kind = K_NULL;
        return 1;
    }
    if (PyUnicode_CheckExact(v)) {
        it->p = utf8(v, &it->len);
        it->kind = json ? K_JSON : K_STR;
        return it->p != NULL;
    }
    if (PyLong_CheckExact(v) && !json) {
        int overflow;
        it->n = PyLong_AsLongLongAndOverflow(v, &overflow);
        if (overflow || (it->n == -1 && PyErr_Occurred())) {
            PyErr_Clear();
            return 0;
        }
        it->kind = K_INT;
        return 1;
    }
    return 0;
}

static void
put_ll10(buf *b, long long x)
{
    char tmp[24];
    int n = snprintf(tmp, sizeof tmp, "%lld", x);
    put(b, tmp, (size_t)n);
}

/* How one format's payload is built from a source row (see fastwalk.payload_plans). */
#define MAX_FIELDS 64
#define MAX_PLANS 8

typedef struct {
    PyObject *tag;
    keyinfo key, mac_key;
    Py_ssize_t n_body, n_personal;
    Py_ssize_t body[MAX_FIELDS], personal[MAX_FIELDS];
    char body_json[MAX_FIELDS], personal_json[MAX_FIELDS];
    Py_ssize_t salt, pii, mac;
} plan;

static int
positions(PyObject *seq, Py_ssize_t *out, Py_ssize_t *n)
{
    if (!PyTuple_Check(seq) || PyTuple_GET_SIZE(seq) > MAX_FIELDS) {
        PyErr_SetString(PyExc_TypeError, "verify_flags: bad plan");
        return 0;
    }
    *n = PyTuple_GET_SIZE(seq);
    for (Py_ssize_t i = 0; i < *n; i++) {
        out[i] = PyLong_AsSsize_t(PyTuple_GET_ITEM(seq, i));
        if (out[i] < 0) {
            if (!PyErr_Occurred()) {
                PyErr_SetString(PyExc_ValueError, "verify_flags: bad position");
            }
            return 0;
        }
    }
    return 1;
}

static void
free_plans(plan *plans, int n)
{
    for (int k = 0; k < n; k++) {
        EVP_MD_CTX_free(plans[k].key.pads[0]);
        EVP_MD_CTX_free(plans[k].key.pads[1]);
        EVP_MD_CTX_free(plans[k].mac_key.pads[0]);
        EVP_MD_CTX_free(plans[k].mac_key.pads[1]);
        Py_XDECREF(plans[k].tag);
    }
}

/* plans: dict tag -> (key, mac_key, body, personal, json, salt, pii, mac) */
static int
read_plans(PyObject *dict, plan *plans, int *count)
{
    Py_ssize_t at = 0;
    PyObject *tag, *spec;
    *count = 0;
    while (PyDict_Next(dict, &at, &tag, &spec)) {
        if (*count >= MAX_PLANS || !PyUnicode_CheckExact(tag) || !PyTuple_Check(spec)
                || PyTuple_GET_SIZE(spec) != 8) {
            PyErr_SetString(PyExc_TypeError, "verify_flags: bad plans");
            return 0;
        }
        plan *pl = &plans[(*count)++];
        memset(pl, 0, sizeof *pl);
        pl->tag = Py_NewRef(tag);
        PyObject *key = PyTuple_GET_ITEM(spec, 0), *mac_key = PyTuple_GET_ITEM(spec, 1);
        if ((key != Py_None && !PyBytes_Check(key))
                || (mac_key != Py_None && !PyBytes_Check(mac_key))) {
            PyErr_SetString(PyExc_TypeError, "verify_flags: a key is not bytes");
            return 0;
        }
        Py_ssize_t json[MAX_FIELDS], n_json;
        if (!key_setup(key, &pl->key) || !key_setup(mac_key, &pl->mac_key)
                || !positions(PyTuple_GET_ITEM(spec, 2), pl->body, &pl->n_body)
                || !positions(PyTuple_GET_ITEM(spec, 3), pl->personal, &pl->n_personal)
                || !positions(PyTuple_GET_ITEM(spec, 4), json, &n_json)) {
            return 0;
        }
        for (Py_ssize_t j = 0; j < n_json; j++) {
            for (Py_ssize_t f = 0; f < pl->n_body; f++) {
                pl->body_json[f] |= pl->body[f] == json[j];
            }
            for (Py_ssize_t f = 0; f < pl->n_personal; f++) {
                pl->personal_json[f] |= pl->personal[f] == json[j];
            }
        }
        pl->salt = PyLong_AsSsize_t(PyTuple_GET_ITEM(spec, 5));
        pl->pii = PyLong_AsSsize_t(PyTuple_GET_ITEM(spec, 6));
        pl->mac = PyLong_AsSsize_t(PyTuple_GET_ITEM(spec, 7));
        if (PyErr_Occurred()) {
            return 0;
        }
    }
    return 1;
}

/* items of a row: 0 hash, 1 tag, 2 stream, 3 seq, 4 prev, 5 salt, 6 mac, 8 SQLite's
 * array, 9 pii, then body, then personal */
#define I_HASH 0
#define I_TAG 1
#define I_STREAM 2
#define I_SEQ 3
#define I_PREV 4
#define I_SALT 5
#define I_MAC 6
#define I_PREFIX 8
#define I_PII 9
#define I_FIELDS 10

/* verify_flags(rows, layout, plans) -> bytes
 *
 * layout 0 (SQLite): header, then SQLite's JSON array of the format tag and the chain
 * row. layout 1: header, chain row, format tag. plans: format tag -> (key, mac_key,
 * body positions, personal positions, JSON positions, salt position, pii position, mac
 * position) with positions into the source row of layout 1 (layout 0: the chain row's
 * column at position p is the array's element p - 5; JSON positions unused). key None:
 * SHA-256, else HMAC-SHA256; mac_key: the row's mac must be HMAC-SHA256(mac_key, hash).
 * Layout 0 also sets flag 4 on a row whose pii text starts with {"k": [ (personal JSON
 * keys), with a str array: fastwalk checks those in the full layout. */
PyObject *
verify_flags(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    if (!takes("verify_flags", nargs, 3)) {
        return NULL;
    }
    PyObject *rows = args[0], *plans_arg = args[2];
    long mode = PyLong_AsLong(args[1]);
    if (mode == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (!PyList_Check(rows) || !PyDict_Check(plans_arg) || (mode != 0 && mode != 1)) {
        PyErr_SetString(PyExc_TypeError, "verify_flags: bad arguments");
        return NULL;
    }
    if (personal_start == NULL) {
        personal_start = PyUnicode_FromString("{\"k\": [");
        if (personal_start == NULL) {
            return NULL;
        }
    }
    if (md_sha256 == NULL) {
#if OPENSSL_VERSION_NUMBER >= 0x30000000L
        md_sha256 = EVP_MD_fetch(NULL, "SHA256", NULL);
#else
        md_sha256 = EVP_sha256();
#endif
        if (md_sha256 == NULL) {
            PyErr_SetString(PyExc_RuntimeError, "OpenSSL has no SHA-256");
            return NULL;
        }
    }
    plan plans[MAX_PLANS];
    int n_plans = 0;
    if (!read_plans(plans_arg, plans, &n_plans)) {
        free_plans(plans, n_plans);
        return NULL;
    }
    Py_ssize_t width = I_FIELDS;
    for (int k = 0; k < n_plans; k++) {
        Py_ssize_t w = I_FIELDS + plans[k].n_body + plans[k].n_personal;
        width = w > width ? w : width;
    }
    Py_ssize_t n = PyList_GET_SIZE(rows);
    PyObject *out = PyBytes_FromStringAndSize(NULL, n);
    item *items = PyMem_RawCalloc((size_t)(n ? n : 1) * (size_t)width, sizeof(item));
    int *plan_of = PyMem_RawCalloc((size_t)(n ? n : 1), sizeof(int));
    if (out == NULL || items == NULL || plan_of == NULL) {
        Py_XDECREF(out);
        PyMem_RawFree(items);
        PyMem_RawFree(plan_of);
        free_plans(plans, n_plans);
        return PyErr_NoMemory();
    }
    char *flags = PyBytes_AS_STRING(out);
    for (Py_ssize_t i = 0; i < n; i++) {
        flags[i] = 0;
        plan_of[i] = -1;
        PyObject *row = PyList_GET_ITEM(rows, i);
        if (!PyTuple_CheckExact(row)) {
            continue;
        }
        Py_ssize_t size = PyTuple_GET_SIZE(row);
        item *it = items + i * width;
        PyObject *tag = NULL;
        int found = -1;
        if (mode == 0) {
            /* a row with personal JSON keys: flag 4, for fastwalk's full-layout check */
            if (size > 6 && PyUnicode_CheckExact(PyTuple_GET_ITEM(row, 5))
                    && PyUnicode_CheckExact(PyTuple_GET_ITEM(row, 6))) {
                Py_ssize_t m = PyUnicode_Tailmatch(PyTuple_GET_ITEM(row, 5), personal_start,
                                                   0, PY_SSIZE_T_MAX, -1);
                if (m < 0) {
                    PyErr_Clear();
                }
                flags[i] = m == 1 ? 4 : 0;
                continue;
            }
            /* the array is read and its format found with the GIL released */
            if (size < 7 || PyTuple_GET_ITEM(row, 5) != Py_None
                    || !take(PyTuple_GET_ITEM(row, 3), 0, &it[I_HASH]) || it[I_HASH].kind != K_STR
                    || !take(PyTuple_GET_ITEM(row, 6), 0, &it[I_PREFIX])
                    || it[I_PREFIX].kind != K_STR) {
                continue;
            }
            plan_of[i] = n_plans;
            continue;
        }
        else {
            if (size < 10) {
                continue;
            }
            tag = PyTuple_GET_ITEM(row, size - 1);
            if (!PyUnicode_CheckExact(tag)) {
                continue;
            }
            for (int k = 0; k < n_plans; k++) {
                if (plans[k].tag == tag || PyUnicode_Compare(plans[k].tag, tag) == 0) {
                    found = k;
                    break;
                }
            }
            if (PyErr_Occurred()) {
                PyErr_Clear();
            }
            if (found < 0) {
                continue;
            }
            plan *pl = &plans[found];
            /* pii: NULL, or a text read (pii_keys) with the GIL released */
            int good = pl->salt < size && pl->pii < size
                       && (PyTuple_GET_ITEM(row, pl->pii) == Py_None
                           || (take(PyTuple_GET_ITEM(row, pl->pii), 0, &it[I_PII])
                               && it[I_PII].kind == K_STR))
                       && take(PyTuple_GET_ITEM(row, 3), 0, &it[I_HASH]) && it[I_HASH].kind == K_STR
                       && take(tag, 0, &it[I_TAG])
                       && take(PyTuple_GET_ITEM(row, 6), 0, &it[I_STREAM]) && it[I_STREAM].kind == K_STR
                       && take(PyTuple_GET_ITEM(row, 7), 0, &it[I_SEQ]) && it[I_SEQ].kind == K_INT
                       && take(PyTuple_GET_ITEM(row, 8), 0, &it[I_PREV]) && it[I_PREV].kind == K_STR
                       && take(PyTuple_GET_ITEM(row, pl->salt), 0, &it[I_SALT])
                       && it[I_SALT].kind != K_INT;
            for (Py_ssize_t f = 0; good && f < pl->n_body; f++) {
                good = pl->body[f] < size
                       && take(PyTuple_GET_ITEM(row, pl->body[f]), pl->body_json[f],
                               &it[I_FIELDS + f]);
            }
            for (Py_ssize_t f = 0; good && f < pl->n_personal; f++) {
                item *pv = &it[I_FIELDS + pl->n_body + f];
                good = pl->personal[f] < size
                       && take(PyTuple_GET_ITEM(row, pl->personal[f]), pl->personal_json[f], pv)
                       && pv->kind != K_INT;
            }
            if (!good) {
                continue;
            }
        }
        plan *pl = &plans[found];
        if (pl->mac_key.keyed) {  /* layout 1 (layout 0: from its array) */
            if (pl->mac >= size || !take(PyTuple_GET_ITEM(row, pl->mac), 0, &it[I_MAC])
                    || it[I_MAC].kind != K_STR) {
                continue;
            }
        }
        plan_of[i] = found;
    }
    /* mode 0: each plan's tag as a JSON string element, "<tag>" */
    const char *tags[MAX_PLANS];
    Py_ssize_t tag_lens[MAX_PLANS];
    for (int k = 0; k < n_plans; k++) {
        tags[k] = PyUnicode_AsUTF8AndSize(plans[k].tag, &tag_lens[k]);
        if (tags[k] == NULL) {
            PyErr_Clear();
            tag_lens[k] = -1;
        }
    }
    int failed = 0;
    Py_BEGIN_ALLOW_THREADS
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    buf pay = {0}, per = {0}, text = {0}, scratch = {0}, found = {0};
    keyset ks = {0};
    char hex[64], mac[64];
    unsigned char md[EVP_MAX_MD_SIZE];
    span el[MAX_ELEMENTS];
    failed = ctx == NULL;
    for (Py_ssize_t i = 0; i < n && !failed; i++) {
        if (plan_of[i] < 0) {
            continue;
        }
        item *it = items + i * width;
        int ne = 0;
        if (mode == 0) {
            /* the format: the array's first element is its tag, "<tag>" */
            ne = split_array(it[I_PREFIX].p, it[I_PREFIX].len, el, MAX_ELEMENTS);
            plan_of[i] = -1;
            for (int k = 0; ne > 0 && k < n_plans; k++) {
                if (tag_lens[k] >= 0 && el[0].len == tag_lens[k] + 2 && el[0].p[0] == '"'
                        && memcmp(el[0].p + 1, tags[k], (size_t)tag_lens[k]) == 0
                        && el[0].p[el[0].len - 1] == '"') {
                    plan_of[i] = k;
                    break;
                }
            }
            if (plan_of[i] < 0) {
                continue;
            }
        }
        const plan *pl = &plans[plan_of[i]];
        if (it[I_HASH].len != 64) {
            continue;
        }
        if (mode == 0) {
            /* element 1 + c holds the chain row's column c, at source position 6 + c:
             * stream, seq and prev_hash are elements 1 to 3 */
            int good = ne >= 4 && pl->salt - 5 < ne && pl->mac - 5 < ne;
            for (Py_ssize_t f = 0; good && f < pl->n_body; f++) {
                good = pl->body[f] >= 6 && pl->body[f] - 5 < ne;
            }
            for (Py_ssize_t f = 0; good && f < pl->n_personal; f++) {
                good = pl->personal[f] >= 6 && pl->personal[f] - 5 < ne;
            }
            if (!good || pl->salt < 6 || pl->mac < 6) {
                continue;
            }
            const span *salt = &el[pl->salt - 5];
            if (salt->len == 4 && memcmp(salt->p, "null", 4) == 0) {
                it[I_SALT].kind = K_NULL;
            }
            else if (!plain_string(salt, &it[I_SALT])) {
                continue;
            }
            if (pl->mac_key.keyed && !plain_string(&el[pl->mac - 5], &it[I_MAC])) {
                continue;
            }
        }
        /* personal JSON keys (layout 1, formats 2 and 3): masked in the body's JSON */
        int masked = mode == 1 && it[I_PII].kind == K_STR;
        if (masked && !pii_keys(it[I_PII].p, it[I_PII].len, &ks)) {
            continue;
        }
        pay.len = per.len = found.len = 0;
        pay.oom = per.oom = found.oom = 0;
        if (it[I_SALT].kind == K_STR) {
            put(&per, it[I_SALT].p, (size_t)it[I_SALT].len);
        }
        putc_(&per, '\0');
        int good = 1;
        if (mode == 0) {
            /* sha256(salt "\0" [personal elements..., []]), then [tag, stream, seq,
             * prev_hash, body elements..., null, "<digest>"] */
            run r = {NULL, NULL};
            putc_(&per, '[');
            for (Py_ssize_t f = 0; f < pl->n_personal; f++) {
                run_add(&per, &r, &el[pl->personal[f] - 5]);
            }
            run_end(&per, &r, 1);
            put(&per, "[]]", 3);
            putc_(&pay, '[');
            for (int e = 0; e < 4; e++) {
                run_add(&pay, &r, &el[e]);
            }
            for (Py_ssize_t f = 0; f < pl->n_body; f++) {
                run_add(&pay, &r, &el[pl->body[f] - 5]);
            }
            run_end(&pay, &r, 0);
        }
        else {
            putc_(&pay, '[');
            put_string(&pay, it[I_TAG].p, (size_t)it[I_TAG].len);
            putc_(&pay, ',');
            put_string(&pay, it[I_STREAM].p, (size_t)it[I_STREAM].len);
            putc_(&pay, ',');
            put_ll10(&pay, it[I_SEQ].n);
            putc_(&pay, ',');
            put_string(&pay, it[I_PREV].p, (size_t)it[I_PREV].len);
            Py_ssize_t total = pl->n_body + pl->n_personal;
            putc_(&per, '[');
            for (Py_ssize_t f = 0; f < total && good; f++) {
                item *v = &it[I_FIELDS + f];
                buf *to = f < pl->n_body ? &pay : &per;
                if (f < pl->n_body) {
                    putc_(&pay, ',');
                }
                if (v->kind == K_NULL) {
                    put(to, "null", 4);
                }
                else if (v->kind == K_INT) {
                    put_ll10(to, v->n);
                }
                else if (v->kind == K_STR) {
                    put_string(to, v->p, (size_t)v->len);
                }
                else {
                    text.len = 0;
                    text.oom = 0;
                    scratch.len = 0;
                    scratch.oom = 0;
                    int mask = masked && f < pl->n_body;
                    if (mask && nesting(v->p, v->len) > MASK_DEPTH + 1) {
                        good = 0;
                        break;
                    }
                    good = canonical(v->p, v->len, &text, &scratch, mask ? &ks : NULL,
                                     mask ? &found : NULL);
                    if (good) {
                        put_string(to, text.d, text.len);
                    }
                }
                if (f >= pl->n_body) {
                    putc_(&per, ',');
                }
            }
            putc_(&per, '[');  /* the personal JSON values (personal_digest) */
            if (found.len) {
                put(&per, found.d, found.len - 1);  /* without the last ',' */
            }
            put(&per, "]]", 2);
        }
        if (!good) {
            continue;
        }
        if (pay.oom || per.oom || found.oom) {
            failed = 1;
            break;
        }
        if (!sha(ctx, NULL, per.d, per.len, md)) {
            failed = 1;
            break;
        }
        if (masked) {
            putc_(&pay, ',');
            put_keys(&pay, &ks);
            put(&pay, ",\"", 2);
        }
        else {
            put(&pay, ",null,\"", 7);
        }
        size_t at = pay.len;
        put(&pay, "0000000000000000000000000000000000000000000000000000000000000000\"]", 66);
        if (pay.oom) {
            failed = 1;
            break;
        }
        hexify(md, pay.d + at);
        if (!payload_hash(ctx, &pl->key, pay.d, pay.len, hex)) {
            failed = 1;
            break;
        }
        if (memcmp(hex, it[I_HASH].p, 64) != 0) {
            continue;
        }
        if (pl->mac_key.keyed) {
            if (it[I_MAC].len != 64 || !payload_hash(ctx, &pl->mac_key, hex, 64, mac)) {
                failed = it[I_MAC].len == 64;
                continue;
            }
            if (memcmp(mac, it[I_MAC].p, 64) != 0) {
                continue;
            }
        }
        flags[i] = 1;
    }
    EVP_MD_CTX_free(ctx);
    PyMem_RawFree(pay.d);
    PyMem_RawFree(per.d);
    PyMem_RawFree(text.d);
    PyMem_RawFree(scratch.d);
    PyMem_RawFree(found.d);
    Py_END_ALLOW_THREADS
    /* 2: linked to the row before it in the batch (same stream, the next seq, its
     * prev_hash the hash of that row) */
    for (Py_ssize_t i = 1; i < n && !failed; i++) {
        PyObject *row = PyList_GET_ITEM(rows, i), *before = PyList_GET_ITEM(rows, i - 1);
        if (!PyTuple_CheckExact(row) || !PyTuple_CheckExact(before)
                || PyTuple_GET_SIZE(row) < 4 || PyTuple_GET_SIZE(before) < 4) {
            continue;
        }
        PyObject *seq = PyTuple_GET_ITEM(row, 1), *seq0 = PyTuple_GET_ITEM(before, 1);
        PyObject *stream = PyTuple_GET_ITEM(row, 0), *stream0 = PyTuple_GET_ITEM(before, 0);
        PyObject *prev = PyTuple_GET_ITEM(row, 2), *hash0 = PyTuple_GET_ITEM(before, 3);
        if (!PyLong_CheckExact(seq) || !PyLong_CheckExact(seq0)
                || !PyUnicode_CheckExact(stream) || !PyUnicode_CheckExact(stream0)
                || !PyUnicode_CheckExact(prev) || !PyUnicode_CheckExact(hash0)) {
            continue;
        }
        int o1, o2;
        long long a = PyLong_AsLongLongAndOverflow(seq, &o1);
        long long b = PyLong_AsLongLongAndOverflow(seq0, &o2);
        if (o1 || o2 || b == LLONG_MAX || a != b + 1) {
            continue;
        }
        int same = PyUnicode_Compare(stream, stream0);
        int linked = same == 0 ? PyUnicode_Compare(prev, hash0) : -1;
        if (PyErr_Occurred()) {
            PyErr_Clear();
            continue;
        }
        if (linked == 0) {
            flags[i] |= 2;
        }
    }
    free_plans(plans, n_plans);
    PyMem_RawFree(items);
    PyMem_RawFree(plan_of);
    if (failed) {
        Py_DECREF(out);
        PyErr_SetString(PyExc_RuntimeError, "verify_flags: OpenSSL or memory failure");
        return NULL;
    }
    return out;
}

