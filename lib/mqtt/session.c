/* SPDX-License-Identifier: MIT */
/*
 * The MQTT client session state machine: see session.h for the model.
 *
 * Requests never complete synchronously: session_publish/subscribe/unsubscribe only record
 * what is wanted, and session_tick() puts it on the wire. So the caller can batch many
 * requests into one write, and an event never arrives while the caller is still inside the
 * call that caused it.
 */
#include "mqtt/session.h"

#include <assert.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>

#include "mqtt/topic.h"

#define STABLE_MS           10000 /* a link up this long resets the reconnect backoff */
#define MIN_PING_TIMEOUT_MS 1000

/* ---- intrusive circular lists ---- */

typedef struct Link {
    struct Link *prev, *next;
} Link;

#define container_of(ptr, type, member) ((type *)((char *)(ptr)-offsetof(type, member)))
#define list_for_each_safe(pos, tmp, head)                                                         \
    for (pos = (head)->next, tmp = pos->next; pos != (head); pos = tmp, tmp = pos->next)

static void list_init(Link *h)
{
    h->prev = h->next = h;
}

static bool list_empty(const Link *h)
{
    return h->next == h;
}

static void list_insert_before(Link *at, Link *n)
{
    n->prev = at->prev;
    n->next = at;
    at->prev->next = n;
    at->prev = n;
}

static void list_push_back(Link *h, Link *n)
{
    list_insert_before(h, n);
}

static void list_remove(Link *n)
{
    n->prev->next = n->next;
    n->next->prev = n->prev;
    n->prev = n->next = n;
}

/* Move all of `from` to the front of `to`, keeping order. */
static void list_splice_front(Link *to, Link *from)
{
    if (list_empty(from)) {
        return;
    }
    Link *first = from->next, *last = from->prev;
    last->next = to->next;
    to->next->prev = last;
    to->next = first;
    first->prev = to;
    list_init(from);
}

/* ---- private state ---- */

struct SessionMsg {
    Link link;
    void *req;
    uint64_t spool_id;
    int64_t sent_at;
    size_t payload_len;
    uint16_t topic_len;
    uint16_t id; /* 0 until it goes on the wire */
    uint8_t qos;
    bool retain;
    bool got_pubrec; /* QoS 2: in the PUBREL phase */
    bool counted;    /* already counted in pub_fail */
    uint8_t data[];  /* topic, then payload */
};

enum pending_kind { P_SUBSCRIBE, P_UNSUBSCRIBE, P_BARRIER };

typedef struct Pending { /* a request waiting for SUBACK / UNSUBACK / PINGRESP, in order */
    Link link;
    void *req;
    uint16_t id; /* subscribe/unsubscribe: packet id while on the wire */
    uint8_t qos;
    enum pending_kind kind;
    bool sent;
    uint16_t len;
    uint8_t filter[];
} Pending;

typedef struct Ping { /* a PINGREQ on the wire; PINGRESPs come back in order */
    Link link;
    int64_t sent_at;
    Pending *barrier; /* NULL for a keepalive ping */
} Ping;

typedef struct Sub { /* a subscription the broker granted, restored after reconnects */
    Link link;
    uint8_t qos;
    uint16_t len;
    uint8_t filter[];
} Sub;

typedef struct Impl {
    Session pub;
    SessionConfig cfg;
    uint8_t *cfg_strings;
    SessionCallbacks cb;
    void *userdata;
    MqttDecoder dec;
    Link queue;    /* SessionMsg not yet sent, in order */
    Link inflight; /* SessionMsg sent, awaiting PUBACK / PUBREC / PUBCOMP, in order */
    Link pending;  /* Pending */
    Link subs;     /* Sub */
    Link pings;    /* Ping, oldest first */
    uint64_t ids_used[65536 / 64];
    size_t ids_in_use;
    uint64_t qos2_in[65536 / 64]; /* incoming QoS 2 ids between PUBREC and PUBREL */
    uint16_t next_id;
    unsigned attempts;
    bool ever_connected;
    int64_t attempt_started, last_tx, last_rx;
    uint64_t rng;
} Impl;

static Impl *impl(Session *s)
{
    return (Impl *)s;
}

const char *session_state_name(enum session_state st)
{
    static const char *const names[] = {"idle", "connecting", "connack_wait", "connected",
                                        "stopped"};
    return st <= SESSION_STOPPED ? names[st] : "?";
}

static bool bit_get(const uint64_t *set, uint16_t i)
{
    return set[i / 64] >> (i % 64) & 1;
}

static void bit_put(uint64_t *set, uint16_t i, bool on)
{
    if (on) {
        set[i / 64] |= UINT64_C(1) << (i % 64);
    } else {
        set[i / 64] &= ~(UINT64_C(1) << (i % 64));
    }
}

/* Mark a free id as in use. */
static void id_take(Impl *m, uint16_t id)
{
    assert(id && !bit_get(m->ids_used, id));
    bit_put(m->ids_used, id, true);
    m->ids_in_use++;
}

