/* SPDX-License-Identifier: MIT */
/*
 * Unit tests of the session state machine, driven with a scripted clock: the test plays the
 * broker by decoding what the session wrote and feeding encoded packets back.
 */
#include <errno.h>

#include "defaults.h"
#include "session_harness.h"

START_TEST(connect_packet_fields)
{
    Harness h;
    SessionConfig c = base_config();
    c.has_username = c.has_password = true;
    c.username = VIEW_STR("user");
    c.password = VIEW_STR("secret");
    c.will = true;
    c.will_topic = VIEW_STR("status/test");
    c.will_payload = VIEW_STR("offline");
    c.will_qos = 1;
    c.will_retain = true;
    c.clean_session = false;
    c.keepalive = 30;
    setup_with(&h, &c);
    ck_assert_int_eq(h.s->state, SESSION_IDLE);
    ck_assert(session_should_connect(h.s, h.now));
    ck_assert(!session_should_connect(h.s, h.now));
    session_transport_up(h.s, h.now);
    MqttPacket p = expect_packet(&h, MQTT_CONNECT);
    ck_assert_view_str(p.connect.client_id, "test-client");
    ck_assert_view_str(p.connect.username, "user");
    ck_assert_view_str(p.connect.password, "secret");
    ck_assert_view_str(p.connect.will_topic, "status/test");
    ck_assert_view_str(p.connect.will_payload, "offline");
    ck_assert_int_eq(p.connect.will_qos, 1);
    ck_assert(p.connect.will_retain);
    ck_assert(!p.connect.clean_session);
    ck_assert_int_eq(p.connect.keepalive, 30);
    ck_assert_uint_eq(h.s->stats.connections_sent, 1);

    MqttPacket ack = {.type = MQTT_CONNACK, .connack = {.session_present = true}};
    broker_sends(&h, &ack);
    const SessionEvent *ev = last_event(&h, SESSION_EV_CONNECTED);
    ck_assert_ptr_nonnull(ev);
    ck_assert(ev->connected.session_present);
    ck_assert(h.s->session_present);
    ck_assert_uint_eq(h.s->stats.packets_sent, 1);
    ck_assert_uint_eq(h.s->stats.packets_received, 1);
    ck_assert_uint_eq(h.s->stats.bytes_received, 4);
    teardown(&h);
}
END_TEST

START_TEST(connack_refusals)
{
    static const char *const text[] = {
        NULL,
        "connection refused: unacceptable protocol version",
        "connection refused: identifier rejected",
        "connection refused: server unavailable",
        "connection refused: bad user name or password",
        "connection refused: not authorized",
    };
    for (int rc = 1; rc <= 5; rc++) {
        Harness h;
        SessionConfig c = base_config();
        setup_with(&h, &c);
        ck_assert(session_should_connect(h.s, h.now));
        session_transport_up(h.s, h.now);
        MqttPacket ack = {.type = MQTT_CONNACK, .connack = {.rc = (uint8_t)rc}};
        broker_sends(&h, &ack);
        const SessionEvent *ev = last_event(&h, SESSION_EV_LINK_DOWN);
        ck_assert_ptr_nonnull(ev);
        ck_assert(ev->down.refused);
        ck_assert_int_eq(ev->down.code, rc);
        ck_assert(!ev->down.was_connected);
        ck_assert_str_eq(h.s->last_error, text[rc]);
        ck_assert_int_eq(h.s->state, SESSION_IDLE);
        ck_assert_uint_eq(h.s->stats.connections_failed, 1);
        /* The first retry comes within reconnect_min; after "server unavailable" (an
         * overloaded broker) within a window twice doubled. */
        ck_assert_int_ge(h.s->retry_at, h.now);
        ck_assert_int_le(h.s->retry_at, h.now + (rc == 3 ? 4000 : 1000));
        teardown(&h);
    }
}
END_TEST

START_TEST(backoff_grows_with_jitter_and_resets)
{
    Harness h;
    SessionConfig c = base_config();
    c.reconnect_max_ms = 8000;
    setup_with(&h, &c);
    int64_t ceiling = 1000;
    bool low = false;
    for (int i = 0; i < 8; i++) {
        ck_assert(session_should_connect(h.s, h.now));
        session_transport_down(h.s, h.now, ETIMEDOUT, "connect to 127.0.0.1:1: timed out");
        int64_t delay = h.s->retry_at - h.now;
        ck_assert_int_ge(delay, 0); /* full jitter: anywhere in the window */
        ck_assert_int_le(delay, ceiling);
        low |= delay < ceiling / 2;
        h.now = h.s->retry_at;
        ceiling = ceiling * 2 > 8000 ? 8000 : ceiling * 2;
    }
    ck_assert(low); /* (equal jitter would never go below half the window) */
    ck_assert_str_eq(h.s->last_error, "connect to 127.0.0.1:1: timed out");
    ck_assert_uint_eq(h.s->stats.connections_failed, 8);
    ck_assert_uint_eq(h.s->stats.connections_sent, 8);

    /* A link that stayed up resets the backoff. */
    connect_with(&h, false);
    ck_assert_str_eq(h.s->last_error, "");
    h.now += 20000;
    session_transport_down(h.s, h.now, ECONNRESET, "read: Connection reset by peer");
    ck_assert_int_le(h.s->retry_at - h.now, 1000);
    const SessionEvent *ev = last_event(&h, SESSION_EV_LINK_DOWN);
    ck_assert(ev->down.was_connected);
    ck_assert_int_eq(ev->down.code, ECONNRESET);
    /* A refused connection (the broker's host is up, its listener is not: overloaded, or
     * restarting) widens the window twice more than the attempt alone would. */
    h.now = h.s->retry_at;
    ck_assert(session_should_connect(h.s, h.now));
    session_transport_down(h.s, h.now, ECONNREFUSED, "Connection refused");
    ck_assert_int_le(h.s->retry_at - h.now, 8000);
    int64_t widest = 0;
    for (int i = 0; i < 16; i++) {
        unsigned attempts = 1; /* + 2 for the signal: an 8 s window */
        widest = session_backoff_ms(SESSION_JITTER_FULL, &attempts, true, 1000, 8000,
                                    (uint64_t)i * 7919);
        ck_assert_int_le(widest, 8000);
        ck_assert_uint_eq(attempts, 4);
    }
    unsigned a = 0;
    ck_assert_int_eq(session_backoff_ms(SESSION_JITTER_EQUAL, &a, true, 1000, 8000, 0), 500);
    ck_assert_uint_eq(a, 1); /* no signals in 0.1's */
    a = 0;
    ck_assert_int_eq(session_backoff_ms(SESSION_JITTER_FULL, &a, false, 1000, 8000, 0), 0);
    a = 10; /* at the ceiling; with a signal, twice it */
    ck_assert_int_eq(session_backoff_ms(SESSION_JITTER_FULL, &a, false, 1000, 8000, 8000), 8000);
    ck_assert_int_eq(session_backoff_ms(SESSION_JITTER_FULL, &a, true, 1000, 8000, 16000), 16000);
    teardown(&h);
}
END_TEST

