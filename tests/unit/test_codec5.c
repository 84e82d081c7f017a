/* SPDX-License-Identifier: MIT */
/*
 * Unit tests of the MQTT 5 side of the codec. The byte vectors are written out by hand from
 * the layouts in the MQTT 5.0 standard (each packet's section, 2.2.2 for properties, 1.5 for
 * data representation; the first CONNECT is the variable header of its Figure 3-6), never
 * produced by our encoder. Every vector is encoded, decoded, compared field by field and cut
 * at every split point; every malformed case the decoder distinguishes has its own error.
 */
#include <errno.h>

#include "mqtt/codec.h"
#include "testutil.h"

#define V(s) VIEW_LIT(s)

static const MqttUserProp kv[] = {{V("k"), V("v")}};
static const uint32_t subids[] = {1, 16384};
static const MqttTopicReq sub5[] = {
    {.filter = V("a/+"),
     .qos = 1,
     .no_local = true,
     .retain_as_published = true,
     .retain_handling = 2},
    {.filter = V("#"), .qos = 2},
};
static const uint32_t one_subid[] = {5};

#define BIT MQTT_PROP_BIT

static const struct vector {
    const char *name;
    MqttPacket pkt;
    const char *hex;
} vectors[] = {
    {"connect, the standard's Figure 3-6 header, will delay",
     {.type = MQTT_CONNECT,
      .version = MQTT_V5,
      .props = {.has = BIT(MQTT_PROP_SESSION_EXPIRY), .session_expiry = 10},
      .connect = {.client_id = V("cid"),
                  .keepalive = 10,
                  .clean_session = true,
                  .will = true,
                  .will_qos = 1,
                  .will_topic = V("w/t"),
                  .will_payload = V("bye"),
                  .will_props = {.has = BIT(MQTT_PROP_WILL_DELAY), .will_delay = 60},
                  .has_username = true,
                  .username = V("u"),
                  .has_password = true,
                  .password = V("pw")}},
     "10 2c 00 04 4d 51 54 54 05 ce 00 0a 05 11 00 00 00 0a 00 03 63 69 64 05 18 00 00 00 3c"
     " 00 03 77 2f 74 00 03 62 79 65 00 01 75 00 02 70 77"},
    {"connect, every CONNECT property",
     {.type = MQTT_CONNECT,
      .version = MQTT_V5,
      .props = {.has = BIT(MQTT_PROP_SESSION_EXPIRY) | BIT(MQTT_PROP_AUTH_METHOD) |
                       BIT(MQTT_PROP_AUTH_DATA) | BIT(MQTT_PROP_REQUEST_PROBLEM_INFO) |
                       BIT(MQTT_PROP_REQUEST_RESPONSE_INFO) | BIT(MQTT_PROP_RECEIVE_MAXIMUM) |
                       BIT(MQTT_PROP_TOPIC_ALIAS_MAXIMUM) | BIT(MQTT_PROP_MAXIMUM_PACKET_SIZE),
                .session_expiry = 0xffffffff,
                .auth_method = V("m"),
                .auth_data = V("d"),
                .request_problem_info = 0,
                .request_response_info = 1,
                .receive_maximum = 100,
                .topic_alias_maximum = 64,
                .maximum_packet_size = 1024,
                .user = kv,
                .n_user = 1},
      .connect = {.keepalive = 60, .clean_session = true}},
     "10 30 00 04 4d 51 54 54 05 02 00 3c 23 11 ff ff ff ff 15 00 01 6d 16 00 01 64 17 00"
     " 19 01 21 00 64 22 00 40 27 00 00 04 00 26 00 01 6b 00 01 76 00 00"},
    {"connack, the broker's limits",
     {.type = MQTT_CONNACK,
      .version = MQTT_V5,
      .props = {.has = BIT(MQTT_PROP_ASSIGNED_CLIENT_ID) | BIT(MQTT_PROP_SERVER_KEEP_ALIVE) |
                       BIT(MQTT_PROP_RECEIVE_MAXIMUM) | BIT(MQTT_PROP_TOPIC_ALIAS_MAXIMUM) |
                       BIT(MQTT_PROP_MAXIMUM_QOS) | BIT(MQTT_PROP_RETAIN_AVAILABLE) |
                       BIT(MQTT_PROP_MAXIMUM_PACKET_SIZE) | BIT(MQTT_PROP_WILDCARD_AVAILABLE) |
                       BIT(MQTT_PROP_SUBSCRIPTION_ID_AVAILABLE) | BIT(MQTT_PROP_SHARED_AVAILABLE),
                .assigned_client_id = V("x"),
                .server_keep_alive = 30,
                .receive_maximum = 2,
                .topic_alias_maximum = 5,
                .maximum_qos = 1,
                .retain_available = 0,
                .maximum_packet_size = 512,
                .wildcard_available = 1,
                .subscription_id_available = 1,
                .shared_available = 0}},
     "20 1f 00 00 1c 12 00 01 78 13 00 1e 21 00 02 22 00 05 24 01 25 00 27 00 00 02 00 28 01"
     " 29 01 2a 00"},
    {"connack, use another server",
     {.type = MQTT_CONNACK,
      .version = MQTT_V5,
      .connack = {.rc = 0x9c},
      .props = {.has = BIT(MQTT_PROP_SERVER_REFERENCE) | BIT(MQTT_PROP_REASON_STRING),
                .server_reference = V("h:1"),
                .reason_string = V("go")}},
     "20 0e 00 9c 0b 1c 00 03 68 3a 31 1f 00 02 67 6f"},
    {"connack, session present, no properties",
     {.type = MQTT_CONNACK, .version = MQTT_V5, .connack = {.session_present = true}},
     "20 03 01 00 00"},
    {"publish qos 1, every PUBLISH property",
     {.type = MQTT_PUBLISH,
      .version = MQTT_V5,
      .publish = {.topic = V("a/b"), .payload = V("hi"), .qos = 1, .id = 10},
      .props = {.has = BIT(MQTT_PROP_PAYLOAD_FORMAT) | BIT(MQTT_PROP_MESSAGE_EXPIRY) |
                       BIT(MQTT_PROP_CONTENT_TYPE) | BIT(MQTT_PROP_RESPONSE_TOPIC) |
                       BIT(MQTT_PROP_CORRELATION_DATA) | BIT(MQTT_PROP_TOPIC_ALIAS),
                .payload_format = 1,
                .message_expiry = 3600,
                .content_type = V("t"),
                .response_topic = V("r"),
                .correlation_data = V("c"),
                .topic_alias = 3,
                .subid = subids,
                .n_subid = 2,
                .user = kv,
                .n_user = 1}},
     "32 2d 00 03 61 2f 62 00 0a 23 01 01 02 00 00 0e 10 03 00 01 74 08 00 01 72 09 00 01 63"
     " 23 00 03 0b 01 0b 80 80 01 26 00 01 6b 00 01 76 68 69"},
    {"publish qos 0 by topic alias alone",
     {.type = MQTT_PUBLISH,
      .version = MQTT_V5,
      .publish = {.payload = V("x")},
      .props = {.has = BIT(MQTT_PROP_TOPIC_ALIAS), .topic_alias = 3}},
     "30 07 00 00 03 23 00 03 78"},
    {"publish qos 0, no properties",
     {.type = MQTT_PUBLISH, .version = MQTT_V5, .publish = {.topic = V("a/b"), .payload = V("hi")}},
     "30 08 00 03 61 2f 62 00 68 69"},
    {"puback success, short form",
     {.type = MQTT_PUBACK, .version = MQTT_V5, .ack = {.id = 1}},
     "40 02 00 01"},
    {"puback no matching subscribers",
     {.type = MQTT_PUBACK, .version = MQTT_V5, .ack = {.id = 1, .reason = 0x10}},
     "40 03 00 01 10"},
    {"puback not authorized, reason string",
     {.type = MQTT_PUBACK,
      .version = MQTT_V5,
      .ack = {.id = 1, .reason = 0x87},
      .props = {.has = BIT(MQTT_PROP_REASON_STRING), .reason_string = V("no")}},
     "40 09 00 01 87 05 1f 00 02 6e 6f"},
    {"pubrec unspecified error",
     {.type = MQTT_PUBREC, .version = MQTT_V5, .ack = {.id = 2, .reason = 0x80}},
     "50 03 00 02 80"},
    {"pubrel packet identifier not found",
     {.type = MQTT_PUBREL, .version = MQTT_V5, .ack = {.id = 3, .reason = 0x92}},
     "62 03 00 03 92"},
    {"pubcomp success",
     {.type = MQTT_PUBCOMP, .version = MQTT_V5, .ack = {.id = 4}},
     "70 02 00 04"},
    {"subscribe with options and a subscription identifier",
     {.type = MQTT_SUBSCRIBE,
      .version = MQTT_V5,
      .subscribe = {.id = 10, .topics = sub5, .count = 2},
      .props = {.subid = one_subid, .n_subid = 1}},
     "82 0f 00 0a 02 0b 05 00 03 61 2f 2b 2d 00 01 23 02"},
    {"suback, granted and refused",
     {.type = MQTT_SUBACK,
      .version = MQTT_V5,
      .suback = {.id = 10, .codes = {(const uint8_t *)"\x01\x02\x87\xa1", 4}}},
     "90 07 00 0a 00 01 02 87 a1"},
    {"unsubscribe",
     {.type = MQTT_UNSUBSCRIBE,
      .version = MQTT_V5,
      .subscribe = {.id = 11, .topics = sub5, .count = 2}},
     "a2 0b 00 0b 00 00 03 61 2f 2b 00 01 23"},
    {"unsuback with a reason string",
     {.type = MQTT_UNSUBACK,
      .version = MQTT_V5,
      .suback = {.id = 11, .codes = {(const uint8_t *)"\x00\x11", 2}},
      .props = {.has = BIT(MQTT_PROP_REASON_STRING), .reason_string = V("x")}},
     "b0 09 00 0b 04 1f 00 01 78 00 11"},
    {"pingreq", {.type = MQTT_PINGREQ, .version = MQTT_V5}, "c0 00"},
    {"pingresp", {.type = MQTT_PINGRESP, .version = MQTT_V5}, "d0 00"},
    {"disconnect normal, short form", {.type = MQTT_DISCONNECT, .version = MQTT_V5}, "e0 00"},
    {"disconnect with will",
     {.type = MQTT_DISCONNECT, .version = MQTT_V5, .ack = {.reason = 0x04}},
     "e0 01 04"},
    {"disconnect session taken over",
     {.type = MQTT_DISCONNECT,
      .version = MQTT_V5,
      .ack = {.reason = 0x8e},
      .props = {.has = BIT(MQTT_PROP_SESSION_EXPIRY) | BIT(MQTT_PROP_REASON_STRING),
                .session_expiry = 0,
                .reason_string = V("taken")}},
     "e0 0f 8e 0d 11 00 00 00 00 1f 00 05 74 61 6b 65 6e"},
    {"disconnect use another server",
     {.type = MQTT_DISCONNECT,
      .version = MQTT_V5,
      .ack = {.reason = 0x9c},
      .props = {.has = BIT(MQTT_PROP_SERVER_REFERENCE), .server_reference = V("b")}},
     "e0 06 9c 04 1c 00 01 62"},
    {"auth continue",
     {.type = MQTT_AUTH,
      .version = MQTT_V5,
      .ack = {.reason = 0x18},
      .props = {.has = BIT(MQTT_PROP_AUTH_METHOD) | BIT(MQTT_PROP_AUTH_DATA),
                .auth_method = V("m"),
                .auth_data = V("d")}},
     "f0 0a 18 08 15 00 01 6d 16 00 01 64"},
    {"auth success, short form", {.type = MQTT_AUTH, .version = MQTT_V5}, "f0 00"},
};
#define N_VECTORS (sizeof(vectors) / sizeof(vectors[0]))

