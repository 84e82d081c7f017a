/* SPDX-License-Identifier: MIT */
/*
 * From the broker session to local clients: messages routed to every client whose filters
 * match (once per client), connection and ping events to the clients that asked for them,
 * and the completions that answer waiting requests.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bridge.h"
#include "answer.h"
#include "log.h"
#include "notify.h"
#include "rpc.h"
#include "sessions.h"
#include "subs.h"
#include "waiters.h"

/* router_ready_fn for deliver: whether a shared subscription's member can take the message
 * event (*userdata bytes, estimated) without passing ipc.client_buffer, so that the group
 * hands it to one that can rather than drop it (answer_message decides for real, by the same
 * rule: an empty buffer takes any message). */
static bool has_room(const RouterTarget *t, void *userdata)
{
    if (t->kind == TARGET_SESSION) {
        return sessions_ready(t);
    }
    const Client *c = container_of(t, Client, own.target);
    size_t queued = conn_queued(&c->conn);
    return !queued || queued + *(const size_t *)userdata <= c->d->cfg.ipc.client_buffer;
}

/* The Subscription Identifiers an MQTT 5 copy names (at most MAX_COPY_IDS; more is a broker
 * naming more subscriptions than any filter of ours could match: the rest are ignored). */
#define MAX_COPY_IDS 64
static size_t copy_ids(const MqttProps *props, uint32_t *ids)
{
    size_t n = 0;
    View raw = props->raw;
    MqttPropItem it;
    while (props->n_subid && n < MAX_COPY_IDS && mqtt_props_next(&raw, &it) == 1) {
        if (it.id == MQTT_PROP_SUBSCRIPTION_ID) {
            ids[n++] = it.subid;
        }
    }
    return n;
}

static void deliver(Daemon *d, const MqttPublish *m, const MqttProps *props, bool unmounted)
{
    /* The event text depends only on (QoS, encoding): built at most once for each. */
    static Buf variants[3][2];
    RouterTarget **t;
    /* For has_room, before the member (so the encoding) is chosen: the payload as base64 (4/3,
     * the larger form unless the text needs many escapes), the topic, and the JSON around them
     * (under 96 bytes). An estimate: a topic full of characters to escape can exceed it. */
    size_t need = m->topic.n + (m->payload.n + 2) / 3 * 4 + 96;
    uint32_t ids[MAX_COPY_IDS];
    size_t n_ids = copy_ids(props, ids);
    d->router.match_domain = !mqtt_mount_active(&d->mount) ? ROUTER_ANY
                             : unmounted                   ? ROUTER_UNMOUNTED
                                                           : ROUTER_MOUNTED;
    size_t n = router_match_copy(&d->router, m->topic, m->retain, ids, n_ids, has_room, &need, &t);
    d->router.match_domain = ROUTER_ANY;
    for (size_t i = 0; i < n; i++) {
        if (t[i]->kind == TARGET_RPC) {
            rpc_response(d, m, props);
            continue;
        }
        if (t[i]->kind == TARGET_SESSION) {
            sessions_deliver(d, t[i], m, props);
            continue;
        }
        Client *c = container_of(t[i], Client, own.target);
        uint8_t qos = m->qos < t[i]->qos ? m->qos : t[i]->qos;
        Buf *v = &variants[qos][t[i]->base64];
        if (!v->len &&
            event_message(v, m->topic, m->payload, qos, m->retain, t[i]->base64, props) < 0) {
            continue;
        }
        answer_message(c, buf_view(v));
    }
    for (int q = 0; q < 3; q++) {
        for (int b = 0; b < 2; b++) {
            buf_clear(&variants[q][b]);
            buf_shrink(&variants[q][b], 65536);
        }
    }
}

/* An event line to every client that asked for this kind. */
static void broadcast(Daemon *d, bool connection, json_t *event)
{
    Buf b = {0};
    if (write_json_line(&b, event) == 0) {
        /* conn_send may close a client (out of memory), which moves it off the list. */
        dlist_for_each_safe(l, next, &d->server.conns)
        {
            Client *c = client_at(l);
            if (connection ? c->events_connection : c->events_ping) {
                conn_send(&c->conn, buf_view(&b));
            }
        }
    }
    buf_free(&b);
}

static void link_down(Daemon *d, const SessionEvent *ev)
{
    Session *s = d->broker.session;
    subs_link_down(d);
    int64_t wait = s->retry_at - now_ms();
    if (s->state != SESSION_STOPPED) {
        notify_status("reconnecting in %lld s: %s", (long long)((wait > 0 ? wait : 0) + 999) / 1000,
                      ev->down.reason);
    }
    if (ev->down.was_connected) {
        if (ev->down.code) {
            log_warning("connection to the broker lost: %s; reconnecting in %lld ms",
                        ev->down.reason, (long long)(wait > 0 ? wait : 0));
        } else {
            log_info("disconnected from the broker: %s", ev->down.reason);
        }
        json_t *e = json_pack("{s:s, s:s, s:o}", "event", "disconnected", "reason", ev->down.reason,
                              "rc", ev->down.code ? json_integer(ev->down.code) : json_null());
        if (e && ev->down.broker_reason >= 0) { /* MQTT 5: the broker said why */
            json_object_set_new(e, "reason_code", json_integer(ev->down.broker_reason));
        }
        broadcast(d, true, e);
    } else if (ev->down.code && s->state != SESSION_STOPPED) {
        log_warning("cannot connect to the broker: %s; retrying in %lld ms", ev->down.reason,
                    (long long)(wait > 0 ? wait : 0));
    }
}

