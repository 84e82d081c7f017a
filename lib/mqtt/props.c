/* SPDX-License-Identifier: MIT */
/*
 * MQTT 5 properties and reason codes: one table says, for every property, its wire type,
 * where its value lives in MqttProps, which packets may carry it and whether it may repeat;
 * measuring, writing, reading and walking all follow it, so they cannot disagree.
 */
#include <assert.h>
#include <stddef.h>
#include <stdio.h>

#include "mqtt/topic.h"
#include "mqtt/wire.h"

enum prop_type { PT_NONE, PT_BYTE, PT_U16, PT_U32, PT_VARINT, PT_UTF8, PT_BINARY, PT_PAIR };

/* Range rules beyond the type. */
enum prop_rule {
    R_ANY,
    R_BOOL,    /* 0 or 1 */
    R_NONZERO, /* Receive Maximum, Maximum Packet Size */
    R_ALIAS,   /* Topic Alias: not 0 (its own error) */
    R_TOPIC,   /* Response Topic: a topic name */
};

#define WILL   (1u << 0) /* packet type 0 is reserved: its bit stands for a CONNECT's will */
#define PK(t)  (1u << MQTT_##t)
#define ACKS   (PK(PUBACK) | PK(PUBREC) | PK(PUBREL) | PK(PUBCOMP))
#define ALL_V5 0xffffu

typedef struct PropDef {
    uint8_t type, rule;
    uint16_t packets;
    bool repeat;
    uint16_t offset; /* of its field in MqttProps (single-valued ones) */
} PropDef;

