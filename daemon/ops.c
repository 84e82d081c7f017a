/* SPDX-License-Identifier: MIT */
/*
 * Request ops: one function per op of the IPC protocol (docs/protocol.md).
 *
 * publish, subscribe and unsubscribe may wait for the broker: they leave a waiter
 * (waiters.h) of a kind defined here, which says what its answer, its timeout or its client
 * leaving means. Everything else is answered at once, in order.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "answer.h"
#include "ipc/fast.h"
#include "access.h"
#include "ops.h"
#include "log.h"
#include "reload.h"
#include "rpc.h"
#include "metrics.h"
#include "sessions.h"
#include "spool/record.h"
#include "subs.h"
#include "waiters.h"

static int64_t timeout_of(const Client *c, const Request *r)
{
    return r->timeout_ms > 0 ? r->timeout_ms : (int64_t)c->d->cfg.broker.publish_timeout * 1000;
}

/* ---- what each kind of waiting request does when it ends (waiters.h) ---- */

/* A publish the broker has (result >= 0; MQTT 5's 0x10 No matching subscribers is said), or
 * that it refused or the link could not carry. */
static void publish_done(Waiter *w, int result)
{
    if (result >= 0 && w->reason) {
        answer_ok_reason(w->c, w->id, (int)w->reason);
    } else if (result >= 0) {
        answer_ok(w->c, w->id, NULL);
    } else if (result == -EPERM) {
        answer_refused(w->c, w->id, w, "the broker refused: %s", w->reason_text);
    } else {
        answer_publish_failure(w->c, w->id, result, w->qos);
    }
}

static void publish_timeout(Waiter *w)
{
    session_abandon(w->c->d->broker.session, w->msg, true);
    answer_error(w->c, w->id, IPC_TIMEOUT,
                 "not confirmed by the broker in time; the message stays queued and will "
                 "still be delivered%s",
                 w->qos ? " (at least once)" : " when the broker is reachable");
}

static void publish_gone(Waiter *w)
{
    if (w->msg) { /* always set once the request was made; the waiter may predate that */
        session_abandon(w->c->d->broker.session, w->msg, false); /* still delivered */
    }
}

/* A publish with wait: the broker's PUBACK / PUBCOMP (or QoS 0 written). */
static const WaiterKind publish_kind = {publish_done, publish_timeout, publish_gone, NULL};

static void durable_done(Waiter *w, int error)
{
    if (error) {
        answer_error(w->c, w->id, IPC_INTERNAL,
                     "the spool could not sync the message to disk (%s): it is queued and "
                     "will be sent while the daemon runs, but would not survive a crash",
                     strerror(-error));
    } else {
        answer_ok(w->c, w->id, NULL);
    }
}

static void nothing(Waiter *w)
{
    (void)w; /* the spool wait is cancelled when the waiter is freed */
}

/* A spooled publish with wait false: its record on disk. It never names the message, which
 * the broker may have acknowledged (and the session freed) before the disk answers. */
static const WaiterKind durable_kind = {durable_done, NULL, nothing, NULL};

static void on_durable(void *ud, int error)
{
    waiter_complete(ud, error);
}

/* ---- ops ---- */

static bool admin_only(Client *c, const Request *r)
{
    if (c->acl.admin) {
        return true;
    }
    answer_error(c, r->id, IPC_FORBIDDEN,
                 "%s is an admin op (root, the daemon's own user and [acl] admin)",
                 ipc_op_name(r->op));
    return false;
}

/* The [acl] decision for this request; answered `forbidden` when it is no. */
static bool permitted(Client *c, const Request *r, unsigned action)
{
    char why[400];
    if (acl_allows(&c->acl, action, r->topic, why, sizeof(why))) {
        return true;
    }
    answer_error(c, r->id, IPC_FORBIDDEN, "%s", why);
    return false;
}

/* A request that could not be made after all: its waiter goes without a reply. */
static void cancel(Waiter *w)
{
    if (w) {
        waiter_cancel(w);
    }
}

