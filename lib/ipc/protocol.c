/* SPDX-License-Identifier: MIT */
/*
 * The IPC schema layer: see protocol.h. Field rules: unknown fields are ignored (so clients
 * may send extensions), known fields must have their documented type and range.
 */
#include "ipc/protocol.h"

#include <assert.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

#include "base64.h"
#include "mqtt/codec.h"
#include "mqtt/topic.h"
#include "utf8.h"

static const char *const op_names[OP_COUNT] = {
    [OP_PUBLISH] = "publish",
    [OP_SUBSCRIBE] = "subscribe",
    [OP_UNSUBSCRIBE] = "unsubscribe",
    [OP_STATUS] = "status",
    [OP_STATS] = "stats",
    [OP_PING] = "ping",
    [OP_EVENTS] = "events",
    [OP_RECONNECT] = "reconnect",
    [OP_STATS_RESET] = "stats_reset",
    [OP_RELOAD] = "reload",
    [OP_REQUEST] = "request",
    [OP_SESSION] = "session",
    [OP_ACK] = "ack",
    [OP_SESSION_END] = "session_end",
    [OP_SESSIONS] = "sessions",
};

static const char *const error_codes[] = {
    [IPC_OK] = "ok",
    [IPC_BAD_JSON] = "bad_json",
    [IPC_BAD_REQUEST] = "bad_request",
    [IPC_UNKNOWN_OP] = "unknown_op",
    [IPC_TOO_LARGE] = "too_large",
    [IPC_FORBIDDEN] = "forbidden",
    [IPC_NOT_SUBSCRIBED] = "not_subscribed",
    [IPC_QUEUE_FULL] = "queue_full",
    [IPC_TIMEOUT] = "timeout",
    [IPC_REFUSED] = "refused",
    [IPC_SHUTTING_DOWN] = "shutting_down",
    [IPC_INTERNAL] = "internal",
};

const char *ipc_op_name(enum ipc_op op)
{
    return op < OP_COUNT ? op_names[op] : "?";
}

const char *ipc_error_code(enum ipc_error e)
{
    return e <= IPC_INTERNAL ? error_codes[e] : "internal";
}

static int fail(IpcError *err, enum ipc_error code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int fail(IpcError *err, enum ipc_error code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    err->code = code;
    vsnprintf(err->message, sizeof(err->message), fmt, ap);
    va_end(ap);
    return -EINVAL;
}

static int get_bool(json_t *root, const char *name, bool *slot, IpcError *err)
{
    json_t *v = json_object_get(root, name);
    if (!v) {
        return 0;
    }
    if (!json_is_boolean(v)) {
        return fail(err, IPC_BAD_REQUEST, "%s must be true or false", name);
    }
    *slot = json_is_true(v);
    return 0;
}

static int get_qos(json_t *root, uint8_t *slot, IpcError *err)
{
    json_t *v = json_object_get(root, "qos");
    if (!v) {
        return 0;
    }
    if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) > 2) {
        return fail(err, IPC_BAD_REQUEST, "qos must be 0, 1 or 2");
    }
    *slot = (uint8_t)json_integer_value(v);
    return 0;
}

/* A required string field, returned as bytes. */
static int get_string(json_t *root, const char *name, View *ret, IpcError *err)
{
    json_t *v = json_object_get(root, name);
    if (!v) {
        return fail(err, IPC_BAD_REQUEST, "%s is required", name);
    }
    if (!json_is_string(v)) {
        return fail(err, IPC_BAD_REQUEST, "%s must be a string", name);
    }
    *ret = VIEW(json_string_value(v), json_string_length(v));
    return 0;
}

static int topic_error(IpcError *err, const char *what, int r)
{
    if (r == -MQTT_E_TOPIC_WILDCARD) {
        return fail(err, IPC_BAD_REQUEST, "%s must not contain wildcards", what);
    }
    return fail(err, IPC_BAD_REQUEST, "invalid %s: %s", what, mqtt_strerror(r));
}

