/* cosched._speedups: the switch path of cosched._coro in C.
 *
 * cosched/_coro.py is the reference implementation and stays complete on its own;
 * this module replaces only the parts every switch runs through, with the same
 * behaviour:
 *
 *   - CoroutineBase / ChainBase: the fields of Coroutine and _Chain as a C struct,
 *     so the driver reads them without attribute lookups (_coro.py subclasses them);
 *   - trap(kind): the object a switching call awaits to reach its chain's driver
 *     (the Python generator _trap, without a frame);
 *   - drive(kind, target, args): main's switching call, the flat driver loop
 *     (the Python generator _drive); its hot transitions are inlined, every other
 *     transition calls the same Python helper _drive calls (_enter, _leave, _end);
 *   - yield_(*values): the hot case of yield_; anything else goes to the Python one.
 *
 * Objects awaited here implement am_send, so CPython's SEND opcode and the driver's
 * PyIter_Send switch without creating frames or StopIteration objects.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stddef.h>
#include <structmember.h>  /* T_OBJECT_EX: how trio's Task declares its slots */

/* ---------------------------------------------------------------------------------
 * What _coro.py hands over at import (setup()): identities compared on every switch,
 * and the Python helpers that handle the rare transitions. */

static PyObject *S_INITIAL, *S_SUSPENDED, *S_RUNNING, *S_NORMAL;
static PyObject *T_YIELD, *T_TRANSFER, *T_SAFEYIELD, *T_RESUME, *T_WRAP, *T_ITER;
static PyTypeObject *TrapType;      /* _coro._Trap */
static PyTypeObject *CoroType;      /* _coro.Coroutine (a subclass of CoroutineBase) */
static PyObject *DeliveryType;      /* _coro._Delivery */
static PyObject *chain_var;         /* _coro._chain (ContextVar) */
static PyObject *run_context;       /* trio's GLOBAL_RUN_CONTEXT, or None */
static PyObject *py_new_chain, *py_enter, *py_leave, *py_end, *py_safe_leave, *py_abandon;
static PyObject *py_body, *py_unpack, *py_rejected, *py_yield_slow, *py_nest_call, *py_hold;
static PyObject *str_task, *str_cancel_status, *str_throw, *str_rundict_key;
static PyTypeObject *task_type;           /* trio's Task, or NULL */
static Py_ssize_t cancel_status_offset;   /* where Task keeps _cancel_status, or 0 */

/* ---------------------------------------------------------------------------------
 * Coroutine and chain fields. Both start with the fields of a pending call, so the
 * driver treats "the coroutine or chain that waits" alike (dest, cur). */

#define NODE_HEAD \
    PyObject_HEAD \
    PyObject *state;    /* status: _INITIAL/_SUSPENDED/_RUNNING/_NORMAL/_DEAD */ \
    PyObject *pending;  /* trap of its pending call */ \
    PyObject *awaits;   /* while normal: what its pending call waits for (see _callee) */ \
    PyObject *call_cs;  /* trio cancel status its pending nesting call was made under */ \
    PyObject *resumer;  /* who resumed it and still waits for it, else None */ \
    Py_ssize_t depth;   /* resume nesting depth (main = 0) */

typedef struct { NODE_HEAD } NodeObject;

typedef struct {
    NODE_HEAD
    PyObject *fn;        /* body callable until the first start, then None */
    PyObject *co;        /* the Python coroutine object while started and not dead */
    PyObject *entry_cs;  /* trio cancel status when it last gained control */
    PyObject *error;     /* what it died of, kept for close() */
    PyObject *sw;        /* the SafeWrapped it is the body of, else None */
    Py_ssize_t closing;  /* 0; 1 while close() runs its cleanup; 2 once that tried to switch */
    PyObject *weakreflist;
} CoroObject;

typedef struct {
    NODE_HEAD
    PyObject *task;     /* the trio task driving the chain (None outside trio) */
    PyObject *current;  /* the coroutine executing in this chain, None while main runs */
    PyObject *target;   /* trap payload: what the switching call names */
    PyObject *args;     /* trap payload: the values it passes */
    PyObject *holders;  /* coroutines waiting in a call made inside a scope they opened (see
                         * _hold), or None; emptied whenever main gets control */
    Py_ssize_t switches;  /* how many times control passed between coroutines (or main) */
} ChainObject;

#define NODE(o) ((NodeObject *)(o))
/* m is a chain: the context variable only ever holds _Chain objects, checked exactly first. */
#define IS_CHAIN(m) (Py_TYPE(m) == (PyTypeObject *)py_new_chain || PyObject_TypeCheck(m, &ChainBaseType))
#define CORO(o) ((CoroObject *)(o))

static PyObject *
field_get(PyObject *self, void *off)
{
    PyObject *v = *(PyObject **)((char *)self + (Py_ssize_t)off);
    return Py_NewRef(v != NULL ? v : Py_None);  /* NULL only after tp_clear */
}

static int
field_set(PyObject *self, PyObject *value, void *off)
{
    if (value == NULL) {
        PyErr_SetString(PyExc_AttributeError, "cosched coroutine fields cannot be deleted");
        return -1;
    }
    Py_SETREF(*(PyObject **)((char *)self + (Py_ssize_t)off), Py_NewRef(value));
    return 0;
}

static PyObject *
int_get(PyObject *self, void *off)
{
    return PyLong_FromSsize_t(*(Py_ssize_t *)((char *)self + (Py_ssize_t)off));
}

static int
int_set(PyObject *self, PyObject *value, void *off)
{
    if (value == NULL) {
        PyErr_SetString(PyExc_AttributeError, "cosched coroutine fields cannot be deleted");
        return -1;
    }
    Py_ssize_t n = PyLong_AsSsize_t(value);
    if (n == -1 && PyErr_Occurred())
        return -1;
    *(Py_ssize_t *)((char *)self + (Py_ssize_t)off) = n;
    return 0;
}

#define OBJ_FIELD(T, name, field) \
    {name, field_get, field_set, NULL, (void *)offsetof(T, field)}
#define INT_FIELD(T, name, field) \
    {name, int_get, int_set, NULL, (void *)offsetof(T, field)}
#define NODE_FIELDS(T) \
    OBJ_FIELD(T, "_state", state), OBJ_FIELD(T, "_pending", pending), \
    OBJ_FIELD(T, "_awaits", awaits), OBJ_FIELD(T, "_call_cs", call_cs), \
    OBJ_FIELD(T, "_resumer", resumer), INT_FIELD(T, "_depth", depth)

static PyGetSetDef coro_getset[] = {
    NODE_FIELDS(CoroObject),
    OBJ_FIELD(CoroObject, "_fn", fn), OBJ_FIELD(CoroObject, "_co", co),
    OBJ_FIELD(CoroObject, "_entry_cs", entry_cs), OBJ_FIELD(CoroObject, "_error", error),
    OBJ_FIELD(CoroObject, "_sw", sw), INT_FIELD(CoroObject, "_closing", closing),
    {NULL}
};

