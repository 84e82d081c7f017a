/* SPDX-License-Identifier: MIT */
/*
 * Name resolution that never blocks the event loop: getaddrinfo() runs on a short-lived
 * thread and the answer comes back through an ev_async. Numeric addresses resolve at once.
 */
#pragma once

#include <ev.h>
#include <netdb.h>

typedef struct Resolve Resolve;

/* `done` gets the list (caller frees it with freeaddrinfo) or NULL and a gai error code. */
typedef void (*resolve_cb)(void *userdata, struct addrinfo *res, int gai_error);

/* Start resolving; *ret is a handle for resolve_cancel. The callback never runs before
 * resolve_start returns. */
int resolve_start(struct ev_loop *loop, const char *host, unsigned port, resolve_cb cb,
                  void *userdata, Resolve **ret);
/* The callback will not run; the thread finishes on its own. */
void resolve_cancel(Resolve *r);
