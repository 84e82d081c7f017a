/* SPDX-License-Identifier: MIT */
/* Unit tests of the MQTT 3.1.1 codec: byte-exact vectors, round trips, every malformed case
 * the decoder distinguishes, and incremental decoding at every split point. */
#include <errno.h>

#include "mqtt/codec.h"
#include "testutil.h"

static const MqttTopicReq sub_topics[] = {{.filter = VIEW_LIT("a/+"), .qos = 1},
                                          {.filter = VIEW_LIT("#"), .qos = 2}};

/* Every packet type, with the bytes the spec says it encodes to. */
static const struct vector {
    const char *name;
    MqttPacket pkt;
    const char *hex;
} vectors[] = {
    {"connect minimal",
     {.type = MQTT_CONNECT,
      .connect = {.client_id = VIEW_LIT("a"), .keepalive = 60, .clean_session = true}},
     "10 0d 00 04 4d 51 54 54 04 02 00 3c 00 01 61"},
    {"connect full",
     {.type = MQTT_CONNECT,
      .connect = {.client_id = VIEW_LIT("cid"),
                  .will = true,
                  .will_topic = VIEW_LIT("w/t"),
                  .will_payload = VIEW_LIT("bye"),
                  .will_qos = 1,
                  .will_retain = true,
                  .has_username = true,
                  .username = VIEW_LIT("u"),
                  .has_password = true,
                  .password = VIEW_LIT("pw"),
                  .keepalive = 10}},
     "10 20 00 04 4d 51 54 54 04 ec 00 0a 00 03 63 69 64 00 03 77 2f 74 00 03 62 79 65"
     " 00 01 75 00 02 70 77"},
    {"connect empty client id, will qos 2 no retain",
     {.type = MQTT_CONNECT,
      .connect = {.clean_session = true,
                  .will = true,
                  .will_topic = VIEW_LIT("x"),
                  .will_payload = VIEW_NULL,
                  .will_qos = 2}},
     "10 11 00 04 4d 51 54 54 04 16 00 00 00 00 00 01 78 00 00"},
    {"connack accepted", {.type = MQTT_CONNACK, .connack = {.rc = 0}}, "20 02 00 00"},
    {"connack session present",
     {.type = MQTT_CONNACK, .connack = {.session_present = true}},
     "20 02 01 00"},
    {"connack not authorized", {.type = MQTT_CONNACK, .connack = {.rc = 5}}, "20 02 00 05"},
    {"publish qos 0",
     {.type = MQTT_PUBLISH, .publish = {.topic = VIEW_LIT("a/b"), .payload = VIEW_LIT("hi")}},
     "30 07 00 03 61 2f 62 68 69"},
    {"publish qos 1 dup retain",
     {.type = MQTT_PUBLISH,
      .publish = {.topic = VIEW_LIT("a/b"),
                  .payload = VIEW_LIT("hi"),
                  .qos = 1,
                  .id = 10,
                  .dup = true,
                  .retain = true}},
     "3b 09 00 03 61 2f 62 00 0a 68 69"},
    {"publish qos 2",
     {.type = MQTT_PUBLISH,
      .publish = {.topic = VIEW_LIT("a/b"), .payload = VIEW_LIT("hi"), .qos = 2, .id = 0x1234}},
     "34 09 00 03 61 2f 62 12 34 68 69"},
    {"publish empty payload",
     {.type = MQTT_PUBLISH, .publish = {.topic = VIEW_LIT("$SYS/x"), .retain = true}},
     "31 08 00 06 24 53 59 53 2f 78"},
    {"puback", {.type = MQTT_PUBACK, .ack = {.id = 1}}, "40 02 00 01"},
    {"pubrec", {.type = MQTT_PUBREC, .ack = {.id = 2}}, "50 02 00 02"},
    {"pubrel", {.type = MQTT_PUBREL, .ack = {.id = 3}}, "62 02 00 03"},
    {"pubcomp", {.type = MQTT_PUBCOMP, .ack = {.id = 0xffff}}, "70 02 ff ff"},
    {"subscribe two filters",
     {.type = MQTT_SUBSCRIBE, .subscribe = {.id = 10, .topics = sub_topics, .count = 2}},
     "82 0c 00 0a 00 03 61 2f 2b 01 00 01 23 02"},
    {"suback with failure",
     {.type = MQTT_SUBACK, .suback = {.id = 10, .codes = {(const uint8_t *)"\x01\x02\x80", 3}}},
     "90 05 00 0a 01 02 80"},
    {"unsubscribe two filters",
     {.type = MQTT_UNSUBSCRIBE, .subscribe = {.id = 11, .topics = sub_topics, .count = 2}},
     "a2 0a 00 0b 00 03 61 2f 2b 00 01 23"},
    {"unsuback", {.type = MQTT_UNSUBACK, .suback = {.id = 11}}, "b0 02 00 0b"},
    {"pingreq", {.type = MQTT_PINGREQ}, "c0 00"},
    {"pingresp", {.type = MQTT_PINGRESP}, "d0 00"},
    {"disconnect", {.type = MQTT_DISCONNECT}, "e0 00"},
};
#define N_VECTORS (sizeof(vectors) / sizeof(vectors[0]))