START_TEST(connect_timeout)
{
    Harness h;
    SessionConfig c = base_config();
    setup_with(&h, &c);
    ck_assert(session_should_connect(h.s, h.now));
    ck_assert_int_eq(session_tick(h.s, h.now), h.now + 5000);
    session_transport_up(h.s, h.now + 100);
    ck_assert_int_eq(session_tick(h.s, h.now + 4999), h.now + 5000);
    ck_assert_int_eq(h.s->state, SESSION_CONNACK_WAIT);
    session_tick(h.s, h.now + 5000);
    ck_assert_int_eq(h.s->state, SESSION_IDLE);
    ck_assert_str_eq(h.s->last_error, "connect timeout (5000 ms): waiting for CONNACK");
    ck_assert_int_eq(last_event(&h, SESSION_EV_LINK_DOWN)->down.code, ETIMEDOUT);
    teardown(&h);
}
END_TEST

START_TEST(keepalive_ping_and_rtt)
{
    Harness h;
    setup_connected(&h);
    int64_t t0 = h.now;
    /* Nothing sent for the keepalive interval: PINGREQ. */
    ck_assert_int_eq(session_tick(h.s, t0 + 9999), t0 + 10000);
    expect_no_packet(&h);
    h.now = t0 + 10000;
    int64_t next = session_tick(h.s, h.now);
    expect_packet(&h, MQTT_PINGREQ);
    ck_assert_int_eq(next, h.now + 5000); /* keepalive/2 to answer */
    ck_assert_uint_eq(count_events(&h, SESSION_EV_PING_SENT), 1);
    h.now += 37;
    MqttPacket resp = {.type = MQTT_PINGRESP};
    broker_sends(&h, &resp);
    const SessionEvent *ev = last_event(&h, SESSION_EV_PING_ANSWERED);
    ck_assert_ptr_nonnull(ev);
    ck_assert_int_eq(ev->ping.rtt_ms, 37);
    ck_assert_int_eq(h.s->last_ping_rtt_ms, 37);
    ck_assert_uint_eq(h.s->stats.ping_sent, 1);
    ck_assert_uint_eq(h.s->stats.ping_received, 1);
    ck_assert_uint_eq(h.s->stats.ping_rtt_sum_ms, 37);

    /* The next ping goes unanswered: dead after keepalive/2. */
    h.now = t0 + 20000;
    session_tick(h.s, h.now);
    expect_packet(&h, MQTT_PINGREQ);
    session_tick(h.s, h.now + 4999);
    ck_assert_int_eq(h.s->state, SESSION_CONNECTED);
    session_tick(h.s, h.now + 5000);
    ck_assert_int_eq(h.s->state, SESSION_IDLE);
    ck_assert_str_eq(h.s->last_error, "no PINGRESP within 5000 ms");
    ev = last_event(&h, SESSION_EV_LINK_DOWN);
    ck_assert(ev->down.was_connected);
    ck_assert_int_eq(ev->down.code, ETIMEDOUT);
    teardown(&h);
}
END_TEST

/* The queue is encoded 128 KiB per tick; `backlogged` says a tick stopped there, so the
 * caller ticks again once `out` is written (it once waited for the next timer). */
START_TEST(backlog_is_encoded_a_step_per_tick)
{
    Harness h;
    SessionConfig c = base_config();
    c.max_messages = 1000;
    c.max_bytes = 1 << 20;
    setup_with(&h, &c);
    static char payload[16000];
    memset(payload, 'x', sizeof(payload));
    SessionPublish p = {.topic = VIEW_STR("t"), .payload = {(const uint8_t *)payload, 16000}};
    for (int i = 0; i < 32; i++) { /* about 512 KB: four steps */
        ck_assert_int_eq(session_publish(h.s, &p, REQ(i % 16), h.now, NULL), 0);
    }
    connect_with(&h, false);
    int ticks = 1;
    while (h.s->backlogged) {
        ck_assert_uint_ge(buf_size(&h.s->out), 128 * 1024);
        ck_assert_uint_gt(h.s->queued, 0);
        buf_clear(&h.s->out); /* the socket took it all */
        session_tick(h.s, h.now);
        ck_assert_int_le(++ticks, 10);
    }
    ck_assert_int_ge(ticks, 4);
    ck_assert_uint_eq(h.s->queued, 0);
    ck_assert_uint_eq(h.s->stats.pub_ok, 32);
    teardown(&h);
}
END_TEST

START_TEST(publish_qos0_queued_offline_then_in_order)
{
    Harness h;
    SessionConfig c = base_config();
    setup_with(&h, &c);
    SessionPublish p = {.topic = VIEW_STR("t/0"), .payload = VIEW_STR("a")};
    ck_assert_int_eq(session_publish(h.s, &p, REQ(0), h.now, NULL), 0);
    p.payload = VIEW_STR("b");
    ck_assert_int_eq(session_publish(h.s, &p, REQ(1), h.now, NULL), 0);
    ck_assert_uint_eq(h.s->queued, 2);
    session_tick(h.s, h.now);
    ck_assert_uint_eq(count_events(&h, SESSION_EV_PUBLISH_DONE), 0);
    connect_with(&h, false);
    MqttPacket out = expect_packet(&h, MQTT_PUBLISH);
    ck_assert_view_str(out.publish.payload, "a");
    ck_assert_int_eq(out.publish.qos, 0);
    out = expect_packet(&h, MQTT_PUBLISH);
    ck_assert_view_str(out.publish.payload, "b");
    ck_assert_uint_eq(count_events(&h, SESSION_EV_PUBLISH_DONE), 2);
    ck_assert_ptr_eq(h.ev[h.n_ev - 1].done.req, REQ(1));
    ck_assert_uint_eq(h.s->stats.pub_ok, 2);
    ck_assert_uint_eq(h.s->stats.pub_bytes_n, 2);
    ck_assert_uint_eq(h.s->stats.pub_bytes_sum, 2 * 8);
    ck_assert_uint_eq(h.s->queued, 0);
    teardown(&h);
}
END_TEST

/* A message of up to 256 bytes (topic and payload) goes into a block kept for the next one
 * once done; a larger one gets its own. The broker gets each message's own bytes either way,
 * and a backlog's blocks come back in order. (An ASan build keeps none: KEEP_SPARES.) */
