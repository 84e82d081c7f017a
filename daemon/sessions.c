/* SPDX-License-Identifier: MIT */
/* Named local sessions: see sessions.h. */
#include "sessions.h"

#include <assert.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "access.h"
#include "answer.h"
#include "log.h"
#include "mqtt/topic.h"
#include "subs.h"

typedef struct Kept { /* a QoS 1/2 message kept for a session until acknowledged */
    DList link;
    uint64_t seq;
    uint64_t spool_seq; /* its record in the spool; 0: none */
    int64_t at;         /* when it came (ms), for the oldest pending age */
    bool sent;          /* written to a connection of the session: the next is a redelivery */
    uint8_t qos;
    bool retain, base64; /* base64: the encoding its holder asked for when it came */
    uint32_t topic_len, payload_len, props_len;
    uint8_t data[]; /* topic, payload, the MQTT 5 property block as it came */
} Kept;

struct LocalSession {
    SubHolder holder; /* its subscriptions (target kind TARGET_SESSION) */
    Daemon *d;
    char *name;
    Client *client; /* connected, or NULL */
    uint32_t expiry;
    ev_timer expire;
    DList kept; /* Kept, oldest first */
    size_t n_kept, kept_bytes;
    uint64_t next_seq;  /* the next message's */
    uint64_t sent_upto; /* the highest seq written to a connection */
    uint64_t acked;     /* the last acknowledgement */
    DList *unsent;      /* the first kept message its connection has not had; &kept: none */
    uint64_t dropped;   /* since it was last announced */
    uint64_t dropped_total;
    uint64_t spool_id; /* its id in the spool; 0: not written there (no spool, or it failed) */
    int64_t left_at;   /* when its last connection closed (Unix time, ms); 0: connected */
    bool dirty;        /* changed since it was last written to the spool */
    bool lost_subs;    /* it lost subscriptions while its program was away */
    bool stale;        /* recovered, and a newer session of its name too: ended at start */
};

static Buf scratch;        /* one event line at a time */
static HashMap recovered;  /* spool id -> LocalSession, while the spool is read back */
static ev_prepare flush_w; /* writes changed sessions before the loop waits */
static ev_timer later_w;   /* ... and refills the budget for those that had to wait */
static double budget;      /* bytes of SESSION records that may be written now ... */
static double refilled_at; /* ... as of then (it grows by SAVE_BUDGET a second) */

#define SAVE_BUDGET         (1u << 20) /* bytes of SESSION records written per second */
#define SESSION_FILTERS_MAX (1u << 20) /* a session's filters, with 8 bytes each */

/* ---- the spool: what survives a restart ---- */

/* Its subscriptions as a SESSION record lists them. */
static int encode_subs(const LocalSession *s, Buf *out)
{
    HashIter it;
    void *v;
    for (hashmap_iter(&s->holder.subs, &it); hashmap_iter_next(&it, &v);) {
        const ClientSub *cs = v;
        View f = VIEW(cs->filter, cs->len);
        const RouterFilter *rf = router_filter(&s->d->router, f);
        SpoolSessionSub sub = {.qos = cs->qos,
                               .base64 = cs->base64,
                               .no_local = rf && rf->no_local,
                               .retain_as_published = rf && rf->retain_as_published,
                               .subid = rf ? rf->subid : 0,
                               .filter = f};
        int r = spool_session_sub_put(out, &sub);
        if (r < 0) {
            return r;
        }
    }
    return 0;
}

/* Whether the spool logged failure `r` itself (a write error, once per episode). */
static bool spool_logged(const Spool *sp, int r)
{
    SpoolHealth h;
    spool_health(sp, &h);
    return h.write_error == -r;
}

/* The size of its SESSION record, about. */
static size_t record_size(const LocalSession *s)
{
    return 128 + strlen(s->name) + s->holder.filter_bytes + 8 * s->holder.subs.count;
}

static void try_later(Daemon *d)
{
    if (!ev_is_active(&later_w)) {
        ev_timer_set(&later_w, 1.0, 0.0);
        ev_timer_start(d->loop, &later_w);
    }
}

