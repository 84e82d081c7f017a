/* SPDX-License-Identifier: MIT */
/*
 * Unit tests of the session's MQTT 5 side, the test playing an MQTT 5 broker: the protocol
 * choice and its fallback, what CONNECT asks for, every CONNACK limit obeyed for the life of
 * the link, topic aliases both ways, reason codes reaching requests, the broker's DISCONNECT
 * and server redirection, subscription identifiers.
 */
#include <errno.h>

#include "mqtt/mount.h"
#include "session_harness.h"

#define BIT MQTT_PROP_BIT

static SessionConfig v5_config(void)
{
    SessionConfig c = base_config();
    c.protocol = SESSION_PROTOCOL_5;
    c.topic_aliases = true;
    c.topic_alias_maximum = 4;
    c.receive_maximum = 65535;
    return c;
}

/* Connect with an MQTT 5 CONNACK carrying `props`. */
static void connect5(Harness *h, const MqttProps *props)
{
    ck_assert(session_should_connect(h->s, h->now));
    session_transport_up(h->s, h->now);
    MqttPacket c = expect_packet(h, MQTT_CONNECT);
    ck_assert_int_eq(c.version, MQTT_V5);
    MqttPacket ack = {.type = MQTT_CONNACK, .version = MQTT_V5, .props = *props};
    broker_sends(h, &ack);
    ck_assert_int_eq(h->s->state, SESSION_CONNECTED);
    ck_assert_int_eq(h->s->protocol, MQTT_V5);
}

static void publish(Harness *h, const char *topic, uint8_t qos, bool retain, void *req, int want)
{
    SessionPublish p = {
        .topic = VIEW_STR(topic), .payload = VIEW_STR("x"), .qos = qos, .retain = retain};
    ck_assert_int_eq(session_publish(h->s, &p, req, h->now, NULL), want);
}

/* What CONNECT asks for: session expiry, receive maximum, maximum packet size, topic alias
 * maximum, response information, and the will's properties. */
START_TEST(connect_properties)
{
    Harness h;
    SessionConfig c = v5_config();
    c.session_expiry = 3600;
    c.receive_maximum = 10;
    c.max_packet = 4096;
    c.request_response_info = true;
    c.will = true;
    c.will_topic = VIEW_STR("w");
    c.will_payload = VIEW_STR("gone");
    c.will_delay = 5;
    c.will_message_expiry = 60;
    c.will_content_type = VIEW_STR("text/plain");
    setup_with(&h, &c);
    ck_assert(session_should_connect(h.s, h.now));
    session_transport_up(h.s, h.now);
    MqttPacket p = expect_packet(&h, MQTT_CONNECT);
    ck_assert_int_eq(p.version, MQTT_V5);
    ck_assert_uint_eq(p.props.session_expiry, 3600);
    ck_assert_uint_eq(p.props.receive_maximum, 10);
    ck_assert_uint_eq(p.props.maximum_packet_size, 4096);
    ck_assert_uint_eq(p.props.topic_alias_maximum, 4);
    ck_assert_uint_eq(p.props.request_response_info, 1);
    ck_assert_uint_eq(p.connect.will_props.will_delay, 5);
    ck_assert_uint_eq(p.connect.will_props.message_expiry, 60);
    ck_assert_view_str(p.connect.will_props.content_type, "text/plain");
    teardown(&h);
}
END_TEST

/* AUTO: a broker that answers an MQTT 5 CONNECT in 3.1.1 (return code 1) is tried again at
 * once in 3.1.1, and stays 3.1.1 until the session is configured again. */
START_TEST(auto_falls_back)
{
    Harness h;
    SessionConfig c = v5_config();
    c.protocol = SESSION_PROTOCOL_AUTO;
    setup_with(&h, &c);
    ck_assert(session_should_connect(h.s, h.now));
    session_transport_up(h.s, h.now);
    ck_assert_int_eq(expect_packet(&h, MQTT_CONNECT).version, MQTT_V5);
    MqttPacket no = {.type = MQTT_CONNACK, .connack = {.rc = 1}}; /* a 3.1.1 broker */
    broker_sends(&h, &no);
    ck_assert_int_eq(h.s->state, SESSION_IDLE);
    ck_assert_str_eq(h.s->last_error, "the broker refused MQTT 5 (3.1.1 return code 1): using "
                                      "MQTT 3.1.1");
    ck_assert(session_should_connect(h.s, h.now)); /* no backoff */
    session_transport_up(h.s, h.now);
    ck_assert_int_eq(expect_packet(&h, MQTT_CONNECT).version, MQTT_V311);
    MqttPacket yes = {.type = MQTT_CONNACK};
    broker_sends(&h, &yes);
    ck_assert_int_eq(h.s->state, SESSION_CONNECTED);
    ck_assert_int_eq(h.s->protocol, MQTT_V311);
    /* An MQTT 5 broker's refusal of the version does the same. */
    ck_assert_int_eq(session_configure(h.s, &c), 0);
    session_reconnect_now(h.s, h.now);
    expect_packet(&h, MQTT_DISCONNECT);
    ck_assert(session_should_connect(h.s, h.now));
    session_transport_up(h.s, h.now);
    ck_assert_int_eq(expect_packet(&h, MQTT_CONNECT).version, MQTT_V5);
    MqttPacket no5 = {.type = MQTT_CONNACK, .version = MQTT_V5, .connack = {.rc = 0x84}};
    broker_sends(&h, &no5);
    ck_assert(session_should_connect(h.s, h.now));
    session_transport_up(h.s, h.now);
    ck_assert_int_eq(expect_packet(&h, MQTT_CONNECT).version, MQTT_V311);
    teardown(&h);
}
END_TEST

