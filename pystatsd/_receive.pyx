# cython: language_level=3, boundscheck=False, wraparound=False
"""The native UDP receive: a thread without the GIL drains the socket into a ring, and the
listener's thread delivers from the ring with the GIL (pystatsd.listeners.UdpListener).

Why: ``os.fork()`` (the flush's snapshot child, pystatsd/forked_snapshot.py) holds the GIL
while the kernel copies the page tables (~12-20 ms at 100,000 series), and the flush's other
work takes the GIL in 5 ms turns; a receive loop that needs the GIL for every datagram stops
draining the socket for all that time. The drain thread here never takes the GIL, and nothing
it touches during a fork is copied by the fork, because a thread that writes memory the
kernel has just write-protected for the child faults, and that fault waits for ``fork()`` to
finish with the memory map (measured: the drain stalled for the whole fork until all four
below were done):

- the ring, its counters and the ``recvmmsg`` headers are one mapping, ``MADV_DONTFORK`` and
  written once before use (prefaulted), so the fork neither copies nor write-protects it;
- the thread runs on a stack of its own (not Python's), whose lower part, where its frames
  are, is ``MADV_DONTFORK`` too; the top page or two, where glibc keeps the thread's control
  block and TLS, are left to the fork (glibc in the child writes there);
- glibc's restartable-sequences area (in that control block) is unregistered for this thread
  only, since the kernel writes it each time the thread is scheduled back in;
- ``recvmmsg`` and the futexes are called through ``syscall()``, not glibc's cancellable
  wrappers, which write the thread's cancellation state (also in the control block).

The child never touches any of it (the snapshot child runs no thread and exits by
``os._exit``). The ring holds records of [length, errno, bytes padded to 8]; when it is full
the drain thread waits for room and the kernel's socket buffer fills behind it, so what a
pause can absorb is the ring plus the socket buffer, and what neither holds the kernel drops
and counts (``kernel_drops``); the times the ring filled are counted (``ring_full``).
"""

from cpython.bytes cimport PyBytes_FromStringAndSize
from libc.errno cimport errno
from libc.stdint cimport int32_t, uint32_t, uint64_t

