/* Paced UDP load generator of graphite plaintext for bench/carbon_routes.py: bench/udp_blast.c
 * with graphite lines instead of statsd ones.
 *
 * graphite_blast HOST PORT DATAGRAMS_PER_SEC SECONDS LINES_PER_DATAGRAM NAMES
 * Sends `bench.app<i>.requests.count 1 1700000000` lines (i cycling over NAMES distinct names),
 * LINES_PER_DATAGRAM per datagram, in 1 ms steps with sendmmsg. Prints the lines sent. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define BATCH 256

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    if (argc != 7) {
        fprintf(stderr, "usage: %s HOST PORT DGRAMS_PER_SEC SECONDS LINES NAMES\n", argv[0]);
        return 2;
    }
    double rate = atof(argv[3]), seconds = atof(argv[4]);
    int lines = atoi(argv[5]), names = atoi(argv[6]);
    struct sockaddr_in to = {0};
    to.sin_family = AF_INET;
    to.sin_port = htons(atoi(argv[2]));
    inet_pton(AF_INET, argv[1], &to.sin_addr);
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    int sndbuf = 4 << 20;
    setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof sndbuf);
    if (connect(fd, (struct sockaddr *)&to, sizeof to) != 0) { perror("connect"); return 1; }

    /* pre-build a ring of datagrams */
    int ring = names / lines + 1;
    if (ring < BATCH) ring = BATCH;
    char **payload = calloc(ring, sizeof *payload);
    size_t *size = calloc(ring, sizeof *size);
    long name = 0;
    for (int d = 0; d < ring; d++) {
        payload[d] = malloc(lines * 72);
        size_t off = 0;
        for (int l = 0; l < lines; l++) {
            /* graphite lines end in a newline, the last of a datagram too */
            off += sprintf(payload[d] + off, "bench.app%ld.requests.count 1 1700000000\n",
                           name % names);
            name++;
        }
        size[d] = off;
    }
    struct mmsghdr msgs[BATCH];
    struct iovec iov[BATCH];
    long sent_dgrams = 0, target;
    int next = 0;
    double start = now(), t;
    while ((t = now() - start) < seconds) {
        target = (long)(t * rate);
        while (sent_dgrams < target) {
            int n = target - sent_dgrams > BATCH ? BATCH : (int)(target - sent_dgrams);
            for (int i = 0; i < n; i++) {
                int d = (next + i) % ring;
                iov[i].iov_base = payload[d];
                iov[i].iov_len = size[d];
                memset(&msgs[i].msg_hdr, 0, sizeof msgs[i].msg_hdr);
                msgs[i].msg_hdr.msg_iov = &iov[i];
                msgs[i].msg_hdr.msg_iovlen = 1;
            }
            int done = sendmmsg(fd, msgs, n, 0);
            if (done <= 0) { usleep(100); continue; }
            sent_dgrams += done;
            next = (next + done) % ring;
        }
        usleep(500);
    }
    printf("%ld\n", sent_dgrams * lines);
    close(fd);
    return 0;
}
