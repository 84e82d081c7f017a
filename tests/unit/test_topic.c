/* SPDX-License-Identifier: MIT */
/* Unit tests of topic name / filter validation and matching, including the examples of
 * MQTT 3.1.1 section 4.7. */
#include "mqtt/codec.h"
#include "mqtt/topic.h"
#include "testutil.h"

static const struct {
    const char *filter, *topic;
    bool match;
} match_cases[] = {
    /* 4.7.1.2: multi-level wildcard */
    {"sport/tennis/player1/#", "sport/tennis/player1", true},
    {"sport/tennis/player1/#", "sport/tennis/player1/ranking", true},
    {"sport/tennis/player1/#", "sport/tennis/player1/score/wimbledon", true},
    {"sport/#", "sport", true},
    {"#", "sport/tennis", true},
    {"#", "/", true},
    {"sport/tennis/#", "sport/tennis", true},
    {"sport/tennis/#", "sport/tennisX", false},
    /* 4.7.1.3: single-level wildcard */
    {"sport/tennis/+", "sport/tennis/player1", true},
    {"sport/tennis/+", "sport/tennis/player2", true},
    {"sport/tennis/+", "sport/tennis/player1/ranking", false},
    {"sport/tennis/+", "sport/tennis", false},
    {"sport/+", "sport", false},
    {"sport/+", "sport/", true},
    {"+/+", "/finance", true},
    {"/+", "/finance", true},
    {"+", "/finance", false},
    {"+", "finance", true},
    {"+/tennis/#", "sport/tennis/player1", true},
    {"+/tennis/#", "sport/tennis", true},
    {"+/+/+", "a//c", true},
    {"a/+/c", "a//c", true},
    /* 4.7.2: topics beginning with $ */
    {"#", "$SYS/broker/load", false},
    {"+/monitor/Clients", "$SYS/monitor/Clients", false},
    {"$SYS/#", "$SYS/monitor/Clients", true},
    {"$SYS/monitor/+", "$SYS/monitor/Clients", true},
    {"+", "$SYS", false},
    {"a/$x", "a/$x", true},
    {"a/+", "a/$x", true},
    /* plain */
    {"a/b", "a/b", true},
    {"a/b", "a/bc", false},
    {"a/bc", "a/b", false},
    {"a/b", "a/b/", false},
    {"a/b/", "a/b/", true},
    {"a", "A", false},
    {"/", "/", true},
    {"//", "/", false},
    {"a/+/#", "a/b", true},
    {"a/+/#", "a", false},
    {"caf\xc3\xa9/+", "caf\xc3\xa9/x", true},
    /* shared subscriptions match through their filter part */
    {"$share/g/sensors/+", "sensors/a", true},
    {"$share/g/sensors/+", "$share/g/sensors/a", false},
    {"$share/g/#", "x/y", true},
};

START_TEST(matching)
{
    View f = VIEW_STR(match_cases[_i].filter), t = VIEW_STR(match_cases[_i].topic);
    ck_assert_int_eq(mqtt_filter_check(f), 0);
    ck_assert_int_eq(mqtt_topic_check(t), 0);
    ck_assert_msg(mqtt_topic_matches(f, t) == match_cases[_i].match, "%s ~ %s: want %d",
                  match_cases[_i].filter, match_cases[_i].topic, match_cases[_i].match);
}
END_TEST

static const struct {
    const char *filter;
    int err;
} filter_cases[] = {
    {"#", 0},
    {"+", 0},
    {"a/#", 0},
    {"+/+/#", 0},
    {"/+/", 0},
    {"sport/tennis#", MQTT_E_FILTER},
    {"sport/tennis/#/ranking", MQTT_E_FILTER},
    {"sport+", MQTT_E_FILTER},
    {"a/b+/c", MQTT_E_FILTER},
    {"+a", MQTT_E_FILTER},
    {"##", MQTT_E_FILTER},
    {"", MQTT_E_TOPIC_EMPTY},
    {"$share/g/a/+", 0},
    {"$share/g/#", 0},
    {"$share/g", MQTT_E_FILTER},
    {"$share//a", MQTT_E_FILTER},
    {"$share/g/", MQTT_E_FILTER},
    {"$share/g+/a", MQTT_E_FILTER},
    {"$share/g/a#", MQTT_E_FILTER},
    {"$SYS/#", 0},
};

START_TEST(filter_validation)
{
    int r = mqtt_filter_check(VIEW_STR(filter_cases[_i].filter));
    ck_assert_msg(r == -filter_cases[_i].err, "'%s': got %d", filter_cases[_i].filter, r);
}
END_TEST

START_TEST(topic_validation)
{
    ck_assert_int_eq(mqtt_topic_check(VIEW_STR("a/b")), 0);
    ck_assert_int_eq(mqtt_topic_check(VIEW_STR("/")), 0);
    ck_assert_int_eq(mqtt_topic_check(VIEW_STR(" ")), 0);
    ck_assert_int_eq(mqtt_topic_check(VIEW_STR("")), -MQTT_E_TOPIC_EMPTY);
    ck_assert_int_eq(mqtt_topic_check(VIEW_STR("a/+")), -MQTT_E_TOPIC_WILDCARD);
    ck_assert_int_eq(mqtt_topic_check(VIEW_STR("#")), -MQTT_E_TOPIC_WILDCARD);
    ck_assert_int_eq(mqtt_topic_check(VIEW("a\0b", 3)), -MQTT_E_UTF8);
    ck_assert_int_eq(mqtt_topic_check(VIEW_STR("\xff")), -MQTT_E_UTF8);
    ck_assert_int_eq(mqtt_filter_check(VIEW_STR("\xed\xa0\x80/#")), -MQTT_E_UTF8);

    size_t n = MQTT_TOPIC_MAX + 1;
    char *big = malloc(n);
    ck_assert_ptr_nonnull(big);
    memset(big, 'a', n);
    ck_assert_int_eq(mqtt_topic_check(VIEW(big, n - 1)), 0);
    ck_assert_int_eq(mqtt_topic_check(VIEW(big, n)), -MQTT_E_TOPIC_LONG);
    ck_assert_int_eq(mqtt_filter_check(VIEW(big, n)), -MQTT_E_TOPIC_LONG);
    free(big);
}
END_TEST

START_TEST(share_target)
{
    ck_assert_view_str(mqtt_filter_target(VIEW_STR("$share/grp/a/b")), "a/b");
    ck_assert_view_str(mqtt_filter_target(VIEW_STR("a/b")), "a/b");
    ck_assert_view_str(mqtt_filter_target(VIEW_STR("$shared/a")), "$shared/a");
}
END_TEST

static Suite *topic_suite(void)
{
    Suite *s = suite_create("topic");
    TCase *tc = tcase_create("topic");
    tcase_add_loop_test(tc, matching, 0, sizeof(match_cases) / sizeof(match_cases[0]));
    tcase_add_loop_test(tc, filter_validation, 0, sizeof(filter_cases) / sizeof(filter_cases[0]));
    tcase_add_test(tc, topic_validation);
    tcase_add_test(tc, share_target);
    suite_add_tcase(s, tc);
    return s;
}

CHECK_MAIN(topic_suite)