/* ---- MQTT 5 fields ---- */

/* A string MQTT can carry (UTF-8 without U+0000, at most 65535 bytes), or absent. */
static int get_mqtt_string(json_t *v, const char *name, View *ret, IpcError *err)
{
    if (!json_is_string(v)) {
        return fail(err, IPC_BAD_REQUEST, "%s must be a string", name);
    }
    View s = VIEW(json_string_value(v), json_string_length(v));
    if (s.n > 65535) {
        return fail(err, IPC_BAD_REQUEST, "%s is longer than 65535 bytes", name);
    }
    if (!utf8_valid(s, false)) {
        return fail(err, IPC_BAD_REQUEST, "%s must not contain U+0000", name);
    }
    *ret = s;
    return 0;
}

/* user_properties: [[name, value], ...], into *ret (allocated; the Views borrow from it). */
static int get_user_props(json_t *arr, MqttUserProp **ret, size_t *n, IpcError *err)
{
    if (!json_is_array(arr)) {
        return fail(err, IPC_BAD_REQUEST, "user_properties must be an array of [name, value]");
    }
    *n = json_array_size(arr);
    *ret = *n ? calloc(*n, sizeof(**ret)) : NULL;
    if (*n && !*ret) {
        return fail(err, IPC_INTERNAL, "out of memory");
    }
    for (size_t i = 0; i < *n; i++) {
        json_t *pair = json_array_get(arr, i);
        if (!json_is_array(pair) || json_array_size(pair) != 2 ||
            !json_is_string(json_array_get(pair, 0)) || !json_is_string(json_array_get(pair, 1))) {
            return fail(err, IPC_BAD_REQUEST,
                        "user_properties[%zu] must be a pair of strings [name, value]", i);
        }
        int r;
        if ((r = get_mqtt_string(json_array_get(pair, 0), "a user property name", &(*ret)[i].name,
                                 err)) < 0 ||
            (r = get_mqtt_string(json_array_get(pair, 1), "a user property value", &(*ret)[i].value,
                                 err)) < 0) {
            return r;
        }
    }
    return 0;
}

static int get_correlation(Request *req, MqttProps *p, Buf *scratch, IpcError *err)
{
    json_t *text = json_object_get(req->root, "correlation_data");
    json_t *b64 = json_object_get(req->root, "correlation_data_b64");
    if (text && b64) {
        return fail(err, IPC_BAD_REQUEST,
                    "give correlation_data or correlation_data_b64, not both");
    }
    View v;
    if (text) {
        if (!json_is_string(text)) {
            return fail(err, IPC_BAD_REQUEST, "correlation_data must be a string");
        }
        v = VIEW(json_string_value(text), json_string_length(text));
    } else if (b64) {
        if (!json_is_string(b64) ||
            base64_decode(scratch, VIEW(json_string_value(b64), json_string_length(b64))) < 0) {
            return fail(err, IPC_BAD_REQUEST, "correlation_data_b64 is not valid base64");
        }
        v = buf_view(scratch);
    } else {
        return 0;
    }
    if (v.n > 65535) {
        return fail(err, IPC_BAD_REQUEST, "correlation_data is longer than 65535 bytes");
    }
    p->correlation_data = v;
    MQTT_SET(p, MQTT_PROP_CORRELATION_DATA);
    req->v5_field = req->v5_field ? req->v5_field
                    : text        ? "correlation_data"
                                  : "correlation_data_b64";
    return 0;
}

static int get_expiry(Request *req, IpcError *err)
{
    json_t *v = json_object_get(req->root, "message_expiry");
    if (!v) {
        return 0;
    }
    if (!json_is_integer(v) || json_integer_value(v) < 1 || json_integer_value(v) > 4294967295) {
        return fail(err, IPC_BAD_REQUEST,
                    "message_expiry must be an integer from 1 to 4294967295 (seconds)");
    }
    req->message_expiry = (uint32_t)json_integer_value(v);
    req->v5_field = req->v5_field ? req->v5_field : "message_expiry";
    return 0;
}

