/* SPDX-License-Identifier: MIT */
/*
 * The floor of the latency case: a relay that does nothing but copy bytes between a Unix
 * socket and the broker's TCP port, in a process of its own, with the same system calls per
 * hop as the daemon (epoll_wait, read, send). A direct client through it crosses the sockets
 * and wakes the processes a message through the daemon does; what it adds to the direct
 * round trip is what two more hops cost on this machine before any protocol work.
 */
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "bench.h"

#define MAX_FD 1024

static int tcp_to_broker(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in a = {.sin_family = AF_INET,
                            .sin_port = htons((uint16_t)port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    int one = 1;
    if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof(a)) < 0 ||
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)) < 0) {
        _exit(3);
    }
    return fd;
}

static void watch(int ep, int fd)
{
    struct epoll_event e = {.events = EPOLLIN, .data.fd = fd};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &e) < 0) {
        _exit(3);
    }
}

/* Copies until either side closes; then both are closed and forgotten (peer -1), so an event
 * of the same batch for the other side is skipped. Blocking sends: a relay this simple needs
 * no output buffer, and the latency case has one message in flight. */
static void copy(int ep, int *peer, int fd)
{
    if (peer[fd] < 0) {
        return;
    }
    char buf[65536];
    ssize_t n = read(fd, buf, sizeof(buf));
    if (n > 0 && send(peer[fd], buf, (size_t)n, MSG_NOSIGNAL) == n) {
        return;
    }
    int other = peer[fd];
    peer[fd] = peer[other] = -1;
    (void)epoll_ctl(ep, EPOLL_CTL_DEL, fd, NULL); /* close() would drop them anyway */
    (void)epoll_ctl(ep, EPOLL_CTL_DEL, other, NULL);
    close(fd);
    close(other);
}

static void relay_loop(int listener, int broker_port)
{
    static int peer[MAX_FD];
    int ep = epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0) {
        _exit(3);
    }
    watch(ep, listener);
    for (;;) {
        struct epoll_event ready[64];
        int n = epoll_wait(ep, ready, 64, -1);
        for (int i = 0; i < n; i++) {
            int fd = ready[i].data.fd;
            if (fd != listener) {
                copy(ep, peer, fd);
                continue;
            }
            int c = accept4(listener, NULL, NULL, SOCK_CLOEXEC);
            if (c < 0) {
                continue;
            }
            int b = tcp_to_broker(broker_port);
            if (c >= MAX_FD || b >= MAX_FD) {
                _exit(3);
            }
            peer[c] = b;
            peer[b] = c;
            watch(ep, c);
            watch(ep, b);
        }
        if (n < 0 && errno != EINTR) {
            _exit(3);
        }
    }
}

pid_t relay_start(const char *path, int broker_port)
{
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    snprintf(a.sun_path, sizeof(a.sun_path), "%s", path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof(a)) < 0 || listen(fd, 16) < 0) {
        die("relay socket");
    }
    pid_t pid = fork();
    if (pid < 0) {
        die("fork");
    }
    if (pid == 0) {
        signal(SIGTERM, SIG_DFL);
        (void)prctl(PR_SET_PDEATHSIG, SIGTERM); /* a bench that fails takes it along */
        relay_loop(fd, broker_port);
    }
    close(fd);
    return pid;
}