/* A field only MQTT 5 carries, on a link that speaks 3.1.1 (configured so, or auto fell
 * back): refused, naming both. With auto before the first CONNACK it is accepted; should the
 * link turn out 3.1.1, the session leaves it out (properties_dropped). */
static bool v5_refused(Client *c, const Request *r)
{
    const Session *s = c->d->broker.session;
    enum mqtt_protocol p = c->d->cfg.broker.protocol;
    if (!r->v5_field || p == PROTOCOL_5 || (p == PROTOCOL_AUTO && s->protocol != MQTT_V311)) {
        return false;
    }
    answer_error(c, r->id, IPC_BAD_REQUEST,
                 "%s needs MQTT 5, and the broker link speaks 3.1.1 ([broker] protocol = %s)",
                 r->v5_field, p == PROTOCOL_AUTO ? "auto, and the broker refused 5" : "3.1.1");
    return true;
}

/* The checks publish and request share; answered when one fails. */
/* Whether `topic` (a filter) still fits MQTT with [topics] mount in front; answered when not. */
static bool fits_mounted(Client *c, const Request *r, View topic, bool filter)
{
    static Buf scratch;
    if (mqtt_mount_out(&c->d->mount, topic, filter, &scratch) != -E2BIG) {
        buf_shrink(&scratch, 65536);
        return true;
    }
    answer_error(c, r->id, IPC_BAD_REQUEST,
                 "with [topics] mount %s, %.*s... is longer than MQTT allows (65535 bytes)",
                 c->d->mount.prefix, topic.n < 40 ? (int)topic.n : 40, (const char *)topic.p);
    return false;
}

static bool may_publish(Client *c, const Request *r)
{
    Daemon *d = c->d;
    if (d->stopping) {
        answer_error(c, r->id, IPC_SHUTTING_DOWN, "the daemon is shutting down");
        return false;
    }
    if (!permitted(c, r, ACL_PUBLISH) || v5_refused(c, r) || !fits_mounted(c, r, r->topic, false)) {
        return false;
    }
    Session *s = d->broker.session;
    size_t props = buf_size(&r->props) + (r->message_expiry ? 5 : 0);
    size_t size = mqtt_publish_size(r->topic, r->payload.n + props + d->mount.len, r->qos);
    if (size > session_max_publish(s)) {
        answer_error(c, r->id, IPC_TOO_LARGE,
                     "the message would be a %zu-byte PUBLISH; the link carries at most %zu", size,
                     session_max_publish(s));
        return false;
    }
    return true;
}

static void op_publish(Client *c, Request *r)
{
    Daemon *d = c->d;
    if (!may_publish(c, r)) {
        return;
    }
    Session *s = d->broker.session;
    /* QoS 1/2 with a spool: on disk before anyone is told it was accepted. The waiter of a
     * publish with `wait` names its message (to abandon it at a timeout); one without only
     * waits for the disk and never touches the message, which may be gone before the disk
     * answers. */
    bool spooled = d->spool && r->qos > 0;
    Waiter *w = NULL;
    if (r->wait || spooled) {
        w = r->wait ? waiter_new(c, &publish_kind, r->id, VIEW_NULL, timeout_of(c, r))
                    : waiter_new(c, &durable_kind, r->id, VIEW_NULL, 0);
        if (!w) {
            answer_cannot_wait(c, r->id, 1);
            return;
        }
        w->qos = r->qos;
    }
    int64_t now = now_ms();
    SessionPublish p = {.topic = r->topic,
                        .payload = r->payload,
                        .qos = r->qos,
                        .retain = r->retain,
                        .props = buf_view(&r->props),
                        .expires_at = r->message_expiry ? now + r->message_expiry * 1000LL : 0};
    uint64_t mark = 0;
    int e = 0;
    if (spooled) {
        SpoolMessage sm = {.qos = r->qos,
                           .retain = r->retain,
                           .topic = r->topic,
                           .payload = r->payload,
                           .props = p.props,
                           .expires_at =
                               r->message_expiry ? wall_ms() + r->message_expiry * 1000LL : 0};
        e = spool_add(d->spool, &sm, &p.spool_id, &mark);
        if (e == -E2BIG) {
            cancel(w);
            answer_error(c, r->id, IPC_TOO_LARGE,
                         "the message is too large for the spool (records hold at most %u "
                         "bytes); send it with QoS 0 or without [queue] spool_dir",
                         SPOOL_RECORD_MAX);
            return;
        }
        if (e < 0) {
            cancel(w);
            answer_error(c, r->id, e == -ENOSPC ? IPC_QUEUE_FULL : IPC_INTERNAL,
                         "the spool cannot store the message (%s in %s): not accepted; QoS 0 "
                         "still works",
                         strerror(-e), d->cfg.queue.spool_dir);
            return;
        }
    }
    e = session_publish(s, &p, r->wait ? w : NULL, now, r->wait ? &w->msg : NULL);
    if (e < 0) {
        if (p.spool_id) {
            spool_done(d->spool, p.spool_id);
        }
        cancel(w);
        answer_publish_failure(c, r->id, e, r->qos);
        return;
    }
    if (!r->wait && spooled) {
        spool_wait(d->spool, &w->durable, mark, on_durable, w);
    } else if (!w) {
        answer_ok(c, r->id, NULL);
    }
}