START_TEST(encode_vector)
{
    const struct vector *v = &vectors[_i];
    Buf b = {0};
    int r = mqtt_encode(&b, &v->pkt);
    ck_assert_msg(r == 0, "%s: %s", v->name, mqtt_strerror(r));
    ck_assert_view_eq(buf_view(&b), unhex(v->hex));
    ck_assert_int_eq(mqtt_packet_size(&v->pkt), (long long)b.len);
    buf_free(&b);
}
END_TEST

/* The repeatable properties of a decoded block, walked: user properties as "k=v;", and the
 * subscription identifiers. */
static void walk(View raw, char *users, size_t n, uint32_t *ids, size_t *n_ids)
{
    MqttPropItem it;
    int r;
    size_t len = 0;
    *n_ids = 0;
    users[0] = 0;
    while ((r = mqtt_props_next(&raw, &it)) == 1) {
        if (it.id == MQTT_PROP_USER) {
            len += (size_t)snprintf(users + len, n - len, "%.*s=%.*s;", (int)it.user.name.n,
                                    (const char *)it.user.name.p, (int)it.user.value.n,
                                    (const char *)it.user.value.p);
        } else if (it.id == MQTT_PROP_SUBSCRIPTION_ID) {
            ids[(*n_ids)++] = it.subid;
        }
    }
    ck_assert_int_eq(r, 0);
}