START_TEST(message_blocks_reused)
{
    Harness h;
    SessionConfig c = base_config();
    setup_with(&h, &c);
    static char fill[300];
    memset(fill, 'x', sizeof(fill));
    SessionMsg *held[70], *m;
    SessionPublish p = {.topic = VIEW_STR("r/1"), .payload = VIEW_STR("a")};
    for (int i = 0; i < 70; i++) { /* offline: 64 in kept blocks, the rest to size */
        ck_assert_int_eq(session_publish(h.s, &p, NULL, h.now, &held[i]), 0); /* no event */
    }
    connect_with(&h, false);
    for (int i = 0; i < 70; i++) {
        ck_assert_view_str(expect_packet(&h, MQTT_PUBLISH).publish.payload, "a");
    }
    p.payload = (View){(const uint8_t *)fill, 256 - 3}; /* 256 bytes with the topic */
    ck_assert_int_eq(session_publish(h.s, &p, REQ(1), h.now, &m), 0);
    session_tick(h.s, h.now);
    ck_assert_uint_eq(expect_packet(&h, MQTT_PUBLISH).publish.payload.n, 253);
    if (KEEP_SPARES) {
        ck_assert_ptr_eq(m, held[0]); /* the first block back */
    }
    p.payload = (View){(const uint8_t *)fill, 254}; /* 257: its own block */
    ck_assert_int_eq(session_publish(h.s, &p, REQ(2), h.now, &m), 0);
    session_tick(h.s, h.now);
    ck_assert_uint_eq(expect_packet(&h, MQTT_PUBLISH).publish.payload.n, 254);
    for (int i = 0; i < 64 && KEEP_SPARES; i++) {
        ck_assert_ptr_ne(m, held[i]);
    }
    ck_assert_uint_eq(h.s->stats.pub_ok, 72);
    teardown(&h);
}
END_TEST

START_TEST(publish_qos1_and_qos2_flows)
{
    Harness h;
    setup_connected(&h);
    SessionPublish p = {.topic = VIEW_STR("q/1"), .payload = VIEW_STR("one"), .qos = 1};
    ck_assert_int_eq(session_publish(h.s, &p, REQ(1), h.now, NULL), 0);
    p = (SessionPublish){
        .topic = VIEW_STR("q/2"), .payload = VIEW_STR("two"), .qos = 2, .retain = true};
    ck_assert_int_eq(session_publish(h.s, &p, REQ(2), h.now, NULL), 0);
    session_tick(h.s, h.now);
    MqttPacket a = expect_packet(&h, MQTT_PUBLISH);
    ck_assert_int_eq(a.publish.qos, 1);
    ck_assert_int_ne(a.publish.id, 0);
    ck_assert(!a.publish.dup);
    uint16_t id1 = a.publish.id;
    MqttPacket b = expect_packet(&h, MQTT_PUBLISH);
    ck_assert_int_eq(b.publish.qos, 2);
    ck_assert(b.publish.retain);
    uint16_t id2 = b.publish.id;
    ck_assert_int_ne(id1, id2);
    ck_assert_uint_eq(h.s->inflight, 2);

    h.now += 12;
    broker_ack(&h, MQTT_PUBACK, id1);
    ck_assert_ptr_eq(last_event(&h, SESSION_EV_PUBLISH_DONE)->done.req, REQ(1));
    ck_assert_int_eq(last_event(&h, SESSION_EV_PUBLISH_DONE)->done.result, 0);

    broker_ack(&h, MQTT_PUBREC, id2);
    MqttPacket rel = expect_packet(&h, MQTT_PUBREL);
    ck_assert_int_eq(rel.ack.id, id2);
    ck_assert_uint_eq(count_events(&h, SESSION_EV_PUBLISH_DONE), 1);
    h.now += 8;
    broker_ack(&h, MQTT_PUBCOMP, id2);
    ck_assert_ptr_eq(last_event(&h, SESSION_EV_PUBLISH_DONE)->done.req, REQ(2));
    ck_assert_uint_eq(h.s->inflight, 0);
    ck_assert_uint_eq(h.s->stats.pub_ok, 2);
    ck_assert_uint_eq(h.s->stats.pub_rtt_n, 2);
    ck_assert_uint_eq(h.s->stats.pub_rtt_sum_ms, 12 + 20);
    /* A stray PUBACK for an unknown id changes nothing. */
    broker_ack(&h, MQTT_PUBACK, 999);
    ck_assert_uint_eq(count_events(&h, SESSION_EV_PUBLISH_DONE), 2);
    teardown(&h);
}
END_TEST

START_TEST(inflight_window_keeps_order)
{
    Harness h;
    setup_connected(&h);
    for (int i = 0; i < 5; i++) {
        char pl[2] = {(char)('0' + i), 0};
        SessionPublish p = {.topic = VIEW_STR("w"), .payload = VIEW_STR(pl), .qos = 1};
        ck_assert_int_eq(session_publish(h.s, &p, REQ(i), h.now, NULL), 0);
    }
    /* A QoS 0 message behind them waits too: order is kept. */
    SessionPublish p0 = {.topic = VIEW_STR("w"), .payload = VIEW_STR("z")};
    ck_assert_int_eq(session_publish(h.s, &p0, REQ(5), h.now, NULL), 0);
    session_tick(h.s, h.now);
    uint16_t ids[5];
    for (int i = 0; i < 3; i++) {
        MqttPacket p = expect_packet(&h, MQTT_PUBLISH);
        ck_assert_int_eq(p.publish.payload.p[0], '0' + i);
        ids[i] = p.publish.id;
    }
    expect_no_packet(&h);
    ck_assert_uint_eq(h.s->inflight, 3);
    ck_assert_uint_eq(h.s->queued, 3);
    broker_ack(&h, MQTT_PUBACK, ids[1]); /* out of order acks are fine */
    session_tick(h.s, h.now);
    MqttPacket p = expect_packet(&h, MQTT_PUBLISH);
    ck_assert_int_eq(p.publish.payload.p[0], '3');
    ids[3] = p.publish.id;
    expect_no_packet(&h);
    broker_ack(&h, MQTT_PUBACK, ids[0]);
    session_tick(h.s, h.now);
    p = expect_packet(&h, MQTT_PUBLISH);
    ck_assert_int_eq(p.publish.payload.p[0], '4');
    p = expect_packet(&h, MQTT_PUBLISH);
    ck_assert_view_str(p.publish.payload, "z");
    teardown(&h);
}
END_TEST

START_TEST(resend_after_reconnect_with_session)
{
    Harness h;
    SessionConfig c = base_config();
    c.clean_session = false;
    setup_with(&h, &c);
    connect_with(&h, false);
    SessionPublish p1 = {.topic = VIEW_STR("r/1"), .payload = VIEW_STR("x"), .qos = 1};
    SessionPublish p2 = {.topic = VIEW_STR("r/2"), .payload = VIEW_STR("y"), .qos = 2};
    ck_assert_int_eq(session_publish(h.s, &p1, REQ(1), h.now, NULL), 0);
    ck_assert_int_eq(session_publish(h.s, &p2, REQ(2), h.now, NULL), 0);
    session_tick(h.s, h.now);
    uint16_t id1 = expect_packet(&h, MQTT_PUBLISH).publish.id;
    uint16_t id2 = expect_packet(&h, MQTT_PUBLISH).publish.id;
    broker_ack(&h, MQTT_PUBREC, id2);
    expect_packet(&h, MQTT_PUBREL);

    session_transport_down(h.s, h.now, ECONNRESET, "read: Connection reset by peer");
    ck_assert_uint_eq(h.s->inflight, 2);
    h.now = h.s->retry_at;
    connect_with(&h, true);
    /* Same ids, DUP set on the PUBLISH, PUBREL again for the QoS 2 one. */
    MqttPacket a = expect_packet(&h, MQTT_PUBLISH);
    ck_assert_int_eq(a.publish.id, id1);
    ck_assert(a.publish.dup);
    MqttPacket b = expect_packet(&h, MQTT_PUBREL);
    ck_assert_int_eq(b.ack.id, id2);
    ck_assert_uint_eq(h.s->stats.reconnects, 1);
    broker_ack(&h, MQTT_PUBACK, id1);
    broker_ack(&h, MQTT_PUBCOMP, id2);
    ck_assert_uint_eq(count_events(&h, SESSION_EV_PUBLISH_DONE), 2);
    teardown(&h);
}
END_TEST

