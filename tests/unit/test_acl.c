/* SPDX-License-Identifier: MIT */
/* Unit tests of access control: rule parsing, filter coverage, decisions per peer. */
#include <errno.h>

#include "acl.h"
#include "testutil.h"

static const struct {
    const char *a, *b;
    bool covers;
} cover_cases[] = {
    {"#", "a/b", true},
    {"#", "#", true},
    {"a/#", "a", true},
    {"a/#", "a/+/c", true},
    {"a/#", "b/#", false},
    {"a/+", "a/b", true},
    {"a/+", "a/+", true},
    {"a/+", "a/#", false},
    {"a/+", "a/b/c", false},
    {"a/b", "a/+", false},
    {"a/b", "a/b", true},
    {"+/b", "x/b", true},
    {"#", "$SYS/x", false},
    {"+/x", "$SYS/x", false},
    {"$SYS/#", "$SYS/a", true},
    {"a/%", "a/%", true},
    {"a/b/c", "a/b", false},
    {"a/b", "a/b/c", false},
    {"apps/bob/#", "$share/g/apps/bob/x", true},
    {"apps/bob/#", "apps/#", false},
};

START_TEST(covers)
{
    ck_assert_msg(acl_filter_covers(VIEW_STR(cover_cases[_i].a), VIEW_STR(cover_cases[_i].b)) ==
                      cover_cases[_i].covers,
                  "%s covers %s", cover_cases[_i].a, cover_cases[_i].b);
}
END_TEST

static Acl parse(const char *const *lines)
{
    Acl acl = {0};
    char err[300];
    for (const char *const *l = lines; *l; l += 2) {
        ck_assert_msg(acl_parse_line(&acl, l[0], l[1], err, sizeof(err)) == 0, "%s", err);
    }
    return acl;
}

START_TEST(decisions)
{
    static const char *const lines[] = {
        "allow user alice",
        "pubsub apps/%u/#",
        "allow group sensors",
        "publish sensors/#",
        "allow all",
        "subscribe public/#",
        "deny uid 1001",
        "publish public/announce",
        "deny all",
        "subscribe secret/+",
        "admin",
        "user:alice, gid:10",
        NULL,
    };
    Acl acl = parse(lines);
    acl.rules[0].id = 1000, acl.rules[0].resolved = true; /* as the daemon resolves names */
    acl.rules[1].id = 50, acl.rules[1].resolved = true;
    acl.admins[0].id = 1000, acl.admins[0].resolved = true;
    gid_t alice_groups[] = {1000}, bob_groups[] = {1001, 50}, wheel[] = {10};
    AclPeer alice = {1000, "alice", alice_groups, 1}, bob = {1001, "bob", bob_groups, 2};
    AclPeer admin = {1002, "carol", wheel, 1};
    AclView v;
    char why[300];

    ck_assert_int_eq(acl_view_build(&acl, &alice, false, &v), 0);
    ck_assert(v.admin);
    ck_assert(acl_allows(&v, ACL_PUBLISH, VIEW_STR("apps/alice/x"), why, sizeof(why)));
    ck_assert(acl_allows(&v, ACL_SUBSCRIBE, VIEW_STR("apps/alice/#"), why, sizeof(why)));
    ck_assert(!acl_allows(&v, ACL_PUBLISH, VIEW_STR("apps/bob/x"), why, sizeof(why)));
    ck_assert_str_eq(why, "no [acl] rule allows this peer to publish to apps/bob/x");
    ck_assert(!acl_allows(&v, ACL_SUBSCRIBE, VIEW_STR("apps/#"), why, sizeof(why)));
    ck_assert(acl_allows(&v, ACL_SUBSCRIBE, VIEW_STR("public/+"), why, sizeof(why)));
    ck_assert(!acl_allows(&v, ACL_PUBLISH, VIEW_STR("sensors/t"), why, sizeof(why)));
    /* A subscription that could receive a denied topic is refused, naming the rule. */
    ck_assert(!acl_allows(&v, ACL_SUBSCRIBE, VIEW_STR("+/x"), why, sizeof(why)));
    ck_assert_str_eq(why, "denied by [acl] rule 'deny all = subscribe secret/+'");
    acl_view_free(&v);

    ck_assert_int_eq(acl_view_build(&acl, &bob, false, &v), 0);
    ck_assert(!v.admin);
    ck_assert(acl_allows(&v, ACL_PUBLISH, VIEW_STR("sensors/t"), why, sizeof(why)));
    ck_assert(!acl_allows(&v, ACL_PUBLISH, VIEW_STR("apps/bob/x"), why, sizeof(why)));
    acl_view_free(&v);

    ck_assert_int_eq(acl_view_build(&acl, &admin, false, &v), 0);
    ck_assert(v.admin);
    acl_view_free(&v);
    acl_free(&acl);
}
END_TEST

START_TEST(open_without_rules)
{
    static const char *const lines[] = {"max_connections_per_uid", "5", NULL};
    Acl acl = parse(lines);
    ck_assert_uint_eq(acl.max_connections_per_uid, 5);
    gid_t g[] = {100};
    AclPeer p = {1234, "x", g, 1};
    AclView v;
    char why[100];
    ck_assert_int_eq(acl_view_build(&acl, &p, false, &v), 0);
    ck_assert(v.open);
    ck_assert(!v.admin);
    ck_assert(acl_allows(&v, ACL_PUBLISH, VIEW_STR("any/thing"), why, sizeof(why)));
    acl_view_free(&v);
    acl_free(&acl);
}
END_TEST

START_TEST(user_names_that_break_filters)
{
    static const char *const lines[] = {"allow all", "publish home/%u/#", NULL};
    Acl acl = parse(lines);
    AclPeer p = {5, "evil/+", NULL, 0}, nameless = {6, NULL, NULL, 0};
    AclView v;
    char why[200];
    ck_assert_int_eq(acl_view_build(&acl, &p, false, &v), 0);
    ck_assert_uint_eq(v.n, 0); /* the rule matches nothing rather than too much */
    ck_assert(!acl_allows(&v, ACL_PUBLISH, VIEW_STR("home/evil/x/y"), why, sizeof(why)));
    acl_view_free(&v);
    ck_assert_int_eq(acl_view_build(&acl, &nameless, false, &v), 0);
    ck_assert_uint_eq(v.n, 0);
    acl_view_free(&v);
    acl_free(&acl);
}
END_TEST

static Suite *acl_suite(void)
{
    Suite *s = suite_create("acl");
    TCase *tc = tcase_create("acl");
    tcase_add_loop_test(tc, covers, 0, sizeof(cover_cases) / sizeof(cover_cases[0]));
    tcase_add_test(tc, decisions);
    tcase_add_test(tc, open_without_rules);
    tcase_add_test(tc, user_names_that_break_filters);
    suite_add_tcase(s, tc);
    return s;
}

CHECK_MAIN(acl_suite)
