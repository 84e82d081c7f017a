/* SPDX-License-Identifier: MIT */
/* Spool records and the segment reader: see record.h. */
#include "spool/record.h"

#include <errno.h>

#define BODY_MIN 9 /* type and seq */

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

/* Header (crc, len) and the fixed part of the body; the caller fills in the rest and calls
 * finish(). Nothing is appended until then: a failed encode leaves `out` as it was. */
static int begin(Buf *out, enum spool_record_type type, uint64_t seq, size_t extra,
                 uint8_t **ret_head)
{
    size_t len = BODY_MIN + extra;
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

void spool_record_reseal(uint8_t *rec, size_t n, uint32_t salt)
{
    put_le(rec, crc32_update(salt, VIEW(rec + 4, n - 4)), 4);
}

static void finish(Buf *out, uint8_t *head, uint32_t salt)
{
    size_t n = 8 + (size_t)get_le(head + 4, 4);
    spool_record_reseal(head, n, salt);
    out->len += n;
}

int spool_record_header(Buf *out, uint32_t salt, const uint64_t *held)
{
    size_t n = 0;
    for (size_t i = 0; held && i < SPOOL_HELD_WORDS; i++) {
        n += (size_t)__builtin_popcountll(held[i]);
    }
    uint8_t *h;
    int r = begin(out, SPOOL_HEADER, 0, 8 + 4 + 4 + 4 + 2 * n, &h);
    if (r < 0) {
        return r;
    }
    uint8_t *w = h + 8 + BODY_MIN;
    memcpy(w, SPOOL_MAGIC, 8);
    put_le(w + 8, SPOOL_FORMAT, 4);
    put_le(w + 12, salt, 4);
    put_le(w + 16, n, 4);
    w += 20;
    for (uint32_t id = 0; held && id < 65536; id++) {
        if (held[id / 64] >> (id % 64) & 1) {
            put_le(w, id, 2);
            w += 2;
        }
    }
    finish(out, h, 0); /* the header's own checksum is a plain CRC-32: no salt known yet */
    return 0;
}

static uint8_t *put_view(uint8_t *w, View v)
{
    if (v.n) {
        memcpy(w, v.p, v.n);
    }
    return w + v.n;
}

int spool_record_add(Buf *out, uint32_t salt, uint64_t seq, uint8_t qos, bool retain, View topic,
                     View payload, View props, int64_t expires_at)
{
    bool v5 = props.n || expires_at;
    size_t fixed = v5 ? 20 : 8;
    if (topic.n > 65535 || expires_at < 0 || props.n > SPOOL_RECORD_MAX ||
        payload.n + props.n > SPOOL_RECORD_MAX - BODY_MIN - fixed - topic.n) {
        return -E2BIG;
    }
    uint8_t *h;
    int r = begin(out, v5 ? SPOOL_ADD5 : SPOOL_ADD, seq, fixed + topic.n + payload.n + props.n, &h);
    if (r < 0) {
        return r;
    }
    uint8_t *w = h + 8 + BODY_MIN;
    w[0] = qos;
    w[1] = retain;
    put_le(w + 2, topic.n, 2);
    put_le(w + 4, payload.n, 4);
    if (v5) {
        put_le(w + 8, (uint64_t)expires_at, 8);
        put_le(w + 16, props.n, 4);
    }
    put_view(put_view(put_view(w + fixed, topic), payload), props);
    finish(out, h, salt);
    return 0;
}

/* A record of the fixed part plus up to 3 bytes: a u16 and a u8. */
static int small(Buf *out, uint32_t salt, enum spool_record_type type, uint64_t seq, size_t extra,
                 uint16_t v16, uint8_t v8)
{
    uint8_t *h;
    int r = begin(out, type, seq, extra, &h);
    if (r < 0) {
        return r;
    }
    if (extra) {
        put_le(h + 8 + BODY_MIN, v16, 2);
        h[8 + BODY_MIN + 2] = v8;
    }
    finish(out, h, salt);
    return 0;
}

int spool_record_done(Buf *out, uint32_t salt, uint64_t seq)
{
    return small(out, salt, SPOOL_DONE, seq, 0, 0, 0);
}

int spool_record_state(Buf *out, uint32_t salt, uint64_t seq, uint16_t packet_id, bool pubrec)
{
    return packet_id ? small(out, salt, SPOOL_STATE, seq, 3, packet_id, pubrec) : -EINVAL;
}

int spool_record_incoming(Buf *out, uint32_t salt, uint16_t packet_id, bool held)
{
    return packet_id ? small(out, salt, SPOOL_INCOMING, 0, 3, packet_id, held) : -EINVAL;
}

int spool_record_incoming_clear(Buf *out, uint32_t salt)
{
    return small(out, salt, SPOOL_INCOMING_CLEAR, 0, 0, 0, 0);
}

#define SUB_FIXED 8 /* qos, flags, subid, filter_len */

int spool_session_sub_put(Buf *subs, const SpoolSessionSub *sub)
{
    if (sub->filter.n == 0 || sub->filter.n > 65535 || sub->qos > 2) {
        return -E2BIG;
    }
    int r = buf_reserve(subs, SUB_FIXED + sub->filter.n);
    if (r < 0) {
        return r;
    }
    uint8_t *w = subs->data + subs->len;
    w[0] = sub->qos;
    w[1] = (uint8_t)(sub->base64 | sub->no_local << 1 | sub->retain_as_published << 2);
    put_le(w + 2, sub->subid, 4);
    put_le(w + 6, sub->filter.n, 2);
    put_view(w + SUB_FIXED, sub->filter);
    subs->len += SUB_FIXED + sub->filter.n;
    return 0;
}

int spool_session_sub_next(View *subs, SpoolSessionSub *ret)
{
    if (subs->n == 0) {
        return 0;
    }
    if (subs->n < SUB_FIXED) {
        return -EBADMSG;
    }
    size_t n = (size_t)get_le(subs->p + 6, 2);
    if (subs->p[0] > 2 || subs->p[1] > 7 || n == 0 || n > subs->n - SUB_FIXED) {
        return -EBADMSG;
    }
    *ret = (SpoolSessionSub){.qos = subs->p[0],
                             .base64 = subs->p[1] & 1,
                             .no_local = subs->p[1] >> 1 & 1,
                             .retain_as_published = subs->p[1] >> 2 & 1,
                             .subid = (uint32_t)get_le(subs->p + 2, 4),
                             .filter = VIEW(subs->p + SUB_FIXED, n)};
    *subs = VIEW(subs->p + SUB_FIXED + n, subs->n - SUB_FIXED - n);
    return 1;
}

/* uid, expiry, left_at, next_seq, acked, dropped, dropped_total, name_len, subs_len */
#define SESSION_FIXED 54
#define KEPT_FIXED    36 /* session, session_seq, kept_at, qos, flags, 3 lengths */

int spool_record_session(Buf *out, uint32_t salt, const SpoolSession *m)
{
    if (m->id == 0 || m->name.n == 0 || m->name.n > 65535 || m->left_at < 0) {
        return -EINVAL;
    }
    if (m->subs.n > SPOOL_RECORD_MAX - BODY_MIN - SESSION_FIXED - m->name.n) {
        return -E2BIG;
    }
    uint8_t *h;
    int r = begin(out, SPOOL_SESSION, m->id, SESSION_FIXED + m->name.n + m->subs.n, &h);
    if (r < 0) {
        return r;
    }
    uint8_t *w = h + 8 + BODY_MIN;
    put_le(w, m->uid, 4);
    put_le(w + 4, m->expiry, 4);
    put_le(w + 8, (uint64_t)m->left_at, 8);
    put_le(w + 16, m->next_seq, 8);
    put_le(w + 24, m->acked, 8);
    put_le(w + 32, m->dropped, 8);
    put_le(w + 40, m->dropped_total, 8);
    put_le(w + 48, m->name.n, 2);
    put_le(w + 50, m->subs.n, 4);
    put_view(put_view(w + SESSION_FIXED, m->name), m->subs);
    finish(out, h, salt);
    return 0;
}

int spool_record_session_ack(Buf *out, uint32_t salt, uint64_t id, uint64_t acked)
{
    uint8_t *h;
    int r = id && acked ? begin(out, SPOOL_SESSION_ACK, id, 8, &h) : -EINVAL;
    if (r < 0) {
        return r;
    }
    put_le(h + 8 + BODY_MIN, acked, 8);
    finish(out, h, salt);
    return 0;
}

int spool_record_kept(Buf *out, uint32_t salt, uint64_t seq, const SpoolRecord *m)
{
    if (m->session == 0 || m->qos > 2 || m->kept_at < 0) {
        return -EINVAL;
    }
    if (m->topic.n > 65535 || m->props.n > SPOOL_RECORD_MAX ||
        m->payload.n + m->props.n > SPOOL_RECORD_MAX - BODY_MIN - KEPT_FIXED - m->topic.n) {
        return -E2BIG;
    }
    uint8_t *h;
    int r = begin(out, SPOOL_KEPT, seq, KEPT_FIXED + m->topic.n + m->payload.n + m->props.n, &h);
    if (r < 0) {
        return r;
    }
    uint8_t *w = h + 8 + BODY_MIN;
    put_le(w, m->session, 8);
    put_le(w + 8, m->session_seq, 8);
    put_le(w + 16, (uint64_t)m->kept_at, 8);
    w[24] = m->qos;
    w[25] = (uint8_t)(m->retain | m->base64 << 1);
    put_le(w + 26, m->topic.n, 2);
    put_le(w + 28, m->payload.n, 4);
    put_le(w + 32, m->props.n, 4);
    put_view(put_view(put_view(w + KEPT_FIXED, m->topic), m->payload), m->props);
    finish(out, h, salt);
    return 0;
}

static int parse_session(const uint8_t *b, size_t len, SpoolRecord *rec)
{
    if (len < BODY_MIN + SESSION_FIXED || rec->seq == 0) {
        return -EBADMSG;
    }
    const uint8_t *w = b + BODY_MIN;
    size_t nn = (size_t)get_le(w + 48, 2), sn = (size_t)get_le(w + 50, 4);
    SpoolSession *m = &rec->sess;
    *m = (SpoolSession){.id = rec->seq,
                        .uid = (uint32_t)get_le(w, 4),
                        .expiry = (uint32_t)get_le(w + 4, 4),
                        .left_at = (int64_t)get_le(w + 8, 8),
                        .next_seq = get_le(w + 16, 8),
                        .acked = get_le(w + 24, 8),
                        .dropped = get_le(w + 32, 8),
                        .dropped_total = get_le(w + 40, 8)};
    if (nn == 0 || m->left_at < 0 || sn > len || BODY_MIN + SESSION_FIXED + nn + sn != len) {
        return -EBADMSG;
    }
    m->name = VIEW(w + SESSION_FIXED, nn);
    m->subs = VIEW(w + SESSION_FIXED + nn, sn);
    View subs = m->subs;
    SpoolSessionSub sub;
    int r;
    while ((r = spool_session_sub_next(&subs, &sub)) == 1) {
    }
    return r;
}

static int parse_kept(const uint8_t *b, size_t len, SpoolRecord *rec)
{
    if (len < BODY_MIN + KEPT_FIXED) {
        return -EBADMSG;
    }
    const uint8_t *w = b + BODY_MIN;
    rec->session = get_le(w, 8);
    rec->session_seq = get_le(w + 8, 8);
    rec->kept_at = (int64_t)get_le(w + 16, 8);
    rec->qos = w[24];
    rec->retain = w[25] & 1;
    rec->base64 = w[25] >> 1 & 1;
    size_t tn = (size_t)get_le(w + 26, 2), pn = (size_t)get_le(w + 28, 4),
           xn = (size_t)get_le(w + 32, 4);
    if (rec->session == 0 || rec->kept_at < 0 || rec->qos > 2 || w[25] > 3 || pn > len ||
        xn > len || BODY_MIN + KEPT_FIXED + tn + pn + xn != len) {
        return -EBADMSG;
    }
    rec->topic = VIEW(w + KEPT_FIXED, tn);
    rec->payload = VIEW(w + KEPT_FIXED + tn, pn);
    rec->props = VIEW(w + KEPT_FIXED + tn + pn, xn);
    return 0;
}

static int parse_header(const uint8_t *b, size_t len, SpoolRecord *rec)
{
    if (len < SPOOL_HEADER_MIN - 8 || rec->seq != 0 || memcmp(b + BODY_MIN, SPOOL_MAGIC, 8)) {
        return -EBADMSG;
    }
    const uint8_t *w = b + BODY_MIN + 8;
    rec->version = (uint32_t)get_le(w, 4);
    rec->salt = (uint32_t)get_le(w + 4, 4);
    size_t n = (size_t)get_le(w + 8, 4);
    if (rec->version < 2 || rec->version > SPOOL_FORMAT || n > 65536 ||
        len != SPOOL_HEADER_MIN - 8 + 2 * n) {
        return -EBADMSG;
    }
    rec->held_ids = VIEW(w + 12, 2 * n);
    for (size_t i = 1; i < n; i++) {
        if (get_le(w + 12 + 2 * i, 2) <= get_le(w + 12 + 2 * (i - 1), 2)) {
            return -EBADMSG;
        }
    }
    return 0;
}

/* The body's layout, per type (no checksum yet). */
static int parse_body(const uint8_t *b, size_t len, SpoolRecord *rec)
{
    switch (rec->type) {
    case SPOOL_ADD:
    case SPOOL_ADD5: {
        size_t fixed = rec->type == SPOOL_ADD5 ? 20 : 8;
        if (len < BODY_MIN + fixed) {
            return -EBADMSG;
        }
        rec->qos = b[9];
        rec->retain = b[10] & 1;
        size_t tn = (size_t)get_le(b + 11, 2), pn = (size_t)get_le(b + 13, 4), xn = 0;
        if (fixed == 20) {
            rec->expires_at = (int64_t)get_le(b + 17, 8);
            xn = (size_t)get_le(b + 25, 4);
        }
        if (rec->qos > 2 || b[10] > 1 || rec->expires_at < 0 || tn > len || pn > len || xn > len ||
            BODY_MIN + fixed + tn + pn + xn != len) {
            return -EBADMSG;
        }
        rec->topic = VIEW(b + BODY_MIN + fixed, tn);
        rec->payload = VIEW(b + BODY_MIN + fixed + tn, pn);
        rec->props = VIEW(b + BODY_MIN + fixed + tn + pn, xn);
        return 0;
    }
    case SPOOL_DONE:
        return len == BODY_MIN ? 0 : -EBADMSG;
    case SPOOL_INCOMING_CLEAR:
        return len == BODY_MIN && rec->seq == 0 ? 0 : -EBADMSG;
    case SPOOL_STATE:
    case SPOOL_INCOMING:
        if (len != BODY_MIN + 3) {
            return -EBADMSG;
        }
        rec->packet_id = (uint16_t)get_le(b + 9, 2);
        if (rec->packet_id == 0 || b[11] > 1 || (rec->type == SPOOL_INCOMING && rec->seq != 0)) {
            return -EBADMSG;
        }
        rec->pubrec = rec->type == SPOOL_STATE && b[11];
        rec->held = rec->type == SPOOL_INCOMING && b[11];
        return 0;
    case SPOOL_HEADER:
        return parse_header(b, len, rec);
    case SPOOL_SESSION:
        return parse_session(b, len, rec);
    case SPOOL_SESSION_ACK:
        rec->sess = (SpoolSession){.id = rec->seq};
        if (len != BODY_MIN + 8 || rec->seq == 0 || !(rec->sess.acked = get_le(b + BODY_MIN, 8))) {
            return -EBADMSG;
        }
        return 0;
    case SPOOL_KEPT:
        return parse_kept(b, len, rec);
    }
    return -EBADMSG;
}

int spool_record_parse(View in, uint32_t salt, SpoolRecord *ret)
{
    if (in.n < 8) {
        return 0;
    }
    uint32_t crc = (uint32_t)get_le(in.p, 4);
    size_t len = (size_t)get_le(in.p + 4, 4);
    if (len < BODY_MIN || len > SPOOL_RECORD_MAX) {
        return -EBADMSG;
    }
    if (in.n - 8 < len) {
        return 0;
    }
    const uint8_t *b = in.p + 8;
    SpoolRecord rec = {
        .type = (enum spool_record_type)b[0], .seq = get_le(b + 1, 8), .size = 8 + len};
    if (parse_body(b, len, &rec) < 0) {
        return -EBADMSG;
    }
    if (crc32_update(rec.type == SPOOL_HEADER ? 0 : salt, VIEW(in.p + 4, 4 + len)) != crc) {
        return -EBADMSG;
    }
    *ret = rec;
    return 1;
}

void spool_record_held(const SpoolRecord *header, uint64_t *bitmap)
{
    memset(bitmap, 0, SPOOL_HELD_WORDS * sizeof(*bitmap));
    for (size_t i = 0; i + 1 < header->held_ids.n; i += 2) {
        uint16_t id = (uint16_t)get_le(header->held_ids.p + i, 2);
        bitmap[id / 64] |= 1ull << (id % 64);
    }
}

int spool_reader_init(SpoolReader *r, View segment)
{
    *r = (SpoolReader){.in = segment, .version = 1};
    const uint8_t *p = segment.p;
    if (segment.n < SPOOL_HEADER_VERSION + 4 || p[8] != SPOOL_HEADER ||
        memcmp(p + 8 + BODY_MIN, SPOOL_MAGIC, 8)) {
        return 0;
    }
    uint32_t version = (uint32_t)get_le(p + SPOOL_HEADER_VERSION, 4);
    if (version > SPOOL_FORMAT) {
        r->version = version;
        return -EPROTONOSUPPORT;
    }
    /* Below 2 here is damage, found by the parse. */
    r->version = version >= 2 ? version : SPOOL_FORMAT;
    if (segment.n >= SPOOL_HEADER_VERSION + 8) {
        r->salt = (uint32_t)get_le(p + SPOOL_HEADER_VERSION + 4, 4);
    }
    return 0;
}

/* A good record at `off` that may stand there: a header only first, each type only in a
 * segment of a format that has it. */
static bool good_at(const SpoolReader *r, size_t off, SpoolRecord *ret)
{
    if (spool_record_parse(VIEW(r->in.p + off, r->in.n - off), r->salt, ret) != 1) {
        return false;
    }
    if (ret->type == SPOOL_HEADER) {
        return off == 0;
    }
    if (ret->type >= SPOOL_SESSION) {
        return r->version >= 4;
    }
    if (ret->type == SPOOL_ADD5) {
        return r->version >= 3;
    }
    return r->version >= 2 || ret->type == SPOOL_ADD || ret->type == SPOOL_DONE;
}

int spool_reader_next(SpoolReader *r, SpoolRecord *ret_rec, size_t *ret_off, size_t *ret_len)
{
    size_t at = r->off, n = r->in.n;
    if (at >= n) {
        return SPOOL_READ_END;
    }
    SpoolRecord rec;
    if (good_at(r, at, &rec)) {
        r->off += rec.size;
        if (rec.type == SPOOL_HEADER) {
            r->salt = rec.salt;
        }
        *ret_rec = rec;
        *ret_off = at;
        *ret_len = rec.size;
        return SPOOL_READ_RECORD;
    }
    for (size_t k = at + 1; k + 8 + BODY_MIN <= n; k++) {
        if (good_at(r, k, &rec)) {
            r->off = k;
            *ret_off = at;
            *ret_len = k - at;
            return SPOOL_READ_DAMAGED;
        }
    }
    r->off = n;
    *ret_off = at;
    *ret_len = n - at;
    return SPOOL_READ_TORN;
}