cdef extern from *:
    """
    #ifndef _GNU_SOURCE
    #define _GNU_SOURCE
    #endif
    #include <errno.h>
    #include <limits.h>
    #include <linux/futex.h>
    #include <pthread.h>
    #include <signal.h>
    #include <stddef.h>
    #include <stdint.h>
    #include <string.h>
    #include <sys/mman.h>
    #include <sys/socket.h>
    #include <sys/syscall.h>
    #include <time.h>
    #include <unistd.h>

    #define RX_BATCH 64
    #define RX_HEADER 8
    #define RX_STACK (256 * 1024)
    #define RX_PAD (16 * 1024)
    #define RX_EMPTY_LIMIT 64  /* empty reads in a row after the stop: a shut-down socket */
    #define RX_COALESCE_NS 200000  /* after a short read, let datagrams gather: one wake-up
                                      of this thread per ~0.2 ms, not one per datagram */
    #define RX_GATHER_NS 1000000   /* the delivering thread's nap when the ring is empty */
    #define RX_SHIELD_STACK 1
    #define RX_SHIELD_RSEQ 2

    /* glibc >= 2.35 registers an rseq area per thread; weak, so an older glibc still loads. */
    extern const ptrdiff_t __rseq_offset __attribute__((weak));
    extern const unsigned int __rseq_size __attribute__((weak));

    typedef struct {
        /* written by the drain thread */
        uint64_t head;              /* bytes published, ever */
        uint32_t head_seq;          /* futex word: bumped at each publication and at the end */
        uint32_t ended;             /* nothing more will be published */
        uint32_t drainer_waiting;
        uint32_t shielded;          /* RX_SHIELD_* bits that took */
        uint32_t ready;             /* the shields are up: draining from now on */
        uint64_t ring_full;         /* times the ring was full and the drain thread waited */
        uint64_t last_drain_ns;     /* CLOCK_MONOTONIC of the last recvmmsg return */
        uint64_t longest_gap_ns;    /* longest time between two, since the last reset */
        /* written by the delivering thread */
        uint64_t tail;              /* bytes consumed, ever */
        uint32_t tail_seq;          /* futex word: bumped when room is made */
        uint32_t consumer_waiting;
        uint32_t stopping;          /* an empty datagram now means: stop */
        /* set once */
        int fd;
        uint32_t max_bytes;
        uint64_t capacity;
        char *data;
        char *stack;                /* the drain thread's stack mapping (a guard page first) */
        struct timespec coalesce;   /* the drain thread's nap (its memory is out of the fork) */
        struct mmsghdr msgs[RX_BATCH];
        struct iovec iov[RX_BATCH];
    } rx_ring;

    static size_t rx_page(void) { return (size_t)sysconf(_SC_PAGESIZE); }

    static uint64_t rx_now_ns(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);  /* the vDSO: reads only */
        return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
    }

    static void rx_futex_wake(uint32_t *word) {
        syscall(SYS_futex, word, FUTEX_WAKE_PRIVATE, INT_MAX, NULL, NULL, 0);
    }

    static void rx_futex_wait(uint32_t *word, uint32_t seen) {
        syscall(SYS_futex, word, FUTEX_WAIT_PRIVATE, seen, NULL, NULL, 0);
    }

    static size_t rx_control_bytes(void) {
        size_t page = rx_page();
        return (sizeof(rx_ring) + page - 1) / page * page;
    }

    /* One mapping: the control block, then the ring. NULL and errno on failure. */
    static rx_ring *rx_open(int fd, uint32_t max_bytes, uint64_t capacity) {
        size_t control = rx_control_bytes();
        capacity = (capacity + 7) & ~(uint64_t)7;
        char *base = mmap(NULL, control + capacity, PROT_READ | PROT_WRITE,
                          MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (base == MAP_FAILED) return NULL;
        if (madvise(base, control + capacity, MADV_DONTFORK) != 0) {
            int e = errno; munmap(base, control + capacity); errno = e; return NULL;
        }
        memset(base, 0, control + capacity);  /* prefault: no first-touch fault in a fork */
        size_t page = rx_page();
        char *stack = mmap(NULL, page + RX_STACK, PROT_READ | PROT_WRITE,
                           MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (stack == MAP_FAILED) {
            int e = errno; munmap(base, control + capacity); errno = e; return NULL;
        }
        mprotect(stack, page, PROT_NONE);  /* the guard page */
        memset(stack + page, 0, RX_STACK);
        rx_ring *r = (rx_ring *)base;
        r->fd = fd;
        r->max_bytes = max_bytes;
        r->capacity = capacity;
        r->data = base + control;
        r->stack = stack;
        return r;
    }

    static void rx_close(rx_ring *r) {
        munmap(r->stack, rx_page() + RX_STACK);
        munmap((char *)r, rx_control_bytes() + r->capacity);
    }

    static uint64_t rx_record_bytes(uint32_t length) {
        return RX_HEADER + (((uint64_t)length + 7) & ~(uint64_t)7);
    }

    static void rx_publish(rx_ring *r, uint64_t head) {
        __atomic_store_n(&r->head, head, __ATOMIC_SEQ_CST);
        __atomic_add_fetch(&r->head_seq, 1, __ATOMIC_SEQ_CST);
        if (__atomic_load_n(&r->consumer_waiting, __ATOMIC_SEQ_CST))
            rx_futex_wake(&r->head_seq);
    }

    static void rx_note_drain(rx_ring *r) {
        uint64_t now = rx_now_ns(), last = r->last_drain_ns;
        if (last && now - last > __atomic_load_n(&r->longest_gap_ns, __ATOMIC_RELAXED))
            __atomic_store_n(&r->longest_gap_ns, now - last, __ATOMIC_RELAXED);
        r->last_drain_ns = now;
    }

    static void rx_put(rx_ring *r, uint64_t at, int32_t length, int32_t error) {
        int32_t *header = (int32_t *)(r->data + at % r->capacity);
        header[0] = length;
        header[1] = error;
    }

    /* Waits until the delivering thread makes room for one more datagram. */
    static void rx_wait_for_room(rx_ring *r, uint64_t head) {
        uint32_t seen = __atomic_load_n(&r->tail_seq, __ATOMIC_SEQ_CST);
        __atomic_store_n(&r->drainer_waiting, 1, __ATOMIC_SEQ_CST);
        if (__atomic_load_n(&r->tail, __ATOMIC_SEQ_CST) + r->capacity - head
                < rx_record_bytes(r->max_bytes))
            rx_futex_wait(&r->tail_seq, seen);
        __atomic_store_n(&r->drainer_waiting, 0, __ATOMIC_SEQ_CST);
    }

    static __attribute__((noinline)) void rx_drain(rx_ring *r) {
        uint64_t head = r->head, slot = rx_record_bytes(r->max_bytes);
        int flags = MSG_WAITFORONE, empties = 0, full = 0;
        for (;;) {
            uint64_t tail = __atomic_load_n(&r->tail, __ATOMIC_SEQ_CST);
            uint64_t room = r->capacity - (head - tail);
            uint64_t at = head % r->capacity, to_end = r->capacity - at;
            uint64_t span = room < to_end ? room : to_end;
            if (span < slot) {
                if (to_end < slot && room > to_end) {  /* no slot before the end: wrap */
                    rx_put(r, head, -1, 0);
                    head += to_end;
                    continue;
                }
                if (!full) { full = 1; __atomic_add_fetch(&r->ring_full, 1, __ATOMIC_RELAXED); }
                rx_wait_for_room(r, head);
                continue;
            }
            full = 0;
            int wanted = (int)(span / slot);
            if (wanted > RX_BATCH) wanted = RX_BATCH;
            for (int i = 0; i < wanted; i++) {
                r->iov[i].iov_base = r->data + at + (uint64_t)i * slot + RX_HEADER;
                r->iov[i].iov_len = r->max_bytes;
                memset(&r->msgs[i].msg_hdr, 0, sizeof r->msgs[i].msg_hdr);
                r->msgs[i].msg_hdr.msg_iov = &r->iov[i];
                r->msgs[i].msg_hdr.msg_iovlen = 1;
            }
            long got = syscall(SYS_recvmmsg, r->fd, r->msgs, wanted, flags, NULL);
            if (got < 0) {
                int error = errno;
                if (error == EINTR) continue;
                if (flags & MSG_DONTWAIT) break;  /* after the stop: drained, or gone */
                if (__atomic_load_n(&r->stopping, __ATOMIC_SEQ_CST)) break;
                if (error == EAGAIN || error == EWOULDBLOCK) continue;
                rx_put(r, head, 0, error);  /* the listener counts and logs it */
                head += RX_HEADER;
                rx_publish(r, head);
                continue;
            }
            rx_note_drain(r);
            uint64_t end = head;
            int empty_only = 1;
            for (long i = 0; i < got; i++) {
                uint32_t length = r->msgs[i].msg_len;
                if (length == 0 && (flags & MSG_DONTWAIT)) continue;  /* more wake-ups */
                empty_only = 0;
                if (length == 0 && __atomic_load_n(&r->stopping, __ATOMIC_SEQ_CST)) {
                    flags = MSG_DONTWAIT;  /* the wake-up: take what is queued, then end */
                    continue;
                }
                char *from = r->data + at + (uint64_t)i * slot + RX_HEADER;
                char *to = r->data + (end % r->capacity) + RX_HEADER;
                if (from != to) memmove(to, from, length);
                rx_put(r, end, (int32_t)length, 0);
                end += rx_record_bytes(length);
            }
            if (end != head) {
                head = end;
                rx_publish(r, head);
            }
            if (got < wanted / 2 && !(flags & MSG_DONTWAIT)) {  /* drained: let more gather */
                r->coalesce.tv_sec = 0;
                r->coalesce.tv_nsec = RX_COALESCE_NS;
                syscall(SYS_nanosleep, &r->coalesce, NULL);
            }
            if (flags & MSG_DONTWAIT) {
                empties = empty_only ? empties + 1 : 0;
                if (empties >= RX_EMPTY_LIMIT) break;  /* shut down: reads return nothing */
            }
        }
        __atomic_store_n(&r->ended, 1, __ATOMIC_SEQ_CST);
        rx_publish(r, head);
    }

    static void *rx_thread(void *arg) {
        rx_ring *r = (rx_ring *)arg;
        /* The frames below this pad are the only stack the loop writes: keep them out of the
           fork. The pad keeps them pages away from glibc's control block and TLS above. */
        char *pad = __builtin_alloca(RX_PAD);
        __asm__ volatile("" : : "r"(pad) : "memory");
        size_t page = rx_page();
        uintptr_t low = (uintptr_t)r->stack + page;
        uintptr_t high = ((uintptr_t)pad & ~(uintptr_t)(page - 1)) + page;
        uint32_t shielded = 0;
        if (high > low && madvise((void *)low, high - low, MADV_DONTFORK) == 0)
            shielded |= RX_SHIELD_STACK;
        if (&__rseq_size == NULL || &__rseq_offset == NULL || __rseq_size == 0) {
            shielded |= RX_SHIELD_RSEQ;  /* glibc registered none */
        } else {
            char *area = (char *)__builtin_thread_pointer() + __rseq_offset;
            unsigned int size = __rseq_size < 32 ? 32 : __rseq_size;
            /* RSEQ_FLAG_UNREGISTER with glibc's signature (x86: 0x53053053) */
            if (syscall(SYS_rseq, area, size, 1, 0x53053053) == 0
                    || syscall(SYS_rseq, area, __rseq_size, 1, 0x53053053) == 0)
                shielded |= RX_SHIELD_RSEQ;
        }
        r->shielded = shielded;
        __atomic_store_n(&r->ready, 1, __ATOMIC_SEQ_CST);
        rx_drain(r);
        return NULL;
    }

    /* Starts the drain thread with every signal blocked (Python's handlers run elsewhere). */
    static int rx_start(rx_ring *r, pthread_t *thread) {
        pthread_attr_t attr;
        sigset_t all, old;
        int failed = pthread_attr_init(&attr);
        if (failed) return failed;
        failed = pthread_attr_setstack(&attr, r->stack + rx_page(), RX_STACK);
        if (!failed) {
            sigfillset(&all);
            pthread_sigmask(SIG_SETMASK, &all, &old);
            failed = pthread_create(thread, &attr, rx_thread, r);
            pthread_sigmask(SIG_SETMASK, &old, NULL);
            if (!failed) pthread_setname_np(*thread, "udp-drain");
        }
        pthread_attr_destroy(&attr);
        return failed;
    }

    /* The delivering side: wait (without the GIL) until there is a record or the end. A
       first nap while a stream may be flowing gathers a batch (one wake-up per nap, not one
       per datagram); an empty ring after it means quiet: sleep until the drain wakes it. */
    static void rx_wait_for_data(rx_ring *r, uint64_t tail) {
        int napped = 0;
        for (;;) {
            uint32_t seen = __atomic_load_n(&r->head_seq, __ATOMIC_SEQ_CST);
            if (__atomic_load_n(&r->head, __ATOMIC_SEQ_CST) != tail
                    || __atomic_load_n(&r->ended, __ATOMIC_SEQ_CST))
                return;
            if (!napped) {
                struct timespec nap = {0, RX_GATHER_NS};
                nanosleep(&nap, NULL);
                napped = 1;
                continue;
            }
            __atomic_store_n(&r->consumer_waiting, 1, __ATOMIC_SEQ_CST);
            if (__atomic_load_n(&r->head, __ATOMIC_SEQ_CST) == tail
                    && !__atomic_load_n(&r->ended, __ATOMIC_SEQ_CST))
                rx_futex_wait(&r->head_seq, seen);
            __atomic_store_n(&r->consumer_waiting, 0, __ATOMIC_SEQ_CST);
        }
    }

    static uint64_t rx_tail(rx_ring *r) { return __atomic_load_n(&r->tail, __ATOMIC_SEQ_CST); }
    static uint64_t rx_head(rx_ring *r) { return __atomic_load_n(&r->head, __ATOMIC_SEQ_CST); }
    static int rx_ended(rx_ring *r) { return (int)__atomic_load_n(&r->ended, __ATOMIC_SEQ_CST); }
    static int rx_ready(rx_ring *r) { return (int)__atomic_load_n(&r->ready, __ATOMIC_SEQ_CST); }
    static uint64_t rx_ring_full(rx_ring *r) {
        return __atomic_load_n(&r->ring_full, __ATOMIC_RELAXED);
    }
    static uint64_t rx_take_gap(rx_ring *r) {
        return __atomic_exchange_n(&r->longest_gap_ns, 0, __ATOMIC_RELAXED);
    }
    static void rx_request_stop(rx_ring *r) { __atomic_store_n(&r->stopping, 1, __ATOMIC_SEQ_CST); }

    static void rx_release(rx_ring *r, uint64_t tail) {
        __atomic_store_n(&r->tail, tail, __ATOMIC_SEQ_CST);
        __atomic_add_fetch(&r->tail_seq, 1, __ATOMIC_SEQ_CST);
        if (__atomic_load_n(&r->drainer_waiting, __ATOMIC_SEQ_CST))
            rx_futex_wake(&r->tail_seq);
    }
    """
    ctypedef unsigned long pthread_t
    ctypedef struct rx_ring:
        uint32_t shielded
        uint64_t capacity
        char *data
    rx_ring *rx_open(int fd, uint32_t max_bytes, uint64_t capacity) nogil
    void rx_close(rx_ring *r) nogil
    int rx_start(rx_ring *r, pthread_t *thread) nogil
    void rx_wait_for_data(rx_ring *r, uint64_t tail) nogil
    void rx_release(rx_ring *r, uint64_t tail) nogil
    uint64_t rx_record_bytes(uint32_t length) nogil
    int pthread_join(pthread_t thread, void **retval) nogil
    uint64_t rx_tail(rx_ring *r) nogil
    uint64_t rx_head(rx_ring *r) nogil
    int rx_ended(rx_ring *r) nogil
    int rx_ready(rx_ring *r) nogil
    int usleep(unsigned int usec) nogil
    uint64_t rx_ring_full(rx_ring *r) nogil
    uint64_t rx_take_gap(rx_ring *r) nogil
    void rx_request_stop(rx_ring *r) nogil
    int RX_SHIELD_STACK, RX_SHIELD_RSEQ, RX_HEADER


