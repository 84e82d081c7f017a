/* SPDX-License-Identifier: MIT */
/*
 * The MQTT 3.1.1 codec: see codec.h. Encoding measures and validates a packet first, then
 * reserves its exact size and writes it, so a failed encode leaves the output untouched.
 * Decoding walks the body with a bounds-checked reader and insists the body is used exactly.
 */
#include "mqtt/codec.h"

#include <assert.h>
#include <errno.h>

#include "mqtt/topic.h"
#include "mqtt/wire.h"

static const char *const error_text[] = {
    [MQTT_E_VARINT - MQTT_E_FIRST] = "variable byte integer longer than 4 bytes or not minimal",
    [MQTT_E_TOO_LARGE - MQTT_E_FIRST] = "packet larger than the maximum packet size",
    [MQTT_E_TYPE - MQTT_E_FIRST] = "reserved packet type",
    [MQTT_E_FLAGS - MQTT_E_FIRST] = "invalid fixed-header flags",
    [MQTT_E_LENGTH - MQTT_E_FIRST] = "remaining length does not match the packet contents",
    [MQTT_E_PROTOCOL_NAME - MQTT_E_FIRST] = "protocol name is not MQTT",
    [MQTT_E_PROTOCOL_LEVEL - MQTT_E_FIRST] = "unsupported protocol level",
    [MQTT_E_CONNECT_FLAGS - MQTT_E_FIRST] = "invalid CONNECT flags",
    [MQTT_E_CONNACK_FLAGS - MQTT_E_FIRST] = "invalid CONNACK acknowledge flags",
    [MQTT_E_CONNACK_RC - MQTT_E_FIRST] = "unknown CONNACK return code",
    [MQTT_E_QOS - MQTT_E_FIRST] = "invalid QoS",
    [MQTT_E_PACKET_ID - MQTT_E_FIRST] = "packet identifier 0",
    [MQTT_E_UTF8 - MQTT_E_FIRST] = "string is not valid UTF-8 or contains U+0000",
    [MQTT_E_TOPIC_EMPTY - MQTT_E_FIRST] = "empty topic",
    [MQTT_E_TOPIC_LONG - MQTT_E_FIRST] = "topic longer than 65535 bytes",
    [MQTT_E_TOPIC_WILDCARD - MQTT_E_FIRST] = "topic name must not contain wildcards",
    [MQTT_E_FILTER - MQTT_E_FIRST] = "invalid topic filter",
    [MQTT_E_NO_TOPICS - MQTT_E_FIRST] = "empty topic list",
    [MQTT_E_SUB_OPTIONS - MQTT_E_FIRST] = "reserved bits set in requested QoS",
    [MQTT_E_SUBACK_RC - MQTT_E_FIRST] = "invalid SUBACK return code",
    [MQTT_E_STRING_LONG - MQTT_E_FIRST] = "string longer than 65535 bytes",
    [MQTT_E_PROPERTY - MQTT_E_FIRST] = "unknown property",
    [MQTT_E_PROPERTY_DUP - MQTT_E_FIRST] = "property appears more than once",
    [MQTT_E_PROPERTY_PACKET - MQTT_E_FIRST] = "property not allowed in this packet type",
    [MQTT_E_PROPERTY_VALUE - MQTT_E_FIRST] = "property value out of range",
    [MQTT_E_TOPIC_ALIAS - MQTT_E_FIRST] = "Topic Alias 0",
    [MQTT_E_TOPIC_ALIAS_MAX - MQTT_E_FIRST] = "Topic Alias above the maximum",
    [MQTT_E_REASON_CODE - MQTT_E_FIRST] = "reason code not defined for this packet type",
};

const char *mqtt_strerror(int negative_code)
{
    int c = -negative_code;
    if (c >= MQTT_E_FIRST && c < MQTT_E_LAST) {
        return error_text[c - MQTT_E_FIRST];
    }
    return strerror(c);
}

const char *mqtt_type_name(int type)
{
    static const char *const names[] = {
        "RESERVED", "CONNECT",  "CONNACK",    "PUBLISH", "PUBACK",      "PUBREC",
        "PUBREL",   "PUBCOMP",  "SUBSCRIBE",  "SUBACK",  "UNSUBSCRIBE", "UNSUBACK",
        "PINGREQ",  "PINGRESP", "DISCONNECT", "AUTH",
    };
    return type >= 0 && type < 16 ? names[type] : "?";
}