/* What the spool must know before the bytes that follow reach the broker. A failed write is
 * logged by the spool; the message is then resent under a new id after a restart. */
static void record_progress(Daemon *d, const SessionEvent *ev)
{
    if (!d->spool) {
        return;
    }
    int r = 0;
    switch (ev->type) {
    case SESSION_EV_PUBLISH_SENT:
        r = spool_sent(d->spool, ev->sent.spool_id, ev->sent.packet_id);
        break;
    case SESSION_EV_PUBREC:
        r = spool_pubrec(d->spool, ev->sent.spool_id);
        break;
    case SESSION_EV_QOS2_HELD:
    case SESSION_EV_QOS2_RELEASED:
        if (!d->cfg.broker.clean_session) { /* a clean session forgets them at reconnect */
            r = spool_incoming(d->spool, ev->packet_id, ev->type == SESSION_EV_QOS2_HELD);
        }
        break;
    case SESSION_EV_CONNECTED:
        if (!ev->connected.session_present) {
            r = spool_incoming_clear(d->spool);
        }
        break;
    default:
        break;
    }
    (void)r; /* the spool logs write failures once per episode */
}

/* A message has left the queue: sent, refused, expired or too large for the link. */
static void publish_ended(Daemon *d, const SessionEvent *ev)
{
    int e = ev->done.result;
    if (ev->done.spool_id) {
        spool_done(d->spool, ev->done.spool_id);
    }
    if (e == -ETIME && !ev->done.req) { /* asked for, and counted: not worth a warning each */
        log_debug("a queued message expired (message_expiry) before it could be sent");
    } else if (e < 0 && !ev->done.req) { /* nobody waits to be told */
        log_warning("a queued message was not delivered: %s%s",
                    e == -EPERM   ? "the broker refused it"
                    : e == -ETIME ? "its message_expiry passed in the queue"
                    : e == -E2BIG ? "its topic with [topics] mount is longer than MQTT allows"
                                  : strerror(-e),
                    e == -EMSGSIZE || e == -ENOTSUP ? " (the broker's limits)" : "");
    }
}

void bridge_on_event(void *userdata, const SessionEvent *ev)
{
    Daemon *d = userdata;
    switch (ev->type) {
    case SESSION_EV_PUBLISH_SENT:
    case SESSION_EV_PUBREC:
    case SESSION_EV_QOS2_HELD:
    case SESSION_EV_QOS2_RELEASED:
        record_progress(d, ev);
        break;
    case SESSION_EV_SUBSCRIPTION_LOST:
        subs_lost(d, ev->lost.filter, ev->lost.code);
        rpc_lost(d, ev->lost.filter);
        sessions_lost(d, ev->lost.filter);
        break;
    case SESSION_EV_SUBSCRIBED:
        subs_granted(d, ev->granted.filter, ev->granted.qos);
        break;
    case SESSION_EV_CONNECTED:
        record_progress(d, ev);
        subs_link_up(d, ev->connected.session_present);
        log_info("connected to %s as %s (session present: %s)", d->broker.peer, d->client_id,
                 ev->connected.session_present ? "yes" : "no");
        notify_status("connected to %s", d->broker.peer);
        broadcast(d, true,
                  json_pack("{s:s, s:b}", "event", "connected", "session_present",
                            ev->connected.session_present));
        break;
    case SESSION_EV_LINK_DOWN:
        link_down(d, ev);
        break;
    case SESSION_EV_MESSAGE:
        deliver(d, ev->message.publish, ev->message.props, ev->message.unmounted);
        break;
    case SESSION_EV_PING_SENT:
        break;
    case SESSION_EV_PROPERTIES_DROPPED:
        if (!d->props_drop_logged) {
            d->props_drop_logged = true;
            log_warning("the broker speaks MQTT 3.1.1: the MQTT 5 properties of messages taken "
                        "before it said so are left out (counted in properties_dropped; logged "
                        "once)");
        }
        break;
    case SESSION_EV_PING_ANSWERED:
        broadcast(d, false,
                  json_pack("{s:s, s:I}", "event", "ping", "rtt_ms", (json_int_t)ev->ping.rtt_ms));
        break;
    case SESSION_EV_PUBLISH_DONE:
        publish_ended(d, ev);
        /* fall through */
    case SESSION_EV_UNSUBSCRIBE_DONE:
    case SESSION_EV_SUBSCRIBE_DONE:
    case SESSION_EV_BARRIER_DONE:
        if (ev->done.req == &d->rpc) { /* the request op's own subscription */
            rpc_subscribed(d, ev->done.result, ev->done.reason, ev->done.reason_string);
        } else if (ev->done.req) { /* NULL: nobody waits (any more) */
            waiter_set_reason(ev->done.req, ev->done.reason, ev->done.reason_string);
            waiter_complete(ev->done.req, ev->done.result);
        }
        break;
    }
}

void bridge_input_done(void *userdata)
{
    Daemon *d = userdata;
    server_flush(&d->server);
}