/* With protocol 5 a refusal is a refusal: reason code and string in last_error, backoff. */
START_TEST(refusal_with_reason)
{
    Harness h;
    SessionConfig c = v5_config();
    setup_with(&h, &c);
    ck_assert(session_should_connect(h.s, h.now));
    session_transport_up(h.s, h.now);
    expect_packet(&h, MQTT_CONNECT);
    MqttPacket no = {
        .type = MQTT_CONNACK,
        .version = MQTT_V5,
        .connack = {.rc = 0x87},
        .props = {.has = BIT(MQTT_PROP_REASON_STRING), .reason_string = VIEW_STR("not you")}};
    broker_sends(&h, &no);
    ck_assert_str_eq(h.s->last_error, "connection refused: Not authorized (0x87): not you");
    ck_assert(!session_should_connect(h.s, h.now));
    teardown(&h);
}
END_TEST

/* Receive Maximum 2: never more than two QoS 1/2 messages in flight, whatever max_inflight. */
START_TEST(receive_maximum_window)
{
    Harness h;
    SessionConfig c = v5_config();
    c.max_inflight = 10;
    setup_with(&h, &c);
    connect5(&h, &(MqttProps){.has = BIT(MQTT_PROP_RECEIVE_MAXIMUM), .receive_maximum = 2});
    for (int i = 0; i < 5; i++) {
        publish(&h, "rm/t", 1, false, NULL, 0);
    }
    session_tick(h.s, h.now);
    MqttPacket a = expect_packet(&h, MQTT_PUBLISH);
    expect_packet(&h, MQTT_PUBLISH);
    expect_no_packet(&h);
    ck_assert_uint_eq(h.s->inflight, 2);
    broker_ack(&h, MQTT_PUBACK, a.publish.id);
    session_tick(h.s, h.now);
    expect_packet(&h, MQTT_PUBLISH);
    expect_no_packet(&h);
    ck_assert_uint_eq(h.s->inflight, 2);
    teardown(&h);
}
END_TEST

/* Maximum QoS 1 and Retain Available 0: such publishes are refused, nothing is sent; one
 * queued before the limits were known fails unsent. Maximum Packet Size is never passed. */
START_TEST(connack_limits_refuse)
{
    Harness h;
    SessionConfig c = v5_config();
    setup_with(&h, &c);
    publish(&h, "early/q2", 2, false, REQ(1), 0); /* queued while connecting */
    connect5(&h, &(MqttProps){.has = BIT(MQTT_PROP_MAXIMUM_QOS) | BIT(MQTT_PROP_RETAIN_AVAILABLE) |
                                     BIT(MQTT_PROP_MAXIMUM_PACKET_SIZE),
                              .maximum_qos = 1,
                              .retain_available = 0,
                              .maximum_packet_size = 64});
    session_tick(h.s, h.now);
    expect_no_packet(&h);
    const SessionEvent *done = last_event(&h, SESSION_EV_PUBLISH_DONE);
    ck_assert_ptr_nonnull(done);
    ck_assert_ptr_eq(done->done.req, REQ(1));
    ck_assert_int_eq(done->done.result, -ENOTSUP);
    publish(&h, "q/2", 2, false, NULL, -ENOTSUP);
    publish(&h, "ret", 0, true, NULL, -ENOTSUP);
    ck_assert_uint_eq(session_max_publish(h.s), 59);
    char big[80];
    memset(big, 'b', sizeof(big) - 1);
    big[sizeof(big) - 1] = 0;
    publish(&h, big, 0, false, NULL, -EMSGSIZE);
    publish(&h, "q/1", 1, false, NULL, 0);
    session_tick(h.s, h.now);
    MqttPacket p = expect_packet(&h, MQTT_PUBLISH);
    ck_assert_uint_le(p.size, 64);
    ck_assert_uint_eq(h.s->stats.pub_fail, 4);
    teardown(&h);
}
END_TEST

