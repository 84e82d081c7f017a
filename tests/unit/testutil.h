/* SPDX-License-Identifier: MIT */
/* Helpers shared by the Check unit suites. */
#pragma once

#include <check.h>
#include <stdio.h>
#include <stdlib.h>

#include "buf.h"

/* Parse "10 0d 00 04" (spaces optional) into a static buffer. */
static inline View unhex(const char *hex)
{
    static uint8_t out[4][4096];
    static int slot;
    uint8_t *o = out[slot++ % 4];
    size_t n = 0;
    for (const char *s = hex; *s;) {
        if (*s == ' ') {
            s++;
            continue;
        }
        unsigned v;
        ck_assert_msg(sscanf(s, "%2x", &v) == 1, "bad hex near '%s'", s);
        ck_assert(n < sizeof(out[0]));
        o[n++] = (uint8_t)v;
        s += 2;
    }
    return VIEW(o, n);
}

#define ck_assert_view_eq(a, b)                                                                    \
    do {                                                                                           \
        View a_ = (a), b_ = (b);                                                                   \
        ck_assert_uint_eq(a_.n, b_.n);                                                             \
        if (a_.n) { /* an empty view may have a NULL pointer */                                    \
            ck_assert_mem_eq(a_.p, b_.p, a_.n);                                                    \
        }                                                                                          \
    } while (0)

#define ck_assert_view_str(a, s) ck_assert_view_eq((a), VIEW_STR(s))

/* main() running one suite; exit status 1 when anything failed. */
#define CHECK_MAIN(suite_fn)                                                                       \
    int main(void)                                                                                 \
    {                                                                                              \
        SRunner *sr = srunner_create(suite_fn());                                                  \
        srunner_run_all(sr, CK_NORMAL);                                                            \
        int failed = srunner_ntests_failed(sr);                                                    \
        srunner_free(sr);                                                                          \
        return failed ? EXIT_FAILURE : EXIT_SUCCESS;                                               \
    }