/* A free packet id, or 0 when all 65535 are in use (the caller waits for one to be freed). */
static uint16_t id_alloc(Impl *m)
{
    if (m->ids_in_use == 65535) {
        return 0;
    }
    do {
        m->next_id = m->next_id == 65535 ? 1 : m->next_id + 1;
    } while (bit_get(m->ids_used, m->next_id));
    id_take(m, m->next_id);
    return m->next_id;
}

static void id_release(Impl *m, uint16_t *id)
{
    if (*id) {
        assert(bit_get(m->ids_used, *id) && m->ids_in_use > 0);
        m->ids_in_use--;
        bit_put(m->ids_used, *id, false);
        *id = 0;
    }
}

static uint64_t rand64(Impl *m)
{
    /* xorshift64*: jitter only, no security purpose. */
    m->rng ^= m->rng >> 12;
    m->rng ^= m->rng << 25;
    m->rng ^= m->rng >> 27;
    return m->rng * UINT64_C(2685821657736338717);
}

static void emit(Impl *m, SessionEvent ev)
{
    m->cb.event(m->userdata, &ev);
}

/* ---- configuration ---- */

int session_configure(Session *s, const SessionConfig *cfg)
{
    Impl *m = impl(s);
    View *views[] = {(View *)&cfg->client_id, (View *)&cfg->username, (View *)&cfg->password,
                     (View *)&cfg->will_topic, (View *)&cfg->will_payload};
    size_t total = 0;
    for (size_t i = 0; i < 5; i++) {
        total += views[i]->n;
    }
    uint8_t *strings = malloc(total ? total : 1);
    if (!strings) {
        return -ENOMEM;
    }
    SessionConfig c = *cfg;
    View *mine[] = {&c.client_id, &c.username, &c.password, &c.will_topic, &c.will_payload};
    uint8_t *w = strings;
    for (size_t i = 0; i < 5; i++) {
        if (views[i]->n) {
            memcpy(w, views[i]->p, views[i]->n);
        }
        *mine[i] = VIEW(w, views[i]->n);
        w += views[i]->n;
    }
    if (c.max_inflight == 0) {
        c.max_inflight = 1;
    }
    if (c.max_inflight > 65000) {
        c.max_inflight = 65000; /* leaves packet ids for subscribe requests */
    }
    if (c.reconnect_min_ms < 1) {
        c.reconnect_min_ms = 1;
    }
    if (c.reconnect_max_ms < c.reconnect_min_ms) {
        c.reconnect_max_ms = c.reconnect_min_ms;
    }
    free(m->cfg_strings);
    m->cfg_strings = strings;
    m->cfg = c;
    m->dec.max_size = c.max_packet;
    return 0;
}

int session_new(const SessionConfig *cfg, const SessionCallbacks *cb, void *userdata, Session **ret)
{
    Impl *m = calloc(1, sizeof(*m));
    if (!m) {
        return -ENOMEM;
    }
    m->cb = *cb;
    m->userdata = userdata;
    list_init(&m->queue);
    list_init(&m->inflight);
    list_init(&m->pending);
    list_init(&m->subs);
    list_init(&m->pings);
    mqtt_decoder_init(&m->dec, cfg->max_packet);
    int r = session_configure(&m->pub, cfg);
    if (r < 0) {
        free(m);
        return r;
    }
    m->rng = cfg->seed ? cfg->seed : UINT64_C(0x9e3779b97f4a7c15);
    m->pub.state = SESSION_IDLE;
    m->pub.last_ping_rtt_ms = -1;
    *ret = &m->pub;
    return 0;
}

static void free_list(Link *h)
{
    Link *p, *t;
    list_for_each_safe(p, t, h)
    {
        free(p); /* Link is the first member of every element type */
    }
    list_init(h);
}

void session_free(Session *s)
{
    if (!s) {
        return;
    }
    Impl *m = impl(s);
    free_list(&m->queue);
    free_list(&m->inflight);
    free_list(&m->pending);
    free_list(&m->subs);
    free_list(&m->pings);
    mqtt_decoder_free(&m->dec);
    buf_free(&s->out);
    free(m->cfg_strings);
    free(m);
}

/* ---- output ---- */

/* A failed encode writes nothing. Everything but CONNECT was validated on the way in (topics,
 * filters, sizes against session_max_publish), so only -ENOMEM fails those; CONNECT's
 * fields come from the configuration (see session_transport_up). */
static int send_packet(Impl *m, const MqttPacket *pkt, int64_t now)
{
    size_t before = buf_mark(&m->pub.out);
    int r = mqtt_encode(&m->pub.out, pkt);
    if (r < 0) {
        assert(r == -ENOMEM || pkt->type == MQTT_CONNECT);
        return r;
    }
    size_t n = buf_mark(&m->pub.out) - before;
    m->pub.stats.packets_sent++;
    m->pub.stats.bytes_sent += n;
    if (pkt->type == MQTT_PUBLISH) {
        m->pub.stats.pub_bytes_sum += n;
        m->pub.stats.pub_bytes_n++;
    }
    m->last_tx = now;
    if (m->cb.trace) {
        m->cb.trace(m->userdata, true, pkt, VIEW(m->pub.out.data + m->pub.out.off + before, n));
    }
    return 0;
}

/* An acknowledgement lost to -ENOMEM is what a lost packet would be: the broker sends its
 * packet again after the next reconnect. */