/* The single-valued string and byte properties of a message. */
static int get_message_singles(Request *req, MqttProps *p, IpcError *err)
{
    json_t *v;
    int r;
    if ((v = json_object_get(req->root, "content_type"))) {
        if ((r = get_mqtt_string(v, "content_type", &p->content_type, err)) < 0) {
            return r;
        }
        MQTT_SET(p, MQTT_PROP_CONTENT_TYPE);
        req->v5_field = req->v5_field ? req->v5_field : "content_type";
    }
    if ((v = json_object_get(req->root, "response_topic"))) {
        if ((r = get_mqtt_string(v, "response_topic", &p->response_topic, err)) < 0) {
            return r;
        }
        if ((r = mqtt_topic_check(p->response_topic)) < 0) {
            return topic_error(err, "response_topic", r);
        }
        MQTT_SET(p, MQTT_PROP_RESPONSE_TOPIC);
        req->v5_field = req->v5_field ? req->v5_field : "response_topic";
    }
    if ((v = json_object_get(req->root, "payload_format"))) {
        if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) > 1) {
            return fail(err, IPC_BAD_REQUEST, "payload_format must be 0 or 1");
        }
        if (json_integer_value(v) == 1 && !utf8_valid(req->payload, true)) {
            return fail(err, IPC_BAD_REQUEST,
                        "payload_format 1 says UTF-8, but the payload is not");
        }
        p->payload_format = (uint8_t)json_integer_value(v);
        MQTT_SET(p, MQTT_PROP_PAYLOAD_FORMAT);
        req->v5_field = req->v5_field ? req->v5_field : "payload_format";
    }
    return 0;
}

/* publish and request: the MQTT 5 fields into req->props and req->message_expiry. */
static int parse_message_props(Request *req, IpcError *err)
{
    MqttProps p = {0};
    MqttUserProp *user = NULL;
    Buf correlation = {0};
    json_t *up = json_object_get(req->root, "user_properties");
    int r = up ? get_user_props(up, &user, &p.n_user, err) : 0;
    if (r == 0 && p.n_user) {
        p.user = user;
        req->v5_field = "user_properties";
    }
    if (r == 0 && (r = get_message_singles(req, &p, err)) == 0 &&
        (r = get_correlation(req, &p, &correlation, err)) == 0 && (r = get_expiry(req, err)) == 0 &&
        (p.has || p.n_user) && mqtt_props_encode(&req->props, &p, MQTT_PUBLISH) < 0) {
        r = fail(err, IPC_BAD_REQUEST, "the properties do not fit in one MQTT packet");
    }
    free(user);
    buf_free(&correlation);
    return r;
}

static int parse_publish(Request *req, IpcError *err)
{
    json_t *root = req->root;
    int r;
    if ((r = get_string(root, "topic", &req->topic, err)) < 0) {
        return r;
    }
    if ((r = mqtt_topic_check(req->topic)) < 0) {
        return topic_error(err, "topic", r);
    }
    json_t *text = json_object_get(root, "payload"), *b64 = json_object_get(root, "payload_b64");
    if (text && b64) {
        return fail(err, IPC_BAD_REQUEST, "give payload or payload_b64, not both");
    }
    if (!text && !b64) {
        return fail(err, IPC_BAD_REQUEST, "payload or payload_b64 is required");
    }
    if (text) {
        if ((r = get_string(root, "payload", &req->payload, err)) < 0) {
            return r;
        }
    } else {
        View enc;
        if ((r = get_string(root, "payload_b64", &enc, err)) < 0) {
            return r;
        }
        if (base64_decode(&req->decoded, enc) < 0) {
            return fail(err, IPC_BAD_REQUEST, "payload_b64 is not valid base64");
        }
        req->payload = buf_view(&req->decoded);
    }
    if ((r = get_qos(root, &req->qos, err)) < 0 ||
        (r = get_bool(root, "retain", &req->retain, err)) < 0 ||
        (r = get_bool(root, "wait", &req->wait, err)) < 0) {
        return r;
    }
    return parse_message_props(req, err);
}