/* With [topics] mount, the broker's Maximum Packet Size counts the mounted topic: a message
 * that fits only without the mount point is refused, or fails when it would go out. */
START_TEST(mount_point_counts_in_the_limits)
{
    Harness h;
    SessionConfig c = v5_config();
    MqttMount mount;
    ck_assert_int_eq(mqtt_mount_init(&mount, "box/0123456789/", NULL, 0), 0);
    c.mount = &mount;
    setup_with(&h, &c);
    char topic[41]; /* a PUBLISH of 2 + 2 + 40 + 1 + 1 (+ 15 mounted) bytes, QoS 0 */
    memset(topic, 't', sizeof(topic) - 1);
    topic[sizeof(topic) - 1] = 0;
    publish(&h, topic, 0, false, REQ(1), 0); /* queued while connecting */
    connect5(&h,
             &(MqttProps){.has = BIT(MQTT_PROP_MAXIMUM_PACKET_SIZE), .maximum_packet_size = 50});
    session_tick(h.s, h.now);
    expect_no_packet(&h);
    const SessionEvent *done = last_event(&h, SESSION_EV_PUBLISH_DONE);
    ck_assert_ptr_nonnull(done);
    ck_assert_ptr_eq(done->done.req, REQ(1));
    ck_assert_int_eq(done->done.result, -EMSGSIZE);
    publish(&h, topic, 0, false, NULL, -EMSGSIZE);
    publish(&h, "t/short", 0, false, NULL, 0);
    session_tick(h.s, h.now);
    MqttPacket p = expect_packet(&h, MQTT_PUBLISH);
    ck_assert_uint_le(p.size, 50);
    ck_assert(view_eq_str(p.publish.topic, "box/0123456789/t/short"));
    teardown(&h);
    mqtt_mount_free(&mount);
}
END_TEST

/* Topic Alias Maximum 2 from the broker: a topic's second PUBLISH carries its alias and no
 * topic; a third topic takes the least recently used alias; a new link starts over. */
START_TEST(outgoing_aliases)
{
    Harness h;
    SessionConfig c = v5_config();
    setup_with(&h, &c);
    connect5(&h, &(MqttProps){.has = BIT(MQTT_PROP_TOPIC_ALIAS_MAXIMUM), .topic_alias_maximum = 2});
    static const char *const topics[] = {"al/one",   "al/two", "al/one",
                                         "al/three", "al/two", "al/one"};
    struct {
        const char *topic; /* "" when sent by alias alone */
        uint16_t alias;
    } want[] = {{"al/one", 1},   {"al/two", 2}, {"", 1},
                {"al/three", 2}, {"al/two", 1}, {"al/one", 2}};
    for (size_t i = 0; i < 6; i++) {
        publish(&h, topics[i], 0, false, NULL, 0);
        session_tick(h.s, h.now);
        MqttPacket p = expect_packet(&h, MQTT_PUBLISH);
        ck_assert_view_str(p.publish.topic, want[i].topic);
        ck_assert_uint_eq(p.props.topic_alias, want[i].alias);
    }
    ck_assert_uint_eq(h.s->stats.topic_aliases_used, 1);
    session_reconnect_now(h.s, h.now);
    take_output(&h);
    mqtt_decoder_free(&h.wire);
    mqtt_decoder_init(&h.wire, 0);
    connect5(&h, &(MqttProps){.has = BIT(MQTT_PROP_TOPIC_ALIAS_MAXIMUM), .topic_alias_maximum = 2});
    publish(&h, "al/one", 0, false, NULL, 0);
    session_tick(h.s, h.now);
    ck_assert_view_str(expect_packet(&h, MQTT_PUBLISH).publish.topic, "al/one");
    teardown(&h);
}
END_TEST

/* Incoming aliases: set, then used; one above our maximum ends the link with DISCONNECT
 * 0x94; one never set is a protocol error too. */
