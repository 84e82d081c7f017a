/* SPDX-License-Identifier: MIT */
/* Unit tests of the IPC layer: NDJSON framing, base64, request parsing, replies, events. */
#include <errno.h>

#include "base64.h"
#include "defaults.h"
#include "ipc/fast.h"
#include "ipc/ndjson.h"
#include "ipc/protocol.h"
#include "testutil.h"

/* Feed `text` in pieces of `step` bytes and join the lines seen with '|'. */
static void frame(const char *text, size_t step, size_t max_line, char *out, size_t outlen)
{
    LineReader lr;
    line_reader_init(&lr, max_line);
    size_t n = strlen(text), o = 0;
    out[0] = 0;
    for (size_t i = 0; i < n; i += step) {
        size_t k = n - i < step ? n - i : step;
        ck_assert_int_eq(line_reader_feed(&lr, text + i, k), 0);
        View line;
        int r;
        while ((r = line_reader_next(&lr, &line)) != 0) {
            o += (size_t)snprintf(out + o, outlen - o, "%.*s|", r > 0 ? (int)line.n : 4,
                                  r > 0 ? (const char *)line.p : "BIG!");
        }
    }
    line_reader_free(&lr);
}

START_TEST(framing)
{
    char out[256];
    static const char *text = "{\"a\":1}\n{\"b\":2}\r\n\n{\"c\":3}\npartial";
    for (size_t step = 1; step <= strlen(text); step++) {
        frame(text, step, 100, out, sizeof(out));
        ck_assert_str_eq(out, "{\"a\":1}|{\"b\":2}||{\"c\":3}|");
    }
}
END_TEST

START_TEST(framing_too_long)
{
    char out[256];
    /* max_line 8: the long line is reported once, wherever the reads split it, and the
     * next line still comes through. */
    static const char *text = "short\n0123456789abcdefghij\nnext\n12345678\n";
    for (size_t step = 1; step <= strlen(text); step++) {
        frame(text, step, 8, out, sizeof(out));
        ck_assert_msg(strcmp(out, "short|BIG!|next|12345678|") == 0, "step %zu: %s", step, out);
    }
}
END_TEST

START_TEST(base64_round_trip)
{
    static const char *const vec[][2] = {{"", ""},
                                         {"f", "Zg=="},
                                         {"fo", "Zm8="},
                                         {"foo", "Zm9v"},
                                         {"foob", "Zm9vYg=="},
                                         {"fooba", "Zm9vYmE="},
                                         {"foobar", "Zm9vYmFy"}};
    for (size_t i = 0; i < 7; i++) {
        Buf b = {0};
        ck_assert_int_eq(base64_encode(&b, VIEW_STR(vec[i][0])), 0);
        ck_assert_view_str(buf_view(&b), vec[i][1]);
        buf_clear(&b);
        ck_assert_int_eq(base64_decode(&b, VIEW_STR(vec[i][1])), 0);
        ck_assert_view_str(buf_view(&b), vec[i][0]);
        buf_free(&b);
    }
    Buf b = {0};
    ck_assert_int_eq(base64_decode(&b, VIEW_STR("Zm9vYg")), 0); /* padding optional */
    ck_assert_view_str(buf_view(&b), "foob");
    static const char *const bad[] = {"Z", "Zm9v!", "Zm=v", "Zh==", "Zm9vY", "Zm 9v"};
    for (size_t i = 0; i < 6; i++) {
        buf_clear(&b);
        ck_assert_msg(base64_decode(&b, VIEW_STR(bad[i])) == -EINVAL, "%s", bad[i]);
    }
    uint8_t all[256];
    for (int i = 0; i < 256; i++) {
        all[i] = (uint8_t)i;
    }
    Buf e = {0};
    buf_clear(&b);
    ck_assert_int_eq(base64_encode(&e, VIEW(all, 256)), 0);
    ck_assert_int_eq(base64_decode(&b, buf_view(&e)), 0);
    ck_assert_view_eq(buf_view(&b), VIEW(all, 256));
    buf_free(&b);
    buf_free(&e);
}
END_TEST