cdef enum:
    _DELIVER_BATCH = 256

DELIVER_BATCH = _DELIVER_BATCH
"""Records delivered per :meth:`Ring.deliver` call at most, so the listener's own bookkeeping
(bytes received, probes, errors) keeps up with a stream that never pauses."""


cdef class Ring:
    """The ring of one UDP socket and its drain thread. Made and started by the listener's
    thread; :meth:`deliver` is called from that thread only."""

    cdef rx_ring *_ring
    cdef pthread_t _thread
    cdef bint _started
    cdef bint _joined

    def __cinit__(self, int fd, int max_bytes, long long capacity):
        self._ring = rx_open(fd, max_bytes, capacity)
        if self._ring is NULL:
            raise OSError(errno, "cannot map the receive ring")

    def __dealloc__(self):
        # A drain thread still running owns the memory: leave it mapped.
        if self._ring is not NULL and (not self._started or self._joined):
            rx_close(self._ring)

    @property
    def capacity(self) -> int:
        return self._ring.capacity

    @property
    def ring_full(self) -> int:
        """Times the ring was full and the drain thread waited for room (the socket buffer
        took what came meanwhile)."""
        return rx_ring_full(self._ring)

    @property
    def shielded(self) -> bool:
        """Whether the drain thread runs out of the fork's reach (its stack and rseq area):
        False on a system where either step failed (it still receives, but may stall)."""
        return (self._ring.shielded & (RX_SHIELD_STACK | RX_SHIELD_RSEQ)) == (
            RX_SHIELD_STACK | RX_SHIELD_RSEQ)

    def longest_drain_gap(self) -> float:
        """Seconds of the longest wait between two returns of ``recvmmsg`` since the last
        call (for bench/flush_pause.py: the pause in draining the socket), and start anew."""
        return rx_take_gap(self._ring) / 1e9

    def request_stop(self) -> None:
        """From now on an empty datagram ends the drain (after what is queued behind it)."""
        rx_request_stop(self._ring)

    def start(self) -> None:
        cdef int failed
        if self._started:
            raise RuntimeError("the drain thread runs already")
        cdef int waited = 0
        failed = rx_start(self._ring, &self._thread)
        if failed:
            raise OSError(failed, "cannot start the udp drain thread")
        self._started = True
        with nogil:  # until it drains (a few microseconds), so that `shielded` is known
            while not rx_ready(self._ring) and waited < 50000:
                usleep(100)
                waited += 1

    def join(self) -> None:
        """Wait for the drain thread (it has ended when :meth:`deliver` said so)."""
        if self._started and not self._joined:
            with nogil:
                pthread_join(self._thread, NULL)
            self._joined = True

    def deliver(self, deliver, failed, deliver_batch=None):
        """Wait for datagrams, then hand each to ``deliver`` (``failed(payload)`` is called
        inside the ``except`` when it raises); or, given ``deliver_batch``, hand them all to
        it in one call, ``deliver_batch(payloads, failed)``, which calls ``failed`` itself
        (one Python call per batch, not per datagram). Returns (payload bytes delivered,
        empty datagrams seen (the watchdog's probes), receive errors (errno values), whether
        the drain has ended and everything it published is delivered)."""
        cdef rx_ring *r = self._ring
        cdef list batch = [] if deliver_batch is not None else None
        cdef uint64_t tail = rx_tail(r)
        cdef uint64_t head
        cdef int32_t *header
        cdef int32_t length
        cdef Py_ssize_t delivered = 0, probes = 0, records = 0
        cdef bytes payload
        errors = None
        with nogil:
            rx_wait_for_data(r, tail)
        head = rx_head(r)
        while tail != head and records < _DELIVER_BATCH:
            header = <int32_t *>(r.data + tail % r.capacity)
            length = header[0]
            if length < 0:  # the wrap marker: the rest of the ring is unused
                tail += r.capacity - tail % r.capacity
                rx_release(r, tail)
                continue
            records += 1
            if header[1] != 0:
                if errors is None:
                    errors = []
                errors.append(header[1])
                tail += RX_HEADER
                rx_release(r, tail)
                continue
            if length == 0:
                probes += 1
                tail += RX_HEADER
                rx_release(r, tail)
                continue
            payload = PyBytes_FromStringAndSize(<char *>header + RX_HEADER, length)
            tail += rx_record_bytes(length)
            rx_release(r, tail)  # copied out: the drain thread may reuse the room at once
            delivered += length
            if batch is not None:
                batch.append(payload)
                continue
            try:
                deliver(payload)
            except Exception:
                failed(payload)
        if batch:  # (the probes and errors are only counted: they need no place among them)
            deliver_batch(batch, failed)
        # The end flag first: the drain thread publishes its last record before setting it.
        ended = rx_ended(r) and tail == rx_head(r)
        return delivered, probes, errors or (), ended
