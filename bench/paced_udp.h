/* The paced UDP sender that bench/udp_blast.c, bench/graphite_blast.c and bench/loadgen.c share:
 * each of them is only its line generator and its command line.
 *
 * A ring of datagrams is built before the clock starts (so sending costs no formatting), then
 * sent with sendmmsg at a fixed rate for a fixed time. Written in C because a Python sender
 * cannot outrun the Python receiver it measures on a 2-core machine.
 *
 * Included by exactly one .c file each, so everything here is static: `gcc -O2 -o X bench/Y.c`
 * stays the whole build (the benches and docs/performance.md compile them so). */
#ifndef PACED_UDP_H
#define PACED_UDP_H

#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

/* Writes line `index` (0-based) of a datagram at `out` and returns its length, with whatever
 * separates it from the line before or ends it: the datagram is the lines written back to back.
 * `state` is the generator's own (a name counter, a random state). */
typedef int (*line_writer)(char *out, int index, void *state);

/* The state of a generator whose line i names name i % count (udp_blast, graphite_blast). */
struct name_cycle {
    long next;
    long count;
};

struct ring {
    int count;
    char **payload;
    size_t *size;
};

/* `count` datagrams of `lines` lines each, from `write_line`; `max_line` bounds one line's bytes
 * (separator included). */
static struct ring build_ring(int count, int lines, int max_line, line_writer write_line,
                              void *state) {
    struct ring r = {count, calloc(count, sizeof(char *)), calloc(count, sizeof(size_t))};
    for (int d = 0; d < count; d++) {
        r.payload[d] = malloc((size_t)lines * max_line + 1);  /* + sprintf's NUL */
        size_t off = 0;
        for (int l = 0; l < lines; l++)
            off += write_line(r.payload[d] + off, l, state);
        r.size[d] = off;
    }
    return r;
}

/* A UDP socket connected to host:port with a 4 MiB send buffer, or -1 (said on stderr). */
static int connect_udp(const char *host, const char *port) {
    struct sockaddr_in to = {.sin_family = AF_INET, .sin_port = htons(atoi(port))};
    inet_pton(AF_INET, host, &to.sin_addr);
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    if (fd < 0 || connect(fd, (struct sockaddr *)&to, sizeof to) < 0) {
        perror("connect");
        return -1;
    }
    int sndbuf = 4 << 20;
    setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof sndbuf);
    return fd;
}

/* How a sender paces itself: at most `batch` datagrams per sendmmsg, and `idle_us` of sleep
 * each time it has caught up with the rate. The callers keep the figures they were measured
 * with (docs/performance.md): udp_blast's 256 and 500 us, loadgen's smoother 32 and 20 us. */
struct pacing {
    int batch;
    long idle_us;
};

#define MAX_BATCH 256

static double now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void sleep_us(long us) {
    struct timespec pause = {us / 1000000, (us % 1000000) * 1000};
    nanosleep(&pause, NULL);
}

/* Sends the ring's datagrams in turn, `rate` per second for `seconds`; returns how many the
 * kernel took. A failed sendmmsg (a connected socket's ICMP refusal) is retried after 100 us. */
static long send_paced(int fd, const struct ring *r, double rate, double seconds,
                       struct pacing pace) {
    struct mmsghdr msgs[MAX_BATCH];
    struct iovec iov[MAX_BATCH];
    int batch = pace.batch < MAX_BATCH ? pace.batch : MAX_BATCH;
    memset(msgs, 0, sizeof msgs);
    long sent = 0;
    int next = 0;
    double start = now_seconds(), t;
    while ((t = now_seconds() - start) < seconds) {
        long due = (long)(t * rate);
        if (sent >= due) {
            sleep_us(pace.idle_us);
            continue;
        }
        int n = due - sent < batch ? (int)(due - sent) : batch;
        for (int i = 0; i < n; i++) {
            int d = (next + i) % r->count;
            iov[i].iov_base = r->payload[d];
            iov[i].iov_len = r->size[d];
            msgs[i].msg_hdr.msg_iov = &iov[i];
            msgs[i].msg_hdr.msg_iovlen = 1;
        }
        int done = sendmmsg(fd, msgs, n, 0);
        if (done <= 0) {
            sleep_us(100);
            continue;
        }
        sent += done;
        next = (next + done) % r->count;
    }
    return sent;
}

/* The whole of udp_blast and graphite_blast, which differ only in their lines:
 * PROG HOST PORT DATAGRAMS_PER_SEC SECONDS LINES_PER_DATAGRAM NAMES, line i of the run naming
 * name i % NAMES, 1 ms steps; prints the lines sent. (inline: unused in loadgen.c, unwarned.) */
static inline int cycling_sender_main(int argc, char **argv, line_writer write_line,
                                      int max_line) {
    if (argc != 7) {
        fprintf(stderr, "usage: %s HOST PORT DGRAMS_PER_SEC SECONDS LINES NAMES\n", argv[0]);
        return 2;
    }
    double rate = atof(argv[3]), seconds = atof(argv[4]);
    int lines = atoi(argv[5]), names = atoi(argv[6]);
    int fd = connect_udp(argv[1], argv[2]);
    if (fd < 0) return 1;
    int count = names / lines + 1;  /* every name at least once, and at least one batch */
    struct name_cycle cycle = {0, names};
    struct ring ring = build_ring(count < MAX_BATCH ? MAX_BATCH : count, lines, max_line,
                                  write_line, &cycle);
    long sent = send_paced(fd, &ring, rate, seconds, (struct pacing){MAX_BATCH, 500});
    printf("%ld\n", sent * lines);
    close(fd);
    return 0;
}

#endif