const char *mqtt_connack_str(int rc)
{
    static const char *const text[] = {
        "connection accepted", "unacceptable protocol version", "identifier rejected",
        "server unavailable",  "bad user name or password",     "not authorized",
    };
    return rc >= 0 && rc <= 5 ? text[rc] : "unknown CONNACK return code";
}

/* ---- encoding ---- */

/* 3.1.1: at least one code, each 0, 1, 2 or 0x80. MQTT 5: at least one, each defined for
 * `type` (SUBACK or UNSUBACK). */
static int check_codes(View codes, bool v5, int type)
{
    if (codes.n == 0) {
        return -MQTT_E_NO_TOPICS;
    }
    for (size_t i = 0; i < codes.n; i++) {
        if (v5 ? !reason_allowed(type, codes.p[i])
               : codes.p[i] > 2 && codes.p[i] != MQTT_SUBACK_FAILURE) {
            return v5 ? -MQTT_E_REASON_CODE : -MQTT_E_SUBACK_RC;
        }
    }
    return 0;
}

static int check_ack_id(uint16_t id)
{
    return id ? 0 : -MQTT_E_PACKET_ID;
}

static bool props_empty(const MqttProps *p)
{
    return !p->has && !p->n_user && !p->n_subid && !p->block.n;
}

/* Measuring: validates what the encoder will write and sizes it. `Sizes` carries the
 * property blocks' lengths from measuring to writing. */
typedef struct Sizes {
    bool v5;
    size_t props, will_props; /* property block contents, without their length */
} Sizes;

/* The property block of pkt (type `type`) in MQTT 5: its length, prefix included, added to
 * *n. In 3.1.1 a packet must carry none. */
static int measure_props(const MqttProps *p, int type, Sizes *z, size_t *slot, size_t *n)
{
    if (!z->v5) {
        return props_empty(p) ? 0 : -MQTT_E_PROPERTY_PACKET;
    }
    TRY(props_measure(p, type, slot));
    *n += varint_len(*slot) + *slot;
    return 0;
}

static int measure_will(const MqttConnect *c, Sizes *z, size_t *n)
{
    TRY(mqtt_topic_check(c->will_topic));
    if (c->will_qos > 2) {
        return -MQTT_E_QOS;
    }
    if (c->will_payload.n > 65535) {
        return -MQTT_E_STRING_LONG;
    }
    *n += 2 + c->will_topic.n + 2 + c->will_payload.n;
    return measure_props(&c->will_props, 0, z, &z->will_props, n);
}

static int measure_connect(const MqttPacket *pkt, Sizes *z, size_t *ret_len)
{
    const MqttConnect *c = &pkt->connect;
    size_t n = 10; /* protocol name, level, flags, keepalive */
    TRY(measure_props(&pkt->props, MQTT_CONNECT, z, &z->props, &n));
    TRY(check_string(c->client_id));
    n += 2 + c->client_id.n;
    if (c->will) {
        TRY(measure_will(c, z, &n));
    }
    if (c->has_password && !c->has_username && !z->v5) {
        return -MQTT_E_CONNECT_FLAGS; /* MQTT 5 allows a password alone */
    }
    if (c->has_username) {
        TRY(check_string(c->username));
        n += 2 + c->username.n;
    }
    if (c->has_password) {
        if (c->password.n > 65535) {
            return -MQTT_E_STRING_LONG;
        }
        n += 2 + c->password.n;
    }
    *ret_len = n;
    return 0;
}

static int measure_connack(const MqttPacket *pkt, Sizes *z, size_t *ret_len)
{
    const MqttConnack *c = &pkt->connack;
    if (z->v5 ? !reason_allowed(MQTT_CONNACK, c->rc) : c->rc > 5) {
        return z->v5 ? -MQTT_E_REASON_CODE : -MQTT_E_CONNACK_RC;
    }
    if (c->session_present && c->rc != 0) {
        return -MQTT_E_CONNACK_FLAGS;
    }
    *ret_len = 2;
    return measure_props(&pkt->props, MQTT_CONNACK, z, &z->props, ret_len);
}

/* A PUBLISH's variable header in 3.1.1: topic length and topic, then the packet id at QoS
 * 1/2. */