/* Write the session whole into the spool (with [queue] spool_dir). A failure is logged (write
 * errors once per episode, by the spool); the session goes on in memory and is tried again in
 * a second. */
static void save(LocalSession *s)
{
    Daemon *d = s->d;
    if (!d->spool) {
        return;
    }
    Buf subs = {0};
    s->dirty = false;
    SpoolSession m = {.id = s->spool_id,
                      .name = VIEW_STR(s->name),
                      .uid = (uint32_t)s->holder.uid,
                      .expiry = s->expiry,
                      .left_at = s->client ? 0 : s->left_at,
                      .next_seq = s->next_seq,
                      .acked = s->acked,
                      .dropped = s->dropped,
                      .dropped_total = s->dropped_total};
    int r = encode_subs(s, &subs);
    if (r == 0) {
        m.subs = buf_view(&subs);
        r = spool_session_put(d->spool, &m);
    }
    buf_free(&subs);
    if (r == 0) {
        s->spool_id = m.id;
        return;
    }
    if (!spool_logged(d->spool, r)) {
        log_error("session %s: cannot write it to the spool: %s", s->name, strerror(-r));
    }
    s->dirty = true;
    try_later(d);
}

/* s changed (its subscriptions, expiry, connection, drops): written to the spool before the
 * loop next waits, once for a burst of changes (a reply written meanwhile may go out first),
 * within a budget of SAVE_BUDGET bytes a second for all sessions together, so that a program
 * changing a long subscription list over and over cannot make the daemon write without end. */
static void changed(LocalSession *s)
{
    if (s->d->spool) {
        s->dirty = true;
        ev_prepare_start(s->d->loop, &flush_w);
    }
}

/* Write the changed sessions the budget allows (with `all`, every one); a record larger than
 * the whole budget goes when the budget is full. */
static void flush(Daemon *d, bool all)
{
    HashIter it;
    void *v;
    bool later = false;
    double now = ev_now(d->loop);
    budget += (now - refilled_at) * SAVE_BUDGET;
    budget = budget > SAVE_BUDGET ? SAVE_BUDGET : budget;
    refilled_at = now;
    for (hashmap_iter(&d->sessions, &it); hashmap_iter_next(&it, &v);) {
        LocalSession *s = v;
        double size = (double)record_size(s);
        if (!s->dirty) {
            continue;
        }
        if (!all && size > budget && budget < SAVE_BUDGET) {
            later = true;
            continue;
        }
        save(s);
        budget = size < budget ? budget - size : 0;
    }
    if (later) {
        try_later(d);
    }
}

static void on_flush(struct ev_loop *loop, ev_prepare *w, int revents)
{
    (void)revents;
    ev_prepare_stop(loop, w);
    flush(w->data, false);
}

static void on_later(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)revents;
    (void)w;
    ev_prepare_start(loop, &flush_w);
}

void sessions_flush(Daemon *d)
{
    ev_prepare_stop(d->loop, &flush_w);
    ev_timer_stop(d->loop, &later_w);
    if (d->spool) {
        flush(d, true);
    }
    ev_timer_stop(d->loop, &later_w); /* a failure set it again: the spool closes next */
}

/* A kept message into the spool, numbered k->spool_seq. */
static void save_kept(LocalSession *s, Kept *k)
{
    Daemon *d = s->d;
    if (d->spool && !s->spool_id) {
        save(s); /* a new session, not written yet */
    }
    if (!d->spool || !s->spool_id) {
        return;
    }
    SpoolMessage m = {.qos = k->qos,
                      .retain = k->retain,
                      .topic = VIEW(k->data, k->topic_len),
                      .payload = VIEW(k->data + k->topic_len, k->payload_len),
                      .props = VIEW(k->data + k->topic_len + k->payload_len, k->props_len),
                      .session = s->spool_id,
                      .session_seq = k->seq,
                      .kept_at = wall_ms(),
                      .base64 = k->base64};
    uint64_t mark;
    int r = spool_add(d->spool, &m, &k->spool_seq, &mark);
    if (r < 0 && !spool_logged(d->spool, r)) {
        log_error("session %s: cannot write message %llu to the spool: %s", s->name,
                  (unsigned long long)k->seq, strerror(-r));
    }
}