static void op_request(Client *c, Request *r)
{
    r->v5_field = r->v5_field ? r->v5_field : "request"; /* Response Topic, Correlation Data */
    if (!may_publish(c, r)) {
        return;
    }
    int e = rpc_request(c, r, timeout_of(c, r));
    if (e < 0) {
        answer_publish_failure(c, r->id, e, r->qos);
    }
}

static void op_subscribe(Client *c, Request *r)
{
    if (permitted(c, r, ACL_SUBSCRIBE) && !v5_refused(c, r) && fits_mounted(c, r, r->topic, true) &&
        sessions_may_subscribe(c, r->id, r->topic)) {
        SubOptions o = {r->no_local, r->retain_as_published, r->retain_handling};
        subs_subscribe(c, r->id, r->topic, r->qos, r->encoding == ENC_BASE64, timeout_of(c, r), &o);
        sessions_client_subscribed(c);
    }
}

static void op_unsubscribe(Client *c, Request *r)
{
    subs_unsubscribe(c, r->id, r->topic, timeout_of(c, r));
    sessions_client_subscribed(c);
}

static json_t *int_or_null(bool ok, json_int_t v)
{
    return ok ? json_integer(v) : json_null();
}

/* MQTT 5's part of status: the protocol of the link, the id the broker assigned, and the
 * limits its CONNACK set (null before the first link). */
static void add_protocol_status(json_t *st, const Session *s)
{
    const SessionLimits *l = &s->limits;
    json_object_set_new(st, "protocol",
                        s->protocol ? json_string(s->protocol == MQTT_V5 ? "5" : "3.1.1")
                                    : json_null());
    json_object_set_new(st, "assigned_client_id",
                        s->assigned_client_id ? json_string(s->assigned_client_id) : json_null());
    json_t *lim = json_pack(
        "{s:i, s:i, s:b, s:o, s:i, s:b, s:b, s:b, s:o}", "receive_maximum", (int)l->receive_maximum,
        "maximum_qos", (int)l->maximum_qos, "retain_available", l->retain_available,
        "maximum_packet_size",
        l->maximum_packet_size ? json_integer(l->maximum_packet_size) : json_null(),
        "topic_alias_maximum", (int)l->topic_alias_maximum, "wildcard_subscription_available",
        l->wildcard_available, "subscription_identifiers_available", l->subscription_ids_available,
        "shared_subscription_available", l->shared_available, "server_keep_alive",
        l->server_keep_alive >= 0 ? json_integer(l->server_keep_alive) : json_null());
    json_object_set_new(st, "broker_limits", s->protocol ? lim : json_null());
    if (!s->protocol) {
        json_decref(lim);
    }
}