static size_t publish_head(View topic, uint8_t qos)
{
    return 2 + topic.n + (qos ? 2 : 0);
}

size_t mqtt_publish_size(View topic, size_t payload_len, uint8_t qos)
{
    size_t rem = publish_head(topic, qos);
    if (payload_len > MQTT_VARINT_MAX - rem) {
        return MQTT_PACKET_MAX + 1; /* more than MQTT can carry, without overflowing */
    }
    rem += payload_len;
    return 1 + varint_len(rem) + rem;
}

static int measure_publish(const MqttPacket *pkt, Sizes *z, size_t *ret_len)
{
    const MqttPublish *p = &pkt->publish;
    /* MQTT 5: an empty topic stands for the one its Topic Alias names. */
    bool aliased = z->v5 && !p->topic.n && MQTT_HAS(&pkt->props, MQTT_PROP_TOPIC_ALIAS);
    if (!aliased) {
        TRY(mqtt_topic_check(p->topic));
    }
    if (p->qos > 2) {
        return -MQTT_E_QOS;
    }
    if (p->qos == 0 && p->dup) {
        return -MQTT_E_FLAGS;
    }
    if (p->qos > 0 && p->id == 0) {
        return -MQTT_E_PACKET_ID;
    }
    size_t n = publish_head(p->topic, p->qos);
    if (z->v5 || !props_empty(&pkt->props)) { /* (3.1.1's common case without a call) */
        TRY(measure_props(&pkt->props, MQTT_PUBLISH, z, &z->props, &n));
    }
    if (p->payload.n > MQTT_VARINT_MAX - n) {
        return -MQTT_E_TOO_LARGE;
    }
    *ret_len = n + p->payload.n;
    return 0;
}

/* MQTT 5's optional tail of PUBACK..PUBCOMP, DISCONNECT and AUTH: a reason code, then
 * properties, each left out when it and what follows are empty (0x00, none). */
static int measure_reason_tail(const MqttPacket *pkt, Sizes *z, size_t *n)
{
    if (!z->v5) {
        return props_empty(&pkt->props) && !pkt->ack.reason ? 0 : -MQTT_E_PROPERTY_PACKET;
    }
    if (!reason_allowed(pkt->type, pkt->ack.reason)) {
        return -MQTT_E_REASON_CODE;
    }
    if (props_empty(&pkt->props)) {
        *n += pkt->ack.reason != 0;
        return 0;
    }
    *n += 1;
    return measure_props(&pkt->props, pkt->type, z, &z->props, n);
}

/* PUBACK, PUBREC, PUBREL, PUBCOMP. */
static int measure_ack(const MqttPacket *pkt, Sizes *z, size_t *ret_len)
{
    TRY(check_ack_id(pkt->ack.id));
    *ret_len = 2;
    return measure_reason_tail(pkt, z, ret_len);
}

static uint8_t sub_options(const MqttTopicReq *t)
{
    return (uint8_t)(t->qos | t->no_local << 2 | t->retain_as_published << 3 |
                     t->retain_handling << 4);
}

/* SUBSCRIBE (`sub`: each filter followed by its options byte) and UNSUBSCRIBE. */
static int measure_topic_list(const MqttPacket *pkt, bool sub, Sizes *z, size_t *ret_len)
{
    const MqttSubscribe *s = &pkt->subscribe;
    TRY(check_ack_id(s->id));
    if (s->count == 0) {
        return -MQTT_E_NO_TOPICS;
    }
    size_t n = 2;
    TRY(measure_props(&pkt->props, pkt->type, z, &z->props, &n));
    for (size_t i = 0; i < s->count; i++) {
        const MqttTopicReq *t = &s->topics[i];
        TRY(mqtt_filter_check(t->filter));
        if (sub && t->qos > 2) {
            return -MQTT_E_QOS;
        }
        if (sub && (z->v5 ? t->retain_handling > 2 : sub_options(t) != t->qos)) {
            return -MQTT_E_SUB_OPTIONS;
        }
        n += 2 + t->filter.n + sub;
        if (n > MQTT_VARINT_MAX) {
            return -MQTT_E_TOO_LARGE;
        }
    }
    *ret_len = n;
    return 0;
}