static void send_ack(Impl *m, enum mqtt_type type, uint16_t id, int64_t now)
{
    MqttPacket p = {.type = type, .ack = {.id = id}};
    (void)send_packet(m, &p, now);
}

static int send_publish(Impl *m, SessionMsg *msg, bool dup, int64_t now)
{
    MqttPacket p = {.type = MQTT_PUBLISH,
                    .publish = {.topic = VIEW(msg->data, msg->topic_len),
                                .payload = VIEW(msg->data + msg->topic_len, msg->payload_len),
                                .id = msg->id,
                                .qos = msg->qos,
                                .dup = dup,
                                .retain = msg->retain}};
    msg->sent_at = now;
    return send_packet(m, &p, now);
}

static void send_ping(Impl *m, Pending *barrier, int64_t now)
{
    Ping *ping = malloc(sizeof(*ping));
    if (!ping) {
        return; /* a barrier then waits for the next link; keepalive retries at the next tick */
    }
    *ping = (Ping){.sent_at = now, .barrier = barrier};
    list_push_back(&m->pings, &ping->link);
    MqttPacket p = {.type = MQTT_PINGREQ};
    if (send_packet(m, &p, now) == 0) { /* if lost, the ping times out: the link is renewed */
        m->pub.stats.ping_sent++;
    }
    if (!barrier) {
        emit(m, (SessionEvent){.type = SESSION_EV_PING_SENT});
    }
}

static void send_pending(Impl *m, Pending *p, int64_t now)
{
    p->sent = true;
    if (p->kind == P_BARRIER) {
        send_ping(m, p, now);
        return;
    }
    MqttTopicReq t = {.filter = VIEW(p->filter, p->len), .qos = p->qos};
    p->id = id_alloc(m);
    if (!p->id) {
        p->sent = false; /* every id is in use: tried again once one is freed */
        return;
    }
    MqttPacket pkt = {.type = p->kind == P_UNSUBSCRIBE ? MQTT_UNSUBSCRIBE : MQTT_SUBSCRIBE,
                      .subscribe = {.id = p->id, .topics = &t, .count = 1}};
    if (send_packet(m, &pkt, now) < 0) {
        id_release(m, &p->id);
        p->sent = false; /* tried again at the next tick */
    }
}

/* ---- outgoing messages ---- */

static void msg_free(Impl *m, SessionMsg *msg, bool was_inflight)
{
    list_remove(&msg->link);
    id_release(m, &msg->id);
    if (was_inflight) {
        m->pub.inflight--;
    } else {
        m->pub.queued--;
    }
    m->pub.queued_bytes -= msg->topic_len + msg->payload_len;
    free(msg);
}

static void msg_complete(Impl *m, SessionMsg *msg, bool was_inflight, int64_t now)
{
    if (msg->qos > 0) {
        m->pub.stats.pub_rtt_sum_ms += (uint64_t)(now - msg->sent_at);
        m->pub.stats.pub_rtt_n++;
    }
    if (!msg->counted) {
        m->pub.stats.pub_ok++;
    }
    void *req = msg->req;
    uint64_t spool_id = msg->spool_id;
    msg_free(m, msg, was_inflight);
    if (req || spool_id) {
        emit(m, (SessionEvent){.type = SESSION_EV_PUBLISH_DONE,
                               .done = {.req = req, .spool_id = spool_id}});
    }
}

/* Send queued messages in order while the in-flight window allows. */
static void pump(Impl *m, int64_t now)
{
    while (m->pub.state == SESSION_CONNECTED && !list_empty(&m->queue)) {
        SessionMsg *msg = container_of(m->queue.next, SessionMsg, link);
        if (msg->qos == 0) {
            if (send_publish(m, msg, false, now) < 0) {
                return; /* out of memory: still queued, tried again at the next tick */
            }
            msg_complete(m, msg, false, now);
            continue;
        }
        if (m->pub.inflight >= m->cfg.max_inflight) {
            break;
        }
        msg->id = id_alloc(m);
        if (!msg->id) {
            break; /* every id is in use: an acknowledgement frees one */
        }
        if (send_publish(m, msg, false, now) < 0) {
            id_release(m, &msg->id);
            return;
        }
        if (msg->spool_id) {
            /* Recorded before the caller writes the bytes out: see SESSION_EV_PUBLISH_SENT. */
            emit(m, (SessionEvent){.type = SESSION_EV_PUBLISH_SENT,
                                   .sent = {.spool_id = msg->spool_id, .packet_id = msg->id}});
        }
        list_remove(&msg->link);
        list_push_back(&m->inflight, &msg->link);
        m->pub.queued--;
        m->pub.inflight++;
    }
}

static SessionMsg *find_inflight(Impl *m, uint16_t id, uint8_t qos)
{
    for (Link *l = m->inflight.next; l != &m->inflight; l = l->next) {
        SessionMsg *msg = container_of(l, SessionMsg, link);
        if (msg->id == id && msg->qos == qos) {
            return msg;
        }
    }
    return NULL;
}

size_t session_max_publish(const Session *s)
{
    (void)s;
    return MQTT_PACKET_MAX;
}

