/* SPDX-License-Identifier: MIT */
/*
 * Fuzz spool recovery's reader over a whole segment's bytes: every step must make progress
 * and stay inside the input, and every record it accepts must encode back to the very bytes
 * it was read from (so nothing is accepted that the writer could not have written).
 */
#include <stdlib.h>
#include <string.h>

#include "spool/record.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int encode(Buf *out, uint32_t salt, const SpoolRecord *r)
{
    static uint64_t held[SPOOL_HELD_WORDS];
    switch (r->type) {
    case SPOOL_ADD:
    case SPOOL_ADD5:
        return spool_record_add(out, salt, r->seq, r->qos, r->retain, r->topic, r->payload,
                                r->props, r->expires_at);
    case SPOOL_DONE:
        return spool_record_done(out, salt, r->seq);
    case SPOOL_HEADER:
        spool_record_held(r, held);
        return spool_record_header(out, r->salt, held);
    case SPOOL_STATE:
        return spool_record_state(out, salt, r->seq, r->packet_id, r->pubrec);
    case SPOOL_INCOMING:
        return spool_record_incoming(out, salt, r->packet_id, r->held);
    case SPOOL_INCOMING_CLEAR:
        return spool_record_incoming_clear(out, salt);
    case SPOOL_SESSION:
        return spool_record_session(out, salt, &r->sess);
    case SPOOL_SESSION_ACK:
        return spool_record_session_ack(out, salt, r->seq, r->sess.acked);
    case SPOOL_KEPT:
        return spool_record_kept(out, salt, r->seq, r);
    }
    return -1;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    SpoolReader rd;
    if (spool_reader_init(&rd, VIEW(data, size)) < 0) {
        if (rd.version <= SPOOL_FORMAT) {
            abort();
        }
        return 0;
    }
    Buf b = {0};
    SpoolRecord r;
    size_t off, len, expect = 0;
    int k;
    while ((k = spool_reader_next(&rd, &r, &off, &len)) != SPOOL_READ_END) {
        if (off != expect || len == 0 || off + len > size || rd.off != off + len) {
            abort();
        }
        expect = off + len;
        if (k == SPOOL_READ_TORN && rd.off != size) {
            abort();
        }
        if (k != SPOOL_READ_RECORD) {
            continue;
        }
        uint32_t salt = r.type == SPOOL_HEADER ? r.salt : rd.salt;
        buf_clear(&b);
        if (r.size != len || encode(&b, salt, &r) < 0 || b.len != len) {
            abort();
        }
        if (r.type == SPOOL_HEADER && r.version != SPOOL_FORMAT) {
            /* An older format's header (we write only ours): its version, sealed again. */
            for (int i = 0; i < 4; i++) {
                b.data[SPOOL_HEADER_VERSION + i] = (uint8_t)(r.version >> (8 * i));
            }
            spool_record_reseal(b.data, b.len, 0);
        }
        if (memcmp(b.data, data + off, len) != 0) {
            abort();
        }
    }
    if (expect != size) {
        abort();
    }
    buf_free(&b);
    return 0;
}