/* SUBACK, and UNSUBACK (3.1.1: a packet id only). */
static int measure_suback(const MqttPacket *pkt, Sizes *z, size_t *ret_len)
{
    const MqttSuback *s = &pkt->suback;
    size_t n = 2;
    TRY(check_ack_id(s->id));
    if (pkt->type == MQTT_UNSUBACK && !z->v5) {
        *ret_len = n;
        return s->codes.n ? -MQTT_E_LENGTH : 0;
    }
    TRY(check_codes(s->codes, z->v5, pkt->type));
    TRY(measure_props(&pkt->props, pkt->type, z, &z->props, &n));
    if (s->codes.n > MQTT_VARINT_MAX - n) {
        return -MQTT_E_TOO_LARGE;
    }
    *ret_len = n + s->codes.n;
    return 0;
}

static int measure_body(const MqttPacket *pkt, Sizes *z, size_t *n)
{
    switch (pkt->type) {
    case MQTT_CONNECT:
        return measure_connect(pkt, z, n);
    case MQTT_CONNACK:
        return measure_connack(pkt, z, n);
    case MQTT_PUBLISH:
        return measure_publish(pkt, z, n);
    case MQTT_PUBACK:
    case MQTT_PUBREC:
    case MQTT_PUBREL:
    case MQTT_PUBCOMP:
        return measure_ack(pkt, z, n);
    case MQTT_SUBSCRIBE:
    case MQTT_UNSUBSCRIBE:
        return measure_topic_list(pkt, pkt->type == MQTT_SUBSCRIBE, z, n);
    case MQTT_SUBACK:
    case MQTT_UNSUBACK:
        return measure_suback(pkt, z, n);
    case MQTT_PINGREQ:
    case MQTT_PINGRESP:
        *n = 0;
        return 0;
    case MQTT_DISCONNECT:
    case MQTT_AUTH:
        if (pkt->type == MQTT_AUTH && !z->v5) {
            return -MQTT_E_TYPE;
        }
        *n = 0;
        return measure_reason_tail(pkt, z, n);
    default:
        return -MQTT_E_TYPE;
    }
}

/* Validate `pkt`, compute its first byte and remaining length. */
static int measure(const MqttPacket *pkt, Sizes *z, uint8_t *ret_first, size_t *ret_len)
{
    *z = (Sizes){.v5 = pkt->version == MQTT_V5};
    if (pkt->version && pkt->version != MQTT_V311 && pkt->version != MQTT_V5) {
        return -MQTT_E_PROTOCOL_LEVEL;
    }
    size_t n = 0;
    TRY(measure_body(pkt, z, &n));
    if (n > MQTT_VARINT_MAX) {
        return -MQTT_E_TOO_LARGE;
    }
    uint8_t flags = 0;
    if (pkt->type == MQTT_PUBLISH) {
        const MqttPublish *p = &pkt->publish;
        flags = (uint8_t)(p->dup << 3 | p->qos << 1 | p->retain);
    } else if (pkt->type == MQTT_PUBREL || pkt->type == MQTT_SUBSCRIBE ||
               pkt->type == MQTT_UNSUBSCRIBE) {
        flags = 2;
    }
    *ret_first = (uint8_t)(pkt->type << 4 | flags);
    *ret_len = n;
    return 0;
}

static uint8_t *put_connect(uint8_t *w, const MqttPacket *pkt, const Sizes *z)
{
    const MqttConnect *c = &pkt->connect;
    uint8_t flags = (uint8_t)(c->has_username << 7 | c->has_password << 6 | c->clean_session << 1);
    if (c->will) {
        flags |= (uint8_t)(c->will_retain << 5 | c->will_qos << 3 | 1 << 2);
    }
    w = put_string(w, VIEW_STR("MQTT"));
    *w++ = z->v5 ? MQTT_V5 : MQTT_V311;
    *w++ = flags;
    w = put_u16(w, c->keepalive);
    if (z->v5) {
        w = props_put(w, &pkt->props, z->props);
    }
    w = put_string(w, c->client_id);
    if (c->will) {
        if (z->v5) {
            w = props_put(w, &c->will_props, z->will_props);
        }
        w = put_string(w, c->will_topic);
        w = put_string(w, c->will_payload);
    }
    if (c->has_username) {
        w = put_string(w, c->username);
    }
    if (c->has_password) {
        w = put_string(w, c->password);
    }
    return w;
}