/* A message an earlier run had sent goes straight in flight under its old packet id. */
static int resume_inflight(Impl *m, SessionMsg *msg, const SessionPublish *p, int64_t now)
{
    if (p->qos == 0) {
        return -EINVAL;
    }
    if (bit_get(m->ids_used, p->packet_id)) {
        return -EEXIST;
    }
    id_take(m, p->packet_id);
    msg->id = p->packet_id;
    msg->sent_at = now;
    msg->got_pubrec = p->qos == 2 && p->pubrec;
    list_push_back(&m->inflight, &msg->link);
    m->pub.inflight++;
    return 0;
}

int session_publish(Session *s, const SessionPublish *p, void *req, int64_t now,
                    SessionMsg **ret_msg)
{
    Impl *m = impl(s);
    if (p->qos > 2 || mqtt_topic_check(p->topic) < 0) {
        return -EINVAL;
    }
    if (mqtt_publish_size(p->topic, p->payload.n, p->qos) > session_max_publish(s)) {
        s->stats.pub_fail++;
        return -EMSGSIZE;
    }
    size_t bytes = p->topic.n + p->payload.n;
    if (s->queued + s->inflight >= m->cfg.max_messages ||
        bytes > m->cfg.max_bytes -
                    (s->queued_bytes < m->cfg.max_bytes ? s->queued_bytes : m->cfg.max_bytes)) {
        s->stats.pub_fail++;
        return -ENOBUFS;
    }
    SessionMsg *msg = malloc(sizeof(*msg) + bytes);
    if (!msg) {
        return -ENOMEM;
    }
    *msg = (SessionMsg){.req = req,
                        .spool_id = p->spool_id,
                        .payload_len = p->payload.n,
                        .topic_len = (uint16_t)p->topic.n,
                        .qos = p->qos,
                        .retain = p->retain};
    memcpy(msg->data, p->topic.p, p->topic.n);
    if (p->payload.n) {
        memcpy(msg->data + p->topic.n, p->payload.p, p->payload.n);
    }
    if (p->packet_id) {
        int r = resume_inflight(m, msg, p, now);
        if (r < 0) {
            free(msg);
            return r;
        }
    } else {
        list_push_back(&m->queue, &msg->link);
        s->queued++;
    }
    s->queued_bytes += bytes;
    if (ret_msg) {
        *ret_msg = msg;
    }
    return 0;
}

void session_abandon(Session *s, SessionMsg *msg, bool failed)
{
    assert(msg);
    msg->req = NULL;
    if (failed && !msg->counted) {
        msg->counted = true;
        s->stats.pub_fail++;
    }
}

/* ---- subscriptions ---- */

static Sub *find_sub(Impl *m, View filter)
{
    for (Link *l = m->subs.next; l != &m->subs; l = l->next) {
        Sub *sub = container_of(l, Sub, link);
        if (view_eq(VIEW(sub->filter, sub->len), filter)) {
            return sub;
        }
    }
    return NULL;
}

static int add_pending(Impl *m, View filter, uint8_t qos, enum pending_kind kind, void *req)
{
    Pending *p = malloc(sizeof(*p) + filter.n);
    if (!p) {
        return -ENOMEM;
    }
    *p = (Pending){.req = req, .qos = qos, .kind = kind, .len = (uint16_t)filter.n};
    if (filter.n) {
        memcpy(p->filter, filter.p, filter.n);
    }
    list_push_back(&m->pending, &p->link);
    return 0;
}

/* An unsent request of `kind` for `filter` among those not yet on the wire (the tail of the
 * list: requests go out in order, only barriers wait behind answered ones). */
static Pending *find_unsent(Impl *m, View filter, enum pending_kind kind)
{
    for (Link *l = m->pending.prev; l != &m->pending; l = l->prev) {
        Pending *p = container_of(l, Pending, link);
        if (p->sent && p->kind != P_BARRIER) {
            break;
        }
        if (!p->sent && p->kind == kind && view_eq(VIEW(p->filter, p->len), filter)) {
            return p;
        }
    }
    return NULL;
}

int session_subscribe(Session *s, View filter, uint8_t qos, void *req, int64_t now)
{
    (void)now;
    if (qos > 2 || mqtt_filter_check(filter) < 0) {
        return -EINVAL;
    }
    /* Nobody waits for this one: an identical request not yet sent does the same job, so
     * repeating a subscribe while the broker is away does not pile up requests. */
    Pending *twin = req ? NULL : find_unsent(impl(s), filter, P_SUBSCRIBE);
    if (twin) {
        twin->qos = qos > twin->qos ? qos : twin->qos;
        return 0;
    }
    return add_pending(impl(s), filter, qos, P_SUBSCRIBE, req);
}

int session_barrier(Session *s, void *req)
{
    return add_pending(impl(s), VIEW_NULL, 0, P_BARRIER, req);
}

static void forget_sub(Impl *m, View filter)
{
    Sub *sub = find_sub(m, filter);
    if (sub) {
        list_remove(&sub->link);
        free(sub);
        m->pub.subscriptions--;
    }
}

