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
#include <sys/types.h>

#include "defaults.h"
#include "mqtt/alias.h"
#include "mqtt/mount.h"
#include "mqtt/topic.h"
#include "spares.h"

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
    bool got_pubrec;    /* QoS 2: in the PUBREL phase */
    uint8_t rec_reason; /* MQTT 5: the PUBREC's reason (0x10 is reported at PUBCOMP) */
    bool on_wire;       /* in flight and sent on this link (a resumed one waits its turn) */
    bool counted;       /* already counted in pub_fail */
    bool props_dropped; /* MQTT 5 properties left out on a 3.1.1 link (counted once) */
    bool spare;         /* room for SPARE_BYTES: goes back to Impl.spare when done */
    int64_t expires_at; /* MQTT 5 Message Expiry, on the session's clock; 0 = none */
    uint32_t props_len; /* its properties but Message Expiry, encoded, after the payload */
    uint8_t data[];     /* topic, then payload, then properties */
};

static View msg_topic(const SessionMsg *msg)
{
    return VIEW(msg->data, msg->topic_len);
}

static View msg_props(const SessionMsg *msg)
{
    return VIEW(msg->data + msg->topic_len + msg->payload_len, msg->props_len);
}

/* What the message's MQTT 5 properties add to its payload when measuring its PUBLISH: their
 * bytes, Message Expiry's 5, and up to 3 more for a longer property length. */
static size_t props_extra(uint32_t props_len, bool expires)
{
    size_t n = props_len + (expires ? 5 : 0);
    return n ? n + 3 : 0;
}

enum pending_kind { P_SUBSCRIBE, P_UNSUBSCRIBE, P_BARRIER };

/* MQTT 5 subscription options as SessionSubscribe gives them, kept in one byte. */
enum { SUB_NO_LOCAL = 1, SUB_RAP = 2, SUB_RH_SHIFT = 2 };

static uint8_t sub_opts(const SessionSubscribe *s)
{
    return (uint8_t)((s->no_local ? SUB_NO_LOCAL : 0) | (s->retain_as_published ? SUB_RAP : 0) |
                     (s->retain_handling & 3) << SUB_RH_SHIFT);
}

typedef struct Pending { /* a request waiting for SUBACK / UNSUBACK / PINGRESP, in order */
    Link link;
    void *req;
    uint16_t id; /* subscribe/unsubscribe: packet id while on the wire */
    uint8_t qos;
    uint32_t subid; /* subscribe: MQTT 5 subscription identifier, 0 = none */
    uint8_t opts;   /* subscribe: MQTT 5 options (SUB_*) */
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
    uint8_t qos, opts;
    uint32_t subid;
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
    Spares spare;  /* SessionMsg done with, kept for the next small one */
    uint64_t ids_used[65536 / 64];
    size_t ids_in_use;
    uint64_t qos2_in[65536 / 64]; /* incoming QoS 2 ids between PUBREC and PUBREL */
    size_t on_wire;               /* in-flight messages sent on this link */
    uint16_t next_id;
    unsigned attempts;
    bool ever_connected;
    int64_t attempt_started, last_tx, last_rx;
    uint64_t rng;
    /* MQTT 5 */
    bool fell_back;     /* AUTO met a broker that refused version 5: 3.1.1 until reconfigured */
    bool redirect;      /* server_reference is for the next connect (session_redirect) */
    int down_reason;    /* the broker's DISCONNECT reason code for the next LINK_DOWN, or -1 */
    uint16_t keepalive; /* of this link: ours, or the broker's Server Keep Alive */
    AliasOut alias_out;
    AliasIn alias_in;
    int64_t next_expiry;        /* the earliest expires_at in the queue (maybe passed), 0 = none */
    Buf mounted, mounted_props; /* a topic (filter) and a property block as the broker sees them */
    double tokens, byte_tokens; /* the publish rate limit's buckets ... */
    int64_t refilled_at;        /* ... as of then */
    int64_t rate_wake;          /* when enough tokens are there again (while limited) */
} Impl;

static Impl *impl(Session *s)
{
    return (Impl *)s;
}

const uint32_t session_rtt_bounds_ms[SESSION_RTT_BUCKETS] = {1,   2,   5,   10,   25,   50,
                                                             100, 250, 500, 1000, 2500, 5000};

int64_t session_rtt_quantile(const uint64_t *hist, double q)
{
    uint64_t total = 0, seen = 0;
    for (size_t i = 0; i <= SESSION_RTT_BUCKETS; i++) {
        total += hist[i];
    }
    if (!total) {
        return -1;
    }
    for (size_t i = 0; i < SESSION_RTT_BUCKETS; i++) {
        seen += hist[i];
        if ((double)seen >= q * (double)total) {
            return session_rtt_bounds_ms[i];
        }
    }
    return INT64_MAX;
}

