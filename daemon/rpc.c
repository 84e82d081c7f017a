/* SPDX-License-Identifier: MIT */
/* Request/response: see rpc.h. */
#include "rpc.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <unistd.h>

#include "answer.h"
#include "log.h"
#include "mqtt/topic.h"
#include "subs.h"
#include "waiters.h"

void rpc_init(Daemon *d)
{
    Rpc *rpc = &d->rpc;
    *rpc = (Rpc){.target = {.kind = TARGET_RPC}};
    hashmap_init(&rpc->waiting);
    if (getrandom(&rpc->nonce, sizeof(rpc->nonce), GRND_NONBLOCK) != sizeof(rpc->nonce)) {
        rpc->nonce = (uint64_t)now_ms() ^ (uint64_t)getpid() << 32; /* unique enough per run */
    }
}

void rpc_free(Daemon *d)
{
    hashmap_free(&d->rpc.waiting, NULL); /* the waiters are their clients' */
    free(d->rpc.topic);
    d->rpc.topic = NULL;
}

/* ---- the waiting request ---- */

/* Why request_done runs, when it is not the session's answer to the request's PUBLISH: the
 * response (set around waiter_complete), or the broker refusing the response subscription. */
static struct {
    const MqttPublish *m;
    const MqttProps *props;
    bool subscription_refused;
} answering;

static View correlation_of(const Waiter *w)
{
    return VIEW_STR(w->filter);
}

static void forget(Waiter *w)
{
    Daemon *d = w->c->d;
    if (hashmap_get(&d->rpc.waiting, correlation_of(w)) == w) {
        (void)hashmap_remove(&d->rpc.waiting, correlation_of(w));
    }
}

/* The session's answer to the request's PUBLISH: the response is still to come - unless it
 * failed, or the broker said nobody is subscribed (then nobody can answer). */
static bool request_progress(Waiter *w, int result)
{
    if (answering.m || answering.subscription_refused) {
        return false;
    }
    w->msg = NULL; /* the session is done with it */
    return result >= 0 && w->reason != MQTT_RC_NO_MATCHING_SUBSCRIBERS &&
           w->c->d->broker.session->protocol == MQTT_V5;
}

static void send_response(Waiter *w)
{
    Buf out = {0};
    if (reply_response(&out, w->id, answering.m->topic, answering.m->payload, false,
                       answering.props) < 0) {
        conn_close(&w->c->conn, "out of memory");
    } else {
        conn_send(&w->c->conn, buf_view(&out));
    }
    buf_free(&out);
}

/* The response (answering set), or the end of the request's PUBLISH (request_progress). */
static void request_done(Waiter *w, int result)
{
    forget(w);
    if (w->msg && (answering.m || answering.subscription_refused)) {
        /* (the broker has not confirmed the request yet: it is still sent) */
        session_abandon(w->c->d->broker.session, w->msg, false);
        w->msg = NULL;
    }
    if (answering.m) {
        send_response(w);
    } else if (answering.subscription_refused) {
        answer_refused(w->c, w->id, w,
                       "the broker refused the subscription to the responses (%s): %s",
                       w->c->d->rpc.topic, w->reason_text);
    } else if (result >= 0 && w->c->d->broker.session->protocol != MQTT_V5) {
        answer_error(w->c, w->id, IPC_BAD_REQUEST,
                     "request needs MQTT 5, and the broker turned out to speak 3.1.1: the request "
                     "went out without its response topic, so no response can come");
    } else if (result >= 0) {
        answer_refused(w->c, w->id, w,
                       "nobody is subscribed to the request's topic (the broker said No matching "
                       "subscribers): no response can come");
    } else if (result == -EPERM) {
        answer_refused(w->c, w->id, w, "the broker refused the request: %s", w->reason_text);
    } else {
        answer_publish_failure(w->c, w->id, result, w->qos);
    }
}

static void request_timeout(Waiter *w)
{
    forget(w);
    if (w->msg) {
        session_abandon(w->c->d->broker.session, w->msg, false); /* still sent */
    }
    answer_error(w->c, w->id, IPC_TIMEOUT, "no response in time on %s%s", w->c->d->rpc.topic,
                 w->msg ? "; the broker has not confirmed the request either" : "");
}