int session_unsubscribe(Session *s, View filter, void *req, int64_t now)
{
    (void)now;
    Impl *m = impl(s);
    if (mqtt_filter_check(filter) < 0) {
        return -EINVAL;
    }
    forget_sub(m, filter);
    return add_pending(m, filter, 0, P_UNSUBSCRIBE, req);
}

void session_restore_incoming(Session *s, const uint64_t *held)
{
    memcpy(impl(s)->qos2_in, held, sizeof(impl(s)->qos2_in));
}

void session_forget_req(Session *s, void *req)
{
    Impl *m = impl(s);
    for (Link *l = m->pending.next; l != &m->pending; l = l->next) {
        Pending *p = container_of(l, Pending, link);
        if (p->req == req) {
            p->req = NULL;
        }
    }
}

static void remember_sub(Impl *m, View filter, uint8_t qos)
{
    Sub *sub = find_sub(m, filter);
    if (sub) {
        sub->qos = qos;
        return;
    }
    sub = malloc(sizeof(*sub) + filter.n);
    if (!sub) {
        return; /* not restored after a reconnect; the subscription itself stands */
    }
    *sub = (Sub){.qos = qos, .len = (uint16_t)filter.n};
    memcpy(sub->filter, filter.p, filter.n);
    list_push_back(&m->subs, &sub->link);
    m->pub.subscriptions++;
}

static void pending_done(Impl *m, Pending *p, int result)
{
    static const enum session_event_type done[] = {
        [P_SUBSCRIBE] = SESSION_EV_SUBSCRIBE_DONE,
        [P_UNSUBSCRIBE] = SESSION_EV_UNSUBSCRIBE_DONE,
        [P_BARRIER] = SESSION_EV_BARRIER_DONE,
    };
    void *req = p->req;
    enum pending_kind kind = p->kind;
    list_remove(&p->link);
    id_release(m, &p->id);
    free(p);
    if (req) {
        emit(m, (SessionEvent){.type = done[kind], .done = {.req = req, .result = result}});
    }
}

/* Put unsent requests on the wire (or settle them offline). A barrier waits until every
 * request before it is answered (see session_barrier). */
static void flush_pending(Impl *m, int64_t now)
{
    Link *l, *t;
    bool unanswered = false; /* a subscribe/unsubscribe before this point is still open */
    list_for_each_safe(l, t, &m->pending)
    {
        Pending *p = container_of(l, Pending, link);
        bool blocked = p->kind == P_BARRIER && unanswered;
        unanswered |= p->kind != P_BARRIER;
        if (p->sent || blocked) {
            continue;
        }
        if (m->pub.state == SESSION_CONNECTED) {
            send_pending(m, p, now);
        } else if (p->kind == P_UNSUBSCRIBE && m->cfg.clean_session &&
                   !find_unsent(m, VIEW(p->filter, p->len), P_SUBSCRIBE)) {
            /* The broker forgets every subscription of a clean session at the next
             * connect: nothing to tell it - unless a SUBSCRIBE of the same filter is still
             * to go out, which this UNSUBSCRIBE must follow. */
            pending_done(m, p, 0);
        }
    }
}

static Pending *find_pending(Impl *m, uint16_t id, enum pending_kind kind)
{
    for (Link *l = m->pending.next; l != &m->pending; l = l->next) {
        Pending *p = container_of(l, Pending, link);
        if (p->sent && p->id == id && p->kind == kind) {
            return p;
        }
    }
    return NULL;
}

/* ---- link state ---- */

static int64_t backoff_ms(Impl *m)
{
    int64_t d = m->cfg.reconnect_min_ms;
    for (unsigned i = 0; i < m->attempts && d < m->cfg.reconnect_max_ms; i++) {
        d *= 2;
    }
    if (d > m->cfg.reconnect_max_ms) {
        d = m->cfg.reconnect_max_ms;
    }
    /* Jitter in [d/2, d], so a fleet restarted together does not reconnect together. */
    return d / 2 + (int64_t)(rand64(m) % (uint64_t)(d / 2 + 1));
}

static void link_down(Impl *m, int64_t now, int code, bool refused, const char *reason)
{
    Session *s = &m->pub;
    if (s->state == SESSION_IDLE || s->state == SESSION_STOPPED) {
        return;
    }
    bool was_connected = s->state == SESSION_CONNECTED;
    if (!was_connected && code) {
        s->stats.connections_failed++;
    }
    if (code) {
        snprintf(s->last_error, sizeof(s->last_error), "%s", reason);
    }
    if (was_connected && now - s->connected_at >= STABLE_MS) {
        m->attempts = 0;
    }
    s->state = SESSION_IDLE;
    s->retry_at = now + backoff_ms(m);
    m->attempts++;
    free_list(&m->pings);
    buf_clear(&m->dec.in);
    /* Requests on the wire are sent again on the next link. */
    for (Link *l = m->pending.next; l != &m->pending; l = l->next) {
        Pending *p = container_of(l, Pending, link);
        id_release(m, &p->id);
        p->sent = false;
    }
    emit(m, (SessionEvent){.type = SESSION_EV_LINK_DOWN,
                           .down = {reason, code, refused, was_connected}});
    buf_clear(&s->out); /* the caller has written what it could */
}

