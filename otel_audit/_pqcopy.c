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
 *
 * ``Copier`` goes one step further: batches handed to it are sent one after the other,
 * in order, by a thread of its own that never takes the GIL, so the server goes from one
 * batch to the next without waiting for a Python thread to be scheduled. The first
 * failure halts it: the batches queued behind the failed one are given back unsent.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <dlfcn.h>
#include <poll.h>
#include <errno.h>
#include <string.h>
#include <pthread.h>
#include <time.h>
#include <unistd.h>

typedef struct pg_conn PGconn;
typedef struct pg_result PGresult;
typedef struct pg_cancel PGcancel;

/* libpq's enums, as its public header fixes them */
#define CONNECTION_OK 0
#define PQTRANS_IDLE 0
#define PGRES_COMMAND_OK 1
#define PGRES_COPY_IN 4
#define PG_DIAG_SQLSTATE 'C'

/* How long a wait goes without the GIL before looking at signals (seconds). */
#define WAIT_SLICE 0.05

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
    PGcancel *(*getCancel)(PGconn *);
    int (*cancel)(PGcancel *, char *, int);
    void (*freeCancel)(PGcancel *);
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
        {"PQgetCancel", (void **)&pq.getCancel},
        {"PQcancel", (void **)&pq.cancel},
        {"PQfreeCancel", (void **)&pq.freeCancel},
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

/* A Python thread waiting in copy_in() without the GIL: its saved state, so the wait
 * can take the GIL back now and then to run the signal handlers (NULL on the copier's
 * thread, which has no Python state and never runs handlers). */
typedef struct {
    PyThreadState *save;
    int interrupted;  /* a handler raised: the exception is set, the COPY cancelled */
} waiter;

/* A handler raised while ``w`` waited: ask the server to cancel the COPY (it then fails
 * with SQLSTATE 57014, and the connection stays usable once its results are read). */
static void
cancel_copy(PGconn *conn)
{
    char message[256];
    PGcancel *cancel = pq.getCancel(conn);
    if (cancel != NULL) {
        pq.cancel(cancel, message, (int)sizeof message);
        pq.freeCancel(cancel);
    }
}

/* Wait until the socket is ready (events), retrying on signals. With a waiter, the wait
 * is cut in slices and the signal handlers run between them (the first one that raises
 * cancels the COPY; the wait then goes on until the server answers). */
static int
wait_socket(PGconn *conn, short events, waiter *w)
{
    struct pollfd pfd = {.fd = pq.socket(conn), .events = events};
    if (pfd.fd < 0) {
        return -1;
    }
    int slice = w != NULL && !w->interrupted ? (int)(WAIT_SLICE * 1000) : -1;
    for (;;) {
        int rv = poll(&pfd, 1, slice);
        if (rv > 0 || (rv == 0 && slice < 0)) {
            return 0;
        }
        if (rv < 0 && errno != EINTR) {
            return -1;
        }
        if (w != NULL && !w->interrupted) {
            PyEval_RestoreThread(w->save);
            int failed = PyErr_CheckSignals() < 0;
            w->save = PyEval_SaveThread();
            if (failed) {
                w->interrupted = 1;
                slice = -1;
                cancel_copy(conn);
            }
        }
    }
}

/* Send everything queued (libpq's rule for a nonblocking connection: wait for read or
 * write readiness; on read readiness consume input, which may hold a server error). */
static int
flush_all(PGconn *conn, failure *f, waiter *w)
{
    for (;;) {
        int rv = pq.flush(conn);
        if (rv == 0) {
            return 0;
        }
        if (rv < 0 || wait_socket(conn, POLLIN | POLLOUT, w) < 0 || !pq.consumeInput(conn)) {
            fail_conn(f, conn);
            return -1;
        }
    }
}

/* The next result, waiting for it without blocking inside libpq. */
static PGresult *
next_result(PGconn *conn, failure *f, int *broken, waiter *w)
{
    while (pq.isBusy(conn)) {
        if (wait_socket(conn, POLLIN, w) < 0 || !pq.consumeInput(conn)) {
            fail_conn(f, conn);
            *broken = 1;
            return NULL;
        }
    }
    return pq.getResult(conn);
}

/* Take results up to the end of the command; note the first error. */
static void
drain(PGconn *conn, failure *f, int *broken, waiter *w)
{
    PGresult *res;
    while (!*broken && (res = next_result(conn, f, broken, w)) != NULL) {
        int st = pq.resultStatus(res);
        if (st != PGRES_COMMAND_OK && st != PGRES_COPY_IN) {
            fail(f, pq.resultErrorField(res, PG_DIAG_SQLSTATE), pq.resultErrorMessage(res));
        }
        pq.clear(res);
    }
}