void sessions_init(Daemon *d)
{
    hashmap_init(&d->sessions);
    hashmap_init(&recovered);
    ev_prepare_init(&flush_w, on_flush);
    flush_w.data = d;
    ev_init(&later_w, on_later);
    budget = SAVE_BUDGET;
    refilled_at = ev_now(d->loop);
}

static void drop_kept(LocalSession *s, Kept *k)
{
    if (k->spool_seq && s->d->spool) { /* no spool: stopping, or none */
        spool_done(s->d->spool, k->spool_seq);
    }
    if (s->unsent == &k->link) {
        s->unsent = k->link.next;
    }
    s->kept_bytes -= k->topic_len + k->payload_len + k->props_len;
    s->n_kept--;
    dlist_remove(&k->link);
    free(k);
}

/* A kept message: `head`'s fields, with the bytes of topic, payload and properties copied. */
static Kept *new_kept(Kept head, View topic, View payload, View props)
{
    Kept *k = malloc(sizeof(*k) + topic.n + payload.n + props.n);
    if (!k) {
        return NULL;
    }
    *k = head;
    k->topic_len = (uint32_t)topic.n;
    k->payload_len = (uint32_t)payload.n;
    k->props_len = (uint32_t)props.n;
    uint8_t *w = k->data;
    memcpy(w, topic.p, topic.n);
    if (payload.n) {
        memcpy(w + topic.n, payload.p, payload.n);
    }
    if (props.n) {
        memcpy(w + topic.n + payload.n, props.p, props.n);
    }
    return k;
}

/* k goes after the others. */
static void push_kept(LocalSession *s, Kept *k)
{
    dlist_push(&s->kept, &k->link);
    s->n_kept++;
    s->kept_bytes += k->topic_len + k->payload_len + k->props_len;
}

static void free_kept(LocalSession *s)
{
    while (!dlist_empty(&s->kept)) {
        drop_kept(s, container_of(s->kept.next, Kept, link));
    }
}

/* What s holds goes - its subscriptions (and the broker's behind them, when it held them last),
 * what it kept, its record in the spool - and s is freed. Its own DONE goes first: a kept
 * message whose session did not come back is forgotten at the next start, whatever happens to
 * the DONEs written after. The caller took s out of the map of names. */
static void discard(LocalSession *s)
{
    Daemon *d = s->d;
    ev_timer_stop(d->loop, &s->expire);
    if (s->spool_id && d->spool) {
        spool_done(d->spool, s->spool_id);
    }
    subs_holder_clear(d, &s->holder);
    free_kept(s);
    free(s->name);
    free(s);
}

/* The session ends. Its client, if any, was detached first. */
static void end_session(LocalSession *s, const char *why)
{
    assert(!s->client);
    log_info("session %s (uid %u) ends: %s", s->name, (unsigned)s->holder.uid, why);
    (void)hashmap_remove(&s->d->sessions, VIEW_STR(s->name));
    discard(s);
}

static void free_session(void *p)
{
    LocalSession *s = p;
    assert(!s->d->spool);
    ev_timer_stop(s->d->loop, &s->expire);
    hashmap_free(&s->holder.subs, free); /* the router and the broker link go too */
    free_kept(s);
    free(s->name);
    free(s);
}

void sessions_free(Daemon *d)
{
    hashmap_free(&d->sessions, free_session);
    buf_free(&scratch);
}

static void on_expire(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)loop;
    (void)revents;
    LocalSession *s = container_of(t, LocalSession, expire);
    end_session(s, "its expiry passed with no connection");
}

/* c leaves s (closing, or taken over): s keeps its subscriptions, and counts down. */
static void detach(LocalSession *s)
{
    Client *c = s->client;
    assert(c && c->session == s);
    c->holder = &c->own;
    c->session = NULL;
    s->client = NULL;
    /* Retained messages of a subscribe still waiting for its barrier are not for it any more
     * (the barrier goes with the connection). */
    HashIter it;
    void *v;
    for (hashmap_iter(&s->holder.subs, &it); hashmap_iter_next(&it, &v);) {
        const ClientSub *cs = v;
        router_settle(&s->d->router, VIEW(cs->filter, cs->len), &s->holder.target);
    }
    /* Ended by the timer, never here: this runs inside the connection's closing. */
    ev_timer_set(&s->expire, (double)s->expiry, 0.0);
    ev_timer_start(s->d->loop, &s->expire);
}