static void request_gone(Waiter *w)
{
    forget(w);
    if (w->msg) {
        session_abandon(w->c->d->broker.session, w->msg, false);
    }
}

static const WaiterKind request_kind = {request_done, request_timeout, request_gone,
                                        request_progress};

/* ---- the response subscription ---- */

/* The response topic: chosen once (see rpc.h). */
static const char *response_topic(Daemon *d)
{
    Rpc *rpc = &d->rpc;
    if (rpc->topic) {
        return rpc->topic;
    }
    const Session *s = d->broker.session;
    const char *prefix = d->cfg.rpc.response_prefix;
    const char *id = s->assigned_client_id ? s->assigned_client_id : d->client_id;
    char fallback[300];
    if (!prefix || !*prefix) {
        prefix = s->response_information;
    }
    if (!prefix || !*prefix || mqtt_topic_check(VIEW_STR(prefix)) < 0) {
        if (id && *id && strlen(id) < 200 && !strpbrk(id, "+#/")) {
            snprintf(fallback, sizeof(fallback), "mqttbridge/%s/responses", id);
        } else {
            snprintf(fallback, sizeof(fallback), "mqttbridge/%016" PRIx64 "/responses", rpc->nonce);
        }
        prefix = fallback;
    }
    rpc->topic = strdup(prefix);
    return rpc->topic;
}

/* Hold the response topic (once): 0, or -errno. */
static int hold_responses(Daemon *d)
{
    Rpc *rpc = &d->rpc;
    if (rpc->held) {
        return 0;
    }
    const char *topic = response_topic(d);
    if (!topic) {
        return -ENOMEM;
    }
    View f = VIEW_STR(topic);
    int r = router_add(&d->router, f, &rpc->target, 1, false);
    if (r < 0) {
        return r;
    }
    router_settle(&d->router, f, &rpc->target); /* no retained message is a response */
    if ((r & (ROUTER_FIRST | ROUTER_UPGRADE)) && (r = subs_ask_broker(d, f, rpc, false)) < 0) {
        (void)router_remove(&d->router, f, &rpc->target);
        return r;
    }
    rpc->held = true;
    log_info("requests: responses arrive on %s", topic);
    return 0;
}

/* Stop holding the response topic (made again at the next request). */
static void let_go(Daemon *d)
{
    Rpc *rpc = &d->rpc;
    if (rpc->held) {
        (void)router_remove(&d->router, VIEW_STR(rpc->topic), &rpc->target);
        rpc->held = false;
    }
}

void rpc_lost(Daemon *d, View filter)
{
    if (d->rpc.held && view_eq_str(filter, d->rpc.topic)) {
        let_go(d);
    }
}

void rpc_subscribed(Daemon *d, int result, uint8_t reason, View reason_string)
{
    Rpc *rpc = &d->rpc;
    if (result >= 0) {
        return; /* granted: SESSION_EV_SUBSCRIBED marked it so */
    }
    char why[160] = "0x80";
    if (reason) {
        mqtt_reason_describe(why, sizeof(why), reason, reason_string);
    }
    log_warning("requests: the broker refused the subscription to the responses (%s): %s; "
                "waiting requests fail, the next one asks again",
                rpc->topic, why);
    let_go(d);
    /* Every waiting request fails: none can get its response. Listed by correlation and looked
     * up again one by one: a reply that cannot be queued closes its client, and that client's
     * other requests are gone from the map by the time their turn comes. */
    Buf corrs = {0};
    HashIter it;
    void *v;
    bool listed = true;
    for (hashmap_iter(&rpc->waiting, &it); listed && hashmap_iter_next(&it, &v);) {
        View corr = correlation_of(v);
        listed = buf_append(&corrs, corr.p, corr.n + 1) == 0; /* with its NUL */
    }
    answering.subscription_refused = true;
    for (size_t at = 0; listed && at < buf_size(&corrs);) {
        const char *corr = (const char *)buf_view(&corrs).p + at;
        at += strlen(corr) + 1;
        Waiter *w = hashmap_get(&rpc->waiting, VIEW_STR(corr));
        if (w) {
            waiter_set_reason(w, reason ? reason : MQTT_RC_UNSPECIFIED, reason_string);
            waiter_complete(w, -EPERM);
        }
    }
    answering.subscription_refused = false;
    buf_free(&corrs); /* out of memory: they time out instead */
}