START_TEST(parse_publish)
{
    Request r;
    IpcError err;
    View line = VIEW_STR("{\"id\":7,\"op\":\"publish\",\"topic\":\"a/b\",\"payload\":\"hi\","
                         "\"qos\":2,\"retain\":true,\"wait\":false,\"timeout_ms\":500,\"x\":1}");
    ck_assert_int_eq(request_parse(line, &r, &err), 0);
    ck_assert_int_eq(r.op, OP_PUBLISH);
    ck_assert_int_eq(json_integer_value(r.id), 7);
    ck_assert_view_str(r.topic, "a/b");
    ck_assert_view_str(r.payload, "hi");
    ck_assert_int_eq(r.qos, 2);
    ck_assert(r.retain);
    ck_assert(!r.wait);
    ck_assert_int_eq(r.timeout_ms, 500);
    request_free(&r);

    line = VIEW_STR("{\"op\":\"publish\",\"topic\":\"t\",\"payload_b64\":\"AAEC/w==\"}");
    ck_assert_int_eq(request_parse(line, &r, &err), 0);
    ck_assert_view_eq(r.payload, VIEW("\x00\x01\x02\xff", 4));
    ck_assert_int_eq(r.qos, 0);
    ck_assert(r.wait);
    ck_assert_int_eq(r.timeout_ms, -1);
    ck_assert_ptr_null(r.id);
    request_free(&r);

    /* U+0000 in a JSON payload is allowed (it is not an MQTT string). */
    line = VIEW_STR("{\"op\":\"publish\",\"topic\":\"t\",\"payload\":\"a\\u0000b\"}");
    ck_assert_int_eq(request_parse(line, &r, &err), 0);
    ck_assert_view_eq(r.payload, VIEW("a\0b", 3));
    request_free(&r);
}
END_TEST

/* MQTT 5 fields become one property block (MQTT 5.0 table 2-4 identifiers: 0x01 Payload
 * Format, 0x03 Content Type, 0x08 Response Topic, 0x09 Correlation Data, 0x26 User Property),
 * the single ones in identifier order, then the user properties in the order given. */
START_TEST(parse_publish_v5)
{
    Request r;
    IpcError err;
    View line = VIEW_STR(
        "{\"op\":\"request\",\"topic\":\"a\",\"payload\":\"x\",\"user_properties\":"
        "[[\"k\",\"1\"],[\"k\",\"2\"]],\"content_type\":\"t\",\"payload_format\":1,"
        "\"response_topic\":\"r/s\",\"correlation_data_b64\":\"AP8=\",\"message_expiry\":60}");
    ck_assert_int_eq(request_parse(line, &r, &err), 0);
    ck_assert_int_eq(r.op, OP_REQUEST);
    ck_assert_str_eq(r.v5_field, "user_properties");
    ck_assert_uint_eq(r.message_expiry, 60);
    static const uint8_t want[] = {0x01, 1,    0x03, 0, 1, 't',  0x08, 0, 3,  'r', '/',
                                   's',  0x09, 0,    2, 0, 0xff, 0x26, 0, 1,  'k', 0,
                                   1,    '1',  0x26, 0, 1, 'k',  0,    1, '2'};
    ck_assert_view_eq(buf_view(&r.props), VIEW(want, sizeof(want)));
    request_free(&r);

    line = VIEW_STR("{\"op\":\"publish\",\"topic\":\"a\",\"payload\":\"x\",\"message_expiry\":5}");
    ck_assert_int_eq(request_parse(line, &r, &err), 0);
    ck_assert_str_eq(r.v5_field, "message_expiry");
    ck_assert_uint_eq(buf_size(&r.props), 0);
    request_free(&r);

    line =
        VIEW_STR("{\"op\":\"publish\",\"topic\":\"a\",\"payload\":\"x\",\"user_properties\":[]}");
    ck_assert_int_eq(request_parse(line, &r, &err), 0);
    ck_assert_ptr_null(r.v5_field); /* nothing only MQTT 5 can carry */
    request_free(&r);

    line = VIEW_STR("{\"op\":\"subscribe\",\"filter\":\"a/#\",\"no_local\":true,"
                    "\"retain_as_published\":true,\"retain_handling\":2}");
    ck_assert_int_eq(request_parse(line, &r, &err), 0);
    ck_assert(r.no_local && r.retain_as_published);
    ck_assert_uint_eq(r.retain_handling, 2);
    ck_assert_str_eq(r.v5_field, "no_local");
    request_free(&r);
}
END_TEST