/* One COPY of one batch; 0 when committed. */
static int
copy_one(PGconn *conn, const char *command, const char *data, Py_ssize_t len, failure *f,
         waiter *w)
{
    int broken = 0;
    if (pq.status(conn) != CONNECTION_OK || pq.transactionStatus(conn) != PQTRANS_IDLE) {
        fail(f, NULL, "the connection is not idle");
        return -1;
    }
    if (!pq.sendQuery(conn, command) || flush_all(conn, f, w) < 0) {
        fail_conn(f, conn);
        return -1;
    }
    PGresult *res = next_result(conn, f, &broken, w);
    if (res == NULL) {
        if (!broken) {
            fail(f, NULL, "COPY gave no result");
        }
        return -1;
    }
    if (pq.resultStatus(res) != PGRES_COPY_IN) {
        fail(f, pq.resultErrorField(res, PG_DIAG_SQLSTATE), pq.resultErrorMessage(res));
        pq.clear(res);
        drain(conn, f, &broken, w);
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
            if (wait_socket(conn, POLLOUT, w) < 0 || pq.flush(conn) < 0) {
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
        if (wait_socket(conn, POLLOUT, w) < 0 || pq.flush(conn) < 0) {
            fail_conn(f, conn);
            return -1;
        }
    }
    if (flush_all(conn, f, w) < 0) {
        return -1;
    }
    drain(conn, f, &broken, w);
    return f->message != NULL ? -1 : 0;
}

/* None for no failure, else (sqlstate or None, message). */
static PyObject *
failure_value(const failure *f)
{
    if (f->message == NULL) {
        Py_RETURN_NONE;
    }
    return f->sqlstate[0] ? Py_BuildValue("(ss)", f->sqlstate, f->message)
                          : Py_BuildValue("(Os)", Py_None, f->message);
}

/* The connection of a call taking (conn, command, data[, option]); NULL with an error
 * set when the arguments are not that. */
static PGconn *
batch_args(const char *name, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3 && nargs != 4) {
        PyErr_Format(PyExc_TypeError, "%s() takes 3 or 4 arguments", name);
        return NULL;
    }
    if (!bound) {
        PyErr_SetString(PyExc_RuntimeError, "libpq is not bound: call bind() first");
        return NULL;
    }
    if (!PyLong_Check(args[0]) || !PyBytes_Check(args[1]) || !PyBytes_Check(args[2])) {
        PyErr_Format(PyExc_TypeError, "%s() takes an int and two bytes", name);
        return NULL;
    }
    PGconn *conn = (PGconn *)PyLong_AsVoidPtr(args[0]);
    if (conn == NULL && !PyErr_Occurred()) {
        PyErr_SetString(PyExc_ValueError, "the connection is closed");
    }
    return conn;
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
    PGconn *conn = batch_args("copy_in", args, nargs);
    if (conn == NULL) {
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
    /* the GIL is let go for the whole COPY, taken back only between slices of a long
     * wait to run the signal handlers (Ctrl-C while the table is locked) */
    waiter w = {PyEval_SaveThread(), 0};
    copy_one(conn, command, data, len, &f, &w);
    if (busy != NULL) {
        busy[0] = 0;
    }
    PyEval_RestoreThread(w.save);
    if (busy != NULL) {
        PyBuffer_Release(&view);
    }
    if (w.interrupted) {  /* the handler's exception, the COPY cancelled and read out */
        free(f.message);
        return NULL;
    }
    PyObject *result = failure_value(&f);
    free(f.message);
    return result;
}

/* ------------------------------------------------------------------ Copier, Ticket */

enum { T_QUEUED, T_RUNNING, T_DONE, T_CANCELLED };

typedef struct Copier Copier;

/* One batch handed to a Copier: its data, its place in the queue, its outcome. */
typedef struct Ticket {
    PyObject_HEAD
    Copier *owner;        /* strong */
    PyObject *command;    /* bytes, strong: read by the copier's thread without the GIL */
    PyObject *data;       /* bytes, strong */
    PGconn *conn;
    int state;            /* under owner->mu */
    failure f;            /* set by the copier's thread before state becomes T_DONE */
    struct Ticket *next;  /* in the owner's queue or its finished list */
} Ticket;

struct Copier {
    PyObject_HEAD
    pthread_mutex_t mu;
    pthread_cond_t cv;    /* broadcast whenever a ticket finishes or the queue changes */
    pthread_t thread;
    int started, stopping, halted;
    pid_t pid;            /* the process that owns the thread (a fork's child does not) */
    Ticket *head, *tail;  /* queued, in order; each holds a reference owned by the queue */
    Ticket *running;
    Ticket *finished;     /* done or cancelled: the queue's references, to release */
    Py_ssize_t pending;   /* queued + running */
};

static PyTypeObject TicketType;
static PyTypeObject CopierType;

/* Move ``t`` to the finished list (under mu). */
static void
finish(Copier *c, Ticket *t, int state)
{
    t->state = state;
    t->next = c->finished;
    c->finished = t;
}

/* Cancel every queued ticket (under mu). */
static void
cancel_queued(Copier *c)
{
    while (c->head != NULL) {
        Ticket *t = c->head;
        c->head = t->next;
        c->pending--;
        finish(c, t, T_CANCELLED);
    }
    c->tail = NULL;
}

static void *
copier_main(void *arg)
{
    Copier *c = (Copier *)arg;
    pthread_mutex_lock(&c->mu);
    for (;;) {
        while (c->head == NULL && !c->stopping) {
            pthread_cond_wait(&c->cv, &c->mu);
        }
        if (c->head == NULL) {
            break;
        }
        Ticket *t = c->head;
        c->head = t->next;
        if (c->head == NULL) {
            c->tail = NULL;
        }
        t->state = T_RUNNING;
        c->running = t;
        pthread_mutex_unlock(&c->mu);
        copy_one(t->conn, PyBytes_AS_STRING(t->command), PyBytes_AS_STRING(t->data),
                 PyBytes_GET_SIZE(t->data), &t->f, NULL);
        pthread_mutex_lock(&c->mu);
        c->running = NULL;
        c->pending--;
        finish(c, t, T_DONE);
        if (t->f.message != NULL) {  /* halt: what follows must not overtake it */
            c->halted = 1;
            cancel_queued(c);
        }
        pthread_cond_broadcast(&c->cv);
    }
    pthread_mutex_unlock(&c->mu);
    return NULL;
}

/* Release the queue's references to finished tickets (with the GIL). */
static void
release_finished(Copier *c)
{
    pthread_mutex_lock(&c->mu);
    Ticket *t = c->finished;
    c->finished = NULL;
    pthread_mutex_unlock(&c->mu);
    while (t != NULL) {
        Ticket *next = t->next;
        t->next = NULL;
        Py_DECREF(t);
        t = next;
    }
}

static int
foreign(Copier *c)
{
    return c->pid != getpid();
}


static double
now_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);  /* the clock pthread_cond_timedwait uses */
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Wait without the GIL until ``done(c)`` holds, for at most ``timeout`` seconds (< 0:
 * no limit). The wait is cut in slices; between two the GIL is taken back to run the
 * signal handlers, so Ctrl-C is honoured while the main thread waits here.
 * 1: done; 0: timed out; -1: a signal handler raised (the exception is set). */