static void assert_same_props(const MqttProps *a, const MqttProps *d)
{
    uint64_t singles = a->has;
    ck_assert_uint_eq(d->has & ~(BIT(MQTT_PROP_USER) | BIT(MQTT_PROP_SUBSCRIPTION_ID)), singles);
    ck_assert_uint_eq(d->message_expiry, a->message_expiry);
    ck_assert_uint_eq(d->session_expiry, a->session_expiry);
    ck_assert_uint_eq(d->will_delay, a->will_delay);
    ck_assert_uint_eq(d->maximum_packet_size, a->maximum_packet_size);
    ck_assert_uint_eq(d->receive_maximum, a->receive_maximum);
    ck_assert_uint_eq(d->topic_alias_maximum, a->topic_alias_maximum);
    ck_assert_uint_eq(d->topic_alias, a->topic_alias);
    ck_assert_uint_eq(d->server_keep_alive, a->server_keep_alive);
    ck_assert_uint_eq(d->payload_format, a->payload_format);
    ck_assert_uint_eq(d->request_response_info, a->request_response_info);
    ck_assert_uint_eq(d->maximum_qos, a->maximum_qos);
    ck_assert_uint_eq(d->retain_available, a->retain_available);
    ck_assert_uint_eq(d->wildcard_available, a->wildcard_available);
    ck_assert_uint_eq(d->subscription_id_available, a->subscription_id_available);
    ck_assert_uint_eq(d->shared_available, a->shared_available);
    ck_assert_view_eq(d->content_type, a->content_type);
    ck_assert_view_eq(d->response_topic, a->response_topic);
    ck_assert_view_eq(d->correlation_data, a->correlation_data);
    ck_assert_view_eq(d->assigned_client_id, a->assigned_client_id);
    ck_assert_view_eq(d->auth_method, a->auth_method);
    ck_assert_view_eq(d->auth_data, a->auth_data);
    ck_assert_view_eq(d->server_reference, a->server_reference);
    ck_assert_view_eq(d->reason_string, a->reason_string);
    ck_assert_uint_eq(d->n_user, a->n_user);
    ck_assert_uint_eq(d->n_subid, a->n_subid);
    char users[256];
    uint32_t ids[8];
    size_t n_ids;
    walk(d->raw, users, sizeof(users), ids, &n_ids);
    ck_assert_str_eq(users, a->n_user ? "k=v;" : "");
    ck_assert_uint_eq(n_ids, a->n_subid);
    for (size_t i = 0; i < n_ids; i++) {
        ck_assert_uint_eq(ids[i], a->subid[i]);
    }
}

