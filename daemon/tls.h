/* SPDX-License-Identifier: MIT */
/*
 * TLS to the broker with wolfSSL: one context (the CA certificates: the system store or
 * ca_file/ca_path) loaded at start and at each reload - not at every connect, which would
 * read and parse the whole system store on the event loop each time - and connections driven
 * non-blocking on the transport's socket. The client certificate and key are two small files
 * read for each connection, so rotating them takes effect at the next connect. All wolfSSL
 * error codes are turned into text a person can act on here, once.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>

#include "config.h"

typedef struct TlsContext TlsContext;
typedef struct TlsConn TlsConn;

/* The [tls] files loaded (at start and reload, so mistakes show early): *ret is NULL when TLS
 * is off. 0, or -EINVAL/-ENOMEM with a message in err, or -ENOENT/-ENOEXEC when the TLS module
 * is missing or of another build (tls_module.h). The caller holds one reference. */
int tls_context_new(const Config *cfg, TlsContext **ret, char *err, size_t errlen);
/* Drop a reference; the context goes with the last one (connections hold one each). */
void tls_context_unref(TlsContext *c);

/* A TLS client on a connected non-blocking fd, for `host` (SNI and name check), with the
 * per-connection settings of cfg ([tls] server_name, verify, alpn). */
int tls_new(TlsContext *ctx, const Config *cfg, int fd, const char *host, TlsConn **ret, char *err,
            size_t errlen);
void tls_free(TlsConn *t);

/* Drive the handshake: 0 done, -EAGAIN (*want = EV_READ/EV_WRITE), or -EPROTO with err. */
int tls_handshake(TlsConn *t, int *want, char *err, size_t errlen);
/* Like read/write: bytes, 0 at a clean close (read), -EAGAIN (*want set), -EPROTO/-errno. */
long tls_read(TlsConn *t, void *buf, size_t n, int *want);
long tls_write(TlsConn *t, const void *buf, size_t n, int *want);
/* Words for the last -EPROTO of tls_read / tls_write. */
const char *tls_last_error(TlsConn *t);
/* Bytes read from the socket or decrypted and still waiting: drain them, the fd will not
 * wake us for them. */
bool tls_pending(TlsConn *t);
/* The handshake resumed the last session (no certificates were exchanged). */
bool tls_resumed(TlsConn *t);
const char *tls_version(TlsConn *t);
const char *tls_cipher(TlsConn *t);