bool session_should_connect(Session *s, int64_t now)
{
    Impl *m = impl(s);
    if (s->state != SESSION_IDLE || now < s->retry_at) {
        return false;
    }
    s->state = SESSION_CONNECTING;
    s->phase[0] = '\0';
    m->attempt_started = now;
    s->stats.connections_sent++;
    return true;
}

void session_transport_up(Session *s, int64_t now)
{
    Impl *m = impl(s);
    if (s->state != SESSION_CONNECTING) {
        return;
    }
    const SessionConfig *c = &m->cfg;
    MqttPacket p = {.type = MQTT_CONNECT,
                    .connect = {.client_id = c->client_id,
                                .username = c->username,
                                .password = c->password,
                                .has_username = c->has_username,
                                .has_password = c->has_password && c->has_username,
                                .will = c->will,
                                .will_topic = c->will_topic,
                                .will_payload = c->will_payload,
                                .will_qos = c->will_qos,
                                .will_retain = c->will_retain,
                                .keepalive = c->keepalive,
                                .clean_session = c->clean_session}};
    buf_clear(&s->out);
    buf_clear(&m->dec.in);
    s->state = SESSION_CONNACK_WAIT;
    snprintf(s->phase, sizeof(s->phase), "waiting for CONNACK");
    m->last_rx = now;
    int r = send_packet(m, &p, now);
    if (r < 0) {
        /* The configuration is checked (config_check), so this is memory, or a field that
         * slipped past the checks: either way the attempt ends with the reason. */
        char reason[120];
        snprintf(reason, sizeof(reason), "cannot encode CONNECT: %s", mqtt_strerror(r));
        link_down(m, now, r == -ENOMEM ? ENOMEM : EINVAL, false, reason);
    }
}

void session_set_phase(Session *s, const char *phase)
{
    snprintf(s->phase, sizeof(s->phase), "%s", phase);
}

void session_transport_down(Session *s, int64_t now, int code, const char *reason)
{
    link_down(impl(s), now, code ? code : ECONNRESET, false, reason);
}

static void connected(Impl *m, bool session_present, int64_t now)
{
    Session *s = &m->pub;
    s->state = SESSION_CONNECTED;
    s->session_present = session_present;
    s->connected_at = now;
    s->last_error[0] = '\0';
    if (m->ever_connected) {
        s->stats.reconnects++;
    }
    m->ever_connected = true;

    Link *l, *t;
    if (session_present) {
        /* [MQTT-4.4.0-1]: re-send unacknowledged PUBLISH and PUBREL with their ids. */
        for (l = m->inflight.next; l != &m->inflight; l = l->next) {
            SessionMsg *msg = container_of(l, SessionMsg, link);
            if (msg->got_pubrec) {
                send_ack(m, MQTT_PUBREL, msg->id, now);
            } else {
                send_publish(m, msg, true, now);
            }
        }
    } else {
        memset(m->qos2_in, 0, sizeof(m->qos2_in));
        /* A new session knows none of our in-flight messages. A QoS 2 message past PUBREC
         * was already accepted by the broker; everything else goes out again, first. */
        list_for_each_safe(l, t, &m->inflight)
        {
            SessionMsg *msg = container_of(l, SessionMsg, link);
            if (msg->got_pubrec) {
                msg_complete(m, msg, true, now);
            } else {
                id_release(m, &msg->id);
            }
        }
        s->queued += s->inflight;
        s->inflight = 0;
        list_splice_front(&m->queue, &m->inflight);
        /* Restore the subscriptions, ahead of any request made meanwhile. */
        for (l = m->subs.prev; l != &m->subs; l = l->prev) {
            Sub *sub = container_of(l, Sub, link);
            if (add_pending(m, VIEW(sub->filter, sub->len), sub->qos, P_SUBSCRIBE, NULL) == 0) {
                Link *p = m->pending.prev;
                list_remove(p);
                list_insert_before(m->pending.next, p);
            }
        }
    }
    emit(m, (SessionEvent){.type = SESSION_EV_CONNECTED, .connected = {session_present}});
    /* Subscriptions first, then the queue. */
    flush_pending(m, now);
    pump(m, now);
}

static void protocol_error(Impl *m, int64_t now, int code, const char *what)
{
    char reason[200];
    snprintf(reason, sizeof(reason), "protocol error from broker: %s", what);
    link_down(m, now, code, false, reason);
}

static void handle_publish(Impl *m, const MqttPublish *p, int64_t now)
{
    Session *s = &m->pub;
    bool deliver = true;
    if (p->qos == 2) {
        deliver = !bit_get(m->qos2_in, p->id);
        bit_put(m->qos2_in, p->id, true);
        if (!deliver) {
            s->stats.duplicates_dropped++;
        }
    }
    if (deliver) {
        s->stats.messages_received++;
        emit(m, (SessionEvent){.type = SESSION_EV_MESSAGE, .message = p});
        if (p->qos == 2) {
            emit(m, (SessionEvent){.type = SESSION_EV_QOS2_HELD, .packet_id = p->id});
        }
    }
    if (p->qos == 1) {
        send_ack(m, MQTT_PUBACK, p->id, now);
    } else if (p->qos == 2) {
        send_ack(m, MQTT_PUBREC, p->id, now);
    }
}

