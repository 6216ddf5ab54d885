/* LD_PRELOAD shim for bench/side_by_side.py: every UDP socket the process binds gets the same
 * SO_RCVBUF (BENCH_RCVBUF bytes), so that peers which never set one (Etsy statsd) and pystatsd
 * are measured with equal receive buffers without changing the machine's net.core.rmem_default.
 * The kernel doubles the value and caps the request at net.core.rmem_max. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdlib.h>
#include <sys/socket.h>

int bind(int fd, const struct sockaddr *addr, socklen_t len) {
    static int (*real_bind)(int, const struct sockaddr *, socklen_t);
    if (!real_bind) real_bind = (int (*)(int, const struct sockaddr *, socklen_t))dlsym(RTLD_NEXT, "bind");
    int type = 0;
    socklen_t size = sizeof type;
    const char *wanted = getenv("BENCH_RCVBUF");
    if (wanted && getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &size) == 0 && type == SOCK_DGRAM) {
        int bytes = atoi(wanted);
        setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &bytes, sizeof bytes);
    }
    return real_bind(fd, addr, len);
}