START_TEST(incoming_aliases)
{
    Harness h;
    SessionConfig c = v5_config();
    setup_with(&h, &c);
    connect5(&h, &(MqttProps){0});
    MqttPacket p = {.type = MQTT_PUBLISH,
                    .version = MQTT_V5,
                    .publish = {.topic = VIEW_STR("in/a"), .payload = VIEW_STR("1")},
                    .props = {.has = BIT(MQTT_PROP_TOPIC_ALIAS), .topic_alias = 3}};
    broker_sends(&h, &p);
    ck_assert_str_eq(h.msg_topic, "in/a");
    p.publish.topic = VIEW_NULL;
    p.publish.payload = VIEW_STR("2");
    broker_sends(&h, &p);
    ck_assert_str_eq(h.msg_topic, "in/a");
    ck_assert_str_eq(h.msg_payload, "2");
    ck_assert_uint_eq(count_events(&h, SESSION_EV_MESSAGE), 2);
    p.props.topic_alias = 5; /* above our 4 */
    broker_sends(&h, &p);
    ck_assert_int_eq(h.s->state, SESSION_IDLE);
    ck_assert_str_eq(h.s->last_error, "protocol error from broker: Topic Alias above the maximum");
    MqttPacket d;
    h.wire.version = MQTT_V5;
    ck_assert_int_eq(mqtt_decoder_next(&h.wire, &d), 1);
    ck_assert_int_eq(d.type, MQTT_DISCONNECT);
    ck_assert_uint_eq(d.ack.reason, MQTT_RC_TOPIC_ALIAS_INVALID);
    teardown(&h);
}
END_TEST

/* A refusing PUBACK reaches the request with its reason; 0x10 is still a success. */
START_TEST(ack_reason_codes)
{
    Harness h;
    SessionConfig c = v5_config();
    setup_with(&h, &c);
    connect5(&h, &(MqttProps){0});
    publish(&h, "r/1", 1, false, REQ(1), 0);
    publish(&h, "r/2", 1, false, REQ(2), 0);
    publish(&h, "r/3", 2, false, REQ(3), 0);
    session_tick(h.s, h.now);
    uint16_t id1 = expect_packet(&h, MQTT_PUBLISH).publish.id;
    uint16_t id2 = expect_packet(&h, MQTT_PUBLISH).publish.id;
    uint16_t id3 = expect_packet(&h, MQTT_PUBLISH).publish.id;
    MqttPacket no = {
        .type = MQTT_PUBACK,
        .version = MQTT_V5,
        .ack = {.id = id1, .reason = 0x87},
        .props = {.has = BIT(MQTT_PROP_REASON_STRING), .reason_string = VIEW_STR("acl")}};
    broker_sends(&h, &no);
    const SessionEvent *e = last_event(&h, SESSION_EV_PUBLISH_DONE);
    ck_assert_ptr_eq(e->done.req, REQ(1));
    ck_assert_int_eq(e->done.result, -EPERM);
    ck_assert_uint_eq(e->done.reason, 0x87);
    MqttPacket nobody = {
        .type = MQTT_PUBACK, .version = MQTT_V5, .ack = {.id = id2, .reason = 0x10}};
    broker_sends(&h, &nobody);
    e = last_event(&h, SESSION_EV_PUBLISH_DONE);
    ck_assert_ptr_eq(e->done.req, REQ(2));
    ck_assert_int_eq(e->done.result, 0);
    ck_assert_uint_eq(e->done.reason, 0x10);
    /* A refusing PUBREC ends the QoS 2 exchange: no PUBREL. */
    MqttPacket rec = {.type = MQTT_PUBREC, .version = MQTT_V5, .ack = {.id = id3, .reason = 0x97}};
    broker_sends(&h, &rec);
    e = last_event(&h, SESSION_EV_PUBLISH_DONE);
    ck_assert_ptr_eq(e->done.req, REQ(3));
    ck_assert_int_eq(e->done.result, -EPERM);
    expect_no_packet(&h);
    ck_assert_uint_eq(h.s->inflight, 0);
    ck_assert_uint_eq(h.s->stats.pub_fail, 2);
    teardown(&h);
}
END_TEST

/* The broker's DISCONNECT: its reason in last_error, its server reference kept for the next
 * connect; Server Keep Alive and an assigned client id are taken from CONNACK. */
