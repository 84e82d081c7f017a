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
    int64_t at; /* when it came (ms), for the oldest pending age */
    bool sent;  /* written to a connection of the session: the next is a redelivery */
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
};

static Buf scratch; /* one event line at a time */

void sessions_init(Daemon *d)
{
    hashmap_init(&d->sessions);
}

static void drop_kept(LocalSession *s, Kept *k)
{
    if (s->unsent == &k->link) {
        s->unsent = k->link.next;
    }
    s->kept_bytes -= k->topic_len + k->payload_len + k->props_len;
    s->n_kept--;
    dlist_remove(&k->link);
    free(k);
}

static void free_kept(LocalSession *s)
{
    while (!dlist_empty(&s->kept)) {
        drop_kept(s, container_of(s->kept.next, Kept, link));
    }
}

/* The session ends: its subscriptions (and the broker's behind them, when it held them last)
 * and what it kept go. Its client, if any, was detached first. */
static void end_session(LocalSession *s, const char *why)
{
    Daemon *d = s->d;
    assert(!s->client);
    log_info("session %s (uid %u) ends: %s", s->name, (unsigned)s->holder.uid, why);
    ev_timer_stop(d->loop, &s->expire);
    subs_holder_clear(d, &s->holder);
    free_kept(s);
    (void)hashmap_remove(&d->sessions, VIEW_STR(s->name));
    free(s->name);
    free(s);
}

static void free_session(void *p)
{
    LocalSession *s = p;
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
    if (c->session) {
        detach(c->session);
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
static void bound(LocalSession *s, size_t more, size_t bytes)
{
    const Config *cfg = &s->d->cfg;
    while (s->n_kept && (s->n_kept + more > cfg->sessions.max_messages ||
                         s->kept_bytes + bytes > cfg->sessions.max_bytes)) {
        drop_kept(s, container_of(s->kept.next, Kept, link));
        s->dropped++;
        s->dropped_total++;
        s->d->stats.messages_dropped++;
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
        s->dropped++;
        s->dropped_total++;
        d->stats.messages_dropped++;
        log_warning("session %s: a %zu-byte message is larger than [sessions] max_bytes: "
                    "dropped",
                    s->name, bytes);
        return;
    }
    bound(s, 1, bytes);
    Kept *k = malloc(sizeof(*k) + bytes);
    if (!k) {
        s->dropped++;
        s->dropped_total++;
        return;
    }
    *k = (Kept){.seq = s->next_seq++,
                .at = now_ms(),
                .qos = qos,
                .retain = m->retain,
                .base64 = t->base64,
                .topic_len = (uint32_t)m->topic.n,
                .payload_len = (uint32_t)m->payload.n,
                .props_len = (uint32_t)props->raw.n};
    uint8_t *w = k->data;
    memcpy(w, m->topic.p, m->topic.n);
    if (m->payload.n) {
        memcpy(w + m->topic.n, m->payload.p, m->payload.n);
    }
    if (props->raw.n) {
        memcpy(w + m->topic.n + m->payload.n, props->raw.p, props->raw.n);
    }
    dlist_push(&s->kept, &k->link);
    if (s->unsent == &s->kept) { /* its connection had all the others */
        s->unsent = &k->link;
    }
    s->n_kept++;
    s->kept_bytes += bytes;
    pump(s);
}

/* ---- the ops ---- */

static LocalSession *create(Client *c, Request *r)
{
    Daemon *d = c->d;
    LocalSession *s = calloc(1, sizeof(*s));
    char *name = s ? strndup((const char *)r->name.p, r->name.n) : NULL;
    if (!name || hashmap_put(&d->sessions, r->name, s) < 0) {
        free(name);
        free(s);
        return NULL;
    }
    s->holder = (SubHolder){.target = {.kind = TARGET_SESSION}, .uid = c->conn.uid};
    hashmap_init(&s->holder.subs);
    s->d = d;
    s->name = name;
    s->next_seq = 1;
    s->kept.prev = s->kept.next = &s->kept;
    s->unsent = &s->kept;
    ev_timer_init(&s->expire, on_expire, 0.0, 0.0);
    log_info("session %s made by uid %u", name, (unsigned)c->conn.uid);
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
    detach_quietly(s);
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
    if (resumed && (!access_recheck_subs(c) || c->conn.closed)) {
        return; /* c was closed (out of memory): the session goes on without it */
    }
    forget_unheld(s);
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