static void assert_same(const MqttPacket *a, const MqttPacket *d)
{
    ck_assert_int_eq(d->type, a->type);
    ck_assert_int_eq(d->version, MQTT_V5);
    assert_same_props(&a->props, &d->props);
    switch (a->type) {
    case MQTT_CONNECT:
        ck_assert_view_eq(d->connect.client_id, a->connect.client_id);
        ck_assert_int_eq(d->connect.keepalive, a->connect.keepalive);
        ck_assert_int_eq(d->connect.will, a->connect.will);
        ck_assert_view_eq(d->connect.will_topic, a->connect.will_topic);
        ck_assert_view_eq(d->connect.password, a->connect.password);
        assert_same_props(&a->connect.will_props, &d->connect.will_props);
        break;
    case MQTT_CONNACK:
        ck_assert_int_eq(d->connack.rc, a->connack.rc);
        ck_assert_int_eq(d->connack.session_present, a->connack.session_present);
        break;
    case MQTT_PUBLISH:
        ck_assert_view_eq(d->publish.topic, a->publish.topic);
        ck_assert_view_eq(d->publish.payload, a->publish.payload);
        ck_assert_int_eq(d->publish.id, a->publish.id);
        break;
    case MQTT_SUBSCRIBE: {
        View list = d->subscribe.list;
        MqttTopicReq t;
        for (size_t i = 0; i < a->subscribe.count; i++) {
            const MqttTopicReq *w = &a->subscribe.topics[i];
            ck_assert_int_eq(mqtt_topic_list_next(&list, true, &t), 1);
            ck_assert_view_eq(t.filter, w->filter);
            ck_assert_int_eq(t.qos, w->qos);
            ck_assert_int_eq(t.no_local, w->no_local);
            ck_assert_int_eq(t.retain_as_published, w->retain_as_published);
            ck_assert_int_eq(t.retain_handling, w->retain_handling);
        }
        break;
    }
    case MQTT_SUBACK:
    case MQTT_UNSUBACK:
        ck_assert_int_eq(d->suback.id, a->suback.id);
        ck_assert_view_eq(d->suback.codes, a->suback.codes);
        break;
    case MQTT_UNSUBSCRIBE:
        ck_assert_int_eq(d->subscribe.id, a->subscribe.id);
        ck_assert_uint_eq(d->subscribe.count, a->subscribe.count);
        break;
    case MQTT_PINGREQ:
    case MQTT_PINGRESP:
        break; /* nothing but the type */
    default:   /* PUBACK..PUBCOMP, DISCONNECT, AUTH */
        ck_assert_int_eq(d->ack.id, a->ack.id);
        ck_assert_int_eq(d->ack.reason, a->ack.reason);
        break;
    }
}