START_TEST(parse_other_ops)
{
    Request r;
    IpcError err;
    ck_assert_int_eq(request_parse(VIEW_STR("{\"id\":\"s\",\"op\":\"subscribe\",\"filter\":"
                                            "\"$share/g/a/+\",\"qos\":1,\"encoding\":\"base64\"}"),
                                   &r, &err),
                     0);
    ck_assert_int_eq(r.op, OP_SUBSCRIBE);
    ck_assert_view_str(r.topic, "$share/g/a/+");
    ck_assert_int_eq(r.encoding, ENC_BASE64);
    ck_assert_str_eq(json_string_value(r.id), "s");
    request_free(&r);
    ck_assert_int_eq(request_parse(VIEW_STR("{\"op\":\"events\",\"connection\":true}"), &r, &err),
                     0);
    ck_assert_int_eq(r.events_connection, 1);
    ck_assert_int_eq(r.events_ping, -1);
    request_free(&r);
    static const char *const simple[] = {"status",    "stats",       "ping",
                                         "reconnect", "stats_reset", "reload"};
    static const enum ipc_op ops[] = {OP_STATUS,    OP_STATS,       OP_PING,
                                      OP_RECONNECT, OP_STATS_RESET, OP_RELOAD};
    for (int i = 0; i < 6; i++) {
        char line[80];
        snprintf(line, sizeof(line), "{\"id\":[1,2],\"op\":\"%s\"}", simple[i]);
        ck_assert_int_eq(request_parse(VIEW_STR(line), &r, &err), 0);
        ck_assert_int_eq(r.op, ops[i]);
        ck_assert(json_is_array(r.id));
        request_free(&r);
    }
}
END_TEST

