# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""The compiled line cache: :class:`pystatsd.aggregation.PythonLineCache` in C, rule for rule.

The Python class is the reference; this one must take exactly the lines it takes, refuse
exactly the lines it refuses and leave exactly the cells it leaves
(tests/test_linecache_compiled.py and the fast == slow property tests run both). What differs
is only how:

- ``apply_payload`` walks a payload's newlines with ``memchr`` and makes a line object only
  for the line it hands back;
- a line is scanned once with ``memchr`` for its ``:`` and ``|``, and its shape (the name and
  the tail, read in place) looked up in a table of its own, with no object made for the key (a
  dict keyed by bytes cost an allocation, a free and a compare through the object protocol on
  every line). The hash reads 8 bytes at a step with one multiply, seeded per process: SipHash
  (Python's) was the largest single cost, ~200 instructions a line. It is not built to resist
  clients who choose names that collide; the table is: a lookup gives up after
  ``_MAX_PROBES`` slots and the line takes the slow path (whose dicts hash with SipHash), and
  a shape that finds no slot so near is not remembered, so colliding names cost what names
  never seen before cost, and no more;
- no whole-line cache of counter lines: in C the shape's lookup and the value's parse cost
  less than hashing every line once more to look it up there (measured: the second hash was
  the largest single cost, ~190 instructions a line);
- the value is parsed in C: digits only (the usual case) up to 15 of them exactly as an
  integer, ``[+-]digits.digits`` up to 15 digits by Clinger's fast path (exact integer over
  an exact power of ten, one correctly rounded division: what strtod returns), anything else
  through ``PyOS_string_to_double``, what ``float()`` calls, after the same byte check the
  Python class makes, so the grammar is the decoder's;
- entries are C structs behind small extension types instead of lists, so reading the kind,
  the epoch and the weight costs no Python objects;
- a set member is hashed here (MurmurHash3 x64 128, the value ``pystatsd.set_members``
  documents, which the Python class gets from mmh3) and kept in a :class:`MemberSet`, the set
  cell this module provides: 8 bytes a member, no object made for it.

