/* UDP statsd load generator for bench/ingest.py: sends pre-built datagrams at a fixed rate
 * (the sender is bench/paced_udp.h).
 *
 * usage: loadgen HOST PORT RATE SECONDS LINES_PER_DATAGRAM NAMES SEED [TAGS [POOL]]
 * RATE is datagrams per second. POOL (default 4096) distinct datagrams are built and sent over
 * and over: a set then sees only the members its lines in the pool name (~8 each at 20 lines
 * over 10,000 names), and at one line per datagram only ~3,400 of 10,000 names ever come.
 * Name i always has type i % 4 (counter, gauge, timer, set) and, for odd i, DogStatsD tags
 * (unless TAGS is 0: statsite rejects a line with tags), so NAMES names make NAMES series.
 * Timers are milliseconds with 3 decimals ("123.456|ms"), or whole milliseconds ("123|ms", the
 * same draws) when the environment has LOADGEN_INTEGER_TIMERS=1 (bench/daemon_rss.py
 * --integer-timers: what most clients send).
 * Prints "sent_datagrams sent_lines" on stdout when done. */
#include "paced_udp.h"

#define POOL 4096 /* the default */
#define MAX_LINE 96 /* the longest line below: 62 bytes (a tagged timer, i of 10 digits) */

struct mix {
    uint64_t rng_state;
    int names;
    int with_tags;
    int integer_timers;
};

static uint32_t rnd(struct mix *m) {
    m->rng_state ^= m->rng_state << 13;
    m->rng_state ^= m->rng_state >> 7;
    m->rng_state ^= m->rng_state << 17;
    return (uint32_t)m->rng_state;
}

static int mixed_line(char *out, int index, void *state) {
    struct mix *m = state;
    int len = 0;
    if (index) out[len++] = '\n';
    int i = rnd(m) % m->names;
    const char *tags = (i & 1) && m->with_tags ? "|#region:eu-1,shard:7" : "";
    switch (i % 4) {
    case 0:
        return len + sprintf(out + len, "bench.svc%d.requests%d:1|c%s", i % 100, i, tags);
    case 1:
        return len + sprintf(out + len, "bench.svc%d.queue%d:%u|g%s", i % 100, i,
                             rnd(m) % 1000, tags);
    case 2: {
        /* two calls in the order the original's arguments drew them (gcc: right to left) */
        uint32_t millis = rnd(m) % 1000, whole = rnd(m) % 500;
        if (m->integer_timers)
            return len + sprintf(out + len, "bench.svc%d.latency%d:%u|ms%s", i % 100, i, whole,
                                 tags);
        return len + sprintf(out + len, "bench.svc%d.latency%d:%u.%03u|ms%s", i % 100, i, whole,
                             millis, tags);
    }
    default:
        return len + sprintf(out + len, "bench.svc%d.users%d:u%u|s%s", i % 100, i,
                             rnd(m) % 1000, tags);
    }
}

int main(int argc, char **argv) {
    if (argc < 8 || argc > 10) {
        fprintf(stderr, "usage: %s HOST PORT RATE SECONDS LINES NAMES SEED [TAGS [POOL]]\n",
                argv[0]);
        return 2;
    }
    struct mix mix = {strtoull(argv[7], NULL, 10) * 2654435761u + 1, atoi(argv[6]),
                      argc >= 9 ? atoi(argv[8]) : 1, 0};
    const char *integer_timers = getenv("LOADGEN_INTEGER_TIMERS");
    mix.integer_timers = integer_timers != NULL && strcmp(integer_timers, "1") == 0;
    int pool = argc == 10 ? atoi(argv[9]) : POOL;
    double rate = atof(argv[3]), seconds = atof(argv[4]);
    int lines = atoi(argv[5]);
    int fd = connect_udp(argv[1], argv[2]);
    if (fd < 0) return 1;
    struct ring ring = build_ring(pool, lines, MAX_LINE, mixed_line, &mix);
    long sent = send_paced(fd, &ring, rate, seconds, (struct pacing){32, 20});
    printf("%ld %ld\n", sent, sent * lines);
    close(fd);
    return 0;
}