START_TEST(resend_after_reconnect_without_session)
{
    Harness h;
    setup_connected(&h);
    SessionPublish p = {.topic = VIEW_STR("n/1"), .payload = VIEW_STR("old"), .qos = 1};
    ck_assert_int_eq(session_publish(h.s, &p, REQ(1), h.now, NULL), 0);
    SessionPublish q2 = {.topic = VIEW_STR("n/2"), .payload = VIEW_STR("q2"), .qos = 2};
    ck_assert_int_eq(session_publish(h.s, &q2, REQ(2), h.now, NULL), 0);
    session_tick(h.s, h.now);
    expect_packet(&h, MQTT_PUBLISH);
    uint16_t id2 = expect_packet(&h, MQTT_PUBLISH).publish.id;
    broker_ack(&h, MQTT_PUBREC, id2); /* the broker owns the QoS 2 message now */
    expect_packet(&h, MQTT_PUBREL);
    session_transport_down(h.s, h.now, EPIPE, "write: Broken pipe");
    /* Published while offline: must come after the old one. */
    p.payload = VIEW_STR("new");
    ck_assert_int_eq(session_publish(h.s, &p, REQ(3), h.now, NULL), 0);
    h.now = h.s->retry_at;
    connect_with(&h, false);
    ck_assert_ptr_eq(last_event(&h, SESSION_EV_PUBLISH_DONE)->done.req, REQ(2));
    MqttPacket a = expect_packet(&h, MQTT_PUBLISH);
    ck_assert_view_str(a.publish.payload, "old");
    ck_assert(!a.publish.dup);
    MqttPacket b = expect_packet(&h, MQTT_PUBLISH);
    ck_assert_view_str(b.publish.payload, "new");
    expect_no_packet(&h);
    teardown(&h);
}
END_TEST

START_TEST(queue_limits)
{
    Harness h;
    SessionConfig c = base_config();
    c.max_messages = 2;
    c.max_bytes = 10;
    setup_with(&h, &c);
    SessionPublish p = {.topic = VIEW_STR("ab"), .payload = VIEW_STR("cd")};
    ck_assert_int_eq(session_publish(h.s, &p, NULL, h.now, NULL), 0);
    ck_assert_int_eq(session_publish(h.s, &p, NULL, h.now, NULL), 0);
    ck_assert_int_eq(session_publish(h.s, &p, NULL, h.now, NULL), -ENOBUFS);
    ck_assert_uint_eq(h.s->stats.pub_fail, 1);
    teardown(&h);

    c.max_messages = 100;
    setup_with(&h, &c);
    ck_assert_int_eq(session_publish(h.s, &p, NULL, h.now, NULL), 0); /* 4 bytes */
    SessionPublish big = {.topic = VIEW_STR("abc"), .payload = VIEW_STR("1234")};
    ck_assert_int_eq(session_publish(h.s, &big, NULL, h.now, NULL), -ENOBUFS); /* 4+7 > 10 */
    SessionPublish fits = {.topic = VIEW_STR("abc"), .payload = VIEW_STR("123")};
    ck_assert_int_eq(session_publish(h.s, &fits, NULL, h.now, NULL), 0); /* exactly 10 */
    ck_assert_uint_eq(h.s->queued_bytes, 10);
    /* Invalid requests are refused and not counted as queued. */
    SessionPublish bad = {.topic = VIEW_STR("a/#")};
    ck_assert_int_eq(session_publish(h.s, &bad, NULL, h.now, NULL), -EINVAL);
    bad = (SessionPublish){.topic = VIEW_STR("a"), .qos = 3};
    ck_assert_int_eq(session_publish(h.s, &bad, NULL, h.now, NULL), -EINVAL);
    ck_assert_uint_eq(h.s->queued, 2);
    teardown(&h);
}
END_TEST

START_TEST(abandon_forgets_request)
{
    Harness h;
    setup_connected(&h);
    SessionMsg *msg;
    SessionPublish p = {.topic = VIEW_STR("a"), .payload = VIEW_STR("x"), .qos = 1};
    ck_assert_int_eq(session_publish(h.s, &p, REQ(1), h.now, &msg), 0);
    session_tick(h.s, h.now);
    uint16_t id = expect_packet(&h, MQTT_PUBLISH).publish.id;
    session_abandon(h.s, msg, true);
    ck_assert_uint_eq(h.s->stats.pub_fail, 1);
    broker_ack(&h, MQTT_PUBACK, id);
    ck_assert_uint_eq(count_events(&h, SESSION_EV_PUBLISH_DONE), 0);
    ck_assert_uint_eq(h.s->stats.pub_ok, 0); /* counted once, as the failure it was */
    ck_assert_uint_eq(h.s->inflight, 0);
    teardown(&h);
}
END_TEST

START_TEST(incoming_qos_levels)
{
    Harness h;
    setup_connected(&h);
    MqttPacket in = {
        .type = MQTT_PUBLISH,
        .publish = {.topic = VIEW_STR("in/1"), .payload = VIEW_STR("p1"), .qos = 1, .id = 7}};
    broker_sends(&h, &in);
    ck_assert_str_eq(h.msg_topic, "in/1");
    ck_assert_str_eq(h.msg_payload, "p1");
    ck_assert_int_eq(expect_packet(&h, MQTT_PUBACK).ack.id, 7);

    in.publish.qos = 2;
    in.publish.id = 8;
    in.publish.payload = VIEW_STR("p2");
    broker_sends(&h, &in);
    ck_assert_int_eq(expect_packet(&h, MQTT_PUBREC).ack.id, 8);
    ck_assert_uint_eq(count_events(&h, SESSION_EV_MESSAGE), 2);
    /* The broker did not see our PUBREC and sends again: not delivered twice. */
    in.publish.dup = true;
    broker_sends(&h, &in);
    expect_packet(&h, MQTT_PUBREC);
    ck_assert_uint_eq(count_events(&h, SESSION_EV_MESSAGE), 2);
    ck_assert_uint_eq(h.s->stats.duplicates_dropped, 1);
    broker_ack(&h, MQTT_PUBREL, 8);
    ck_assert_int_eq(expect_packet(&h, MQTT_PUBCOMP).ack.id, 8);
    /* After PUBCOMP the id is free: a new message with it is new. */
    in.publish.dup = false;
    broker_sends(&h, &in);
    ck_assert_uint_eq(count_events(&h, SESSION_EV_MESSAGE), 3);
    ck_assert_uint_eq(h.s->stats.sub_bytes_n, 4);
    teardown(&h);
}
END_TEST

