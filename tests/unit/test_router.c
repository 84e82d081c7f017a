/* SPDX-License-Identifier: MIT */
/* Unit tests of the router: holder counts, once-per-target delivery, retained routing, shared
 * subscriptions (one member per message, in turns), and a randomized comparison of trie
 * matching with mqtt_topic_matches(). */
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
    size_t n = router_match(&r, VIEW_STR("x/y/z"), false, NULL, NULL, &m);
    ck_assert_uint_eq(n, 3);
    ck_assert(matched(m, n, &a) && matched(m, n, &b) && matched(m, n, &c));
    ck_assert_int_eq(a.qos, 2);
    ck_assert(a.base64);
    ck_assert_int_eq(b.qos, 1);
    ck_assert(!b.base64);
    n = router_match(&r, VIEW_STR("x"), false, NULL, NULL, &m); /* "x/#" matches its parent */
    ck_assert_uint_eq(n, 2);
    ck_assert_int_eq(a.qos, 0);
    ck_assert(!a.base64);
    n = router_match(&r, VIEW_STR("$SYS/x"), false, NULL, NULL, &m);
    ck_assert_uint_eq(n, 0);
    n = router_match(&r, VIEW_STR("y"), false, NULL, NULL, &m);
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
    ck_assert_uint_eq(router_match(&r, VIEW_STR("a/b"), false, NULL, NULL, &m), 1);
    ck_assert_int_eq(a.qos, 1);
    ck_assert_int_eq(router_remove(&r, VIEW_STR("a/b"), &a), ROUTER_LAST);
    ck_assert(router_holds(&r, VIEW_STR("$share/g/a/b"), &a));
    ck_assert_uint_eq(router_match(&r, VIEW_STR("a/b"), false, NULL, NULL, &m), 1);
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
    ck_assert_uint_eq(router_match(&r, VIEW_STR("r/1"), true, NULL, NULL, &m), 1);
    ck_assert_ptr_eq(m[0], &fresh);
    ck_assert_uint_eq(router_match(&r, VIEW_STR("r/1"), false, NULL, NULL, &m), 2);
    router_settle(&r, VIEW_STR("r/#"), &fresh);
    ck_assert_uint_eq(router_match(&r, VIEW_STR("r/1"), true, NULL, NULL, &m), 0);
    router_free(&r);
}
END_TEST

/* ---- shared subscriptions ---- */

/* router_ready_fn for the tests: ready unless listed in the NULL-terminated `full`. */
static bool not_full(const RouterTarget *t, void *userdata)
{
    for (RouterTarget **f = userdata; *f; f++) {
        if (*f == t) {
            return false;
        }
    }
    return true;
}

/* The single target a message to `topic` goes to. */
static RouterTarget *only(Router *r, const char *topic, router_ready_fn ready, void *ud)
{
    RouterTarget **m;
    ck_assert_uint_eq(router_match(r, VIEW_STR(topic), false, ready, ud, &m), 1);
    return m[0];
}

START_TEST(shared_one_member_per_message)
{
    Router r;
    RouterTarget a = {0}, b = {0};
    ck_assert_int_eq(router_init(&r), 0);
    ck_assert_int_eq(router_add(&r, VIEW_STR("$share/g/jobs/#"), &a, 1, false), ROUTER_FIRST);
    ck_assert_int_eq(router_add(&r, VIEW_STR("$share/g/jobs/#"), &b, 1, true), 0);
    ck_assert(router_filter(&r, VIEW_STR("$share/g/jobs/#"))->shared);
    int got_a = 0, got_b = 0;
    for (int i = 0; i < 20; i++) {
        RouterTarget *t = only(&r, "jobs/1", NULL, NULL);
        got_a += t == &a;
        got_b += t == &b;
        ck_assert_int_eq(t->qos, 1);
        ck_assert(t->base64 == (t == &b));
    }
    ck_assert_int_eq(got_a, 10);
    ck_assert_int_eq(got_b, 10);
    /* Not for other topics, nor for retained messages (even to a fresh member). */
    RouterTarget **m;
    ck_assert_uint_eq(router_match(&r, VIEW_STR("job"), false, NULL, NULL, &m), 0);
    ck_assert_uint_eq(router_match(&r, VIEW_STR("jobs/1"), true, NULL, NULL, &m), 0);
    router_free(&r);
}
END_TEST