static const struct {
    const char *line;
    enum ipc_error code;
    const char *message;
    bool has_id;
} bad[] = {
    {"not json", IPC_BAD_JSON, NULL, false},
    {"[1,2]", IPC_BAD_JSON, "a request must be a JSON object", false},
    {"{\"op\":\"publish\",\"topic\":\"a\",\"payload\":\"\xff\"}", IPC_BAD_JSON, NULL, false},
    {"{\"id\":1}", IPC_BAD_REQUEST, "op is required", true},
    {"{\"id\":1,\"op\":5}", IPC_BAD_REQUEST, "op must be a string", true},
    {"{\"id\":1,\"op\":\"fly\"}", IPC_UNKNOWN_OP, "unknown op \"fly\"", true},
    {"{\"id\":1,\"op\":\"publish\",\"payload\":\"x\"}", IPC_BAD_REQUEST, "topic is required", true},
    {"{\"id\":1,\"op\":\"publish\",\"topic\":3,\"payload\":\"x\"}", IPC_BAD_REQUEST,
     "topic must be a string", true},
    {"{\"id\":1,\"op\":\"publish\",\"topic\":\"a/#\",\"payload\":\"x\"}", IPC_BAD_REQUEST,
     "topic must not contain wildcards", true},
    {"{\"id\":1,\"op\":\"publish\",\"topic\":\"\",\"payload\":\"x\"}", IPC_BAD_REQUEST,
     "invalid topic: empty topic", true},
    {"{\"id\":1,\"op\":\"publish\",\"topic\":\"a\"}", IPC_BAD_REQUEST,
     "payload or payload_b64 is required", true},
    {"{\"id\":1,\"op\":\"publish\",\"topic\":\"a\",\"payload\":\"x\",\"payload_b64\":\"eA==\"}",
     IPC_BAD_REQUEST, "give payload or payload_b64, not both", true},
    {"{\"id\":1,\"op\":\"publish\",\"topic\":\"a\",\"payload_b64\":\"@@\"}", IPC_BAD_REQUEST,
     "payload_b64 is not valid base64", true},
    {"{\"id\":1,\"op\":\"publish\",\"topic\":\"a\",\"payload\":\"x\",\"qos\":3}", IPC_BAD_REQUEST,
     "qos must be 0, 1 or 2", true},
    {"{\"id\":1,\"op\":\"publish\",\"topic\":\"a\",\"payload\":\"x\",\"qos\":\"1\"}",
     IPC_BAD_REQUEST, "qos must be 0, 1 or 2", true},
    {"{\"id\":1,\"op\":\"publish\",\"topic\":\"a\",\"payload\":\"x\",\"retain\":1}",
     IPC_BAD_REQUEST, "retain must be true or false", true},
    {"{\"id\":1,\"op\":\"publish\",\"topic\":\"a\",\"payload\":\"x\",\"timeout_ms\":0}",
     IPC_BAD_REQUEST, "timeout_ms must be an integer from 1 to 86400000", true},
    {"{\"id\":1,\"op\":\"subscribe\",\"filter\":\"a/b#\"}", IPC_BAD_REQUEST,
     "invalid filter: invalid topic filter", true},
    {"{\"id\":1,\"op\":\"subscribe\"}", IPC_BAD_REQUEST, "filter is required", true},
    {"{\"id\":1,\"op\":\"subscribe\",\"filter\":\"a\",\"encoding\":\"hex\"}", IPC_BAD_REQUEST,
     "encoding must be \"auto\" or \"base64\"", true},
    {"{\"id\":1,\"op\":\"unsubscribe\",\"filter\":\"\"}", IPC_BAD_REQUEST,
     "invalid filter: empty topic", true},
    {"{\"id\":1,\"op\":\"events\",\"ping\":\"yes\"}", IPC_BAD_REQUEST, "ping must be true or false",
     true},
#define PUB "{\"id\":1,\"op\":\"publish\",\"topic\":\"a\",\"payload\":\"x\","
    {PUB "\"user_properties\":{}}", IPC_BAD_REQUEST,
     "user_properties must be an array of [name, value]", true},
    {PUB "\"user_properties\":[[\"a\",\"b\"],[\"a\"]]}", IPC_BAD_REQUEST,
     "user_properties[1] must be a pair of strings [name, value]", true},
    {PUB "\"user_properties\":[[\"a\",2]]}", IPC_BAD_REQUEST,
     "user_properties[0] must be a pair of strings [name, value]", true},
    {PUB "\"user_properties\":[[\"a\\u0000\",\"b\"]]}", IPC_BAD_REQUEST,
     "a user property name must not contain U+0000", true},
    {PUB "\"content_type\":7}", IPC_BAD_REQUEST, "content_type must be a string", true},
    {PUB "\"payload_format\":2}", IPC_BAD_REQUEST, "payload_format must be 0 or 1", true},
    {"{\"id\":1,\"op\":\"publish\",\"topic\":\"a\",\"payload_b64\":\"/w==\",\"payload_format\":1}",
     IPC_BAD_REQUEST, "payload_format 1 says UTF-8, but the payload is not", true},
    {PUB "\"message_expiry\":0}", IPC_BAD_REQUEST,
     "message_expiry must be an integer from 1 to 4294967295 (seconds)", true},
    {PUB "\"message_expiry\":4294967296}", IPC_BAD_REQUEST,
     "message_expiry must be an integer from 1 to 4294967295 (seconds)", true},
    {PUB "\"response_topic\":\"r/#\"}", IPC_BAD_REQUEST,
     "response_topic must not contain wildcards", true},
    {PUB "\"correlation_data\":\"a\",\"correlation_data_b64\":\"YQ==\"}", IPC_BAD_REQUEST,
     "give correlation_data or correlation_data_b64, not both", true},
    {PUB "\"correlation_data_b64\":\"!\"}", IPC_BAD_REQUEST,
     "correlation_data_b64 is not valid base64", true},
#undef PUB
    {"{\"id\":1,\"op\":\"subscribe\",\"filter\":\"a\",\"retain_handling\":3}", IPC_BAD_REQUEST,
     "retain_handling must be 0, 1 or 2", true},
    {"{\"id\":1,\"op\":\"subscribe\",\"filter\":\"a\",\"no_local\":1}", IPC_BAD_REQUEST,
     "no_local must be true or false", true},
    {"{\"id\":1,\"op\":\"subscribe\",\"filter\":\"$share/g/a\",\"no_local\":true}", IPC_BAD_REQUEST,
     "no_local cannot be used with a shared subscription", true},
    {"{\"id\":1,\"op\":\"request\",\"topic\":\"a/+\",\"payload\":\"x\"}", IPC_BAD_REQUEST,
     "topic must not contain wildcards", true},
};