/* Detach s's client without counting down (the session is about to end or be taken). */
static void detach_quietly(LocalSession *s)
{
    s->expiry = UINT32_MAX; /* detach must not end it */
    detach(s);
    ev_timer_stop(s->d->loop, &s->expire);
}

void sessions_client_gone(Client *c)
{
    LocalSession *s = c->session;
    if (s) {
        detach(s);
        s->left_at = wall_ms();
        changed(s);
    }
}

bool sessions_may_subscribe(Client *c, json_t *id, View filter)
{
    LocalSession *s = c->session;
    if (!s || hashmap_get(&s->holder.subs, filter)) {
        return true;
    }
    size_t bytes = s->holder.filter_bytes + 8 * s->holder.subs.count;
    if (bytes + 8 + filter.n <= SESSION_FILTERS_MAX) {
        return true;
    }
    answer_error(c, id, IPC_BAD_REQUEST,
                 "session %s holds %zu bytes of filters already; at most %u (it is written "
                 "whole to the spool)",
                 s->name, bytes, SESSION_FILTERS_MAX);
    return false;
}

void sessions_client_subscribed(Client *c)
{
    if (c->session) {
        changed(c->session);
    }
}

/* ---- delivery ---- */

/* Write kept message k to the session's connection. */
static void send_kept(LocalSession *s, Kept *k)
{
    MqttProps props;
    View raw = VIEW(k->data + k->topic_len + k->payload_len, k->props_len);
    bool redelivered = k->sent;
    k->sent = true;
    s->unsent = k->link.next;
    s->sent_upto = k->seq > s->sent_upto ? k->seq : s->sent_upto;
    buf_clear(&scratch);
    if (mqtt_props_check(raw, MQTT_PUBLISH, &props) < 0) {
        props = (MqttProps){0}; /* it came checked: cannot happen */
    }
    if (event_message_seq(&scratch, VIEW(k->data, k->topic_len),
                          VIEW(k->data + k->topic_len, k->payload_len), k->qos, k->retain,
                          k->base64, &props, k->seq, redelivered) < 0) {
        conn_close(&s->client->conn, "out of memory");
        return;
    }
    s->d->stats.messages_delivered++;
    conn_send(&s->client->conn, buf_view(&scratch));
}

/* Write the kept messages its connection has not had, as far as [ipc] client_buffer allows;
 * the rest go when it drains (sessions_drained). */
static void pump(LocalSession *s)
{
    size_t limit = s->d->cfg.ipc.client_buffer;
    while (s->unsent != &s->kept && s->client && !s->client->conn.closed) {
        size_t queued = conn_queued(&s->client->conn);
        if (queued && queued >= limit) {
            return;
        }
        send_kept(s, container_of(s->unsent, Kept, link));
    }
}

void sessions_drained(Client *c)
{
    if (c->session) {
        pump(c->session);
    }
}

bool sessions_ready(const RouterTarget *t)
{
    const LocalSession *s = container_of(t, LocalSession, holder.target);
    return s->client != NULL;
}

/* Make room for `more` messages of `bytes` by dropping the oldest kept ones. */
/* A message for s was dropped (its bounds, or out of memory): counted, announced at the
 * next resume, and written with the session (so a restart does not forget it). */
static void count_drop(LocalSession *s)
{
    s->dropped++;
    s->dropped_total++;
    s->d->stats.messages_dropped++;
    changed(s);
}

static void bound(LocalSession *s, size_t more, size_t bytes)
{
    const Config *cfg = &s->d->cfg;
    while (s->n_kept && (s->n_kept + more > cfg->sessions.max_messages ||
                         s->kept_bytes + bytes > cfg->sessions.max_bytes)) {
        drop_kept(s, container_of(s->kept.next, Kept, link));
        count_drop(s);
    }
}

