/* SPDX-License-Identifier: MIT */
/* Local subscriptions: see subs.h. */
#include "subs.h"

#include <assert.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "answer.h"
#include "defaults.h"
#include "log.h"
#include "waiters.h"

/* ---- per-uid counts ---- */

/* Count one subscription more (+1) or less (-1) for c's uid. */
static void count_holder(Daemon *d, SubHolder *h, int delta)
{
    /* Out of memory: uncounted, so the limit is a little lenient. */
    (void)hashmap_count_add(&d->uid_subs, uid_key(&h->uid), delta);
}

size_t subs_of_uid(Daemon *d, uid_t uid)
{
    return hashmap_count(&d->uid_subs, uid_key(&uid));
}

void subs_init(Daemon *d)
{
    hashmap_init(&d->uid_subs);
}

void subs_free(Daemon *d)
{
    hashmap_free(&d->uid_subs, free);
}

void subs_client_init(Client *c)
{
    c->own = (SubHolder){.target = {.kind = TARGET_CLIENT}, .uid = c->conn.uid};
    hashmap_init(&c->own.subs);
    c->holder = &c->own;
}

size_t subs_count(const Client *c)
{
    return c->holder->subs.count;
}

/* ---- the client's own table ---- */

static ClientSub *find_sub(Client *c, View filter)
{
    return hashmap_get(&c->holder->subs, filter);
}

static ClientSub *holder_add(Daemon *d, SubHolder *h, View filter)
{
    ClientSub *s = malloc(sizeof(*s) + filter.n + 1);
    if (!s) {
        return NULL;
    }
    *s = (ClientSub){.len = (uint16_t)filter.n};
    memcpy(s->filter, filter.p, filter.n);
    s->filter[filter.n] = 0;
    if (hashmap_put(&h->subs, filter, s) < 0) {
        free(s);
        return NULL;
    }
    count_holder(d, h, +1);
    h->filter_bytes += filter.n;
    return s;
}

/* The holder's record of `filter` goes (the router's is the caller's business). */
static void holder_forget(Daemon *d, SubHolder *h, View filter)
{
    ClientSub *gone = hashmap_remove(&h->subs, filter);
    assert(gone);
    count_holder(d, h, -1);
    h->filter_bytes -= gone->len;
    free(gone);
}

static ClientSub *add_sub(Client *c, View filter)
{
    return holder_add(c->d, c->holder, filter);
}

/* ---- what each kind of waiting request does when it ends (waiters.h) ---- */

static void forget_in_session(Waiter *w)
{
    if (!w->c->reqs_forgotten) {
        session_forget_req(w->c->d->broker.session, w);
    }
}

static void barrier_done(Waiter *w, int result)
{
    (void)result;
    router_settle(&w->c->d->router, VIEW_STR(w->filter), &w->c->holder->target);
}

static void barrier_timeout(Waiter *w)
{
    /* No PINGRESP: the retained messages that did arrive were delivered; stop waiting. */
    forget_in_session(w);
    barrier_done(w, 0);
}

/* The retained messages of a new subscription: in once the barrier completes. No reply. */
static const WaiterKind barrier_kind = {barrier_done, barrier_timeout, forget_in_session, NULL};

static void subscribe_done(Waiter *w, int result);

static void subscribe_timeout(Waiter *w)
{
    forget_in_session(w);
    answer_error(w->c, w->id, IPC_TIMEOUT,
                 "no SUBACK in time; the subscription to %s is recorded and takes effect when "
                 "the broker confirms it",
                 w->filter);
}

static const WaiterKind subscribe_kind = {subscribe_done, subscribe_timeout, forget_in_session,
                                          NULL};

/* The UNSUBACK. MQTT 5 may refuse (the subscription then stays at the broker, but nobody here
 * holds it: its messages are dropped) or say there was none (0x11, still a success). */