START_TEST(parse_errors)
{
    Request r;
    IpcError err;
    ck_assert_int_eq(request_parse(VIEW_STR(bad[_i].line), &r, &err), -EINVAL);
    ck_assert_msg(err.code == bad[_i].code, "%s: code %s", bad[_i].line, ipc_error_code(err.code));
    if (bad[_i].message) {
        ck_assert_str_eq(err.message, bad[_i].message);
    }
    ck_assert_int_eq(r.id != NULL, bad[_i].has_id);
    request_free(&r);
}
END_TEST

START_TEST(replies)
{
    Buf b = {0};
    json_t *id = json_integer(3);
    ck_assert_int_eq(reply_ok(&b, id, json_pack("{s:i}", "granted_qos", 1)), 0);
    ck_assert_view_str(buf_view(&b), "{\"id\":3,\"ok\":true,\"granted_qos\":1}\n");
    buf_clear(&b);
    ck_assert_int_eq(reply_ok(&b, NULL, NULL), 0);
    ck_assert_view_str(buf_view(&b), "{\"id\":null,\"ok\":true}\n");
    /* Written directly, as jansson writes the same object. */
    json_int_t ids[] = {0, 7, -1, 1234567890123, INT64_MAX, INT64_MIN};
    for (size_t i = 0; i < sizeof(ids) / sizeof(ids[0]); i++) {
        json_t *n = json_integer(ids[i]);
        Buf want = {0};
        buf_clear(&b);
        ck_assert_int_eq(reply_ok(&want, n, json_pack("{s:i}", "reason_code", 16)), 0);
        ck_assert_int_eq(reply_ok_reason(&b, n, 16), 0);
        ck_assert_int_eq(buf_size(&b), buf_size(&want));
        ck_assert_mem_eq(b.data + b.off, want.data + want.off, buf_size(&b));
        buf_free(&want);
        json_decref(n);
    }
    buf_clear(&b);
    ck_assert_int_eq(reply_ok_reason(&b, NULL, 0x10), 0);
    ck_assert_view_str(buf_view(&b), "{\"id\":null,\"ok\":true,\"reason_code\":16}\n");
    buf_clear(&b);
    ck_assert_int_eq(reply_error(&b, id, IPC_QUEUE_FULL, "queue full"), 0);
    ck_assert_view_str(buf_view(&b), "{\"id\":3,\"ok\":false,\"error\":{\"code\":\"queue_full\","
                                     "\"message\":\"queue full\"}}\n");
    /* A message quoting invalid UTF-8 from the client is still written. */
    buf_clear(&b);
    ck_assert_int_eq(reply_error(&b, NULL, IPC_BAD_JSON, "near '\xcb\x9d\xdd'"), 0);
    ck_assert(strstr((const char *)b.data, "near '?\x3f?'") != NULL);
    json_decref(id);
    buf_free(&b);
    for (int e = IPC_BAD_JSON; e <= IPC_INTERNAL; e++) {
        ck_assert_str_ne(ipc_error_code((enum ipc_error)e), "");
    }
    ck_assert_str_eq(ipc_error_code(IPC_NOT_SUBSCRIBED), "not_subscribed");
    ck_assert_str_eq(ipc_error_code(IPC_SHUTTING_DOWN), "shutting_down");
}
END_TEST