START_TEST(subscribe_and_restore)
{
    Harness h;
    setup_connected(&h);
    ck_assert_int_eq(
        session_subscribe(h.s, &(SessionSubscribe){.filter = VIEW_STR("s/+"), .qos = 1, .subid = 0},
                          REQ(1), h.now),
        0);
    ck_assert_int_eq(
        session_subscribe(h.s,
                          &(SessionSubscribe){.filter = VIEW_STR("deny/#"), .qos = 0, .subid = 0},
                          REQ(2), h.now),
        0);
    ck_assert_int_eq(session_subscribe(
                         h.s, &(SessionSubscribe){.filter = VIEW_STR("bad#"), .qos = 0, .subid = 0},
                         REQ(3), h.now),
                     -EINVAL);
    session_tick(h.s, h.now);
    MqttPacket s1 = expect_packet(&h, MQTT_SUBSCRIBE);
    MqttPacket s2 = expect_packet(&h, MQTT_SUBSCRIBE);
    MqttPacket ack = {.type = MQTT_SUBACK,
                      .suback = {.id = s1.subscribe.id, .codes = VIEW("\x01", 1)}};
    broker_sends(&h, &ack);
    const SessionEvent *ev = last_event(&h, SESSION_EV_SUBSCRIBE_DONE);
    ck_assert_ptr_eq(ev->done.req, REQ(1));
    ck_assert_int_eq(ev->done.result, 1);
    ack.suback = (MqttSuback){.id = s2.subscribe.id, .codes = VIEW("\x80", 1)};
    broker_sends(&h, &ack);
    ev = last_event(&h, SESSION_EV_SUBSCRIBE_DONE);
    ck_assert_ptr_eq(ev->done.req, REQ(2));
    ck_assert_int_eq(ev->done.result, -EPERM);
    ck_assert_uint_eq(h.s->subscriptions, 1);

    /* Offline: a publish is queued; after a reconnect without session the subscription is
     * restored before the queued publish goes out. */
    session_transport_down(h.s, h.now, ECONNRESET, "read: Connection reset by peer");
    SessionPublish p = {.topic = VIEW_STR("s/x"), .payload = VIEW_STR("v")};
    ck_assert_int_eq(session_publish(h.s, &p, NULL, h.now, NULL), 0);
    h.now = h.s->retry_at;
    connect_with(&h, false);
    MqttPacket r = expect_packet(&h, MQTT_SUBSCRIBE);
    View list = r.subscribe.list;
    MqttTopicReq t;
    ck_assert_int_eq(mqtt_topic_list_next(&list, true, &t), 1);
    ck_assert_view_str(t.filter, "s/+");
    ck_assert_int_eq(t.qos, 1);
    expect_packet(&h, MQTT_PUBLISH);
    expect_no_packet(&h);
    ack.suback = (MqttSuback){.id = r.subscribe.id, .codes = VIEW("\x01", 1)};
    broker_sends(&h, &ack);
    ck_assert_uint_eq(h.s->subscriptions, 1);

    /* With the session resumed, nothing is re-subscribed. */
    session_transport_down(h.s, h.now, ECONNRESET, "read: Connection reset by peer");
    h.now = h.s->retry_at;
    connect_with(&h, true);
    expect_no_packet(&h);
    teardown(&h);
}
END_TEST

START_TEST(unsubscribe_flows)
{
    Harness h;
    setup_connected(&h);
    ck_assert_int_eq(
        session_subscribe(h.s, &(SessionSubscribe){.filter = VIEW_STR("u/1"), .qos = 0, .subid = 0},
                          NULL, h.now),
        0);
    session_tick(h.s, h.now);
    MqttPacket s1 = expect_packet(&h, MQTT_SUBSCRIBE);
    MqttPacket ack = {.type = MQTT_SUBACK,
                      .suback = {.id = s1.subscribe.id, .codes = VIEW("\x00", 1)}};
    broker_sends(&h, &ack);
    ck_assert_uint_eq(h.s->subscriptions, 1);
    ck_assert_int_eq(session_unsubscribe(h.s, VIEW_STR("u/1"), REQ(1), h.now), 0);
    ck_assert_uint_eq(h.s->subscriptions, 0);
    session_tick(h.s, h.now);
    MqttPacket u = expect_packet(&h, MQTT_UNSUBSCRIBE);
    broker_ack(&h, MQTT_UNSUBACK, u.subscribe.id);
    ck_assert_ptr_eq(last_event(&h, SESSION_EV_UNSUBSCRIBE_DONE)->done.req, REQ(1));

    /* Offline with a clean session: settled without the broker. */
    session_transport_down(h.s, h.now, ECONNRESET, "gone");
    ck_assert_int_eq(session_unsubscribe(h.s, VIEW_STR("u/2"), REQ(2), h.now), 0);
    ck_assert_uint_eq(count_events(&h, SESSION_EV_UNSUBSCRIBE_DONE), 1);
    session_tick(h.s, h.now);
    ck_assert_ptr_eq(last_event(&h, SESSION_EV_UNSUBSCRIBE_DONE)->done.req, REQ(2));
    teardown(&h);
}
END_TEST

START_TEST(protocol_errors_drop_the_link)
{
    Harness h;
    setup_connected(&h);
    session_input(h.s, "\x30\x03\x00\x01#", 5, h.now); /* wildcard in a PUBLISH topic */
    ck_assert_int_eq(h.s->state, SESSION_IDLE);
    ck_assert_str_eq(h.s->last_error,
                     "protocol error from broker: topic name must not contain wildcards");
    ck_assert_int_eq(last_event(&h, SESSION_EV_LINK_DOWN)->down.code, MQTT_E_TOPIC_WILDCARD);

    /* A broker sending a client-only packet. */
    h.now = h.s->retry_at;
    connect_with(&h, false);
    MqttPacket sub = {.type = MQTT_PINGREQ};
    broker_sends(&h, &sub);
    ck_assert_str_eq(h.s->last_error, "protocol error from broker: unexpected PINGREQ");

    /* Anything before CONNACK. */
    h.now = h.s->retry_at;
    ck_assert(session_should_connect(h.s, h.now));
    session_transport_up(h.s, h.now);
    broker_ack(&h, MQTT_PUBACK, 1);
    ck_assert_str_eq(h.s->last_error, "protocol error from broker: packet before CONNACK");
    ck_assert_uint_eq(h.s->stats.connections_failed, 1);
    teardown(&h);
}
END_TEST

START_TEST(clean_disconnect_and_reconnect_now)
{
    Harness h;
    setup_connected(&h);
    session_reconnect_now(h.s, h.now);
    expect_packet(&h, MQTT_DISCONNECT);
    const SessionEvent *ev = last_event(&h, SESSION_EV_LINK_DOWN);
    ck_assert_int_eq(ev->down.code, 0);
    ck_assert(ev->down.was_connected);
    ck_assert_str_eq(h.s->last_error, "");
    connect_with(&h, false); /* right away, no backoff */

    session_disconnect(h.s, h.now);
    expect_packet(&h, MQTT_DISCONNECT);
    ck_assert_int_eq(h.s->state, SESSION_STOPPED);
    ck_assert(!session_should_connect(h.s, h.now + 1000000));
    ck_assert_int_eq(session_tick(h.s, h.now), INT64_MAX);
    teardown(&h);
}
END_TEST