/* How long publish, subscribe and unsubscribe wait for the broker. */
static int get_timeout(Request *req, IpcError *err)
{
    json_t *t = json_object_get(req->root, "timeout_ms");
    if (t) {
        if (!json_is_integer(t) || json_integer_value(t) <= 0 || json_integer_value(t) > 86400000) {
            return fail(err, IPC_BAD_REQUEST, "timeout_ms must be an integer from 1 to 86400000");
        }
        req->timeout_ms = json_integer_value(t);
    }
    return 0;
}

static int parse_filter(Request *req, IpcError *err)
{
    int r;
    if ((r = get_string(req->root, "filter", &req->topic, err)) < 0) {
        return r;
    }
    if ((r = mqtt_filter_check(req->topic)) < 0) {
        return topic_error(err, "filter", r);
    }
    return 0;
}

/* subscribe's MQTT 5 options. */
static int parse_sub_options(Request *req, IpcError *err)
{
    int r;
    if ((r = get_bool(req->root, "no_local", &req->no_local, err)) < 0 ||
        (r = get_bool(req->root, "retain_as_published", &req->retain_as_published, err)) < 0) {
        return r;
    }
    json_t *v = json_object_get(req->root, "retain_handling");
    if (v) {
        if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) > 2) {
            return fail(err, IPC_BAD_REQUEST, "retain_handling must be 0, 1 or 2");
        }
        req->retain_handling = (uint8_t)json_integer_value(v);
    }
    if (req->no_local && mqtt_filter_target(req->topic).n != req->topic.n) {
        return fail(err, IPC_BAD_REQUEST, "no_local cannot be used with a shared subscription");
    }
    /* retain_handling is the daemon's own to apply (see docs/protocol.md): any protocol. */
    req->v5_field = req->no_local              ? "no_local"
                    : req->retain_as_published ? "retain_as_published"
                                               : NULL;
    return 0;
}

static int parse_subscribe(Request *req, IpcError *err)
{
    int r;
    if ((r = parse_filter(req, err)) < 0 || (r = get_qos(req->root, &req->qos, err)) < 0) {
        return r;
    }
    json_t *e = json_object_get(req->root, "encoding");
    if (e) {
        const char *s = json_string_value(e);
        if (s && strcmp(s, "auto") == 0) {
            req->encoding = ENC_AUTO;
        } else if (s && strcmp(s, "base64") == 0) {
            req->encoding = ENC_BASE64;
        } else {
            return fail(err, IPC_BAD_REQUEST, "encoding must be \"auto\" or \"base64\"");
        }
    }
    return parse_sub_options(req, err);
}

static int parse_events(Request *req, IpcError *err)
{
    static const char *const names[] = {"connection", "ping"};
    int *slots[] = {&req->events_connection, &req->events_ping};
    for (int i = 0; i < 2; i++) {
        json_t *v = json_object_get(req->root, names[i]);
        if (!v) {
            continue;
        }
        if (!json_is_boolean(v)) {
            return fail(err, IPC_BAD_REQUEST, "%s must be true or false", names[i]);
        }
        *slots[i] = json_is_true(v);
    }
    return 0;
}