/* A write that fails half way leaves the buffer as it was, also when the buffer moved its
 * unread bytes to the front on the way (buf_reserve compacts when off > 0). */
START_TEST(failed_write_rolls_back_after_compaction)
{
    Buf b = {0};
    char fill[250];
    memset(fill, 'x', sizeof(fill));
    ck_assert_int_eq(buf_append(&b, fill, sizeof(fill)), 0);
    ck_assert_uint_eq(b.cap, 256);
    buf_consume(&b, 200); /* 50 unread bytes at offset 200 */
    b.max = 100;
    /* Room is reserved for the text (compacting), but its escapes (\u0001) outgrow it. */
    char text[20];
    for (size_t i = 0; i < sizeof(text); i++) {
        text[i] = i % 2 ? 'a' : '\x01';
    }
    ck_assert_int_eq(json_write_string(&b, VIEW(text, sizeof(text))), -ENOBUFS);
    ck_assert_uint_eq(b.off, 0); /* it did move */
    ck_assert_uint_eq(buf_size(&b), 50);
    ck_assert_int_eq(memcmp(buf_view(&b).p, fill, 50), 0);
    buf_free(&b);
}
END_TEST

START_TEST(message_event)
{
    Buf b = {0};
    ck_assert_int_eq(
        event_message(&b, VIEW_STR("a/\"b\""), VIEW_STR("x\n\\y\x01"), 1, true, false, NULL), 0);
    ck_assert_view_str(buf_view(&b), "{\"event\":\"message\",\"topic\":\"a/\\\"b\\\"\",\"payload\":"
                                     "\"x\\n\\\\y\\u0001\",\"qos\":1,\"retain\":true}\n");
    /* What we write, jansson reads back to the same bytes. */
    json_t *j = json_loadb((const char *)b.data, b.len, JSON_ALLOW_NUL, NULL);
    ck_assert_ptr_nonnull(j);
    ck_assert_str_eq(json_string_value(json_object_get(j, "payload")), "x\n\\y\x01");
    json_decref(j);
    buf_clear(&b);
    ck_assert_int_eq(event_message(&b, VIEW_STR("t"), VIEW("\xff\x00", 2), 0, false, false, NULL),
                     0);
    ck_assert_view_str(buf_view(&b), "{\"event\":\"message\",\"topic\":\"t\",\"payload_b64\":"
                                     "\"/wA=\",\"qos\":0,\"retain\":false}\n");
    buf_clear(&b);
    ck_assert_int_eq(event_message(&b, VIEW_STR("t"), VIEW_STR("ok"), 2, false, true, NULL), 0);
    ck_assert_view_str(buf_view(&b), "{\"event\":\"message\",\"topic\":\"t\",\"payload_b64\":"
                                     "\"b2s=\",\"qos\":2,\"retain\":false}\n");
    buf_free(&b);
}
END_TEST