START_TEST(shared_round_robin_spreads)
{
    Router r;
    RouterTarget t[3] = {{0}};
    int got[3] = {0};
    ck_assert_int_eq(router_init(&r), 0);
    for (int i = 0; i < 3; i++) {
        ck_assert_int_ge(router_add(&r, VIEW_STR("$share/g/w/+"), &t[i], 0, false), 0);
    }
    for (int i = 0; i < 300; i++) {
        RouterTarget *x = only(&r, "w/x", NULL, NULL);
        ck_assert_ptr_eq(x, &t[i % 3]); /* in the order they joined */
        got[x - t]++;
    }
    for (int i = 0; i < 3; i++) {
        ck_assert_int_eq(got[i], 100);
    }
    router_free(&r);
}
END_TEST

START_TEST(shared_skips_a_member_not_ready)
{
    Router r;
    RouterTarget a = {0}, b = {0}, c = {0};
    RouterTarget *full[] = {&b, NULL};
    ck_assert_int_eq(router_init(&r), 0);
    router_add(&r, VIEW_STR("$share/g/q"), &a, 0, false);
    router_add(&r, VIEW_STR("$share/g/q"), &b, 0, false);
    router_add(&r, VIEW_STR("$share/g/q"), &c, 0, false);
    ck_assert_ptr_eq(only(&r, "q", not_full, full), &a);
    ck_assert_ptr_eq(only(&r, "q", not_full, full), &c); /* b's turn, but b is full */
    ck_assert_ptr_eq(only(&r, "q", not_full, full), &a);
    ck_assert_ptr_eq(only(&r, "q", not_full, full), &c);
    full[0] = NULL; /* b has room again: it gets its turn back */
    ck_assert_ptr_eq(only(&r, "q", not_full, full), &a);
    ck_assert_ptr_eq(only(&r, "q", not_full, full), &b);
    ck_assert_ptr_eq(only(&r, "q", not_full, full), &c);
    router_free(&r);
}
END_TEST

START_TEST(shared_none_ready_still_one)
{
    Router r;
    RouterTarget a = {0}, b = {0}, c = {0};
    RouterTarget *full[] = {&a, &b, &c, NULL};
    ck_assert_int_eq(router_init(&r), 0);
    router_add(&r, VIEW_STR("$share/g/q"), &a, 0, false);
    router_add(&r, VIEW_STR("$share/g/q"), &b, 0, false);
    router_add(&r, VIEW_STR("$share/g/q"), &c, 0, false);
    /* Whose turn it is gets it (and drops it): the turns go on as usual. */
    ck_assert_ptr_eq(only(&r, "q", not_full, full), &a);
    ck_assert_ptr_eq(only(&r, "q", not_full, full), &b);
    ck_assert_ptr_eq(only(&r, "q", not_full, full), &c);
    ck_assert_ptr_eq(only(&r, "q", not_full, full), &a);
    full[0] = &c; /* only c is full now: b, a, b, ... */
    full[1] = NULL;
    ck_assert_ptr_eq(only(&r, "q", not_full, full), &b);
    ck_assert_ptr_eq(only(&r, "q", not_full, full), &a);
    ck_assert_ptr_eq(only(&r, "q", not_full, full), &b);
    router_free(&r);
}
END_TEST