/* The reason code and properties measure_reason_tail sized. */
static uint8_t *put_reason_tail(uint8_t *w, const MqttPacket *pkt, const Sizes *z)
{
    if (!z->v5 || (props_empty(&pkt->props) && !pkt->ack.reason)) {
        return w;
    }
    *w++ = pkt->ack.reason;
    return props_empty(&pkt->props) ? w : props_put(w, &pkt->props, z->props);
}

static uint8_t *put_topic_list(uint8_t *w, const MqttPacket *pkt, const Sizes *z)
{
    w = put_u16(w, pkt->subscribe.id);
    if (z->v5) {
        w = props_put(w, &pkt->props, z->props);
    }
    for (size_t i = 0; i < pkt->subscribe.count; i++) {
        const MqttTopicReq *t = &pkt->subscribe.topics[i];
        w = put_string(w, t->filter);
        if (pkt->type == MQTT_SUBSCRIBE) {
            *w++ = sub_options(t);
        }
    }
    return w;
}

/* Write the body `measure` validated and sized. */
static uint8_t *put_body(uint8_t *w, const MqttPacket *pkt, const Sizes *z)
{
    switch (pkt->type) {
    case MQTT_CONNECT:
        return put_connect(w, pkt, z);
    case MQTT_CONNACK:
        *w++ = pkt->connack.session_present;
        *w++ = pkt->connack.rc;
        return z->v5 ? props_put(w, &pkt->props, z->props) : w;
    case MQTT_PUBLISH:
        w = put_string(w, pkt->publish.topic);
        if (pkt->publish.qos) {
            w = put_u16(w, pkt->publish.id);
        }
        if (z->v5) {
            w = props_put(w, &pkt->props, z->props);
        }
        return put_bytes(w, pkt->publish.payload);
    case MQTT_PUBACK:
    case MQTT_PUBREC:
    case MQTT_PUBREL:
    case MQTT_PUBCOMP:
        return put_reason_tail(put_u16(w, pkt->ack.id), pkt, z);
    case MQTT_SUBSCRIBE:
    case MQTT_UNSUBSCRIBE:
        return put_topic_list(w, pkt, z);
    case MQTT_SUBACK:
    case MQTT_UNSUBACK:
        w = put_u16(w, pkt->suback.id);
        if (z->v5) {
            w = props_put(w, &pkt->props, z->props);
        }
        return put_bytes(w, pkt->suback.codes);
    case MQTT_DISCONNECT:
    case MQTT_AUTH:
        return put_reason_tail(w, pkt, z);
    default: /* PINGREQ, PINGRESP */
        return w;
    }
}

long long mqtt_packet_size(const MqttPacket *pkt)
{
    Sizes z;
    uint8_t first;
    size_t len;
    TRY(measure(pkt, &z, &first, &len));
    return (long long)(1 + varint_len(len) + len);
}

int mqtt_encode(Buf *out, const MqttPacket *pkt)
{
    Sizes z;
    uint8_t first;
    size_t len;
    TRY(measure(pkt, &z, &first, &len));
    size_t total = 1 + varint_len(len) + len;
    TRY(buf_reserve(out, total));
    uint8_t *w = out->data + out->len;
    *w++ = first;
    w = put_varint(w, len);
    w = put_body(w, pkt, &z);
    assert(w == out->data + out->len + total); /* measure and put_body agree */
    out->len += total;
    return 0;
}

/* ---- decoding ---- */

static int get_id(Reader *r, uint16_t *ret)
{
    TRY(get_u16(r, ret));
    return *ret ? 0 : -MQTT_E_PACKET_ID;
}

static View rest(Reader *r)
{
    View v = VIEW(r->p, reader_left(r));
    r->p = r->end;
    return v;
}

static int decode_connect_flags(uint8_t flags, bool v5, MqttConnect *c)
{
    c->has_username = flags & 0x80;
    c->has_password = flags & 0x40;
    c->will_retain = flags & 0x20;
    c->will_qos = (flags >> 3) & 3;
    c->will = flags & 0x04;
    c->clean_session = flags & 0x02;
    if ((flags & 0x01) || (!c->will && (c->will_qos || c->will_retain)) ||
        (c->has_password && !c->has_username && !v5)) {
        return -MQTT_E_CONNECT_FLAGS;
    }
    return c->will_qos == 3 ? -MQTT_E_QOS : 0;
}