It imports nothing from pystatsd.aggregation at import time (that module imports this one);
its limits are read from there when an instance is made, and on each ``remember``, so a test
that patches them sees them honoured as by the Python class.
"""

from cpython.array cimport array
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.exc cimport PyErr_Clear, PyErr_Occurred
from cpython.float cimport PyFloat_AS_DOUBLE, PyFloat_FromString
from cpython.object cimport PyObject, Py_SIZE
from cpython.mem cimport PyMem_Free, PyMem_Malloc, PyMem_Realloc
from cpython.ref cimport Py_DECREF, Py_INCREF
from libc.stdint cimport int64_t, uint64_t
from libc.string cimport memchr, memcmp, memcpy
from posix.time cimport CLOCK_MONOTONIC, clock_gettime, timespec


cdef extern from "Python.h":
    PyObject *_list_item "PyList_GET_ITEM"(object items, Py_ssize_t index) noexcept
    void _list_set_item "PyList_SET_ITEM"(object items, Py_ssize_t index, PyObject *value) noexcept
    # NULL for the overflow exception, as float() passes: an overflow gives inf, no error.
    double PyOS_string_to_double(const char *s, char **endptr, PyObject *overflow_exception)
    void Py_SET_SIZE(object ob, Py_ssize_t size) noexcept


# Entry kinds, as in the Python class (``LineCache.__init__`` checks that they are its).
cdef enum:
    _COUNTER = 0
    _GAUGE = 1
    _DISTRIBUTION = 2
    _SET = 3
    _OTHER = 4
    _TIMED_GAUGE = 5

cdef enum:
    _EXACT_DIGITS = 15  # up to 15 decimal digits an int64 and a double hold exactly
    _MAX_DIGITS = 300   # a longer run of digits goes to the decoder (as in the Python class)
    _STACK_VALUE = 64   # values up to this long are parsed from a buffer on the stack


cdef struct _Slot:
    char *key  # NULL: an empty slot; else the name then the tail, owned by the table
    Py_ssize_t length  # of both
    Py_ssize_t name_length
    uint64_t hash
    PyObject *entry  # a reference to its _Entry, owned by the table

cdef enum:
    _FIRST_SLOTS = 64  # a power of two; the table doubles when half full (linear probing)
    _MAX_PROBES = 64  # slots a lookup looks at, at most (see the module's docstring)


cdef class _Entry:
    """One line shape: what the slow path made of it, and its cell in the bound epoch."""
    cdef int kind
    cdef bint member_set  # a set's cell is a MemberSet: added to in C (beside kind: no padding)
    cdef long long epoch
    cdef object cell
    cdef bint is_array  # a distribution's ``values`` is an array('f') or ('d'): appended to in C
    # A timed gauge cell's record (a receive worker's TimedGauge: when each change came).
    cdef list record
    cdef double weight
    cdef object key


cdef inline bint _is_number_byte(unsigned char c) noexcept:
    # The bytes of _NUMBER_BYTES in pystatsd.aggregation: "0123456789.eE+-".
    return (48 <= c <= 57) or c == 46 or c == 101 or c == 69 or c == 43 or c == 45


cdef inline void _store(list cell, Py_ssize_t index, object value) noexcept:
    """``cell[index] = value`` into a gauge cell the binding checked: a list of at least two
    items whose item store is list's own. Cython's store into a list subclass (a receive
    worker's TimedGauge) takes the type's generic sequence slot, which looks ``__setitem__``
    up and calls it with a tuple of arguments: measured, 4× the cost of a gauge line."""
    cdef PyObject *old = _list_item(cell, index)
    Py_INCREF(value)
    _list_set_item(cell, index, <PyObject *>value)
    Py_DECREF(<object>old)


cdef double[23] _POWERS_OF_TEN = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
    1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22]


cdef inline bint _parse_decimal(const char *value, Py_ssize_t length, double *out) noexcept:
    """``[+-]digits[.digits]`` with at most 15 digits in all, the usual timer or gauge value,
    to the double ``float()`` gives: the digits as an exact integer divided by an exact power
    of ten, which IEEE division rounds correctly (Clinger's fast path, as strtod takes it).
    False for anything else (an exponent, more digits, no digit): the caller asks strtod."""
    cdef Py_ssize_t i = 0
    cdef Py_ssize_t digits = 0
    cdef Py_ssize_t decimals = -1  # digits after the point; -1 while no point seen
    cdef long long whole = 0
    cdef bint negative = False
    cdef unsigned char c
    cdef double number
    if value[0] == 43 or value[0] == 45:  # "+" or "-"
        negative = value[0] == 45
        i = 1
    while i < length:
        c = <unsigned char>value[i]
        if 48 <= c <= 57:
            whole = whole * 10 + (c - 48)
            digits += 1
            if digits > _EXACT_DIGITS:
                return False
            if decimals >= 0:
                decimals += 1
        elif c == 46 and decimals < 0:  # the one "."
            decimals = 0
        else:
            return False
        i += 1
    if digits == 0:
        return False
    number = <double>whole
    if decimals > 0:
        number = number / _POWERS_OF_TEN[decimals]
    out[0] = -number if negative else number
    return True


cdef int _parse_number(const char *value, Py_ssize_t length, double *out) except -1:
    """1 and ``*out`` set if ``value`` is a number the Python class takes, 0 if it refuses it
    (the decoder then says why). The Python class's rules, in its order."""
    cdef Py_ssize_t i
    cdef unsigned char c
    cdef bint digits = length > 0
    cdef long long whole = 0
    cdef double number
    cdef char buffer[_STACK_VALUE + 1]
    cdef char *end
    for i in range(length):
        c = <unsigned char>value[i]
        if c < 48 or c > 57:
            digits = False
            break
    if digits:  # bytes.isdigit(): the usual integer
        if length > _MAX_DIGITS:  # float() would overflow to inf: let the decoder say so
            return 0
        if length <= _EXACT_DIGITS:
            for i in range(length):
                whole = whole * 10 + (value[i] - 48)
            out[0] = <double>whole
            return 1
    else:
        if length == 0:  # float(b"") refuses it
            return 0
        for i in range(length):
            if not _is_number_byte(<unsigned char>value[i]):
                return 0
        if _parse_decimal(value, length, out):
            return 1
    if length > _STACK_VALUE:  # rare and long: float() itself on a bytes object
        try:
            # PyFloat_FromString, not float(): Cython would inline its own parser for that.
            number = PyFloat_AS_DOUBLE(PyFloat_FromString(PyBytes_FromStringAndSize(value, length)))
        except ValueError:
            return 0
    else:
        memcpy(buffer, value, length)
        buffer[length] = 0
        # float(bytes) is this call on the bytes (no whitespace or "_" can be in them here)
        # and a ValueError unless it read them all.
        number = PyOS_string_to_double(buffer, &end, NULL)
        if number == -1.0 and PyErr_Occurred():
            PyErr_Clear()
            return 0
        if end != buffer + length:
            return 0
    if number - number != 0.0:  # inf or nan, from an exponent
        return 0
    out[0] = number
    return 1


# -- set members: their hashes, and the set cell that keeps them -----------------------------

cdef inline uint64_t _rotl64(uint64_t x, int r) noexcept nogil:
    return (x << r) | (x >> (64 - r))


cdef inline uint64_t _fmix64(uint64_t k) noexcept nogil:
    k ^= k >> 33
    k *= 0xff51afd7ed558ccdULL
    k ^= k >> 33
    k *= 0xc4ceb9fe1a85ec53ULL
    k ^= k >> 33
    return k


cdef inline uint64_t _scramble(uint64_t k, uint64_t first, int rotation,
                               uint64_t second) noexcept nogil:
    """MurmurHash3's mixing of one 64-bit block half before it joins its lane."""
    return _rotl64(k * first, rotation) * second


cdef int64_t _member_hash(const char *data, Py_ssize_t length) noexcept nogil:
    """MurmurHash3_x64_128(data, length, seed 0), its first 64 bits, as ``mmh3.hash64(data)[0]``
    gives them (Austin Appleby's reference, public domain; blocks read little-endian)."""
    cdef const unsigned char *bytes_ = <const unsigned char *>data
    cdef Py_ssize_t blocks = length // 16
    cdef Py_ssize_t i, rest
    cdef uint64_t h1 = 0, h2 = 0, k1, k2
    cdef uint64_t c1 = 0x87c37b91114253d5ULL, c2 = 0x4cf5ad432745937fULL
    for i in range(blocks):
        memcpy(&k1, bytes_ + 16 * i, 8)
        memcpy(&k2, bytes_ + 16 * i + 8, 8)
        h1 ^= _scramble(k1, c1, 31, c2)
        h1 = (_rotl64(h1, 27) + h2) * 5 + 0x52dce729
        h2 ^= _scramble(k2, c2, 33, c1)
        h2 = (_rotl64(h2, 31) + h1) * 5 + 0x38495ab5
    bytes_ += 16 * blocks
    rest = length & 15
    k1 = 0
    k2 = 0
    if rest > 8:
        for i in range(8, rest):
            k2 ^= (<uint64_t>bytes_[i]) << (8 * (i - 8))
        h2 ^= _scramble(k2, c2, 33, c1)
    if rest > 0:
        for i in range(rest if rest < 8 else 8):
            k1 ^= (<uint64_t>bytes_[i]) << (8 * i)
        h1 ^= _scramble(k1, c1, 31, c2)
    h1 ^= <uint64_t>length
    h2 ^= <uint64_t>length
    h1 += h2
    h2 += h1
    h1 = _fmix64(h1)
    h2 = _fmix64(h2)
    h1 += h2
    return <int64_t>h1


def member_hash(bytes member):
    """The hash :func:`pystatsd.set_members.member_hash` gives (for the tests that hold the
    two equal)."""
    return _member_hash(PyBytes_AS_STRING(member), PyBytes_GET_SIZE(member))


cdef bint _is_ascii(const char *data, Py_ssize_t length) noexcept:
    cdef Py_ssize_t i
    for i in range(length):
        if <unsigned char>data[i] >= 0x80:
            return False
    return True


cdef uint64_t _PROBE_KEY = 0
"""Mixed into where a hash is looked for in every MemberSet of this process (set at import
from os.urandom): members are hashed with a fixed, public function, so without it a client
could choose members whose hashes share their low bits and make each insertion probe long."""

cdef enum:
    _FIRST_MEMBER_SLOTS = 8  # a power of two; doubled past 3/4 full


cdef class MemberSet:
    """A set cell: the distinct 64-bit hashes of its members (``pystatsd.set_members``), in an
    open-addressing table of ``uint64`` (probed as CPython's dicts are: every bit of the hash
    takes part), 8 bytes a slot, at most 3/4 full; no memory until the first member.

    It answers what the pure-Python cell (a ``dict`` of hash -> None) answers, so code that
    reads set cells takes either: ``cell[h] = None`` adds, ``len``, iteration (the hashes, in
    no particular order), ``in``, ``clear``, ``update`` (from either kind), ``keys`` and
    ``cell[h]`` (for ``dict.update``), pickling (a hot restart). It holds no Python object,
    so the cyclic GC never walks it."""

    cdef uint64_t *_slots  # 0: an empty slot (the hash 0 is kept in _zero)
    cdef size_t _mask  # slots - 1; meaningless while _slots is NULL
    cdef Py_ssize_t _used  # nonzero hashes held
    cdef bint _zero

    def __cinit__(self):
        self._slots = NULL
        self._mask = 0
        self._used = 0
        self._zero = False

    def __dealloc__(self):
        PyMem_Free(self._slots)

    cdef inline size_t _first(self, uint64_t hash_) noexcept:
        return <size_t>_fmix64(hash_ ^ _PROBE_KEY)

    cdef uint64_t *_find(self, uint64_t hash_) noexcept:
        """The slot holding ``hash_`` (nonzero), or the empty one where it would go."""
        cdef size_t perturb = self._first(hash_)
        cdef size_t i = perturb & self._mask
        cdef uint64_t *slot
        while True:
            slot = &self._slots[i]
            if slot[0] == hash_ or slot[0] == 0:
                return slot
            perturb >>= 5
            i = (i * 5 + perturb + 1) & self._mask

    cdef int _resize(self, size_t slots) except -1:
        cdef uint64_t *old = self._slots
        cdef size_t old_slots = self._mask + 1 if old is not NULL else 0
        cdef uint64_t *table = <uint64_t *>PyMem_Malloc(slots * sizeof(uint64_t))
        cdef size_t i
        if table is NULL:
            raise MemoryError()
        for i in range(slots):
            table[i] = 0
        self._slots = table
        self._mask = slots - 1
        for i in range(old_slots):
            if old[i] != 0:
                self._find(old[i])[0] = old[i]
        PyMem_Free(old)
        return 0

    cdef int add(self, int64_t member) except -1:
        """Add one member's hash."""
        cdef uint64_t hash_ = <uint64_t>member
        cdef uint64_t *slot
        if hash_ == 0:
            self._zero = True
            return 0
        if self._slots is NULL:
            self._resize(_FIRST_MEMBER_SLOTS)
        slot = self._find(hash_)
        if slot[0] == 0:
            slot[0] = hash_
            self._used += 1
            if <size_t>(self._used * 4) > (self._mask + 1) * 3:
                self._resize((self._mask + 1) * 2)
        return 0

    cdef bint _has(self, int64_t member) noexcept:
        cdef uint64_t hash_ = <uint64_t>member
        if hash_ == 0:
            return self._zero
        return self._slots is not NULL and self._find(hash_)[0] == hash_

    def __len__(self):
        return self._used + self._zero

    def __contains__(self, member):
        return self._has(member)

    def __setitem__(self, member, value):
        self.add(member)

    def __getitem__(self, member):
        if not self._has(member):
            raise KeyError(member)
        return None

    def keys(self):
        """The hashes held, as a list (signed, as :func:`member_hash` gives them)."""
        cdef list out = [0] if self._zero else []
        cdef size_t i
        if self._slots is not NULL:
            for i in range(self._mask + 1):
                if self._slots[i] != 0:
                    out.append(<int64_t>self._slots[i])
        return out

    def __iter__(self):
        return iter(self.keys())

    def update(self, other):
        """Add every hash of ``other``: another MemberSet, a dict cell, any iterable of them."""
        for member in other:
            self.add(member)

    def clear(self):
        """Forget every member and give the table's memory back."""
        PyMem_Free(self._slots)
        self._slots = NULL
        self._mask = 0
        self._used = 0
        self._zero = False

    def __reduce__(self):
        return _member_set_of, (self.keys(),)

    def __repr__(self):
        return f"MemberSet({len(self)} members)"


def _member_set_of(members):
    """A MemberSet holding ``members`` (what a pickled one is made of again)."""
    cdef MemberSet made = MemberSet()
    made.update(members)
    return made


def _seed_probes(bytes key):
    """Set the probe key (at import; the tests call it again to see that counts ignore it)."""
    global _PROBE_KEY
    memcpy(&_PROBE_KEY, PyBytes_AS_STRING(key), 8)


# -- a timer's samples: 4 bytes each while they fit, 8 once one does not ---------------------
# A Distribution's ``values`` is an array('f') here (``new_samples``) while every sample of it
# is a double that a C float holds exactly (integers up to 2**24, 12.5, 0.25: most clients send
# whole milliseconds), and becomes an array('d') in place, the same object, at the first
# sample that is not (0.1, 2**24 + 1, 1e39): so every sample stays the double it was, and the
# line cache's entries, which hold the array itself, all see the wider one. Only these
# functions write into a samples array in place (a line cache entry, Distribution.add, the
# merges); anything may read it as an array (a float item reads as the double it came from).
# The array's fields are CPython's arrayobject's (Cython's arrayarray.h declares them for its
# own resize); the descriptors are the array module's own static ones, taken from an array of
# each kind at import. A buffer exported from the array (a memoryview) forbids any resize, as
# array.append itself refuses.

cdef extern from *:
    ctypedef struct _ArrayDescr "struct arraydescr":
        int itemsize
    ctypedef struct _ArrayObject "struct arrayobject":
        Py_ssize_t allocated
        char *ob_item "data.ob_item"
        _ArrayDescr *ob_descr
        int ob_exports

cdef extern from "float.h":
    const float FLT_MAX


cdef array _FLOAT_ARRAY = array("f"), _DOUBLE_ARRAY = array("d")
cdef const _ArrayDescr *_FLOATS = (<_ArrayObject *>_FLOAT_ARRAY).ob_descr
cdef const _ArrayDescr *_DOUBLES = (<_ArrayObject *>_DOUBLE_ARRAY).ob_descr


cdef int _reserve(array values, Py_ssize_t needed, Py_ssize_t cap) except -1:
    """Room for ``needed`` items: half as many again as needed (Cython's resize_smart), but
    never past ``cap`` when ``needed`` fits under it. A timer's array is folded and emptied at
    ``timer_exact_samples`` + 1 samples, so the room past that was never used: up to a third
    of the array at its largest."""
    cdef _ArrayObject *a = <_ArrayObject *>values
    cdef Py_ssize_t room = needed + needed // 2 + 1
    cdef char *items
    if needed <= a.allocated:
        return 0
    if a.ob_exports > 0:
        raise BufferError("cannot resize an array that is exporting buffers")
    if needed <= cap < room:
        room = cap
    items = <char *>PyMem_Realloc(a.ob_item, room * a.ob_descr.itemsize)
    if items is NULL:
        raise MemoryError()
    a.ob_item = items
    a.allocated = room
    return 0


cdef int _widen(array values) except -1:
    """An array('f') becomes an array('d') in place, every item the double it was."""
    cdef _ArrayObject *a = <_ArrayObject *>values
    cdef Py_ssize_t n = Py_SIZE(values), i
    cdef char *items
    if a.ob_descr != _FLOATS:
        return 0
    if a.allocated > 0:
        if a.ob_exports > 0:
            raise BufferError("cannot resize an array that is exporting buffers")
        items = <char *>PyMem_Realloc(a.ob_item, a.allocated * sizeof(double))
        if items is NULL:
            raise MemoryError()
        a.ob_item = items
        # From the last down: item i's 8 bytes cover floats 2i and 2i + 1, never one below i.
        for i in range(n - 1, -1, -1):
            (<double *>items)[i] = <double>(<float *>items)[i]
    a.ob_descr = <_ArrayDescr *>_DOUBLES
    return 0


cdef inline int _append_sample(array values, double number, Py_ssize_t cap) except -1:
    """``values.append(number)``, exactly, into an array('f') or ('d')."""
    cdef _ArrayObject *a = <_ArrayObject *>values
    cdef Py_ssize_t n = Py_SIZE(values)
    cdef float narrow
    if a.ob_descr == _FLOATS:
        if -FLT_MAX <= number <= FLT_MAX:  # else the cast is undefined (C11 6.3.1.5)
            narrow = <float>number
            if <double>narrow == number:
                if n >= a.allocated:
                    _reserve(values, n + 1, cap)
                (<float *>a.ob_item)[n] = narrow
                Py_SET_SIZE(values, n + 1)
                return 0
        _widen(values)
    if n >= a.allocated:
        _reserve(values, n + 1, cap)
    (<double *>a.ob_item)[n] = number
    Py_SET_SIZE(values, n + 1)
    return 0


cdef inline bint _is_samples(object values) noexcept:
    return type(values) is array and (
        (<_ArrayObject *>values).ob_descr == _FLOATS
        or (<_ArrayObject *>values).ob_descr == _DOUBLES)


def new_samples():
    """A timer's empty samples array: 4 bytes a sample until one needs 8 (see above)."""
    return array("f")


def append_sample(values, double value, Py_ssize_t cap=0):
    """Append ``value`` to a samples array, widening it first if a float would not hold it
    exactly (its room grows past ``cap`` items only when it must); any other array or
    sequence: its own ``append``."""
    if _is_samples(values):
        _append_sample(<array>values, value, cap)
    else:
        values.append(value)


def extend_samples(values, more):
    """Append each of ``more`` (numbers: a list, another samples array of either width)."""
    cdef double value
    if not _is_samples(values):
        values.extend(more)
        return
    for value in more:
        _append_sample(<array>values, value, 0)


def narrow_samples(values):
    """An empty samples array('d') becomes an array('f') again, its memory given back (a fold
    emptied it: the next samples start at 4 bytes). Nothing if it holds samples."""
    cdef _ArrayObject *a
    if not _is_samples(values) or Py_SIZE(values) != 0:
        return
    a = <_ArrayObject *>values
    if a.ob_descr == _FLOATS:
        return
    if a.ob_exports > 0:
        raise BufferError("cannot resize an array that is exporting buffers")
    PyMem_Free(a.ob_item)
    a.ob_item = NULL
    a.allocated = 0
    a.ob_descr = <_ArrayDescr *>_FLOATS


# -- line shapes: their hash -----------------------------------------------------------------

cdef uint64_t _SHAPE_KEY = 0
"""The seed of every shape's hash in this process (set at import from os.urandom)."""

cdef inline uint64_t _load64(const char *at) noexcept nogil:
    cdef uint64_t word
    memcpy(&word, at, 8)
    return word


cdef inline uint64_t _fold(uint64_t h, const char *data, Py_ssize_t length) noexcept nogil:
    """``length`` bytes folded into ``h`` 8 at a step (the last step overlaps the one before
    it when the length is no multiple of 8, so no byte loop but under 8 bytes), then the
    length, so that where the name ends and the tail begins is part of the hash."""
    cdef Py_ssize_t at = 0
    cdef uint64_t word = 0
    while at + 8 <= length:
        h = _rotl64((h ^ _load64(data + at)) * 0x9e3779b97f4a7c15ULL, 31)
        at += 8
    if at < length:
        if length >= 8:
            word = _load64(data + length - 8)
        else:
            for at in range(length):
                word |= (<uint64_t>(<const unsigned char *>data)[at]) << (8 * at)
        h = _rotl64((h ^ word) * 0x9e3779b97f4a7c15ULL, 31)
    return (h ^ <uint64_t>length) * 0xff51afd7ed558ccdULL


cdef inline uint64_t _shape_hash(const char *name, Py_ssize_t name_length, const char *tail,
                                 Py_ssize_t tail_length) noexcept nogil:
    return _fmix64(_fold(_fold(_SHAPE_KEY, name, name_length), tail, tail_length))


def shape_hash(bytes name, bytes tail):
    """The hash of the shape ``name:<value>|tail`` in this process (for the tests that make
    shapes collide)."""
    return _shape_hash(PyBytes_AS_STRING(name), PyBytes_GET_SIZE(name),
                       PyBytes_AS_STRING(tail), PyBytes_GET_SIZE(tail))


def _seed_shapes(bytes key):
    """Set the shape hash's seed (at import; before any LineCache holds a shape)."""
    global _SHAPE_KEY
    memcpy(&_SHAPE_KEY, PyBytes_AS_STRING(key), 8)


import os as _os
_seed_probes(_os.urandom(8))
_seed_shapes(_os.urandom(8))


cdef class LineCache:
    """The compiled twin of :class:`pystatsd.aggregation.PythonLineCache`: the same
    constructor, attributes and methods (see there for what each means)."""

    cdef object _manager
    cdef public bint absolute_gauges
    cdef public long long hits  # C integers: Python ints cost ~150 instructions a payload
    cdef public long long unplaced
    cdef public long long lines
    cdef public Py_ssize_t position
    cdef public Py_ssize_t bytes
    cdef _Slot *_slots
    cdef size_t _mask  # slots - 1
    cdef Py_ssize_t _size
    cdef object _memory_generation
    cdef double _distribution_limit
    cdef list _clock  # the manager's gauge_clock: None unless its gauge cells are timed
    cdef bint _reads_clock  # the manager's reads_clock: stamp _clock[0] here, in C
    # Of the apply under way:
    cdef long long _epoch
    cdef Py_ssize_t _exact_limit
    cdef long long _hits_now
    cdef long long _unplaced_now
    cdef object _now  # the payload's millisecond (also put in _clock[0]), for timed gauge cells
    cdef long long _now_ms

    def __cinit__(self):
        self._slots = NULL
        self._new_table(_FIRST_SLOTS)

    def __dealloc__(self):
        self._free_table()

    cdef int _new_table(self, size_t slots) except -1:
        cdef _Slot *table = <_Slot *>PyMem_Malloc(slots * sizeof(_Slot))
        cdef size_t i
        if table is NULL:
            raise MemoryError()
        for i in range(slots):
            table[i].key = NULL
        self._slots = table
        self._mask = slots - 1
        self._size = 0
        return 0

    cdef void _free_table(self) noexcept:
        cdef size_t i
        if self._slots is NULL:
            return
        for i in range(self._mask + 1):
            if self._slots[i].key is not NULL:
                PyMem_Free(self._slots[i].key)
                Py_DECREF(<object>self._slots[i].entry)
        PyMem_Free(self._slots)
        self._slots = NULL

    cdef _Slot *_find(self, const char *name, Py_ssize_t name_length, const char *tail,
                      Py_ssize_t tail_length, uint64_t hash) noexcept:
        """The slot holding this shape, or the empty one where it would go; NULL if neither
        is within ``_MAX_PROBES`` slots of where its hash points."""
        cdef size_t i = <size_t>hash & self._mask
        cdef _Slot *slot
        cdef int probes
        for probes in range(_MAX_PROBES):
            slot = &self._slots[i]
            if slot.key is NULL or (
                    slot.hash == hash and slot.name_length == name_length
                    and slot.length == name_length + tail_length
                    and memcmp(slot.key, name, name_length) == 0
                    and memcmp(slot.key + name_length, tail, tail_length) == 0):
                return slot
            i = (i + 1) & self._mask
        return NULL

    cdef int _grow(self) except -1:
        cdef _Slot *old = self._slots
        cdef size_t old_slots = self._mask + 1
        cdef Py_ssize_t size = self._size
        cdef size_t i
        cdef _Slot *slot
        self._new_table(old_slots * 2)
        self._size = size
        for i in range(old_slots):
            if old[i].key is not NULL:
                slot = self._find(old[i].key, old[i].name_length,
                                  old[i].key + old[i].name_length,
                                  old[i].length - old[i].name_length, old[i].hash)
                if slot is NULL:  # (colliding names only) forgotten: the slow path has it
                    PyMem_Free(old[i].key)
                    Py_DECREF(<object>old[i].entry)
                    self._size -= 1
                    continue
                slot[0] = old[i]
        PyMem_Free(old)
        return 0

    def __init__(self, manager, absolute_gauges=False):
        from pystatsd import aggregation
        self._manager = manager
        self.absolute_gauges = absolute_gauges
        self.hits = 0
        self.unplaced = 0
        self.lines = 0
        self.position = 0
        self.bytes = 0
        self._memory_generation = manager.memory_generation
        self._distribution_limit = aggregation.DISTRIBUTION_LIMIT
        self._clock = manager.gauge_clock
        self._reads_clock = manager.reads_clock
        if (aggregation._COUNTER, aggregation._GAUGE, aggregation._DISTRIBUTION, aggregation._SET,
                aggregation._OTHER, aggregation._TIMED_GAUGE) != (
                _COUNTER, _GAUGE, _DISTRIBUTION, _SET, _OTHER, _TIMED_GAUGE):
            raise RuntimeError("pystatsd._linecache was built for other entry kinds than "
                               "pystatsd.aggregation's: rebuild it")

    def __len__(self):
        return self._size

    def clear(self):
        self._free_table()
        self._new_table(_FIRST_SLOTS)
        self.bytes = 0

    cdef int _begin(self) except -1:
        """Read what one apply needs from the manager (once per payload, not per line)."""
        manager = self._manager
        if manager.memory_generation != self._memory_generation:  # a burst is gone: let go
            self._memory_generation = manager.memory_generation
            self.clear()
        self._epoch = manager.epoch
        self._exact_limit = manager.exact_limit
        self._hits_now = 0
        self._unplaced_now = 0
        if self._clock is None:
            return 0
        if self._reads_clock:
            self._stamp()
        else:  # the deliverer stamped it
            self._now = self._clock[0]
            self._now_ms = self._now
        return 0

    cdef int _stamp(self) except -1:
        """The payload's millisecond for a manager that ``reads_clock`` (a receive worker's),
        taken here in C: CLOCK_MONOTONIC, ``time.monotonic_ns() // 10**6`` (the clock every
        worker reads), kept for the gauge lines and put in the manager's ``gauge_clock`` for
        the rest of the payload (a new timed cell's record). In Python, per payload, the
        stamp cost a worker ~1,000 instructions; here a new int only when the millisecond
        has moved."""
        cdef timespec now
        cdef long long ms
        clock_gettime(CLOCK_MONOTONIC, &now)
        ms = <long long>now.tv_sec * 1000 + now.tv_nsec // 1000000
        if self._now is None or ms != self._now_ms:
            self._now = ms
            self._now_ms = ms
            self._clock[0] = self._now
        return 0

    cdef int _note_gauge_change(self, list record, double delta, bint is_delta) except -1:
        """aggregation.note_gauge_change, in C: on a timed gauge cell's record
        ``[at, ms, delta, ...]``, an absolute value sets ``at`` and drops the deltas before
        it; a delta joins its millisecond's step or starts one."""
        cdef Py_ssize_t length = len(record)
        cdef object last
        if not is_delta:
            record[0] = self._now
            if length > 1:
                del record[1:]
            return 0
        if length > 1:
            last = record[length - 2]
            if last is self._now or <long long>last == self._now_ms:
                record[length - 1] = <double>record[length - 1] + delta
                return 0
        record.append(self._now)
        record.append(delta)
        return 0

    cdef int _end(self) except -1:
        self.hits += self._hits_now
        self.unplaced += self._unplaced_now
        return 0

    cdef int _apply_line(self, const char *start, Py_ssize_t length) except -1:
        """Apply one line (its bytes, without the newline): 1 if taken (applied, or dropped
        and counted by the manager), 0 if refused, for the slow path."""
        cdef const char *colon = <const char *>memchr(start, 58, length)  # ":"
        cdef const char *value
        cdef const char *bar
        cdef const char *tail
        cdef Py_ssize_t value_length, name_length, tail_length
        cdef _Slot *slot
        cdef _Entry entry
        cdef list cells
        cdef array values
        cdef double number = 0.0, total, moved, level
        cdef int64_t member = 0
        if colon is NULL:  # no value: the Python class refuses it too
            return 0
        name_length = colon - start
        value = colon + 1
        bar = <const char *>memchr(value, 124, length - name_length - 1)  # "|"
        if bar is NULL:
            value_length = length - name_length - 1
            tail = value + value_length
            tail_length = 0
        else:
            value_length = bar - value
            tail = bar + 1
            tail_length = length - name_length - 2 - value_length
        slot = self._find(start, name_length, tail, tail_length,
                          _shape_hash(start, name_length, tail, tail_length))
        if slot is NULL or slot.key is NULL:
            return 0
        entry = <_Entry>slot.entry
        if entry.kind == _SET:
            if value_length == 0:
                return 0
            if not _is_ascii(value, value_length):  # strict UTF-8, as the decoder takes it
                try:
                    value[:value_length].decode("utf-8")
                except UnicodeDecodeError:
                    return 0
            member = _member_hash(value, value_length)
        elif not _parse_number(value, value_length, &number):
            return 0
        manager = self._manager
        if entry.epoch != self._epoch:
            cell = manager.cell(entry.key)
            if cell is None:  # too many series: rejected and counted by the manager
                self._unplaced_now += 1
                return 1
            entry.member_set = entry.kind == _SET and type(cell) is MemberSet
            if entry.kind == _DISTRIBUTION:
                cell = cell.values
                entry.is_array = _is_samples(cell)
            elif entry.kind == _TIMED_GAUGE:
                record = getattr(cell, "record", None)
                # Stored into unchecked below, as a list: a list subclass that changed how
                # it is stored into (__setitem__) would not see it, so none may.
                if not (isinstance(cell, list) and len(cell) >= 2 and type(record) is list
                        and len(record) >= 1 and type(cell).__setitem__ is list.__setitem__):
                    raise TypeError(f"line cache: a timed gauge cell is "
                                    f"{type(cell).__name__} {cell!r:.40}, not a list "
                                    f"[value, delta] with a record")
                entry.record = record
            elif (entry.kind == _COUNTER or entry.kind == _GAUGE) and not (
                    type(cell) is list and len(cell) >= (1 if entry.kind == _COUNTER else 2)):
                # The loop below indexes these cells unchecked: a cell of another shape (a
                # change to new_cell) must be an error here, never a crash.
                raise TypeError(f"line cache: a {entry.key[1]} cell is {type(cell).__name__} "
                                f"{cell!r:.40}, not [value]/[value, delta]")
            entry.epoch = self._epoch
            entry.cell = cell
        # MetricMgr.update, inlined, as in the Python class.
        if entry.kind == _COUNTER:
            cells = <list>entry.cell
            total = <double>cells[0] + number * entry.weight
            if total - total != 0.0:
                manager.overflow(entry.key, number, entry.weight)
                self._unplaced_now += 1
                return 1
            cells[0] = total
        elif entry.kind == _DISTRIBUTION:  # unit rate only
            if number > self._distribution_limit or number < -self._distribution_limit:
                manager.overflow(entry.key, number, entry.weight)
                self._unplaced_now += 1
                self._epoch = manager.epoch  # the cell may have left the table
                return 1
            if entry.is_array:
                values = <array>entry.cell
                _append_sample(values, number, self._exact_limit + 1)
                if Py_SIZE(values) > self._exact_limit:
                    manager.fold(entry.key)
            else:
                entry.cell.append(number)
                if len(entry.cell) > self._exact_limit:
                    manager.fold(entry.key)
        elif entry.kind == _GAUGE or entry.kind == _TIMED_GAUGE:  # a sign makes a delta, as
            # the decoder decides; a timed cell (a receive worker's) also notes when
            cells = <list>entry.cell
            if value[0] == 43 or value[0] == 45:  # "+" or "-"
                moved = <double>cells[1] + number
                if cells[0] is None:
                    level = moved
                else:
                    level = <double>cells[0] + moved
                if level - level != 0.0:
                    manager.overflow(entry.key, number, entry.weight)
                    self._unplaced_now += 1
                    return 1
                _store(cells, 1, moved)
                if entry.kind == _TIMED_GAUGE:
                    self._note_gauge_change(entry.record, number, True)
            else:
                _store(cells, 0, number)
                _store(cells, 1, 0.0)
                if entry.kind == _TIMED_GAUGE:
                    self._note_gauge_change(entry.record, 0.0, False)
        elif entry.kind == _SET:
            if entry.member_set:
                (<MemberSet>entry.cell).add(member)
            else:  # the pure-Python cell (a dict), where that one is selected
                entry.cell[member] = None
        elif not manager.update(entry.key[1], entry.cell, number, entry.weight, False):
            manager.overflow(entry.key, number, entry.weight)
            self._unplaced_now += 1
            self._epoch = manager.epoch
            return 1
        self._hits_now += 1
        return 1

    def apply(self, lines):
        cdef bytes line
        self._begin()
        try:
            for line in lines:
                if not self._apply_line(PyBytes_AS_STRING(line), PyBytes_GET_SIZE(line)):
                    return line
        finally:
            self._end()
        return None

    def apply_payload(self, bytes payload):
        cdef const char *start = PyBytes_AS_STRING(payload)
        cdef const char *end = start + PyBytes_GET_SIZE(payload)
        cdef const char *newline
        cdef Py_ssize_t taken = 0
        self._begin()
        try:
            while start < end:  # as split(b"\n") with the empty piece after a last "\n" dropped
                newline = <const char *>memchr(start, 10, end - start)
                if newline is NULL:
                    newline = end
                if not self._apply_line(start, newline - start):
                    return taken, start[:newline - start]
                taken += 1
                start = newline + 1
        finally:
            self._end()
        return taken, None

    def apply_payloads(self, list payloads, Py_ssize_t start, bytes unusual_starts):
        # One _begin for the batch: nothing between two of its payloads changes the manager
        # (the caller holds the ingest lock throughout, and a line that moves the epoch, an
        # overflow, re-reads it where it happens, as within one payload).
        cdef Py_ssize_t index, count = len(payloads)
        cdef Py_ssize_t taken, size
        cdef const char *first = PyBytes_AS_STRING(unusual_starts)
        cdef Py_ssize_t firsts = PyBytes_GET_SIZE(unusual_starts)
        cdef const char *start_
        cdef const char *end
        cdef const char *newline
        cdef object payload
        self._begin()
        try:
            for index in range(start, count):
                self.position = index
                payload = <object>_list_item(payloads, index)
                if type(payload) is not bytes:
                    raise TypeError(f"apply_payloads: a payload is {type(payload).__name__}")
                start_ = PyBytes_AS_STRING(payload)
                size = PyBytes_GET_SIZE(payload)
                if size == 0 or memchr(first, start_[0], firsts) is not NULL:
                    return index, 0, None
                end = start_ + size
                taken = 0
                while start_ < end:  # as apply_payload
                    newline = <const char *>memchr(start_, 10, end - start_)
                    if newline is NULL:
                        newline = end
                    if not self._apply_line(start_, newline - start_):
                        return index, taken, start_[:newline - start_]
                    taken += 1
                    start_ = newline + 1
                self.lines += taken
        finally:
            self._end()
        return count, 0, None

    def remember(self, bytes line, sample):
        from pystatsd import aggregation
        cdef const char *start = PyBytes_AS_STRING(line)
        cdef Py_ssize_t length = PyBytes_GET_SIZE(line)
        cdef const char *colon = <const char *>memchr(start, 58, length)
        cdef const char *bar = NULL
        cdef const char *tail = start + length
        cdef Py_ssize_t name_length, tail_length = 0
        cdef uint64_t key_hash
        cdef _Slot *slot
        cdef char *key
        cdef int code
        if colon is NULL:  # as partition does: the whole line is the name, the tail empty
            name_length = length
        else:
            name_length = colon - start
            bar = <const char *>memchr(colon + 1, 124, length - name_length - 1)
            if bar is not NULL:
                tail = bar + 1
                tail_length = length - (bar + 1 - start)
        kind = sample.type
        code = aggregation.update_arm(kind, sample.rate, self.absolute_gauges,
                                      self._clock is not None)
        weight = 1.0 / sample.rate
        cdef _Entry entry = _Entry.__new__(_Entry)
        entry.kind = code
        entry.epoch = -1
        entry.cell = None
        entry.weight = weight
        entry.key = (sample.name, kind, sample.tags)
        if self._size >= aggregation.CACHE_ENTRIES or self.bytes >= aggregation.CACHE_BYTES:
            self.clear()
        key_hash = _shape_hash(start, name_length, tail, tail_length)
        slot = self._find(start, name_length, tail, tail_length, key_hash)
        if slot is NULL:  # (colliding names only) not remembered: its lines take the slow path
            return
        Py_INCREF(entry)
        if slot.key is not NULL:  # the same shape again (remembered after a refused value)
            Py_DECREF(<object>slot.entry)
            slot.entry = <PyObject *>entry
            return
        key = <char *>PyMem_Malloc(name_length + tail_length + 1)
        if key is NULL:
            Py_DECREF(entry)
            raise MemoryError()
        memcpy(key, start, name_length)
        memcpy(key + name_length, tail, tail_length)
        slot.key = key
        slot.length = name_length + tail_length
        slot.name_length = name_length
        slot.hash = key_hash
        slot.entry = <PyObject *>entry
        self._size += 1
        self.bytes += name_length + tail_length + aggregation._ENTRY_OVERHEAD
        if <size_t>(self._size * 2) > self._mask + 1:
            self._grow()
