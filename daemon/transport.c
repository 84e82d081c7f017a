/* SPDX-License-Identifier: MIT */
/* The broker transport, TCP with optional TLS: see transport.h. */
#include "transport.h"

#include <errno.h>
#include <ev.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <unistd.h>

/*
 * TCP_NODELAY: MQTT is request/response heavy, and Nagle would hold small acks back.
 *
 * TCP_NOTSENT_LOWAT: the kernel takes about this many bytes not yet sent (plus the segment
 * being filled); the rest of a backlog waits in the session's queue, where it is counted and
 * bounded. Without it a flood left about 500 KiB unsent in the socket, which went out only as
 * the broker's receive window reopened, in the broker's own system calls: mosquitto ran dry
 * between window updates and slept thousands of times a second. With 16 KiB its input stayed
 * fed, and QoS 0 through one publisher gained about a fifth (docs/performance.md, "What
 * bounds QoS 0 throughput").
 */
enum { NOTSENT_LOWAT = 16 * 1024 };

int transport_connect(Transport *t, const struct sockaddr *addr, socklen_t len)
{
    t->fd = socket(addr->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (t->fd < 0) {
        return -errno;
    }
    /* Both are tuning, not correctness: where the kernel refuses one, the link works, slower. */
    int one = 1, lowat = NOTSENT_LOWAT;
    (void)setsockopt(t->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    (void)setsockopt(t->fd, IPPROTO_TCP, TCP_NOTSENT_LOWAT, &lowat, sizeof(lowat));
    if (connect(t->fd, addr, len) == 0) {
        return 0;
    }
    int e = errno;
    if (e == EINPROGRESS) {
        t->want = EV_WRITE;
        return -EINPROGRESS;
    }
    transport_close(t);
    return -e;
}

int transport_connect_result(Transport *t)
{
    int err = 0;
    socklen_t len = sizeof(err);
    if (getsockopt(t->fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0) {
        return -errno;
    }
    return -err;
}

int transport_start_tls(Transport *t, TlsContext *ctx, const Config *cfg, const char *host,
                        char *err, size_t errlen)
{
    if (!ctx) {
        return 0;
    }
    return tls_new(ctx, cfg, t->fd, host, &t->tls, err, errlen);
}

int transport_handshake(Transport *t, char *err, size_t errlen)
{
    return t->tls ? tls_handshake(t->tls, &t->want, err, errlen) : 0;
}

bool transport_pending(Transport *t)
{
    return t->tls && tls_pending(t->tls);
}

ssize_t transport_read(Transport *t, void *buf, size_t n)
{
    if (t->tls) {
        return tls_read(t->tls, buf, n, &t->want);
    }
    ssize_t r = read(t->fd, buf, n);
    if (r < 0) {
        if (errno == EAGAIN || errno == EINTR) {
            t->want = EV_READ;
            return -EAGAIN;
        }
        return -errno;
    }
    return r;
}

ssize_t transport_write(Transport *t, const void *buf, size_t n)
{
    if (t->tls) {
        return tls_write(t->tls, buf, n, &t->want);
    }
    ssize_t r = send(t->fd, buf, n, MSG_NOSIGNAL);
    if (r < 0) {
        if (errno == EAGAIN || errno == EINTR) {
            t->want = EV_WRITE;
            return -EAGAIN;
        }
        return -errno;
    }
    return r;
}

void transport_unlimit(Transport *t)
{
    int system_default = 0;
    (void)setsockopt(t->fd, IPPROTO_TCP, TCP_NOTSENT_LOWAT, &system_default,
                     sizeof(system_default)); /* tuning: a refusal costs what the limit does */
}

void transport_close(Transport *t)
{
    tls_free(t->tls);
    t->tls = NULL;
    if (t->fd >= 0) {
        close(t->fd);
    }
    t->fd = -1;
}
