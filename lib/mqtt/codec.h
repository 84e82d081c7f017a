/* SPDX-License-Identifier: MIT */
/*
 * The MQTT codec, 3.1.1 (protocol level 4) and 5.0 (level 5): packets to bytes and bytes to
 * packets, nothing else.
 *
 * mqtt_encode() appends one whole packet to a Buf. mqtt_decode() reads one packet from the
 * front of a byte span; the decoded packet borrows (Views) from that span, so it is valid only
 * while those bytes are. MqttDecoder adds the incremental part: bytes go in in any pieces,
 * whole packets come out.
 *
 * Validation is strict (every "MUST" of the spec that a receiver can check): each violation
 * has its own MQTT_E_* code, returned negated, and mqtt_strerror() names it for a log line;
 * mqtt_error_reason() gives the MQTT 5 reason code a DISCONNECT for it carries.
 *
 * MQTT 5 properties decode as borrowed views into the packet's bytes (MqttProps); repeatable
 * ones (User Property, Subscription Identifier) are walked with mqtt_props_next().
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
    MQTT_AUTH, /* MQTT 5 only */
};

/* Protocol levels. */
#define MQTT_V311 4
#define MQTT_V5   5

/* Errors, returned negated. They start above the errno range so both can share an int. */
enum mqtt_error {
    MQTT_E_FIRST = 1000,
    MQTT_E_VARINT = MQTT_E_FIRST, /* variable byte integer longer than 4 bytes */
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
    MQTT_E_PROPERTY,              /* unknown property identifier */
    MQTT_E_PROPERTY_DUP,          /* a property that may appear once appears again */
    MQTT_E_PROPERTY_PACKET,       /* a property this packet type does not carry */
    MQTT_E_PROPERTY_VALUE,        /* a property value out of its range (e.g. Receive Maximum 0) */
    MQTT_E_TOPIC_ALIAS,           /* Topic Alias 0 */
    MQTT_E_TOPIC_ALIAS_MAX,       /* Topic Alias above the receiver's maximum (session) */
    MQTT_E_REASON_CODE,           /* a reason code this packet type does not define */
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

/* MQTT 5 reason codes (2.4) used by name. */
enum mqtt_reason {
    MQTT_RC_SUCCESS = 0x00,
    MQTT_RC_DISCONNECT_WITH_WILL = 0x04,
    MQTT_RC_NO_MATCHING_SUBSCRIBERS = 0x10,
    MQTT_RC_UNSPECIFIED = 0x80,
    MQTT_RC_MALFORMED_PACKET = 0x81,
    MQTT_RC_PROTOCOL_ERROR = 0x82,
    MQTT_RC_UNSUPPORTED_PROTOCOL_VERSION = 0x84,
    MQTT_RC_NOT_AUTHORIZED = 0x87,
    MQTT_RC_SERVER_BUSY = 0x89,
    MQTT_RC_KEEP_ALIVE_TIMEOUT = 0x8D,
    MQTT_RC_SESSION_TAKEN_OVER = 0x8E,
    MQTT_RC_TOPIC_ALIAS_INVALID = 0x94,
    MQTT_RC_PACKET_TOO_LARGE = 0x95,
    MQTT_RC_QUOTA_EXCEEDED = 0x97,
    MQTT_RC_RECEIVE_MAXIMUM_EXCEEDED = 0x93,
    MQTT_RC_QOS_NOT_SUPPORTED = 0x9B,
    MQTT_RC_USE_ANOTHER_SERVER = 0x9C,
    MQTT_RC_SERVER_MOVED = 0x9D,
    MQTT_RC_RETAIN_NOT_SUPPORTED = 0x9A,
};

/* The standard's name of a reason code ("Not authorized"), or NULL for an undefined one. */
const char *mqtt_reason_str(uint8_t code);
/* "Not authorized (0x87): <text>" (": <text>" only when there is one) into out, truncated to
 * n bytes. */
void mqtt_reason_describe(char *out, size_t n, uint8_t code, View text);
/* The reason code a DISCONNECT carries for an error a decoder returned (0x81 Malformed
 * Packet, 0x82 Protocol Error, 0x94 Topic Alias invalid, 0x95 Packet too large, ...). */
uint8_t mqtt_error_reason(int negative_code);

/* MQTT 5 property identifiers (2.2.2.2). */
enum mqtt_prop {
    MQTT_PROP_PAYLOAD_FORMAT = 0x01,
    MQTT_PROP_MESSAGE_EXPIRY = 0x02,
    MQTT_PROP_CONTENT_TYPE = 0x03,
    MQTT_PROP_RESPONSE_TOPIC = 0x08,
    MQTT_PROP_CORRELATION_DATA = 0x09,
    MQTT_PROP_SUBSCRIPTION_ID = 0x0B,
    MQTT_PROP_SESSION_EXPIRY = 0x11,
    MQTT_PROP_ASSIGNED_CLIENT_ID = 0x12,
    MQTT_PROP_SERVER_KEEP_ALIVE = 0x13,
    MQTT_PROP_AUTH_METHOD = 0x15,
    MQTT_PROP_AUTH_DATA = 0x16,
    MQTT_PROP_REQUEST_PROBLEM_INFO = 0x17,
    MQTT_PROP_WILL_DELAY = 0x18,
    MQTT_PROP_REQUEST_RESPONSE_INFO = 0x19,
    MQTT_PROP_RESPONSE_INFO = 0x1A,
    MQTT_PROP_SERVER_REFERENCE = 0x1C,
    MQTT_PROP_REASON_STRING = 0x1F,
    MQTT_PROP_RECEIVE_MAXIMUM = 0x21,
    MQTT_PROP_TOPIC_ALIAS_MAXIMUM = 0x22,
    MQTT_PROP_TOPIC_ALIAS = 0x23,
    MQTT_PROP_MAXIMUM_QOS = 0x24,
    MQTT_PROP_RETAIN_AVAILABLE = 0x25,
    MQTT_PROP_USER = 0x26,
    MQTT_PROP_MAXIMUM_PACKET_SIZE = 0x27,
    MQTT_PROP_WILDCARD_AVAILABLE = 0x28,
    MQTT_PROP_SUBSCRIPTION_ID_AVAILABLE = 0x29,
    MQTT_PROP_SHARED_AVAILABLE = 0x2A,
};

typedef struct MqttUserProp {
    View name, value;
} MqttUserProp;

/* The properties of one MQTT 5 packet (or of a CONNECT's will). `has` has bit (1 << id) for
 * each property present; only those fields mean anything. Encoding writes what `has` names
 * plus user[0..n_user) and subid[0..n_subid); decoding fills the single-valued fields, counts
 * the repeatable ones and keeps the raw block for mqtt_props_next(). */
typedef struct MqttProps {
    uint64_t has;
    uint32_t message_expiry, session_expiry, will_delay, maximum_packet_size;
    uint16_t receive_maximum, topic_alias_maximum, topic_alias, server_keep_alive;
    uint8_t payload_format, request_problem_info, request_response_info, maximum_qos,
        retain_available, wildcard_available, subscription_id_available, shared_available;
    View content_type, response_topic, correlation_data, assigned_client_id, auth_method, auth_data,
        response_info, server_reference, reason_string;
    const MqttUserProp *user; /* encode */
    const uint32_t *subid;    /* encode */
    size_t n_user, n_subid;
    View raw;   /* decode: the property bytes, after their length */
    View block; /* encode: properties already encoded (mqtt_props_encode), written after the
                   others; checked as a decoder would, and none may repeat one in `has` */
} MqttProps;

#define MQTT_PROP_BIT(id)   ((uint64_t)1 << (id))
#define MQTT_HAS(props, id) (((props)->has & MQTT_PROP_BIT(id)) != 0)
#define MQTT_SET(props, id) ((props)->has |= MQTT_PROP_BIT(id))

/* Walk a decoded property block (MqttProps.raw): 1 with the next property's id and, for the
 * repeatable ones, its value (user: name and value; subid: the identifier), 0 at the end.
 * The block was validated by the decoder. */
typedef struct MqttPropItem {
    uint8_t id;
    MqttUserProp user;
    uint32_t subid;
} MqttPropItem;
int mqtt_props_next(View *raw, MqttPropItem *ret);

/* Encode the properties of p (as packet `type` carries them) as a block, without the length
 * that precedes it in a packet: appended to `out`, untouched on failure. */
int mqtt_props_encode(Buf *out, const MqttProps *p, int type);
/* Check a block as a decoder does (`type` 0: a will's) and fill *ret from it (its Views
 * borrow from `block`): 0 or -MQTT_E_*. */
int mqtt_props_check(View block, int type, MqttProps *ret);

/* One entry of a SUBSCRIBE (qos and, in MQTT 5, the options used) or UNSUBSCRIBE (only the
 * filter) topic list. */
typedef struct MqttTopicReq {
    View filter;
    uint8_t qos;
    bool no_local, retain_as_published; /* MQTT 5 */
    uint8_t retain_handling;            /* MQTT 5: 0, 1 or 2 */
} MqttTopicReq;

typedef struct MqttConnect {
    View client_id;
    View username, password;       /* used when has_username / has_password */
    View will_topic, will_payload; /* used when will */
    uint16_t keepalive;
    uint8_t will_qos;
    bool will, will_retain, clean_session, has_username, has_password;
    MqttProps will_props; /* MQTT 5 */
} MqttConnect;

typedef struct MqttConnack {
    bool session_present;
    uint8_t rc; /* 3.1.1 return code, or MQTT 5 reason code */
} MqttConnack;

typedef struct MqttPublish {
    View topic, payload;
    uint16_t id; /* 0 for QoS 0 */
    uint8_t qos;
    bool dup, retain;
} MqttPublish;

typedef struct MqttAck {
    uint16_t id;
    uint8_t reason; /* MQTT 5 */
} MqttAck;          /* PUBACK, PUBREC, PUBREL, PUBCOMP; DISCONNECT and AUTH (reason only) */

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
    View codes; /* one code per requested filter (3.1.1 UNSUBACK: none) */
} MqttSuback;   /* SUBACK and UNSUBACK */