static PyGetSetDef chain_getset[] = {
    NODE_FIELDS(ChainObject),
    OBJ_FIELD(ChainObject, "task", task), OBJ_FIELD(ChainObject, "current", current),
    OBJ_FIELD(ChainObject, "target", target), OBJ_FIELD(ChainObject, "args", args),
    OBJ_FIELD(ChainObject, "_holders", holders),
    INT_FIELD(ChainObject, "switches", switches),
    {NULL}
};

/* Every object field is set to None at allocation, so C never meets NULL in one. */
static void
fill_none(PyObject *self, Py_ssize_t first, Py_ssize_t last)
{
    for (Py_ssize_t off = first; off <= last; off += sizeof(PyObject *))
        *(PyObject **)((char *)self + off) = Py_NewRef(Py_None);
}

static PyObject *cancel_status(PyObject *task);

/* Coroutine(fn): a new coroutine, initial, its body fn. Made here whole (the Python
 * class has no __init__ with the speedups): one is made at every task start. */
/* The n positional arguments of name(...) into a (and b); -1 with an exception set on
 * a keyword, a wrong count, or before setup() gave the states to start them in. */
static int
new_args(PyObject *args, PyObject *kwds, const char *name, Py_ssize_t n,
         PyObject **a, PyObject **b)
{
    if (S_INITIAL == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "cosched._speedups: setup() was not called");
        return -1;
    }
    if (kwds != NULL && PyDict_GET_SIZE(kwds) != 0) {
        PyErr_Format(PyExc_TypeError, "%s() takes no keyword arguments", name);
        return -1;
    }
    return PyArg_UnpackTuple(args, name, n, n, a, b) ? 0 : -1;
}

static PyObject *
coro_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    PyObject *fn;
    if (new_args(args, kwds, "Coroutine", 1, &fn, NULL) < 0)
        return NULL;
    PyObject *self = type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    fill_none(self, offsetof(CoroObject, state), offsetof(CoroObject, resumer));
    fill_none(self, offsetof(CoroObject, fn), offsetof(CoroObject, sw));
    Py_SETREF(NODE(self)->state, Py_NewRef(S_INITIAL));
    Py_SETREF(CORO(self)->fn, Py_NewRef(fn));
    return self;
}

/* _Chain(kind, task): main's side of a trio task's chains, main running (see
 * _coro._Chain; made here whole, as a coroutine is: one per task). */
static PyObject *
chain_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    PyObject *kind, *task;
    if (new_args(args, kwds, "_Chain", 2, &kind, &task) < 0)
        return NULL;
    PyObject *cs = cancel_status(task);
    if (cs == NULL)
        return NULL;
    PyObject *self = type->tp_alloc(type, 0);
    if (self == NULL) {
        Py_DECREF(cs);
        return NULL;
    }
    fill_none(self, offsetof(ChainObject, state), offsetof(ChainObject, resumer));
    fill_none(self, offsetof(ChainObject, task), offsetof(ChainObject, holders));
    Py_SETREF(NODE(self)->state, Py_NewRef(S_NORMAL));
    Py_SETREF(NODE(self)->pending, Py_NewRef(kind));
    Py_SETREF(NODE(self)->call_cs, cs);
    Py_SETREF(((ChainObject *)self)->task, Py_NewRef(task));
    return self;
}

#define VISIT_NODE(o) \
    Py_VISIT((o)->state); Py_VISIT((o)->pending); Py_VISIT((o)->awaits); \
    Py_VISIT((o)->call_cs); Py_VISIT((o)->resumer)
#define CLEAR_NODE(o) \
    Py_CLEAR((o)->state); Py_CLEAR((o)->pending); Py_CLEAR((o)->awaits); \
    Py_CLEAR((o)->call_cs); Py_CLEAR((o)->resumer)

static int
coro_traverse(CoroObject *self, visitproc visit, void *arg)
{
    VISIT_NODE(self);
    Py_VISIT(self->fn); Py_VISIT(self->co); Py_VISIT(self->entry_cs);
    Py_VISIT(self->error); Py_VISIT(self->sw);
    return 0;
}

static int
coro_clear(CoroObject *self)
{
    CLEAR_NODE(self);
    Py_CLEAR(self->fn); Py_CLEAR(self->co); Py_CLEAR(self->entry_cs);
    Py_CLEAR(self->error); Py_CLEAR(self->sw);
    return 0;
}

static void
coro_dealloc(CoroObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    if (self->weakreflist != NULL)
        PyObject_ClearWeakRefs((PyObject *)self);
    coro_clear(self);
    tp->tp_free((PyObject *)self);
}

static int
chain_traverse(ChainObject *self, visitproc visit, void *arg)
{
    VISIT_NODE(self);
    Py_VISIT(self->task); Py_VISIT(self->current); Py_VISIT(self->target); Py_VISIT(self->args);
    Py_VISIT(self->holders);
    return 0;
}

static int
chain_clear(ChainObject *self)
{
    CLEAR_NODE(self);
    Py_CLEAR(self->task); Py_CLEAR(self->current); Py_CLEAR(self->target); Py_CLEAR(self->args);
    Py_CLEAR(self->holders);
    return 0;
}

static void
chain_dealloc(ChainObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    chain_clear(self);
    tp->tp_free((PyObject *)self);
}

static PyTypeObject CoroBaseType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "cosched._speedups.CoroutineBase",
    .tp_basicsize = sizeof(CoroObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "The fields of a cosched coroutine (see cosched._coro.Coroutine).",
    .tp_new = coro_new,
    .tp_traverse = (traverseproc)coro_traverse,
    .tp_clear = (inquiry)coro_clear,
    .tp_dealloc = (destructor)coro_dealloc,
    .tp_getset = coro_getset,
    .tp_weaklistoffset = offsetof(CoroObject, weakreflist),
};

static PyTypeObject ChainBaseType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "cosched._speedups.ChainBase",
    .tp_basicsize = sizeof(ChainObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "The fields of a chain (see cosched._coro._Chain).",
    .tp_new = chain_new,
    .tp_traverse = (traverseproc)chain_traverse,
    .tp_clear = (inquiry)chain_clear,
    .tp_dealloc = (destructor)chain_dealloc,
    .tp_getset = chain_getset,
};

/* ---------------------------------------------------------------------------------
 * Small helpers */

/* The exception being raised, normalized, with its traceback attached (new ref). */
static PyObject *
fetch_exc(void)
{
    PyObject *t, *v, *tb;
    PyErr_Fetch(&t, &v, &tb);
    PyErr_NormalizeException(&t, &v, &tb);
    if (tb != NULL)
        PyException_SetTraceback(v, tb);
    Py_XDECREF(t);
    Py_XDECREF(tb);
    return v;
}

/* raise e (like Python's ``raise e``: context chaining, traceback kept). */
static void
raise_exc(PyObject *e)
{
    PyErr_SetObject((PyObject *)Py_TYPE(e), e);
}

