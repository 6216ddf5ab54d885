/* Paced UDP load generator of graphite plaintext for bench/carbon_routes.py: bench/udp_blast.c
 * with graphite lines instead of statsd ones; the sender is bench/paced_udp.h.
 *
 * graphite_blast HOST PORT DATAGRAMS_PER_SEC SECONDS LINES_PER_DATAGRAM NAMES
 * Sends `bench.app<i>.requests.count 1 1700000000` lines (i cycling over NAMES distinct names),
 * LINES_PER_DATAGRAM per datagram, in 1 ms steps with sendmmsg. Prints the lines sent. */
#include "paced_udp.h"

static int graphite_line(char *out, int index, void *state) {
    struct name_cycle *names = state;
    (void)index;  /* graphite lines end in a newline, the last of a datagram too */
    return sprintf(out, "bench.app%ld.requests.count 1 1700000000\n",
                   names->next++ % names->count);
}

int main(int argc, char **argv) {
    return cycling_sender_main(argc, argv, graphite_line, 72);
}
