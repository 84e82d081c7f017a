/* SPDX-License-Identifier: MIT */
/* Unit tests of access control: rule parsing, filter coverage, decisions per peer. */
#include <errno.h>
#include <string.h>

#include "acl.h"
#include "testutil.h"

#define PEER(u, name, g, n) ((AclPeer){.uid = (u), .user = (name), .gids = (g), .n_gids = (n)})

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
    AclPeer alice = PEER(1000, "alice", alice_groups, 1), bob = PEER(1001, "bob", bob_groups, 2);
    AclPeer admin = PEER(1002, "carol", wheel, 1);
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
    AclPeer p = PEER(1234, "x", g, 1);
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
    AclPeer p = PEER(5, "evil/+", NULL, 0), nameless = PEER(6, NULL, NULL, 0);
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

static bool pub_ok(const AclView *v, const char *topic)
{
    char why[300];
    return acl_allows(v, ACL_PUBLISH, VIEW_STR(topic), why, sizeof(why));
}

static bool sub_ok(const AclView *v, const char *filter)
{
    char why[300];
    return acl_allows(v, ACL_SUBSCRIBE, VIEW_STR(filter), why, sizeof(why));
}

/* No name for the uid: a %u deny denies what it would for any name, a %u allow grants
 * nothing. */
START_TEST(deny_with_u_and_no_name)
{
    static const char *const lines[] = {
        "allow all",        "pubsub home/#, $x/#", "deny all",
        "pubsub home/%u/#", "allow all",           "publish own/%u",
        "deny all",         "publish %u/secret",   NULL,
    };
    Acl acl = parse(lines);
    AclPeer nameless = PEER(54321, NULL, NULL, 0);
    AclView v;
    char why[300];
    ck_assert_int_eq(acl_view_build(&acl, &nameless, false, &v), 0);
    ck_assert(!acl_allows(&v, ACL_PUBLISH, VIEW_STR("home/bob/x"), why, sizeof(why)));
    ck_assert_str_eq(why, "denied by [acl] rule 'deny all = pubsub home/%u/#'");
    ck_assert(!pub_ok(&v, "home/bob"));
    ck_assert(!sub_ok(&v, "home/+/x"));
    ck_assert(!sub_ok(&v, "home/#"));
    ck_assert(!sub_ok(&v, "home/bob/#"));
    ck_assert(!sub_ok(&v, "$share/g/home/bob/x"));
    ck_assert(pub_ok(&v, "home")); /* no name level: "home/<name>/#" never matches it */
    ck_assert(sub_ok(&v, "home"));
    /* The allow with %u grants nothing. */
    ck_assert(!acl_allows(&v, ACL_PUBLISH, VIEW_STR("own/x"), why, sizeof(why)));
    ck_assert_str_eq(why, "no [acl] rule allows this peer to publish to own/x");
    /* A name may start with '$': the first level stands for those too. */
    ck_assert(!pub_ok(&v, "$x/secret"));
    ck_assert(pub_ok(&v, "$x/other"));
    acl_view_free(&v);

    /* An empty name is no name. */
    AclPeer empty = PEER(54322, "", NULL, 0);
    ck_assert_int_eq(acl_view_build(&acl, &empty, false, &v), 0);
    ck_assert(!pub_ok(&v, "home/bob/x"));
    acl_view_free(&v);

    /* A name that fits still gets exactly its own topics denied. */
    AclPeer bob = PEER(1001, "bob", NULL, 0);
    ck_assert_int_eq(acl_view_build(&acl, &bob, false, &v), 0);
    ck_assert(!pub_ok(&v, "home/bob/x"));
    ck_assert(pub_ok(&v, "home/alice/x"));
    ck_assert(!sub_ok(&v, "home/+/x"));
    ck_assert(sub_ok(&v, "home/alice/#"));
    ck_assert(pub_ok(&v, "own/bob"));
    acl_view_free(&v);
    acl_free(&acl);
}
END_TEST

/* Names that cannot be substituted: with '/', '+' or '#'. */
START_TEST(deny_with_u_and_unusable_name)
{
    static const char *const lines[] = {
        "allow all", "pubsub home/#", "deny all", "pubsub home/%u/secret", NULL,
    };
    Acl acl = parse(lines);
    AclPeer slash = PEER(5, "a/b", NULL, 0), plus = PEER(6, "x+", NULL, 0),
            hash = PEER(7, "#", NULL, 0);
    AclView v;
    ck_assert_int_eq(acl_view_build(&acl, &slash, false, &v), 0);
    ck_assert(!pub_ok(&v, "home/bob/secret")); /* as if %u were '+' */
    ck_assert(!pub_ok(&v, "home/a/b/secret")); /* and the name's own levels */
    ck_assert(!pub_ok(&v, "home/x/y/secret")); /* (any name of as many levels) */
    ck_assert(!sub_ok(&v, "home/+/+/secret"));
    ck_assert(!sub_ok(&v, "home/+/secret"));
    ck_assert(!sub_ok(&v, "home/#"));
    ck_assert(pub_ok(&v, "home/a/b/other"));
    ck_assert(pub_ok(&v, "home/a/b/c/secret"));
    ck_assert(sub_ok(&v, "home/a/b/other"));
    acl_view_free(&v);
    const AclPeer *single[] = {&plus, &hash};
    for (size_t i = 0; i < 2; i++) {
        ck_assert_int_eq(acl_view_build(&acl, single[i], false, &v), 0);
        ck_assert(!pub_ok(&v, "home/bob/secret"));
        ck_assert(!sub_ok(&v, "home/+/secret"));
        ck_assert(pub_ok(&v, "home/bob/other"));
        acl_view_free(&v);
    }
    acl_free(&acl);
}
END_TEST