/* A return value as the StopIteration that send(), throw() and __next__ raise. (Only
 * tp_iternext may return NULL with no error set; send() is what CPython calls under a
 * tracer whenever it resumes with a value, and trio resumes with outcomes.) */
static void
set_stop_iteration(PyObject *value)
{
    if (value == Py_None) {
        PyErr_SetNone(PyExc_StopIteration);
        return;
    }
    PyObject *e = PyObject_CallOneArg(PyExc_StopIteration, value);
    if (e != NULL) {
        PyErr_SetObject(PyExc_StopIteration, e);
        Py_DECREF(e);
    }
}

/* An am_send outcome as send(), throw() and __next__ report it: the value yielded,
 * or NULL with StopIteration(value) set for a return (or the error as it is). */
static PyObject *
method_result(PySendResult st, PyObject *r)
{
    if (st != PYGEN_RETURN)
        return r;
    set_stop_iteration(r);
    Py_DECREF(r);
    return NULL;
}

/* Packing: () -> None, (v,) -> v, else the tuple itself (new ref). */
static PyObject *
pack(PyObject *args)
{
    Py_ssize_t n = PyTuple_GET_SIZE(args);
    if (n == 0)
        Py_RETURN_NONE;
    if (n == 1)
        return Py_NewRef(PyTuple_GET_ITEM(args, 0));
    return Py_NewRef(args);
}

/* The cancel status of the trio task (new ref; None outside trio); NULL on error.
 * trio's Task has __slots__: the slot is read at its offset, as its descriptor would. */
static PyObject *
cancel_status(PyObject *task)
{
    if (task == Py_None)
        Py_RETURN_NONE;
    if (Py_TYPE(task) == task_type && cancel_status_offset > 0) {
        PyObject *cs = *(PyObject **)((char *)task + cancel_status_offset);
        if (cs != NULL)
            return Py_NewRef(cs);
    }
    return PyObject_GetAttr(task, str_cancel_status);
}

/* The trio task running this code, or None (new ref): ``GLOBAL_RUN_CONTEXT.task``.
 * GLOBAL_RUN_CONTEXT is a threading.local; its dict for this thread is looked up once
 * and kept in the thread's state dict, so it dies with the thread. RunContext has no
 * class attributes, so a dict lookup answers what getattr would. */
static PyObject *
current_task(void)
{
    if (run_context == Py_None)
        Py_RETURN_NONE;
    PyObject *tdict = PyThreadState_GetDict();  /* borrowed */
    PyObject *ldict = tdict == NULL ? NULL : PyDict_GetItemWithError(tdict, str_rundict_key);
    if (ldict == NULL) {
        if (PyErr_Occurred())
            PyErr_Clear();
        PyObject *d = PyObject_GetAttrString(run_context, "__dict__");
        if (d == NULL || !PyDict_CheckExact(d) || tdict == NULL ||
                PyDict_SetItem(tdict, str_rundict_key, d) < 0) {
            Py_XDECREF(d);
            PyErr_Clear();
            PyObject *t = PyObject_GetAttr(run_context, str_task);
            if (t == NULL) {
                PyErr_Clear();
                Py_RETURN_NONE;
            }
            return t;
        }
        ldict = d;  /* now also held by the thread's dict */
        Py_DECREF(d);
    }
    PyObject *t = PyDict_GetItemWithError(ldict, str_task);
    if (t == NULL) {
        PyErr_Clear();
        Py_RETURN_NONE;
    }
    return Py_NewRef(t);
}

/* Unpack a (next, value, exc) triple returned by a Python helper into owned refs. */
static int
take_triple(PyObject *triple, PyObject **co, PyObject **value, PyObject **err)
{
    if (triple == NULL)
        return -1;
    if (!PyTuple_CheckExact(triple) || PyTuple_GET_SIZE(triple) != 3) {
        Py_DECREF(triple);
        PyErr_SetString(PyExc_SystemError, "cosched: driver helper returned a bad result");
        return -1;
    }
    Py_XSETREF(*co, Py_NewRef(PyTuple_GET_ITEM(triple, 0)));
    Py_XSETREF(*value, Py_NewRef(PyTuple_GET_ITEM(triple, 1)));
    PyObject *e = PyTuple_GET_ITEM(triple, 2);
    Py_XSETREF(*err, e == Py_None ? NULL : Py_NewRef(e));
    Py_DECREF(triple);
    return 0;
}

/* ---------------------------------------------------------------------------------
 * trap(kind): awaited by a switching call inside a coroutine. It yields kind once, to
 * the chain's driver, and returns what the driver sends back; a _Delivery thrown in
 * is unwrapped and raised here, at the innermost pending call. */

typedef struct {
    PyObject_HEAD
    PyObject *kind;
    int state;  /* 0: not yet yielded; 1: yielded, waiting; 2: finished */
} TrapCallObject;

static PyTypeObject TrapCallType;

static PyObject *
trap_new(PyObject *kind)
{
    TrapCallObject *t = PyObject_New(TrapCallObject, &TrapCallType);
    if (t == NULL)
        return NULL;
    t->kind = Py_NewRef(kind);
    t->state = 0;
    return (PyObject *)t;
}

static void
trap_dealloc(TrapCallObject *self)
{
    Py_DECREF(self->kind);
    PyObject_Free(self);
}

static PySendResult
trap_am_send(TrapCallObject *self, PyObject *arg, PyObject **result)
{
    if (self->state == 0) {
        self->state = 1;
        *result = Py_NewRef(self->kind);
        return PYGEN_NEXT;
    }
    if (self->state == 1) {
        self->state = 2;
        *result = Py_NewRef(arg);
        return PYGEN_RETURN;
    }
    PyErr_SetString(PyExc_RuntimeError, "cannot reuse an already awaited cosched switch");
    *result = NULL;
    return PYGEN_ERROR;
}

static PyObject *
trap_iternext(TrapCallObject *self)
{
    PyObject *r;
    PySendResult st = trap_am_send(self, Py_None, &r);
    return method_result(st, r);
}

static PyObject *
trap_send(TrapCallObject *self, PyObject *arg)
{
    PyObject *r;
    PySendResult st = trap_am_send(self, arg, &r);
    return method_result(st, r);
}

/* throw(exc) / throw(type[, value[, tb]]) as generators take it: the exception object. */
static PyObject *
thrown_exception(PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs < 1 || nargs > 3) {
        PyErr_SetString(PyExc_TypeError, "throw expected 1 to 3 arguments");
        return NULL;
    }
    PyObject *typ = args[0];
    PyObject *val = nargs > 1 ? args[1] : Py_None;
    PyObject *tb = nargs > 2 ? args[2] : Py_None;
    PyObject *exc;
    if (PyExceptionInstance_Check(typ))
        exc = Py_NewRef(typ);
    else if (PyExceptionInstance_Check(val))
        exc = Py_NewRef(val);
    else if (PyExceptionClass_Check(typ))
        exc = val == Py_None ? PyObject_CallNoArgs(typ) : PyObject_CallOneArg(typ, val);
    else {
        PyErr_SetString(PyExc_TypeError,
                        "exceptions must be classes or instances deriving from BaseException");
        return NULL;
    }
    if (exc != NULL && tb != Py_None && PyTraceBack_Check(tb))
        PyException_SetTraceback(exc, tb);
    return exc;
}