/* session and session_end: the name; session: its expiry. */
static int parse_session(Request *req, IpcError *err)
{
    int r = get_string(req->root, "name", &req->name, err);
    if (r < 0) {
        return r;
    }
    bool control = false;
    for (size_t i = 0; i < req->name.n; i++) {
        control |= req->name.p[i] < 0x20 || req->name.p[i] == 0x7f;
    }
    if (req->name.n == 0 || req->name.n > 128 || !utf8_valid(req->name, false) || control) {
        return fail(err, IPC_BAD_REQUEST,
                    "name must be 1 to 128 bytes of UTF-8 without control characters");
    }
    json_t *v = json_object_get(req->root, "expiry");
    if (v && req->op == OP_SESSION) {
        if (!json_is_integer(v) || json_integer_value(v) < 0 ||
            json_integer_value(v) > 4294967295) {
            return fail(err, IPC_BAD_REQUEST, "expiry must be an integer from 0 to 4294967295");
        }
        req->expiry = json_integer_value(v);
    }
    return 0;
}

static int parse_ack(Request *req, IpcError *err)
{
    json_t *v = json_object_get(req->root, "seq");
    if (!v || !json_is_integer(v) || json_integer_value(v) < 1) {
        return fail(err, IPC_BAD_REQUEST, "seq must be a message's sequence number (1 or more)");
    }
    req->seq = (uint64_t)json_integer_value(v);
    return 0;
}

int request_parse(View line, Request *req, IpcError *err)
{
    *req = (Request){
        .wait = true, .timeout_ms = -1, .events_connection = -1, .events_ping = -1, .expiry = -1};
    json_error_t jerr;
    req->root = json_loadb((const char *)line.p, line.n, JSON_ALLOW_NUL, &jerr);
    if (!req->root) {
        return fail(err, IPC_BAD_JSON, "invalid JSON at column %d: %s", jerr.column, jerr.text);
    }
    if (!json_is_object(req->root)) {
        return fail(err, IPC_BAD_JSON, "a request must be a JSON object");
    }
    req->id = json_object_get(req->root, "id");
    json_t *op = json_object_get(req->root, "op");
    if (!op) {
        return fail(err, IPC_BAD_REQUEST, "op is required");
    }
    if (!json_is_string(op)) {
        return fail(err, IPC_BAD_REQUEST, "op must be a string");
    }
    const char *name = json_string_value(op);
    int i = 0;
    while (i < OP_COUNT && strcmp(op_names[i], name) != 0) {
        i++;
    }
    if (i == OP_COUNT) {
        return fail(err, IPC_UNKNOWN_OP, "unknown op \"%.60s\"", name);
    }
    req->op = (enum ipc_op)i;
    int r;
    switch (req->op) {
    case OP_PUBLISH:
    case OP_REQUEST:
        return (r = parse_publish(req, err)) < 0 ? r : get_timeout(req, err);
    case OP_SUBSCRIBE:
        return (r = parse_subscribe(req, err)) < 0 ? r : get_timeout(req, err);
    case OP_UNSUBSCRIBE:
        return (r = parse_filter(req, err)) < 0 ? r : get_timeout(req, err);
    case OP_EVENTS:
        return parse_events(req, err);
    case OP_SESSION:
    case OP_SESSION_END:
        return parse_session(req, err);
    case OP_ACK:
        return parse_ack(req, err);
    default:
        return 0;
    }
}

void request_free(Request *req)
{
    json_decref(req->root);
    buf_free(&req->decoded);
    buf_free(&req->props);
    req->root = req->id = NULL;
}

static int dump_cb(const char *p, size_t n, void *data)
{
    return buf_append(data, p, n) < 0 ? -1 : 0;
}

int write_json_line(Buf *out, json_t *obj)
{
    size_t before = buf_mark(out);
    int r = 0;
    if (!obj || json_dump_callback(obj, dump_cb, out, JSON_COMPACT) < 0 ||
        buf_put_u8(out, '\n') < 0) {
        buf_rollback(out, before);
        r = -ENOBUFS;
    }
    json_decref(obj);
    return r;
}

