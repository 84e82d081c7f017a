/* SPDX-License-Identifier: MIT */
/*
 * The session suites' harness: the test plays the broker with a scripted clock, decoding
 * what the session wrote and feeding it encoded packets, and records the session's events.
 */
#pragma once

#include "mqtt/session.h"
#include "testutil.h"

#define MAX_EVENTS 64

typedef struct Harness {
    Session *s;
    int64_t now;
    SessionEvent ev[MAX_EVENTS];
    char reason[MAX_EVENTS][200];
    size_t n_ev;
    MqttDecoder wire; /* what the session wrote */
    char msg_topic[64], msg_payload[64];
} Harness;

static inline void on_event(void *ud, const SessionEvent *ev)
{
    Harness *h = ud;
    ck_assert_uint_lt(h->n_ev, MAX_EVENTS);
    h->ev[h->n_ev] = *ev;
    if (ev->type == SESSION_EV_LINK_DOWN) {
        /* As the daemon does: write what is pending, then close. */
        ck_assert_int_eq(mqtt_decoder_feed(&h->wire, buf_view(&h->s->out).p, buf_size(&h->s->out)),
                         0);
        buf_clear(&h->s->out);
        snprintf(h->reason[h->n_ev], sizeof(h->reason[0]), "%s", ev->down.reason);
    }
    if (ev->type == SESSION_EV_SUBSCRIPTION_LOST) { /* the view lasts as long as the call */
        snprintf(h->msg_topic, sizeof(h->msg_topic), "%.*s", (int)ev->lost.filter.n,
                 (const char *)ev->lost.filter.p);
    }
    if (ev->type == SESSION_EV_MESSAGE) {
        snprintf(h->msg_topic, sizeof(h->msg_topic), "%.*s", (int)ev->message.publish->topic.n,
                 (const char *)ev->message.publish->topic.p);
        snprintf(h->msg_payload, sizeof(h->msg_payload), "%.*s",
                 (int)ev->message.publish->payload.n, (const char *)ev->message.publish->payload.p);
    }
    h->n_ev++;
}

static inline SessionConfig base_config(void)
{
    return (SessionConfig){.client_id = VIEW_STR("test-client"),
                           .keepalive = 10,
                           .clean_session = true,
                           .connect_timeout_ms = 5000,
                           .reconnect_min_ms = 1000,
                           .reconnect_max_ms = 60000,
                           .max_inflight = 3,
                           .max_messages = 100,
                           .max_bytes = 100000,
                           .max_packet = 1 << 20,
                           .seed = 42};
}

static inline void setup_with(Harness *h, const SessionConfig *cfg)
{
    *h = (Harness){.now = 1000000};
    static const SessionCallbacks cb = {.event = on_event};
    ck_assert_int_eq(session_new(cfg, &cb, h, &h->s), 0);
    mqtt_decoder_init(&h->wire, 0);
}

static inline void teardown(Harness *h)
{
    session_free(h->s);
    mqtt_decoder_free(&h->wire);
}

/* Move what the session wrote onto the test's side of the wire. */
static inline void take_output(Harness *h)
{
    h->wire.version = h->s->protocol ? h->s->protocol : MQTT_V311; /* the link's protocol */
    ck_assert_int_eq(mqtt_decoder_feed(&h->wire, buf_view(&h->s->out).p, buf_size(&h->s->out)), 0);
    buf_clear(&h->s->out);
}

/* The next packet the session wrote, which must be of type `type`. */
static inline MqttPacket expect_packet(Harness *h, enum mqtt_type type)
{
    take_output(h);
    MqttPacket p;
    ck_assert_int_eq(mqtt_decoder_next(&h->wire, &p), 1);
    ck_assert_msg(p.type == type, "got %s, want %s", mqtt_type_name(p.type), mqtt_type_name(type));
    return p;
}

static inline void expect_no_packet(Harness *h)
{
    take_output(h);
    MqttPacket p;
    int r = mqtt_decoder_next(&h->wire, &p);
    ck_assert_msg(r == 0, "unexpected %s", r > 0 ? mqtt_type_name(p.type) : "error");
}

static inline void broker_sends(Harness *h, const MqttPacket *p)
{
    Buf b = {0};
    ck_assert_int_eq(mqtt_encode(&b, p), 0);
    session_input(h->s, b.data, b.len, h->now);
    buf_free(&b);
}

static inline void broker_ack(Harness *h, enum mqtt_type type, uint16_t id)
{
    MqttPacket p = {.type = type, .ack = {.id = id}};
    if (type == MQTT_UNSUBACK) {
        p.suback = (MqttSuback){.id = id};
    }
    broker_sends(h, &p);
}

static inline const SessionEvent *last_event(Harness *h, enum session_event_type type)
{
    for (size_t i = h->n_ev; i-- > 0;) {
        if (h->ev[i].type == type) {
            return &h->ev[i];
        }
    }
    return NULL;
}

static inline size_t count_events(Harness *h, enum session_event_type type)
{
    size_t n = 0;
    for (size_t i = 0; i < h->n_ev; i++) {
        n += h->ev[i].type == type;
    }
    return n;
}

/* Connect and answer CONNACK. */
static inline void connect_with(Harness *h, bool session_present)
{
    ck_assert(session_should_connect(h->s, h->now));
    session_transport_up(h->s, h->now);
    expect_packet(h, MQTT_CONNECT);
    MqttPacket ack = {.type = MQTT_CONNACK, .connack = {.session_present = session_present}};
    broker_sends(h, &ack);
    ck_assert_int_eq(h->s->state, SESSION_CONNECTED);
}

static inline void setup_connected(Harness *h)
{
    SessionConfig c = base_config();
    setup_with(h, &c);
    connect_with(h, false);
}

static int req_tag[16];
#define REQ(i) ((void *)&req_tag[i])