static void unsubscribe_done(Waiter *w, int result)
{
    if (result < 0) {
        answer_refused(w->c, w->id, w,
                       "the broker refused to unsubscribe %s (UNSUBACK %s); it is unsubscribed "
                       "locally",
                       w->filter, w->reason_text);
    } else {
        answer_ok(w->c, w->id,
                  w->reason ? json_pack("{s:i}", "reason_code", (int)w->reason) : NULL);
    }
}

static void unsubscribe_timeout(Waiter *w)
{
    forget_in_session(w);
    answer_error(w->c, w->id, IPC_TIMEOUT, "no UNSUBACK in time; %s is unsubscribed locally",
                 w->filter);
}

static const WaiterKind unsubscribe_kind = {unsubscribe_done, unsubscribe_timeout,
                                            forget_in_session, NULL};

/* ---- holding and letting go ---- */

/* The retained-message barrier of c's subscription to `filter` belongs to that holder only:
 * a later subscription to the same filter is a new holder, with a barrier of its own. */
static void drop_barrier(Client *c, View filter)
{
    Waiter *w = waiter_find(c, &barrier_kind, filter);
    if (w && !w->ending) {
        forget_in_session(w);
        waiter_cancel(w); /* every caller sends c something next, which finishes it */
    }
}

/* c stops holding `filter`. With `at_broker`, the last local holder takes the broker
 * subscription away (req: who waits for the UNSUBACK); without, the broker does not hold
 * it. Returns ROUTER_LAST when c was the last holder. */
static int release_sub(Daemon *d, SubHolder *h, ClientSub *s, bool at_broker, void *req)
{
    View f = VIEW(s->filter, s->len);
    int r = router_remove(&d->router, f, &h->target);
    assert(r != -ENOENT); /* the holder's table and the router agree */
    if (r == ROUTER_LAST && at_broker && session_unsubscribe(d->broker.session, f, req, now_ms())) {
        /* Out of memory (f is valid): the broker keeps the subscription, which now routes to
         * nobody; nobody waits for an UNSUBACK. */
        r = 0;
    }
    assert(hashmap_get(&h->subs, f) == s);
    holder_forget(d, h, f); /* frees s, and so f: last */
    return r;
}

static int drop(Client *c, ClientSub *s, bool at_broker, void *req)
{
    drop_barrier(c, VIEW(s->filter, s->len));
    return release_sub(c->d, c->holder, s, at_broker, req);
}

bool subs_holder_forget(Daemon *d, SubHolder *h, View filter)
{
    ClientSub *s = hashmap_get(&h->subs, filter);
    if (s) {
        (void)release_sub(d, h, s, false, NULL);
    }
    return s != NULL;
}

void subs_holder_clear(Daemon *d, SubHolder *h)
{
    HashIter it;
    void *v;
    for (hashmap_iter(&h->subs, &it); hashmap_iter_next(&it, &v); hashmap_iter(&h->subs, &it)) {
        (void)release_sub(d, h, v, true, NULL);
    }
    hashmap_free(&h->subs, free);
}

int subs_holder_restore(Daemon *d, SubHolder *h, View f, uint8_t qos, bool base64,
                        const SubOptions *o, uint32_t subid)
{
    if (hashmap_get(&h->subs, f)) {
        return -EEXIST;
    }
    ClientSub *sub = holder_add(d, h, f);
    int res = sub ? router_add(&d->router, f, &h->target, qos, base64) : -ENOMEM;
    if (res < 0) {
        if (sub) {
            holder_forget(d, h, f);
        }
        return res;
    }
    *sub = (ClientSub){.qos = qos, .base64 = base64, .len = sub->len};
    router_settle(&d->router, f, &h->target); /* no retained messages: it had them */
    RouterFilter *rf = router_filter(&d->router, f);
    assert(rf);
    if (res & ROUTER_FIRST) {
        rf->no_local = o->no_local;
        rf->retain_as_published = o->retain_as_published;
        if (subid) { /* -EEXIST (another filter has it): this one keeps its new id */
            (void)router_set_subid(&d->router, f, subid);
        }
    }
    if (res & (ROUTER_FIRST | ROUTER_UPGRADE)) {
        /* Nobody waits for the SUBACK; a refusal comes as SUBSCRIPTION_LOST at the latest. */
        return subs_ask_broker(d, f, NULL, false);
    }
    return 0;
}

