/* SPDX-License-Identifier: MIT */
/* Unit tests of the router: holder counts, once-per-target delivery, retained routing, and a
 * randomized comparison of trie matching with mqtt_topic_matches(). */
#include <errno.h>

#include "mqtt/topic.h"
#include "router.h"
#include "testutil.h"

static bool matched(RouterTarget **m, size_t n, const RouterTarget *t)
{
    for (size_t i = 0; i < n; i++) {
        if (m[i] == t) {
            return true;
        }
    }
    return false;
}

START_TEST(holder_counts)
{
    Router r;
    RouterTarget a = {0}, b = {0};
    ck_assert_int_eq(router_init(&r), 0);
    ck_assert_int_eq(router_add(&r, VIEW_STR("s/+"), &a, 0, false), ROUTER_FIRST);
    ck_assert_int_eq(router_add(&r, VIEW_STR("s/+"), &b, 0, false), 0);
    ck_assert_int_eq(router_add(&r, VIEW_STR("s/+"), &b, 2, false), ROUTER_UPGRADE);
    ck_assert_int_eq(router_filter(&r, VIEW_STR("s/+"))->broker_qos, 2);
    ck_assert_int_eq(router_add(&r, VIEW_STR("s/+"), &a, 1, false), 0);
    ck_assert_uint_eq(router_filter(&r, VIEW_STR("s/+"))->holders, 2);
    ck_assert_uint_eq(r.subscriptions, 2);
    ck_assert(router_holds(&r, VIEW_STR("s/+"), &a));
    ck_assert(!router_holds(&r, VIEW_STR("s/#"), &a));
    ck_assert_int_eq(router_remove(&r, VIEW_STR("s/#"), &a), -ENOENT);
    ck_assert_int_eq(router_remove(&r, VIEW_STR("s/+"), &a), 0);
    ck_assert_int_eq(router_remove(&r, VIEW_STR("s/+"), &a), -ENOENT);
    ck_assert_int_eq(router_remove(&r, VIEW_STR("s/+"), &b), ROUTER_LAST);
    ck_assert_ptr_null(router_filter(&r, VIEW_STR("s/+")));
    /* Everything pruned. */
    ck_assert_uint_eq(r.edges.count, 0);
    ck_assert_uint_eq(r.filters.count, 0);
    router_free(&r);
}
END_TEST

START_TEST(once_per_target)
{
    Router r;
    RouterTarget a = {0}, b = {0}, c = {0};
    RouterTarget **m;
    ck_assert_int_eq(router_init(&r), 0);
    router_add(&r, VIEW_STR("x/#"), &a, 0, false);
    router_add(&r, VIEW_STR("x/+/z"), &a, 2, false);
    router_add(&r, VIEW_STR("x/y/z"), &a, 1, true);
    router_add(&r, VIEW_STR("x/y/z"), &b, 1, false);
    router_add(&r, VIEW_STR("#"), &c, 0, false);
    size_t n = router_match(&r, VIEW_STR("x/y/z"), false, &m);
    ck_assert_uint_eq(n, 3);
    ck_assert(matched(m, n, &a) && matched(m, n, &b) && matched(m, n, &c));
    ck_assert_int_eq(a.qos, 2);
    ck_assert(a.base64);
    ck_assert_int_eq(b.qos, 1);
    ck_assert(!b.base64);
    n = router_match(&r, VIEW_STR("x"), false, &m); /* "x/#" matches its parent */
    ck_assert_uint_eq(n, 2);
    ck_assert_int_eq(a.qos, 0);
    ck_assert(!a.base64);
    n = router_match(&r, VIEW_STR("$SYS/x"), false, &m);
    ck_assert_uint_eq(n, 0);
    n = router_match(&r, VIEW_STR("y"), false, &m);
    ck_assert_uint_eq(n, 1);
    ck_assert_ptr_eq(m[0], &c);
    router_free(&r);
}
END_TEST

START_TEST(shared_and_plain_on_one_node)
{
    Router r;
    RouterTarget a = {0};
    RouterTarget **m;
    ck_assert_int_eq(router_init(&r), 0);
    ck_assert_int_eq(router_add(&r, VIEW_STR("a/b"), &a, 0, false), ROUTER_FIRST);
    ck_assert_int_eq(router_add(&r, VIEW_STR("$share/g/a/b"), &a, 1, false), ROUTER_FIRST);
    ck_assert_uint_eq(router_match(&r, VIEW_STR("a/b"), false, &m), 1);
    ck_assert_int_eq(a.qos, 1);
    ck_assert_int_eq(router_remove(&r, VIEW_STR("a/b"), &a), ROUTER_LAST);
    ck_assert(router_holds(&r, VIEW_STR("$share/g/a/b"), &a));
    ck_assert_uint_eq(router_match(&r, VIEW_STR("a/b"), false, &m), 1);
    ck_assert_int_eq(router_remove(&r, VIEW_STR("$share/g/a/b"), &a), ROUTER_LAST);
    router_free(&r);
}
END_TEST