static int
wait_until(Copier *c, int (*done)(Copier *, void *), void *arg, double timeout)
{
    double deadline = timeout < 0 ? -1.0 : now_seconds() + timeout;
    for (;;) {
        int finished;
        Py_BEGIN_ALLOW_THREADS
        double until = now_seconds() + WAIT_SLICE;
        if (deadline >= 0 && deadline < until) {
            until = deadline;
        }
        struct timespec ts;
        ts.tv_sec = (time_t)until;
        ts.tv_nsec = (long)((until - (double)ts.tv_sec) * 1e9);
        pthread_mutex_lock(&c->mu);
        while (!(finished = done(c, arg))) {
            if (pthread_cond_timedwait(&c->cv, &c->mu, &ts) != 0) {
                finished = done(c, arg);
                break;
            }
        }
        pthread_mutex_unlock(&c->mu);
        Py_END_ALLOW_THREADS
        if (finished) {
            return 1;
        }
        if (PyErr_CheckSignals() < 0) {
            return -1;
        }
        if (deadline >= 0 && now_seconds() >= deadline) {
            return 0;
        }
    }
}

/* A timeout argument: None for no limit, else seconds >= 0; -2 with an error set. */
static double
timeout_arg(PyObject *const *args, Py_ssize_t nargs, const char *name)
{
    if (nargs > 1) {
        PyErr_Format(PyExc_TypeError, "%s() takes at most 1 argument", name);
        return -2.0;
    }
    if (nargs == 0 || args[0] == Py_None) {
        return -1.0;
    }
    double timeout = PyFloat_AsDouble(args[0]);
    if (timeout == -1.0 && PyErr_Occurred()) {
        return -2.0;
    }
    return timeout < 0 ? 0.0 : timeout;
}