static void suback(Impl *m, Pending *p, uint8_t code)
{
    View filter = VIEW(p->filter, p->len);
    if (code != MQTT_SUBACK_FAILURE) {
        remember_sub(m, filter, p->qos);
        pending_done(m, p, code);
        return;
    }
    if (!p->req && find_sub(m, filter)) {
        /* A restore the broker now refuses: forgotten, and said so, so that the local
         * holders do not go on believing they hold it. */
        forget_sub(m, filter);
        m->pub.stats.subscriptions_lost++;
        emit(m, (SessionEvent){.type = SESSION_EV_SUBSCRIPTION_LOST,
                               .lost = {.filter = filter, .code = code}});
    }
    pending_done(m, p, -EPERM);
}

/* Barriers become due when every request before them is answered: after an answer only the
 * barriers at the head of the list can be. */
static void send_due_barriers(Impl *m, int64_t now)
{
    Link *l, *t;
    list_for_each_safe(l, t, &m->pending)
    {
        Pending *p = container_of(l, Pending, link);
        if (p->kind != P_BARRIER) {
            return;
        }
        if (!p->sent) {
            send_pending(m, p, now);
        }
    }
}

/* PUBACK, PUBREC, PUBCOMP (our messages) and PUBREL (the broker's). */
static void handle_pub_ack(Impl *m, const MqttPacket *pkt, int64_t now)
{
    uint16_t id = pkt->ack.id;
    SessionMsg *msg =
        pkt->type == MQTT_PUBREL ? NULL : find_inflight(m, id, pkt->type == MQTT_PUBACK ? 1 : 2);
    switch (pkt->type) {
    case MQTT_PUBACK:
        if (msg) {
            msg_complete(m, msg, true, now);
        }
        break;
    case MQTT_PUBREC:
        if (msg && !msg->got_pubrec) {
            msg->got_pubrec = true;
            if (msg->spool_id) {
                emit(m, (SessionEvent){.type = SESSION_EV_PUBREC,
                                       .sent = {.spool_id = msg->spool_id, .packet_id = id}});
            }
        }
        /* Answered even when unknown, so the broker can finish its side. */
        send_ack(m, MQTT_PUBREL, id, now);
        break;
    case MQTT_PUBCOMP:
        if (msg && msg->got_pubrec) {
            msg_complete(m, msg, true, now);
        }
        break;
    default: /* MQTT_PUBREL */
        if (bit_get(m->qos2_in, id)) {
            bit_put(m->qos2_in, id, false);
            emit(m, (SessionEvent){.type = SESSION_EV_QOS2_RELEASED, .packet_id = id});
        }
        send_ack(m, MQTT_PUBCOMP, id, now);
        break;
    }
}

static void handle_sub_ack(Impl *m, const MqttPacket *pkt, int64_t now)
{
    if (pkt->type == MQTT_SUBACK) {
        Pending *p = find_pending(m, pkt->suback.id, P_SUBSCRIBE);
        if (p) {
            suback(m, p, pkt->suback.codes.p[0]);
        }
    } else {
        Pending *p = find_pending(m, pkt->suback.id, P_UNSUBSCRIBE);
        if (p) {
            /* A SUBSCRIBE answered after this UNSUBSCRIBE was asked for remembered the
             * filter again; the broker has processed both, in order. */
            forget_sub(m, VIEW(p->filter, p->len));
            pending_done(m, p, 0);
        }
    }
    send_due_barriers(m, now);
}

static void handle_pingresp(Impl *m, int64_t now)
{
    Session *s = &m->pub;
    if (list_empty(&m->pings)) {
        return;
    }
    Ping *ping = container_of(m->pings.next, Ping, link);
    int64_t rtt = now - ping->sent_at;
    Pending *barrier = ping->barrier;
    list_remove(&ping->link);
    free(ping);
    s->stats.ping_received++;
    s->stats.ping_rtt_sum_ms += (uint64_t)rtt;
    s->last_ping_rtt_ms = rtt;
    if (barrier) {
        pending_done(m, barrier, 0);
    } else {
        emit(m, (SessionEvent){.type = SESSION_EV_PING_ANSWERED, .ping = {rtt}});
    }
}

static void handle_packet(Impl *m, const MqttPacket *pkt, int64_t now)
{
    Session *s = &m->pub;
    if (pkt->type != MQTT_CONNACK && s->state != SESSION_CONNECTED) {
        protocol_error(m, now, MQTT_E_TYPE, "packet before CONNACK");
        return;
    }
    switch (pkt->type) {
    case MQTT_CONNACK:
        if (s->state != SESSION_CONNACK_WAIT) {
            protocol_error(m, now, MQTT_E_TYPE, "unexpected CONNACK");
        } else if (pkt->connack.rc != MQTT_CONNACK_ACCEPTED) {
            char reason[120];
            snprintf(reason, sizeof(reason), "connection refused: %s",
                     mqtt_connack_str(pkt->connack.rc));
            link_down(m, now, pkt->connack.rc, true, reason);
        } else {
            connected(m, pkt->connack.session_present, now);
        }
        break;
    case MQTT_PUBLISH:
        s->stats.sub_bytes_sum += pkt->size;
        s->stats.sub_bytes_n++;
        handle_publish(m, &pkt->publish, now);
        break;
    case MQTT_PUBACK:
    case MQTT_PUBREC:
    case MQTT_PUBCOMP:
    case MQTT_PUBREL:
        handle_pub_ack(m, pkt, now);
        break;
    case MQTT_SUBACK:
    case MQTT_UNSUBACK:
        handle_sub_ack(m, pkt, now);
        break;
    case MQTT_PINGRESP:
        handle_pingresp(m, now);
        break;
    default: {
        char what[64];
        snprintf(what, sizeof(what), "unexpected %s", mqtt_type_name(pkt->type));
        protocol_error(m, now, MQTT_E_TYPE, what);
        break;
    }
    }
}

