/* SPDX-License-Identifier: MIT */
/* Waiting requests: see waiters.h. */
#include "waiters.h"

#include <assert.h>
#include <stdlib.h>
#include <string.h>

#include "defaults.h"

static void on_timeout(struct ev_loop *loop, ev_timer *t, int revents);

/* Ended waiters without a filter (a publish's: it waits by default) are kept for the next
 * such request, up to this many: a publish allocates nothing. One with a filter (which may be
 * long) is freed. */
enum { SPARE_WAITERS = 64 };

static Waiter *take(Daemon *d, View filter)
{
    Waiter *w = filter.n ? NULL : spares_take(&d->spare_waiters);
    if (!w) {
        return calloc(1, sizeof(Waiter) + filter.n + 1);
    }
    memset(w, 0, sizeof(*w) + 1);
    return w;
}

static void give_back(Daemon *d, Waiter *w)
{
    /* a filter is never empty */
    if (w->filter[0] || !spares_keep(&d->spare_waiters, w, SPARE_WAITERS)) {
        free(w);
    }
}

void waiters_free(Daemon *d)
{
    spares_free(&d->spare_waiters);
}

bool waiters_full(const Client *c, size_t more)
{
    return c->n_waiters + more > MAX_WAITERS_PER_CLIENT;
}

Waiter *waiter_new(Client *c, const WaiterKind *kind, json_t *id, View filter, int64_t timeout_ms)
{
    assert(!c->conn.closed && kind && kind->done && kind->gone);
    if (waiters_full(c, 1)) {
        return NULL;
    }
    Waiter *w = take(c->d, filter);
    if (!w) {
        return NULL;
    }
    c->n_waiters++;
    w->c = c;
    w->kind = kind;
    w->id = id ? json_incref(id) : NULL;
    if (filter.n) {
        memcpy(w->filter, filter.p, filter.n);
    }
    dlist_push(&c->waiters, &w->link);
    ev_timer_init(&w->timer, on_timeout, (double)timeout_ms / 1000.0, 0.0);
    if (timeout_ms > 0) {
        assert(kind->timeout);
        ev_timer_start(c->d->loop, &w->timer);
    }
    return w;
}

/* Unlink and free w; its client is left as it is. */
static void release(Waiter *w)
{
    Client *c = w->c;
    ev_timer_stop(c->d->loop, &w->timer);
    spool_wait_cancel(&w->durable);
    dlist_remove(&w->link);
    assert(c->n_waiters > 0);
    c->n_waiters--;
    json_decref(w->id);
    give_back(c->d, w);
}

void waiter_cancel(Waiter *w)
{
    assert(!w->ending);
    release(w);
}

/* Run one ending callback of w, then free it - unless the callback's reply could not be queued
 * and closed the client, which freed its waiters (w among them) already. */
static void end(Waiter *w, void (*fn)(Waiter *, int), int result)
{
    assert(!w->ending); /* a waiter ends once */
    Client *c = w->c;
    w->ending = true;
    ev_timer_stop(c->d->loop, &w->timer);
    fn(w, result);
    if (!c->conn.closed) {
        release(w);
        conn_finish_if_done(&c->conn); /* its last answer may have been owed */
    }
}

void waiter_complete(Waiter *w, int result)
{
    assert(!w->ending);
    if (w->kind->progress && w->kind->progress(w, result)) {
        return;
    }
    end(w, w->kind->done, result);
}

static void timeout_cb(Waiter *w, int result)
{
    (void)result;
    w->kind->timeout(w);
}

static void on_timeout(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)loop;
    (void)revents;
    end(container_of(t, Waiter, timer), timeout_cb, 0);
}

Waiter *waiter_find(Client *c, const WaiterKind *kind, View filter)
{
    for (DList *l = c->waiters.next; l != &c->waiters; l = l->next) {
        Waiter *w = container_of(l, Waiter, link);
        if (w->kind == kind && view_eq(VIEW_STR(w->filter), filter)) {
            return w;
        }
    }
    return NULL;
}

/* The session forgets every request of c's waiters in one pass (one pass per waiter was
 * quadratic: 16 000 waiting subscribes took seconds to let go). True when done; false when
 * out of memory (each waiter's `gone` then does it). */
static bool forget_all(Client *c)
{
    HashMap reqs;
    hashmap_init(&reqs);
    bool ok = true;
    for (DList *l = c->waiters.next; ok && l != &c->waiters; l = l->next) {
        Waiter *w = container_of(l, Waiter, link);
        ok = hashmap_put(&reqs, VIEW(&w, sizeof(w)), w) == 0;
    }
    if (ok) {
        session_forget_reqs(c->d->broker.session, &reqs);
    }
    hashmap_free(&reqs, NULL);
    return ok;
}

void waiters_client_gone(Client *c)
{
    assert(c->conn.closed);
    c->reqs_forgotten = c->n_waiters > 1 && forget_all(c);
    while (!dlist_empty(&c->waiters)) {
        Waiter *w = container_of(c->waiters.next, Waiter, link);
        if (!w->ending) { /* one that is ending is past its answer: nothing to forget */
            w->kind->gone(w);
        }
        release(w);
    }
}

void waiter_set_reason(Waiter *w, uint8_t reason, View text)
{
    w->reason = reason;
    w->reason_text[0] = '\0';
    if (reason) {
        mqtt_reason_describe(w->reason_text, sizeof(w->reason_text), reason, text);
    }
    /* Cut at a character boundary, so a long reason string stays UTF-8. */
    size_t n = text.n < sizeof(w->reason_string) ? text.n : sizeof(w->reason_string) - 1;
    while (n < text.n && n > 0 && (text.p[n] & 0xC0) == 0x80) {
        n--;
    }
    if (n) {
        memcpy(w->reason_string, text.p, n);
    }
    w->reason_string[n] = '\0';
}