static void count_rtt(uint64_t *hist, int64_t ms)
{
    size_t i = 0;
    while (i < SESSION_RTT_BUCKETS && ms > (int64_t)session_rtt_bounds_ms[i]) {
        i++;
    }
    hist[i]++;
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
    const View *views[] = {&cfg->client_id,  &cfg->username,     &cfg->password,
                           &cfg->will_topic, &cfg->will_payload, &cfg->will_content_type};
    enum { N_STRINGS = sizeof(views) / sizeof(views[0]) };
    size_t total = 0;
    for (size_t i = 0; i < N_STRINGS; i++) {
        total += views[i]->n;
    }
    uint8_t *strings = malloc(total ? total : 1);
    if (!strings) {
        return -ENOMEM;
    }
    SessionConfig c = *cfg;
    View *mine[] = {&c.client_id,  &c.username,     &c.password,
                    &c.will_topic, &c.will_payload, &c.will_content_type};
    uint8_t *w = strings;
    for (size_t i = 0; i < N_STRINGS; i++) {
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
    if (c.receive_maximum == 0) {
        c.receive_maximum = 65535;
    }
    free(m->cfg_strings);
    m->cfg_strings = strings;
    m->cfg = c;
    m->dec.max_size = c.max_packet;
    m->fell_back = false; /* AUTO tries 5 again */
    return 0;
}

/* What the standard assumes when the CONNACK says nothing (and for 3.1.1). */
static SessionLimits default_limits(void)
{
    return (SessionLimits){.receive_maximum = 65535,
                           .maximum_qos = 2,
                           .retain_available = true,
                           .wildcard_available = true,
                           .subscription_ids_available = true,
                           .shared_available = true,
                           .server_keep_alive = -1};
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
    m->down_reason = -1;
    m->pub.limits = default_limits();
    alias_out_init(&m->alias_out);
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
    spares_free(&m->spare);
    mqtt_decoder_free(&m->dec);
    buf_free(&s->out);
    free(m->cfg_strings);
    buf_free(&m->mounted);
    buf_free(&m->mounted_props);
    alias_out_free(&m->alias_out);
    alias_in_free(&m->alias_in);
    free(s->assigned_client_id);
    free(s->response_information);
    free(m);
}

/* ---- output ---- */

/* A local topic or filter as the broker sees it ([topics] mount) into *ret: m->mounted, or
 * `local`. -E2BIG (a topic the mount point makes too long: the daemon checks before taking
 * one, but a spooled message may predate the mount point) or -ENOMEM: nothing is sent. */
static int mount_out(Impl *m, View local, bool filter, View *ret)
{
    int r = mqtt_mount_out(m->cfg.mount, local, filter, &m->mounted);
    *ret = r == 1 ? buf_view(&m->mounted) : local;
    return r < 0 ? r : 0;
}

/* How many bytes [topics] mount adds to a PUBLISH of `topic` with the MQTT 5 property block
 * `props` (its Response Topic too); -E2BIG or -ENOMEM as mount_out. */
static ssize_t mount_growth(Impl *m, View topic, View props)
{
    if (!mqtt_mount_active(m->cfg.mount)) {
        return 0;
    }
    View t;
    int r = mount_out(m, topic, false, &t);
    if (r < 0) {
        return r;
    }
    size_t n = t.n - topic.n;
    if (props.n && m->pub.protocol == MQTT_V5) {
        r = mqtt_mount_props(m->cfg.mount, props, true, &m->mounted_props);
        if (r < 0) {
            return r;
        }
        n += r == 1 ? buf_view(&m->mounted_props).n - props.n : 0;
    }
    return (ssize_t)n;
}

/* A failed encode writes nothing. Everything but CONNECT was validated on the way in (topics,
 * filters, sizes against session_max_publish), so only -ENOMEM fails those; CONNECT's
 * fields come from the configuration (see session_transport_up). The packet goes out in the
 * link's protocol version. */
static int send_packet(Impl *m, MqttPacket *pkt, int64_t now)
{
    pkt->version = m->pub.protocol;
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
    int r = mount_out(m, p.publish.topic, false, &p.publish.topic);
    if (r < 0) {
        return r;
    }
    msg->sent_at = now;
    if (m->pub.protocol == MQTT_V5) {
        p.props.block = msg_props(msg);
        r = mqtt_mount_props(m->cfg.mount, p.props.block, true, &m->mounted_props);
        if (r < 0) {
            return r;
        }
        if (r == 1) {
            p.props.block = buf_view(&m->mounted_props); /* its Response Topic, mounted */
        }
        if (msg->expires_at) { /* what remains, rounded up: at least a second */
            int64_t left = msg->expires_at - now;
            MQTT_SET(&p.props, MQTT_PROP_MESSAGE_EXPIRY);
            p.props.message_expiry = left > 1000 ? (uint32_t)((left + 999) / 1000) : 1;
        }
    } else if ((msg->props_len || msg->expires_at) && !msg->props_dropped) {
        msg->props_dropped = true;
        m->pub.stats.properties_dropped++;
        emit(m, (SessionEvent){.type = SESSION_EV_PROPERTIES_DROPPED});
    }
    uint16_t alias;
    int known =
        m->pub.protocol == MQTT_V5 ? alias_out_get(&m->alias_out, p.publish.topic, &alias) : -1;
    if (known >= 0) {
        MQTT_SET(&p.props, MQTT_PROP_TOPIC_ALIAS);
        p.props.topic_alias = alias;
        if (known) { /* the broker knows it: two bytes instead of the topic */
            p.publish.topic = VIEW(NULL, 0);
        }
    }
    r = send_packet(m, &p, now);
    if (r < 0 && known == 0) {
        /* The broker never learnt that alias: start over (setting an alias again is fine). */
        (void)alias_out_reset(&m->alias_out, m->alias_out.max);
    }
    m->pub.stats.topic_aliases_used += r == 0 && known == 1;
    return r;
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
    MqttTopicReq t = {.qos = p->qos};
    if (mount_out(m, VIEW(p->filter, p->len), true, &t.filter) < 0) {
        p->sent = false; /* memory (lengths were checked): tried again at the next tick */
        return;
    }
    if (m->pub.protocol == MQTT_V5) {
        t.no_local = p->opts & SUB_NO_LOCAL;
        t.retain_as_published = p->opts & SUB_RAP;
        t.retain_handling = p->opts >> SUB_RH_SHIFT & 3;
    }
    p->id = id_alloc(m);
    if (!p->id) {
        p->sent = false; /* every id is in use: tried again once one is freed */
        return;
    }
    MqttPacket pkt = {.type = p->kind == P_UNSUBSCRIBE ? MQTT_UNSUBSCRIBE : MQTT_SUBSCRIBE,
                      .subscribe = {.id = p->id, .topics = &t, .count = 1}};
    if (p->kind == P_SUBSCRIBE && p->subid && m->pub.protocol == MQTT_V5 &&
        m->pub.limits.subscription_ids_available) {
        pkt.props.subid = &p->subid;
        pkt.props.n_subid = 1;
    }
    if (send_packet(m, &pkt, now) < 0) {
        id_release(m, &p->id);
        p->sent = false; /* tried again at the next tick */
    }
}

/* ---- outgoing messages ---- */

/* While the link keeps up (fewer than SPARE_MSGS messages held), a small message gets a block
 * with room for SPARE_BYTES, and done with it goes back for the next one: a live link
 * publishes without allocating. A backlog's messages are allocated to size, as it may be long
 * and its memory is counted; so are all in an ASan build, where its bounds check stays exact. */
enum { SPARE_BYTES = 256, SPARE_MSGS = 64 * KEEP_SPARES };

static SessionMsg *msg_alloc(Impl *m, size_t bytes, bool *spare)
{
    *spare = bytes <= SPARE_BYTES && m->pub.queued + m->pub.inflight < SPARE_MSGS;
    SessionMsg *msg = *spare ? spares_take(&m->spare) : NULL;
    return msg ? msg : malloc(sizeof(SessionMsg) + (*spare ? SPARE_BYTES : bytes));
}

static void msg_release(Impl *m, SessionMsg *msg)
{
    if (!msg->spare || !spares_keep(&m->spare, msg, SPARE_MSGS)) {
        free(msg);
    }
}

static void msg_free(Impl *m, SessionMsg *msg, bool was_inflight)
{
    if (msg->on_wire) {
        assert(m->on_wire > 0);
        m->on_wire--;
    }
    list_remove(&msg->link);
    id_release(m, &msg->id);
    if (was_inflight) {
        m->pub.inflight--;
    } else {
        m->pub.queued--;
    }
    m->pub.queued_bytes -= msg->topic_len + msg->payload_len + msg->props_len;
    msg_release(m, msg);
}

/* The outcome of a message: `result` 0 (done) or -errno, with the broker's MQTT 5 reason code
 * and reason string when it answered. */
typedef struct Outcome {
    int result;
    uint8_t reason;
    View reason_string;
} Outcome;

static void msg_finish(Impl *m, SessionMsg *msg, bool was_inflight, int64_t now, Outcome o)
{
    if (msg->qos > 0 && msg->id) {
        m->pub.stats.pub_rtt_sum_ms += (uint64_t)(now - msg->sent_at);
        count_rtt(m->pub.stats.pub_rtt_hist, now - msg->sent_at);
        m->pub.stats.pub_rtt_n++;
    }
    if (!msg->counted) {
        msg->counted = true;
        if (o.result < 0) {
            m->pub.stats.pub_fail++;
        } else {
            m->pub.stats.pub_ok++;
        }
    }
    void *req = msg->req;
    uint64_t spool_id = msg->spool_id;
    msg_free(m, msg, was_inflight);
    if (req || spool_id) {
        emit(m, (SessionEvent){.type = SESSION_EV_PUBLISH_DONE,
                               .done = {.req = req,
                                        .result = o.result,
                                        .spool_id = spool_id,
                                        .reason = o.reason,
                                        .reason_string = o.reason_string}});
    }
}

static void msg_complete(Impl *m, SessionMsg *msg, bool was_inflight, int64_t now)
{
    msg_finish(m, msg, was_inflight, now, (Outcome){0});
}

/* The largest PUBLISH we may send: the broker's Maximum Packet Size on an MQTT 5 link, less
 * what the properties we add may take (a Topic Alias, the property length, a longer
 * remaining length: at most 5 bytes), else what MQTT carries. */
static size_t publish_limit(const Session *s)
{
    if (s->protocol == MQTT_V5 && s->limits.maximum_packet_size) {
        return s->limits.maximum_packet_size > 5 ? s->limits.maximum_packet_size - 5 : 0;
    }
    return MQTT_PACKET_MAX;
}

/* Whether a message fits what the link allows (the CONNACK's limits, MQTT 5, when connected):
 * 0, -ENOTSUP (QoS above Maximum QoS, retain without Retain Available) or -EMSGSIZE. */
static int check_limits(const Session *s, View topic, size_t payload_len, uint8_t qos, bool retain)
{
    bool known = s->state == SESSION_CONNECTED;
    if (mqtt_publish_size(topic, payload_len, qos) > (known ? publish_limit(s) : MQTT_PACKET_MAX)) {
        return -EMSGSIZE;
    }
    if (known && s->protocol == MQTT_V5 &&
        (qos > s->limits.maximum_qos || (retain && !s->limits.retain_available))) {
        return -ENOTSUP;
    }
    return 0;
}

/* A queued message whose Message Expiry has passed fails without being sent. */
static bool expired(Impl *m, SessionMsg *msg, int64_t now)
{
    if (!msg->expires_at || now < msg->expires_at) {
        return false;
    }
    m->pub.stats.messages_expired++;
    msg_finish(m, msg, false, now, (Outcome){.result = -ETIME});
    return true;
}

/* A queued message this link cannot carry fails without being sent. */
static bool fits_link(Impl *m, SessionMsg *msg, int64_t now)
{
    if (expired(m, msg, now)) {
        return false;
    }
    /* -E2BIG: a spooled message the mount point (new since) makes too long; -ENOMEM: sending
     * fails too, and is tried again. */
    ssize_t grow = mount_growth(m, msg_topic(msg), msg_props(msg));
    int r = grow == -E2BIG ? -E2BIG : 0;
    if (r == 0 && m->pub.protocol == MQTT_V5) {
        size_t extra = props_extra(msg->props_len, msg->expires_at) + (grow > 0 ? grow : 0);
        r = check_limits(&m->pub, msg_topic(msg), msg->payload_len + extra, msg->qos, msg->retain);
    } /* else 3.1.1's only limit, MQTT's own, was checked by session_publish */
    if (r < 0) {
        msg_finish(m, msg, false, now, (Outcome){.result = r});
    }
    return r == 0;
}

/* ---- the publish rate limit ---- */

static double refill(double tokens, int64_t ms, uint64_t per_second)
{
    double t = tokens + (double)ms * (double)per_second / 1000.0;
    return t > (double)per_second ? (double)per_second : t;
}

/* Whether a PUBLISH of `bytes` may go now (then its tokens are taken); else when it may. A
 * packet larger than a whole second's bytes goes once the bucket is full. */
static bool rate_allows(Impl *m, size_t bytes, int64_t now)
{
    uint32_t rate = m->cfg.max_publish_rate;
    uint64_t brate = m->cfg.max_publish_bytes;
    if (!rate && !brate) {
        return true;
    }
    int64_t ms = now - m->refilled_at;
    m->refilled_at = now;
    m->tokens = rate ? refill(m->tokens, ms, rate) : 0;
    m->byte_tokens = brate ? refill(m->byte_tokens, ms, brate) : 0;
    double need = brate && (double)bytes > (double)brate ? (double)brate : (double)bytes;
    bool ok = (!rate || m->tokens >= 1.0) && (!brate || m->byte_tokens >= need);
    if (ok) {
        m->tokens -= rate ? 1.0 : 0;
        m->byte_tokens -= brate ? (double)bytes : 0; /* a large one leaves a debt */
        return true;
    }
    double wait = 0;
    if (rate && m->tokens < 1.0) {
        wait = (1.0 - m->tokens) * 1000.0 / rate;
    }
    if (brate && m->byte_tokens < need) {
        double w = (need - m->byte_tokens) * 1000.0 / (double)brate;
        wait = w > wait ? w : wait;
    }
    m->rate_wake = now + (int64_t)wait + 1;
    if (!m->pub.rate_limited_since) {
        m->pub.rate_limited_since = now;
    }
    return false;
}

/* Nothing waits for the rate limit any more: the spell is counted. */
static void rate_free(Impl *m, int64_t now)
{
    if (m->pub.rate_limited_since) {
        m->pub.stats.rate_limited_ms += (uint64_t)(now - m->pub.rate_limited_since);
        m->pub.rate_limited_since = 0;
    }
}

/* The size of the PUBLISH that carries `msg` on this link. */
static size_t publish_bytes(Impl *m, const SessionMsg *msg)
{
    size_t extra = m->pub.protocol == MQTT_V5 ? props_extra(msg->props_len, msg->expires_at) : 0;
    ssize_t grow = mount_growth(m, msg_topic(msg), msg_props(msg));
    return mqtt_publish_size(msg_topic(msg), msg->payload_len + extra + (grow > 0 ? grow : 0),
                             msg->qos);
}

/* Send queued messages in order while the in-flight window allows. */
/* A resumed session's in-flight messages go again first, oldest first, as far as the window
 * allows; one the new link cannot carry (a smaller Maximum Packet Size) fails. */
static void resend(Impl *m, size_t window, int64_t now)
{
    Link *l, *t;
    list_for_each_safe(l, t, &m->inflight)
    {
        SessionMsg *msg = container_of(l, SessionMsg, link);
        if (m->on_wire >= window) {
            return;
        }
        if (msg->on_wire) {
            continue;
        }
        if (!msg->got_pubrec) {
            size_t bytes = publish_bytes(m, msg);
            int e = mount_growth(m, msg_topic(msg), msg_props(msg)) == -E2BIG ? -E2BIG
                    : bytes > publish_limit(&m->pub)                          ? -EMSGSIZE
                                                                              : 0;
            if (e < 0) {
                msg_finish(m, msg, true, now, (Outcome){.result = e});
                continue;
            }
            if (!rate_allows(m, bytes, now)) {
                return; /* the rate limit: at rate_wake */
            }
        }
        if (msg->got_pubrec) {
            send_ack(m, MQTT_PUBREL, msg->id, now);
        } else if (send_publish(m, msg, true, now) < 0) {
            return; /* out of memory: tried again at the next tick */
        }
        msg->on_wire = true;
        m->on_wire++;
    }
}

/* Our QoS 1/2 messages in flight at once: ours, and the broker's Receive Maximum. */
static size_t window_of(const Impl *m)
{
    return m->cfg.max_inflight < m->pub.limits.receive_maximum ? m->cfg.max_inflight
                                                               : m->pub.limits.receive_maximum;
}

enum { OUT_HIGH_WATER = 128 * 1024 };

static void pump(Impl *m, int64_t now)
{
    m->pub.backlogged = false;
    size_t window = window_of(m);
    if (m->pub.state == SESSION_CONNECTED && m->on_wire < m->pub.inflight) {
        resend(m, window, now);
    }
    /* The queue is encoded as far as the socket takes it: past OUT_HIGH_WATER bytes waiting to
     * be written, the rest stays queued (and bounded by [queue]) until the next tick after a
     * write (`backlogged` says so), so one tick's work stays small and a flood cannot stall the
     * event loop. */
    while (m->pub.state == SESSION_CONNECTED && !list_empty(&m->queue) &&
           buf_size(&m->pub.out) < OUT_HIGH_WATER) {
        SessionMsg *msg = container_of(m->queue.next, SessionMsg, link);
        if (!fits_link(m, msg, now)) {
            continue;
        }
        if ((msg->qos == 0 || (m->pub.inflight < window_of(m) && m->ids_in_use < 65535)) &&
            !rate_allows(m, publish_bytes(m, msg), now)) {
            return; /* the rate limit: at rate_wake */
        }
        if (msg->qos == 0) {
            if (send_publish(m, msg, false, now) < 0) {
                return; /* out of memory: still queued, tried again at the next tick */
            }
            msg_complete(m, msg, false, now);
            continue;
        }
        if (m->pub.inflight >= window) {
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
        msg->on_wire = true;
        m->on_wire++;
        m->pub.queued--;
        m->pub.inflight++;
    }
    m->pub.backlogged = m->pub.state == SESSION_CONNECTED && !list_empty(&m->queue) &&
                        buf_size(&m->pub.out) >= OUT_HIGH_WATER;
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
    return publish_limit(s);
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

/* The properties a caller may give a message: a valid PUBLISH block, without those the
 * session writes itself (Topic Alias, Message Expiry) or a client never sends. */
static bool props_valid(View block)
{
    MqttProps pp;
    uint64_t ours = MQTT_PROP_BIT(MQTT_PROP_TOPIC_ALIAS) | MQTT_PROP_BIT(MQTT_PROP_MESSAGE_EXPIRY) |
                    MQTT_PROP_BIT(MQTT_PROP_SUBSCRIPTION_ID);
    return block.n == 0 || (block.n <= UINT32_MAX &&
                            mqtt_props_check(block, MQTT_PUBLISH, &pp) == 0 && !(pp.has & ours));
}

int session_publish(Session *s, const SessionPublish *p, void *req, int64_t now,
                    SessionMsg **ret_msg)
{
    Impl *m = impl(s);
    if (p->qos > 2 || mqtt_topic_check(p->topic) < 0 || !props_valid(p->props)) {
        return -EINVAL;
    }
    if (p->expires_at && p->expires_at <= now && !p->packet_id) {
        s->stats.pub_fail++;
        s->stats.messages_expired++;
        return -ETIME;
    }
    /* What the current link is known to refuse is refused now (a queued message is checked
     * again when it goes out). */
    bool v5 = s->state != SESSION_CONNECTED || s->protocol == MQTT_V5;
    size_t extra = v5 ? props_extra((uint32_t)p->props.n, p->expires_at) : 0;
    ssize_t grow = mount_growth(m, p->topic, p->props);
    if (grow == -E2BIG) {
        s->stats.pub_fail++;
        return -E2BIG;
    }
    int r =
        check_limits(s, p->topic, p->payload.n + extra + (grow > 0 ? grow : 0), p->qos, p->retain);
    if (r < 0) {
        s->stats.pub_fail++;
        return r;
    }
    size_t bytes = p->topic.n + p->payload.n + p->props.n;
    if (s->queued + s->inflight >= m->cfg.max_messages ||
        bytes > m->cfg.max_bytes -
                    (s->queued_bytes < m->cfg.max_bytes ? s->queued_bytes : m->cfg.max_bytes)) {
        s->stats.pub_fail++;
        return -ENOBUFS;
    }
    bool spare;
    SessionMsg *msg = msg_alloc(m, bytes, &spare);
    if (!msg) {
        return -ENOMEM;
    }
    *msg = (SessionMsg){.req = req,
                        .spare = spare,
                        .spool_id = p->spool_id,
                        .payload_len = p->payload.n,
                        .topic_len = (uint16_t)p->topic.n,
                        .qos = p->qos,
                        .retain = p->retain,
                        .expires_at = p->expires_at,
                        .props_len = (uint32_t)p->props.n};
    memcpy(msg->data, p->topic.p, p->topic.n);
    if (p->payload.n) {
        memcpy(msg->data + p->topic.n, p->payload.p, p->payload.n);
    }
    if (p->props.n) {
        memcpy(msg->data + p->topic.n + p->payload.n, p->props.p, p->props.n);
    }
    if (p->expires_at && !p->packet_id) {
        m->next_expiry =
            m->next_expiry && m->next_expiry < p->expires_at ? m->next_expiry : p->expires_at;
    }
    if (p->packet_id) {
        if ((r = resume_inflight(m, msg, p, now)) < 0) {
            msg_release(m, msg);
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

static int add_pending(Impl *m, const SessionSubscribe *what, enum pending_kind kind, void *req)
{
    View filter = what->filter;
    Pending *p = malloc(sizeof(*p) + filter.n);
    if (!p) {
        return -ENOMEM;
    }
    *p = (Pending){.req = req,
                   .qos = what->qos,
                   .subid = what->subid,
                   .opts = sub_opts(what),
                   .kind = kind,
                   .len = (uint16_t)filter.n};
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

int session_subscribe(Session *s, const SessionSubscribe *sub, void *req, int64_t now)
{
    (void)now;
    if (sub->qos > 2 || mqtt_filter_check(sub->filter) < 0 || sub->subid > 268435455u ||
        sub->retain_handling > 2) {
        return -EINVAL;
    }
    /* Nobody waits for this one: an identical request not yet sent does the same job, so
     * repeating a subscribe while the broker is away does not pile up requests. */
    Pending *twin = req ? NULL : find_unsent(impl(s), sub->filter, P_SUBSCRIBE);
    if (twin) {
        twin->qos = sub->qos > twin->qos ? sub->qos : twin->qos;
        twin->subid = sub->subid;
        twin->opts = sub_opts(sub);
        return 0;
    }
    return add_pending(impl(s), sub, P_SUBSCRIBE, req);
}

int session_barrier(Session *s, void *req)
{
    return add_pending(impl(s), &(SessionSubscribe){0}, P_BARRIER, req);
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
    return add_pending(m, &(SessionSubscribe){.filter = filter}, P_UNSUBSCRIBE, req);
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

void session_forget_reqs(Session *s, const HashMap *reqs)
{
    Impl *m = impl(s);
    for (Link *l = m->pending.next; l != &m->pending; l = l->next) {
        Pending *p = container_of(l, Pending, link);
        if (p->req && hashmap_get(reqs, VIEW(&p->req, sizeof(p->req)))) {
            p->req = NULL;
        }
    }
}

static void remember_sub(Impl *m, View filter, const Pending *p)
{
    uint8_t qos = p->qos, opts = p->opts;
    uint32_t subid = p->subid;
    Sub *sub = find_sub(m, filter);
    if (sub) {
        sub->qos = qos;
        sub->subid = subid;
        sub->opts = opts;
        return;
    }
    sub = malloc(sizeof(*sub) + filter.n);
    if (!sub) {
        return; /* not restored after a reconnect; the subscription itself stands */
    }
    *sub = (Sub){.qos = qos, .opts = opts, .subid = subid, .len = (uint16_t)filter.n};
    memcpy(sub->filter, filter.p, filter.n);
    list_push_back(&m->subs, &sub->link);
    m->pub.subscriptions++;
}

static void pending_done(Impl *m, Pending *p, Outcome o)
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
        emit(m, (SessionEvent){.type = done[kind],
                               .done = {.req = req,
                                        .result = o.result,
                                        .reason = o.reason,
                                        .reason_string = o.reason_string}});
    }
}

/* Put unsent requests on the wire (or settle them offline). A barrier waits until every
 * request before it is answered (see session_barrier). */
static void suback(Impl *m, Pending *p, uint8_t code, View reason_string);

/* MQTT 5: the reason code of what the broker's CONNACK says it would refuse in this SUBSCRIBE
 * (a shared or wildcard filter it does not support), or 0. */
static uint8_t unsupported(const Impl *m, const Pending *p)
{
    const SessionLimits *l = &m->pub.limits;
    View f = VIEW(p->filter, p->len);
    if (p->kind != P_SUBSCRIBE || m->pub.protocol != MQTT_V5) {
        return 0;
    }
    if (!l->shared_available && mqtt_filter_target(f).n != f.n) {
        return 0x9E; /* Shared Subscriptions not supported */
    }
    if (!l->wildcard_available && (memchr(f.p, '+', f.n) || memchr(f.p, '#', f.n))) {
        return 0xA2; /* Wildcard Subscriptions not supported */
    }
    /* Fixed header (at most 5), id, properties (at most a 4-byte identifier), the filter with
     * its length and options: never above the broker's Maximum Packet Size. */
    if (l->maximum_packet_size && 5 + 2 + 6 + 2 + f.n + 1 > l->maximum_packet_size) {
        return MQTT_RC_PACKET_TOO_LARGE;
    }
    return 0;
}

static void flush_pending(Impl *m, int64_t now)
{
    Link *l, *t;
    bool unanswered = false; /* a subscribe/unsubscribe before this point is still open */
    list_for_each_safe(l, t, &m->pending)
    {
        Pending *p = container_of(l, Pending, link);
        uint8_t refuse = m->pub.state == SESSION_CONNECTED && !p->sent ? unsupported(m, p) : 0;
        if (refuse) { /* answered as the broker would (a restore is lost), without asking */
            suback(m, p, refuse, VIEW_NULL);
            continue;
        }
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
            pending_done(m, p, (Outcome){0});
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

int64_t session_backoff_ms(enum session_jitter jitter, unsigned *attempts, bool overload,
                           int64_t min_ms, int64_t max_ms, uint64_t random)
{
    if (jitter == SESSION_JITTER_FULL && overload) {
        *attempts += 2; /* the window doubled twice more, ... */
        max_ms *= 2;    /* ... up to twice the usual ceiling */
    }
    int64_t d = min_ms;
    for (unsigned i = 0; i < *attempts && d < max_ms; i++) {
        d *= 2;
    }
    if (d > max_ms) {
        d = max_ms;
    }
    ++*attempts;
    if (jitter == SESSION_JITTER_EQUAL) { /* [d/2, d]: what 0.1 did */
        return d / 2 + (int64_t)(random % (uint64_t)(d / 2 + 1));
    }
    return (int64_t)(random % (uint64_t)(d + 1)); /* [0, d]: "full jitter" */
}

/* Why the link went down says the broker (or the cluster behind it) is overloaded: a refused
 * TCP connection, 3.1.1's Server unavailable, MQTT 5's Server busy, Quota exceeded, or "use
 * another server" (which every client of a draining node hears at once). */
static bool overload_signal(int code, bool refused, int broker_reason)
{
    int rc = refused ? code : broker_reason;
    return (!refused && code == ECONNREFUSED) || (refused && code == 3) /* 3.1.1: unavailable */ ||
           rc == MQTT_RC_SERVER_BUSY || rc == MQTT_RC_QUOTA_EXCEEDED ||
           rc == MQTT_RC_USE_ANOTHER_SERVER || rc == MQTT_RC_SERVER_MOVED;
}

/* Full jitter over an exponential window (so a fleet that lost its broker together spreads
 * its reconnects over the whole window, not its second half), widened further when the broker
 * signals overload (counting the attempt). */
static int64_t backoff_ms(Impl *m, int code, bool refused)
{
    return session_backoff_ms(SESSION_JITTER_FULL, &m->attempts,
                              overload_signal(code, refused, m->down_reason),
                              m->cfg.reconnect_min_ms, m->cfg.reconnect_max_ms, rand64(m));
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
    s->retry_at = now + backoff_ms(m, code, refused);
    rate_free(m, now); /* nothing is paced while there is no link */
    free_list(&m->pings);
    buf_clear(&m->dec.in);
    /* Requests on the wire are sent again on the next link. */
    for (Link *l = m->pending.next; l != &m->pending; l = l->next) {
        Pending *p = container_of(l, Pending, link);
        id_release(m, &p->id);
        p->sent = false;
    }
    emit(m, (SessionEvent){.type = SESSION_EV_LINK_DOWN,
                           .down = {reason, code, refused, was_connected, m->down_reason}});
    m->down_reason = -1;
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

/* MQTT 5: what CONNECT asks for and tells about us, and the will's properties. */
static void connect_props(const SessionConfig *c, MqttPacket *p)
{
    MqttProps *pr = &p->props;
    if (c->session_expiry) {
        MQTT_SET(pr, MQTT_PROP_SESSION_EXPIRY);
        pr->session_expiry = c->session_expiry;
    }
    if (c->receive_maximum != 65535) {
        MQTT_SET(pr, MQTT_PROP_RECEIVE_MAXIMUM);
        pr->receive_maximum = c->receive_maximum;
    }
    if (c->max_packet && c->max_packet < MQTT_PACKET_MAX) {
        MQTT_SET(pr, MQTT_PROP_MAXIMUM_PACKET_SIZE);
        pr->maximum_packet_size = (uint32_t)c->max_packet;
    }
    if (c->topic_alias_maximum) {
        MQTT_SET(pr, MQTT_PROP_TOPIC_ALIAS_MAXIMUM);
        pr->topic_alias_maximum = c->topic_alias_maximum;
    }
    if (c->request_response_info) {
        MQTT_SET(pr, MQTT_PROP_REQUEST_RESPONSE_INFO);
        pr->request_response_info = 1;
    }
    MqttProps *w = &p->connect.will_props;
    if (c->will && c->will_delay) {
        MQTT_SET(w, MQTT_PROP_WILL_DELAY);
        w->will_delay = c->will_delay;
    }
    if (c->will && c->will_message_expiry) {
        MQTT_SET(w, MQTT_PROP_MESSAGE_EXPIRY);
        w->message_expiry = c->will_message_expiry;
    }
    if (c->will && c->will_content_type.n) {
        MQTT_SET(w, MQTT_PROP_CONTENT_TYPE);
        w->content_type = c->will_content_type;
    }
}

/* -ENOMEM (the will topic with the mount point): nothing to send. */
static int build_connect(Impl *m, MqttPacket *p)
{
    const SessionConfig *c = &m->cfg;
    const char *assigned = m->pub.assigned_client_id;
    *p = (MqttPacket){.type = MQTT_CONNECT,
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
    if (!c->client_id.n && assigned) { /* the session the broker made for us, resumed */
        p->connect.client_id = VIEW(assigned, strlen(assigned));
    }
    if (m->pub.protocol == MQTT_V5) {
        connect_props(c, p);
    }
    /* Its length with the mount point was checked with the configuration. */
    return c->will ? mount_out(m, c->will_topic, false, &p->connect.will_topic) : 0;
}

void session_transport_up(Session *s, int64_t now)
{
    Impl *m = impl(s);
    if (s->state != SESSION_CONNECTING) {
        return;
    }
    bool v5 = m->cfg.protocol == SESSION_PROTOCOL_5 ||
              (m->cfg.protocol == SESSION_PROTOCOL_AUTO && !m->fell_back);
    s->protocol = v5 ? MQTT_V5 : MQTT_V311;
    m->dec.version = s->protocol;
    MqttPacket p;
    int r = build_connect(m, &p);
    buf_clear(&s->out);
    buf_clear(&m->dec.in);
    s->state = SESSION_CONNACK_WAIT;
    snprintf(s->phase, sizeof(s->phase), "waiting for CONNACK");
    m->last_rx = now;
    r = r < 0 ? r : send_packet(m, &p, now);
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
    m->on_wire = 0;
    for (l = m->inflight.next; l != &m->inflight; l = l->next) {
        container_of(l, SessionMsg, link)->on_wire = false;
    }
    if (session_present) {
        /* [MQTT-4.4.0-1]: unacknowledged PUBLISH and PUBREL go again with their ids, first,
         * as far as the new link's window allows (pump sends the rest as acks come). */
        resend(m, window_of(m), now);
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
            /* Without the retained messages: its holders had them (they would be taken for
             * live ones with Retain As Published). */
            SessionSubscribe again = {.filter = VIEW(sub->filter, sub->len),
                                      .qos = sub->qos,
                                      .subid = sub->subid,
                                      .no_local = sub->opts & SUB_NO_LOCAL,
                                      .retain_as_published = sub->opts & SUB_RAP,
                                      .retain_handling = 2};
            if (add_pending(m, &again, P_SUBSCRIBE, NULL) == 0) {
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
    if (m->pub.protocol == MQTT_V5 && code >= MQTT_E_FIRST && code < MQTT_E_LAST) {
        /* MQTT 5: the broker is told why, before the link goes (best effort). */
        MqttPacket d = {.type = MQTT_DISCONNECT, .ack = {.reason = mqtt_error_reason(-code)}};
        (void)send_packet(m, &d, now);
    }
    link_down(m, now, code, false, reason);
}

/* A broker that named another server (0x9C Use another server, 0x9D Server moved). */
static void keep_reference(Impl *m, uint8_t code, const MqttProps *props)
{
    m->pub.server_reference[0] = '\0';
    if ((code == MQTT_RC_USE_ANOTHER_SERVER || code == MQTT_RC_SERVER_MOVED) &&
        MQTT_HAS(props, MQTT_PROP_SERVER_REFERENCE) &&
        props->server_reference.n < sizeof(m->pub.server_reference)) {
        snprintf(m->pub.server_reference, sizeof(m->pub.server_reference), "%.*s",
                 (int)props->server_reference.n, (const char *)props->server_reference.p);
        m->redirect = true;
    }
}

/* The limits an MQTT 5 CONNACK sets for the link (absent properties keep the defaults). */
static int apply_connack(Impl *m, const MqttProps *p)
{
    Session *s = &m->pub;
    SessionLimits *l = &s->limits;
    if (MQTT_HAS(p, MQTT_PROP_RECEIVE_MAXIMUM)) {
        l->receive_maximum = p->receive_maximum;
    }
    if (MQTT_HAS(p, MQTT_PROP_MAXIMUM_QOS)) {
        l->maximum_qos = p->maximum_qos;
    }
    if (MQTT_HAS(p, MQTT_PROP_RETAIN_AVAILABLE)) {
        l->retain_available = p->retain_available;
    }
    if (MQTT_HAS(p, MQTT_PROP_MAXIMUM_PACKET_SIZE)) {
        l->maximum_packet_size = p->maximum_packet_size;
    }
    if (MQTT_HAS(p, MQTT_PROP_TOPIC_ALIAS_MAXIMUM)) {
        l->topic_alias_maximum = p->topic_alias_maximum;
    }
    if (MQTT_HAS(p, MQTT_PROP_WILDCARD_AVAILABLE)) {
        l->wildcard_available = p->wildcard_available;
    }
    if (MQTT_HAS(p, MQTT_PROP_SUBSCRIPTION_ID_AVAILABLE)) {
        l->subscription_ids_available = p->subscription_id_available;
    }
    if (MQTT_HAS(p, MQTT_PROP_SHARED_AVAILABLE)) {
        l->shared_available = p->shared_available;
    }
    if (MQTT_HAS(p, MQTT_PROP_SERVER_KEEP_ALIVE)) {
        l->server_keep_alive = p->server_keep_alive;
        m->keepalive = p->server_keep_alive;
    }
    free(s->response_information);
    s->response_information = NULL;
    if (MQTT_HAS(p, MQTT_PROP_RESPONSE_INFO) &&
        !(s->response_information =
              strndup((const char *)p->response_info.p, p->response_info.n))) {
        return -ENOMEM;
    }
    if (MQTT_HAS(p, MQTT_PROP_ASSIGNED_CLIENT_ID)) {
        char *id = strndup((const char *)p->assigned_client_id.p, p->assigned_client_id.n);
        if (!id) {
            return -ENOMEM;
        }
        free(s->assigned_client_id);
        s->assigned_client_id = id;
    }
    int r = alias_out_reset(&m->alias_out, m->cfg.topic_aliases ? l->topic_alias_maximum : 0);
    return r < 0 ? r : alias_in_reset(&m->alias_in, m->cfg.topic_alias_maximum);
}

/* AUTO met a broker that does not speak MQTT 5: 3.1.1 from now on, tried at once. */
static void fall_back(Impl *m, int64_t now, const char *answer)
{
    char reason[160];
    snprintf(reason, sizeof(reason), "the broker refused MQTT 5 (%s): using MQTT 3.1.1", answer);
    m->fell_back = true;
    link_down(m, now, MQTT_CONNACK_PROTOCOL_VERSION, true, reason);
    m->attempts = 0;
    m->pub.retry_at = now;
}

static void refused(Impl *m, const MqttPacket *pkt, int64_t now)
{
    char reason[600], why[260];
    uint8_t rc = pkt->connack.rc;
    if (pkt->version == MQTT_V5) {
        mqtt_reason_describe(why, sizeof(why), rc, pkt->props.reason_string);
        keep_reference(m, rc, &pkt->props);
    } else {
        snprintf(why, sizeof(why), "%s", mqtt_connack_str(rc));
    }
    snprintf(reason, sizeof(reason), "connection refused: %s%s%s", why,
             m->pub.server_reference[0] ? "; redirected to " : "", m->pub.server_reference);
    link_down(m, now, rc, true, reason);
}

static void on_connack(Impl *m, const MqttPacket *pkt, int64_t now)
{
    Session *s = &m->pub;
    uint8_t rc = pkt->connack.rc;
    bool v5_sent = s->protocol == MQTT_V5;
    bool version_refused =
        v5_sent && (pkt->version == MQTT_V311 ? rc == MQTT_CONNACK_PROTOCOL_VERSION
                                              : rc == MQTT_RC_UNSUPPORTED_PROTOCOL_VERSION);
    if (s->state != SESSION_CONNACK_WAIT) {
        protocol_error(m, now, MQTT_E_TYPE, "unexpected CONNACK");
    } else if (version_refused && m->cfg.protocol == SESSION_PROTOCOL_AUTO) {
        fall_back(m, now, pkt->version == MQTT_V311 ? "3.1.1 return code 1" : "reason 0x84");
    } else if (v5_sent && pkt->version == MQTT_V311 && rc == 0) {
        protocol_error(m, now, MQTT_E_LENGTH, "CONNACK without properties");
    } else if (rc != 0) {
        refused(m, pkt, now);
    } else {
        s->limits = default_limits();
        m->keepalive = m->cfg.keepalive;
        s->server_reference[0] = '\0';
        int r = apply_connack(m, v5_sent ? &pkt->props : &(MqttProps){0});
        if (r < 0) {
            link_down(m, now, -r, false, "out of memory taking the CONNACK");
            return;
        }
        connected(m, pkt->connack.session_present, now);
    }
}

/* MQTT 5: the broker ends the link and says why. */
static void on_disconnect(Impl *m, const MqttPacket *pkt, int64_t now)
{
    /* A server may not change the session's expiry, nor send what only a client sends. */
    if (MQTT_HAS(&pkt->props, MQTT_PROP_SESSION_EXPIRY) ||
        pkt->ack.reason == MQTT_RC_DISCONNECT_WITH_WILL) {
        protocol_error(m, now, MQTT_E_PROPERTY_VALUE, "a DISCONNECT only a client may send");
        return;
    }
    char reason[600], why[260];
    mqtt_reason_describe(why, sizeof(why), pkt->ack.reason, pkt->props.reason_string);
    keep_reference(m, pkt->ack.reason, &pkt->props);
    snprintf(reason, sizeof(reason), "the broker disconnected: %s%s%s", why,
             m->pub.server_reference[0] ? "; redirected to " : "", m->pub.server_reference);
    m->down_reason = pkt->ack.reason;
    link_down(m, now, ECONNRESET, false, reason);
}

static void handle_publish(Impl *m, const MqttPacket *pkt, int64_t now)
{
    Session *s = &m->pub;
    MqttPublish resolved = pkt->publish, *p = &resolved;
    if (s->protocol == MQTT_V5 && MQTT_HAS(&pkt->props, MQTT_PROP_TOPIC_ALIAS)) {
        int r = alias_in_resolve(&m->alias_in, pkt->props.topic_alias, &p->topic);
        if (r < 0) {
            protocol_error(m, now, r == -ENOMEM ? ENOMEM : -r,
                           r == -MQTT_E_TOPIC_EMPTY ? "Topic Alias never set" : mqtt_strerror(r));
            return;
        }
    }
    /* Local subscribers see local topics ([topics] mount); one outside the mount point is
     * not for them (acknowledged all the same). */
    MqttProps local_props = pkt->props;
    View remote = p->topic;
    bool local = mqtt_mount_in(m->cfg.mount, remote, &p->topic) == 1;
    bool unmounted = local && mqtt_mount_active(m->cfg.mount) && p->topic.n == remote.n;
    if (local && s->protocol == MQTT_V5 &&
        mqtt_mount_props(m->cfg.mount, pkt->props.raw, false, &m->mounted_props) == 1 &&
        mqtt_props_check(buf_view(&m->mounted_props), MQTT_PUBLISH, &local_props) < 0) {
        local_props = pkt->props; /* rebuilt from a checked block: cannot happen */
    }
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
        if (local) {
            emit(m, (SessionEvent){.type = SESSION_EV_MESSAGE,
                                   .message = {p, &local_props, unmounted}});
        }
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

static void suback(Impl *m, Pending *p, uint8_t code, View reason_string)
{
    View filter = VIEW(p->filter, p->len);
    if (code < 0x80) { /* a granted QoS; 0x80 (3.1.1) and MQTT 5's codes above are refusals */
        remember_sub(m, filter, p);
        emit(m, (SessionEvent){.type = SESSION_EV_SUBSCRIBED,
                               .granted = {.filter = filter, .qos = code}});
        pending_done(m, p, (Outcome){.result = code});
        return;
    }
    if (!p->req) {
        /* A restore the broker now refuses, or a request nobody waits for any more: forgotten
         * (if it was held), and said so, so that the local holders do not go on believing
         * they hold it. */
        if (find_sub(m, filter)) {
            forget_sub(m, filter);
        }
        m->pub.stats.subscriptions_lost++;
        emit(m, (SessionEvent){.type = SESSION_EV_SUBSCRIPTION_LOST,
                               .lost = {.filter = filter, .code = code}});
    }
    /* (3.1.1's 0x80 is just "Failure": no reason to name) */
    pending_done(m, p, (Outcome){-EPERM, m->pub.protocol == MQTT_V5 ? code : 0, reason_string});
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
    uint8_t reason = pkt->ack.reason; /* 0 in 3.1.1 */
    Outcome o = {reason >= 0x80 ? -EPERM : 0, reason, pkt->props.reason_string};
    switch (pkt->type) {
    case MQTT_PUBACK:
        if (msg) {
            msg_finish(m, msg, true, now, o);
        }
        break;
    case MQTT_PUBREC:
        if (reason >= 0x80) { /* refused: the exchange ends here, no PUBREL [MQTT-4.3.3] */
            if (msg && !msg->got_pubrec) {
                msg_finish(m, msg, true, now, o);
            }
            break;
        }
        if (msg && !msg->got_pubrec) {
            msg->got_pubrec = true;
            msg->rec_reason = reason;
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
            if (!o.reason) { /* the PUBREC said more (No matching subscribers) */
                o.reason = msg->rec_reason;
            }
            msg_finish(m, msg, true, now, o);
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
    bool v5 = m->pub.protocol == MQTT_V5;
    if (pkt->suback.codes.n > 1) { /* we ask for one filter at a time */
        protocol_error(m, now, MQTT_E_LENGTH, "an answer for more filters than were asked");
        return;
    }
    if (pkt->type == MQTT_SUBACK) {
        Pending *p = find_pending(m, pkt->suback.id, P_SUBSCRIBE);
        if (p) {
            suback(m, p, pkt->suback.codes.p[0], pkt->props.reason_string);
        }
    } else {
        Pending *p = find_pending(m, pkt->suback.id, P_UNSUBSCRIBE);
        uint8_t code = v5 ? pkt->suback.codes.p[0] : 0; /* 0x11: there was none: fine too */
        if (p) {
            /* A SUBSCRIBE answered after this UNSUBSCRIBE was asked for remembered the
             * filter again; the broker has processed both, in order. */
            forget_sub(m, VIEW(p->filter, p->len));
            pending_done(m, p,
                         (Outcome){code >= 0x80 ? -EPERM : 0, code, pkt->props.reason_string});
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
    count_rtt(s->stats.ping_rtt_hist, rtt);
    s->last_ping_rtt_ms = rtt;
    if (barrier) {
        pending_done(m, barrier, (Outcome){0});
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
        on_connack(m, pkt, now);
        break;
    case MQTT_PUBLISH:
        s->stats.sub_bytes_sum += pkt->size;
        s->stats.sub_bytes_n++;
        handle_publish(m, pkt, now);
        break;
    case MQTT_DISCONNECT:
        if (s->protocol != MQTT_V5) {
            protocol_error(m, now, MQTT_E_TYPE, "unexpected DISCONNECT");
        } else {
            on_disconnect(m, pkt, now);
        }
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

/* Fail the queued messages that have expired; note when the next one does. */
static void expire_queue(Impl *m, int64_t now)
{
    if (!m->next_expiry || now < m->next_expiry) {
        return;
    }
    m->next_expiry = 0;
    Link *l, *t;
    list_for_each_safe(l, t, &m->queue)
    {
        SessionMsg *msg = container_of(l, SessionMsg, link);
        if (msg->expires_at && !expired(m, msg, now) &&
            (!m->next_expiry || msg->expires_at < m->next_expiry)) {
            m->next_expiry = msg->expires_at;
        }
    }
}

static int64_t link_tick(Impl *m, int64_t now);

int64_t session_tick(Session *s, int64_t now)
{
    Impl *m = impl(s);
    expire_queue(m, now);
    int64_t next = link_tick(m, now);
    return m->next_expiry && m->next_expiry < next ? m->next_expiry : next;
}

static int64_t link_tick(Impl *m, int64_t now)
{
    Session *s = &m->pub;
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
    if (m->pub.rate_limited_since && (m->pub.queued == 0 || m->rate_wake <= now)) {
        rate_free(m, now); /* (a wake that found nothing more to hold back) */
    }
    int64_t rate_wake = m->pub.rate_limited_since ? m->rate_wake : INT64_MAX;
    if (m->keepalive == 0) {
        return rate_wake;
    }
    int64_t ka = (int64_t)m->keepalive * 1000;
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
    return min64(next, rate_wake);
}

bool session_redirect(Session *s, char *out, size_t n)
{
    Impl *m = impl(s);
    if (!m->redirect) {
        return false;
    }
    m->redirect = false;
    snprintf(out, n, "%s", s->server_reference);
    return true;
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