void session_input(Session *s, const void *data, size_t n, int64_t now)
{
    Impl *m = impl(s);
    if (s->state != SESSION_CONNACK_WAIT && s->state != SESSION_CONNECTED) {
        return;
    }
    if (mqtt_decoder_feed(&m->dec, data, n) < 0) {
        link_down(m, now, ENOMEM, false, "out of memory reading from broker");
        return;
    }
    m->last_rx = now;
    MqttPacket pkt;
    int r;
    while ((s->state == SESSION_CONNACK_WAIT || s->state == SESSION_CONNECTED) &&
           (r = mqtt_decoder_next(&m->dec, &pkt)) != 0) {
        if (r < 0) {
            protocol_error(m, now, -r, mqtt_strerror(r));
            return;
        }
        s->stats.packets_received++;
        s->stats.bytes_received += pkt.size;
        if (m->cb.trace) {
            m->cb.trace(m->userdata, false, &pkt, m->dec.last);
        }
        handle_packet(m, &pkt, now);
    }
}

static int64_t min64(int64_t a, int64_t b)
{
    return a < b ? a : b;
}

int64_t session_tick(Session *s, int64_t now)
{
    Impl *m = impl(s);
    switch (s->state) {
    case SESSION_IDLE:
        flush_pending(m, now);
        return s->retry_at;
    case SESSION_CONNECTING:
    case SESSION_CONNACK_WAIT: {
        int64_t deadline = m->attempt_started + m->cfg.connect_timeout_ms;
        if (now >= deadline) {
            char reason[240];
            snprintf(reason, sizeof(reason), "connect timeout (%lld ms)%s%s",
                     (long long)m->cfg.connect_timeout_ms, s->phase[0] ? ": " : "", s->phase);
            link_down(m, now, ETIMEDOUT, false, reason);
            return s->retry_at;
        }
        return deadline;
    }
    case SESSION_CONNECTED:
        break;
    default:
        return INT64_MAX;
    }

    flush_pending(m, now);
    pump(m, now);
    if (m->cfg.keepalive == 0) {
        return INT64_MAX;
    }
    int64_t ka = (int64_t)m->cfg.keepalive * 1000;
    int64_t ping_timeout = ka / 2 > MIN_PING_TIMEOUT_MS ? ka / 2 : MIN_PING_TIMEOUT_MS;
    char reason[80];
    int64_t ping_sent_at =
        list_empty(&m->pings) ? 0 : container_of(m->pings.next, Ping, link)->sent_at;
    if (ping_sent_at && now - ping_sent_at >= ping_timeout) {
        snprintf(reason, sizeof(reason), "no PINGRESP within %lld ms", (long long)ping_timeout);
        link_down(m, now, ETIMEDOUT, false, reason);
        return s->retry_at;
    }
    if (now - m->last_rx >= ka * 3 / 2) {
        snprintf(reason, sizeof(reason), "broker silent for %lld ms",
                 (long long)(now - m->last_rx));
        link_down(m, now, ETIMEDOUT, false, reason);
        return s->retry_at;
    }
    if (!ping_sent_at && now - m->last_tx >= ka) {
        send_ping(m, NULL, now);
        ping_sent_at = now;
    }
    int64_t next = m->last_rx + ka * 3 / 2;
    if (ping_sent_at) {
        next = min64(next, ping_sent_at + ping_timeout);
    } else {
        next = min64(next, m->last_tx + ka);
    }
    return next;
}

void session_reconnect_now(Session *s, int64_t now)
{
    Impl *m = impl(s);
    if (s->state == SESSION_STOPPED) {
        return;
    }
    if (s->state == SESSION_CONNECTED) {
        MqttPacket p = {.type = MQTT_DISCONNECT};
        (void)send_packet(m, &p, now); /* best effort: the link goes down next */
    }
    link_down(m, now, 0, false, "reconnect requested");
    m->attempts = 0;
    s->retry_at = now;
}

void session_disconnect(Session *s, int64_t now)
{
    Impl *m = impl(s);
    if (s->state == SESSION_CONNECTED) {
        MqttPacket p = {.type = MQTT_DISCONNECT};
        (void)send_packet(m, &p, now); /* best effort: the link goes down next */
    }
    link_down(m, now, 0, false, "shutting down");
    s->state = SESSION_STOPPED;
}
