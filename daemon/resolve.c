/* SPDX-License-Identifier: MIT */
/*
 * Resolution on a helper thread: see resolve.h. Ownership: the job is shared by the loop
 * and the thread; the thread only writes the result and signals, the loop frees the job
 * (in the async callback), so a cancel just forgets the callback.
 */
#include "resolve.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct Resolve {
    ev_async async;
    struct ev_loop *loop;
    resolve_cb cb;
    void *userdata;
    struct addrinfo *res;
    int error;
    char port[8];
    char host[];
};

static void on_done(struct ev_loop *loop, ev_async *w, int revents)
{
    Resolve *r = (Resolve *)w;
    ev_async_stop(loop, w);
    if (r->cb) {
        r->cb(r->userdata, r->res, r->error);
    } else if (r->res) {
        freeaddrinfo(r->res);
    }
    free(r);
}

static void *worker(void *arg)
{
    Resolve *r = arg;
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM, .ai_flags = AI_ADDRCONFIG};
    r->error = getaddrinfo(r->host, r->port, &hints, &r->res);
    ev_async_send(r->loop, &r->async);
    return NULL;
}

int resolve_start(struct ev_loop *loop, const char *host, unsigned port, resolve_cb cb,
                  void *userdata, Resolve **ret)
{
    size_t n = strlen(host);
    Resolve *r = calloc(1, sizeof(*r) + n + 1);
    if (!r) {
        return -ENOMEM;
    }
    memcpy(r->host, host, n + 1);
    snprintf(r->port, sizeof(r->port), "%u", port);
    r->loop = loop;
    r->cb = cb;
    r->userdata = userdata;
    ev_async_init(&r->async, on_done);
    ev_async_start(loop, &r->async);

    /* Numeric addresses need no thread. */
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICHOST};
    if (getaddrinfo(host, r->port, &hints, &r->res) == 0) {
        ev_async_send(loop, &r->async);
    } else {
        r->res = NULL;
        pthread_attr_t attr;
        pthread_t t;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        int e = pthread_create(&t, &attr, worker, r);
        pthread_attr_destroy(&attr);
        if (e) {
            ev_async_stop(loop, &r->async);
            free(r);
            return -e;
        }
    }
    *ret = r;
    return 0;
}

void resolve_cancel(Resolve *r)
{
    if (r) {
        r->cb = NULL;
    }
}