START_TEST(decode_vector)
{
    const struct vector *v = &vectors[_i];
    View in = unhex(v->hex);
    MqttPacket d;
    int r = mqtt_decode(in, MQTT_V5, 0, &d);
    ck_assert_msg(r == 1, "%s: %s", v->name, mqtt_strerror(r));
    ck_assert_uint_eq(d.size, in.n);
    assert_same(&v->pkt, &d);
    /* Any shorter prefix asks for more bytes (no error, no packet). */
    for (size_t k = 0; k < in.n; k++) {
        ck_assert_int_eq(mqtt_decode(VIEW(in.p, k), MQTT_V5, 0, &d), 0);
    }
}
END_TEST

/* The variable byte integer examples of the standard (1.5.5), as Subscription Identifiers. */
START_TEST(varint_examples)
{
    static const struct {
        uint32_t v;
        const char *hex;
    } ex[] = {{1, "01"},
              {127, "7f"},
              {128, "80 01"},
              {16383, "ff 7f"},
              {16384, "80 80 01"},
              {2097151, "ff ff 7f"},
              {2097152, "80 80 80 01"},
              {268435455, "ff ff ff 7f"}};
    for (size_t i = 0; i < sizeof(ex) / sizeof(ex[0]); i++) {
        MqttPacket p = {.type = MQTT_PUBLISH,
                        .version = MQTT_V5,
                        .publish = {.topic = V("a")},
                        .props = {.subid = &ex[i].v, .n_subid = 1}};
        Buf b = {0};
        ck_assert_int_eq(mqtt_encode(&b, &p), 0);
        View want = unhex(ex[i].hex);
        /* 30 LEN 00 01 61 PLEN 0b VARINT */
        ck_assert_uint_eq(b.len, 7 + want.n);
        ck_assert_mem_eq(b.data + 7, want.p, want.n);
        MqttPacket d;
        ck_assert_int_eq(mqtt_decode(buf_view(&b), MQTT_V5, 0, &d), 1);
        MqttPropItem it;
        View raw = d.props.raw;
        ck_assert_int_eq(mqtt_props_next(&raw, &it), 1);
        ck_assert_uint_eq(it.subid, ex[i].v);
        buf_free(&b);
    }
}
END_TEST

