/* SPDX-License-Identifier: MIT */
/*
 * The MQTT 3.1.1 codec: packets to bytes and bytes to packets, nothing else.
 *
 * mqtt_encode() appends one whole packet to a Buf. mqtt_decode() reads one packet from the
 * front of a byte span; the decoded packet borrows (Views) from that span, so it is valid only
 * while those bytes are. MqttDecoder adds the incremental part: bytes go in in any pieces,
 * whole packets come out.
 *
 * Validation is strict (every "MUST" of the spec that a receiver can check): each violation
 * has its own MQTT_E_* code, returned negated, and mqtt_strerror() names it for a log line.
 */
#pragma once

#include "buf.h"

enum mqtt_type {
    MQTT_CONNECT = 1,
    MQTT_CONNACK,
    MQTT_PUBLISH,
    MQTT_PUBACK,
    MQTT_PUBREC,
    MQTT_PUBREL,
    MQTT_PUBCOMP,
    MQTT_SUBSCRIBE,
    MQTT_SUBACK,
    MQTT_UNSUBSCRIBE,
    MQTT_UNSUBACK,
    MQTT_PINGREQ,
    MQTT_PINGRESP,
    MQTT_DISCONNECT,
};

/* Errors, returned negated. They start above the errno range so both can share an int. */
enum mqtt_error {
    MQTT_E_FIRST = 1000,
    MQTT_E_VARINT = MQTT_E_FIRST, /* remaining length longer than 4 bytes */
    MQTT_E_TOO_LARGE,             /* packet larger than the configured maximum */
    MQTT_E_TYPE,                  /* reserved packet type 0 or 15 */
    MQTT_E_FLAGS,                 /* fixed-header flags not as the type requires */
    MQTT_E_LENGTH,                /* remaining length wrong for the type, or fields overrun */
    MQTT_E_PROTOCOL_NAME,         /* CONNECT protocol name is not "MQTT" */
    MQTT_E_PROTOCOL_LEVEL,        /* CONNECT protocol level is not 4 */
    MQTT_E_CONNECT_FLAGS,         /* reserved bit, will or password flags inconsistent */
    MQTT_E_CONNACK_FLAGS,         /* reserved acknowledge flags, or session present with rc */
    MQTT_E_CONNACK_RC,            /* CONNACK return code above 5 */
    MQTT_E_QOS,                   /* QoS 3 */
    MQTT_E_PACKET_ID,             /* packet identifier 0 where one is required */
    MQTT_E_UTF8,                  /* string is not well-formed UTF-8, or holds U+0000 */
    MQTT_E_TOPIC_EMPTY,           /* empty topic name or filter */
    MQTT_E_TOPIC_LONG,            /* topic longer than 65535 bytes */
    MQTT_E_TOPIC_WILDCARD,        /* '+' or '#' in a topic name */
    MQTT_E_FILTER,                /* misplaced wildcard or bad $share/ prefix in a filter */
    MQTT_E_NO_TOPICS,             /* SUBSCRIBE / UNSUBSCRIBE / SUBACK with an empty list */
    MQTT_E_SUB_OPTIONS,           /* reserved bits set in a requested QoS byte */
    MQTT_E_SUBACK_RC,             /* SUBACK code other than 0, 1, 2, 0x80 */
    MQTT_E_STRING_LONG,           /* string longer than 65535 bytes (encoder) */
    MQTT_E_LAST,
};

const char *mqtt_strerror(int negative_code);
const char *mqtt_type_name(int type);

#define MQTT_SUBACK_FAILURE 0x80
#define MQTT_PACKET_MAX     (268435455 + 5) /* largest remaining length plus fixed header */

/* CONNACK return codes (3.2.2.3). */
enum mqtt_connack_rc {
    MQTT_CONNACK_ACCEPTED = 0,
    MQTT_CONNACK_PROTOCOL_VERSION,
    MQTT_CONNACK_IDENTIFIER_REJECTED,
    MQTT_CONNACK_SERVER_UNAVAILABLE,
    MQTT_CONNACK_BAD_USERNAME_PASSWORD,
    MQTT_CONNACK_NOT_AUTHORIZED,
};

/* Human text of a CONNACK return code, e.g. "bad user name or password". */
const char *mqtt_connack_str(int rc);

