/* COPY of a PostgreSQL batch through libpq in one call, with the GIL released for all of
 * it (optional: without the module the writer runs psycopg's own COPY).
 *
 * psycopg's COPY is driven from Python: it comes back for the GIL at each step (the
 * COPY command, the data, the end of the data, the result), and a thread coming back
 * for the GIL while another thread is busy in Python waits for that thread's switch
 * interval (5 ms) each time. This module runs the same protocol on psycopg's own
 * connection (its PGconn pointer) with libpq's functions, taken from the very libpq
 * psycopg loaded, and lets go of the GIL once for the whole batch.
 *
 * The connection must be idle and in autocommit mode: the batch is one COPY, which is
 * its own transaction. A failure comes back as the server's SQLSTATE and message (or a
 * connection error, without SQLSTATE).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <dlfcn.h>
#include <poll.h>
#include <errno.h>
#include <string.h>

typedef struct pg_conn PGconn;
typedef struct pg_result PGresult;

/* libpq's enums, as its public header fixes them */
#define CONNECTION_OK 0
#define PQTRANS_IDLE 0
#define PGRES_COMMAND_OK 1
#define PGRES_COPY_IN 4
#define PG_DIAG_SQLSTATE 'C'

static struct {
    int (*sendQuery)(PGconn *, const char *);
    int (*flush)(PGconn *);
    int (*consumeInput)(PGconn *);
    int (*isBusy)(PGconn *);
    PGresult *(*getResult)(PGconn *);
    int (*resultStatus)(const PGresult *);
    char *(*resultErrorField)(const PGresult *, int);
    char *(*resultErrorMessage)(const PGresult *);
    void (*clear)(PGresult *);
    int (*putCopyData)(PGconn *, const char *, int);
    int (*putCopyEnd)(PGconn *, const char *);
    int (*socket)(const PGconn *);
    char *(*errorMessage)(const PGconn *);
    int (*status)(const PGconn *);
    int (*transactionStatus)(const PGconn *);
} pq;
static int bound = 0;

/* bind(path): resolve libpq's functions from the library loaded at ``path`` or one of
 * its dependencies (psycopg's own libpq: the path of the module that links it). */
static PyObject *
bind(PyObject *self, PyObject *arg)
{
    PyObject *encoded;
    if (!PyUnicode_FSConverter(arg, &encoded)) {
        return NULL;
    }
    void *handle = dlopen(PyBytes_AS_STRING(encoded), RTLD_NOW | RTLD_NOLOAD);
    Py_DECREF(encoded);
    if (handle == NULL) {
        PyErr_Format(PyExc_OSError, "libpq is not loaded from %R", arg);
        return NULL;
    }
    struct { const char *name; void **slot; } names[] = {
        {"PQsendQuery", (void **)&pq.sendQuery},
        {"PQflush", (void **)&pq.flush},
        {"PQconsumeInput", (void **)&pq.consumeInput},
        {"PQisBusy", (void **)&pq.isBusy},
        {"PQgetResult", (void **)&pq.getResult},
        {"PQresultStatus", (void **)&pq.resultStatus},
        {"PQresultErrorField", (void **)&pq.resultErrorField},
        {"PQresultErrorMessage", (void **)&pq.resultErrorMessage},
        {"PQclear", (void **)&pq.clear},
        {"PQputCopyData", (void **)&pq.putCopyData},
        {"PQputCopyEnd", (void **)&pq.putCopyEnd},
        {"PQsocket", (void **)&pq.socket},
        {"PQerrorMessage", (void **)&pq.errorMessage},
        {"PQstatus", (void **)&pq.status},
        {"PQtransactionStatus", (void **)&pq.transactionStatus},
    };
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        void *fn = dlsym(handle, names[i].name);
        if (fn == NULL) {
            bound = 0;
            PyErr_Format(PyExc_OSError, "libpq at %R has no %s", arg, names[i].name);
            return NULL;
        }
        *names[i].slot = fn;
    }
    bound = 1;  /* the handle stays open: psycopg keeps the library loaded anyway */
    Py_RETURN_NONE;
}