START_TEST(retained_only_to_fresh)
{
    Router r;
    RouterTarget old = {0}, fresh = {0};
    RouterTarget **m;
    ck_assert_int_eq(router_init(&r), 0);
    router_add(&r, VIEW_STR("r/#"), &old, 0, false);
    router_settle(&r, VIEW_STR("r/#"), &old);
    router_add(&r, VIEW_STR("r/#"), &fresh, 0, false);
    ck_assert_uint_eq(router_match(&r, VIEW_STR("r/1"), true, &m), 1);
    ck_assert_ptr_eq(m[0], &fresh);
    ck_assert_uint_eq(router_match(&r, VIEW_STR("r/1"), false, &m), 2);
    router_settle(&r, VIEW_STR("r/#"), &fresh);
    ck_assert_uint_eq(router_match(&r, VIEW_STR("r/1"), true, &m), 0);
    router_free(&r);
}
END_TEST

/* Random filters and topics over a tiny alphabet, so they collide often. */
static void random_levels(unsigned *seed, char *out, bool filter)
{
    static const char *const lv[] = {"a", "b", "", "$s"};
    int n = 1 + rand_r(seed) % 4;
    out[0] = 0;
    for (int i = 0; i < n; i++) {
        int k = rand_r(seed) % (filter ? 7 : 4);
        const char *l = k < 4 ? lv[k] : k < 6 ? "+" : "#";
        if (k == 6) {
            i = n - 1; /* '#' only last */
        }
        strcat(out, l);
        if (i + 1 < n) {
            strcat(out, "/");
        }
    }
}

START_TEST(matches_like_topic_matches)
{
    enum { TARGETS = 40, TOPICS = 400 };
    Router r;
    RouterTarget t[TARGETS] = {{0}};
    char filters[TARGETS][40];
    unsigned seed = 12345;
    ck_assert_int_eq(router_init(&r), 0);
    for (int i = 0; i < TARGETS; i++) {
        do {
            random_levels(&seed, filters[i], true);
        } while (!filters[i][0]);
        ck_assert_int_eq(mqtt_filter_check(VIEW_STR(filters[i])), 0);
        ck_assert_int_ge(router_add(&r, VIEW_STR(filters[i]), &t[i], 0, false), 0);
    }
    for (int j = 0; j < TOPICS; j++) {
        char topic[40];
        do {
            random_levels(&seed, topic, false);
        } while (!topic[0]);
        RouterTarget **m;
        size_t n = router_match(&r, VIEW_STR(topic), false, &m);
        size_t want = 0;
        for (int i = 0; i < TARGETS; i++) {
            bool expect = mqtt_topic_matches(VIEW_STR(filters[i]), VIEW_STR(topic));
            want += expect;
            ck_assert_msg(matched(m, n, &t[i]) == expect, "%s ~ %s", filters[i], topic);
        }
        ck_assert_uint_eq(n, want);
    }
    for (int i = 0; i < TARGETS; i++) {
        ck_assert_int_ge(router_remove(&r, VIEW_STR(filters[i]), &t[i]), 0);
    }
    ck_assert_uint_eq(r.edges.count, 0);
    router_free(&r);
}
END_TEST

START_TEST(deep_topic)
{
    /* 30 000 levels: no stack blow-up, no quadratic time. */
    size_t n = 60000;
    char *topic = malloc(n);
    ck_assert_ptr_nonnull(topic);
    for (size_t i = 0; i < n; i += 2) {
        topic[i] = 'a';
        topic[i + 1] = '/';
    }
    topic[n - 1] = 'a';
    Router r;
    RouterTarget a = {0};
    RouterTarget **m;
    ck_assert_int_eq(router_init(&r), 0);
    router_add(&r, VIEW_STR("a/+/#"), &a, 0, false);
    ck_assert_uint_eq(router_match(&r, VIEW(topic, n), false, &m), 1);
    ck_assert_int_ge(router_add(&r, VIEW(topic, n), &a, 0, false), 0);
    ck_assert_uint_eq(router_match(&r, VIEW(topic, n), false, &m), 1);
    router_free(&r);
    free(topic);
}
END_TEST

static Suite *router_suite(void)
{
    Suite *s = suite_create("router");
    TCase *tc = tcase_create("router");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, holder_counts);
    tcase_add_test(tc, once_per_target);
    tcase_add_test(tc, shared_and_plain_on_one_node);
    tcase_add_test(tc, retained_only_to_fresh);
    tcase_add_test(tc, matches_like_topic_matches);
    tcase_add_test(tc, deep_topic);
    suite_add_tcase(s, tc);
    return s;
}

CHECK_MAIN(router_suite)