typedef struct MqttPacket {
    enum mqtt_type type;
    uint8_t version; /* MQTT_V311 (0 means that too) or MQTT_V5 */
    size_t size;     /* decode: bytes the whole packet took, fixed header included */
    MqttProps props; /* MQTT 5 (not PINGREQ, PINGRESP) */
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

/* The size mqtt_encode gives pkt (fixed header included), or a negative MQTT_E_* when it is
 * not valid. */
long long mqtt_packet_size(const MqttPacket *pkt);

/* Decode the packet at the start of `in`, of protocol `version` (a CONNECT says its own).
 * Returns 1 and fills *ret_pkt (whose Views point into `in`), 0 when more bytes are needed,
 * or -MQTT_E_* (*ret_pkt is then partly written: use none of it). `max_size` (0 = MQTT's own limit)
 * is checked as soon as the length is known, before the body arrives. */
int mqtt_decode(View in, uint8_t version, size_t max_size, MqttPacket *ret_pkt);

/* Walk a decoded SUBSCRIBE/UNSUBSCRIBE list: returns 1 with the next entry, 0 at the end.
 * `has_qos` is true for SUBSCRIBE (its options byte). The list was validated by
 * mqtt_decode(). */
int mqtt_topic_list_next(View *list, bool has_qos, MqttTopicReq *ret);

/* Incremental decoding over a private buffer, which holds at most one partial packet plus
 * what the last read brought. */
typedef struct MqttDecoder {
    Buf in;
    size_t max_size;
    uint8_t version; /* of what it decodes; MQTT_V311 unless set */
    View last;       /* the raw bytes of the packet mqtt_decoder_next returned last */
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
