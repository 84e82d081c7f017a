/* SPDX-License-Identifier: MIT */
/*
 * The spool's on-disk format (daemon/spool.c does the I/O): records, and a reader that walks
 * a whole segment telling good records, damaged regions and a torn tail apart.
 *
 * A spool is a write-ahead log of segments; a segment is a sequence of records:
 *
 *     u32 crc32   over everything after it (len and body), little endian, started from the
 *                 segment's salt (below) instead of 0
 *     u32 len     length of the body
 *     body        u8 type, u64 seq, then per type:
 *                 ADD:            u8 qos, u8 flags (bit 0 retain), u16 topic_len,
 *                                 u32 payload_len, topic, payload
 *                 DONE:           nothing (the message `seq` was acknowledged)
 *                 HEADER:         u8 magic[8] "MQBSPOOL", u32 version, then for version 2:
 *                                 u32 salt, u32 n, n x u16 held incoming QoS 2 packet ids
 *                                 (strictly ascending); seq is 0
 *                 STATE:          u16 packet_id (not 0), u8 flags (bit 0 PUBREC received):
 *                                 the whole send state of message `seq`, latest wins
 *                 INCOMING:       u16 packet_id (not 0), u8 held (0 or 1); seq is 0
 *                 INCOMING_CLEAR: nothing; seq is 0 (no incoming id is held any more)
 *                 ADD5 (format 3): u8 qos, u8 flags, u16 topic_len, u32 payload_len,
 *                                 u64 expires_at (Unix time in ms, 0 = never), u32 props_len,
 *                                 topic, payload, props (an MQTT 5 PUBLISH property block):
 *                                 a message with MQTT 5 properties or an expiry
 *                 SESSION (format 4): a named local session, all of it but its messages and
 *                                 its acknowledgement (latest wins); seq is its id, a number
 *                                 taken from the same sequence as messages, never reused:
 *                                 u32 uid, u32 expiry (s), u64 left_at (Unix time in ms its
 *                                 last connection closed; 0 = connected), u64 next_seq (its
 *                                 next message's number), u64 acked (its acknowledgement
 *                                 then), u64 dropped (messages dropped since its program was
 *                                 last told), u64 dropped_total, u16 name_len, u32 subs_len,
 *                                 name, subs: its subscriptions, each u8 qos, u8 flags (bit 0
 *                                 base64, bit 1 no_local, bit 2 retain_as_published),
 *                                 u32 subid (its MQTT 5 subscription identifier; 0 none),
 *                                 u16 filter_len (not 0), filter
 *                 SESSION_ACK (format 4): u64 acked (not 0): session `seq` acknowledged every
 *                                 message up to that number (the highest of these and the
 *                                 SESSION record's wins)
 *                 KEPT (format 4):  a message kept for a session (seq numbers it like an ADD):
 *                                 u64 session id, u64 session_seq (its number in the session),
 *                                 u64 kept_at (Unix time in ms it came), u8 qos, u8 flags
 *                                 (bit 0 retain, bit 1 base64), u16 topic_len, u32 payload_len,
 *                                 u32 props_len, topic, payload, props
 * A DONE names a message (ADD, ADD5, KEPT) or a session (which then ends).
 *
 * Format 1 (mqttbridged up to 0.1.0): no header, ADD and DONE only, salt 0 (a plain CRC-32).
 * Format 3 is format 2 plus ADD5; format 4 is format 3 plus the three session records. This
 * code writes 4 and reads 1 to 4.
 * Format 2: every segment starts with a HEADER whose checksum is a plain CRC-32 (salt 0); the
 * records after it are checksummed from the random salt it names, so a record embedded in a
 * payload (or copied from another segment) never passes for a record of this one when the
 * reader resynchronises after damage.
 *
 * Fixed forever, so that any later version is recognised and refused by older readers rather
 * than misread: a segment of format 2 or later has byte 8 = 3 (HEADER), bytes 17..24 the magic
 * and bytes 25..28 the version (u32 little endian). Nothing else is promised to later formats.
 */
#pragma once

#include "buf.h"

enum spool_record_type {
    SPOOL_ADD = 1,
    SPOOL_DONE = 2,
    SPOOL_HEADER = 3, /* format 2 and later */
    SPOOL_STATE = 4,
    SPOOL_INCOMING = 5,
    SPOOL_INCOMING_CLEAR = 6,
    SPOOL_ADD5 = 7,    /* format 3 and later */
    SPOOL_SESSION = 8, /* format 4 and later */
    SPOOL_SESSION_ACK = 9,
    SPOOL_KEPT = 10,
};

#define SPOOL_FORMAT         4 /* what this code writes; it reads 1 to 4 */
#define SPOOL_MAGIC          "MQBSPOOL"
#define SPOOL_RECORD_MAX     (16u << 20) /* larger `len` means a corrupt record */
#define SPOOL_HELD_WORDS     1024        /* bitmap of the 65536 packet ids */
#define SPOOL_STATE_SIZE     20          /* bytes of a STATE record */
#define SPOOL_ACK_SIZE       25          /* bytes of a SESSION_ACK record */
#define SPOOL_HEADER_MIN     37          /* bytes of a version 2 HEADER holding no id */
#define SPOOL_HEADER_VERSION 25          /* offset of the version in a segment */