static int decode_connect(Reader *r, MqttPacket *pkt)
{
    MqttConnect *c = &pkt->connect;
    View name;
    uint8_t level, flags;

    TRY(get_binary(r, &name));
    if (!view_eq_str(name, "MQTT")) {
        return -MQTT_E_PROTOCOL_NAME;
    }
    TRY(get_u8(r, &level));
    if (level != MQTT_V311 && level != MQTT_V5) {
        return -MQTT_E_PROTOCOL_LEVEL;
    }
    bool v5 = level == MQTT_V5;
    pkt->version = level;
    TRY(get_u8(r, &flags));
    TRY(decode_connect_flags(flags, v5, c));
    TRY(get_u16(r, &c->keepalive));
    if (v5) {
        TRY(props_get(r, MQTT_CONNECT, &pkt->props));
    }
    TRY(get_string(r, &c->client_id));
    if (c->will) {
        if (v5) {
            TRY(props_get(r, 0, &c->will_props));
        }
        TRY(get_binary(r, &c->will_topic));
        TRY(mqtt_topic_check(c->will_topic));
        TRY(get_binary(r, &c->will_payload));
    }
    if (c->has_username) {
        TRY(get_string(r, &c->username));
    }
    if (c->has_password) {
        TRY(get_binary(r, &c->password));
    }
    return 0;
}

static int check_options(uint8_t q, bool v5)
{
    if (q & (v5 ? 0xc0 : 0xfc)) {
        return -MQTT_E_SUB_OPTIONS;
    }
    if ((q & 3) == 3) {
        return -MQTT_E_QOS;
    }
    return (q >> 4 & 3) == 3 ? -MQTT_E_SUB_OPTIONS : 0; /* Retain Handling 3 */
}

static int decode_topic_list(Reader *r, MqttPacket *pkt, bool v5, bool has_qos)
{
    TRY(get_id(r, &pkt->subscribe.id));
    if (v5) {
        TRY(props_get(r, pkt->type, &pkt->props));
    }
    pkt->subscribe.list = VIEW(r->p, reader_left(r));
    pkt->subscribe.topics = NULL;
    pkt->subscribe.count = 0;
    while (r->p < r->end) {
        View filter;
        TRY(get_binary(r, &filter));
        TRY(mqtt_filter_check(filter));
        if (has_qos) {
            uint8_t q;
            TRY(get_u8(r, &q));
            TRY(check_options(q, v5));
        }
        pkt->subscribe.count++;
    }
    return pkt->subscribe.count ? 0 : -MQTT_E_NO_TOPICS;
}

static int decode_connack(Reader *r, bool v5, MqttPacket *pkt)
{
    uint8_t ack;
    TRY(get_u8(r, &ack));
    TRY(get_u8(r, &pkt->connack.rc));
    pkt->connack.session_present = ack & 1;
    if (ack & 0xfe) {
        return -MQTT_E_CONNACK_FLAGS;
    }
    if (v5 ? !reason_allowed(MQTT_CONNACK, pkt->connack.rc) : pkt->connack.rc > 5) {
        return v5 ? -MQTT_E_REASON_CODE : -MQTT_E_CONNACK_RC;
    }
    if (pkt->connack.session_present && pkt->connack.rc) {
        return -MQTT_E_CONNACK_FLAGS;
    }
    return v5 ? props_get(r, MQTT_CONNACK, &pkt->props) : 0;
}

static int decode_publish(Reader *r, uint8_t flags, bool v5, MqttPacket *pkt)
{
    MqttPublish *p = &pkt->publish;
    p->dup = flags & 8;
    p->qos = (flags >> 1) & 3;
    p->retain = flags & 1;
    p->id = 0;
    TRY(get_binary(r, &p->topic));
    if (p->qos) {
        TRY(get_id(r, &p->id));
    }
    if (v5) {
        TRY(props_get(r, MQTT_PUBLISH, &pkt->props));
    }
    /* MQTT 5: an empty topic stands for the one its Topic Alias names (the session's part). */
    if (!(v5 && !p->topic.n && MQTT_HAS(&pkt->props, MQTT_PROP_TOPIC_ALIAS))) {
        TRY(mqtt_topic_check(p->topic));
    }
    p->payload = rest(r);
    return 0;
}

