/* Paced UDP load generator of statsd counters for bench/relay.py (and bench/end_to_end.py,
 * bench/flush_pause.py); the sender is bench/paced_udp.h.
 *
 * udp_blast HOST PORT DATAGRAMS_PER_SEC SECONDS LINES_PER_DATAGRAM NAMES
 * Sends `bench.app<i>.requests.count:1|c` lines (i cycling over NAMES distinct names),
 * LINES_PER_DATAGRAM per datagram, in 1 ms steps with sendmmsg. Prints the number of lines sent
 * on stdout. */
#include "paced_udp.h"

static int counter_line(char *out, int index, void *state) {
    struct name_cycle *names = state;
    return sprintf(out, "%sbench.app%ld.requests.count:1|c", index ? "\n" : "",
                   names->next++ % names->count);
}

int main(int argc, char **argv) {
    return cycling_sender_main(argc, argv, counter_line, 64);
}