static int
is_idle(Copier *c, void *arg)
{
    (void)arg;
    return c->pending == 0;
}

static int
not_running(Copier *c, void *arg)
{
    (void)arg;
    return c->running == NULL;
}

static int
ticket_finished(Copier *c, void *arg)
{
    (void)c;
    return ((Ticket *)arg)->state >= T_DONE;
}

static PyObject *
Copier_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    if (PyTuple_GET_SIZE(args) != 0 || (kwargs != NULL && PyDict_GET_SIZE(kwargs) != 0)) {
        PyErr_SetString(PyExc_TypeError, "Copier() takes no arguments");
        return NULL;
    }
    Copier *c = (Copier *)type->tp_alloc(type, 0);
    if (c == NULL) {
        return NULL;
    }
    if (pthread_mutex_init(&c->mu, NULL) != 0 || pthread_cond_init(&c->cv, NULL) != 0) {
        Py_DECREF(c);
        PyErr_SetString(PyExc_OSError, "cannot initialise the copier's lock");
        return NULL;
    }
    c->pid = getpid();
    return (PyObject *)c;
}

static void
Copier_dealloc(Copier *c)
{
    /* tickets hold their copier: by now nothing is queued, running or finished */
    if (!foreign(c)) {
        if (c->started) {
            pthread_mutex_lock(&c->mu);
            c->stopping = 1;
            pthread_cond_broadcast(&c->cv);
            pthread_mutex_unlock(&c->mu);
            Py_BEGIN_ALLOW_THREADS
            pthread_join(c->thread, NULL);
            Py_END_ALLOW_THREADS
        }
        pthread_cond_destroy(&c->cv);
        pthread_mutex_destroy(&c->mu);
    }  /* in a fork's child the lock may have been held at fork time: leave it alone */
    Py_TYPE(c)->tp_free((PyObject *)c);
}

/* submit(conn, command, data, resume=False) -> Ticket or None */
static PyObject *
Copier_submit(Copier *c, PyObject *const *args, Py_ssize_t nargs)
{
    PGconn *conn = batch_args("submit", args, nargs);
    if (conn == NULL) {
        return NULL;
    }
    int resume = nargs == 4 ? PyObject_IsTrue(args[3]) : 0;
    if (resume < 0) {
        return NULL;
    }
    if (foreign(c)) {
        Py_RETURN_NONE;  /* a fork's child: its parent's copier does not run here */
    }
    release_finished(c);
    Ticket *t = PyObject_New(Ticket, &TicketType);
    if (t == NULL) {
        return NULL;
    }
    Py_INCREF(c);
    t->owner = c;
    Py_INCREF(args[1]);
    t->command = args[1];
    Py_INCREF(args[2]);
    t->data = args[2];
    t->conn = conn;
    t->state = T_QUEUED;
    t->f.sqlstate[0] = '\0';
    t->f.message = NULL;
    t->next = NULL;
    pthread_mutex_lock(&c->mu);
    if (c->halted && !resume) {
        pthread_mutex_unlock(&c->mu);
        Py_DECREF(t);
        Py_RETURN_NONE;
    }
    if (!c->started) {
        if (pthread_create(&c->thread, NULL, copier_main, c) != 0) {
            pthread_mutex_unlock(&c->mu);
            Py_DECREF(t);
            Py_RETURN_NONE;  /* no thread: the caller writes the batch itself */
        }
        c->started = 1;
    }
    c->halted = 0;
    Py_INCREF(t);  /* the queue's reference */
    if (c->tail != NULL) {
        c->tail->next = t;
    } else {
        c->head = t;
    }
    c->tail = t;
    c->pending++;
    pthread_cond_broadcast(&c->cv);
    pthread_mutex_unlock(&c->mu);
    return (PyObject *)t;
}

/* halt(timeout=None) -> bool: cancel what is queued, wait (at most ``timeout`` seconds)
 * for the running batch, refuse batches until a submit(..., resume=True). True once no
 * batch runs; False if one still does at the deadline. */
static PyObject *
Copier_halt(Copier *c, PyObject *const *args, Py_ssize_t nargs)
{
    double timeout = timeout_arg(args, nargs, "halt");
    if (timeout < -1.5) {
        return NULL;
    }
    int rv = 1;
    if (!foreign(c)) {
        pthread_mutex_lock(&c->mu);
        c->halted = 1;
        cancel_queued(c);
        pthread_cond_broadcast(&c->cv);
        pthread_mutex_unlock(&c->mu);
        rv = wait_until(c, not_running, NULL, timeout);
        release_finished(c);
    }
    if (rv < 0) {
        return NULL;
    }
    return PyBool_FromLong(rv);
}