/* MQTT 5: an optional reason code, then optional properties. */
static int decode_reason_tail(Reader *r, bool v5, MqttPacket *pkt)
{
    if (!v5 || r->p == r->end) {
        return 0;
    }
    TRY(get_u8(r, &pkt->ack.reason));
    if (!reason_allowed(pkt->type, pkt->ack.reason)) {
        return -MQTT_E_REASON_CODE;
    }
    return r->p == r->end ? 0 : props_get(r, pkt->type, &pkt->props);
}

static int decode_suback(Reader *r, bool v5, MqttPacket *pkt)
{
    TRY(get_id(r, &pkt->suback.id));
    if (v5) {
        TRY(props_get(r, pkt->type, &pkt->props));
    }
    pkt->suback.codes = rest(r);
    if (pkt->type == MQTT_UNSUBACK && !v5) {
        return pkt->suback.codes.n ? -MQTT_E_LENGTH : 0;
    }
    return check_codes(pkt->suback.codes, v5, pkt->type);
}

static int decode_body(Reader *r, uint8_t flags, bool v5, MqttPacket *pkt)
{
    switch (pkt->type) {
    case MQTT_CONNECT:
        return decode_connect(r, pkt);
    case MQTT_CONNACK:
        return decode_connack(r, v5, pkt);
    case MQTT_PUBLISH:
        return decode_publish(r, flags, v5, pkt);
    case MQTT_PUBACK:
    case MQTT_PUBREC:
    case MQTT_PUBREL:
    case MQTT_PUBCOMP:
        TRY(get_id(r, &pkt->ack.id));
        return decode_reason_tail(r, v5, pkt);
    case MQTT_SUBSCRIBE:
    case MQTT_UNSUBSCRIBE:
        return decode_topic_list(r, pkt, v5, pkt->type == MQTT_SUBSCRIBE);
    case MQTT_SUBACK:
    case MQTT_UNSUBACK:
        return decode_suback(r, v5, pkt);
    case MQTT_DISCONNECT:
    case MQTT_AUTH:
        return decode_reason_tail(r, v5, pkt);
    default: /* PINGREQ, PINGRESP: no body */
        return 0;
    }
}

/* Flags the fixed header must carry (PUBLISH: checked apart). */
static int check_flags(int type, uint8_t flags)
{
    if (type == MQTT_PUBLISH) {
        uint8_t qos = (flags >> 1) & 3;
        if (qos == 3) {
            return -MQTT_E_QOS;
        }
        return qos == 0 && (flags & 8) ? -MQTT_E_FLAGS : 0;
    }
    uint8_t want = type == MQTT_PUBREL || type == MQTT_SUBSCRIBE || type == MQTT_UNSUBSCRIBE;
    return flags == (want << 1) ? 0 : -MQTT_E_FLAGS;
}

/* Types whose body size the fixed header already says is wrong: fail before waiting for
 * bytes that need not come. */
static bool length_possible(int type, bool v5, size_t len)
{
    switch (type) {
    case MQTT_PINGREQ:
    case MQTT_PINGRESP:
        return len == 0;
    case MQTT_CONNACK:
        return v5 ? len >= 2 : len == 2;
    case MQTT_PUBACK:
    case MQTT_PUBREC:
    case MQTT_PUBREL:
    case MQTT_PUBCOMP:
        return v5 ? len >= 2 : len == 2;
    case MQTT_UNSUBACK:
        return v5 ? len >= 3 : len == 2;
    case MQTT_DISCONNECT:
        return v5 || len == 0;
    default:
        return true;
    }
}

/* Clear what decode_body does not always write, and no more: most of a packet is room for
 * MQTT 5 that a 3.1.1 packet never touches, and clearing it all would double the cost of
 * decoding a PUBLISH. Properties: empty (MQTT 5 fills in what it finds); acks: reason 0;
 * CONNECT: its optional fields. The other types' decoders write every field. */
static void start_packet(MqttPacket *p, int type, bool v5)
{
    p->type = (enum mqtt_type)type;
    p->version = v5 ? MQTT_V5 : MQTT_V311;
    if (v5) {
        p->props = (MqttProps){0};
    } else {
        p->props.has = 0;
        p->props.n_user = p->props.n_subid = 0;
        p->props.raw = p->props.reason_string = p->props.block = VIEW_NULL; /* (read by some) */
    }
    if (type == MQTT_CONNECT) {
        p->connect = (MqttConnect){0};
    } else if ((type >= MQTT_PUBACK && type <= MQTT_PUBCOMP) || type >= MQTT_DISCONNECT) {
        p->ack = (MqttAck){0};
    }
}