/* What failed: the server's SQLSTATE (empty for a connection error) and message. */
typedef struct {
    char sqlstate[6];
    char *message;  /* malloc'd */
} failure;

static void
fail(failure *f, const char *sqlstate, const char *message)
{
    if (f->message != NULL) {
        return;  /* the first error is the one reported */
    }
    if (sqlstate != NULL) {
        strncpy(f->sqlstate, sqlstate, 5);
        f->sqlstate[5] = '\0';
    }
    f->message = strdup(message != NULL && message[0] ? message : "libpq error");
}

static void
fail_conn(failure *f, PGconn *conn)
{
    fail(f, NULL, pq.errorMessage(conn));
}

/* Wait until the socket is ready (events), retrying on signals. */
static int
wait_socket(PGconn *conn, short events)
{
    struct pollfd pfd = {.fd = pq.socket(conn), .events = events};
    if (pfd.fd < 0) {
        return -1;
    }
    for (;;) {
        int rv = poll(&pfd, 1, -1);
        if (rv >= 0) {
            return 0;
        }
        if (errno != EINTR) {
            return -1;
        }
    }
}

/* Send everything queued (libpq's rule for a nonblocking connection: wait for read or
 * write readiness; on read readiness consume input, which may hold a server error). */
static int
flush_all(PGconn *conn, failure *f)
{
    for (;;) {
        int rv = pq.flush(conn);
        if (rv == 0) {
            return 0;
        }
        if (rv < 0 || wait_socket(conn, POLLIN | POLLOUT) < 0 || !pq.consumeInput(conn)) {
            fail_conn(f, conn);
            return -1;
        }
    }
}

/* The next result, waiting for it without blocking inside libpq. */
static PGresult *
next_result(PGconn *conn, failure *f, int *broken)
{
    while (pq.isBusy(conn)) {
        if (wait_socket(conn, POLLIN) < 0 || !pq.consumeInput(conn)) {
            fail_conn(f, conn);
            *broken = 1;
            return NULL;
        }
    }
    return pq.getResult(conn);
}

/* Take results up to the end of the command; note the first error. */
static void
drain(PGconn *conn, failure *f, int *broken)
{
    PGresult *res;
    while (!*broken && (res = next_result(conn, f, broken)) != NULL) {
        int st = pq.resultStatus(res);
        if (st != PGRES_COMMAND_OK && st != PGRES_COPY_IN) {
            fail(f, pq.resultErrorField(res, PG_DIAG_SQLSTATE), pq.resultErrorMessage(res));
        }
        pq.clear(res);
    }
}

/* One COPY of one batch; 0 when committed. */
static int
copy_one(PGconn *conn, const char *command, const char *data, Py_ssize_t len, failure *f)
{
    int broken = 0;
    if (!pq.sendQuery(conn, command) || flush_all(conn, f) < 0) {
        fail_conn(f, conn);
        return -1;
    }
    PGresult *res = next_result(conn, f, &broken);
    if (res == NULL) {
        if (!broken) {
            fail(f, NULL, "COPY gave no result");
        }
        return -1;
    }
    if (pq.resultStatus(res) != PGRES_COPY_IN) {
        fail(f, pq.resultErrorField(res, PG_DIAG_SQLSTATE), pq.resultErrorMessage(res));
        pq.clear(res);
        drain(conn, f, &broken);
        return -1;
    }
    pq.clear(res);
    const Py_ssize_t step = 1 << 20;
    for (Py_ssize_t off = 0; off < len;) {
        int n = (int)(len - off < step ? len - off : step);
        int rv = pq.putCopyData(conn, data + off, n);
        if (rv < 0) {
            fail_conn(f, conn);
            return -1;
        }
        if (rv == 0) {  /* nonblocking and libpq's buffer is full: send some first */
            if (wait_socket(conn, POLLOUT) < 0 || pq.flush(conn) < 0) {
                fail_conn(f, conn);
                return -1;
            }
            continue;
        }
        off += n;
    }
    for (;;) {
        int rv = pq.putCopyEnd(conn, NULL);
        if (rv < 0) {
            fail_conn(f, conn);
            return -1;
        }
        if (rv > 0) {
            break;
        }
        if (wait_socket(conn, POLLOUT) < 0 || pq.flush(conn) < 0) {
            fail_conn(f, conn);
            return -1;
        }
    }
    if (flush_all(conn, f) < 0) {
        return -1;
    }
    drain(conn, f, &broken);
    return f->message != NULL ? -1 : 0;
}