START_TEST(split_input)
{
    Harness h;
    setup_connected(&h);
    Buf b = {0};
    MqttPacket in = {.type = MQTT_PUBLISH,
                     .publish = {.topic = VIEW_STR("x/y"), .payload = VIEW_STR("split")}};
    ck_assert_int_eq(mqtt_encode(&b, &in), 0);
    ck_assert_int_eq(mqtt_encode(&b, &in), 0);
    for (size_t i = 0; i < b.len; i++) {
        session_input(h.s, b.data + i, 1, h.now);
    }
    ck_assert_uint_eq(count_events(&h, SESSION_EV_MESSAGE), 2);
    ck_assert_str_eq(h.msg_payload, "split");
    buf_free(&b);
    teardown(&h);
}
END_TEST

START_TEST(barrier_follows_subscribe)
{
    Harness h;
    setup_connected(&h);
    ck_assert_int_eq(
        session_subscribe(h.s,
                          &(SessionSubscribe){.filter = VIEW_STR("ret/#"), .qos = 0, .subid = 0},
                          REQ(1), h.now),
        0);
    ck_assert_int_eq(session_barrier(h.s, REQ(2)), 0);
    session_tick(h.s, h.now);
    MqttPacket sub = expect_packet(&h, MQTT_SUBSCRIBE);
    /* No PINGREQ before the SUBACK: nothing orders its PINGRESP after the SUBACK. */
    expect_no_packet(&h);
    MqttPacket ack = {.type = MQTT_SUBACK,
                      .suback = {.id = sub.subscribe.id, .codes = VIEW("\x00", 1)}};
    broker_sends(&h, &ack);
    expect_packet(&h, MQTT_PINGREQ);
    MqttPacket ret = {
        .type = MQTT_PUBLISH,
        .publish = {.topic = VIEW_STR("ret/a"), .payload = VIEW_STR("r"), .retain = true}};
    broker_sends(&h, &ret);
    ck_assert_uint_eq(count_events(&h, SESSION_EV_BARRIER_DONE), 0);
    h.now += 5;
    MqttPacket resp = {.type = MQTT_PINGRESP};
    broker_sends(&h, &resp);
    /* In order: SUBACK, the retained message, then the barrier. */
    ck_assert_int_eq(h.ev[h.n_ev - 3].type, SESSION_EV_SUBSCRIBE_DONE);
    ck_assert_int_eq(h.ev[h.n_ev - 2].type, SESSION_EV_MESSAGE);
    ck_assert_int_eq(h.ev[h.n_ev - 1].type, SESSION_EV_BARRIER_DONE);
    ck_assert_ptr_eq(h.ev[h.n_ev - 1].done.req, REQ(2));
    ck_assert_uint_eq(count_events(&h, SESSION_EV_PING_ANSWERED), 0);
    ck_assert_uint_eq(h.s->stats.ping_received, 1);

    /* Queued while offline: sent after the reconnect, behind the subscription restore. */
    session_transport_down(h.s, h.now, ECONNRESET, "gone");
    ck_assert_int_eq(session_barrier(h.s, REQ(3)), 0);
    h.now = h.s->retry_at;
    connect_with(&h, false);
    sub = expect_packet(&h, MQTT_SUBSCRIBE);
    expect_no_packet(&h);
    ack.suback = (MqttSuback){.id = sub.subscribe.id, .codes = VIEW("\x00", 1)};
    broker_sends(&h, &ack);
    expect_packet(&h, MQTT_PINGREQ);
    teardown(&h);
}
END_TEST

/* Retained messages that come before the SUBACK are inside the window too; a barrier with
 * no request before it goes out at once. */
START_TEST(barrier_waits_for_every_earlier_answer)
{
    Harness h;
    setup_connected(&h);
    ck_assert_int_eq(session_barrier(h.s, REQ(1)), 0);
    session_tick(h.s, h.now);
    expect_packet(&h, MQTT_PINGREQ);
    ck_assert_int_eq(
        session_subscribe(h.s, &(SessionSubscribe){.filter = VIEW_STR("a/#"), .qos = 1, .subid = 0},
                          REQ(2), h.now),
        0);
    ck_assert_int_eq(session_unsubscribe(h.s, VIEW_STR("b"), REQ(3), h.now), 0);
    ck_assert_int_eq(session_barrier(h.s, REQ(4)), 0);
    session_tick(h.s, h.now);
    MqttPacket sub = expect_packet(&h, MQTT_SUBSCRIBE);
    MqttPacket unsub = expect_packet(&h, MQTT_UNSUBSCRIBE);
    expect_no_packet(&h);
    MqttPacket resp = {.type = MQTT_PINGRESP};
    broker_sends(&h, &resp); /* answers the first barrier only */
    ck_assert_ptr_eq(last_event(&h, SESSION_EV_BARRIER_DONE)->done.req, REQ(1));
    MqttPacket ret = {.type = MQTT_PUBLISH,
                      .publish = {.topic = VIEW_STR("a/r"), .payload = VIEW_STR("r"), .retain = 1}};
    broker_sends(&h, &ret);
    MqttPacket ack = {.type = MQTT_SUBACK,
                      .suback = {.id = sub.subscribe.id, .codes = VIEW("\x01", 1)}};
    broker_sends(&h, &ack);
    expect_no_packet(&h); /* the UNSUBACK is still out */
    broker_ack(&h, MQTT_UNSUBACK, unsub.subscribe.id);
    expect_packet(&h, MQTT_PINGREQ);
    ck_assert_uint_eq(count_events(&h, SESSION_EV_BARRIER_DONE), 1);
    broker_sends(&h, &resp);
    ck_assert_ptr_eq(last_event(&h, SESSION_EV_BARRIER_DONE)->done.req, REQ(4));
    teardown(&h);
}
END_TEST