START_TEST(disconnect_redirect_and_assigned_id)
{
    Harness h;
    SessionConfig c = v5_config();
    c.client_id = VIEW_NULL;
    setup_with(&h, &c);
    connect5(&h, &(MqttProps){.has = BIT(MQTT_PROP_ASSIGNED_CLIENT_ID) |
                                     BIT(MQTT_PROP_SERVER_KEEP_ALIVE),
                              .assigned_client_id = VIEW_STR("auto-7"),
                              .server_keep_alive = 3});
    ck_assert_str_eq(h.s->assigned_client_id, "auto-7");
    ck_assert_int_eq(h.s->limits.server_keep_alive, 3);
    ck_assert_int_eq(session_tick(h.s, h.now), h.now + 3000); /* a ping due after 3 s */
    MqttPacket bye = {
        .type = MQTT_DISCONNECT,
        .version = MQTT_V5,
        .ack = {.reason = 0x9c},
        .props = {.has = BIT(MQTT_PROP_SERVER_REFERENCE) | BIT(MQTT_PROP_REASON_STRING),
                  .server_reference = VIEW_STR("other:1884"),
                  .reason_string = VIEW_STR("maintenance")}};
    broker_sends(&h, &bye);
    ck_assert_int_eq(h.s->state, SESSION_IDLE);
    ck_assert_str_eq(h.s->last_error, "the broker disconnected: Use another server (0x9C): "
                                      "maintenance; redirected to other:1884");
    ck_assert_str_eq(h.s->server_reference, "other:1884");
    h.now = h.s->retry_at;
    ck_assert(session_should_connect(h.s, h.now));
    session_transport_up(h.s, h.now);
    ck_assert_view_str(expect_packet(&h, MQTT_CONNECT).connect.client_id, "auto-7");
    teardown(&h);
}
END_TEST

/* Subscription identifiers go out when the broker has them, and a copy names its own. */
START_TEST(subscription_identifiers)
{
    Harness h;
    SessionConfig c = v5_config();
    setup_with(&h, &c);
    connect5(&h, &(MqttProps){0});
    SessionSubscribe sub = {.filter = VIEW_STR("s/#"), .qos = 1, .subid = 42};
    ck_assert_int_eq(session_subscribe(h.s, &sub, REQ(1), h.now), 0);
    session_tick(h.s, h.now);
    MqttPacket p = expect_packet(&h, MQTT_SUBSCRIBE);
    ck_assert_uint_eq(p.props.n_subid, 1);
    MqttPropItem it;
    View raw = p.props.raw;
    ck_assert_int_eq(mqtt_props_next(&raw, &it), 1);
    ck_assert_uint_eq(it.subid, 42);
    /* A broker without them: none sent. */
    session_reconnect_now(h.s, h.now);
    take_output(&h);
    mqtt_decoder_free(&h.wire);
    mqtt_decoder_init(&h.wire, 0);
    connect5(&h, &(MqttProps){.has = BIT(MQTT_PROP_SUBSCRIPTION_ID_AVAILABLE),
                              .subscription_id_available = 0});
    ck_assert_int_eq(session_subscribe(
                         h.s, &(SessionSubscribe){.filter = VIEW_STR("t/#"), .qos = 0, .subid = 43},
                         NULL, h.now),
                     0);
    session_tick(h.s, h.now);
    MqttPacket q = expect_packet(&h, MQTT_SUBSCRIBE);
    ck_assert_uint_eq(q.props.n_subid, 0);
    teardown(&h);
}
END_TEST

/* The broker's DISCONNECT reason for what the session read, written before the link goes. */
static uint8_t disconnect_reason(Harness *h)
{
    MqttPacket d;
    h->wire.version = MQTT_V5;
    ck_assert_int_eq(mqtt_decoder_next(&h->wire, &d), 1);
    ck_assert_int_eq(d.type, MQTT_DISCONNECT);
    return d.ack.reason;
}

/* A broker that breaks the standard - a property twice - is told so (0x82) and the link is
 * made again with backoff. */
START_TEST(malformed_from_broker)
{
    Harness h;
    SessionConfig c = v5_config();
    setup_with(&h, &c);
    connect5(&h, &(MqttProps){0});
    View bad = unhex("30 0a 00 01 61 06 03 00 00 03 00 00"); /* Content Type twice */
    session_input(h.s, bad.p, bad.n, h.now);
    ck_assert_int_eq(h.s->state, SESSION_IDLE);
    ck_assert_str_eq(h.s->last_error,
                     "protocol error from broker: property appears more than once");
    ck_assert_uint_eq(disconnect_reason(&h), MQTT_RC_PROTOCOL_ERROR);
    ck_assert_int_gt(h.s->retry_at, h.now);
    teardown(&h);
}
END_TEST

/* A refused SUBSCRIBE's reason code and string reach its request. */
START_TEST(suback_reason)
{
    Harness h;
    SessionConfig c = v5_config();
    setup_with(&h, &c);
    connect5(&h, &(MqttProps){0});
    ck_assert_int_eq(session_subscribe(
                         h.s, &(SessionSubscribe){.filter = VIEW_STR("no/#"), .qos = 1, .subid = 1},
                         REQ(1), h.now),
                     0);
    session_tick(h.s, h.now);
    uint16_t id = expect_packet(&h, MQTT_SUBSCRIBE).subscribe.id;
    MqttPacket no = {
        .type = MQTT_SUBACK,
        .version = MQTT_V5,
        .suback = {.id = id, .codes = VIEW_STR("\x87")},
        .props = {.has = BIT(MQTT_PROP_REASON_STRING), .reason_string = VIEW_STR("acl")}};
    broker_sends(&h, &no);
    const SessionEvent *e = last_event(&h, SESSION_EV_SUBSCRIBE_DONE);
    ck_assert_ptr_eq(e->done.req, REQ(1));
    ck_assert_int_eq(e->done.result, -EPERM);
    ck_assert_uint_eq(e->done.reason, 0x87);
    ck_assert_uint_eq(e->done.reason_string.n, 3);
    teardown(&h);
}
END_TEST