static void op_status(Client *c, Request *r)
{
    Daemon *d = c->d;
    Session *s = d->broker.session;
    int64_t now = now_ms();
    bool connected = s->state == SESSION_CONNECTED;
    json_t *st = json_pack(
        "{s:b, s:s, s:s, s:b, s:s, s:b, s:i, s:I, s:o, s:o, s:I, s:o, s:I, s:I, s:I, s:I, s:s}",
        "connected", connected, "state", session_state_name(s->state), "broker",
        d->broker.up || connected ? d->broker.peer : d->cfg.broker.host_list, "tls",
        d->cfg.tls.enabled, "client_id", d->client_id, "session_present",
        connected && s->session_present, "keepalive", (int)d->cfg.broker.keepalive, "uptime_s",
        (json_int_t)((now - d->started_at) / 1000), "connected_for_s",
        int_or_null(connected, (json_int_t)((now - s->connected_at) / 1000)), "last_error",
        s->last_error[0] ? json_string(s->last_error) : json_null(), "reconnects",
        (json_int_t)s->stats.reconnects, "next_retry_ms",
        int_or_null(s->state == SESSION_IDLE,
                    (json_int_t)(s->retry_at > now ? s->retry_at - now : 0)),
        "queued", (json_int_t)s->queued, "inflight", (json_int_t)s->inflight, "local_clients",
        (json_int_t)d->server.n_admitted, "subscriptions", (json_int_t)d->router.filters.count,
        "version", MQTTBRIDGE_VERSION);
    if (c->acl.admin) {
        /* Who is connected: for admins only. */
        json_t *list = json_array();
        dlist_for_each_safe(l, next, &d->server.conns)
        {
            Client *o = client_at(l);
            if (!o->conn.admitted) {
                continue; /* still being admitted: not a client yet */
            }
            json_array_append_new(list, json_pack("{s:i, s:I, s:s?, s:I}", "pid", (int)o->conn.pid,
                                                  "uid", (json_int_t)o->conn.uid, "user", o->user,
                                                  "subscriptions", (json_int_t)subs_count(o)));
        }
        json_object_set_new(st, "clients", list);
    }
    json_object_set_new(st, "subscriptions_lost",
                        json_integer((json_int_t)s->stats.subscriptions_lost));
    json_object_set_new(st, "rate_limited", json_boolean(s->rate_limited_since != 0));
    add_protocol_status(st, s);
    json_object_set_new(st, "last_subscription_lost",
                        d->lost_subscription[0] ? json_string(d->lost_subscription) : json_null());
    if (d->spool) {
        SpoolHealth h;
        spool_health(d->spool, &h);
        json_object_set_new(st, "spool_error",
                            h.write_error ? json_string(strerror(h.write_error)) : json_null());
        json_object_set_new(st, "spool_damaged_regions",
                            json_integer((json_int_t)h.damaged_regions));
    }
    TlsConn *tls = d->broker.tr.tls;
    if (tls && connected) {
        json_object_set_new(st, "tls_version", json_string(tls_version(tls)));
        json_object_set_new(st, "tls_cipher", json_string(tls_cipher(tls)));
        json_object_set_new(st, "tls_resumed", json_boolean(tls_resumed(tls)));
    }
    answer_ok(c, r->id, json_pack("{s:o}", "status", st));
}

static void op_stats(Client *c, Request *r)
{
    json_t *st = metrics_stats(c->d);
    answer_ok(c, r->id, st ? json_pack("{s:o}", "stats", st) : NULL);
}

static void op_ping(Client *c, Request *r)
{
    int64_t rtt = c->d->broker.session->last_ping_rtt_ms;
    answer_ok(c, r->id, json_pack("{s:o}", "broker_rtt_ms", int_or_null(rtt >= 0, rtt)));
}

static void op_events(Client *c, Request *r)
{
    if (r->events_connection >= 0) {
        c->events_connection = r->events_connection;
    }
    if (r->events_ping >= 0) {
        c->events_ping = r->events_ping;
    }
    answer_ok(c, r->id, NULL);
}

static void op_reconnect(Client *c, Request *r)
{
    if (!admin_only(c, r)) {
        return;
    }
    log_info("reconnect requested by client %llu (pid %d)", (unsigned long long)c->conn.serial,
             (int)c->conn.pid);
    broker_reconnect(&c->d->broker);
    answer_ok(c, r->id, NULL);
}

