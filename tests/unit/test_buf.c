/* SPDX-License-Identifier: MIT */
/* Unit tests of Buf and of the UTF-8 validator. */
#include <errno.h>

#include "testutil.h"
#include "utf8.h"

START_TEST(append_consume)
{
    Buf b = {0};
    ck_assert_int_eq(buf_append(&b, "hello", 5), 0);
    ck_assert_int_eq(buf_put_u8(&b, ' '), 0);
    ck_assert_int_eq(buf_put_u16(&b, 0x4142), 0);
    ck_assert_view_str(buf_view(&b), "hello AB");
    buf_consume(&b, 6);
    ck_assert_view_str(buf_view(&b), "AB");
    buf_consume(&b, 100);
    ck_assert_uint_eq(buf_size(&b), 0);
    ck_assert_uint_eq(b.off, 0);
    buf_free(&b);
    ck_assert_ptr_null(b.data);
}
END_TEST

START_TEST(growth_keeps_bytes)
{
    Buf b = {0};
    for (int i = 0; i < 10000; i++) {
        uint8_t c = (uint8_t)i;
        ck_assert_int_eq(buf_append(&b, &c, 1), 0);
        if (i % 3 == 0) {
            buf_consume(&b, 1);
        }
    }
    View v = buf_view(&b);
    ck_assert_uint_eq(v.n, 10000 - 3334);
    /* The first unread byte is the 3334th written. */
    ck_assert_uint_eq(v.p[0], (uint8_t)3334);
    ck_assert_uint_eq(v.p[v.n - 1], (uint8_t)9999);
    buf_free(&b);
}
END_TEST

START_TEST(hard_maximum)
{
    Buf b = {.max = 8};
    ck_assert_int_eq(buf_append(&b, "12345678", 8), 0);
    ck_assert_int_eq(buf_append(&b, "9", 1), -ENOBUFS);
    ck_assert_view_str(buf_view(&b), "12345678");
    buf_consume(&b, 4);
    ck_assert_int_eq(buf_append(&b, "abcd", 4), 0);
    ck_assert_view_str(buf_view(&b), "5678abcd");
    ck_assert_int_eq(buf_reserve(&b, 1), -ENOBUFS);
    buf_free(&b);
    ck_assert_uint_eq(b.max, 8);
}
END_TEST

START_TEST(shrink)
{
    Buf b = {0};
    ck_assert_int_eq(buf_reserve(&b, 1 << 20), 0);
    ck_assert_int_eq(buf_append(&b, "xy", 2), 0);
    buf_shrink(&b, 4096);
    ck_assert_uint_eq(b.cap, 4096);
    ck_assert_view_str(buf_view(&b), "xy");
    buf_free(&b);
}
END_TEST

static const struct {
    const char *s;
    size_t n;
    bool ok;
} utf8_cases[] = {
    {"", 0, true},
    {"plain ascii", 11, true},
    {"\xc3\xa9", 2, true},              /* é */
    {"\xe2\x82\xac", 3, true},          /* € */
    {"\xf0\x9f\x98\x80", 4, true},      /* emoji */
    {"\xef\xbb\xbf", 3, true},          /* BOM is a valid character */
    {"\xf4\x8f\xbf\xbf", 4, true},      /* U+10FFFF */
    {"\xf4\x90\x80\x80", 4, false},     /* past U+10FFFF */
    {"\xc0\x80", 2, false},             /* overlong NUL */
    {"\xc1\xbf", 2, false},             /* overlong */
    {"\xe0\x80\xaf", 3, false},         /* overlong '/' */
    {"\xf0\x80\x80\xaf", 4, false},     /* overlong '/' */
    {"\xed\xa0\x80", 3, false},         /* U+D800 surrogate */
    {"\xed\xbf\xbf", 3, false},         /* U+DFFF surrogate */
    {"\x80", 1, false},                 /* lone continuation */
    {"\xc3", 1, false},                 /* truncated */
    {"\xe2\x82", 2, false},             /* truncated */
    {"\xe2\x28\xa1", 3, false},         /* bad continuation */
    {"\xf8\x88\x80\x80\x80", 5, false}, /* 5-byte form */
    {"\xff", 1, false},
};

START_TEST(utf8)
{
    View v = VIEW(utf8_cases[_i].s, utf8_cases[_i].n);
    ck_assert_msg(utf8_valid(v, false) == utf8_cases[_i].ok, "case %d", _i);
}
END_TEST

START_TEST(utf8_nul)
{
    ck_assert(!utf8_valid(VIEW("a\0b", 3), false));
    ck_assert(utf8_valid(VIEW("a\0b", 3), true));
}
END_TEST

static Suite *buf_suite(void)
{
    Suite *s = suite_create("buf");
    TCase *tc = tcase_create("buf");
    tcase_add_test(tc, append_consume);
    tcase_add_test(tc, growth_keeps_bytes);
    tcase_add_test(tc, hard_maximum);
    tcase_add_test(tc, shrink);
    tcase_add_loop_test(tc, utf8, 0, sizeof(utf8_cases) / sizeof(utf8_cases[0]));
    tcase_add_test(tc, utf8_nul);
    suite_add_tcase(s, tc);
    return s;
}

CHECK_MAIN(buf_suite)
