# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""A timer's fold into its DDSketch in C: ``BaseDDSketch.add(value)`` for every value of an
``array('d')`` or ``array('f')`` (a timer's samples while floats hold them exactly:
``pystatsd._linecache.new_samples``), leaving exactly what the library's per-sample add leaves.

:meth:`pystatsd.distribution.Distribution.fold` calls :func:`fold_values`; its pure-Python
code is the reference and the fallback (tests/test_fold.py runs both against the library).
Past ``timer_exact_samples`` the library's add cost ~8,900 instructions a sample, 8 times a
whole statsd line, all of it in the daemon's parent under the GIL. What the add does, here:

- the key is the library's ``LogarithmicMapping.key``: ``int(ceil(log(v, 2) * multiplier) +
  offset)``, with ``log(v, 2)`` computed as CPython computes it, ``log(v) / log(2.0)`` with
  libm's ``log`` (the same libm, the same doubles, so the same key);
- ``v > min_possible`` goes to the positive store, ``v < -min_possible`` to the negative one
  (by the key of ``-v``), anything between to the zero count;
- bins, counts and the sum grow one sample at a time in the samples' order, as the library's
  do (so a bin that holds a sample-rated weight rounds the same way);
- a key outside the store's ``[min_key, max_key]`` calls the store's own ``_extend_range``,
  as the library's add does at that same sample, so offsets and lengths are the library's.

It declines (returns False, touching nothing) where it cannot promise that: a store whose bins
are not an ``array('d')`` (:class:`pystatsd.distribution.ArrayStore`), a mapping that is not
the library's ``LogarithmicMapping``, or a value that is not finite (the library's add raises
OverflowError on an infinite one, or keeps a NaN in the zero count: the caller's per-sample
add does whatever the library does).
"""

from cpython.array cimport array
from libc.math cimport ceil, isfinite, log

import math

from ddsketch.mapping import LogarithmicMapping

cdef double LN2 = math.log(2.0)  # Python's own: log(v, 2) divides by exactly this


cdef inline double sample_at(const char *data, bint wide, Py_ssize_t i) noexcept:
    """Item ``i`` of a samples array's buffer: a double, or a float read as the double it
    holds exactly."""
    return (<const double *>data)[i] if wide else <double>(<const float *>data)[i]


cdef int samples_width(array values) except -1:
    """1 for an array('d'), 0 for an array('f'); TypeError for any other kind, whose items
    these functions would misread."""
    cdef char code = values.ob_descr.typecode
    if code == 100:  # "d"
        return 1
    if code == 102:  # "f"
        return 0
    raise TypeError(f"expected an array('d') or array('f'), not array({values.typecode!r})")


cdef inline long key_of(double value, double multiplier, double offset) noexcept:
    return <long>(ceil(log(value) / LN2 * multiplier) + offset)


cdef class _Store:
    """One ArrayStore's state as C values, written back when the batch is done."""
    cdef object store
    cdef array bins
    cdef double *data
    cdef long offset, min_key, max_key
    cdef double count
    cdef bint touched

    def __cinit__(self, object store):
        self.store = store
        self.touched = False
        self.load()
        self.count = store.count

    cdef load(self):
        # After _extend_range the bins may be a new array and offset, min_key, max_key moved.
        self.bins = self.store.bins
        self.data = self.bins.data.as_doubles
        if len(self.bins) == 0:  # min_key/max_key are +-inf: every key is out of range
            self.min_key, self.max_key, self.offset = 1, 0, 0
        else:
            self.offset = self.store.offset
            self.min_key = self.store.min_key
            self.max_key = self.store.max_key

    cdef inline add(self, long key):
        if key < self.min_key or key > self.max_key:
            self.store._extend_range(key)
            self.load()
        self.data[key - self.offset] += 1.0
        self.count += 1.0
        self.touched = True

    cdef save(self):
        if self.touched:  # else count keeps its type (the library's starts as an int 0)
            self.store.count = self.count


def fold_values(array values, object sketch):
    """Add every value of ``values`` (an ``array('d')`` or ``array('f')``) to ``sketch`` (a
    ``BaseDDSketch`` with :class:`ArrayStore` stores and a ``LogarithmicMapping``), as
    ``sketch.add(value)`` each would. True when done; False, with nothing changed, where it
    declines."""
    cdef Py_ssize_t n = len(values), i
    cdef char code = values.ob_descr.typecode
    if code != 100 and code != 102:  # neither "d" nor "f"
        return False
    cdef bint wide = code == 100
    cdef const char *data = values.data.as_chars
    cdef double value
    for i in range(n):
        if not isfinite(sample_at(data, wide, i)):
            return False
    mapping = sketch._mapping
    if type(mapping) is not LogarithmicMapping:
        return False
    positive_store, negative_store = sketch._store, sketch._negative_store
    if type(positive_store.bins) is not array or type(negative_store.bins) is not array:
        return False
    if n == 0:
        return True
    cdef double multiplier = mapping._multiplier
    cdef double key_offset = mapping._offset
    cdef double min_possible = mapping.min_possible
    cdef _Store positive = _Store(positive_store)
    cdef _Store negative = _Store(negative_store)
    cdef double zero_count = sketch._zero_count
    cdef bint zero_touched = False
    cdef double count = sketch._count, total = sketch._sum
    cdef double low = sketch._min, high = sketch._max
    try:
        for i in range(n):
            value = sample_at(data, wide, i)
            if value > min_possible:
                positive.add(key_of(value, multiplier, key_offset))
            elif value < -min_possible:
                negative.add(key_of(-value, multiplier, key_offset))
            else:
                zero_count += 1.0
                zero_touched = True
            count += 1.0
            total += value  # the library's val * weight, weight 1.0: exactly val
            if value < low:
                low = value
            if value > high:
                high = value
    finally:  # even if _extend_range failed (memory): what was added is recorded
        positive.save()
        negative.save()
        if zero_touched:
            sketch._zero_count = zero_count
        sketch._count = count
        sketch._sum = total
        sketch._min = low
        sketch._max = high
    return True