static void op_stats_reset(Client *c, Request *r)
{
    if (!admin_only(c, r)) {
        return;
    }
    memset(&c->d->broker.session->stats, 0, sizeof(c->d->broker.session->stats));
    memset(&c->d->stats, 0, sizeof(c->d->stats));
    c->d->rpc.unmatched = 0;
    answer_ok(c, r->id, NULL);
}

static void op_reload(Client *c, Request *r)
{
    if (!admin_only(c, r)) {
        return;
    }
    char err[512];
    json_t *id = r->id ? json_incref(r->id) : NULL; /* reload may close clients? never c */
    if (daemon_reload(c->d, err, sizeof(err)) < 0) {
        answer_error(c, id, IPC_BAD_REQUEST,
                     "reload failed, keeping the running "
                     "configuration: %s",
                     err);
    } else {
        answer_ok(c, id, NULL);
    }
    json_decref(id);
}

/* The fast path's buffer and ids, from line to line. */
static FastScratch fast_scratch;

void ops_free(void)
{
    fast_scratch_free(&fast_scratch);
}

static void ops_handle_line(Client *c, View line)
{
    typedef void (*op_fn)(Client *, Request *);
    static const op_fn ops[OP_COUNT] = {
        [OP_PUBLISH] = op_publish,
        [OP_SUBSCRIBE] = op_subscribe,
        [OP_UNSUBSCRIBE] = op_unsubscribe,
        [OP_STATUS] = op_status,
        [OP_STATS] = op_stats,
        [OP_PING] = op_ping,
        [OP_EVENTS] = op_events,
        [OP_RECONNECT] = op_reconnect,
        [OP_STATS_RESET] = op_stats_reset,
        [OP_RELOAD] = op_reload,
        [OP_REQUEST] = op_request,
        [OP_SESSION] = sessions_op_session,
        [OP_ACK] = sessions_op_ack,
        [OP_SESSION_END] = sessions_op_end,
        [OP_SESSIONS] = sessions_op_list,
    };
    Request req;
    IpcError err;
    if (request_parse_fast(line, &req, &fast_scratch) == 1) {
        ops[req.op](c, &req);
    } else if (request_parse(line, &req, &err) < 0) {
        answer_error(c, req.id, err.code, "%s", err.message);
    } else {
        ops[req.op](c, &req);
    }
    request_free(&req);
    buf_shrink(&fast_scratch.text, 65536);
}

/* ---- the connection layer's callbacks (server.c) ---- */

static int admit(Conn *k, enum ipc_error *code, char *why, size_t n)
{
    Client *c = client_of(k);
    c->d = k->srv->userdata;
    name_wait_init(&c->naming);
    dlist_init(&c->waiters);
    subs_client_init(c);
    return access_admit(c, code, why, n); /* the server logs a refusal */
}

static void on_line(Conn *k, View line)
{
    ops_handle_line(client_of(k), line);
}

static void overlong(Conn *k, size_t max)
{
    answer_error(client_of(k), NULL, IPC_TOO_LARGE, "request line longer than %zu bytes", max);
}

/* Still owed: a reply, or the retained messages of a new subscription (barrier). */
static bool owes(const Conn *k)
{
    return !dlist_empty(&client_of((Conn *)k)->waiters);
}

static void gone(Conn *k)
{
    Client *c = client_of(k);
    access_client_gone(c);
    sessions_client_gone(c); /* first: its session keeps its subscriptions */
    subs_client_gone(c);
    waiters_client_gone(c);
}

static void drained(Conn *k)
{
    sessions_drained(client_of(k));
}

static void release(Conn *k)
{
    Client *c = client_of(k);
    acl_view_free(&c->acl);
    free(c->user);
}

const ServerCallbacks ops_server_callbacks = {
    .conn_size = sizeof(Client),
    .admit = admit,
    .line = on_line,
    .overlong = overlong,
    .owes = owes,
    .gone = gone,
    .release = release,
    .drained = drained,
};