/* The remaining length at in[1..]: 1 with *len and *hdr (fixed header size), 0 for more. */
static int get_remaining(View in, size_t *len, size_t *hdr)
{
    size_t n = 0, i = 1;
    for (;;) {
        if (i == 5) {
            return -MQTT_E_VARINT;
        }
        if (i >= in.n) {
            return 0;
        }
        uint8_t b = in.p[i];
        n |= (size_t)(b & 0x7f) << (7 * (i - 1));
        i++;
        if (!(b & 0x80)) {
            break;
        }
    }
    *len = n;
    *hdr = i;
    return 1;
}

int mqtt_decode(View in, uint8_t version, size_t max_size, MqttPacket *ret_pkt)
{
    if (in.n == 0) {
        return 0;
    }
    bool v5 = version == MQTT_V5;
    int type = in.p[0] >> 4;
    uint8_t flags = in.p[0] & 0x0f;
    if (type == 0 || (type == MQTT_AUTH && !v5)) {
        return -MQTT_E_TYPE;
    }
    TRY(check_flags(type, flags));
    size_t len, hdr;
    int r = get_remaining(in, &len, &hdr);
    if (r <= 0) {
        return r;
    }
    if (v5 && hdr > 2 && in.p[hdr - 1] == 0) {
        return -MQTT_E_VARINT; /* MQTT 5 (1.5.5): a variable byte integer in its shortest form */
    }
    size_t total = hdr + len;
    if (total > (max_size ? max_size : MQTT_PACKET_MAX)) {
        return -MQTT_E_TOO_LARGE;
    }
    if (!length_possible(type, v5, len)) {
        return -MQTT_E_LENGTH;
    }
    if (in.n < total) {
        return 0;
    }
    /* A CONNACK without properties answers an MQTT 5 CONNECT from a broker that speaks only
     * 3.1.1 (its return code 1 refuses the version): decoded as what it is. */
    if (v5 && type == MQTT_CONNACK && len == 2) {
        v5 = false;
    }
    MqttPacket *pkt = ret_pkt;
    start_packet(pkt, type, v5);
    pkt->size = total;
    Reader rd = {in.p + hdr, in.p + total};
    TRY(decode_body(&rd, flags, v5, pkt));
    return rd.p == rd.end ? 1 : -MQTT_E_LENGTH;
}

int mqtt_topic_list_next(View *list, bool has_qos, MqttTopicReq *ret)
{
    Reader r = {list->p, list->p + list->n};
    MqttTopicReq t = {0};
    if (r.p == r.end) {
        return 0;
    }
    uint8_t options = 0;
    if (get_binary(&r, &t.filter) < 0 || (has_qos && get_u8(&r, &options) < 0)) {
        return -MQTT_E_LENGTH;
    }
    t.qos = options & 3;
    t.no_local = options & 4;
    t.retain_as_published = options & 8;
    t.retain_handling = options >> 4 & 3;
    *list = VIEW(r.p, (size_t)(r.end - r.p));
    *ret = t;
    return 1;
}

/* ---- incremental decoder ---- */

void mqtt_decoder_init(MqttDecoder *d, size_t max_size)
{
    *d = (MqttDecoder){.max_size = max_size, .version = MQTT_V311};
}

void mqtt_decoder_free(MqttDecoder *d)
{
    buf_free(&d->in);
}

int mqtt_decoder_feed(MqttDecoder *d, const void *p, size_t n)
{
    return buf_append(&d->in, p, n);
}

uint8_t *mqtt_decoder_space(MqttDecoder *d, size_t want)
{
    if (buf_reserve(&d->in, want) < 0) {
        return NULL;
    }
    return d->in.data + d->in.len;
}

void mqtt_decoder_commit(MqttDecoder *d, size_t n)
{
    d->in.len += n;
}

int mqtt_decoder_next(MqttDecoder *d, MqttPacket *ret_pkt)
{
    View in = buf_view(&d->in);
    int r = mqtt_decode(in, d->version, d->max_size, ret_pkt);
    if (r > 0) {
        /* Only offsets move: the packet's Views stay valid until the next feed. */
        d->last = VIEW(in.p, ret_pkt->size);
        buf_consume(&d->in, ret_pkt->size);
    }
    return r;
}