# -- the exact moments beside the sketch ------------------------------------------------------
# Distribution.fold keeps exact count, sum, min, max and the sum of squared deviations of what
# it folds; with the sketch's add in C those were most of a fold's cost (a float object or two
# per sample for math.fsum, min, max and the deviations). Here they are computed as CPython
# computes math.fsum (Modules/mathmodule.c: Shewchuk's partials, then the half-even fix-up),
# which rounds the exact sum correctly, so any correct version gives the same double; the same
# errors for the same inputs (OverflowError on an intermediate overflow, ValueError on
# -inf + inf).

from libc.math cimport fabs, isinf, isnan
from cpython.mem cimport PyMem_Free, PyMem_Malloc, PyMem_Realloc

cdef enum:
    PARTIALS = 32  # partials kept on the stack before the heap (math.fsum keeps 32 too)


cdef struct _Fsum:
    double *p
    double small[PARTIALS]
    Py_ssize_t n, m
    double special, infinities


cdef inline void fsum_init(_Fsum *s) noexcept:
    s.p = s.small
    s.n = 0
    s.m = PARTIALS
    s.special = 0.0
    s.infinities = 0.0


cdef int fsum_add(_Fsum *s, double x) except -1:
    cdef double xsave = x, y, t, hi, lo
    cdef Py_ssize_t i = 0, j
    cdef double *grown
    for j in range(s.n):
        y = s.p[j]
        if fabs(x) < fabs(y):
            t = x
            x = y
            y = t
        hi = x + y
        lo = y - (hi - x)
        if lo != 0.0:
            s.p[i] = lo
            i += 1
        x = hi
    s.n = i
    if x != 0.0:
        if not isfinite(x):
            if isfinite(xsave):
                raise OverflowError("intermediate overflow in fsum")
            if isinf(xsave):
                s.infinities += xsave
            s.special += xsave
            s.n = 0
        else:
            if s.n >= s.m:
                if s.p == s.small:
                    grown = <double *>PyMem_Malloc(2 * s.m * sizeof(double))
                    if grown != NULL:
                        for j in range(s.n):
                            grown[j] = s.p[j]
                else:
                    grown = <double *>PyMem_Realloc(s.p, 2 * s.m * sizeof(double))
                if grown == NULL:
                    raise MemoryError()
                s.p = grown
                s.m *= 2
            s.p[s.n] = x
            s.n += 1
    return 0


cdef double fsum_result(_Fsum *s) except? -1.0:
    cdef double hi = 0.0, x, y, yr, lo = 0.0
    cdef Py_ssize_t n = s.n
    if s.special != 0.0:
        if isnan(s.infinities):
            raise ValueError("-inf + inf in fsum")
        return s.special
    if n > 0:
        n -= 1
        hi = s.p[n]
        while n > 0:
            x = hi
            n -= 1
            y = s.p[n]
            hi = x + y
            yr = hi - x
            lo = y - yr
            if lo != 0.0:
                break
        if n > 0 and ((lo < 0.0 and s.p[n - 1] < 0.0) or (lo > 0.0 and s.p[n - 1] > 0.0)):
            y = lo * 2.0
            x = hi + y
            yr = x - hi
            if y == yr:
                hi = x
    return hi


cdef inline void fsum_free(_Fsum *s) noexcept:
    if s.p != s.small:
        PyMem_Free(s.p)


def sum_min_max(array values):
    """``(math.fsum(values), min(values, default=inf), max(values, default=-inf))``."""
    cdef Py_ssize_t n = len(values), i
    cdef bint wide = samples_width(values)
    cdef const char *data = values.data.as_chars
    cdef double low = float("inf"), high = float("-inf"), value
    cdef _Fsum s
    fsum_init(&s)
    try:
        if n:
            low = high = sample_at(data, wide, 0)
        for i in range(n):
            value = sample_at(data, wide, i)
            fsum_add(&s, value)
            if value < low:
                low = value
            if value > high:
                high = value
        return fsum_result(&s), low, high
    finally:
        fsum_free(&s)


def squared_deviations(array values, double mean):
    """``math.fsum((v - mean) * (v - mean) for v in values)``."""
    cdef Py_ssize_t n = len(values), i
    cdef bint wide = samples_width(values)
    cdef const char *data = values.data.as_chars
    cdef double deviation
    cdef _Fsum s
    fsum_init(&s)
    try:
        for i in range(n):
            deviation = sample_at(data, wide, i) - mean
            fsum_add(&s, deviation * deviation)
        return fsum_result(&s)
    finally:
        fsum_free(&s)
