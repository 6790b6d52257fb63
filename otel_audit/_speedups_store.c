/* merkle_extend(): the compiled form of otel_audit.integrity.merkle.python_merkle_extend.
 *
 * A trail's periodic seals keep the Merkle tree of each sealed interval as a compact
 * range (MerkleAccumulator): the roots of the perfect subtrees the binary decomposition
 * of its size gives. Every committed batch adds its records' chain hashes as leaves, on
 * the store thread, between one batch's commit and the next one's write: in Python
 * that is two hashlib calls, a hex decode and a few small objects per record.
 *
 *   merkle_extend(stack: list[bytes], size: int, hashes: list[str]) -> int
 *
 * leaf = SHA-256(0x00 || bytes.fromhex(hash)), node = SHA-256(0x01 || left || right)
 * (RFC 6962). Every hash is decoded before the stack is touched: a value that is not a
 * str of hex digit pairs raises ValueError (TypeError for a non-str), as does a stack
 * that is not one 32-byte bytes node per one bit of the size; either leaves the stack
 * as it was, and the caller then takes the Python path, which decides. Returns the new
 * size. The stack is replaced as a whole at the end (at most 64 nodes).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <openssl/evp.h>
#include <limits.h>
#include <string.h>

#include "_speedups_buffer.h"

PyObject *merkle_extend(PyObject *self, PyObject *const *args, Py_ssize_t nargs);

static const EVP_MD *merkle_md;  /* fetched once (under the GIL): no fetch per digest */

/* SHA-256 of prefix || a || b (b may be NULL) into md. */
static int
sha(EVP_MD_CTX *ctx, unsigned char prefix, const unsigned char *a, size_t a_len,
    const unsigned char *b, size_t b_len, unsigned char *md)
{
    unsigned int md_len;
    return EVP_DigestInit_ex(ctx, merkle_md, NULL)
           && EVP_DigestUpdate(ctx, &prefix, 1)
           && EVP_DigestUpdate(ctx, a, a_len)
           && (b == NULL || EVP_DigestUpdate(ctx, b, b_len))
           && EVP_DigestFinal_ex(ctx, md, &md_len);
}

PyObject *
merkle_extend(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3 || !PyList_Check(args[0]) || !PyLong_Check(args[1])
            || !PyList_Check(args[2])) {
        PyErr_SetString(PyExc_TypeError, "merkle_extend(stack: list, size: int, hashes: list)");
        return NULL;
    }
    PyObject *stack = args[0], *hashes = args[2];
    unsigned long long size = PyLong_AsUnsignedLongLong(args[1]);
    if (size == (unsigned long long)-1 && PyErr_Occurred()) {
        return NULL;
    }
    Py_ssize_t n = PyList_GET_SIZE(hashes);
    if (n == 0) {
        return PyLong_FromUnsignedLongLong(size);
    }
    if (merkle_md == NULL) {
#if OPENSSL_VERSION_NUMBER >= 0x30000000L
        merkle_md = EVP_MD_fetch(NULL, "SHA256", NULL);
#else
        merkle_md = EVP_sha256();
#endif
        if (merkle_md == NULL) {
            PyErr_SetString(PyExc_RuntimeError, "OpenSSL has no SHA-256");
            return NULL;
        }
    }
    /* the stack must hold one 32-byte node per one bit of the size */
    Py_ssize_t depth = PyList_GET_SIZE(stack);
    if (depth != __builtin_popcountll(size)) {
        PyErr_SetString(PyExc_ValueError, "merkle_extend: the stack does not match the size");
        return NULL;
    }
    unsigned char nodes[64][32];
    for (Py_ssize_t j = 0; j < depth; j++) {
        PyObject *node = PyList_GET_ITEM(stack, j);
        if (!PyBytes_Check(node) || PyBytes_GET_SIZE(node) != 32) {
            PyErr_SetString(PyExc_ValueError, "merkle_extend: a stack item is not 32 bytes");
            return NULL;
        }
        memcpy(nodes[j], PyBytes_AS_STRING(node), 32);
    }
    if (size > ULLONG_MAX - (unsigned long long)n) {
        PyErr_SetString(PyExc_OverflowError, "merkle_extend: too many leaves");
        return NULL;
    }

    /* 1. every leaf hash, before anything changes */
    unsigned char *leaves = PyMem_Malloc((size_t)n * 32);
    unsigned char *raw = NULL;
    size_t raw_cap = 0;
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    PyObject *result = NULL;
    if (leaves == NULL || ctx == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *h = PyList_GET_ITEM(hashes, i);
        if (!PyUnicode_Check(h)) {
            PyErr_SetString(PyExc_TypeError, "merkle_extend: a hash is not a str");
            goto done;
        }
        Py_ssize_t len;
        const char *text = PyUnicode_AsUTF8AndSize(h, &len);
        if (text == NULL) {
            goto done;
        }
        if (len % 2) {
            PyErr_SetString(PyExc_ValueError, "merkle_extend: odd-length hex");
            goto done;
        }
        size_t bytes = (size_t)len / 2;
        if (bytes > raw_cap) {
            unsigned char *grown = PyMem_Realloc(raw, bytes);
            if (grown == NULL) {
                PyErr_NoMemory();
                goto done;
            }
            raw = grown;
            raw_cap = bytes;
        }
        for (size_t k = 0; k < bytes; k++) {
            int hi = hex_value((unsigned char)text[2 * k]);
            int lo = hex_value((unsigned char)text[2 * k + 1]);
            if (hi < 0 || lo < 0) {
                PyErr_SetString(PyExc_ValueError, "merkle_extend: not a hex digit");
                goto done;
            }
            raw[k] = (unsigned char)(hi << 4 | lo);
        }
        if (!sha(ctx, 0x00, raw, bytes, NULL, 0, leaves + 32 * i)) {
            PyErr_SetString(PyExc_RuntimeError, "merkle_extend: SHA-256 failed");
            goto done;
        }
    }

    /* 2. merge: a leaf that completes perfect subtrees folds them into one node */
    Py_ssize_t count = depth;
    for (Py_ssize_t i = 0; i < n; i++) {
        unsigned char node[32], md[EVP_MAX_MD_SIZE];
        memcpy(node, leaves + 32 * i, 32);
        for (unsigned long long s = size; s & 1; s >>= 1) {
            count--;  /* one node per one bit: count > 0 here */
            if (!sha(ctx, 0x01, nodes[count], 32, node, 32, md)) {
                PyErr_SetString(PyExc_RuntimeError, "merkle_extend: SHA-256 failed");
                goto done;
            }
            memcpy(node, md, 32);
        }
        memcpy(nodes[count++], node, 32);
        size++;
    }

    /* 3. the new stack, in place of the old one */
    PyObject *fresh = PyList_New(count);
    if (fresh == NULL) {
        goto done;
    }
    for (Py_ssize_t j = 0; j < count; j++) {
        PyObject *item = PyBytes_FromStringAndSize((const char *)nodes[j], 32);
        if (item == NULL) {
            Py_DECREF(fresh);
            goto done;
        }
        PyList_SET_ITEM(fresh, j, item);
    }
    int failed = PyList_SetSlice(stack, 0, PyList_GET_SIZE(stack), fresh);
    Py_DECREF(fresh);
    if (failed) {
        goto done;
    }
    result = PyLong_FromUnsignedLongLong(size);

done:
    EVP_MD_CTX_free(ctx);
    PyMem_Free(raw);
    PyMem_Free(leaves);
    return result;
}