/* Wildcard / Shared Subscription Available 0: such a SUBSCRIBE is answered as the broker would
 * (0xA2, 0x9E) and not sent; a plain one still goes. */
START_TEST(subscribe_limits)
{
    Harness h;
    SessionConfig c = v5_config();
    setup_with(&h, &c);
    connect5(
        &h, &(MqttProps){.has = BIT(MQTT_PROP_WILDCARD_AVAILABLE) | BIT(MQTT_PROP_SHARED_AVAILABLE),
                         .wildcard_available = 0,
                         .shared_available = 0});
    ck_assert_int_eq(
        session_subscribe(h.s, &(SessionSubscribe){.filter = VIEW_STR("a/+"), .qos = 0, .subid = 1},
                          REQ(1), h.now),
        0);
    ck_assert_int_eq(
        session_subscribe(
            h.s, &(SessionSubscribe){.filter = VIEW_STR("$share/g/x"), .qos = 0, .subid = 2},
            REQ(2), h.now),
        0);
    ck_assert_int_eq(
        session_subscribe(h.s,
                          &(SessionSubscribe){.filter = VIEW_STR("plain/t"), .qos = 0, .subid = 3},
                          REQ(3), h.now),
        0);
    session_tick(h.s, h.now);
    View list = expect_packet(&h, MQTT_SUBSCRIBE).subscribe.list;
    MqttTopicReq t;
    ck_assert_int_eq(mqtt_topic_list_next(&list, true, &t), 1);
    ck_assert_view_str(t.filter, "plain/t");
    expect_no_packet(&h);
    ck_assert_uint_eq(count_events(&h, SESSION_EV_SUBSCRIBE_DONE), 2);
    ck_assert_ptr_eq(h.ev[h.n_ev - 2].done.req, REQ(1));
    ck_assert_uint_eq(h.ev[h.n_ev - 2].done.reason, 0xA2);
    ck_assert_ptr_eq(h.ev[h.n_ev - 1].done.req, REQ(2));
    ck_assert_uint_eq(h.ev[h.n_ev - 1].done.reason, 0x9E);
    ck_assert_int_eq(h.ev[h.n_ev - 1].done.result, -EPERM);
    teardown(&h);
}
END_TEST

/* A SUBSCRIBE that would pass the broker's Maximum Packet Size is answered 0x95, not sent;
 * the CONNACK's Response Information is kept. */
START_TEST(subscribe_too_large_and_response_info)
{
    Harness h;
    SessionConfig c = v5_config();
    setup_with(&h, &c);
    connect5(&h,
             &(MqttProps){.has = BIT(MQTT_PROP_MAXIMUM_PACKET_SIZE) | BIT(MQTT_PROP_RESPONSE_INFO),
                          .maximum_packet_size = 40,
                          .response_info = VIEW_STR("resp/here")});
    ck_assert_str_eq(h.s->response_information, "resp/here");
    char f[40];
    memset(f, 'f', sizeof(f) - 1);
    f[sizeof(f) - 1] = 0;
    ck_assert_int_eq(
        session_subscribe(h.s, &(SessionSubscribe){.filter = VIEW_STR(f), .qos = 0, .subid = 1},
                          REQ(1), h.now),
        0);
    session_tick(h.s, h.now);
    expect_no_packet(&h);
    const SessionEvent *e = last_event(&h, SESSION_EV_SUBSCRIBE_DONE);
    ck_assert_uint_eq(e->done.reason, MQTT_RC_PACKET_TOO_LARGE);
    teardown(&h);
}
END_TEST

/* A resumed session's in-flight messages go again within the new link's Receive Maximum, and
 * one above its Maximum Packet Size fails instead of being sent. */