static PyObject *
trap_throw(TrapCallObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *exc = thrown_exception(args, nargs);
    if (exc == NULL)
        return NULL;
    int waiting = self->state == 1;
    self->state = 2;
    if (waiting && PyObject_TypeCheck(exc, (PyTypeObject *)DeliveryType)) {
        /* The driver's delivery: raise what it carries. */
        PyObject *inner = PyObject_GetAttrString(exc, "exc");
        Py_DECREF(exc);
        if (inner == NULL)
            return NULL;
        raise_exc(inner);
        Py_DECREF(inner);
        return NULL;
    }
    if (waiting && PyErr_GivenExceptionMatches(exc, PyExc_TypeError)) {
        /* Maybe trio bouncing the trap: this task inherited a chain it does not run.
         * The Python hook decides and returns the exception to raise. */
        PyObject *r = PyObject_CallOneArg(py_rejected, exc);
        Py_DECREF(exc);
        if (r == NULL)
            return NULL;
        raise_exc(r);
        Py_DECREF(r);
        return NULL;
    }
    raise_exc(exc);
    Py_DECREF(exc);
    return NULL;
}

static PyObject *
trap_close(TrapCallObject *self, PyObject *unused)
{
    self->state = 2;
    Py_RETURN_NONE;
}

static PyObject *
trap_repr(TrapCallObject *self)
{
    return PyUnicode_FromFormat("<cosched switch awaiting %R>", self->kind);
}

static PyMethodDef trap_methods[] = {
    {"send", (PyCFunction)trap_send, METH_O, NULL},
    {"throw", (PyCFunction)(void (*)(void))trap_throw, METH_FASTCALL, NULL},
    {"close", (PyCFunction)trap_close, METH_NOARGS, NULL},
    {NULL}
};

static PyAsyncMethods trap_as_async = {
    .am_await = PyObject_SelfIter,
    .am_send = (sendfunc)trap_am_send,
};

static PyTypeObject TrapCallType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "cosched._speedups.TrapCall",
    .tp_basicsize = sizeof(TrapCallObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_dealloc = (destructor)trap_dealloc,
    .tp_repr = (reprfunc)trap_repr,
    .tp_as_async = &trap_as_async,
    .tp_iter = PyObject_SelfIter,
    .tp_iternext = (iternextfunc)trap_iternext,
    .tp_methods = trap_methods,
};

static PyObject *
mod_trap(PyObject *mod, PyObject *kind)
{
    return trap_new(kind);
}

/* ---------------------------------------------------------------------------------
 * drive(kind, target, args): main's switching call. It runs the chain it enters until
 * control comes back to main, forwarding every message that is not a trap to the
 * event loop unchanged (and what the loop sends or throws back into the coroutine). */

typedef struct {
    PyObject_HEAD
    PyObject *kind, *target, *args;  /* the call, until the driver starts */
    ChainObject *m;                  /* the chain, once started */
    PyObject *co;                    /* the coroutine that awaits the event loop, while it does */
    PyObject *task;                  /* the trio task (None outside trio) */
    PyObject *outer;                 /* outside trio: the caller's value of the chain variable,
                                      * which it gets back whenever control leaves the driver */
    int state;                       /* 0: new; 1: forwarding to the event loop; 2: finished */
} DriverObject;

static PyTypeObject DriverType;

/* Main runs again: the chain stays in the context for the next call, idle. */
static void
driver_finish(DriverObject *self)
{
    self->state = 2;
    Py_CLEAR(self->co);
    if (self->m != NULL) {
        ChainObject *m = self->m;
        Py_SETREF(m->current, Py_NewRef(Py_None));
        Py_SETREF(m->call_cs, Py_NewRef(Py_None));
        Py_SETREF(m->awaits, Py_NewRef(Py_None));
        if (m->holders != Py_None)
            Py_SETREF(m->holders, Py_NewRef(Py_None));
    }
}

/* Outside trio no task owns the caller's context (it may be the thread's own, which
 * the next trio.run copies, or a finalizer's): the chain is in it only while the
 * driver runs. Put it in (entering) or give the caller its value back. */
static int
driver_context(DriverObject *self, int entering)
{
    if (self->outer == NULL)
        return 0;
    PyObject *tok = PyContextVar_Set(chain_var, entering ? (PyObject *)self->m : self->outer);
    if (tok == NULL)
        return -1;
    Py_DECREF(tok);
    return 0;
}

/* Set up main's chain and make the first transition: (co, value, err) as owned refs. */
static int
driver_start(DriverObject *self, PyObject **co, PyObject **value, PyObject **err)
{
    PyObject *task = current_task();
    PyObject *m = NULL;
    if (PyContextVar_Get(chain_var, NULL, &m) < 0) {
        Py_DECREF(task);
        return -1;
    }
    self->task = task;
    if (task == Py_None || m == NULL || !IS_CHAIN(m) || ((ChainObject *)m)->task != task ||
            ((ChainObject *)m)->current != Py_None) {
        /* First chain of this task (or an inherited variable): one per task. Outside
         * trio, a chain of its own for this driver (see driver_context). */
        if (task == Py_None)
            self->outer = m != NULL ? m : Py_NewRef(Py_None);
        else
            Py_XDECREF(m);
        m = PyObject_CallFunctionObjArgs(py_new_chain, self->kind, task, NULL);
        if (m == NULL)
            return -1;
        PyObject *tok = PyContextVar_Set(chain_var, m);
        if (tok == NULL) {
            Py_DECREF(m);
            return -1;
        }
        Py_DECREF(tok);
    }
    else {
        PyObject *cs = cancel_status(task);
        if (cs == NULL) {
            Py_DECREF(m);
            return -1;
        }
        Py_SETREF(NODE(m)->pending, Py_NewRef(self->kind));
        Py_SETREF(NODE(m)->call_cs, cs);
    }
    self->m = (ChainObject *)m;
    ChainObject *ch = self->m;
    PyObject *kind = self->kind, *target = self->target, *args = self->args;
    if ((kind == T_RESUME || kind == T_WRAP || kind == T_ITER) && Py_TYPE(target) == CoroType) {
        /* The common entries, inlined (see _enter). */
        CoroObject *c = CORO(target);
        Py_SETREF(ch->awaits, Py_NewRef(target));
        Py_SETREF(c->resumer, Py_NewRef(m));
        c->depth = 1;
        Py_SETREF(c->entry_cs, Py_NewRef(ch->call_cs));
        Py_SETREF(c->state, Py_NewRef(S_RUNNING));
        *co = Py_NewRef(target);
        *value = c->fn != Py_None ? Py_NewRef(args) : pack(args);
        *err = NULL;
        return 0;
    }
    PyObject *helper = kind == T_TRANSFER ? py_leave : py_enter;
    PyObject *triple = PyObject_CallFunctionObjArgs(helper, m, m, kind, target, args, NULL);
    return take_triple(triple, co, value, err);
}

