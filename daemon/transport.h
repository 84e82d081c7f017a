/* SPDX-License-Identifier: MIT */
/*
 * The byte stream to the broker: plain TCP, or TLS over it, behind the same calls, so the
 * broker link does not care which it runs over. Everything is non-blocking: -EAGAIN means
 * "wait until the fd is ready as t->want says (EV_READ or EV_WRITE), then call again".
 * Note that TLS may want EV_WRITE to read and EV_READ to write.
 */
#pragma once

#include <stdbool.h>
#include <sys/socket.h>
#include <sys/types.h>

#include "config.h"
#include "tls.h"

typedef struct Transport {
    int fd;       /* -1 when closed */
    int want;     /* EV_READ / EV_WRITE the last -EAGAIN waits for */
    TlsConn *tls; /* NULL for plain TCP */
} Transport;

/* Open a non-blocking TCP socket and start connecting. 0 when connected already,
 * -EINPROGRESS when the fd must become writable first, else -errno. */
int transport_connect(Transport *t, const struct sockaddr *addr, socklen_t len);
/* After the fd became writable: 0 when the TCP connection is up, else -errno. */
int transport_connect_result(Transport *t);
/* Start TLS on the connected socket with ctx (NULL: plain TCP, nothing to do). */
int transport_start_tls(Transport *t, TlsContext *ctx, const Config *cfg, const char *host,
                        char *err, size_t errlen);
/* 0 when the stream is ready for MQTT, -EAGAIN, or -EPROTO with err. */
int transport_handshake(Transport *t, char *err, size_t errlen);
ssize_t transport_read(Transport *t, void *buf, size_t n); /* 0 = EOF */
ssize_t transport_write(Transport *t, const void *buf, size_t n);
/* Let the kernel take all it can of the next writes (the last ones before a close). */
void transport_unlimit(Transport *t);
/* Decrypted bytes waiting inside TLS, which no fd event will announce. */
bool transport_pending(Transport *t);
void transport_close(Transport *t);