/* ---- the op ---- */

/* The request's properties: the caller's, then our Response Topic and Correlation Data. */
static int request_props(const Request *r, const char *topic, View corr, Buf *out)
{
    MqttProps mine = {.has = MQTT_PROP_BIT(MQTT_PROP_RESPONSE_TOPIC) |
                             MQTT_PROP_BIT(MQTT_PROP_CORRELATION_DATA),
                      .response_topic = VIEW_STR(topic),
                      .correlation_data = corr,
                      .block = buf_view(&r->props)};
    return mqtt_props_encode(out, &mine, MQTT_PUBLISH);
}

int rpc_request(Client *c, Request *r, int64_t timeout_ms)
{
    Daemon *d = c->d;
    Rpc *rpc = &d->rpc;
    if (json_object_get(r->root, "response_topic") ||
        json_object_get(r->root, "correlation_data") ||
        json_object_get(r->root, "correlation_data_b64") || r->retain) {
        answer_error(c, r->id, IPC_BAD_REQUEST, "%s",
                     r->retain ? "a request cannot be retained (every later responder would "
                                 "answer it)"
                               : "request sets response_topic and correlation_data itself: use "
                                 "publish to give your own");
        return 0;
    }
    /* 128 random bits: no other client of the broker can guess a request it has not seen. */
    char corr[RPC_CORRELATION_LEN + 1];
    uint8_t rnd[RPC_CORRELATION_LEN / 2];
    if (getrandom(rnd, sizeof(rnd), GRND_NONBLOCK) != (ssize_t)sizeof(rnd)) {
        return -EAGAIN;
    }
    for (size_t i = 0; i < sizeof(rnd); i++) {
        snprintf(corr + 2 * i, 3, "%02x", rnd[i]);
    }
    int e = hold_responses(d);
    if (e < 0) {
        return e;
    }
    Waiter *w = waiter_new(c, &request_kind, r->id, VIEW_STR(corr), timeout_ms);
    if (!w) {
        answer_cannot_wait(c, r->id, 1);
        return 0;
    }
    w->qos = r->qos;
    Buf props = {0};
    int64_t now = now_ms();
    /* A request nobody waits for any more is not worth sending, nor answering: its expiry is
     * at most the wait. */
    int64_t life = r->message_expiry ? r->message_expiry * 1000LL : timeout_ms;
    SessionPublish p = {.topic = r->topic,
                        .payload = r->payload,
                        .qos = r->qos,
                        .expires_at = now + (life < timeout_ms ? life : timeout_ms)};
    if ((e = hashmap_put(&rpc->waiting, VIEW_STR(corr), w)) == 0 &&
        (e = request_props(r, rpc->topic, VIEW_STR(corr), &props)) == 0) {
        p.props = buf_view(&props);
        e = session_publish(d->broker.session, &p, w, now, &w->msg);
    }
    buf_free(&props);
    if (e < 0) {
        forget(w);
        waiter_cancel(w);
        return e < -1000 ? -EMSGSIZE : e; /* (the properties cannot be encoded: too large) */
    }
    return 0;
}

void rpc_response(Daemon *d, const MqttPublish *m, const MqttProps *props)
{
    Rpc *rpc = &d->rpc;
    /* Keys are bytes: anything but one of ours matches nothing. */
    Waiter *w = MQTT_HAS(props, MQTT_PROP_CORRELATION_DATA)
                    ? hashmap_get(&rpc->waiting, props->correlation_data)
                    : NULL;
    if (!w) {
        rpc->unmatched++;
        return;
    }
    answering.m = m;
    answering.props = props;
    waiter_complete(w, 0);
    answering.m = NULL;
    answering.props = NULL;
}