/* The driver loop from (co, value, err); returns like am_send. Consumes the refs. */
static PySendResult
driver_run(DriverObject *self, PyObject *co, PyObject *value, PyObject *err, PyObject **result)
{
    ChainObject *m = self->m;
    PyObject *mobj = (PyObject *)m;
    PyObject *task = self->task;
    PyObject *msg = NULL, *kind = NULL;
    *result = NULL;

    while (co != mobj) {
        Py_CLEAR(kind);
        if (Py_TYPE(co) != CoroType) {
            PyErr_Format(PyExc_SystemError, "cosched: driver reached a non-coroutine %R", co);
            goto fail;
        }
        CoroObject *c = CORO(co);
        if (co != m->current) {  /* control passes to another coroutine */
            m->switches++;
            Py_SETREF(m->current, Py_NewRef(co));
        }
        PySendResult st;
        if (err == NULL) {
            if (c->fn != Py_None) {  /* first start: value holds the arguments */
                PyObject *fn = c->fn;
                c->fn = Py_NewRef(Py_None);
                PyObject *body = PyObject_CallFunctionObjArgs(py_body, fn, value, NULL);
                Py_DECREF(fn);
                Py_SETREF(value, Py_NewRef(Py_None));
                if (body == NULL) {
                    st = PYGEN_ERROR;
                    goto sent;
                }
                Py_SETREF(c->co, body);
            }
            if (c->co == Py_None) {
                PyErr_SetString(PyExc_SystemError, "cosched: driver reached a coroutine with no body");
                st = PYGEN_ERROR;
            }
            else {
                PyObject *body = Py_NewRef(c->co);
                st = PyIter_Send(body, value, &msg);
                Py_DECREF(body);
            }
        }
        else {
            PyObject *body = Py_NewRef(c->co);
            msg = PyObject_CallMethodOneArg(body, str_throw, err);
            Py_DECREF(body);
            Py_CLEAR(err);
            if (msg != NULL)
                st = PYGEN_NEXT;
            else if (PyErr_ExceptionMatches(PyExc_StopIteration)) {
                PyObject *e = fetch_exc();
                msg = PyObject_GetAttrString(e, "value");
                Py_DECREF(e);
                st = msg != NULL ? PYGEN_RETURN : PYGEN_ERROR;
            }
            else
                st = PYGEN_ERROR;
        }
    sent:
        Py_CLEAR(value);
        if (st != PYGEN_NEXT) {
            /* co's body ended: returned msg, or raised. */
            PyObject *vals, *exc;
            if (st == PYGEN_RETURN) {
                vals = PyObject_CallOneArg(py_unpack, msg);
                Py_CLEAR(msg);
                if (vals == NULL)
                    goto fail;
                exc = Py_NewRef(Py_None);
            }
            else {
                if (!PyErr_Occurred())
                    PyErr_SetString(PyExc_SystemError, "cosched: coroutine failed without an exception");
                exc = fetch_exc();
                vals = PyTuple_New(0);
                if (exc == NULL || vals == NULL) {
                    Py_XDECREF(exc);
                    Py_XDECREF(vals);
                    goto fail;
                }
            }
            PyObject *triple = PyObject_CallFunctionObjArgs(py_end, mobj, co, vals, exc, NULL);
            Py_DECREF(vals);
            Py_DECREF(exc);
            if (take_triple(triple, &co, &value, &err) < 0)
                goto fail;
            continue;
        }
        if (Py_TYPE(msg) != TrapType) {
            /* An event-loop trap from deep inside co: forward it unchanged. */
            Py_XDECREF(kind);
            self->co = co;
            self->state = 1;
            *result = msg;
            return PYGEN_NEXT;
        }
        PyObject *args = m->args;
        m->args = Py_NewRef(Py_None);
        if (!PyTuple_CheckExact(args)) {
            Py_DECREF(args);
            args = PyTuple_New(0);
        }
        kind = msg;
        msg = NULL;
        if (kind == T_YIELD) {
            /* The hot path, inlined: hand the values to the resumer waiting for co. */
            PyObject *dest = c->resumer;
            int fast = dest != Py_None && (Py_TYPE(dest) == CoroType || dest == mobj);
            if (fast && task != Py_None) {
                PyObject *cs = cancel_status(task);
                if (cs == NULL) {
                    Py_DECREF(args);
                    goto fail;
                }
                fast = cs == c->entry_cs && cs == NODE(dest)->call_cs;
                Py_DECREF(cs);
            }
            if (fast) {
                dest = Py_NewRef(dest);
                Py_SETREF(c->state, Py_NewRef(S_SUSPENDED));
                Py_SETREF(c->pending, Py_NewRef(T_YIELD));
                Py_SETREF(c->resumer, Py_NewRef(Py_None));
                Py_SETREF(NODE(dest)->awaits, Py_NewRef(Py_None));
                if (NODE(dest)->pending == T_RESUME) {
                    Py_ssize_t n = PyTuple_GET_SIZE(args);
                    value = PyTuple_New(n + 1);
                    if (value == NULL) {
                        Py_DECREF(dest);
                        Py_DECREF(args);
                        goto fail;
                    }
                    PyTuple_SET_ITEM(value, 0, Py_NewRef(Py_True));
                    for (Py_ssize_t i = 0; i < n; i++)
                        PyTuple_SET_ITEM(value, i + 1, Py_NewRef(PyTuple_GET_ITEM(args, i)));
                }
                else
                    value = pack(args);
                if (dest != mobj)
                    Py_SETREF(NODE(dest)->state, Py_NewRef(S_RUNNING));
                Py_DECREF(args);
                Py_SETREF(co, dest);
                continue;
            }
            PyObject *triple = PyObject_CallFunctionObjArgs(
                py_leave, mobj, co, kind, c->resumer, args, NULL);
            Py_DECREF(args);
            if (take_triple(triple, &co, &value, &err) < 0)
                goto fail;
            continue;
        }
        PyObject *target = m->target;
        m->target = Py_NewRef(Py_None);
        if ((kind == T_RESUME || kind == T_WRAP || kind == T_ITER) && Py_TYPE(target) == CoroType) {
            /* The other hot path, inlined: start or continue target nested under co. */
            PyObject *cs = cancel_status(task);
            if (cs == NULL) {
                Py_DECREF(target);
                Py_DECREF(args);
                goto fail;
            }
            CoroObject *t = CORO(target);
            if (cs != c->entry_cs) {  /* co opened a scope around this call: note it */
                PyObject *r = PyObject_CallFunctionObjArgs(py_hold, mobj, co, NULL);
                if (r == NULL) {
                    Py_DECREF(cs);
                    Py_DECREF(target);
                    Py_DECREF(args);
                    goto fail;
                }
                Py_DECREF(r);
            }
            Py_SETREF(c->state, Py_NewRef(S_NORMAL));
            Py_SETREF(c->pending, Py_NewRef(kind));
            Py_SETREF(c->awaits, Py_NewRef(target));
            Py_SETREF(c->call_cs, Py_NewRef(cs));
            Py_SETREF(t->resumer, Py_NewRef(co));
            t->depth = c->depth + 1;
            Py_SETREF(t->entry_cs, cs);
            Py_SETREF(t->state, Py_NewRef(S_RUNNING));
            value = t->fn != Py_None ? Py_NewRef(args) : pack(args);
            Py_DECREF(args);
            Py_SETREF(co, target);
            continue;
        }
        if (kind == T_TRANSFER && Py_TYPE(target) == CoroType && CORO(target)->state != S_NORMAL) {
            int fast = 1;
            if (task != Py_None) {
                PyObject *cs = cancel_status(task);
                if (cs == NULL) {
                    Py_DECREF(target);
                    Py_DECREF(args);
                    goto fail;
                }
                fast = cs == c->entry_cs;
                Py_DECREF(cs);
            }
            if (fast) {
                /* To a suspended or new coroutine, inlined (see _leave). */
                CoroObject *t = CORO(target);
                Py_SETREF(c->state, Py_NewRef(S_SUSPENDED));
                Py_SETREF(c->pending, Py_NewRef(T_TRANSFER));
                t->depth = c->depth;
                Py_SETREF(t->entry_cs, Py_NewRef(c->entry_cs));
                Py_SETREF(t->state, Py_NewRef(S_RUNNING));
                value = t->fn != Py_None ? Py_NewRef(args) : pack(args);
                Py_DECREF(args);
                Py_SETREF(co, target);
                continue;
            }
        }
        PyObject *triple;
        if (kind == T_TRANSFER)
            triple = PyObject_CallFunctionObjArgs(
                py_leave, mobj, co, kind, target == Py_None ? mobj : target, args, NULL);
        else if (kind == T_SAFEYIELD)
            triple = PyObject_CallFunctionObjArgs(py_safe_leave, mobj, co, target, args, NULL);
        else
            triple = PyObject_CallFunctionObjArgs(py_enter, mobj, co, kind, target, args, NULL);
        Py_DECREF(target);
        Py_DECREF(args);
        if (take_triple(triple, &co, &value, &err) < 0)
            goto fail;
    }
    /* Control is back in main: its pending call returns value or raises err. */
    if (m->current != Py_None)
        m->switches++;
    Py_XDECREF(kind);
    Py_DECREF(co);
    driver_finish(self);
    if (err != NULL) {
        Py_XDECREF(value);
        raise_exc(err);
        Py_DECREF(err);
        return PYGEN_ERROR;
    }
    *result = value;
    return PYGEN_RETURN;

fail:
    Py_XDECREF(kind);
    Py_XDECREF(co);
    Py_XDECREF(value);
    Py_XDECREF(err);
    Py_XDECREF(msg);
    driver_finish(self);
    return PYGEN_ERROR;
}