/* A named local session as a SESSION record holds it (and its latest SESSION_ACK). */
typedef struct SpoolSession {
    uint64_t id; /* the record's seq */
    View name;
    uint32_t uid, expiry;
    int64_t left_at;   /* Unix time (ms) its last connection closed; 0: connected */
    uint64_t next_seq; /* its next message's number, when written */
    uint64_t acked;    /* its acknowledgement (handed back: the latest, SESSION_ACK included) */
    uint64_t dropped;  /* messages its bounds dropped since its program was last told */
    uint64_t dropped_total;
    View subs; /* its subscriptions: see spool_session_sub_next */
} SpoolSession;

/* One subscription of a session. */
typedef struct SpoolSessionSub {
    uint8_t qos;
    bool base64, no_local, retain_as_published;
    uint32_t subid; /* MQTT 5 subscription identifier of its filter; 0: none */
    View filter;
} SpoolSessionSub;

typedef struct SpoolRecord {
    enum spool_record_type type;
    uint64_t seq;
    uint8_t qos;          /* ADD, ADD5 */
    bool retain;          /* ADD, ADD5 */
    View topic, payload;  /* ADD, ADD5; borrowed from the input */
    View props;           /* ADD5 (empty for ADD) */
    int64_t expires_at;   /* ADD5: Unix time in ms, 0 = never (ADD: 0) */
    uint16_t packet_id;   /* STATE, INCOMING */
    bool pubrec;          /* STATE */
    bool held;            /* INCOMING */
    uint32_t version;     /* HEADER */
    uint32_t salt;        /* HEADER */
    View held_ids;        /* HEADER: n x u16 little endian; see spool_record_held */
    uint64_t session;     /* KEPT: the session's id */
    uint64_t session_seq; /* KEPT: its number in the session */
    int64_t kept_at;      /* KEPT: Unix time in ms */
    bool base64;          /* KEPT */
    SpoolSession sess;    /* SESSION (sess.acked 0), SESSION_ACK (sess.acked only) */
    size_t size;          /* bytes the record took */
} SpoolRecord;

uint32_t crc32_update(uint32_t crc, View data);

/* Encoders: append one record to `out` (untouched on failure: -E2BIG, -ENOMEM). `salt` is the
 * segment's (0 for format 1). */
int spool_record_header(Buf *out, uint32_t salt, const uint64_t *held /* NULL: none */);
/* An ADD, or an ADD5 when the message has properties or expires. */
int spool_record_add(Buf *out, uint32_t salt, uint64_t seq, uint8_t qos, bool retain, View topic,
                     View payload, View props, int64_t expires_at);
int spool_record_done(Buf *out, uint32_t salt, uint64_t seq);
int spool_record_state(Buf *out, uint32_t salt, uint64_t seq, uint16_t packet_id, bool pubrec);
int spool_record_incoming(Buf *out, uint32_t salt, uint16_t packet_id, bool held);
int spool_record_incoming_clear(Buf *out, uint32_t salt);
/* A SESSION record; -EINVAL for an empty name or id 0. */
int spool_record_session(Buf *out, uint32_t salt, const SpoolSession *m);
/* -EINVAL for id or acked 0. */
int spool_record_session_ack(Buf *out, uint32_t salt, uint64_t id, uint64_t acked);
/* A KEPT record of message `seq`: its session, session_seq, kept_at, qos, retain, base64,
 * topic, payload and props from `m`. */
int spool_record_kept(Buf *out, uint32_t salt, uint64_t seq, const SpoolRecord *m);
/* Append one subscription to a session's list (SpoolSession.subs). -E2BIG for an empty or too
 * long filter. */
int spool_session_sub_put(Buf *subs, const SpoolSessionSub *sub);
/* The next subscription of a list: 1, 0 at its end, -EBADMSG when it is malformed (never for
 * the list of a record that parsed). */
int spool_session_sub_next(View *subs, SpoolSessionSub *ret);
/* Checksum a complete record again for a segment with another salt (copying it forward). */
void spool_record_reseal(uint8_t *rec, size_t n, uint32_t salt);

/* 1 with a record, 0 when `in` ends inside one (torn), -EBADMSG for a bad checksum or
 * layout. The layout is checked before the checksum. A HEADER is checked with salt 0. */
int spool_record_parse(View in, uint32_t salt, SpoolRecord *ret);
/* Set `bitmap` (SPOOL_HELD_WORDS words) to the ids of a HEADER record. */
void spool_record_held(const SpoolRecord *header, uint64_t *bitmap);

/* Reading a whole segment. */
typedef struct SpoolReader {
    View in;
    size_t off;       /* next byte to read */
    uint32_t version; /* 1: no header; 2: a header; more: refused by spool_reader_init */
    uint32_t salt;
} SpoolReader;

enum spool_read {
    SPOOL_READ_END,     /* nothing more */
    SPOOL_READ_RECORD,  /* a good record at *ret_off */
    SPOOL_READ_DAMAGED, /* [*ret_off, +*ret_len) holds no good record, but one follows */
    SPOOL_READ_TORN,    /* [*ret_off, +*ret_len) holds no good record, up to the end */
};

/* 0, or -EPROTONOSUPPORT when the segment names a format newer than SPOOL_FORMAT (then
 * r->version says which). The version and salt are taken from a header even when its
 * checksum fails, so a damaged header neither hides a newer format nor the records after it.
 */
int spool_reader_init(SpoolReader *r, View segment);
/* One step (enum spool_read). After a bad record the reader resynchronises byte by byte (as
 * LevelDB's log reader does): the next offset where a record parses with a good checksum. */
int spool_reader_next(SpoolReader *r, SpoolRecord *ret_rec, size_t *ret_off, size_t *ret_len);
