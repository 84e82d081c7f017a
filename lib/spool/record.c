/* SPDX-License-Identifier: MIT */
/* Spool records: see record.h. */
#include "spool/record.h"

#include <errno.h>

static uint32_t crc_table[256];

static void crc_init(void)
{
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++) {
            c = c & 1 ? 0xedb88320u ^ (c >> 1) : c >> 1;
        }
        crc_table[i] = c;
    }
}

uint32_t crc32_update(uint32_t crc, View data)
{
    if (!crc_table[1]) {
        crc_init();
    }
    crc = ~crc;
    for (size_t i = 0; i < data.n; i++) {
        crc = crc_table[(crc ^ data.p[i]) & 0xff] ^ (crc >> 8);
    }
    return ~crc;
}

static void put_le(uint8_t *w, uint64_t v, int bytes)
{
    for (int i = 0; i < bytes; i++) {
        w[i] = (uint8_t)(v >> (8 * i));
    }
}

static uint64_t get_le(const uint8_t *p, int bytes)
{
    uint64_t v = 0;
    for (int i = 0; i < bytes; i++) {
        v |= (uint64_t)p[i] << (8 * i);
    }
    return v;
}

/* Header (crc, len) and the fixed part of the body; the caller appends the rest. */
static int begin(Buf *out, enum spool_record_type type, uint64_t seq, size_t extra,
                 uint8_t **ret_head)
{
    size_t len = 1 + 8 + extra;
    int r = buf_reserve(out, 8 + len);
    if (r < 0) {
        return r;
    }
    uint8_t *w = out->data + out->len;
    put_le(w + 4, len, 4);
    w[8] = (uint8_t)type;
    put_le(w + 9, seq, 8);
    *ret_head = w;
    return 0;
}

static void finish(Buf *out, uint8_t *head)
{
    size_t len = (size_t)get_le(head + 4, 4);
    put_le(head, crc32_update(0, VIEW(head + 4, 4 + len)), 4);
    out->len += 8 + len;
}

int spool_record_add(Buf *out, uint64_t seq, uint8_t qos, bool retain, View topic, View payload)
{
    if (topic.n > 65535 || payload.n > SPOOL_RECORD_MAX - 65535 - 32) {
        return -E2BIG;
    }
    uint8_t *h;
    int r = begin(out, SPOOL_ADD, seq, 8 + topic.n + payload.n, &h);
    if (r < 0) {
        return r;
    }
    uint8_t *w = h + 17;
    w[0] = qos;
    w[1] = retain;
    put_le(w + 2, topic.n, 2);
    put_le(w + 4, payload.n, 4);
    if (topic.n) {
        memcpy(w + 8, topic.p, topic.n);
    }
    if (payload.n) {
        memcpy(w + 8 + topic.n, payload.p, payload.n);
    }
    finish(out, h);
    return 0;
}

int spool_record_done(Buf *out, uint64_t seq)
{
    uint8_t *h;
    int r = begin(out, SPOOL_DONE, seq, 0, &h);
    if (r < 0) {
        return r;
    }
    finish(out, h);
    return 0;
}

int spool_record_parse(View in, SpoolRecord *ret)
{
    if (in.n < 8) {
        return 0;
    }
    uint32_t crc = (uint32_t)get_le(in.p, 4);
    size_t len = (size_t)get_le(in.p + 4, 4);
    if (len < 9 || len > SPOOL_RECORD_MAX) {
        return -EBADMSG;
    }
    if (in.n - 8 < len) {
        return 0;
    }
    if (crc32_update(0, VIEW(in.p + 4, 4 + len)) != crc) {
        return -EBADMSG;
    }
    const uint8_t *b = in.p + 8;
    SpoolRecord rec = {
        .type = (enum spool_record_type)b[0], .seq = get_le(b + 1, 8), .size = 8 + len};
    if (rec.type == SPOOL_DONE) {
        if (len != 9) {
            return -EBADMSG;
        }
    } else if (rec.type == SPOOL_ADD) {
        if (len < 17) {
            return -EBADMSG;
        }
        rec.qos = b[9];
        rec.retain = b[10] & 1;
        size_t tn = (size_t)get_le(b + 11, 2), pn = (size_t)get_le(b + 13, 4);
        if (rec.qos > 2 || 17 + tn + pn != len) {
            return -EBADMSG;
        }
        rec.topic = VIEW(b + 17, tn);
        rec.payload = VIEW(b + 17 + tn, pn);
    } else {
        return -EBADMSG;
    }
    *ret = rec;
    return 1;
}
