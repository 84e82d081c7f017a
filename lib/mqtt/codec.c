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
#include "utf8.h"

#define MQTT_REMAINING_MAX 268435455u

static const char *const error_text[] = {
    [MQTT_E_VARINT - MQTT_E_FIRST] = "remaining length longer than 4 bytes",
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
        "RESERVED", "CONNECT",  "CONNACK",    "PUBLISH",  "PUBACK",      "PUBREC",
        "PUBREL",   "PUBCOMP",  "SUBSCRIBE",  "SUBACK",   "UNSUBSCRIBE", "UNSUBACK",
        "PINGREQ",  "PINGRESP", "DISCONNECT", "RESERVED",
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

static size_t varint_len(size_t n)
{
    return n < 128 ? 1 : n < 16384 ? 2 : n < 2097152 ? 3 : 4;
}

static uint8_t *put_varint(uint8_t *w, size_t n)
{
    do {
        uint8_t b = n & 0x7f;
        n >>= 7;
        *w++ = n ? b | 0x80 : b;
    } while (n);
    return w;
}

static uint8_t *put_u16(uint8_t *w, uint16_t v)
{
    *w++ = (uint8_t)(v >> 8);
    *w++ = (uint8_t)v;
    return w;
}

static uint8_t *put_bytes(uint8_t *w, View v)
{
    if (v.n) {
        memcpy(w, v.p, v.n);
    }
    return w + v.n;
}

static uint8_t *put_string(uint8_t *w, View v)
{
    return put_bytes(put_u16(w, (uint16_t)v.n), v);
}

static int check_string(View s)
{
    if (s.n > 65535) {
        return -MQTT_E_STRING_LONG;
    }
    return utf8_valid(s, false) ? 0 : -MQTT_E_UTF8;
}

/* At least one code, each 0, 1, 2 or 0x80. */
static int check_suback_codes(View codes)
{
    if (codes.n == 0) {
        return -MQTT_E_NO_TOPICS;
    }
    for (size_t i = 0; i < codes.n; i++) {
        if (codes.p[i] > 2 && codes.p[i] != MQTT_SUBACK_FAILURE) {
            return -MQTT_E_SUBACK_RC;
        }
    }
    return 0;
}

static int check_ack_id(uint16_t id)
{
    return id ? 0 : -MQTT_E_PACKET_ID;
}

/* Measuring: one function per packet type (group), each validating what the encoder will
 * write and returning its remaining length in *ret_len (written only on success). */

static int measure_connect(const MqttConnect *c, size_t *ret_len)
{
    size_t n = 10; /* protocol name, level, flags, keepalive */
    int r = check_string(c->client_id);
    if (r < 0) {
        return r;
    }
    n += 2 + c->client_id.n;
    if (c->will) {
        if ((r = mqtt_topic_check(c->will_topic)) < 0) {
            return r;
        }
        if (c->will_qos > 2) {
            return -MQTT_E_QOS;
        }
        if (c->will_payload.n > 65535) {
            return -MQTT_E_STRING_LONG;
        }
        n += 2 + c->will_topic.n + 2 + c->will_payload.n;
    }
    if (c->has_password && !c->has_username) {
        return -MQTT_E_CONNECT_FLAGS;
    }
    if (c->has_username) {
        if ((r = check_string(c->username)) < 0) {
            return r;
        }
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

static int measure_connack(const MqttConnack *c, size_t *ret_len)
{
    if (c->rc > 5) {
        return -MQTT_E_CONNACK_RC;
    }
    if (c->session_present && c->rc != 0) {
        return -MQTT_E_CONNACK_FLAGS;
    }
    *ret_len = 2;
    return 0;
}

/* A PUBLISH's variable header: topic length and topic, then the packet id at QoS 1/2. */
static size_t publish_head(View topic, uint8_t qos)
{
    return 2 + topic.n + (qos ? 2 : 0);
}

size_t mqtt_publish_size(View topic, size_t payload_len, uint8_t qos)
{
    size_t rem = publish_head(topic, qos);
    if (payload_len > MQTT_REMAINING_MAX - rem) {
        return MQTT_PACKET_MAX + 1; /* more than MQTT can carry, without overflowing */
    }
    rem += payload_len;
    return 1 + varint_len(rem) + rem;
}

static int measure_publish(const MqttPublish *p, size_t *ret_len)
{
    int r = mqtt_topic_check(p->topic);
    if (r < 0) {
        return r;
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
    if (p->payload.n > MQTT_REMAINING_MAX - n) {
        return -MQTT_E_TOO_LARGE;
    }
    *ret_len = n + p->payload.n;
    return 0;
}

/* PUBACK, PUBREC, PUBREL, PUBCOMP, UNSUBACK: a packet id only. */
static int measure_ack(const MqttAck *a, size_t *ret_len)
{
    int r = check_ack_id(a->id);
    if (r < 0) {
        return r;
    }
    *ret_len = 2;
    return 0;
}

/* SUBSCRIBE (`sub`: each filter followed by its QoS byte) and UNSUBSCRIBE. */
static int measure_topic_list(const MqttSubscribe *s, bool sub, size_t *ret_len)
{
    int r = check_ack_id(s->id);
    if (r < 0) {
        return r;
    }
    if (s->count == 0) {
        return -MQTT_E_NO_TOPICS;
    }
    size_t n = 2;
    for (size_t i = 0; i < s->count; i++) {
        const MqttTopicReq *t = &s->topics[i];
        if ((r = mqtt_filter_check(t->filter)) < 0) {
            return r;
        }
        if (sub && t->qos > 2) {
            return -MQTT_E_QOS;
        }
        n += 2 + t->filter.n + sub;
        if (n > MQTT_REMAINING_MAX) {
            return -MQTT_E_TOO_LARGE;
        }
    }
    *ret_len = n;
    return 0;
}

static int measure_suback(const MqttSuback *s, size_t *ret_len)
{
    int r = check_ack_id(s->id);
    if (r < 0 || (r = check_suback_codes(s->codes)) < 0) {
        return r;
    }
    if (s->codes.n > MQTT_REMAINING_MAX - 2) {
        return -MQTT_E_TOO_LARGE;
    }
    *ret_len = 2 + s->codes.n;
    return 0;
}

/* Validate `pkt`, compute its first byte and remaining length. */
static int measure(const MqttPacket *pkt, uint8_t *ret_first, size_t *ret_len)
{
    uint8_t flags = 0;
    size_t n = 0;
    int r;

    switch (pkt->type) {
    case MQTT_CONNECT:
        r = measure_connect(&pkt->connect, &n);
        break;
    case MQTT_CONNACK:
        r = measure_connack(&pkt->connack, &n);
        break;
    case MQTT_PUBLISH: {
        const MqttPublish *p = &pkt->publish;
        r = measure_publish(p, &n);
        flags = (uint8_t)(p->dup << 3 | p->qos << 1 | p->retain);
        break;
    }
    case MQTT_PUBREL:
        flags = 2;
        /* fall through */
    case MQTT_PUBACK:
    case MQTT_PUBREC:
    case MQTT_PUBCOMP:
    case MQTT_UNSUBACK:
        r = measure_ack(&pkt->ack, &n);
        break;
    case MQTT_SUBSCRIBE:
    case MQTT_UNSUBSCRIBE:
        flags = 2;
        r = measure_topic_list(&pkt->subscribe, pkt->type == MQTT_SUBSCRIBE, &n);
        break;
    case MQTT_SUBACK:
        r = measure_suback(&pkt->suback, &n);
        break;
    case MQTT_PINGREQ:
    case MQTT_PINGRESP:
    case MQTT_DISCONNECT:
        r = 0; /* no body */
        break;
    default:
        return -MQTT_E_TYPE;
    }
    if (r < 0) {
        return r;
    }
    *ret_first = (uint8_t)(pkt->type << 4 | flags);
    *ret_len = n;
    return 0;
}

static uint8_t *put_connect(uint8_t *w, const MqttConnect *c)
{
    uint8_t flags = (uint8_t)(c->has_username << 7 | c->has_password << 6 | c->clean_session << 1);
    if (c->will) {
        flags |= (uint8_t)(c->will_retain << 5 | c->will_qos << 3 | 1 << 2);
    }
    w = put_string(w, VIEW_STR("MQTT"));
    *w++ = 4;
    *w++ = flags;
    w = put_u16(w, c->keepalive);
    w = put_string(w, c->client_id);
    if (c->will) {
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

/* Write the body `measure` validated and sized. */
static uint8_t *put_body(uint8_t *w, const MqttPacket *pkt)
{
    switch (pkt->type) {
    case MQTT_CONNECT:
        return put_connect(w, &pkt->connect);
    case MQTT_CONNACK:
        *w++ = pkt->connack.session_present;
        *w++ = pkt->connack.rc;
        return w;
    case MQTT_PUBLISH:
        w = put_string(w, pkt->publish.topic);
        if (pkt->publish.qos) {
            w = put_u16(w, pkt->publish.id);
        }
        return put_bytes(w, pkt->publish.payload);
    case MQTT_PUBACK:
    case MQTT_PUBREC:
    case MQTT_PUBREL:
    case MQTT_PUBCOMP:
    case MQTT_UNSUBACK:
        return put_u16(w, pkt->ack.id);
    case MQTT_SUBSCRIBE:
    case MQTT_UNSUBSCRIBE:
        w = put_u16(w, pkt->subscribe.id);
        for (size_t i = 0; i < pkt->subscribe.count; i++) {
            w = put_string(w, pkt->subscribe.topics[i].filter);
            if (pkt->type == MQTT_SUBSCRIBE) {
                *w++ = pkt->subscribe.topics[i].qos;
            }
        }
        return w;
    case MQTT_SUBACK:
        return put_bytes(put_u16(w, pkt->suback.id), pkt->suback.codes);
    default:
        return w;
    }
}

int mqtt_encode(Buf *out, const MqttPacket *pkt)
{
    uint8_t first;
    size_t len;
    int r = measure(pkt, &first, &len);
    if (r < 0) {
        return r;
    }
    size_t total = 1 + varint_len(len) + len;
    if ((r = buf_reserve(out, total)) < 0) {
        return r;
    }
    uint8_t *w = out->data + out->len;
    *w++ = first;
    w = put_varint(w, len);
    w = put_body(w, pkt);
    assert(w == out->data + out->len + total); /* measure and put_body agree */
    out->len += total;
    return 0;
}

/* ---- decoding ---- */

typedef struct Reader {
    const uint8_t *p, *end;
} Reader;

static int get_u8(Reader *r, uint8_t *ret)
{
    if (r->p == r->end) {
        return -MQTT_E_LENGTH;
    }
    *ret = *r->p++;
    return 0;
}

static int get_u16(Reader *r, uint16_t *ret)
{
    if (r->end - r->p < 2) {
        return -MQTT_E_LENGTH;
    }
    *ret = (uint16_t)(r->p[0] << 8 | r->p[1]);
    r->p += 2;
    return 0;
}

static int get_id(Reader *r, uint16_t *ret)
{
    int e = get_u16(r, ret);
    return e < 0 ? e : *ret ? 0 : -MQTT_E_PACKET_ID;
}

/* Length-prefixed bytes, no content check. */
static int get_binary(Reader *r, View *ret)
{
    uint16_t n;
    int e = get_u16(r, &n);
    if (e < 0) {
        return e;
    }
    if ((size_t)(r->end - r->p) < n) {
        return -MQTT_E_LENGTH;
    }
    *ret = VIEW(r->p, n);
    r->p += n;
    return 0;
}

static int get_string(Reader *r, View *ret)
{
    int e = get_binary(r, ret);
    if (e < 0) {
        return e;
    }
    return utf8_valid(*ret, false) ? 0 : -MQTT_E_UTF8;
}

static View rest(Reader *r)
{
    View v = VIEW(r->p, (size_t)(r->end - r->p));
    r->p = r->end;
    return v;
}

#define TRY(expr)                                                                                  \
    do {                                                                                           \
        int e_ = (expr);                                                                           \
        if (e_ < 0) {                                                                              \
            return e_;                                                                             \
        }                                                                                          \
    } while (0)

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
    if (level != 4) {
        return -MQTT_E_PROTOCOL_LEVEL;
    }
    TRY(get_u8(r, &flags));
    c->has_username = flags & 0x80;
    c->has_password = flags & 0x40;
    c->will_retain = flags & 0x20;
    c->will_qos = (flags >> 3) & 3;
    c->will = flags & 0x04;
    c->clean_session = flags & 0x02;
    if ((flags & 0x01) || (!c->will && (c->will_qos || c->will_retain)) ||
        (c->has_password && !c->has_username)) {
        return -MQTT_E_CONNECT_FLAGS;
    }
    if (c->will_qos == 3) {
        return -MQTT_E_QOS;
    }
    TRY(get_u16(r, &c->keepalive));
    TRY(get_string(r, &c->client_id));
    if (c->will) {
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

static int decode_topic_list(Reader *r, MqttPacket *pkt, bool has_qos)
{
    TRY(get_id(r, &pkt->subscribe.id));
    pkt->subscribe.list = VIEW(r->p, (size_t)(r->end - r->p));
    pkt->subscribe.topics = NULL;
    pkt->subscribe.count = 0;
    while (r->p < r->end) {
        View filter;
        TRY(get_binary(r, &filter));
        TRY(mqtt_filter_check(filter));
        if (has_qos) {
            uint8_t q;
            TRY(get_u8(r, &q));
            if (q & 0xfc) {
                return -MQTT_E_SUB_OPTIONS;
            }
            if (q == 3) {
                return -MQTT_E_QOS;
            }
        }
        pkt->subscribe.count++;
    }
    return pkt->subscribe.count ? 0 : -MQTT_E_NO_TOPICS;
}

static int decode_body(Reader *r, uint8_t flags, MqttPacket *pkt)
{
    switch (pkt->type) {
    case MQTT_CONNECT:
        return decode_connect(r, pkt);
    case MQTT_CONNACK: {
        uint8_t ack;
        TRY(get_u8(r, &ack));
        TRY(get_u8(r, &pkt->connack.rc));
        pkt->connack.session_present = ack & 1;
        if (ack & 0xfe) {
            return -MQTT_E_CONNACK_FLAGS;
        }
        if (pkt->connack.rc > 5) {
            return -MQTT_E_CONNACK_RC;
        }
        if (pkt->connack.session_present && pkt->connack.rc) {
            return -MQTT_E_CONNACK_FLAGS;
        }
        return 0;
    }
    case MQTT_PUBLISH: {
        MqttPublish *p = &pkt->publish;
        p->dup = flags & 8;
        p->qos = (flags >> 1) & 3;
        p->retain = flags & 1;
        p->id = 0;
        TRY(get_binary(r, &p->topic));
        TRY(mqtt_topic_check(p->topic));
        if (p->qos) {
            TRY(get_id(r, &p->id));
        }
        p->payload = rest(r);
        return 0;
    }
    case MQTT_PUBACK:
    case MQTT_PUBREC:
    case MQTT_PUBREL:
    case MQTT_PUBCOMP:
    case MQTT_UNSUBACK:
        return get_id(r, &pkt->ack.id);
    case MQTT_SUBSCRIBE:
        return decode_topic_list(r, pkt, true);
    case MQTT_UNSUBSCRIBE:
        return decode_topic_list(r, pkt, false);
    case MQTT_SUBACK:
        TRY(get_id(r, &pkt->suback.id));
        pkt->suback.codes = rest(r);
        return check_suback_codes(pkt->suback.codes);
    default: /* PINGREQ, PINGRESP, DISCONNECT: no body */
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

int mqtt_decode(View in, size_t max_size, MqttPacket *ret_pkt)
{
    if (in.n == 0) {
        return 0;
    }
    int type = in.p[0] >> 4;
    uint8_t flags = in.p[0] & 0x0f;
    if (type == 0 || type == 15) {
        return -MQTT_E_TYPE;
    }
    TRY(check_flags(type, flags));

    size_t len = 0, i = 1;
    for (;;) {
        if (i == 5) {
            return -MQTT_E_VARINT;
        }
        if (i >= in.n) {
            return 0;
        }
        uint8_t b = in.p[i];
        len |= (size_t)(b & 0x7f) << (7 * (i - 1));
        i++;
        if (!(b & 0x80)) {
            break;
        }
    }
    size_t total = i + len;
    if (total > (max_size ? max_size : MQTT_PACKET_MAX)) {
        return -MQTT_E_TOO_LARGE;
    }
    /* Types with a fixed body size: fail before waiting for bytes that need not come. */
    static const int8_t fixed_len[16] = {
        [MQTT_CONNACK] = 2, [MQTT_PUBACK] = 2,   [MQTT_PUBREC] = 2,
        [MQTT_PUBREL] = 2,  [MQTT_PUBCOMP] = 2,  [MQTT_UNSUBACK] = 2,
        [MQTT_PINGREQ] = 0, [MQTT_PINGRESP] = 0, [MQTT_DISCONNECT] = 0,
    };
    bool is_fixed = type == MQTT_CONNACK || (type >= MQTT_PUBACK && type <= MQTT_PUBCOMP) ||
                    type >= MQTT_UNSUBACK;
    if (is_fixed && len != (size_t)fixed_len[type]) {
        return -MQTT_E_LENGTH;
    }
    if (in.n < total) {
        return 0;
    }

    MqttPacket pkt = {.type = (enum mqtt_type)type, .size = total};
    Reader r = {in.p + i, in.p + total};
    TRY(decode_body(&r, flags, &pkt));
    if (r.p != r.end) {
        return -MQTT_E_LENGTH;
    }
    *ret_pkt = pkt;
    return 1;
}

int mqtt_topic_list_next(View *list, bool has_qos, MqttTopicReq *ret)
{
    Reader r = {list->p, list->p + list->n};
    MqttTopicReq t = {0};
    if (r.p == r.end) {
        return 0;
    }
    if (get_binary(&r, &t.filter) < 0 || (has_qos && get_u8(&r, &t.qos) < 0)) {
        return -MQTT_E_LENGTH;
    }
    *list = VIEW(r.p, (size_t)(r.end - r.p));
    *ret = t;
    return 1;
}

/* ---- incremental decoder ---- */

void mqtt_decoder_init(MqttDecoder *d, size_t max_size)
{
    *d = (MqttDecoder){.max_size = max_size};
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
    int r = mqtt_decode(in, d->max_size, ret_pkt);
    if (r > 0) {
        /* Only offsets move: the packet's Views stay valid until the next feed. */
        d->last = VIEW(in.p, ret_pkt->size);
        buf_consume(&d->in, ret_pkt->size);
    }
    return r;
}
