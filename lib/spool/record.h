/* SPDX-License-Identifier: MIT */
/*
 * The spool's on-disk record format (daemon/spool.c does the I/O).
 *
 * A spool is a write-ahead log of segments; a segment is a sequence of records:
 *
 *     u32 crc32   over everything after it (len and body), little endian
 *     u32 len     length of the body
 *     body        u8 type, u64 seq, then per type:
 *                 ADD:  u8 qos, u8 flags (bit 0 retain), u16 topic_len, u32 payload_len,
 *                       topic, payload
 *                 DONE: nothing (the message `seq` was acknowledged)
 *
 * A message is pending when its ADD has no DONE. Recovery reads records until the first one
 * that is incomplete or fails its checksum: that and everything after it in the segment is
 * a torn tail (a write cut short by a crash or power loss) and is dropped.
 */
#pragma once

#include "buf.h"

enum spool_record_type { SPOOL_ADD = 1, SPOOL_DONE = 2 };

#define SPOOL_RECORD_MAX (16u << 20) /* larger `len` means a corrupt record */

typedef struct SpoolRecord {
    enum spool_record_type type;
    uint64_t seq;
    uint8_t qos;
    bool retain;
    View topic, payload; /* ADD only; borrowed from the input */
    size_t size;         /* bytes the record took */
} SpoolRecord;

uint32_t crc32_update(uint32_t crc, View data);

int spool_record_add(Buf *out, uint64_t seq, uint8_t qos, bool retain, View topic, View payload);
int spool_record_done(Buf *out, uint64_t seq);
/* 1 with a record, 0 when `in` ends inside one (torn), -EBADMSG for a bad checksum or
 * layout. */
int spool_record_parse(View in, SpoolRecord *ret);