START_TEST(shared_groups_each_one_copy)
{
    Router r;
    RouterTarget a1 = {0}, a2 = {0}, b1 = {0}, b2 = {0};
    RouterTarget **m;
    int got[4] = {0};
    RouterTarget *all[] = {&a1, &a2, &b1, &b2};
    ck_assert_int_eq(router_init(&r), 0);
    ck_assert_int_eq(router_add(&r, VIEW_STR("$share/a/x"), &a1, 0, false), ROUTER_FIRST);
    ck_assert_int_eq(router_add(&r, VIEW_STR("$share/a/x"), &a2, 0, false), 0);
    ck_assert_int_eq(router_add(&r, VIEW_STR("$share/b/x"), &b1, 0, false), ROUTER_FIRST);
    ck_assert_int_eq(router_add(&r, VIEW_STR("$share/b/x"), &b2, 0, false), 0);
    for (int i = 0; i < 10; i++) {
        size_t n = router_match(&r, VIEW_STR("x"), false, NULL, NULL, &m);
        ck_assert_uint_eq(n, 2);
        ck_assert(matched(m, n, &a1) != matched(m, n, &a2));
        ck_assert(matched(m, n, &b1) != matched(m, n, &b2));
        for (int j = 0; j < 4; j++) {
            got[j] += matched(m, n, all[j]);
        }
    }
    for (int j = 0; j < 4; j++) {
        ck_assert_int_eq(got[j], 5);
    }
    /* A subscriber in both groups is still returned once. */
    ck_assert_int_eq(router_add(&r, VIEW_STR("$share/b/x"), &a1, 0, false), 0);
    ck_assert_int_ge(router_remove(&r, VIEW_STR("$share/a/x"), &a2), 0);
    ck_assert_int_ge(router_remove(&r, VIEW_STR("$share/b/x"), &b1), 0);
    ck_assert_int_ge(router_remove(&r, VIEW_STR("$share/b/x"), &b2), 0);
    ck_assert_ptr_eq(only(&r, "x", NULL, NULL), &a1);
    router_free(&r);
}
END_TEST

START_TEST(shared_with_plain_holders)
{
    Router r;
    RouterTarget p = {0}, q = {0}, a = {0}, b = {0};
    RouterTarget **m;
    int got_a = 0;
    ck_assert_int_eq(router_init(&r), 0);
    router_add(&r, VIEW_STR("x/#"), &p, 0, false);
    router_add(&r, VIEW_STR("x/y"), &q, 2, false);
    router_add(&r, VIEW_STR("$share/g/x/y"), &a, 1, false);
    router_add(&r, VIEW_STR("$share/g/x/+"), &b, 1, false); /* another group: it is the filter */
    router_add(&r, VIEW_STR("$share/g/x/y"), &b, 1, false);
    for (int i = 0; i < 10; i++) {
        size_t n = router_match(&r, VIEW_STR("x/y"), false, NULL, NULL, &m);
        ck_assert(matched(m, n, &p) && matched(m, n, &q) && matched(m, n, &b));
        ck_assert_uint_eq(n, 3 + matched(m, n, &a)); /* b in both groups: once */
        got_a += matched(m, n, &a);
    }
    ck_assert_int_eq(got_a, 5);
    /* Retained: the fresh plain holders only. */
    router_settle(&r, VIEW_STR("x/#"), &p);
    ck_assert_uint_eq(router_match(&r, VIEW_STR("x/y"), true, NULL, NULL, &m), 1);
    ck_assert_ptr_eq(m[0], &q);
    router_free(&r);
}
END_TEST

START_TEST(shared_and_plain_one_client)
{
    Router r;
    RouterTarget a = {0}, b = {0};
    RouterTarget **m;
    int got_b = 0;
    ck_assert_int_eq(router_init(&r), 0);
    router_add(&r, VIEW_STR("j/#"), &a, 0, false);
    router_add(&r, VIEW_STR("$share/g/j/#"), &a, 1, true);
    router_add(&r, VIEW_STR("$share/g/j/#"), &b, 0, false);
    for (int i = 0; i < 10; i++) {
        size_t n = router_match(&r, VIEW_STR("j/1"), false, NULL, NULL, &m);
        ck_assert(matched(m, n, &a)); /* one copy, whether or not its turn in g */
        ck_assert_uint_eq(n, 1 + matched(m, n, &b));
        if (matched(m, n, &b)) {
            got_b++;
            ck_assert_int_eq(a.qos, 0);
        } else {
            ck_assert_int_eq(a.qos, 1); /* the shared holding's QoS and encoding */
            ck_assert(a.base64);
        }
    }
    ck_assert_int_eq(got_b, 5);
    router_free(&r);
}
END_TEST