void subs_client_gone(Client *c)
{
    assert(c->conn.closed);
    HashIter it;
    void *v;
    /* drop() changes the map: the entries are gathered first (or, out of memory, taken one
     * at a time from a fresh iteration). */
    size_t n = subs_count(c), k = 0;
    ClientSub **all = malloc((n ? n : 1) * sizeof(*all));
    for (hashmap_iter(&c->holder->subs, &it); all && hashmap_iter_next(&it, &v);) {
        all[k++] = v;
    }
    for (size_t i = 0; i < k; i++) {
        drop(c, all[i], true, NULL);
    }
    free(all);
    for (hashmap_iter(&c->holder->subs, &it); hashmap_iter_next(&it, &v);
         hashmap_iter(&c->holder->subs, &it)) {
        drop(c, v, true, NULL);
    }
    hashmap_free(&c->holder->subs, free);
}

/* The broker did not take c's subscription to `filter`: c does not hold it after all. */
static void not_held(Client *c, View filter)
{
    ClientSub *s = find_sub(c, filter);
    if (s) {
        drop(c, s, false, NULL);
    }
}

/* The retained messages of c's new subscription to `f` are in once the barrier completes
 * (or times out); one barrier per filter and client is enough, however often it subscribes. */
static void add_barrier(Client *c, View f, int64_t timeout_ms)
{
    if (waiter_find(c, &barrier_kind, f)) {
        return;
    }
    Waiter *b = waiter_new(c, &barrier_kind, NULL, f, timeout_ms);
    if (!b) {
        /* No barrier: the holder settles now, so a retained message may be missed, never
         * delivered twice. */
        router_settle(&c->d->router, f, &c->holder->target);
        return;
    }
    if (session_barrier(c->d->broker.session, b) < 0) {
        router_settle(&c->d->router, f, &c->holder->target);
        waiter_cancel(b);
    }
}

/* ---- the ops ---- */

/* Limits before a subscription is taken; answered when it may not be. */
static bool may_subscribe(Client *c, json_t *id, bool held)
{
    Daemon *d = c->d;
    unsigned max = d->cfg.acl.max_subscriptions_per_uid;
    if (!held && subs_count(c) >= MAX_SUBS_PER_CLIENT) {
        answer_error(c, id, IPC_BAD_REQUEST, "too many subscriptions on one connection (%d)",
                     MAX_SUBS_PER_CLIENT);
        return false;
    }
    if (!held && max && subs_of_uid(d, c->conn.uid) >= max) {
        answer_error(c, id, IPC_FORBIDDEN,
                     "too many subscriptions for uid %u ([acl] max_subscriptions_per_uid = %u)",
                     (unsigned)c->conn.uid, max);
        return false;
    }
    if (waiters_full(c, 2)) { /* its reply and its barrier */
        answer_cannot_wait(c, id, 2);
        return false;
    }
    return true;
}

/* Options a broker subscription cannot take for one more holder: its other holders asked for
 * different ones. Answered here. */
static bool options_conflict(Client *c, json_t *id, View f, bool held, const SubOptions *o)
{
    RouterFilter *rf = router_filter(&c->d->router, f);
    if (!rf || rf->holders <= (held ? 1u : 0u) ||
        (rf->no_local == o->no_local && rf->retain_as_published == o->retain_as_published)) {
        return false;
    }
    answer_error(c, id, IPC_BAD_REQUEST,
                 "%.*s is held by other clients with no_local %s and retain_as_published %s "
                 "(one broker subscription serves them all): subscribe with the same",
                 (int)f.n, (const char *)f.p, rf->no_local ? "true" : "false",
                 rf->retain_as_published ? "true" : "false");
    return true;
}