/* v in decimal, as jansson writes it (without printf: this is on every reply's path). */
static int put_int(Buf *out, json_int_t v)
{
    char num[24], *p = num + sizeof(num);
    /* The magnitude in unsigned arithmetic: -INT64_MIN does not fit a json_int_t. */
    unsigned long long m = v < 0 ? 0ull - (unsigned long long)v : (unsigned long long)v;
    do {
        *--p = (char)('0' + m % 10);
        m /= 10;
    } while (m);
    if (v < 0) {
        *--p = '-';
    }
    return buf_append(out, p, (size_t)(num + sizeof(num) - p));
}

/* `,"name":`, before a field's value */
static int put_key(Buf *out, const char *name)
{
    int r;
    if ((r = buf_append(out, ",\"", 2)) < 0 || (r = buf_append(out, name, strlen(name))) < 0) {
        return r;
    }
    return buf_append(out, "\":", 2);
}

/* `,"name":v` */
static int put_int_field(Buf *out, const char *name, uint32_t v)
{
    int r = put_key(out, name);
    return r < 0 ? r : put_int(out, v);
}

/* A request's id as JSON (null when absent). */
static int put_id(Buf *out, json_t *id)
{
    if (json_is_integer(id)) {
        return put_int(out, json_integer_value(id));
    }
    if (!id || json_is_null(id)) {
        return buf_append(out, "null", 4);
    }
    return json_dump_callback(id, dump_cb, out, JSON_COMPACT | JSON_ENCODE_ANY) < 0 ? -ENOBUFS : 0;
}

/* `{"id":ID,"ok":true}` without building a tree: the reply to nearly every publish. */
static int reply_ok_plain(Buf *out, json_t *id)
{
    size_t before = buf_mark(out);
    int r;
    if ((r = buf_append(out, "{\"id\":", 6)) < 0 || (r = put_id(out, id)) < 0 ||
        (r = buf_append(out, ",\"ok\":true}\n", 12)) < 0) {
        buf_rollback(out, before);
    }
    return r;
}

int reply_ok_reason(Buf *out, json_t *id, int reason_code)
{
    assert(reason_code >= 0);
    size_t before = buf_mark(out);
    int r;
    if ((r = buf_append(out, "{\"id\":", 6)) < 0 || (r = put_id(out, id)) < 0 ||
        (r = buf_append(out, ",\"ok\":true", 10)) < 0 ||
        (r = put_int_field(out, "reason_code", (uint32_t)reason_code)) < 0 ||
        (r = buf_append(out, "}\n", 2)) < 0) {
        buf_rollback(out, before);
    }
    return r;
}

int reply_ok(Buf *out, json_t *id, json_t *fields)
{
    if (!fields) {
        return reply_ok_plain(out, id);
    }
    json_t *o = fields;
    if (!o) {
        return -ENOMEM;
    }
    /* id first, then ok, then the fields: readable and stable. */
    json_t *reply = json_object();
    if (!reply) {
        json_decref(o);
        return -ENOMEM;
    }
    json_object_set(reply, "id", id ? id : json_null());
    json_object_set_new(reply, "ok", json_true());
    json_object_update(reply, o);
    json_decref(o);
    return write_json_line(out, reply);
}

/* Messages may quote the client's own bytes (jansson's "near '...'"), which need not be
 * UTF-8: those bytes become '?', so the reply can always be written. */
static void make_safe(char *s)
{
    if (!utf8_valid(VIEW_STR(s), false)) {
        for (char *p = s; *p; p++) {
            if ((unsigned char)*p >= 0x80) {
                *p = '?';
            }
        }
    }
}