START_TEST(encode_vector)
{
    const struct vector *v = &vectors[_i];
    Buf b = {0};
    ck_assert_msg(mqtt_encode(&b, &v->pkt) == 0, "%s", v->name);
    ck_assert_view_eq(buf_view(&b), unhex(v->hex));
    buf_free(&b);
}
END_TEST

/* Compare two packets field by field (decoded SUBSCRIBE lists walked). */
static void assert_same(const MqttPacket *a, const MqttPacket *d)
{
    ck_assert_int_eq(a->type, d->type);
    switch (a->type) {
    case MQTT_CONNECT:
        ck_assert_view_eq(a->connect.client_id, d->connect.client_id);
        ck_assert_int_eq(a->connect.keepalive, d->connect.keepalive);
        ck_assert_int_eq(a->connect.clean_session, d->connect.clean_session);
        ck_assert_int_eq(a->connect.will, d->connect.will);
        if (a->connect.will) {
            ck_assert_view_eq(a->connect.will_topic, d->connect.will_topic);
            ck_assert_view_eq(a->connect.will_payload, d->connect.will_payload);
            ck_assert_int_eq(a->connect.will_qos, d->connect.will_qos);
            ck_assert_int_eq(a->connect.will_retain, d->connect.will_retain);
        }
        ck_assert_int_eq(a->connect.has_username, d->connect.has_username);
        ck_assert_int_eq(a->connect.has_password, d->connect.has_password);
        if (a->connect.has_username) {
            ck_assert_view_eq(a->connect.username, d->connect.username);
        }
        if (a->connect.has_password) {
            ck_assert_view_eq(a->connect.password, d->connect.password);
        }
        break;
    case MQTT_CONNACK:
        ck_assert_int_eq(a->connack.rc, d->connack.rc);
        ck_assert_int_eq(a->connack.session_present, d->connack.session_present);
        break;
    case MQTT_PUBLISH:
        ck_assert_view_eq(a->publish.topic, d->publish.topic);
        ck_assert_view_eq(a->publish.payload, d->publish.payload);
        ck_assert_int_eq(a->publish.qos, d->publish.qos);
        ck_assert_int_eq(a->publish.id, d->publish.id);
        ck_assert_int_eq(a->publish.dup, d->publish.dup);
        ck_assert_int_eq(a->publish.retain, d->publish.retain);
        break;
    case MQTT_PUBACK:
    case MQTT_PUBREC:
    case MQTT_PUBREL:
    case MQTT_PUBCOMP:
        ck_assert_int_eq(a->ack.id, d->ack.id);
        break;
    case MQTT_SUBSCRIBE:
    case MQTT_UNSUBSCRIBE: {
        ck_assert_int_eq(a->subscribe.id, d->subscribe.id);
        ck_assert_uint_eq(a->subscribe.count, d->subscribe.count);
        ck_assert_ptr_null(d->subscribe.topics);
        View list = d->subscribe.list;
        MqttTopicReq t;
        bool sub = a->type == MQTT_SUBSCRIBE;
        for (size_t i = 0; i < a->subscribe.count; i++) {
            ck_assert_int_eq(mqtt_topic_list_next(&list, sub, &t), 1);
            ck_assert_view_eq(t.filter, a->subscribe.topics[i].filter);
            if (sub) {
                ck_assert_int_eq(t.qos, a->subscribe.topics[i].qos);
            }
        }
        ck_assert_int_eq(mqtt_topic_list_next(&list, sub, &t), 0);
        break;
    }
    case MQTT_SUBACK:
    case MQTT_UNSUBACK:
        ck_assert_int_eq(a->suback.id, d->suback.id);
        ck_assert_view_eq(a->suback.codes, d->suback.codes);
        break;
    default:
        break;
    }
}