/* A message's MQTT 5 properties in its event, from a block as a broker sends it. */
START_TEST(message_event_props)
{
    static const uint8_t block[] = {0x02, 0,   0,    0, 9, 0x09, 0,    2, 0, 0xff, 0x26,
                                    0,    1,   'k',  0, 1, '1',  0x26, 0, 1, 'k',  0,
                                    1,    '2', 0x03, 0, 1, 't',  0x08, 0, 1, 'r'};
    MqttProps p;
    ck_assert_int_eq(mqtt_props_check(VIEW(block, sizeof(block)), MQTT_PUBLISH, &p), 0);
    Buf b = {0};
    ck_assert_int_eq(event_message(&b, VIEW_STR("t"), VIEW_STR("x"), 1, false, false, &p), 0);
    ck_assert_view_str(buf_view(&b),
                       "{\"event\":\"message\",\"topic\":\"t\",\"payload\":\"x\","
                       "\"user_properties\":[[\"k\",\"1\"],[\"k\",\"2\"]],\"content_type\":\"t\","
                       "\"message_expiry\":9,\"response_topic\":\"r\",\"correlation_data_b64\":"
                       "\"AP8=\",\"qos\":1,\"retain\":false}\n");
    buf_clear(&b);
    json_t *id = json_integer(4);
    ck_assert_int_eq(reply_response(&b, id, VIEW_STR("t"), VIEW_STR("x"), true, &p), 0);
    json_t *j = json_loadb((const char *)buf_view(&b).p, buf_size(&b), 0, NULL);
    ck_assert_ptr_nonnull(j);
    json_t *resp = json_object_get(j, "response");
    ck_assert_str_eq(json_string_value(json_object_get(resp, "payload_b64")), "eA==");
    ck_assert_str_eq(json_string_value(json_object_get(resp, "correlation_data_b64")), "AP8=");
    ck_assert_int_eq(json_integer_value(json_object_get(j, "id")), 4);
    json_decref(j);
    json_decref(id);
    buf_free(&b);
}
END_TEST

START_TEST(refused_reply)
{
    Buf b = {0};
    ck_assert_int_eq(reply_refused(&b, NULL, IPC_REFUSED, "no", 135, "acl"), 0);
    ck_assert_view_str(buf_view(&b),
                       "{\"id\":null,\"ok\":false,\"error\":{\"code\":\"refused\","
                       "\"message\":\"no\",\"reason_code\":135,\"reason\":\"acl\"}}\n");
    buf_free(&b);
}
END_TEST

/* The fast path takes the usual publish and ack, reading values in place (escapes decoded
 * into the scratch buffer), and leaves everything else to jansson's path. */
START_TEST(fast_path)
{
    FastScratch scratch = {0};
    Request r;
    const char *plain = "{\"id\":7,\"op\":\"publish\",\"topic\":\"a/b\",\"payload\":\"21.5\","
                        "\"qos\":1,\"retain\":true}";
    ck_assert_int_eq(request_parse_fast(VIEW_STR(plain), &r, &scratch), 1);
    ck_assert_int_eq(r.op, OP_PUBLISH);
    ck_assert_int_eq(json_integer_value(r.id), 7);
    ck_assert(view_eq_str(r.topic, "a/b") && view_eq_str(r.payload, "21.5"));
    ck_assert(r.topic.p > (const uint8_t *)plain && r.topic.p < (const uint8_t *)plain + 40);
    ck_assert(r.qos == 1 && r.retain && r.wait && r.timeout_ms == -1);
    request_free(&r);

    const char *esc = " {\"op\":\"publish\", \"topic\":\"t\\u00e9\",\"payload\":\"{\\\"t\\\":1}\\n"
                      "\\ud83d\\ude00\",\"wait\":false,\"id\":\"x\"}\t";
    ck_assert_int_eq(request_parse_fast(VIEW_STR(esc), &r, &scratch), 1);
    ck_assert(view_eq_str(r.topic, "t\xc3\xa9"));
    ck_assert(view_eq_str(r.payload, "{\"t\":1}\n\xf0\x9f\x98\x80"));
    ck_assert(!r.wait && json_is_string(r.id));
    request_free(&r);

    ck_assert_int_eq(request_parse_fast(VIEW_STR("{\"op\":\"ack\",\"seq\":42}"), &r, &scratch), 1);
    ck_assert(r.op == OP_ACK && r.seq == 42 && r.id == NULL);
    request_free(&r);

    static const char *const left[] = {
        "{\"op\":\"publish\",\"topic\":\"t\",\"payload\":\"x\",\"qos\":1,\"qos\":2}", /* twice */
        "{\"op\":\"publish\",\"topic\":\"t\",\"payload\":\"x\",}",            /* trailing , */
        "{\"op\":\"publish\" \"topic\":\"t\",\"payload\":\"x\"}",             /* no comma */
        "{\"op\":\"publish\",\"topic\":\"t\",\"payload\":\"x\",\"qos\":1.0}", /* a real */
        "{\"op\":\"publish\",\"topic\":\"a/#\",\"payload\":\"x\"}",           /* an error */
        "{\"op\":\"publish\",\"topic\":\"t\",\"payload_b64\":\"eA==\"}",      /* not fast */
        "{\"op\":\"publish\",\"topic\":\"t\",\"payload\":\"\\ud800\"}",       /* lone half */
        "{\"op\":\"publish\",\"topic\":\"t\",\"payload\":\"\xff\"}",          /* not UTF-8 */
        "{\"op\":\"publish\",\"topic\":\"t\",\"payload\":\"x\"} {}",          /* two values */
        "{\"op\":\"ack\",\"seq\":0}",
        "{\"op\":\"status\"}",
        "[1]",
    };
    for (size_t i = 0; i < sizeof(left) / sizeof(left[0]); i++) {
        ck_assert_msg(request_parse_fast(VIEW_STR(left[i]), &r, &scratch) == 0, "%s", left[i]);
        ck_assert_ptr_null(r.root);
    }
    fast_scratch_free(&scratch);
}
END_TEST