/* The UTF-8 example of the standard (1.5.4): "A" then U+2A6D4, as a Content Type. */
START_TEST(utf8_example)
{
    MqttPacket p = {.type = MQTT_PUBLISH,
                    .version = MQTT_V5,
                    .publish = {.topic = V("a")},
                    .props = {.has = BIT(MQTT_PROP_CONTENT_TYPE),
                              .content_type = {(const uint8_t *)"A\xf0\xaa\x9b\x94", 5}}};
    Buf b = {0};
    ck_assert_int_eq(mqtt_encode(&b, &p), 0);
    ck_assert_view_eq(buf_view(&b), unhex("30 0c 00 01 61 08 03 00 05 41 f0 aa 9b 94"));
    buf_free(&b);
}
END_TEST

static const struct bad {
    const char *name, *hex;
    int version, err;
} bad[] = {
    {"unknown property", "30 06 00 01 61 02 05 00", 5, MQTT_E_PROPERTY},
    {"duplicate property", "30 0a 00 01 61 06 03 00 00 03 00 00", 5, MQTT_E_PROPERTY_DUP},
    {"property on the wrong packet", "30 09 00 01 61 05 11 00 00 00 00", 5, MQTT_E_PROPERTY_PACKET},
    {"property length of 5 bytes", "30 08 00 01 61 80 80 80 80 01", 5, MQTT_E_VARINT},
    {"varint not minimal", "30 07 00 01 61 03 0b 80 00", 5, MQTT_E_VARINT},
    {"property string not UTF-8", "30 08 00 01 61 04 03 00 01 ff", 5, MQTT_E_UTF8},
    {"user property name not UTF-8", "30 0a 00 01 61 06 26 00 01 ff 00 00", 5, MQTT_E_UTF8},
    {"topic alias 0", "30 07 00 01 61 03 23 00 00", 5, MQTT_E_TOPIC_ALIAS},
    {"subscription identifier 0", "30 06 00 01 61 02 0b 00", 5, MQTT_E_PROPERTY_VALUE},
    {"payload format 2", "30 06 00 01 61 02 01 02", 5, MQTT_E_PROPERTY_VALUE},
    {"response topic with a wildcard", "30 08 00 01 61 04 08 00 01 23", 5, MQTT_E_TOPIC_WILDCARD},
    {"receive maximum 0", "20 06 00 00 03 21 00 00", 5, MQTT_E_PROPERTY_VALUE},
    {"maximum packet size 0", "20 08 00 00 05 27 00 00 00 00", 5, MQTT_E_PROPERTY_VALUE},
    {"maximum qos 2", "20 05 00 00 02 24 02", 5, MQTT_E_PROPERTY_VALUE},
    {"connack reason 0x01", "20 03 00 01 00", 5, MQTT_E_REASON_CODE},
    {"connack session present with a refusal", "20 03 01 87 00", 5, MQTT_E_CONNACK_FLAGS},
    {"puback reason 0x92", "40 03 00 01 92", 5, MQTT_E_REASON_CODE},
    {"pubrel reason 0x10", "62 03 00 01 10", 5, MQTT_E_REASON_CODE},
    {"suback reason 0x11", "90 04 00 0a 00 11", 5, MQTT_E_REASON_CODE},
    {"unsuback without codes", "b0 03 00 0b 00", 5, MQTT_E_NO_TOPICS},
    {"disconnect reason 0x05", "e0 01 05", 5, MQTT_E_REASON_CODE},
    {"auth reason 0x87", "f0 01 87", 5, MQTT_E_REASON_CODE},
    {"auth flags", "f1 00", 5, MQTT_E_FLAGS},
    {"retain handling 3", "82 07 00 0a 00 00 01 61 30", 5, MQTT_E_SUB_OPTIONS},
    {"reserved subscription option bit", "82 07 00 0a 00 00 01 61 40", 5, MQTT_E_SUB_OPTIONS},
    {"property block overruns the packet", "30 06 00 01 61 05 01 01", 5, MQTT_E_LENGTH},
    {"property value cut short", "30 06 00 01 61 02 02 00", 5, MQTT_E_LENGTH},
    {"empty topic without an alias", "30 03 00 00 00", 5, MQTT_E_TOPIC_EMPTY},
    {"pingreq with a body", "c0 01 00", 5, MQTT_E_LENGTH},
    {"will property not for wills",
     "10 16 00 04 4d 51 54 54 05 06 00 00 00 00 00 03 23 00 01 00 01 77 00 00", 5,
     MQTT_E_PROPERTY_PACKET},
    {"auth in 3.1.1", "f0 00", 4, MQTT_E_TYPE},
    {"reason code in a 3.1.1 puback", "40 03 00 01 00", 4, MQTT_E_LENGTH},
};
#define N_BAD (sizeof(bad) / sizeof(bad[0]))