int reply_refused(Buf *out, json_t *id, enum ipc_error code, const char *message, int reason_code,
                  const char *reason)
{
    char safe[512], safe_reason[512];
    snprintf(safe, sizeof(safe), "%s", message);
    make_safe(safe);
    json_t *error = json_pack("{s:s, s:s}", "code", ipc_error_code(code), "message", safe);
    if (error && reason_code >= 0) {
        json_object_set_new(error, "reason_code", json_integer(reason_code));
        if (reason && reason[0]) {
            snprintf(safe_reason, sizeof(safe_reason), "%s", reason);
            make_safe(safe_reason);
            json_object_set_new(error, "reason", json_string(safe_reason));
        }
    }
    json_t *reply =
        error ? json_pack("{s:O, s:b, s:o}", "id", id ? id : json_null(), "ok", 0, "error", error)
              : NULL;
    return write_json_line(out, reply);
}

int reply_error(Buf *out, json_t *id, enum ipc_error code, const char *message)
{
    return reply_refused(out, id, code, message, -1, NULL);
}

/* Append `s` as a JSON string body (no quotes): valid UTF-8 in, escapes as needed. */
static int put_escaped(Buf *out, View s)
{
    static const char hex[] = "0123456789abcdef";
    int r = buf_reserve(out, s.n + 16);
    if (r < 0) {
        return r;
    }
    size_t start = 0;
    for (size_t i = 0; i < s.n; i++) {
        uint8_t c = s.p[i];
        if (c >= 0x20 && c != '"' && c != '\\') {
            continue;
        }
        if ((r = buf_append(out, s.p + start, i - start)) < 0) {
            return r;
        }
        char esc[6] = {'\\', 0};
        size_t n = 2;
        switch (c) {
        case '"':
            esc[1] = '"';
            break;
        case '\\':
            esc[1] = '\\';
            break;
        case '\n':
            esc[1] = 'n';
            break;
        case '\r':
            esc[1] = 'r';
            break;
        case '\t':
            esc[1] = 't';
            break;
        default:
            memcpy(esc, "\\u00", 4);
            esc[4] = hex[c >> 4];
            esc[5] = hex[c & 15];
            n = 6;
        }
        if ((r = buf_append(out, esc, n)) < 0) {
            return r;
        }
        start = i + 1;
    }
    /* An empty view may have a NULL pointer: no arithmetic on it. */
    return start < s.n ? buf_append(out, s.p + start, s.n - start) : 0;
}

int json_write_string(Buf *out, View s)
{
    size_t before = buf_mark(out);
    int r;
    if ((r = buf_put_u8(out, '"')) < 0 || (r = put_escaped(out, s)) < 0 ||
        (r = buf_put_u8(out, '"')) < 0) {
        buf_rollback(out, before);
    }
    return r;
}

/* `"name":` then `v` as a JSON string, text or (when `b64` or not UTF-8) "name_b64". */
static int put_bytes_field(Buf *out, const char *name, View v, bool b64)
{
    bool text = !b64 && utf8_valid(v, true);
    int r;
    if ((r = buf_append(out, ",\"", 2)) < 0 || (r = buf_append(out, name, strlen(name))) < 0 ||
        (r = buf_append(out, text ? "\":\"" : "_b64\":\"", text ? 3 : 7)) < 0 ||
        (r = text ? put_escaped(out, v) : base64_encode(out, v)) < 0) {
        return r;
    }
    return buf_put_u8(out, '"');
}

static int put_string_field(Buf *out, const char *name, View v)
{
    int r = put_key(out, name);
    return r < 0 ? r : json_write_string(out, v);
}

static int put_user_props(Buf *out, View raw)
{
    bool first = true;
    MqttPropItem it;
    int r = buf_append(out, ",\"user_properties\":[", 20);
    while (r == 0 && mqtt_props_next(&raw, &it) == 1) {
        if (it.id != MQTT_PROP_USER) {
            continue;
        }
        if ((r = buf_append(out, first ? "[" : ",[", first ? 1 : 2)) < 0 ||
            (r = json_write_string(out, it.user.name)) < 0 || (r = buf_put_u8(out, ',')) < 0 ||
            (r = json_write_string(out, it.user.value)) < 0) {
            return r;
        }
        r = buf_put_u8(out, ']');
        first = false;
    }
    return r < 0 ? r : buf_put_u8(out, ']');
}