int subs_ask_broker(Daemon *d, View f, void *req, bool retained)
{
    static Buf scratch;
    RouterFilter *rf = router_filter(&d->router, f);
    assert(rf);
    /* What the broker sends for it comes outside the mount point: see Router.match_domain. */
    rf->unmounted =
        mqtt_mount_active(&d->mount) && mqtt_mount_out(&d->mount, f, true, &scratch) == 0;
    SessionSubscribe ss = {.filter = f,
                           .qos = rf->broker_qos,
                           .subid = rf->subid,
                           .no_local = rf->no_local,
                           .retain_as_published = rf->retain_as_published,
                           .retain_handling = retained ? 0 : 2};
    return session_subscribe(d->broker.session, &ss, req, now_ms());
}

void subs_subscribe(Client *c, json_t *id, View f, uint8_t qos, bool base64, int64_t timeout_ms,
                    const SubOptions *opts)
{
    static const SubOptions none = {0};
    const SubOptions *o = opts ? opts : &none;
    Daemon *d = c->d;
    ClientSub *held = find_sub(c, f);
    if (!may_subscribe(c, id, held != NULL) || options_conflict(c, id, f, held != NULL, o)) {
        return;
    }
    ClientSub *sub = held ? held : add_sub(c, f);
    int res = sub ? router_add(&d->router, f, &c->holder->target, qos, base64) : -ENOMEM;
    if (res < 0) {
        if (sub && !held) {
            holder_forget(d, c->holder, f);
        }
        answer_error(c, id, IPC_INTERNAL, "out of memory");
        return;
    }
    sub->qos = qos;
    sub->base64 = base64;
    RouterFilter *rf = router_filter(&d->router, f);
    assert(rf);
    bool changed = rf->no_local != o->no_local || rf->retain_as_published != o->retain_as_published;
    rf->no_local = o->no_local;
    rf->retain_as_published = o->retain_as_published;
    /* Retained messages for this holder (retain_handling): then the broker is asked again
     * even when it already holds the filter, since a SUBSCRIBE makes it send them; they go
     * to this (fresh) holder only, and the barrier after it says when all have arrived. */
    bool retained = o->retain_handling == 0 || (o->retain_handling == 1 && !held);
    if (!retained) {
        router_settle(&d->router, f, &c->holder->target);
    }
    bool immediate = rf->active && !changed && !(res & (ROUTER_FIRST | ROUTER_UPGRADE));
    Waiter *w = immediate ? NULL : waiter_new(c, &subscribe_kind, id, f, timeout_ms);
    if (w) {
        w->qos = qos;
    }
    int e = !immediate && !w           ? -ENOMEM
            : (immediate && !retained) ? 0
                                       : subs_ask_broker(d, f, w, retained);
    if (e < 0 && !immediate) {
        if (w) {
            waiter_cancel(w);
        }
        not_held(c, f); /* not asked for: not held */
        answer_error(c, id, IPC_INTERNAL, "cannot ask the broker: %s", strerror(-e));
        return;
    }
    if (retained) {
        add_barrier(c, f, timeout_ms);
    }
    if (immediate) {
        uint8_t granted = qos < rf->granted ? qos : rf->granted;
        answer_ok(c, id, json_pack("{s:i}", "granted_qos", granted));
    }
}

/* The broker's SUBACK for a subscribe that waited for it. */
static void subscribe_done(Waiter *w, int result)
{
    Client *c = w->c;
    Daemon *d = c->d;
    View f = VIEW_STR(w->filter);
    RouterFilter *rf = router_filter(&d->router, f);
    if (result >= 0 && !find_sub(c, f)) {
        /* Dropped meanwhile (the broker refused its restore: c got "unsubscribed"). */
        if (!rf) {
            (void)session_unsubscribe(d->broker.session, f, NULL, now_ms()); /* valid filter */
        }
        answer_error(c, w->id, IPC_REFUSED,
                     "the subscription to %s was lost while it was made (the broker refused it "
                     "at a reconnect); subscribe again",
                     w->filter);
    } else if (result >= 0) {
        rf->active = true;
        rf->granted = (uint8_t)result;
        uint8_t granted = w->qos < result ? w->qos : (uint8_t)result;
        answer_ok(c, w->id, json_pack("{s:i}", "granted_qos", granted));
    } else {
        not_held(c, f);
        answer_refused(c, w->id, w, "the broker refused the subscription to %s (SUBACK %s)",
                       w->filter, w->reason_text[0] ? w->reason_text : "0x80");
    }
}