START_TEST(shared_member_leaves)
{
    Router r;
    RouterTarget t[4] = {{0}};
    View f = VIEW_STR("$share/g/s");
    ck_assert_int_eq(router_init(&r), 0);
    for (int i = 0; i < 4; i++) {
        router_add(&r, f, &t[i], 0, false);
    }
    ck_assert_ptr_eq(only(&r, "s", NULL, NULL), &t[0]);
    ck_assert_ptr_eq(only(&r, "s", NULL, NULL), &t[1]);
    /* One before the turn leaves: t[2] is still next. */
    ck_assert_int_eq(router_remove(&r, f, &t[0]), 0);
    ck_assert_ptr_eq(only(&r, "s", NULL, NULL), &t[2]);
    /* The one whose turn it is leaves: the turn passes to the one after it. */
    ck_assert_int_eq(router_remove(&r, f, &t[3]), 0);
    ck_assert_ptr_eq(only(&r, "s", NULL, NULL), &t[1]);
    /* The one just served leaves; a newcomer joins at the end: t[2], t[0], t[2], ... */
    ck_assert_int_eq(router_remove(&r, f, &t[1]), 0);
    router_add(&r, f, &t[0], 0, false);
    for (int i = 0; i < 100; i++) {
        ck_assert_ptr_eq(only(&r, "s", NULL, NULL), i % 2 ? &t[0] : &t[2]);
    }
    ck_assert_int_eq(router_remove(&r, f, &t[2]), 0);
    ck_assert_ptr_eq(only(&r, "s", NULL, NULL), &t[0]);
    ck_assert_int_eq(router_remove(&r, f, &t[0]), ROUTER_LAST);
    RouterTarget **m;
    ck_assert_uint_eq(router_match(&r, VIEW_STR("s"), false, NULL, NULL, &m), 0);
    ck_assert_uint_eq(r.edges.count, 0);
    ck_assert_uint_eq(r.filters.count, 0);
    ck_assert_uint_eq(r.subscriptions, 0);
    router_free(&r);
}
END_TEST

START_TEST(shared_holder_counts)
{
    Router r;
    RouterTarget a = {0}, b = {0};
    View f = VIEW_STR("$share/g/h/+");
    ck_assert_int_eq(router_init(&r), 0);
    ck_assert_int_eq(router_add(&r, f, &a, 0, false), ROUTER_FIRST);
    ck_assert_int_eq(router_add(&r, f, &b, 1, false), ROUTER_UPGRADE);
    ck_assert_int_eq(router_add(&r, f, &a, 1, false), 0); /* an update, not a new member */
    ck_assert_uint_eq(router_filter(&r, f)->holders, 2);
    ck_assert_uint_eq(r.subscriptions, 2);
    ck_assert(router_holds(&r, f, &a));
    ck_assert(!router_holds(&r, VIEW_STR("h/+"), &a));
    ck_assert(!router_holds(&r, VIEW_STR("$share/k/h/+"), &a));
    router_settle(&r, f, &a); /* harmless */
    ck_assert_int_eq(router_remove(&r, VIEW_STR("h/+"), &a), -ENOENT);
    ck_assert_int_eq(router_remove(&r, f, &a), 0);
    ck_assert_int_eq(router_remove(&r, f, &a), -ENOENT);
    ck_assert_ptr_eq(only(&r, "h/1", NULL, NULL), &b);
    ck_assert_int_eq(router_remove(&r, f, &b), ROUTER_LAST);
    ck_assert_ptr_null(router_filter(&r, f));
    ck_assert_uint_eq(r.edges.count, 0);
    ck_assert_uint_eq(r.filters.count, 0);
    router_free(&r);
}
END_TEST