/* The MQTT 5 properties of a message as the fields publish takes. */
static int put_props(Buf *out, const MqttProps *p, bool b64)
{
    int r = 0;
    if (p->n_user) {
        r = put_user_props(out, p->raw);
    }
    if (r == 0 && MQTT_HAS(p, MQTT_PROP_CONTENT_TYPE)) {
        r = put_string_field(out, "content_type", p->content_type);
    }
    if (r == 0 && MQTT_HAS(p, MQTT_PROP_PAYLOAD_FORMAT)) {
        r = put_int_field(out, "payload_format", p->payload_format);
    }
    if (r == 0 && MQTT_HAS(p, MQTT_PROP_MESSAGE_EXPIRY)) {
        r = put_int_field(out, "message_expiry", p->message_expiry);
    }
    if (r == 0 && MQTT_HAS(p, MQTT_PROP_RESPONSE_TOPIC)) {
        r = put_string_field(out, "response_topic", p->response_topic);
    }
    if (r == 0 && MQTT_HAS(p, MQTT_PROP_CORRELATION_DATA)) {
        r = put_bytes_field(out, "correlation_data", p->correlation_data, b64);
    }
    return r;
}

/* "topic":..., "payload" or "payload_b64":..., then the properties. */
static int put_message(Buf *out, View topic, View payload, bool base64, const MqttProps *props)
{
    bool text = !base64 && utf8_valid(payload, true);
    int r;
    if ((r = buf_append(out, "\"topic\":\"", 9)) < 0 || (r = put_escaped(out, topic)) < 0 ||
        (r = buf_append(out, text ? "\",\"payload\":\"" : "\",\"payload_b64\":\"",
                        text ? 13 : 17)) < 0 ||
        (r = text ? put_escaped(out, payload) : base64_encode(out, payload)) < 0 ||
        (r = buf_put_u8(out, '"')) < 0) {
        return r;
    }
    return props && (props->has || props->n_user) ? put_props(out, props, base64) : 0;
}

int event_message(Buf *out, View topic, View payload, uint8_t qos, bool retain, bool base64,
                  const MqttProps *props)
{
    return event_message_seq(out, topic, payload, qos, retain, base64, props, 0, false);
}

int event_message_seq(Buf *out, View topic, View payload, uint8_t qos, bool retain, bool base64,
                      const MqttProps *props, uint64_t seq, bool redelivered)
{
    size_t before = buf_mark(out);
    char tail[96];
    int tn = 0;
    if (seq) {
        tn = snprintf(tail, sizeof(tail), ",\"seq\":%llu%s", (unsigned long long)seq,
                      redelivered ? ",\"redelivered\":true" : "");
    }
    tn += snprintf(tail + tn, sizeof(tail) - (size_t)tn, ",\"qos\":%u,\"retain\":%s}\n", qos,
                   retain ? "true" : "false");
    int r;
    if ((r = buf_append(out, "{\"event\":\"message\",", 19)) < 0 ||
        (r = put_message(out, topic, payload, base64, props)) < 0 ||
        (r = buf_append(out, tail, (size_t)tn)) < 0) {
        buf_rollback(out, before);
        return r;
    }
    return 0;
}

int reply_response(Buf *out, json_t *id, View topic, View payload, bool base64,
                   const MqttProps *props)
{
    size_t before = buf_mark(out);
    int r;
    if ((r = buf_append(out, "{\"id\":", 6)) < 0 || (r = put_id(out, id)) < 0 ||
        (r = buf_append(out, ",\"ok\":true,\"response\":{", 23)) < 0 ||
        (r = put_message(out, topic, payload, base64, props)) < 0 ||
        (r = buf_append(out, "}}\n", 3)) < 0) {
        buf_rollback(out, before);
        return r;
    }
    return 0;
}