/* %u inside a level, in a $share group, and a result too long to be a filter. */
START_TEST(deny_with_u_edge_filters)
{
    static const char *const lines[] = {
        "allow all", "pubsub #",
        "deny all",  "publish u-%u/x",
        "deny all",  "subscribe $share/%u/t/#",
        NULL,
    };
    Acl acl = parse(lines);
    AclPeer nameless = PEER(9, NULL, NULL, 0);
    AclView v;
    ck_assert_int_eq(acl_view_build(&acl, &nameless, false, &v), 0);
    ck_assert(!pub_ok(&v, "u-bob/x"));
    ck_assert(!pub_ok(&v, "other/x")); /* the whole level: more than needed, never less */
    ck_assert(pub_ok(&v, "u-bob/y"));
    ck_assert(!sub_ok(&v, "t/a")); /* the group names no topics: the rule denies t/# */
    ck_assert(sub_ok(&v, "s/a"));
    acl_view_free(&v);

    /* A name of so many levels that the filter would be too long: deny everything. */
    size_t n = 40000;
    char *many = malloc(n + 1);
    ck_assert_ptr_nonnull(many);
    memset(many, '/', n);
    many[n] = 0;
    AclPeer deep = PEER(10, many, NULL, 0);
    ck_assert_int_eq(acl_view_build(&acl, &deep, false, &v), 0);
    ck_assert(!pub_ok(&v, "anything/at/all"));
    ck_assert(!pub_ok(&v, "$SYS/x"));
    ck_assert(sub_ok(&v, "s/a"));
    acl_view_free(&v);
    free(many);
    acl_free(&acl);
}
END_TEST

/* Supplementary groups not known: deny rules by group must not be dodged that way. */
START_TEST(unknown_groups)
{
    static const char *const lines[] = {
        "allow gid 60", "publish b/#", "deny gid 50", "publish b/secret", NULL,
    };
    Acl acl = parse(lines);
    gid_t g60[] = {60}, g50[] = {50};
    AclPeer partial = PEER(1, "p", g60, 1), in_deny = PEER(2, "q", g50, 1);
    partial.groups_partial = in_deny.groups_partial = true;
    AclView v;
    ck_assert_int_eq(acl_view_build(&acl, &partial, false, &v), -EACCES);
    /* Its primary group is that of the denied group: the deny is decided. */
    ck_assert_int_eq(acl_view_build(&acl, &in_deny, false, &v), 0);
    ck_assert(!pub_ok(&v, "b/secret"));
    ck_assert(!pub_ok(&v, "b/x"));
    acl_view_free(&v);
    acl_free(&acl);

    /* Without deny rules by group, the primary group still counts; nothing more. */
    static const char *const allow_only[] = {
        "allow gid 60", "publish b/#", "allow gid 70", "publish c/#",
        "deny uid 3",   "publish b/x", NULL,
    };
    acl = parse(allow_only);
    ck_assert_int_eq(acl_view_build(&acl, &partial, false, &v), 0);
    ck_assert(pub_ok(&v, "b/x"));
    ck_assert(!pub_ok(&v, "c/x"));
    acl_view_free(&v);
    acl_free(&acl);
}
END_TEST

START_TEST(parse_errors)
{
    Acl acl = {0};
    char err[4000], key[400];
    snprintf(key, sizeof(key), "deny user %0300d", 7);
    ck_assert_int_eq(acl_parse_line(&acl, key, "publish x", err, sizeof(err)), -EINVAL);
    ck_assert_ptr_nonnull(strstr(err, "too long"));
    ck_assert_int_eq(acl_parse_line(&acl, "deny all", "publish a/b%u+", err, sizeof(err)), -EINVAL);
    /* A filter longer than any fixed probe buffer is still checked to its end. */
    char value[1200] = "publish ";
    memset(value + 8, 'a', 1000);
    memcpy(value + 1008, "/x#", 4);
    ck_assert_int_eq(acl_parse_line(&acl, "deny all", value, err, sizeof(err)), -EINVAL);
    ck_assert_ptr_nonnull(strstr(err, "is not a valid topic filter"));
    ck_assert_uint_eq(acl.n_rules, 0);
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
    tcase_add_test(tc, deny_with_u_and_no_name);
    tcase_add_test(tc, deny_with_u_and_unusable_name);
    tcase_add_test(tc, deny_with_u_edge_filters);
    tcase_add_test(tc, unknown_groups);
    tcase_add_test(tc, parse_errors);
    suite_add_tcase(s, tc);
    return s;
}

CHECK_MAIN(acl_suite)