void subs_unsubscribe(Client *c, json_t *id, View filter, int64_t timeout_ms)
{
    ClientSub *s = find_sub(c, filter);
    if (!s) {
        answer_error(c, id, IPC_NOT_SUBSCRIBED, "not subscribed to %.*s", (int)filter.n,
                     (const char *)filter.p);
        return;
    }
    /* Answered on UNSUBACK when this was the last local holder, else at once. Its barrier
     * goes first: it must not count against the waiter limit. */
    drop_barrier(c, filter);
    Waiter *w = waiter_new(c, &unsubscribe_kind, id, filter, timeout_ms);
    if (drop(c, s, true, w) != ROUTER_LAST || !w) {
        if (w) {
            waiter_cancel(w);
        }
        answer_ok(c, id, NULL);
    }
}

/* ---- what others decide ---- */

bool subs_recheck(Client *c, bool (*keep)(Client *c, View filter, char *why, size_t n))
{
    /* The filters to drop are gathered first: dropping changes the map. */
    size_t n = subs_count(c), k = 0;
    ClientSub **refused = calloc(n ? n : 1, sizeof(*refused));
    if (!refused) {
        conn_close(&c->conn, "out of memory re-checking its subscriptions");
        return false;
    }
    char why[300];
    HashIter it;
    void *v;
    hashmap_iter(&c->holder->subs, &it);
    while (hashmap_iter_next(&it, &v)) {
        ClientSub *s = v;
        if (!keep(c, VIEW(s->filter, s->len), why, sizeof(why))) {
            refused[k++] = s;
        }
    }
    for (size_t i = 0; i < k && !c->conn.closed; i++) {
        View f = VIEW(refused[i]->filter, refused[i]->len);
        (void)keep(c, f, why, sizeof(why)); /* the reason again, for the event */
        log_info("client %llu (uid %u) loses %.*s: %s", (unsigned long long)c->conn.serial,
                 (unsigned)c->conn.uid, (int)f.n, (const char *)f.p, why);
        /* Told before it is dropped (the filter's text goes with it), and when telling
         * closes c (out of memory), closing has dropped every subscription already. */
        answer_unsubscribed(c, f, why);
        if (!c->conn.closed) {
            drop(c, refused[i], true, NULL);
        }
    }
    free(refused);
    return !c->conn.closed;
}

void subs_lost(Daemon *d, View filter, uint8_t code)
{
    char reason[160];
    snprintf(reason, sizeof(reason),
             "the broker refused the subscription when it was restored after a reconnect "
             "(SUBACK 0x%02x)",
             code);
    log_warning("subscription to %.*s lost: %s", (int)filter.n, (const char *)filter.p, reason);
    snprintf(d->lost_subscription, sizeof(d->lost_subscription), "%.*s: %s", (int)filter.n,
             (const char *)filter.p, reason);
    /* Each holder is told; one that is closed on the way (out of memory) leaves the list. */
    dlist_for_each_safe(l, next, &d->server.conns)
    {
        Client *c = client_at(l);
        if (find_sub(c, filter)) {
            not_held(c, filter); /* first: the event may close c, and `filter` is not c's */
            answer_unsubscribed(c, filter, reason);
        }
    }
}

void subs_granted(Daemon *d, View filter, uint8_t qos)
{
    RouterFilter *rf = router_filter(&d->router, filter);
    if (rf) { /* NULL: nobody here holds it any more (an UNSUBSCRIBE follows) */
        rf->active = true;
        rf->granted = qos;
    }
}

void subs_link_up(Daemon *d, bool session_present)
{
    router_reconfirm_all(&d->router, session_present);
}

void subs_link_down(Daemon *d)
{
    router_unconfirm_all(&d->router);
}