/* An integer id is a json_t the fast path keeps and gives again once every other holder let
 * go: a request freed after its line, never one a waiter still holds. */
START_TEST(fast_ids_reused)
{
    FastScratch scratch = {0};
    json_t *first[FAST_IDS];
    char line[96];
    Request r;
    for (int i = 0; i < 2 * FAST_IDS; i++) {
        snprintf(line, sizeof(line),
                 "{\"id\":%d,\"op\":\"publish\",\"topic\":\"t\",\"payload\":\"x\"}", i);
        ck_assert_int_eq(request_parse_fast(VIEW_STR(line), &r, &scratch), 1);
        ck_assert_int_eq(json_integer_value(r.id), i);
        if (i < FAST_IDS) {
            first[i] = r.id;
        } else if (KEEP_SPARES && i % 2) { /* held by a waiter, as it were, since its turn */
            ck_assert_ptr_ne(r.id, first[i - FAST_IDS]);
        } else if (KEEP_SPARES) {
            ck_assert_ptr_eq(r.id, first[i - FAST_IDS]);
        }
        if (i < FAST_IDS && i % 2) {
            json_incref(r.id); /* a waiter holds the odd ones of the first round */
        }
        request_free(&r);
    }
    for (int i = 1; i < FAST_IDS; i += 2) {
        ck_assert_int_eq(json_integer_value(first[i]), i); /* the holder's id is unchanged */
        json_decref(first[i]);
    }
    fast_scratch_free(&scratch);
}
END_TEST

static Suite *protocol_suite(void)
{
    Suite *s = suite_create("protocol");
    TCase *tc = tcase_create("protocol");
    tcase_add_test(tc, framing);
    tcase_add_test(tc, parse_publish_v5);
    tcase_add_test(tc, message_event_props);
    tcase_add_test(tc, refused_reply);
    tcase_add_test(tc, framing_too_long);
    tcase_add_test(tc, base64_round_trip);
    tcase_add_test(tc, parse_publish);
    tcase_add_test(tc, parse_other_ops);
    tcase_add_test(tc, fast_path);
    tcase_add_test(tc, fast_ids_reused);
    tcase_add_loop_test(tc, parse_errors, 0, sizeof(bad) / sizeof(bad[0]));
    tcase_add_test(tc, replies);
    tcase_add_test(tc, message_event);
    tcase_add_test(tc, failed_write_rolls_back_after_compaction);
    suite_add_tcase(s, tc);
    return s;
}

CHECK_MAIN(protocol_suite)