/* The driver is executing (a call from inside its own chain reached it). */
static int
driver_busy(DriverObject *self)
{
    if (self->state == 1 && self->co == NULL) {
        PyErr_SetString(PyExc_ValueError, "cosched switch already executing");
        return 1;
    }
    return 0;
}

/* driver_run between driver_context calls. */
static PySendResult
driver_step(DriverObject *self, PyObject *co, PyObject *value, PyObject *err, PyObject **result)
{
    if (self->outer == NULL)
        return driver_run(self, co, value, err, result);
    PySendResult st;
    if (driver_context(self, 1) < 0) {
        Py_DECREF(co);
        Py_DECREF(value);
        Py_XDECREF(err);
        driver_finish(self);
        *result = NULL;
        st = PYGEN_ERROR;
    }
    else
        st = driver_run(self, co, value, err, result);
    PyObject *t, *v, *tb;
    PyErr_Fetch(&t, &v, &tb);
    if (driver_context(self, 0) < 0) {
        Py_XDECREF(t);
        Py_XDECREF(v);
        Py_XDECREF(tb);
        if (st != PYGEN_ERROR)
            Py_CLEAR(*result);
        return PYGEN_ERROR;
    }
    PyErr_Restore(t, v, tb);
    return st;
}

static PySendResult
driver_am_send(DriverObject *self, PyObject *arg, PyObject **result)
{
    PyObject *co = NULL, *value = NULL, *err = NULL;
    if (self->state == 0) {
        self->state = 1;
        if (driver_start(self, &co, &value, &err) < 0) {
            Py_XDECREF(co);
            Py_XDECREF(value);
            Py_XDECREF(err);
            driver_finish(self);
            PyObject *t, *v, *tb;
            PyErr_Fetch(&t, &v, &tb);
            if (driver_context(self, 0) < 0)
                PyErr_Clear();
            PyErr_Restore(t, v, tb);
            *result = NULL;
            return PYGEN_ERROR;
        }
        Py_CLEAR(self->target);
        Py_CLEAR(self->args);
        return driver_step(self, co, value, err, result);
    }
    if (self->state == 1 && self->co != NULL) {
        co = self->co;
        self->co = NULL;
        return driver_step(self, co, Py_NewRef(arg), NULL, result);
    }
    *result = NULL;
    if (driver_busy(self))
        return PYGEN_ERROR;
    PyErr_SetString(PyExc_RuntimeError, "cannot reuse an already awaited cosched switch");
    return PYGEN_ERROR;
}

static PyObject *
driver_iternext(DriverObject *self)
{
    PyObject *r;
    PySendResult st = driver_am_send(self, Py_None, &r);
    return method_result(st, r);
}

static PyObject *
driver_send(DriverObject *self, PyObject *arg)
{
    PyObject *r;
    PySendResult st = driver_am_send(self, arg, &r);
    return method_result(st, r);
}

/* Main itself is being closed while co awaits the event loop: close co with it. */
static int
driver_abandon(DriverObject *self)
{
    int rc = 0;
    if (driver_busy(self))
        return -1;
    if (self->state == 1 && self->co != NULL) {
        PyObject *r = PyObject_CallOneArg(py_abandon, self->co);
        if (r == NULL)
            rc = -1;
        Py_XDECREF(r);
    }
    driver_finish(self);
    return rc;
}

static PyObject *
driver_throw(DriverObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (driver_busy(self))
        return NULL;
    PyObject *exc = thrown_exception(args, nargs);
    if (exc == NULL)
        return NULL;
    if (self->state != 1) {
        /* Not waiting on the event loop: raise it here, as a generator would. */
        driver_finish(self);
        raise_exc(exc);
        Py_DECREF(exc);
        return NULL;
    }
    if (PyErr_GivenExceptionMatches(exc, PyExc_GeneratorExit)) {
        if (driver_abandon(self) < 0) {
            Py_DECREF(exc);
            return NULL;
        }
        raise_exc(exc);
        Py_DECREF(exc);
        return NULL;
    }
    /* Thrown in raw, as the event loop expects. */
    PyObject *co = self->co;
    self->co = NULL;
    PyObject *r;
    PySendResult st = driver_step(self, co, Py_NewRef(Py_None), exc, &r);
    return method_result(st, r);
}