START_TEST(resume_within_new_limits)
{
    Harness h;
    SessionConfig c = v5_config();
    c.max_inflight = 10;
    c.clean_session = false;
    setup_with(&h, &c);
    connect5(&h, &(MqttProps){0});
    char big[120];
    memset(big, 'b', sizeof(big) - 1);
    big[sizeof(big) - 1] = 0;
    SessionPublish large = {.topic = VIEW_STR("r/big"), .payload = VIEW_STR(big), .qos = 1};
    ck_assert_int_eq(session_publish(h.s, &large, REQ(1), h.now, NULL), 0);
    publish(&h, "r/a", 1, false, REQ(2), 0);
    publish(&h, "r/b", 1, false, REQ(3), 0);
    publish(&h, "r/c", 1, false, REQ(4), 0);
    session_tick(h.s, h.now);
    for (int i = 0; i < 4; i++) {
        expect_packet(&h, MQTT_PUBLISH);
    }
    session_reconnect_now(h.s, h.now);
    expect_packet(&h, MQTT_DISCONNECT);
    ck_assert(session_should_connect(h.s, h.now));
    session_transport_up(h.s, h.now);
    expect_packet(&h, MQTT_CONNECT);
    MqttPacket ack = {
        .type = MQTT_CONNACK,
        .version = MQTT_V5,
        .connack = {.session_present = true},
        .props = {.has = BIT(MQTT_PROP_RECEIVE_MAXIMUM) | BIT(MQTT_PROP_MAXIMUM_PACKET_SIZE),
                  .receive_maximum = 2,
                  .maximum_packet_size = 64}};
    broker_sends(&h, &ack);
    const SessionEvent *e = last_event(&h, SESSION_EV_PUBLISH_DONE);
    ck_assert_ptr_eq(e->done.req, REQ(1));
    ck_assert_int_eq(e->done.result, -EMSGSIZE);
    MqttPacket a = expect_packet(&h, MQTT_PUBLISH);
    ck_assert(a.publish.dup);
    ck_assert_view_str(a.publish.topic, "r/a");
    ck_assert_view_str(expect_packet(&h, MQTT_PUBLISH).publish.topic, "r/b");
    expect_no_packet(&h);
    broker_ack(&h, MQTT_PUBACK, a.publish.id);
    session_tick(h.s, h.now);
    MqttPacket cc = expect_packet(&h, MQTT_PUBLISH);
    ck_assert(cc.publish.dup);
    ck_assert_view_str(cc.publish.topic, "r/c");
    teardown(&h);
}
END_TEST

/* A message's own properties go out in its PUBLISH, with what remains of its Message Expiry
 * (MQTT 5.0 3.3.2.3.3: the interval the receiver sees is the lifetime left). */
START_TEST(message_properties_and_expiry)
{
    Harness h;
    SessionConfig c = v5_config();
    setup_with(&h, &c);
    static const uint8_t block[] = {0x03, 0, 1, 't', 0x26, 0, 1, 'k', 0, 1, 'v'};
    SessionPublish p = {.topic = VIEW_STR("e/1"),
                        .payload = VIEW_STR("x"),
                        .qos = 1,
                        .props = VIEW(block, sizeof(block)),
                        .expires_at = h.now + 10000};
    ck_assert_int_eq(session_publish(h.s, &p, REQ(1), h.now, NULL), 0);
    h.now += 3500; /* the broker is away for 3.5 s */
    connect5(&h, &(MqttProps){0});
    MqttPacket out = expect_packet(&h, MQTT_PUBLISH);
    ck_assert(MQTT_HAS(&out.props, MQTT_PROP_MESSAGE_EXPIRY));
    ck_assert_uint_eq(out.props.message_expiry, 7); /* 6.5 s left, rounded up */
    ck_assert_view_str(out.props.content_type, "t");
    ck_assert_uint_eq(out.props.n_user, 1);
    /* Properties a caller may not give: the session's own. */
    static const uint8_t alias[] = {0x23, 0, 1};
    p.props = VIEW(alias, sizeof(alias));
    ck_assert_int_eq(session_publish(h.s, &p, NULL, h.now, NULL), -EINVAL);
    static const uint8_t broken[] = {0x03, 0, 5, 't'};
    p.props = VIEW(broken, sizeof(broken));
    ck_assert_int_eq(session_publish(h.s, &p, NULL, h.now, NULL), -EINVAL);
    teardown(&h);
}
END_TEST

/* A queued message whose expiry passes while the broker is away is never sent: its request
 * hears -ETIME at that moment, not at the next connect. */