START_TEST(decode_vector)
{
    const struct vector *v = &vectors[_i];
    View in = unhex(v->hex);
    MqttPacket d;
    ck_assert_int_eq(mqtt_decode(in, MQTT_V311, 0, &d), 1);
    ck_assert_uint_eq(d.size, in.n);
    assert_same(&v->pkt, &d);
    /* Every proper prefix asks for more bytes instead of failing. */
    for (size_t k = 0; k < in.n; k++) {
        ck_assert_int_eq(mqtt_decode(VIEW(in.p, k), MQTT_V311, 0, &d), 0);
    }
}
END_TEST

START_TEST(remaining_length_boundaries)
{
    /* A PUBLISH whose remaining length is exactly each boundary of the varint. */
    static const struct {
        size_t rl;
        const char *header;
    } cases[] = {
        {127, "30 7f"},         {128, "30 80 01"},        {16383, "30 ff 7f"},
        {16384, "30 80 80 01"}, {2097151, "30 ff ff 7f"}, {2097152, "30 80 80 80 01"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        size_t payload = cases[i].rl - 3;
        uint8_t *big = calloc(1, payload);
        ck_assert_ptr_nonnull(big);
        MqttPacket p = {.type = MQTT_PUBLISH,
                        .publish = {.topic = VIEW_LIT("t"), .payload = VIEW(big, payload)}};
        Buf b = {0};
        ck_assert_int_eq(mqtt_encode(&b, &p), 0);
        View h = unhex(cases[i].header);
        ck_assert_uint_eq(b.len, h.n + cases[i].rl);
        ck_assert_mem_eq(b.data, h.p, h.n);
        MqttPacket d;
        ck_assert_int_eq(mqtt_decode(buf_view(&b), MQTT_V311, 0, &d), 1);
        ck_assert_uint_eq(d.publish.payload.n, payload);
        buf_free(&b);
        free(big);
    }
    /* The largest length the spec allows is announced fine; one more byte is not. */
    MqttPacket d;
    ck_assert_int_eq(mqtt_decode(unhex("30 ff ff ff 7f"), MQTT_V311, 0, &d), 0);
    ck_assert_int_eq(mqtt_decode(unhex("30 ff ff ff ff 01"), MQTT_V311, 0, &d), -MQTT_E_VARINT);
    ck_assert_int_eq(mqtt_decode(unhex("30 80 80 80 80"), MQTT_V311, 0, &d), -MQTT_E_VARINT);
    /* Non-minimal encodings are legal varints. */
    ck_assert_int_eq(mqtt_decode(unhex("c0 80 00"), MQTT_V311, 0, &d), 1);
    ck_assert_int_eq(d.type, MQTT_PINGREQ);
}
END_TEST

static const struct bad {
    const char *name;
    const char *hex;
    int err;
} bad_cases[] = {
    {"type 0", "00 00", MQTT_E_TYPE},
    {"type 15", "f0 00", MQTT_E_TYPE},
    {"pingreq flags", "c1 00", MQTT_E_FLAGS},
    {"puback flags", "42 02 00 01", MQTT_E_FLAGS},
    {"pubrel flags 0", "60 02 00 01", MQTT_E_FLAGS},
    {"subscribe flags 0", "80 06 00 01 00 01 23 00", MQTT_E_FLAGS},
    {"unsubscribe flags 0", "a0 05 00 01 00 01 23", MQTT_E_FLAGS},
    {"connect flags", "18 00", MQTT_E_FLAGS},
    {"publish qos 3", "36 05 00 01 61 00 01", MQTT_E_QOS},
    {"publish dup at qos 0", "38 03 00 01 61", MQTT_E_FLAGS},
    {"varint 5 bytes", "30 ff ff ff ff 01", MQTT_E_VARINT},
    {"connack too long", "20 03 00 00 00", MQTT_E_LENGTH},
    {"connack too short", "20 01 00", MQTT_E_LENGTH},
    {"puback too long", "40 03 00 01 00", MQTT_E_LENGTH},
    {"pingreq with body", "c0 01 00", MQTT_E_LENGTH},
    {"disconnect with body", "e0 01 00", MQTT_E_LENGTH},
    {"connack reserved flags", "20 02 02 00", MQTT_E_CONNACK_FLAGS},
    {"connack session present with refusal", "20 02 01 05", MQTT_E_CONNACK_FLAGS},
    {"connack return code 6", "20 02 00 06", MQTT_E_CONNACK_RC},
    {"puback id 0", "40 02 00 00", MQTT_E_PACKET_ID},
    {"pubrec id 0", "50 02 00 00", MQTT_E_PACKET_ID},
    {"pubrel id 0", "62 02 00 00", MQTT_E_PACKET_ID},
    {"pubcomp id 0", "70 02 00 00", MQTT_E_PACKET_ID},
    {"unsuback id 0", "b0 02 00 00", MQTT_E_PACKET_ID},
    {"publish qos 1 id 0", "32 05 00 01 61 00 00", MQTT_E_PACKET_ID},
    {"subscribe id 0", "82 06 00 00 00 01 23 00", MQTT_E_PACKET_ID},
    {"suback id 0", "90 03 00 00 00", MQTT_E_PACKET_ID},
    {"publish empty topic", "30 02 00 00", MQTT_E_TOPIC_EMPTY},
    {"publish topic #", "30 03 00 01 23", MQTT_E_TOPIC_WILDCARD},
    {"publish topic a/+", "30 05 00 03 61 2f 2b", MQTT_E_TOPIC_WILDCARD},
    {"publish topic U+0000", "30 03 00 01 00", MQTT_E_UTF8},
    {"publish topic surrogate", "30 05 00 03 ed a0 80", MQTT_E_UTF8},
    {"publish topic overlong", "30 04 00 02 c0 af", MQTT_E_UTF8},
    {"publish topic truncated utf8", "30 03 00 01 e2", MQTT_E_UTF8},
    {"publish topic past end", "30 03 00 05 61", MQTT_E_LENGTH},
    {"publish qos 1 without id", "32 03 00 01 61", MQTT_E_LENGTH},
    {"connect protocol name", "10 0d 00 04 4d 51 54 58 04 02 00 3c 00 01 61", MQTT_E_PROTOCOL_NAME},
    {"connect MQIsdp", "10 0f 00 06 4d 51 49 73 64 70 03 02 00 3c 00 01 61", MQTT_E_PROTOCOL_NAME},
    {"connect level 3", "10 0d 00 04 4d 51 54 54 03 02 00 3c 00 01 61", MQTT_E_PROTOCOL_LEVEL},
    {"connect level 3", "10 0d 00 04 4d 51 54 54 03 02 00 3c 00 01 61", MQTT_E_PROTOCOL_LEVEL},
    {"connect reserved flag", "10 0d 00 04 4d 51 54 54 04 03 00 3c 00 01 61", MQTT_E_CONNECT_FLAGS},
    {"connect will qos without will", "10 0d 00 04 4d 51 54 54 04 0a 00 3c 00 01 61",
     MQTT_E_CONNECT_FLAGS},
    {"connect will retain without will", "10 0d 00 04 4d 51 54 54 04 22 00 3c 00 01 61",
     MQTT_E_CONNECT_FLAGS},
    {"connect password without user", "10 11 00 04 4d 51 54 54 04 42 00 3c 00 01 61 00 02 70 77",
     MQTT_E_CONNECT_FLAGS},
    {"connect will qos 3", "10 0d 00 04 4d 51 54 54 04 1e 00 3c 00 01 61", MQTT_E_QOS},
    {"connect trailing byte", "10 0e 00 04 4d 51 54 54 04 02 00 3c 00 01 61 00", MQTT_E_LENGTH},
    {"connect client id overrun", "10 0d 00 04 4d 51 54 54 04 02 00 3c 00 05 61", MQTT_E_LENGTH},
    {"connect client id not utf8", "10 0d 00 04 4d 51 54 54 04 02 00 3c 00 01 ff", MQTT_E_UTF8},
    {"connect will topic wildcard", "10 12 00 04 4d 51 54 54 04 06 00 3c 00 01 61 00 01 23 00 00",
     MQTT_E_TOPIC_WILDCARD},
    {"connect missing will payload", "10 10 00 04 4d 51 54 54 04 06 00 3c 00 01 61 00 01 78",
     MQTT_E_LENGTH},
    {"subscribe no filters", "82 02 00 01", MQTT_E_NO_TOPICS},
    {"subscribe reserved qos bits", "82 06 00 01 00 01 23 04", MQTT_E_SUB_OPTIONS},
    {"subscribe qos 3", "82 06 00 01 00 01 23 03", MQTT_E_QOS},
    {"subscribe filter a#", "82 07 00 01 00 02 61 23 00", MQTT_E_FILTER},
    {"subscribe filter #/a", "82 08 00 01 00 03 23 2f 61 00", MQTT_E_FILTER},
    {"subscribe empty filter", "82 05 00 01 00 00 00", MQTT_E_TOPIC_EMPTY},
    {"subscribe missing qos", "82 05 00 01 00 01 23", MQTT_E_LENGTH},
    {"suback empty", "90 02 00 01", MQTT_E_NO_TOPICS},
    {"suback code 3", "90 03 00 01 03", MQTT_E_SUBACK_RC},
    {"suback code 0x81", "90 03 00 01 81", MQTT_E_SUBACK_RC},
    {"unsubscribe empty", "a2 02 00 01", MQTT_E_NO_TOPICS},
    {"unsubscribe filter a+", "a2 06 00 01 00 02 61 2b", MQTT_E_FILTER},
};
#define N_BAD (sizeof(bad_cases) / sizeof(bad_cases[0]))

START_TEST(decode_malformed)
{
    const struct bad *b = &bad_cases[_i];
    MqttPacket d;
    int r = mqtt_decode(unhex(b->hex), MQTT_V311, 0, &d);
    ck_assert_msg(r == -b->err, "%s: got %d (%s), want %d (%s)", b->name, r,
                  r < 0 ? mqtt_strerror(r) : "ok", -b->err, mqtt_strerror(-b->err));
    ck_assert_str_ne(mqtt_strerror(r), "");
}
END_TEST

START_TEST(max_packet_size)
{
    MqttPacket d;
    /* Refused as soon as the header announces too much, before the body exists. */
    ck_assert_int_eq(mqtt_decode(unhex("30 0a"), MQTT_V311, 11, &d), -MQTT_E_TOO_LARGE);
    ck_assert_int_eq(mqtt_decode(unhex("30 0a"), MQTT_V311, 12, &d), 0);
    ck_assert_int_eq(mqtt_decode(unhex("30 03 00 01 61"), MQTT_V311, 5, &d), 1);
    ck_assert_int_eq(mqtt_decode(unhex("30 03 00 01 61"), MQTT_V311, 4, &d), -MQTT_E_TOO_LARGE);

    MqttDecoder dec;
    mqtt_decoder_init(&dec, 16);
    ck_assert_int_eq(mqtt_decoder_feed(&dec, "\x30\x20", 2), 0);
    ck_assert_int_eq(mqtt_decoder_next(&dec, &d), -MQTT_E_TOO_LARGE);
    mqtt_decoder_free(&dec);
}
END_TEST

START_TEST(encode_rejects_invalid)
{
    Buf b = {0};
    ck_assert_int_eq(buf_append(&b, "keep", 4), 0);
    const struct {
        MqttPacket pkt;
        int err;
    } cases[] = {
        {{.type = MQTT_PUBLISH, .publish = {.topic = VIEW_LIT("a/#")}}, MQTT_E_TOPIC_WILDCARD},
        {{.type = MQTT_PUBLISH, .publish = {.topic = VIEW_LIT("")}}, MQTT_E_TOPIC_EMPTY},
        {{.type = MQTT_PUBLISH, .publish = {.topic = VIEW_LIT("a"), .qos = 1}}, MQTT_E_PACKET_ID},
        {{.type = MQTT_PUBLISH, .publish = {.topic = VIEW_LIT("a"), .qos = 3, .id = 1}},
         MQTT_E_QOS},
        {{.type = MQTT_PUBLISH, .publish = {.topic = VIEW_LIT("a"), .dup = true}}, MQTT_E_FLAGS},
        {{.type = MQTT_PUBACK}, MQTT_E_PACKET_ID},
        {{.type = MQTT_SUBSCRIBE, .subscribe = {.id = 1, .count = 0}}, MQTT_E_NO_TOPICS},
        {{.type = MQTT_SUBSCRIBE,
          .subscribe = {.id = 1,
                        .topics = (const MqttTopicReq[]){{.filter = VIEW_LIT("a/b#")}},
                        .count = 1}},
         MQTT_E_FILTER},
        {{.type = MQTT_SUBSCRIBE,
          .subscribe = {.id = 1,
                        .topics = (const MqttTopicReq[]){{.filter = VIEW_LIT("a"), .qos = 3}},
                        .count = 1}},
         MQTT_E_QOS},
        {{.type = MQTT_SUBACK, .suback = {.id = 1, .codes = {(const uint8_t *)"\x05", 1}}},
         MQTT_E_SUBACK_RC},
        {{.type = MQTT_CONNECT, .connect = {.has_password = true}}, MQTT_E_CONNECT_FLAGS},
        {{.type = MQTT_CONNECT, .connect = {.client_id = {(const uint8_t *)"a\0b", 3}}},
         MQTT_E_UTF8},
        {{.type = MQTT_CONNECT, .connect = {.will = true, .will_topic = VIEW_LIT("+")}},
         MQTT_E_TOPIC_WILDCARD},
        {{.type = MQTT_CONNACK, .connack = {.rc = 9}}, MQTT_E_CONNACK_RC},
        {{.type = MQTT_CONNACK, .connack = {.rc = 1, .session_present = true}},
         MQTT_E_CONNACK_FLAGS},
        {{.type = (enum mqtt_type)15}, MQTT_E_TYPE},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        ck_assert_int_eq(mqtt_encode(&b, &cases[i].pkt), -cases[i].err);
        ck_assert_view_str(buf_view(&b), "keep");
    }
    /* A buffer cap is honoured and also leaves the buffer as it was. */
    b.max = 8;
    MqttPacket p = {.type = MQTT_PUBLISH, .publish = {.topic = VIEW_LIT("abc")}};
    ck_assert_int_eq(mqtt_encode(&b, &p), -ENOBUFS);
    ck_assert_view_str(buf_view(&b), "keep");
    buf_free(&b);
}
END_TEST

/* All vectors back to back: the reference stream for the incremental decoder. */
static Buf stream(void)
{
    Buf s = {0};
    for (size_t i = 0; i < N_VECTORS; i++) {
        ck_assert_int_eq(mqtt_encode(&s, &vectors[i].pkt), 0);
    }
    return s;
}

/* Drain whole packets, re-encoding each into `out`; returns how many came out. */
static size_t drain(MqttDecoder *d, Buf *out)
{
    MqttPacket p;
    size_t n = 0;
    int r;
    while ((r = mqtt_decoder_next(d, &p)) == 1) {
        MqttTopicReq t[8];
        if (p.type == MQTT_SUBSCRIBE || p.type == MQTT_UNSUBSCRIBE) {
            /* Decoded lists are raw: rebuild the topic array to re-encode. */
            size_t k = 0;
            View list = p.subscribe.list;
            while (k < 8 && mqtt_topic_list_next(&list, p.type == MQTT_SUBSCRIBE, &t[k]) == 1) {
                k++;
            }
            ck_assert_uint_eq(k, p.subscribe.count);
            p.subscribe.topics = t;
        }
        ck_assert_int_eq(mqtt_encode(out, &p), 0);
        n++;
    }
    ck_assert_int_eq(r, 0);
    return n;
}

START_TEST(split_every_point)
{
    Buf s = stream();
    for (size_t k = 0; k <= s.len; k++) {
        MqttDecoder d;
        Buf out = {0};
        mqtt_decoder_init(&d, 0);
        size_t n = 0;
        ck_assert_int_eq(mqtt_decoder_feed(&d, s.data, k), 0);
        n += drain(&d, &out);
        ck_assert_int_eq(mqtt_decoder_feed(&d, s.data + k, s.len - k), 0);
        n += drain(&d, &out);
        ck_assert_uint_eq(n, N_VECTORS);
        ck_assert_view_eq(buf_view(&out), buf_view(&s));
        buf_free(&out);
        mqtt_decoder_free(&d);
    }
    buf_free(&s);
}
END_TEST

START_TEST(one_byte_at_a_time)
{
    Buf s = stream();
    MqttDecoder d;
    Buf out = {0};
    size_t n = 0;
    mqtt_decoder_init(&d, 0);
    for (size_t i = 0; i < s.len; i++) {
        /* Through the zero-copy path, as the daemon reads. */
        uint8_t *w = mqtt_decoder_space(&d, 1);
        ck_assert_ptr_nonnull(w);
        *w = s.data[i];
        mqtt_decoder_commit(&d, 1);
        n += drain(&d, &out);
    }
    ck_assert_uint_eq(n, N_VECTORS);
    ck_assert_view_eq(buf_view(&out), buf_view(&s));
    buf_free(&out);
    buf_free(&s);
    mqtt_decoder_free(&d);
}
END_TEST

START_TEST(error_texts)
{
    for (int e = MQTT_E_FIRST; e < MQTT_E_LAST; e++) {
        ck_assert_ptr_nonnull(mqtt_strerror(-e));
        ck_assert_int_gt(strlen(mqtt_strerror(-e)), 5);
    }
    ck_assert_str_eq(mqtt_strerror(-ENOMEM), strerror(ENOMEM));
    ck_assert_str_eq(mqtt_connack_str(1), "unacceptable protocol version");
    ck_assert_str_eq(mqtt_connack_str(2), "identifier rejected");
    ck_assert_str_eq(mqtt_connack_str(3), "server unavailable");
    ck_assert_str_eq(mqtt_connack_str(4), "bad user name or password");
    ck_assert_str_eq(mqtt_connack_str(5), "not authorized");
    ck_assert_str_eq(mqtt_type_name(MQTT_PUBREL), "PUBREL");
    ck_assert_str_eq(mqtt_type_name(MQTT_DISCONNECT), "DISCONNECT");
}
END_TEST

static Suite *codec_suite(void)
{
    Suite *s = suite_create("codec");
    TCase *tc = tcase_create("vectors");
    tcase_add_loop_test(tc, encode_vector, 0, N_VECTORS);
    tcase_add_loop_test(tc, decode_vector, 0, N_VECTORS);
    tcase_add_test(tc, remaining_length_boundaries);
    tcase_add_test(tc, error_texts);
    suite_add_tcase(s, tc);
    tc = tcase_create("malformed");
    tcase_add_loop_test(tc, decode_malformed, 0, N_BAD);
    tcase_add_test(tc, max_packet_size);
    tcase_add_test(tc, encode_rejects_invalid);
    suite_add_tcase(s, tc);
    tc = tcase_create("incremental");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, split_every_point);
    tcase_add_test(tc, one_byte_at_a_time);
    suite_add_tcase(s, tc);
    return s;
}

CHECK_MAIN(codec_suite)