/* A restored subscription the broker refuses is announced and forgotten. */
START_TEST(refused_restore_is_announced)
{
    Harness h;
    setup_connected(&h);
    ck_assert_int_eq(
        session_subscribe(h.s,
                          &(SessionSubscribe){.filter = VIEW_STR("gone/#"), .qos = 1, .subid = 0},
                          REQ(1), h.now),
        0);
    session_tick(h.s, h.now);
    MqttPacket sub = expect_packet(&h, MQTT_SUBSCRIBE);
    MqttPacket ack = {.type = MQTT_SUBACK,
                      .suback = {.id = sub.subscribe.id, .codes = VIEW("\x01", 1)}};
    broker_sends(&h, &ack);
    ck_assert_uint_eq(h.s->subscriptions, 1);
    session_transport_down(h.s, h.now, ECONNRESET, "gone");
    h.now = h.s->retry_at;
    connect_with(&h, false);
    sub = expect_packet(&h, MQTT_SUBSCRIBE);
    ack.suback = (MqttSuback){.id = sub.subscribe.id, .codes = VIEW("\x80", 1)};
    broker_sends(&h, &ack);
    const SessionEvent *ev = last_event(&h, SESSION_EV_SUBSCRIPTION_LOST);
    ck_assert_ptr_nonnull(ev);
    ck_assert_str_eq(h.msg_topic, "gone/#");
    ck_assert_int_eq(ev->lost.code, 0x80);
    ck_assert_uint_eq(h.s->subscriptions, 0);
    ck_assert_uint_eq(h.s->stats.subscriptions_lost, 1);
    /* Not restored again at the next connect. */
    session_transport_down(h.s, h.now, ECONNRESET, "gone");
    h.now = h.s->retry_at;
    connect_with(&h, false);
    expect_no_packet(&h);
    teardown(&h);
}
END_TEST

/* A refusal nobody waits for any more (its req forgotten, or never given) is announced too:
 * the local holders took the filter as theirs when they asked. */
START_TEST(refusal_nobody_waits_for_is_announced)
{
    Harness h;
    setup_connected(&h);
    for (int k = 0; k < 2; k++) {
        const char *filter = k ? "nobody/asked" : "forgotten/#";
        ck_assert_int_eq(
            session_subscribe(h.s, &(SessionSubscribe){.filter = VIEW_STR(filter), .qos = 1},
                              k ? NULL : REQ(1), h.now),
            0);
        session_tick(h.s, h.now);
        MqttPacket sub = expect_packet(&h, MQTT_SUBSCRIBE);
        if (!k) {
            session_forget_req(h.s, REQ(1));
        }
        MqttPacket ack = {.type = MQTT_SUBACK,
                          .suback = {.id = sub.subscribe.id, .codes = VIEW("\x80", 1)}};
        broker_sends(&h, &ack);
        const SessionEvent *ev = last_event(&h, SESSION_EV_SUBSCRIPTION_LOST);
        ck_assert_ptr_nonnull(ev);
        ck_assert_str_eq(h.msg_topic, filter);
        ck_assert_uint_eq(h.s->stats.subscriptions_lost, (uint64_t)k + 1);
        ck_assert_uint_eq(h.s->subscriptions, 0);
    }
    teardown(&h);
}
END_TEST

/* What a durable copy must record: the packet id when a spooled message is sent, its PUBREC,
 * and the incoming QoS 2 ids between PUBREC and PUBREL. */
START_TEST(progress_events_for_the_spool)
{
    Harness h;
    setup_connected(&h);
    SessionPublish p = {.topic = VIEW_STR("t"), .payload = VIEW_STR("x"), .qos = 2, .spool_id = 7};
    ck_assert_int_eq(session_publish(h.s, &p, NULL, h.now, NULL), 0);
    SessionPublish plain = {.topic = VIEW_STR("t"), .payload = VIEW_STR("y"), .qos = 1};
    ck_assert_int_eq(session_publish(h.s, &plain, NULL, h.now, NULL), 0);
    session_tick(h.s, h.now);
    MqttPacket pub = expect_packet(&h, MQTT_PUBLISH);
    expect_packet(&h, MQTT_PUBLISH);
    ck_assert_uint_eq(count_events(&h, SESSION_EV_PUBLISH_SENT), 1); /* the spooled one */
    const SessionEvent *ev = last_event(&h, SESSION_EV_PUBLISH_SENT);
    ck_assert_uint_eq(ev->sent.spool_id, 7);
    ck_assert_uint_eq(ev->sent.packet_id, pub.publish.id);
    broker_ack(&h, MQTT_PUBREC, pub.publish.id);
    broker_ack(&h, MQTT_PUBREC, pub.publish.id); /* a repeat records nothing new */
    ck_assert_uint_eq(count_events(&h, SESSION_EV_PUBREC), 1);
    ck_assert_uint_eq(last_event(&h, SESSION_EV_PUBREC)->sent.spool_id, 7);

    MqttPacket in = {
        .type = MQTT_PUBLISH,
        .publish = {.topic = VIEW_STR("i"), .payload = VIEW_STR("1"), .qos = 2, .id = 9}};
    broker_sends(&h, &in);
    ck_assert_uint_eq(count_events(&h, SESSION_EV_QOS2_HELD), 1);
    ck_assert_uint_eq(last_event(&h, SESSION_EV_QOS2_HELD)->packet_id, 9);
    broker_ack(&h, MQTT_PUBREL, 9);
    broker_ack(&h, MQTT_PUBREL, 9); /* released already: nothing to record */
    ck_assert_uint_eq(count_events(&h, SESSION_EV_QOS2_RELEASED), 1);
    teardown(&h);
}
END_TEST

/* A restart resumes with what the durable copy recorded: same packet ids, DUP or PUBREL, and
 * incoming ids still held are not delivered again. */
START_TEST(resume_from_durable_state)
{
    Harness h;
    SessionConfig c = base_config();
    c.clean_session = false;
    setup_with(&h, &c);
    SessionPublish a = {
        .topic = VIEW_STR("t"), .payload = VIEW_STR("a"), .qos = 2, .spool_id = 1, .packet_id = 41};
    SessionPublish b = {.topic = VIEW_STR("t"),
                        .payload = VIEW_STR("b"),
                        .qos = 2,
                        .spool_id = 2,
                        .packet_id = 42,
                        .pubrec = true};
    SessionPublish n = {.topic = VIEW_STR("t"), .payload = VIEW_STR("n"), .qos = 1, .spool_id = 3};
    ck_assert_int_eq(session_publish(h.s, &a, NULL, h.now, NULL), 0);
    ck_assert_int_eq(session_publish(h.s, &b, NULL, h.now, NULL), 0);
    ck_assert_int_eq(session_publish(h.s, &b, NULL, h.now, NULL), -EEXIST); /* id 42 in use */
    ck_assert_int_eq(session_publish(h.s, &n, NULL, h.now, NULL), 0);
    ck_assert_uint_eq(h.s->inflight, 2);
    uint64_t held[1024] = {0};
    held[77 / 64] |= UINT64_C(1) << (77 % 64);
    session_restore_incoming(h.s, held);
    connect_with(&h, true);
    MqttPacket p = expect_packet(&h, MQTT_PUBLISH);
    ck_assert_uint_eq(p.publish.id, 41);
    ck_assert(p.publish.dup);
    MqttPacket rel = expect_packet(&h, MQTT_PUBREL);
    ck_assert_uint_eq(rel.ack.id, 42);
    p = expect_packet(&h, MQTT_PUBLISH); /* the one never sent: a new id */
    ck_assert(!p.publish.dup);
    ck_assert_uint_ne(p.publish.id, 41);
    ck_assert_uint_ne(p.publish.id, 42);
    MqttPacket again = {
        .type = MQTT_PUBLISH,
        .publish = {
            .topic = VIEW_STR("i"), .payload = VIEW_STR("1"), .qos = 2, .id = 77, .dup = true}};
    broker_sends(&h, &again);
    ck_assert_uint_eq(count_events(&h, SESSION_EV_MESSAGE), 0);
    ck_assert_uint_eq(h.s->stats.duplicates_dropped, 1);
    expect_packet(&h, MQTT_PUBREC);
    broker_ack(&h, MQTT_PUBCOMP, 42);
    ck_assert_uint_eq(last_event(&h, SESSION_EV_PUBLISH_DONE)->done.spool_id, 2);
    teardown(&h);
}
END_TEST