START_TEST(shared_root_wildcard_not_for_dollar)
{
    Router r;
    RouterTarget a = {0};
    RouterTarget **m;
    ck_assert_int_eq(router_init(&r), 0);
    router_add(&r, VIEW_STR("$share/g/#"), &a, 0, false);
    ck_assert_uint_eq(router_match(&r, VIEW_STR("$SYS/x"), false, NULL, NULL, &m), 0);
    ck_assert_ptr_eq(only(&r, "x", NULL, NULL), &a);
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
        size_t n = router_match(&r, VIEW_STR(topic), false, NULL, NULL, &m);
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
    ck_assert_uint_eq(router_match(&r, VIEW(topic, n), false, NULL, NULL, &m), 1);
    ck_assert_int_ge(router_add(&r, VIEW(topic, n), &a, 0, false), 0);
    ck_assert_uint_eq(router_match(&r, VIEW(topic, n), false, NULL, NULL, &m), 1);
    router_free(&r);
    free(topic);
}
END_TEST

/* A granted filter, as the daemon marks one on its SUBACK; its subscription identifier. */
static uint32_t grant(Router *r, const char *filter, uint8_t qos)
{
    RouterFilter *fc = router_filter(r, VIEW_STR(filter));
    ck_assert_ptr_nonnull(fc);
    fc->active = true;
    fc->granted = qos;
    return fc->subid;
}

static size_t copy(Router *r, const char *topic, bool retained, uint32_t id, RouterTarget ***m)
{
    return router_match_copy(r, VIEW_STR(topic), retained, &id, 1, NULL, NULL, m);
}

/* MQTT 5 sends a copy per subscription at its QoS: each holder takes the copy of its own best
 * filter (the highest granted QoS), so it gets the message once and at the best QoS. */
START_TEST(copies_once_at_the_best_qos)
{
    Router r;
    RouterTarget a = {0}, b = {0};
    RouterTarget **m;
    ck_assert_int_eq(router_init(&r), 0);
    router_add(&r, VIEW_STR("q/#"), &a, 0, false);
    router_add(&r, VIEW_STR("q/+/x"), &b, 1, false);
    router_add(&r, VIEW_STR("q/+/x"), &a, 1, false);
    uint32_t low = grant(&r, "q/#", 0), high = grant(&r, "q/+/x", 1);
    size_t n = copy(&r, "q/a/x", false, low, &m);
    ck_assert_uint_eq(n, 0); /* a and b both take the QoS 1 copy */
    n = copy(&r, "q/a/x", false, high, &m);
    ck_assert_uint_eq(n, 2);
    ck_assert(matched(m, n, &a) && matched(m, n, &b));
    /* A topic only q/# matches: its copy goes to a. */
    n = copy(&r, "q/other", false, low, &m);
    ck_assert_uint_eq(n, 1);
    ck_assert_ptr_eq(m[0], &a);
    /* A filter still waiting for its SUBACK ranks below a granted one. */
    router_add(&r, VIEW_STR("q/a/x"), &a, 2, false);
    uint32_t pending = router_filter(&r, VIEW_STR("q/a/x"))->subid;
    ck_assert_uint_eq(copy(&r, "q/a/x", false, pending, &m), 0);
    ck_assert_uint_eq(copy(&r, "q/a/x", false, high, &m), 2);
    /* No identifiers: plain matching. */
    ck_assert_uint_eq(router_match_copy(&r, VIEW_STR("q/a/x"), false, NULL, 0, NULL, NULL, &m), 2);
    router_free(&r);
}
END_TEST

/* A recovered session's filter keeps the identifier an earlier run gave it; new filters never
 * take one that is in use, and a filter that goes frees its identifier. */
