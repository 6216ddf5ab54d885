/* UDP statsd load generator for bench/ingest.py: sends pre-built datagrams at a fixed rate.
 *
 * usage: loadgen HOST PORT RATE SECONDS LINES_PER_DATAGRAM NAMES SEED [TAGS]
 * RATE is datagrams per second. Name i always has type i % 4 (counter, gauge, timer, set)
 * and, for odd i, DogStatsD tags (unless TAGS is 0: statsite rejects a line with tags), so
 * NAMES names make NAMES series.
 * Prints "sent_datagrams sent_lines" on stdout when done.
 * Written in C because a Python sender cannot outrun the Python receiver it measures. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define POOL 4096
#define BATCH 32

static uint64_t rng_state;
static int with_tags = 1;
static uint32_t rnd(void) {
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (uint32_t)rng_state;
}

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static int append_line(char *out, int names) {
    int i = rnd() % names;
    const char *tags = (i & 1) && with_tags ? "|#region:eu-1,shard:7" : "";
    switch (i % 4) {
    case 0:
        return sprintf(out, "bench.svc%d.requests%d:1|c%s", i % 100, i, tags);
    case 1:
        return sprintf(out, "bench.svc%d.queue%d:%u|g%s", i % 100, i, rnd() % 1000, tags);
    case 2:
        return sprintf(out, "bench.svc%d.latency%d:%u.%03u|ms%s", i % 100, i, rnd() % 500,
                       rnd() % 1000, tags);
    default:
        return sprintf(out, "bench.svc%d.users%d:u%u|s%s", i % 100, i, rnd() % 1000, tags);
    }
}

int main(int argc, char **argv) {
    if (argc != 8 && argc != 9) {
        fprintf(stderr, "usage: %s HOST PORT RATE SECONDS LINES NAMES SEED [TAGS]\n", argv[0]);
        return 2;
    }
    if (argc == 9) with_tags = atoi(argv[8]);
    double rate = atof(argv[3]), seconds = atof(argv[4]);
    int lines = atoi(argv[5]), names = atoi(argv[6]);
    rng_state = strtoull(argv[7], NULL, 10) * 2654435761u + 1;

    struct sockaddr_in to = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[2]))};
    inet_pton(AF_INET, argv[1], &to.sin_addr);
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    if (fd < 0 || connect(fd, (struct sockaddr *)&to, sizeof to) < 0) {
        perror("socket");
        return 1;
    }
    int sndbuf = 4 << 20;
    setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof sndbuf);

    static char pool[POOL][2048];
    static int lens[POOL];
    for (int d = 0; d < POOL; d++) {
        int len = 0;
        for (int l = 0; l < lines; l++) {
            if (l) pool[d][len++] = '\n';
            len += append_line(pool[d] + len, names);
        }
        lens[d] = len;
    }

    struct mmsghdr msgs[BATCH];
    struct iovec iov[BATCH];
    memset(msgs, 0, sizeof msgs);
    uint64_t sent = 0, next = 0;
    double start = now(), end = start + seconds;
    for (;;) {
        double t = now();
        if (t >= end) break;
        uint64_t due = (uint64_t)((t - start) * rate);
        if (sent >= due) {
            struct timespec pause = {0, 20000};
            nanosleep(&pause, NULL);
            continue;
        }
        int n = due - sent < BATCH ? (int)(due - sent) : BATCH;
        for (int k = 0; k < n; k++) {
            int d = (next + k) % POOL;
            iov[k].iov_base = pool[d];
            iov[k].iov_len = lens[d];
            msgs[k].msg_hdr.msg_iov = &iov[k];
            msgs[k].msg_hdr.msg_iovlen = 1;
        }
        int done = sendmmsg(fd, msgs, n, 0);
        if (done > 0) {
            sent += done;
            next += done;
        }
    }
    printf("%llu %llu\n", (unsigned long long)sent, (unsigned long long)sent * lines);
    close(fd);
    return 0;
}