void sessions_reload(Daemon *d)
{
    HashIter it;
    void *v;
    for (hashmap_iter(&d->sessions, &it); hashmap_iter_next(&it, &v);) {
        bound(v, 0, 0); /* lowered bounds apply now */
    }
}

void sessions_deliver(Daemon *d, RouterTarget *t, const MqttPublish *m, const MqttProps *props)
{
    LocalSession *s = container_of(t, LocalSession, holder.target);
    uint8_t qos = m->qos < t->qos ? m->qos : t->qos;
    if (qos == 0) { /* not kept: as to any client, within its buffer */
        buf_clear(&scratch);
        if (s->client &&
            event_message(&scratch, m->topic, m->payload, 0, m->retain, t->base64, props) == 0) {
            answer_message(s->client, buf_view(&scratch));
        }
        return;
    }
    size_t bytes = m->topic.n + m->payload.n + props->raw.n;
    if (bytes > d->cfg.sessions.max_bytes) { /* cannot be kept: counted, announced */
        count_drop(s);
        log_warning("session %s: a %zu-byte message is larger than [sessions] max_bytes: "
                    "dropped",
                    s->name, bytes);
        return;
    }
    bound(s, 1, bytes);
    Kept head = {
        .seq = s->next_seq, .at = now_ms(), .qos = qos, .retain = m->retain, .base64 = t->base64};
    Kept *k = new_kept(head, m->topic, m->payload, props->raw);
    if (!k) {
        count_drop(s);
        return;
    }
    s->next_seq++;
    push_kept(s, k);
    if (s->unsent == &s->kept) { /* its connection had all the others */
        s->unsent = &k->link;
    }
    save_kept(s, k); /* before the broker is acknowledged (when this returns) */
    pump(s);
}

/* ---- the ops ---- */

static LocalSession *new_session(Daemon *d, View name, uid_t uid)
{
    LocalSession *s = calloc(1, sizeof(*s));
    char *copy = s ? strndup((const char *)name.p, name.n) : NULL;
    if (!copy || hashmap_put(&d->sessions, name, s) < 0) {
        free(copy);
        free(s);
        return NULL;
    }
    s->holder = (SubHolder){.target = {.kind = TARGET_SESSION}, .uid = uid};
    hashmap_init(&s->holder.subs);
    s->d = d;
    s->name = copy;
    s->next_seq = 1;
    s->kept.prev = s->kept.next = &s->kept;
    s->unsent = &s->kept;
    ev_timer_init(&s->expire, on_expire, 0.0, 0.0);
    return s;
}

static LocalSession *create(Client *c, Request *r)
{
    LocalSession *s = new_session(c->d, r->name, c->conn.uid);
    if (s) {
        log_info("session %s made by uid %u", s->name, (unsigned)c->conn.uid);
    }
    return s;
}

/* Kept messages that no filter of the session matches any more (the rules changed while the
 * program was away) are not for it. */
static void forget_unheld(LocalSession *s)
{
    for (DList *l = s->kept.next, *next; l != &s->kept; l = next) {
        next = l->next;
        Kept *k = container_of(l, Kept, link);
        bool held = false;
        HashIter it;
        void *v;
        for (hashmap_iter(&s->holder.subs, &it); !held && hashmap_iter_next(&it, &v);) {
            const ClientSub *cs = v;
            held = mqtt_topic_matches(VIEW(cs->filter, cs->len), VIEW(k->data, k->topic_len));
        }
        if (!held) {
            drop_kept(s, k);
        }
    }
}

void sessions_lost(Daemon *d, View filter)
{
    HashIter it;
    void *v;
    for (hashmap_iter(&d->sessions, &it); hashmap_iter_next(&it, &v);) {
        LocalSession *s = v;
        if (!s->client && subs_holder_forget(d, &s->holder, filter)) {
            log_warning("session %s loses %.*s (the broker refused it at a reconnect)", s->name,
                        (int)filter.n, (const char *)filter.p);
            s->lost_subs = true;
            changed(s);
        }
    }
}

static unsigned of_uid(Daemon *d, uid_t uid)
{
    unsigned n = 0;
    HashIter it;
    void *v;
    for (hashmap_iter(&d->sessions, &it); hashmap_iter_next(&it, &v);) {
        n += ((LocalSession *)v)->holder.uid == uid;
    }
    return n;
}

