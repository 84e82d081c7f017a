/* SPDX-License-Identifier: MIT */
/*
 * TLS to the broker with wolfSSL: one context per connection attempt (so certificate files
 * rotated on disk take effect at the next connect), driven non-blocking on the transport's
 * socket. All wolfSSL error codes are turned into text a person can act on here, once.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>

#include "config.h"

typedef struct TlsConn TlsConn;

/* Check that the [tls] files load (at start and reload), so mistakes show early.
 * 0, or -EINVAL with a message in err. */
int tls_check_config(const Config *cfg, char *err, size_t errlen);

/* A TLS client on a connected non-blocking fd, for `host` (SNI and name check). */
int tls_new(const Config *cfg, int fd, const char *host, TlsConn **ret, char *err, size_t errlen);
void tls_free(TlsConn *t);

/* Drive the handshake: 0 done, -EAGAIN (*want = EV_READ/EV_WRITE), or -EPROTO with err. */
int tls_handshake(TlsConn *t, int *want, char *err, size_t errlen);
/* Like read/write: bytes, 0 at a clean close (read), -EAGAIN (*want set), -EPROTO/-errno. */
long tls_read(TlsConn *t, void *buf, size_t n, int *want);
long tls_write(TlsConn *t, const void *buf, size_t n, int *want);
/* Words for the last -EPROTO of tls_read / tls_write. */
const char *tls_last_error(TlsConn *t);
/* Bytes already decrypted and waiting (drain them: the fd will not wake us for them). */
int tls_pending(TlsConn *t);
const char *tls_version(TlsConn *t);
const char *tls_cipher(TlsConn *t);