/* One entry of a SUBSCRIBE (qos used) or UNSUBSCRIBE (qos ignored) topic list. */
typedef struct MqttTopicReq {
    View filter;
    uint8_t qos;
} MqttTopicReq;

typedef struct MqttConnect {
    View client_id;
    View username, password;       /* used when has_username / has_password */
    View will_topic, will_payload; /* used when will */
    uint16_t keepalive;
    uint8_t will_qos;
    bool will, will_retain, clean_session, has_username, has_password;
} MqttConnect;

typedef struct MqttConnack {
    bool session_present;
    uint8_t rc;
} MqttConnack;

typedef struct MqttPublish {
    View topic, payload;
    uint16_t id; /* 0 for QoS 0 */
    uint8_t qos;
    bool dup, retain;
} MqttPublish;

typedef struct MqttAck {
    uint16_t id;
} MqttAck; /* PUBACK, PUBREC, PUBREL, PUBCOMP, UNSUBACK */

typedef struct MqttSubscribe {
    uint16_t id;
    /* Encoding reads topics[0..count). Decoding sets count and `list`, the raw encoded list,
     * walked with mqtt_topic_list_next(); topics is then NULL. */
    const MqttTopicReq *topics;
    size_t count;
    View list;
} MqttSubscribe; /* SUBSCRIBE and UNSUBSCRIBE */

typedef struct MqttSuback {
    uint16_t id;
    View codes; /* one return code per requested filter */
} MqttSuback;

typedef struct MqttPacket {
    enum mqtt_type type;
    size_t size; /* decode: bytes the whole packet took, fixed header included */
    union {
        MqttConnect connect;
        MqttConnack connack;
        MqttPublish publish;
        MqttAck ack;
        MqttSubscribe subscribe;
        MqttSuback suback;
    };
} MqttPacket;

/* Append the encoding of `pkt` to `out`. On failure (invalid field, -ENOBUFS, -ENOMEM) `out`
 * is left as it was. Encoders validate what they write, so a bad topic cannot go out. */
int mqtt_encode(Buf *out, const MqttPacket *pkt);
/* The size mqtt_encode gives a PUBLISH with this topic, payload size and QoS (fixed header
 * included); MQTT_PACKET_MAX + 1 when MQTT cannot carry it at all. */
size_t mqtt_publish_size(View topic, size_t payload_len, uint8_t qos);

/* Decode the packet at the start of `in`. Returns 1 and fills *ret_pkt (whose Views point
 * into `in`), 0 when more bytes are needed, or -MQTT_E_*. `max_size` (0 = MQTT's own limit)
 * is checked as soon as the length is known, before the body arrives. */
int mqtt_decode(View in, size_t max_size, MqttPacket *ret_pkt);

/* Walk a decoded SUBSCRIBE/UNSUBSCRIBE list: returns 1 with the next entry, 0 at the end.
 * `has_qos` is true for SUBSCRIBE. The list was validated by mqtt_decode(). */
int mqtt_topic_list_next(View *list, bool has_qos, MqttTopicReq *ret);

/* Incremental decoding over a private buffer, which holds at most one partial packet plus
 * what the last read brought. */
typedef struct MqttDecoder {
    Buf in;
    size_t max_size;
    View last; /* the raw bytes of the packet mqtt_decoder_next returned last */
} MqttDecoder;

void mqtt_decoder_init(MqttDecoder *d, size_t max_size);
void mqtt_decoder_free(MqttDecoder *d);
/* Copy bytes in. Invalidates packets returned before. */
int mqtt_decoder_feed(MqttDecoder *d, const void *p, size_t n);
/* Space to read into directly: returns a pointer to at least `want` free bytes, then call
 * mqtt_decoder_commit with how many were written. NULL on -ENOMEM. */
uint8_t *mqtt_decoder_space(MqttDecoder *d, size_t want);
void mqtt_decoder_commit(MqttDecoder *d, size_t n);
/* 1 with the next whole packet (valid until the next feed or space call), 0 when none is
 * complete,
 * -MQTT_E_* when the stream is malformed (the decoder is then unusable: drop the link). */
int mqtt_decoder_next(MqttDecoder *d, MqttPacket *ret_pkt);