START_TEST(expiry_in_the_queue)
{
    Harness h;
    SessionConfig c = v5_config();
    setup_with(&h, &c);
    SessionPublish p = {
        .topic = VIEW_STR("e/2"), .payload = VIEW_STR("x"), .qos = 1, .expires_at = h.now + 2000};
    ck_assert_int_eq(session_publish(h.s, &p, REQ(1), h.now, NULL), 0);
    p.expires_at = 0;
    p.topic = VIEW_STR("e/3");
    ck_assert_int_eq(session_publish(h.s, &p, REQ(2), h.now, NULL), 0);
    int64_t next = session_tick(h.s, h.now);
    ck_assert_int_le(next, h.now + 2000);
    h.now += 2000;
    session_tick(h.s, h.now);
    const SessionEvent *done = last_event(&h, SESSION_EV_PUBLISH_DONE);
    ck_assert_ptr_nonnull(done);
    ck_assert_ptr_eq(done->done.req, REQ(1));
    ck_assert_int_eq(done->done.result, -ETIME);
    ck_assert_uint_eq(h.s->stats.messages_expired, 1);
    ck_assert_uint_eq(h.s->queued, 1);
    connect5(&h, &(MqttProps){0});
    MqttPacket out = expect_packet(&h, MQTT_PUBLISH);
    ck_assert_view_str(out.publish.topic, "e/3"); /* only the other one */
    ck_assert(!MQTT_HAS(&out.props, MQTT_PROP_MESSAGE_EXPIRY));
    /* Already past: refused at once. */
    p.expires_at = h.now;
    ck_assert_int_eq(session_publish(h.s, &p, NULL, h.now, NULL), -ETIME);
    ck_assert_uint_eq(h.s->stats.messages_expired, 2);
    teardown(&h);
}
END_TEST

/* On a 3.1.1 link the properties stay out of the PUBLISH, counted once per message. */
START_TEST(properties_dropped_on_311)
{
    Harness h;
    setup_connected(&h);
    static const uint8_t block[] = {0x03, 0, 1, 't'};
    SessionPublish p = {.topic = VIEW_STR("d/1"),
                        .payload = VIEW_STR("x"),
                        .props = VIEW(block, sizeof(block)),
                        .expires_at = h.now + 60000};
    ck_assert_int_eq(session_publish(h.s, &p, NULL, h.now, NULL), 0);
    session_tick(h.s, h.now);
    MqttPacket out = expect_packet(&h, MQTT_PUBLISH);
    ck_assert_uint_eq(out.props.has, 0);
    ck_assert_uint_eq(h.s->stats.properties_dropped, 1);
    teardown(&h);
}
END_TEST

/* Subscription options on the wire (MQTT 5.0 3.8.3.1: bit 2 No Local, bit 3 Retain As
 * Published, bits 4-5 Retain Handling), and again when restored. */
START_TEST(subscription_options)
{
    Harness h;
    SessionConfig c = v5_config();
    setup_with(&h, &c);
    connect5(&h, &(MqttProps){0});
    SessionSubscribe sub = {.filter = VIEW_STR("o/#"),
                            .qos = 1,
                            .no_local = true,
                            .retain_as_published = true,
                            .retain_handling = 2};
    ck_assert_int_eq(session_subscribe(h.s, &sub, REQ(1), h.now), 0);
    session_tick(h.s, h.now);
    MqttPacket p = expect_packet(&h, MQTT_SUBSCRIBE);
    ck_assert_uint_eq(p.subscribe.list.n, 2 + 3 + 1);
    ck_assert_uint_eq(p.subscribe.list.p[5], 0x01 | 0x04 | 0x08 | 0x20);
    sub.retain_handling = 3;
    ck_assert_int_eq(session_subscribe(h.s, &sub, NULL, h.now), -EINVAL);
    teardown(&h);
}
END_TEST

static Suite *session5_suite(void)
{
    Suite *s = suite_create("session5");
    TCase *tc = tcase_create("session5");
    tcase_add_test(tc, connect_properties);
    tcase_add_test(tc, auto_falls_back);
    tcase_add_test(tc, refusal_with_reason);
    tcase_add_test(tc, receive_maximum_window);
    tcase_add_test(tc, connack_limits_refuse);
    tcase_add_test(tc, mount_point_counts_in_the_limits);
    tcase_add_test(tc, outgoing_aliases);
    tcase_add_test(tc, incoming_aliases);
    tcase_add_test(tc, ack_reason_codes);
    tcase_add_test(tc, disconnect_redirect_and_assigned_id);
    tcase_add_test(tc, subscription_identifiers);
    tcase_add_test(tc, malformed_from_broker);
    tcase_add_test(tc, suback_reason);
    tcase_add_test(tc, subscribe_limits);
    tcase_add_test(tc, subscribe_too_large_and_response_info);
    tcase_add_test(tc, resume_within_new_limits);
    tcase_add_test(tc, message_properties_and_expiry);
    tcase_add_test(tc, expiry_in_the_queue);
    tcase_add_test(tc, properties_dropped_on_311);
    tcase_add_test(tc, subscription_options);
    suite_add_tcase(s, tc);
    return s;
}

CHECK_MAIN(session5_suite)