#define DEF(id, ty, ru, pk, field)                                                                 \
    [MQTT_PROP_##id] = {PT_##ty, R_##ru, (uint16_t)(pk), false, offsetof(MqttProps, field)}

static const PropDef defs[64] = {
    DEF(PAYLOAD_FORMAT, BYTE, BOOL, PK(PUBLISH) | WILL, payload_format),
    DEF(MESSAGE_EXPIRY, U32, ANY, PK(PUBLISH) | WILL, message_expiry),
    DEF(CONTENT_TYPE, UTF8, ANY, PK(PUBLISH) | WILL, content_type),
    DEF(RESPONSE_TOPIC, UTF8, TOPIC, PK(PUBLISH) | WILL, response_topic),
    DEF(CORRELATION_DATA, BINARY, ANY, PK(PUBLISH) | WILL, correlation_data),
    [MQTT_PROP_SUBSCRIPTION_ID] = {PT_VARINT, R_NONZERO, PK(PUBLISH) | PK(SUBSCRIBE), true, 0},
    DEF(SESSION_EXPIRY, U32, ANY, PK(CONNECT) | PK(CONNACK) | PK(DISCONNECT), session_expiry),
    DEF(ASSIGNED_CLIENT_ID, UTF8, ANY, PK(CONNACK), assigned_client_id),
    DEF(SERVER_KEEP_ALIVE, U16, ANY, PK(CONNACK), server_keep_alive),
    DEF(AUTH_METHOD, UTF8, ANY, PK(CONNECT) | PK(CONNACK) | PK(AUTH), auth_method),
    DEF(AUTH_DATA, BINARY, ANY, PK(CONNECT) | PK(CONNACK) | PK(AUTH), auth_data),
    DEF(REQUEST_PROBLEM_INFO, BYTE, BOOL, PK(CONNECT), request_problem_info),
    DEF(WILL_DELAY, U32, ANY, WILL, will_delay),
    DEF(REQUEST_RESPONSE_INFO, BYTE, BOOL, PK(CONNECT), request_response_info),
    DEF(RESPONSE_INFO, UTF8, ANY, PK(CONNACK), response_info),
    DEF(SERVER_REFERENCE, UTF8, ANY, PK(CONNACK) | PK(DISCONNECT), server_reference),
    DEF(REASON_STRING, UTF8, ANY,
        PK(CONNACK) | ACKS | PK(SUBACK) | PK(UNSUBACK) | PK(DISCONNECT) | PK(AUTH), reason_string),
    DEF(RECEIVE_MAXIMUM, U16, NONZERO, PK(CONNECT) | PK(CONNACK), receive_maximum),
    DEF(TOPIC_ALIAS_MAXIMUM, U16, ANY, PK(CONNECT) | PK(CONNACK), topic_alias_maximum),
    DEF(TOPIC_ALIAS, U16, ALIAS, PK(PUBLISH), topic_alias),
    DEF(MAXIMUM_QOS, BYTE, BOOL, PK(CONNACK), maximum_qos),
    DEF(RETAIN_AVAILABLE, BYTE, BOOL, PK(CONNACK), retain_available),
    [MQTT_PROP_USER] = {PT_PAIR, R_ANY, ALL_V5, true, 0},
    DEF(MAXIMUM_PACKET_SIZE, U32, NONZERO, PK(CONNECT) | PK(CONNACK), maximum_packet_size),
    DEF(WILDCARD_AVAILABLE, BYTE, BOOL, PK(CONNACK), wildcard_available),
    DEF(SUBSCRIPTION_ID_AVAILABLE, BYTE, BOOL, PK(CONNACK), subscription_id_available),
    DEF(SHARED_AVAILABLE, BYTE, BOOL, PK(CONNACK), shared_available),
};

static const PropDef *def_of(uint32_t id)
{
    return id < 64 && defs[id].type != PT_NONE ? &defs[id] : NULL;
}

static const void *field(const MqttProps *p, const PropDef *d)
{
    return (const char *)p + d->offset;
}

/* A single value against its rule (decoded, or about to be encoded). */
static int check_value(const PropDef *d, uint32_t n, View v)
{
    switch (d->rule) {
    case R_BOOL:
        return n <= 1 ? 0 : -MQTT_E_PROPERTY_VALUE;
    case R_NONZERO:
        return n ? 0 : -MQTT_E_PROPERTY_VALUE;
    case R_ALIAS:
        return n ? 0 : -MQTT_E_TOPIC_ALIAS;
    case R_TOPIC:
        return mqtt_topic_check(v);
    default:
        return 0;
    }
}

static uint32_t int_field(const MqttProps *p, const PropDef *d)
{
    const void *f = field(p, d);
    return d->type == PT_BYTE  ? *(const uint8_t *)f
           : d->type == PT_U16 ? *(const uint16_t *)f
                               : *(const uint32_t *)f;
}

/* Bytes one single-valued property takes after its identifier; validates it. */
static int single_size(const MqttProps *p, const PropDef *d, size_t *ret)
{
    static const uint8_t fixed[] = {[PT_BYTE] = 1, [PT_U16] = 2, [PT_U32] = 4};
    if (d->type == PT_UTF8 || d->type == PT_BINARY) {
        View v = *(const View *)field(p, d);
        TRY(d->type == PT_UTF8 ? check_string(v) : v.n > 65535 ? -MQTT_E_STRING_LONG : 0);
        TRY(check_value(d, 0, v));
        *ret = 2 + v.n;
        return 0;
    }
    TRY(check_value(d, int_field(p, d), VIEW(NULL, 0)));
    *ret = fixed[d->type];
    return 0;
}

static int repeated_size(const MqttProps *p, int type, size_t *n)
{
    for (size_t i = 0; i < p->n_user; i++) {
        TRY(check_string(p->user[i].name));
        TRY(check_string(p->user[i].value));
        *n += 1 + 4 + p->user[i].name.n + p->user[i].value.n;
    }
    if (p->n_subid > (type == MQTT_PUBLISH ? SIZE_MAX : 1)) {
        return -MQTT_E_PROPERTY_DUP;
    }
    if (p->n_subid && !(defs[MQTT_PROP_SUBSCRIPTION_ID].packets & (1u << type))) {
        return -MQTT_E_PROPERTY_PACKET;
    }
    for (size_t i = 0; i < p->n_subid; i++) {
        if (p->subid[i] == 0 || p->subid[i] > MQTT_VARINT_MAX) {
            return -MQTT_E_PROPERTY_VALUE;
        }
        *n += 1 + varint_len(p->subid[i]);
    }
    return 0;
}

int props_measure(const MqttProps *p, int type, size_t *ret_len)
{
    size_t n = 0;
    for (uint32_t id = 1; id < 64; id++) {
        if (!(p->has & MQTT_PROP_BIT(id))) {
            continue;
        }
        const PropDef *d = def_of(id);
        if (!d || d->repeat) {
            return -MQTT_E_PROPERTY; /* repeatable ones go through user[] and subid[] */
        }
        if (!(d->packets & (1u << type))) {
            return -MQTT_E_PROPERTY_PACKET;
        }
        size_t one;
        TRY(single_size(p, d, &one));
        n += 1 + one;
    }
    TRY(repeated_size(p, type, &n));
    if (p->block.n) {
        MqttProps inner;
        TRY(mqtt_props_check(p->block, type, &inner));
        if (inner.has & p->has) {
            return -MQTT_E_PROPERTY_DUP;
        }
        if (inner.n_subid && p->n_subid && type != MQTT_PUBLISH) {
            return -MQTT_E_PROPERTY_DUP;
        }
        n += p->block.n;
    }
    if (n > MQTT_VARINT_MAX) {
        return -MQTT_E_TOO_LARGE;
    }
    *ret_len = n;
    return 0;
}

static uint8_t *put_single(uint8_t *w, const MqttProps *p, const PropDef *d)
{
    const void *f = field(p, d);
    switch (d->type) {
    case PT_BYTE:
        *w++ = *(const uint8_t *)f;
        return w;
    case PT_U16:
        return put_u16(w, *(const uint16_t *)f);
    case PT_U32:
        return put_u32(w, *(const uint32_t *)f);
    default: /* PT_UTF8, PT_BINARY */
        return put_string(w, *(const View *)f);
    }
}

uint8_t *props_put(uint8_t *w, const MqttProps *p, size_t len)
{
    w = put_varint(w, len);
    for (uint32_t id = 1; id < 64; id++) {
        if (p->has & MQTT_PROP_BIT(id)) {
            *w++ = (uint8_t)id;
            w = put_single(w, p, &defs[id]);
        }
    }
    for (size_t i = 0; i < p->n_subid; i++) {
        *w++ = MQTT_PROP_SUBSCRIPTION_ID;
        w = put_varint(w, p->subid[i]);
    }
    for (size_t i = 0; i < p->n_user; i++) {
        *w++ = MQTT_PROP_USER;
        w = put_string(put_string(w, p->user[i].name), p->user[i].value);
    }
    return put_bytes(w, p->block);
}

int mqtt_props_encode(Buf *out, const MqttProps *p, int type)
{
    size_t len;
    TRY(props_measure(p, type, &len));
    TRY(buf_reserve(out, len + 4));
    uint8_t *start = out->data + out->len;
    uint8_t *w = props_put(start, p, len);
    size_t prefix = varint_len(len);
    memmove(start, start + prefix, len);
    assert((size_t)(w - start) == prefix + len);
    out->len += len;
    return 0;
}

/* One property's value into *item (repeatable ones) or its field in *p. */
static int get_value(Reader *r, const PropDef *d, MqttProps *p, MqttPropItem *item)
{
    uint8_t b = 0;
    uint16_t s = 0;
    uint32_t n = 0;
    View v = {0};
    switch (d->type) {
    case PT_BYTE:
        TRY(get_u8(r, &b));
        n = b;
        break;
    case PT_U16:
        TRY(get_u16(r, &s));
        n = s;
        break;
    case PT_U32:
        TRY(get_u32(r, &n));
        break;
    case PT_VARINT:
        TRY(get_varint(r, &item->subid));
        n = item->subid;
        break;
    case PT_UTF8:
        TRY(get_string(r, &v));
        break;
    case PT_BINARY:
        TRY(get_binary(r, &v));
        break;
    default: /* PT_PAIR */
        TRY(get_string(r, &item->user.name));
        return get_string(r, &item->user.value);
    }
    TRY(check_value(d, n, v));
    if (p && !d->repeat) {
        void *f = (char *)p + d->offset;
        if (d->type == PT_BYTE) {
            *(uint8_t *)f = b;
        } else if (d->type == PT_U16) {
            *(uint16_t *)f = s;
        } else if (d->type == PT_U32) {
            *(uint32_t *)f = n;
        } else {
            *(View *)f = v;
        }
    }
    return 0;
}

int props_get(Reader *r, int type, MqttProps *ret)
{
    uint32_t len;
    TRY(get_varint(r, &len));
    if (len > reader_left(r)) {
        return -MQTT_E_LENGTH;
    }
    View block = VIEW(r->p, len);
    r->p += len;
    return mqtt_props_check(block, type, ret);
}

int mqtt_props_check(View block, int type, MqttProps *ret)
{
    MqttProps p = {.raw = block};
    if (block.n == 0) { /* (an empty view may have no pointer) */
        *ret = p;
        return 0;
    }
    Reader in = {block.p, block.p + block.n};
    while (in.p < in.end) {
        uint32_t id;
        TRY(get_varint(&in, &id));
        const PropDef *d = def_of(id);
        if (!d) {
            return -MQTT_E_PROPERTY;
        }
        if (!(d->packets & (1u << type))) {
            return -MQTT_E_PROPERTY_PACKET;
        }
        bool repeats =
            id == MQTT_PROP_USER || (id == MQTT_PROP_SUBSCRIPTION_ID && type == MQTT_PUBLISH);
        if ((p.has & MQTT_PROP_BIT(id)) && !repeats) {
            return -MQTT_E_PROPERTY_DUP;
        }
        MqttPropItem item;
        TRY(get_value(&in, d, &p, &item));
        p.has |= MQTT_PROP_BIT(id);
        p.n_user += id == MQTT_PROP_USER;
        p.n_subid += id == MQTT_PROP_SUBSCRIPTION_ID;
    }
    *ret = p;
    return 0;
}

int mqtt_props_next(View *raw, MqttPropItem *ret)
{
    if (raw->n == 0) { /* (an empty view may have no pointer) */
        return 0;
    }
    Reader r = {raw->p, raw->p + raw->n};
    uint32_t id;
    TRY(get_varint(&r, &id));
    const PropDef *d = def_of(id);
    if (!d) {
        return -MQTT_E_PROPERTY;
    }
    MqttPropItem item = {.id = (uint8_t)id};
    TRY(get_value(&r, d, NULL, &item));
    *raw = VIEW(r.p, (size_t)(r.end - r.p));
    *ret = item;
    return 1;
}

/* ---- reason codes ---- */

static const char *const reason_names[256] = {
    [0x00] = "Success",
    [0x01] = "Granted QoS 1",
    [0x02] = "Granted QoS 2",
    [0x04] = "Disconnect with Will Message",
    [0x10] = "No matching subscribers",
    [0x11] = "No subscription existed",
    [0x18] = "Continue authentication",
    [0x19] = "Re-authenticate",
    [0x80] = "Unspecified error",
    [0x81] = "Malformed Packet",
    [0x82] = "Protocol Error",
    [0x83] = "Implementation specific error",
    [0x84] = "Unsupported Protocol Version",
    [0x85] = "Client Identifier not valid",
    [0x86] = "Bad User Name or Password",
    [0x87] = "Not authorized",
    [0x88] = "Server unavailable",
    [0x89] = "Server busy",
    [0x8A] = "Banned",
    [0x8B] = "Server shutting down",
    [0x8C] = "Bad authentication method",
    [0x8D] = "Keep Alive timeout",
    [0x8E] = "Session taken over",
    [0x8F] = "Topic Filter invalid",
    [0x90] = "Topic Name invalid",
    [0x91] = "Packet Identifier in use",
    [0x92] = "Packet Identifier not found",
    [0x93] = "Receive Maximum exceeded",
    [0x94] = "Topic Alias invalid",
    [0x95] = "Packet too large",
    [0x96] = "Message rate too high",
    [0x97] = "Quota exceeded",
    [0x98] = "Administrative action",
    [0x99] = "Payload format invalid",
    [0x9A] = "Retain not supported",
    [0x9B] = "QoS not supported",
    [0x9C] = "Use another server",
    [0x9D] = "Server moved",
    [0x9E] = "Shared Subscriptions not supported",
    [0x9F] = "Connection rate exceeded",
    [0xA0] = "Maximum connect time",
    [0xA1] = "Subscription Identifiers not supported",
    [0xA2] = "Wildcard Subscriptions not supported",
};

const char *mqtt_reason_str(uint8_t code)
{
    return reason_names[code];
}

void mqtt_reason_describe(char *out, size_t n, uint8_t code, View text)
{
    const char *name = reason_names[code];
    snprintf(out, n, "%s (0x%02X)%s%.*s", name ? name : "reason", code, text.n ? ": " : "",
             (int)(text.n < n ? text.n : n), (const char *)text.p);
}

/* The reason codes each packet type may carry (MQTT 5, 2.4 and each packet's section). */
static const char connack_codes[] = "\x00\x80\x81\x82\x83\x84\x85\x86\x87\x88\x89\x8a\x8c\x90"
                                    "\x95\x97\x99\x9a\x9b\x9c\x9d\x9f";
static const char puback_codes[] = "\x00\x10\x80\x83\x87\x90\x91\x97\x99";
static const char pubrel_codes[] = "\x00\x92";
static const char suback_codes[] = "\x00\x01\x02\x80\x83\x87\x8f\x91\x97\x9e\xa1\xa2";
static const char unsuback_codes[] = "\x00\x11\x80\x83\x87\x8f\x91";
static const char disconnect_codes[] = "\x00\x04\x80\x81\x82\x83\x87\x89\x8b\x8d\x8e\x8f\x90\x93"
                                       "\x94\x95\x96\x97\x98\x99\x9a\x9b\x9c\x9d\x9e\x9f\xa0\xa1"
                                       "\xa2";
static const char auth_codes[] = "\x00\x18\x19";

#define CODES(s)                                                                                   \
    {                                                                                              \
        s, sizeof(s) - 1                                                                           \
    }

bool reason_allowed(int type, uint8_t code)
{
    static const struct {
        const char *codes;
        size_t n;
    } sets[16] = {
        [MQTT_CONNACK] = CODES(connack_codes),   [MQTT_PUBACK] = CODES(puback_codes),
        [MQTT_PUBREC] = CODES(puback_codes),     [MQTT_PUBREL] = CODES(pubrel_codes),
        [MQTT_PUBCOMP] = CODES(pubrel_codes),    [MQTT_SUBACK] = CODES(suback_codes),
        [MQTT_UNSUBACK] = CODES(unsuback_codes), [MQTT_DISCONNECT] = CODES(disconnect_codes),
        [MQTT_AUTH] = CODES(auth_codes),
    };
    if (type < 0 || type > 15) {
        return false;
    }
    return sets[type].codes && memchr(sets[type].codes, code, sets[type].n) != NULL;
}

uint8_t mqtt_error_reason(int negative_code)
{
    switch (-negative_code) {
    case MQTT_E_TOO_LARGE:
        return MQTT_RC_PACKET_TOO_LARGE;
    case MQTT_E_TOPIC_ALIAS:
    case MQTT_E_TOPIC_ALIAS_MAX:
        return MQTT_RC_TOPIC_ALIAS_INVALID;
    case MQTT_E_PROPERTY_DUP:
    case MQTT_E_PROPERTY_VALUE:
    case MQTT_E_REASON_CODE:
    case MQTT_E_PACKET_ID:
    case MQTT_E_TYPE:        /* a packet that has no business here */
    case MQTT_E_TOPIC_EMPTY: /* no topic and no alias */
        return MQTT_RC_PROTOCOL_ERROR;
    case MQTT_E_TOPIC_LONG:
    case MQTT_E_TOPIC_WILDCARD:
        return 0x90; /* Topic Name invalid */
    default:
        return MQTT_RC_MALFORMED_PACKET;
    }
}