START_TEST(subscription_ids_stay_unique)
{
    Router r;
    RouterTarget a = {0}, b = {0};
    RouterTarget **m;
    ck_assert_int_eq(router_init(&r), 0);
    r.next_subid = 5;
    router_add(&r, VIEW_STR("old/#"), &a, 1, false);
    ck_assert_int_eq(router_set_subid(&r, VIEW_STR("old/#"), 6), 0);
    ck_assert_uint_eq(grant(&r, "old/#", 1), 6);
    ck_assert_uint_eq(copy(&r, "old/x", false, 6, &m), 1); /* a copy queued under 6 */
    router_add(&r, VIEW_STR("new/a"), &b, 1, false);
    router_add(&r, VIEW_STR("new/b"), &b, 1, false);
    /* old/# took 5, then 6: the next new one skips 6. */
    ck_assert_uint_eq(router_filter(&r, VIEW_STR("new/a"))->subid, 7);
    ck_assert_uint_eq(router_filter(&r, VIEW_STR("new/b"))->subid, 8);
    ck_assert_int_eq(router_set_subid(&r, VIEW_STR("new/a"), 8), -EEXIST);
    ck_assert_int_eq(router_set_subid(&r, VIEW_STR("new/a"), 0), -EINVAL);
    ck_assert_int_eq(router_set_subid(&r, VIEW_STR("none"), 9), -ENOENT);
    ck_assert_int_eq(router_set_subid(&r, VIEW_STR("old/#"), 6), 0);
    ck_assert_int_eq(router_remove(&r, VIEW_STR("old/#"), &a), ROUTER_LAST);
    ck_assert_int_eq(router_set_subid(&r, VIEW_STR("new/a"), 6), 0); /* 6 is free again */
    ck_assert_uint_eq(router_filter(&r, VIEW_STR("new/a"))->subid, 6);
    r.next_subid = 5; /* wrapped round: 5 and 7 are free now, 6 and 8 taken */
    router_add(&r, VIEW_STR("new/c"), &b, 1, false);
    router_add(&r, VIEW_STR("new/d"), &b, 1, false);
    router_add(&r, VIEW_STR("new/e"), &b, 1, false);
    ck_assert_uint_eq(router_filter(&r, VIEW_STR("new/c"))->subid, 5);
    ck_assert_uint_eq(router_filter(&r, VIEW_STR("new/d"))->subid, 7);
    ck_assert_uint_eq(router_filter(&r, VIEW_STR("new/e"))->subid, 9);
    router_free(&r);
}
END_TEST

/* With a mount point, a message matches only filters of its domain: what came through an
 * unmounted filter is not for a local "#", whose broker subscription never covered it. */
START_TEST(mount_domains)
{
    Router r;
    RouterTarget a = {0}, b = {0};
    RouterTarget **m;
    ck_assert_int_eq(router_init(&r), 0);
    router_add(&r, VIEW_STR("#"), &a, 1, false);
    router_add(&r, VIEW_STR("shared/+"), &b, 1, false);
    router_filter(&r, VIEW_STR("shared/+"))->unmounted = true;
    ck_assert_uint_eq(router_match(&r, VIEW_STR("shared/x"), false, NULL, NULL, &m), 2);
    r.match_domain = ROUTER_UNMOUNTED;
    ck_assert_uint_eq(router_match(&r, VIEW_STR("shared/x"), false, NULL, NULL, &m), 1);
    ck_assert_ptr_eq(m[0], &b);
    r.match_domain = ROUTER_MOUNTED; /* "shared/x" that came under the mount point */
    ck_assert_uint_eq(router_match(&r, VIEW_STR("shared/x"), false, NULL, NULL, &m), 1);
    ck_assert_ptr_eq(m[0], &a);
    router_free(&r);
}
END_TEST

/* A group takes only the copy naming it; a member that takes a plain copy anyway has had the
 * message (the group delivered through it, its turn passes). Retained copies go to the fresh
 * holders of the filter named. */
START_TEST(copies_groups_and_retained)
{
    Router r;
    RouterTarget a = {0}, b = {0}, both = {0};
    RouterTarget **m;
    ck_assert_int_eq(router_init(&r), 0);
    router_add(&r, VIEW_STR("$share/g/j/+"), &both, 1, false);
    router_add(&r, VIEW_STR("$share/g/j/+"), &a, 1, false);
    router_add(&r, VIEW_STR("j/#"), &both, 1, false);
    router_add(&r, VIEW_STR("j/#"), &b, 1, false);
    uint32_t g = grant(&r, "$share/g/j/+", 1), plain = grant(&r, "j/#", 1);
    size_t n = copy(&r, "j/1", false, g, &m); /* both's turn: it has the plain copy */
    ck_assert_uint_eq(n, 0);
    n = copy(&r, "j/1", false, plain, &m);
    ck_assert_uint_eq(n, 2);
    ck_assert(matched(m, n, &both) && matched(m, n, &b));
    n = copy(&r, "j/2", false, g, &m); /* a's turn */
    ck_assert_uint_eq(n, 1);
    ck_assert_ptr_eq(m[0], &a);
    /* Retained: only the fresh holders of the filter it names. */
    router_settle(&r, VIEW_STR("j/#"), &both);
    n = copy(&r, "j/1", true, plain, &m);
    ck_assert_uint_eq(n, 1);
    ck_assert_ptr_eq(m[0], &b);
    router_free(&r);
}
END_TEST