static PyObject *
driver_close(DriverObject *self, PyObject *unused)
{
    if (driver_abandon(self) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *
driver_get_chain(DriverObject *self, void *unused)
{
    if (self->m == NULL || self->state == 2)
        Py_RETURN_NONE;
    return Py_NewRef((PyObject *)self->m);
}

static int
driver_traverse(DriverObject *self, visitproc visit, void *arg)
{
    Py_VISIT(self->kind); Py_VISIT(self->target); Py_VISIT(self->args);
    Py_VISIT(self->m); Py_VISIT(self->co); Py_VISIT(self->task); Py_VISIT(self->outer);
    return 0;
}

static int
driver_clear(DriverObject *self)
{
    Py_CLEAR(self->kind); Py_CLEAR(self->target); Py_CLEAR(self->args);
    Py_CLEAR(self->m); Py_CLEAR(self->co); Py_CLEAR(self->task); Py_CLEAR(self->outer);
    return 0;
}

/* A driver forwarding for its chain when it is collected closes the coroutine it
 * forwards for, as a Python generator suspended at that yield would be closed. */
static void
driver_finalize(DriverObject *self)
{
    if (self->state != 1 || self->co == NULL)
        return;
    PyObject *t, *v, *tb;
    PyErr_Fetch(&t, &v, &tb);
    if (driver_abandon(self) < 0)
        PyErr_WriteUnraisable((PyObject *)self);
    PyErr_Restore(t, v, tb);
}

static void
driver_dealloc(DriverObject *self)
{
    /* Only a driver still forwarding has anything to finalize: the others skip the
     * finalizer protocol, which costs every switching call from main otherwise. */
    if (self->state == 1 && self->co != NULL &&
            PyObject_CallFinalizerFromDealloc((PyObject *)self) < 0)
        return;  /* resurrected */
    PyObject_GC_UnTrack(self);
    driver_clear(self);
    PyObject_GC_Del(self);
}

static PyMethodDef driver_methods[] = {
    {"send", (PyCFunction)driver_send, METH_O, NULL},
    {"throw", (PyCFunction)(void (*)(void))driver_throw, METH_FASTCALL, NULL},
    {"close", (PyCFunction)driver_close, METH_NOARGS, NULL},
    {NULL}
};

static PyGetSetDef driver_getset[] = {
    {"chain", (getter)driver_get_chain, NULL, "the chain being driven, while it runs", NULL},
    {NULL}
};

static PyAsyncMethods driver_as_async = {
    .am_await = PyObject_SelfIter,
    .am_send = (sendfunc)driver_am_send,
};

static PyTypeObject DriverType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "cosched._speedups.Driver",
    .tp_basicsize = sizeof(DriverObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_dealloc = (destructor)driver_dealloc,
    .tp_finalize = (destructor)driver_finalize,
    .tp_traverse = (traverseproc)driver_traverse,
    .tp_clear = (inquiry)driver_clear,
    .tp_as_async = &driver_as_async,
    .tp_iter = PyObject_SelfIter,
    .tp_iternext = (iternextfunc)driver_iternext,
    .tp_methods = driver_methods,
    .tp_getset = driver_getset,
};

static PyObject *
mod_drive(PyObject *mod, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3 || !PyTuple_Check(args[2])) {
        PyErr_SetString(PyExc_TypeError, "drive(kind, target, args: tuple)");
        return NULL;
    }
    DriverObject *d = PyObject_GC_New(DriverObject, &DriverType);
    if (d == NULL)
        return NULL;
    d->kind = Py_NewRef(args[0]);
    d->target = Py_NewRef(args[1]);
    d->args = Py_NewRef(args[2]);
    d->m = NULL;
    d->co = NULL;
    d->task = NULL;
    d->outer = NULL;
    d->state = 0;
    PyObject_GC_Track(d);
    return (PyObject *)d;
}

/* ---------------------------------------------------------------------------------
 * yield_(*values): the hot case (a coroutine with a resumer, not closing) returns the
 * trap at once; every other case is the Python yield_'s, which raises the error. */

static PyObject *
mod_yield(PyObject *mod, PyObject *values)
{
    PyObject *m;
    if (PyContextVar_Get(chain_var, NULL, &m) < 0)
        return NULL;
    if (m != NULL && IS_CHAIN(m)) {
        PyObject *cur = ((ChainObject *)m)->current;
        if (Py_TYPE(cur) == CoroType && CORO(cur)->resumer != Py_None && !CORO(cur)->closing) {
            Py_SETREF(((ChainObject *)m)->args, Py_NewRef(values));
            Py_DECREF(m);
            return trap_new(T_YIELD);
        }
    }
    Py_XDECREF(m);
    return PyObject_Call(py_yield_slow, values, NULL);
}

/* ---------------------------------------------------------------------------------
 * nest_call(kind, co, args) and transfer_call(target, values): what a switching call
 * awaits (see _nest_call and _transfer_call in _coro.py). The common cases are
 * answered here; the Python functions answer the rest. */

static PyObject *
mod_nest_call(PyObject *mod, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3 || !PyTuple_CheckExact(args[2])) {
        PyErr_SetString(PyExc_TypeError, "nest_call(kind, co, args: tuple)");
        return NULL;
    }
    PyObject *kind = args[0], *co = args[1];
    if (Py_TYPE(co) != CoroType ||
            (CORO(co)->state != S_SUSPENDED && CORO(co)->state != S_INITIAL))
        Py_RETURN_NONE;
    PyObject *m;
    if (PyContextVar_Get(chain_var, NULL, &m) < 0)
        return NULL;
    if (m == NULL || !IS_CHAIN(m) ||
            ((ChainObject *)m)->current == Py_None) {
        Py_XDECREF(m);
        return mod_drive(mod, args, nargs);
    }
    PyObject *cur = ((ChainObject *)m)->current;
    if (Py_TYPE(cur) == CoroType &&
            (CORO(cur)->depth < 200 || CORO(cur)->depth < Py_GetRecursionLimit())) {
        Py_SETREF(((ChainObject *)m)->target, Py_NewRef(co));
        Py_SETREF(((ChainObject *)m)->args, Py_NewRef(args[2]));
        Py_DECREF(m);
        return trap_new(kind);
    }
    Py_DECREF(m);
    return PyObject_Vectorcall(py_nest_call, args, nargs, NULL);
}