/* Why c may not name session s (answered), or NULL when it may. */
static bool refuse(Client *c, const Request *r, LocalSession *s)
{
    if (c->session) {
        answer_error(c, r->id, IPC_BAD_REQUEST, "this connection is already in session %s",
                     c->session->name);
    } else if (c->own.subs.count) {
        answer_error(c, r->id, IPC_BAD_REQUEST,
                     "this connection already subscribed outside a session: name the session "
                     "first, on a new connection, so its subscriptions are the session's");
    } else if (s && s->holder.uid != c->conn.uid) {
        answer_error(c, r->id, IPC_FORBIDDEN, "session %s belongs to uid %u", s->name,
                     (unsigned)s->holder.uid);
    } else if (!s && c->d->sessions.count >= c->d->cfg.sessions.max) {
        answer_error(c, r->id, IPC_QUEUE_FULL, "%zu sessions exist ([sessions] max = %u)",
                     c->d->sessions.count, c->d->cfg.sessions.max);
    } else if (!s && c->d->cfg.sessions.max_per_uid &&
               of_uid(c->d, c->conn.uid) >= c->d->cfg.sessions.max_per_uid) {
        answer_error(c, r->id, IPC_FORBIDDEN,
                     "uid %u holds %u sessions already ([sessions] max_per_uid)",
                     (unsigned)c->conn.uid, c->d->cfg.sessions.max_per_uid);
    } else {
        return false;
    }
    return true;
}

/* The connection that had s is told and closed. */
static void take_over(LocalSession *s)
{
    Client *old = s->client;
    log_info("session %s taken over from client %llu", s->name,
             (unsigned long long)old->conn.serial);
    uint32_t expiry = s->expiry;
    detach_quietly(s);
    s->expiry = expiry; /* the new connection keeps it unless it names one */
    buf_clear(&scratch);
    int r = write_json_line(&scratch, json_pack("{s:s}", "event", "session_taken_over"));
    conn_close_after(&old->conn, r == 0 ? buf_view(&scratch) : VIEW_NULL,
                     "its session was taken over");
}

void sessions_op_session(Client *c, Request *r)
{
    Daemon *d = c->d;
    LocalSession *s = hashmap_get(&d->sessions, r->name);
    if (refuse(c, r, s)) {
        return;
    }
    bool resumed = s != NULL;
    if (s && s->client) {
        take_over(s);
    }
    if (!s && !(s = create(c, r))) {
        answer_error(c, r->id, IPC_INTERNAL, "out of memory");
        return;
    }
    ev_timer_stop(d->loop, &s->expire);
    if (r->expiry >= 0 || !resumed) { /* a resume without one keeps its expiry */
        s->expiry = r->expiry >= 0 ? (uint32_t)r->expiry : d->cfg.sessions.default_expiry;
    }
    s->client = c;
    s->unsent = s->kept.next; /* a new connection has had none */
    c->session = s;
    c->holder = &s->holder;
    /* A rule changed while the program was away applies now, to what was kept too. */
    size_t held = s->holder.subs.count;
    if (resumed && (!access_recheck_subs(c) || c->conn.closed)) {
        return; /* c was closed (out of memory): the session goes on without it */
    }
    if (s->lost_subs || s->holder.subs.count < held) {
        forget_unheld(s); /* kept × subscriptions: only when some are gone */
    }
    s->lost_subs = false;
    s->left_at = 0;
    changed(s);
    answer_ok(c, r->id,
              json_pack("{s:b, s:I}", "resumed", resumed, "pending", (json_int_t)s->n_kept));
    if (s->dropped && !c->conn.closed) {
        buf_clear(&scratch);
        if (write_json_line(&scratch, json_pack("{s:s, s:I}", "event", "dropped", "count",
                                                (json_int_t)s->dropped)) == 0) {
            conn_send(&c->conn, buf_view(&scratch));
        }
        s->dropped = 0;
    }
    pump(s);
}