/* copy_in(conn, command, data[, busy]) -> None or (sqlstate or None, message)
 *
 * conn: the address of an idle autocommit PGconn (psycopg's ``pgconn.pgconn_ptr``);
 * command: ``COPY ... FROM STDIN``; data: the batch in COPY text format, sent as one
 * COPY, its own transaction. Returns None once committed; else the server's SQLSTATE
 * and message, or None and libpq's message when the connection failed.
 *
 * busy: a bytearray whose first byte is 1 while the call runs without the GIL (set
 * before letting go of it, cleared once the COPY is done, before taking it back): other
 * threads read it to know whether this one is about to want the GIL.
 */
static PyObject *
copy_in(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3 && nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "copy_in() takes 3 or 4 arguments");
        return NULL;
    }
    if (!bound) {
        PyErr_SetString(PyExc_RuntimeError, "libpq is not bound: call bind() first");
        return NULL;
    }
    if (!PyLong_Check(args[0]) || !PyBytes_Check(args[1]) || !PyBytes_Check(args[2])) {
        PyErr_SetString(PyExc_TypeError, "copy_in() takes an int and two bytes");
        return NULL;
    }
    PGconn *conn = (PGconn *)PyLong_AsVoidPtr(args[0]);
    if (conn == NULL) {
        if (!PyErr_Occurred()) {
            PyErr_SetString(PyExc_ValueError, "the connection is closed");
        }
        return NULL;
    }
    if (pq.status(conn) != CONNECTION_OK || pq.transactionStatus(conn) != PQTRANS_IDLE) {
        PyErr_SetString(PyExc_ValueError, "the connection is not idle");
        return NULL;
    }
    volatile char *busy = NULL;
    Py_buffer view = {0};  /* exported while held: the bytearray cannot be resized */
    if (nargs == 4 && args[3] != Py_None) {
        if (!PyByteArray_Check(args[3]) || PyByteArray_GET_SIZE(args[3]) < 1) {
            PyErr_SetString(PyExc_TypeError, "busy must be a non-empty bytearray");
            return NULL;
        }
        if (PyObject_GetBuffer(args[3], &view, PyBUF_WRITABLE) < 0) {
            return NULL;
        }
        busy = (volatile char *)view.buf;
        busy[0] = 1;
    }
    const char *command = PyBytes_AS_STRING(args[1]);  /* bytes: immutable, held by the caller */
    const char *data = PyBytes_AS_STRING(args[2]);
    Py_ssize_t len = PyBytes_GET_SIZE(args[2]);
    failure f = {{0}, NULL};
    Py_BEGIN_ALLOW_THREADS
    copy_one(conn, command, data, len, &f);
    if (busy != NULL) {
        busy[0] = 0;
    }
    Py_END_ALLOW_THREADS
    if (busy != NULL) {
        PyBuffer_Release(&view);
    }
    if (f.message == NULL) {
        Py_RETURN_NONE;
    }
    PyObject *result = f.sqlstate[0] ? Py_BuildValue("(ss)", f.sqlstate, f.message)
                                     : Py_BuildValue("(Os)", Py_None, f.message);
    free(f.message);
    return result;
}

static PyMethodDef methods[] = {
    {"bind", (PyCFunction)bind, METH_O,
     "Resolve libpq's functions from the library loaded at a path (or its dependencies)."},
    {"copy_in", (PyCFunction)(void (*)(void))copy_in, METH_FASTCALL,
     "COPY a batch of COPY text as its own transaction, with the GIL released."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_pqcopy",
    "PostgreSQL COPY through libpq with the GIL released (optional).", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC
PyInit__pqcopy(void)
{
    return PyModule_Create(&module);
}