/* settle(timeout=None) -> bool: wait (at most ``timeout`` seconds) until every batch
 * handed over is done (or cancelled); False if some still are not at the deadline. */
static PyObject *
Copier_settle(Copier *c, PyObject *const *args, Py_ssize_t nargs)
{
    double timeout = timeout_arg(args, nargs, "settle");
    if (timeout < -1.5) {
        return NULL;
    }
    int rv = 1;
    if (!foreign(c)) {
        rv = wait_until(c, is_idle, NULL, timeout);
        release_finished(c);
    }
    if (rv < 0) {
        return NULL;
    }
    return PyBool_FromLong(rv);
}

static PyObject *
Copier_get_halted(Copier *c, void *Py_UNUSED(closure))
{
    if (foreign(c)) {
        Py_RETURN_TRUE;
    }
    pthread_mutex_lock(&c->mu);
    int halted = c->halted;
    pthread_mutex_unlock(&c->mu);
    return PyBool_FromLong(halted);
}

static PyObject *
Copier_get_pending(Copier *c, void *Py_UNUSED(closure))
{
    if (foreign(c)) {
        return PyLong_FromLong(0);
    }
    pthread_mutex_lock(&c->mu);
    Py_ssize_t pending = c->pending;
    pthread_mutex_unlock(&c->mu);
    return PyLong_FromSsize_t(pending);
}

static PyMethodDef Copier_methods[] = {
    {"submit", (PyCFunction)(void (*)(void))Copier_submit, METH_FASTCALL,
     "Queue a batch (as copy_in takes it); a Ticket, or None while halted."},
    {"halt", (PyCFunction)(void (*)(void))Copier_halt, METH_FASTCALL,
     "halt(timeout=None) -> bool: cancel the queued batches, wait (bounded) for the "
     "running one, refuse new ones; False if it still runs at the deadline."},
    {"settle", (PyCFunction)(void (*)(void))Copier_settle, METH_FASTCALL,
     "settle(timeout=None) -> bool: wait (bounded) until every batch handed over is "
     "done or cancelled."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Copier_getset[] = {
    {"halted", (getter)Copier_get_halted, NULL,
     "Whether a failure (or halt()) stopped it: submit() refuses until resumed.", NULL},
    {"pending", (getter)Copier_get_pending, NULL, "Batches queued or running.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject CopierType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "otel_audit._pqcopy.Copier",
    .tp_basicsize = sizeof(Copier),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Sends batches of COPY text in order on a thread of its own, without the GIL.",
    .tp_new = Copier_new,
    .tp_dealloc = (destructor)Copier_dealloc,
    .tp_methods = Copier_methods,
    .tp_getset = Copier_getset,
};

static void
Ticket_dealloc(Ticket *t)
{
    Py_XDECREF(t->command);
    Py_XDECREF(t->data);
    Py_XDECREF(t->owner);
    free(t->f.message);
    PyObject_Free(t);
}

/* wait() -> None (committed), (sqlstate or None, message) (failed) or False (cancelled:
 * never sent) */
static PyObject *
Ticket_wait(Ticket *t, PyObject *Py_UNUSED(arg))
{
    Copier *c = t->owner;
    if (foreign(c)) {
        Py_RETURN_FALSE;
    }
    pthread_mutex_lock(&c->mu);
    int finished = t->state >= T_DONE;
    pthread_mutex_unlock(&c->mu);
    if (!finished && wait_until(c, ticket_finished, t, -1.0) < 0) {
        return NULL;  /* a signal handler raised (Ctrl-C in the main thread) */
    }
    release_finished(c);
    if (t->state == T_CANCELLED) {
        Py_RETURN_FALSE;
    }
    return failure_value(&t->f);
}

static PyMethodDef Ticket_methods[] = {
    {"wait", (PyCFunction)Ticket_wait, METH_NOARGS,
     "Wait for the batch: None once committed, (sqlstate, message) if it failed, "
     "False if it was cancelled unsent."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject TicketType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "otel_audit._pqcopy.Ticket",
    .tp_basicsize = sizeof(Ticket),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "One batch handed to a Copier.",
    .tp_dealloc = (destructor)Ticket_dealloc,
    .tp_methods = Ticket_methods,
};

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
    if (PyType_Ready(&CopierType) < 0 || PyType_Ready(&TicketType) < 0) {
        return NULL;
    }
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) {
        return NULL;
    }
    if (PyModule_AddObjectRef(m, "Copier", (PyObject *)&CopierType) < 0
        || PyModule_AddObjectRef(m, "Ticket", (PyObject *)&TicketType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