void sessions_op_ack(Client *c, Request *r)
{
    LocalSession *s = c->session;
    if (!s) {
        answer_error(c, r->id, IPC_BAD_REQUEST, "ack is for a connection in a session");
        return;
    }
    uint64_t acked = s->acked;
    if (r->seq > s->sent_upto) {
        answer_error(c, r->id, IPC_BAD_REQUEST, "seq %llu was never sent (the last is %llu)",
                     (unsigned long long)r->seq, (unsigned long long)s->sent_upto);
        return;
    }
    if (r->seq < acked) {
        answer_error(c, r->id, IPC_BAD_REQUEST,
                     "seq %llu is behind the last acknowledgement (%llu)",
                     (unsigned long long)r->seq, (unsigned long long)acked);
        return;
    }
    Spool *sp = c->d->spool;
    int e = sp && s->spool_id && r->seq > acked ? spool_session_ack(sp, s->spool_id, r->seq) : 0;
    if (e < 0 && !spool_logged(sp, e)) {
        log_error("session %s: cannot write its acknowledgement to the spool: %s", s->name,
                  strerror(-e));
    }
    while (!dlist_empty(&s->kept)) {
        Kept *k = container_of(s->kept.next, Kept, link);
        if (k->seq > r->seq) {
            break;
        }
        drop_kept(s, k);
    }
    s->acked = r->seq;
    /* No success reply (the contract): acknowledging is a stream. */
}

void sessions_op_end(Client *c, Request *r)
{
    LocalSession *s = hashmap_get(&c->d->sessions, r->name);
    if (!s) {
        answer_error(c, r->id, IPC_BAD_REQUEST, "no session %.*s", (int)r->name.n,
                     (const char *)r->name.p);
        return;
    }
    if (s->holder.uid != c->conn.uid && !c->acl.admin) {
        answer_error(c, r->id, IPC_FORBIDDEN,
                     "session %s belongs to uid %u (its owner, root or an admin may end it)",
                     s->name, (unsigned)s->holder.uid);
        return;
    }
    Client *holder = s->client;
    if (holder) {
        detach_quietly(s);
        if (holder != c) {
            conn_close(&holder->conn, "its session was ended");
        }
    }
    end_session(s, "session_end");
    answer_ok(c, r->id, NULL);
}

void sessions_op_list(Client *c, Request *r)
{
    if (!c->acl.admin) {
        answer_error(c, r->id, IPC_FORBIDDEN, "sessions is an admin op");
        return;
    }
    json_t *list = json_array();
    HashIter it;
    void *v;
    int64_t now = now_ms();
    for (hashmap_iter(&c->d->sessions, &it); list && hashmap_iter_next(&it, &v);) {
        LocalSession *s = v;
        int64_t oldest = s->n_kept ? (now - container_of(s->kept.next, Kept, link)->at) / 1000 : 0;
        json_array_append_new(
            list, json_pack("{s:s, s:I, s:b, s:I, s:I, s:I, s:I}", "name", s->name, "uid",
                            (json_int_t)s->holder.uid, "connected", s->client != NULL,
                            "subscriptions", (json_int_t)s->holder.subs.count, "pending",
                            (json_int_t)s->n_kept, "oldest_pending_s", (json_int_t)oldest,
                            "dropped", (json_int_t)s->dropped_total));
    }
    answer_ok(c, r->id, json_pack("{s:o}", "sessions", list ? list : json_array()));
}

/* ---- recovery from the spool ---- */

/* Its subscriptions, held again (the broker is asked when the link comes up). */
static void restore_subs(LocalSession *s, View subs)
{
    SpoolSessionSub sub;
    while (spool_session_sub_next(&subs, &sub) == 1) {
        SubOptions o = {.no_local = sub.no_local, .retain_as_published = sub.retain_as_published};
        int r =
            subs_holder_restore(s->d, &s->holder, sub.filter, sub.qos, sub.base64, &o, sub.subid);
        if (r < 0 && r != -EEXIST) {
            log_error("session %s: cannot hold %.*s again: %s", s->name, (int)sub.filter.n,
                      (const char *)sub.filter.p, strerror(-r));
        }
    }
}