/* A resumed session keeps what was granted; a new one holds nothing until its SUBACKs. */
START_TEST(reconfirm_after_reconnect)
{
    Router r;
    RouterTarget a = {0};
    ck_assert_int_eq(router_init(&r), 0);
    router_add(&r, VIEW_STR("k/#"), &a, 1, false);
    grant(&r, "k/#", 1);
    router_unconfirm_all(&r);
    ck_assert(!router_filter(&r, VIEW_STR("k/#"))->active);
    router_reconfirm_all(&r, true);
    ck_assert(router_filter(&r, VIEW_STR("k/#"))->active);
    router_unconfirm_all(&r);
    router_reconfirm_all(&r, false);
    ck_assert(!router_filter(&r, VIEW_STR("k/#"))->active);
    router_free(&r);
}
END_TEST

/* With Retain As Published a live message keeps its retain flag: it goes to every holder,
 * except while one waits for its subscribe's retained messages (then only to that one). */
START_TEST(retain_as_published_live)
{
    Router r;
    ck_assert_int_eq(router_init(&r), 0);
    RouterTarget a = {0}, b = {0};
    RouterTarget **m;
    ck_assert_int_eq(router_add(&r, VIEW_STR("rap/#"), &a, 1, false), ROUTER_FIRST);
    router_filter(&r, VIEW_STR("rap/#"))->retain_as_published = true;
    ck_assert_uint_eq(router_match(&r, VIEW_STR("rap/x"), true, NULL, NULL, &m), 1); /* a fresh */
    router_settle(&r, VIEW_STR("rap/#"), &a);
    ck_assert_uint_eq(router_match(&r, VIEW_STR("rap/x"), true, NULL, NULL, &m), 1); /* live */
    ck_assert_int_eq(router_add(&r, VIEW_STR("rap/#"), &b, 1, false), 0);
    ck_assert_uint_eq(router_match(&r, VIEW_STR("rap/x"), true, NULL, NULL, &m), 1);
    ck_assert_ptr_eq(m[0], &b);
    router_settle(&r, VIEW_STR("rap/#"), &b);
    ck_assert_uint_eq(router_match(&r, VIEW_STR("rap/x"), true, NULL, NULL, &m), 2);
    ck_assert_int_eq(router_remove(&r, VIEW_STR("rap/#"), &b), 0);
    ck_assert_uint_eq(router_filter(&r, VIEW_STR("rap/#"))->fresh, 0);
    router_free(&r);
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
    tcase_add_test(tc, shared_one_member_per_message);
    tcase_add_test(tc, shared_round_robin_spreads);
    tcase_add_test(tc, shared_skips_a_member_not_ready);
    tcase_add_test(tc, shared_none_ready_still_one);
    tcase_add_test(tc, shared_groups_each_one_copy);
    tcase_add_test(tc, retain_as_published_live);
    tcase_add_test(tc, shared_with_plain_holders);
    tcase_add_test(tc, shared_and_plain_one_client);
    tcase_add_test(tc, shared_member_leaves);
    tcase_add_test(tc, shared_holder_counts);
    tcase_add_test(tc, shared_root_wildcard_not_for_dollar);
    tcase_add_test(tc, copies_once_at_the_best_qos);
    tcase_add_test(tc, subscription_ids_stay_unique);
    tcase_add_test(tc, mount_domains);
    tcase_add_test(tc, copies_groups_and_retained);
    tcase_add_test(tc, reconfirm_after_reconnect);
    suite_add_tcase(s, tc);
    return s;
}

CHECK_MAIN(router_suite)