static PyObject *
mod_transfer_call(PyObject *mod, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2 || !PyTuple_CheckExact(args[1])) {
        PyErr_SetString(PyExc_TypeError, "transfer_call(target, values: tuple)");
        return NULL;
    }
    PyObject *target = args[0];
    if (Py_TYPE(target) != CoroType ||
            (CORO(target)->state != S_SUSPENDED && CORO(target)->state != S_INITIAL))
        Py_RETURN_NONE;
    PyObject *m;
    if (PyContextVar_Get(chain_var, NULL, &m) < 0)
        return NULL;
    PyObject *r = Py_None;
    if (m != NULL && IS_CHAIN(m)) {
        PyObject *cur = ((ChainObject *)m)->current;
        if (Py_TYPE(cur) == CoroType && !CORO(cur)->closing) {
            Py_SETREF(((ChainObject *)m)->target, Py_NewRef(target));
            Py_SETREF(((ChainObject *)m)->args, Py_NewRef(args[1]));
            r = NULL;
        }
    }
    Py_XDECREF(m);
    return r == NULL ? trap_new(T_TRANSFER) : Py_NewRef(Py_None);
}

/* ---------------------------------------------------------------------------------
 * setup(**names): called once by cosched._coro with what the switch path compares
 * against and the Python helpers it defers to. */

static PyObject **const setup_slots[] = {
    &S_INITIAL, &S_SUSPENDED, &S_RUNNING, &S_NORMAL,
    &T_YIELD, &T_TRANSFER, &T_SAFEYIELD, &T_RESUME, &T_WRAP, &T_ITER,
    (PyObject **)&TrapType, (PyObject **)&CoroType, &DeliveryType, &chain_var, &run_context,
    &py_new_chain, &py_enter, &py_leave, &py_end, &py_safe_leave, &py_abandon,
    &py_body, &py_unpack, &py_rejected, &py_yield_slow, &py_nest_call, &py_hold,
};
static const char *const setup_names[] = {
    "INITIAL", "SUSPENDED", "RUNNING", "NORMAL",
    "YIELD", "TRANSFER", "SAFEYIELD", "RESUME", "WRAP", "ITER",
    "Trap", "Coroutine", "Delivery", "chain_var", "run_context",
    "new_chain", "enter", "leave", "end", "safe_leave", "abandon",
    "body", "unpack", "rejected", "yield_slow", "nest_call", "hold",
};

static PyObject *
mod_setup(PyObject *mod, PyObject *args, PyObject *kwds)
{
    size_t n = sizeof(setup_names) / sizeof(setup_names[0]);
    if (PyTuple_GET_SIZE(args) != 0 || kwds == NULL || (size_t)PyDict_GET_SIZE(kwds) != n + 1) {
        PyErr_SetString(PyExc_TypeError, "setup() takes exactly the driver's names as keywords");
        return NULL;
    }
    for (size_t i = 0; i < n; i++) {
        PyObject *v = PyDict_GetItemString(kwds, setup_names[i]);
        if (v == NULL) {
            PyErr_Format(PyExc_TypeError, "setup() is missing %s", setup_names[i]);
            return NULL;
        }
        Py_XSETREF(*setup_slots[i], Py_NewRef(v));
    }
    PyObject *tt = PyDict_GetItemString(kwds, "Task");
    if (tt == NULL || (tt != Py_None && !PyType_Check(tt))) {
        PyErr_SetString(PyExc_TypeError, "setup() needs Task: trio's task type, or None");
        return NULL;
    }
    task_type = NULL;
    cancel_status_offset = 0;
    if (tt != Py_None) {
        /* Read _cancel_status at its slot only if it is a plain object slot. */
        PyObject *d = PyDict_GetItemWithError(((PyTypeObject *)tt)->tp_dict, str_cancel_status);
        if (d != NULL && Py_TYPE(d) == &PyMemberDescr_Type &&
                ((PyMemberDescrObject *)d)->d_member->type == T_OBJECT_EX) {
            Py_INCREF(tt);
            task_type = (PyTypeObject *)tt;
            cancel_status_offset = ((PyMemberDescrObject *)d)->d_member->offset;
        }
        PyErr_Clear();
    }
    if (!PyType_Check(TrapType) || !PyType_Check(CoroType) ||
            !PyType_IsSubtype(CoroType, &CoroBaseType) || !PyType_Check(py_new_chain) ||
            !PyType_IsSubtype((PyTypeObject *)py_new_chain, &ChainBaseType)) {
        PyErr_SetString(PyExc_TypeError,
                        "setup(): Trap, Coroutine and new_chain must be the driver's types");
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyMethodDef module_methods[] = {
    {"setup", (PyCFunction)(void (*)(void))mod_setup, METH_VARARGS | METH_KEYWORDS,
     "Hand over the names the switch path uses (called once by cosched._coro)."},
    {"trap", (PyCFunction)mod_trap, METH_O, "The awaitable a switching call yields to its driver."},
    {"drive", (PyCFunction)(void (*)(void))mod_drive, METH_FASTCALL,
     "drive(kind, target, args): main's switching call, awaited."},
    {"nest_call", (PyCFunction)(void (*)(void))mod_nest_call, METH_FASTCALL,
     "nest_call(kind, co, args): the driver or trap a resume/wrap call awaits, or None."},
    {"transfer_call", (PyCFunction)(void (*)(void))mod_transfer_call, METH_FASTCALL,
     "transfer_call(target, values): the trap a transfer to a suspended coroutine awaits, or None."},
    {"yield_", (PyCFunction)mod_yield, METH_VARARGS,
     "yield_(*values)\n--\n\nSuspend the running coroutine, handing values to its resumer; "
     "await the result."},
    {NULL}
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT,
    .m_name = "cosched._speedups",
    .m_doc = "The switch path of cosched._coro in C (see the top of _speedups.c).",
    .m_size = -1,
    .m_methods = module_methods,
};

PyMODINIT_FUNC
PyInit__speedups(void)
{
    PyTypeObject *types[] = {&CoroBaseType, &ChainBaseType, &TrapCallType, &DriverType};
    for (size_t i = 0; i < sizeof(types) / sizeof(types[0]); i++)
        if (PyType_Ready(types[i]) < 0)
            return NULL;
    str_task = PyUnicode_InternFromString("task");
    str_cancel_status = PyUnicode_InternFromString("_cancel_status");
    str_throw = PyUnicode_InternFromString("throw");
    str_rundict_key = PyUnicode_InternFromString("cosched._speedups.run_context_dict");
    if (str_task == NULL || str_cancel_status == NULL || str_throw == NULL ||
            str_rundict_key == NULL)
        return NULL;
    PyObject *mod = PyModule_Create(&module_def);
    if (mod == NULL)
        return NULL;
    if (PyModule_AddObjectRef(mod, "CoroutineBase", (PyObject *)&CoroBaseType) < 0 ||
            PyModule_AddObjectRef(mod, "ChainBase", (PyObject *)&ChainBaseType) < 0 ||
            PyModule_AddObjectRef(mod, "TrapCall", (PyObject *)&TrapCallType) < 0 ||
            PyModule_AddObjectRef(mod, "Driver", (PyObject *)&DriverType) < 0) {
        Py_DECREF(mod);
        return NULL;
    }
    return mod;
}