void sessions_recovered(Daemon *d, const SpoolSession *m)
{
    LocalSession *old = hashmap_get(&d->sessions, m->name);
    if (old) { /* the end of an older one of that name was not written: the newer one wins */
        log_warning("spool: session %s is there twice; the newer one is kept", old->name);
        (void)hashmap_remove(&d->sessions, m->name);
        old->stale = true; /* its kept messages still come to it; ended at recovery_done */
    }
    LocalSession *s = new_session(d, m->name, m->uid);
    if (!s || hashmap_put(&recovered, VIEW(&m->id, sizeof(m->id)), s) < 0) {
        /* Its kept messages are forgotten with it; it stays in the spool for the next start. */
        log_error("session %.*s could not be recovered from the spool (out of memory)",
                  (int)m->name.n, (const char *)m->name.p);
        if (s) {
            end_session(s, "out of memory");
        }
        return;
    }
    s->spool_id = m->id;
    s->expiry = m->expiry;
    s->left_at = m->left_at;
    s->dropped = m->dropped;
    s->dropped_total = m->dropped_total;
    s->acked = s->sent_upto = m->acked;
    s->next_seq = m->next_seq > m->acked ? m->next_seq : m->acked + 1;
    restore_subs(s, m->subs);
}

bool sessions_recovered_message(Daemon *d, const SpoolMessage *m)
{
    LocalSession *s = hashmap_get(&recovered, VIEW(&m->session, sizeof(m->session)));
    size_t bytes = m->topic.n + m->payload.n + m->props.n;
    const Kept *last = s && !dlist_empty(&s->kept) ? container_of(s->kept.prev, Kept, link) : NULL;
    if (!s || m->session_seq <= s->acked || (last && m->session_seq <= last->seq) ||
        bytes > UINT32_MAX) {
        return false; /* ended, acknowledged (its DONE was lost), or out of order (damage) */
    }
    int64_t age = wall_ms() - m->kept_at;
    Kept head = {.seq = m->session_seq,
                 .spool_seq = m->seq,
                 .at = now_ms() - (age > 0 ? age : 0),
                 .sent = true, /* who knows whether its program had it: redelivered */
                 .qos = m->qos,
                 .retain = m->retain,
                 .base64 = m->base64};
    Kept *k = new_kept(head, m->topic, m->payload, m->props);
    if (!k) {
        return false; /* as if the bound had dropped it */
    }
    push_kept(s, k);
    if (k->seq >= s->next_seq) {
        s->next_seq = k->seq + 1;
    }
    return true;
}

void sessions_recovery_done(Daemon *d)
{
    HashIter it;
    void *v;
    int64_t wall = wall_ms();
    size_t n = 0, kept = 0;
    for (hashmap_iter(&recovered, &it); hashmap_iter_next(&it, &v);) {
        LocalSession *s = v;
        if (s->stale) {
            discard(s);
            continue;
        }
        s->unsent = s->kept.next;
        s->sent_upto = s->next_seq - 1; /* every kept one may have been sent */
        /* Numbers between the last acknowledgement and the first kept message are messages
         * that were dropped: if the record does not count them yet (a crash right after), the
         * gap does (announced again if they were before the restart: at least once). */
        uint64_t first = s->n_kept ? container_of(s->kept.next, Kept, link)->seq : s->next_seq;
        uint64_t gap = first - 1 - s->acked;
        s->dropped = gap > s->dropped ? gap : s->dropped;
        s->dropped_total = s->dropped > s->dropped_total ? s->dropped : s->dropped_total;
        bound(s, 0, 0); /* the bounds of this configuration */
        /* Connected when the daemon stopped: its program is away from now on. */
        int64_t away = s->left_at ? wall - s->left_at : 0;
        if (!s->left_at) {
            s->left_at = wall;
            save(s);
        }
        double left = (double)s->expiry - (double)(away > 0 ? away : 0) / 1000.0;
        ev_timer_set(&s->expire, left > 0 ? left : 0.0, 0.0);
        ev_timer_start(d->loop, &s->expire);
        n++;
        kept += s->n_kept;
    }
    hashmap_free(&recovered, NULL);
    if (n) {
        log_info("spool: %zu sessions recovered, holding %zu messages", n, kept);
    }
}