/* More requests than packet ids: the rest wait for ids to be freed; nothing spins. */
START_TEST(packet_ids_run_out)
{
    Harness h;
    setup_connected(&h);
    enum { N = 65535 + 100 };
    for (int i = 0; i < N; i++) {
        ck_assert_int_eq(
            session_subscribe(
                h.s, &(SessionSubscribe){.filter = VIEW_STR("same/#"), .qos = 0, .subid = 0},
                REQ(1), h.now),
            0);
    }
    session_tick(h.s, h.now);
    take_output(&h);
    MqttPacket p;
    size_t n = 0;
    uint16_t first = 0;
    while (mqtt_decoder_next(&h.wire, &p) == 1) {
        ck_assert_int_eq(p.type, MQTT_SUBSCRIBE);
        first = n++ ? first : p.subscribe.id;
    }
    ck_assert_uint_eq(n, 65535);
    session_forget_req(h.s, REQ(1)); /* the harness has room for few events */
    MqttPacket ack = {.type = MQTT_SUBACK, .suback = {.id = first, .codes = VIEW("\x00", 1)}};
    broker_sends(&h, &ack); /* frees one id */
    session_tick(h.s, h.now);
    expect_packet(&h, MQTT_SUBSCRIBE);
    expect_no_packet(&h);
    teardown(&h);
}
END_TEST

/* Subscribe and unsubscribe while offline: the broker ends up without the subscription, and
 * it is not restored later. */
START_TEST(offline_subscribe_then_unsubscribe)
{
    Harness h;
    setup_connected(&h);
    session_transport_down(h.s, h.now, ECONNRESET, "gone");
    ck_assert_int_eq(
        session_subscribe(h.s, &(SessionSubscribe){.filter = VIEW_STR("t/#"), .qos = 1, .subid = 0},
                          REQ(1), h.now),
        0);
    ck_assert_int_eq(session_unsubscribe(h.s, VIEW_STR("t/#"), REQ(2), h.now), 0);
    session_tick(h.s, h.now);
    ck_assert_uint_eq(count_events(&h, SESSION_EV_UNSUBSCRIBE_DONE), 0); /* must follow it */
    h.now = h.s->retry_at;
    connect_with(&h, false);
    MqttPacket sub = expect_packet(&h, MQTT_SUBSCRIBE);
    MqttPacket unsub = expect_packet(&h, MQTT_UNSUBSCRIBE);
    MqttPacket ack = {.type = MQTT_SUBACK,
                      .suback = {.id = sub.subscribe.id, .codes = VIEW("\x01", 1)}};
    broker_sends(&h, &ack);
    broker_ack(&h, MQTT_UNSUBACK, unsub.subscribe.id);
    ck_assert_uint_eq(h.s->subscriptions, 0);
    session_transport_down(h.s, h.now, ECONNRESET, "gone");
    h.now = h.s->retry_at;
    connect_with(&h, false);
    expect_no_packet(&h); /* nothing to restore */
    teardown(&h);
}
END_TEST

/* A message larger than any packet is refused when it is made, not lost later. */
START_TEST(publish_larger_than_a_packet)
{
    Harness h;
    SessionConfig c = base_config();
    c.max_bytes = (size_t)1 << 30;
    setup_with(&h, &c);
    ck_assert_uint_eq(mqtt_publish_size(VIEW_STR("t"), 10, 0), 2 + 3 + 10);
    ck_assert_uint_eq(mqtt_publish_size(VIEW_STR("t"), 200, 1), 3 + 5 + 200);
    size_t max = session_max_publish(h.s);
    ck_assert_uint_eq(max, 268435455u + 5);
    /* The largest that fits, and one byte more, measured without allocating the payload. */
    size_t fit = 268435455u - 2 - 1;
    ck_assert_uint_eq(mqtt_publish_size(VIEW_STR("t"), fit, 0), max);
    ck_assert_uint_gt(mqtt_publish_size(VIEW_STR("t"), fit + 1, 0), max);
    /* Refused on its size alone: the payload bytes are never read. */
    SessionPublish p = {.topic = VIEW_STR("t"), .payload = VIEW("", fit + 1)};
    ck_assert_int_eq(session_publish(h.s, &p, NULL, h.now, NULL), -EMSGSIZE);
    ck_assert_uint_eq(h.s->queued, 0);
    teardown(&h);
}
END_TEST

static Suite *session_suite(void)
{
    Suite *s = suite_create("session");
    TCase *tc = tcase_create("link");
    tcase_add_test(tc, connect_packet_fields);
    tcase_add_test(tc, connack_refusals);
    tcase_add_test(tc, backoff_grows_with_jitter_and_resets);
    tcase_add_test(tc, connect_timeout);
    tcase_add_test(tc, keepalive_ping_and_rtt);
    tcase_add_test(tc, protocol_errors_drop_the_link);
    tcase_add_test(tc, clean_disconnect_and_reconnect_now);
    tcase_add_test(tc, split_input);
    suite_add_tcase(s, tc);
    tc = tcase_create("publish");
    tcase_add_test(tc, publish_qos0_queued_offline_then_in_order);
    tcase_add_test(tc, message_blocks_reused);
    tcase_add_test(tc, publish_qos1_and_qos2_flows);
    tcase_add_test(tc, inflight_window_keeps_order);
    tcase_add_test(tc, resend_after_reconnect_with_session);
    tcase_add_test(tc, resend_after_reconnect_without_session);
    tcase_add_test(tc, queue_limits);
    tcase_add_test(tc, abandon_forgets_request);
    tcase_add_test(tc, incoming_qos_levels);
    tcase_add_test(tc, progress_events_for_the_spool);
    tcase_add_test(tc, resume_from_durable_state);
    tcase_add_test(tc, publish_larger_than_a_packet);
    suite_add_tcase(s, tc);
    tc = tcase_create("subscribe");
    tcase_add_test(tc, subscribe_and_restore);
    tcase_add_test(tc, unsubscribe_flows);
    tcase_add_test(tc, barrier_follows_subscribe);
    tcase_add_test(tc, barrier_waits_for_every_earlier_answer);
    tcase_add_test(tc, refused_restore_is_announced);
    tcase_add_test(tc, refusal_nobody_waits_for_is_announced);
    tcase_add_test(tc, packet_ids_run_out);
    tcase_add_test(tc, offline_subscribe_then_unsubscribe);
    tcase_add_test(tc, backlog_is_encoded_a_step_per_tick);
    suite_add_tcase(s, tc);
    return s;
}

CHECK_MAIN(session_suite)