START_TEST(decode_malformed)
{
    const struct bad *b = &bad[_i];
    MqttPacket d;
    int r = mqtt_decode(unhex(b->hex), (uint8_t)b->version, 0, &d);
    ck_assert_msg(r == -b->err, "%s: got %d (%s), want %d (%s)", b->name, r,
                  r < 0 ? mqtt_strerror(r) : "-", -b->err, mqtt_strerror(-b->err));
}
END_TEST

/* A 3.1.1 broker's answer to an MQTT 5 CONNECT (return code 1, no properties) decodes as what
 * it is, so the session can tell a refused version from a malformed CONNACK. */
START_TEST(connack_from_a_311_broker)
{
    MqttPacket d;
    ck_assert_int_eq(mqtt_decode(unhex("20 02 00 01"), MQTT_V5, 0, &d), 1);
    ck_assert_int_eq(d.version, MQTT_V311);
    ck_assert_int_eq(d.connack.rc, 1);
    ck_assert_int_eq(mqtt_decode(unhex("20 03 00 84 00"), MQTT_V5, 0, &d), 1);
    ck_assert_int_eq(d.version, MQTT_V5);
    ck_assert_int_eq(d.connack.rc, MQTT_RC_UNSUPPORTED_PROTOCOL_VERSION);
    ck_assert_str_eq(mqtt_reason_str(d.connack.rc), "Unsupported Protocol Version");
}
END_TEST

