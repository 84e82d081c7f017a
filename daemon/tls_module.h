/* SPDX-License-Identifier: MIT */
/*
 * TLS lives in a module of its own, mqttbridge-tls.so (tls.c with wolfSSL), loaded the first
 * time a configuration enables it: a daemon without [tls] never maps wolfSSL (and libm, which
 * wolfSSL needs), some 670 KiB of RSS. The module exports one table of tls.h's functions;
 * tls_module.c gives the daemon tls.h's API over it. The module logs through the daemon's
 * log_msg, which the executable exports for it (tls-exports.list).
 */
#pragma once

#include <stddef.h>

#include "tls.h"

#define TLS_MODULE_SYMBOL "mqttbridge_tls_module"
#define TLS_MODULE_FILE   "mqttbridge-tls.so"

typedef struct TlsModule {
    /* The daemon loads only a module of its own release whose table and Config (which
     * crosses the boundary) have the layout it was built with. */
    const char *version; /* MQTTBRIDGE_VERSION */
    size_t size;         /* sizeof(TlsModule) */
    size_t config_size;  /* sizeof(Config) */
    __typeof__(tls_context_new) *context_new;
    __typeof__(tls_context_unref) *context_unref;
    __typeof__(tls_new) *conn_new;
    __typeof__(tls_free) *conn_free;
    __typeof__(tls_handshake) *handshake;
    __typeof__(tls_read) *read;
    __typeof__(tls_write) *write;
    __typeof__(tls_last_error) *last_error;
    __typeof__(tls_pending) *pending;
    __typeof__(tls_resumed) *resumed;
    __typeof__(tls_version) *version_of;
    __typeof__(tls_cipher) *cipher;
} TlsModule;
