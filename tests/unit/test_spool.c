/* SPDX-License-Identifier: MIT */
/* Unit tests of the spool record format: round trips, torn tails, corruption. */
#include <errno.h>

#include "spool/record.h"
#include "testutil.h"

START_TEST(crc32_vector)
{
    /* The standard check value of CRC-32/IEEE. */
    ck_assert_uint_eq(crc32_update(0, VIEW_STR("123456789")), 0xcbf43926u);
    ck_assert_uint_eq(crc32_update(0, VIEW_NULL), 0);
}
END_TEST

START_TEST(round_trip)
{
    Buf b = {0};
    ck_assert_int_eq(spool_record_add(&b, 7, 1, true, VIEW_STR("a/b"), VIEW("\0\1\2", 3)), 0);
    ck_assert_int_eq(spool_record_done(&b, 7), 0);
    ck_assert_int_eq(spool_record_add(&b, 8, 2, false, VIEW_STR("t"), VIEW_NULL), 0);
    SpoolRecord r;
    View in = buf_view(&b);
    ck_assert_int_eq(spool_record_parse(in, &r), 1);
    ck_assert_int_eq(r.type, SPOOL_ADD);
    ck_assert_uint_eq(r.seq, 7);
    ck_assert_int_eq(r.qos, 1);
    ck_assert(r.retain);
    ck_assert_view_str(r.topic, "a/b");
    ck_assert_view_eq(r.payload, VIEW("\0\1\2", 3));
    in = VIEW(in.p + r.size, in.n - r.size);
    ck_assert_int_eq(spool_record_parse(in, &r), 1);
    ck_assert_int_eq(r.type, SPOOL_DONE);
    ck_assert_uint_eq(r.seq, 7);
    in = VIEW(in.p + r.size, in.n - r.size);
    ck_assert_int_eq(spool_record_parse(in, &r), 1);
    ck_assert_uint_eq(r.seq, 8);
    ck_assert_uint_eq(r.payload.n, 0);
    ck_assert_uint_eq(r.size, in.n);
    buf_free(&b);
}
END_TEST

START_TEST(torn_at_every_length)
{
    Buf b = {0};
    ck_assert_int_eq(spool_record_add(&b, 1, 1, false, VIEW_STR("x/y"), VIEW_STR("payload")), 0);
    SpoolRecord r;
    for (size_t k = 0; k < b.len; k++) {
        ck_assert_int_eq(spool_record_parse(VIEW(b.data, k), &r), 0);
    }
    ck_assert_int_eq(spool_record_parse(buf_view(&b), &r), 1);
    buf_free(&b);
}
END_TEST

START_TEST(every_flipped_bit_is_caught)
{
    Buf b = {0};
    ck_assert_int_eq(spool_record_add(&b, 99, 1, false, VIEW_STR("t"), VIEW_STR("data")), 0);
    for (size_t i = 0; i < b.len * 8; i++) {
        b.data[i / 8] ^= (uint8_t)(1u << (i % 8));
        SpoolRecord r;
        int res = spool_record_parse(buf_view(&b), &r);
        /* A flipped length may also read as "incomplete": never as a good record. */
        ck_assert_msg(res == -EBADMSG || res == 0, "bit %zu: %d", i, res);
        b.data[i / 8] ^= (uint8_t)(1u << (i % 8));
    }
    buf_free(&b);
}
END_TEST

static Suite *spool_suite(void)
{
    Suite *s = suite_create("spool");
    TCase *tc = tcase_create("record");
    tcase_add_test(tc, crc32_vector);
    tcase_add_test(tc, round_trip);
    tcase_add_test(tc, torn_at_every_length);
    tcase_add_test(tc, every_flipped_bit_is_caught);
    suite_add_tcase(s, tc);
    return s;
}

CHECK_MAIN(spool_suite)