/* What the encoder refuses to write. */
START_TEST(encode_invalid)
{
    static const MqttUserProp bad_user[] = {{V("k"), {(const uint8_t *)"\xff", 1}}};
    static const uint32_t zero = 0;
    static const MqttTopicReq rh3[] = {{.filter = V("a"), .retain_handling = 3}};
    static const MqttTopicReq nl[] = {{.filter = V("a"), .no_local = true}};
    static const struct {
        MqttPacket pkt;
        int err;
    } cases[] = {
        {{.type = MQTT_PUBLISH,
          .publish = {.topic = V("a")},
          .props = {.has = BIT(MQTT_PROP_CONTENT_TYPE)}},
         MQTT_E_PROPERTY_PACKET}, /* properties in 3.1.1 */
        {{.type = MQTT_PUBLISH,
          .version = MQTT_V5,
          .publish = {.topic = V("a")},
          .props = {.has = BIT(MQTT_PROP_SESSION_EXPIRY)}},
         MQTT_E_PROPERTY_PACKET},
        {{.type = MQTT_PUBLISH,
          .version = MQTT_V5,
          .publish = {.topic = V("a")},
          .props = {.has = BIT(MQTT_PROP_USER)}},
         MQTT_E_PROPERTY},
        {{.type = MQTT_PUBLISH,
          .version = MQTT_V5,
          .publish = {.topic = V("a")},
          .props = {.has = BIT(MQTT_PROP_TOPIC_ALIAS)}},
         MQTT_E_TOPIC_ALIAS},
        {{.type = MQTT_PUBLISH,
          .version = MQTT_V5,
          .publish = {.topic = V("a")},
          .props = {.subid = &zero, .n_subid = 1}},
         MQTT_E_PROPERTY_VALUE},
        {{.type = MQTT_PUBLISH,
          .version = MQTT_V5,
          .publish = {.topic = V("a")},
          .props = {.user = bad_user, .n_user = 1}},
         MQTT_E_UTF8},
        {{.type = MQTT_PUBLISH, .version = MQTT_V5}, MQTT_E_TOPIC_EMPTY},
        {{.type = MQTT_PUBACK, .version = MQTT_V5, .ack = {.id = 1, .reason = 0x92}},
         MQTT_E_REASON_CODE},
        {{.type = MQTT_PUBACK, .ack = {.id = 1, .reason = 0x10}}, MQTT_E_PROPERTY_PACKET},
        {{.type = MQTT_SUBSCRIBE,
          .version = MQTT_V5,
          .subscribe = {.id = 1, .topics = rh3, .count = 1}},
         MQTT_E_SUB_OPTIONS},
        {{.type = MQTT_SUBSCRIBE, .subscribe = {.id = 1, .topics = nl, .count = 1}},
         MQTT_E_SUB_OPTIONS},
        {{.type = MQTT_SUBSCRIBE,
          .version = MQTT_V5,
          .subscribe = {.id = 1, .topics = nl, .count = 1},
          .props = {.subid = subids, .n_subid = 2}},
         MQTT_E_PROPERTY_DUP},
        {{.type = MQTT_AUTH}, MQTT_E_TYPE},
        {{.type = MQTT_CONNACK, .version = MQTT_V5, .connack = {.rc = 0x01}}, MQTT_E_REASON_CODE},
        {{.type = MQTT_CONNECT, .version = 3}, MQTT_E_PROTOCOL_LEVEL},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        Buf b = {0};
        int r = mqtt_encode(&b, &cases[i].pkt);
        ck_assert_msg(r == -cases[i].err, "case %zu: got %d (%s), want %s", i, r,
                      r < 0 ? mqtt_strerror(r) : "-", mqtt_strerror(-cases[i].err));
        ck_assert_uint_eq(b.len, 0);
        buf_free(&b);
    }
}
END_TEST

/* Each decoder error has the reason code a DISCONNECT carries for it. */
START_TEST(error_reasons)
{
    ck_assert_uint_eq(mqtt_error_reason(-MQTT_E_PROPERTY), MQTT_RC_MALFORMED_PACKET);
    ck_assert_uint_eq(mqtt_error_reason(-MQTT_E_PROPERTY_DUP), MQTT_RC_PROTOCOL_ERROR);
    ck_assert_uint_eq(mqtt_error_reason(-MQTT_E_TOPIC_ALIAS), MQTT_RC_TOPIC_ALIAS_INVALID);
    ck_assert_uint_eq(mqtt_error_reason(-MQTT_E_TOPIC_ALIAS_MAX), MQTT_RC_TOPIC_ALIAS_INVALID);
    ck_assert_uint_eq(mqtt_error_reason(-MQTT_E_TOO_LARGE), MQTT_RC_PACKET_TOO_LARGE);
    ck_assert_uint_eq(mqtt_error_reason(-MQTT_E_VARINT), MQTT_RC_MALFORMED_PACKET);
    for (int e = MQTT_E_FIRST; e < MQTT_E_LAST; e++) {
        uint8_t rc = mqtt_error_reason(-e);
        ck_assert_msg(mqtt_reason_str(rc), "error %d", e);
        ck_assert_str_ne(mqtt_strerror(-e), "");
    }
    ck_assert_ptr_null(mqtt_reason_str(0x03));
}
END_TEST

static Suite *codec5_suite(void)
{
    Suite *s = suite_create("codec5");
    TCase *tc = tcase_create("codec5");
    tcase_add_loop_test(tc, encode_vector, 0, N_VECTORS);
    tcase_add_loop_test(tc, decode_vector, 0, N_VECTORS);
    tcase_add_test(tc, varint_examples);
    tcase_add_test(tc, utf8_example);
    tcase_add_loop_test(tc, decode_malformed, 0, N_BAD);
    tcase_add_test(tc, connack_from_a_311_broker);
    tcase_add_test(tc, encode_invalid);
    tcase_add_test(tc, error_reasons);
    suite_add_tcase(s, tc);
    return s;
}

CHECK_MAIN(codec5_suite)
