/* SPDX-License-Identifier: MIT */
/*
 * The byte stream to the broker: plain TCP now, TLS behind the same calls later, so the
 * broker link does not know which it runs over. Everything is non-blocking: -EAGAIN means
 * "wait for the fd to become readable/writable" (t->want says which) and try again.
 */
#pragma once

#include <stdbool.h>
#include <sys/socket.h>
#include <sys/types.h>

typedef struct Transport {
    int fd;   /* -1 when closed */
    int want; /* EV_READ / EV_WRITE the last -EAGAIN waits for */
} Transport;

/* Open a non-blocking TCP socket and start connecting. 0 when connected already,
 * -EINPROGRESS when the fd must become writable first, else -errno. */
int transport_connect(Transport *t, const struct sockaddr *addr, socklen_t len);
/* After the fd became writable: 0 when the TCP connection is up, else -errno. */
int transport_connect_result(Transport *t);
ssize_t transport_read(Transport *t, void *buf, size_t n);        /* 0 = EOF */
ssize_t transport_write(Transport *t, const void *buf, size_t n);
void transport_close(Transport *t);
