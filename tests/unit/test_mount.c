/* SPDX-License-Identifier: MIT */
/* The topic mount point (lib/mqtt/mount.c): local topics and filters to the broker's and back,
 * with wildcards at the mount boundary, shared subscriptions, unmounted filters and MQTT 5
 * Response Topic properties. */
#include <errno.h>
#include <string.h>

#include "mqtt/codec.h"
#include "mqtt/mount.h"
#include "testutil.h"

static MqttMount mount;

static void setup(void)
{
    const char *unmounted[] = {"$aws/#", "$SYS/#", "shared/+/status"};
    ck_assert_int_eq(mqtt_mount_init(&mount, "devices/box17/", unmounted, 3), 0);
}

static void teardown(void)
{
    mqtt_mount_free(&mount);
}

/* out(local) as a string, or "=" when it passes unchanged. */
static const char *out(const char *local, bool filter)
{
    static Buf b;
    static char s[300];
    int r = mqtt_mount_out(&mount, VIEW_STR(local), filter, &b);
    ck_assert_int_ge(r, 0);
    if (r == 0) {
        return "=";
    }
    snprintf(s, sizeof(s), "%.*s", (int)b.len, (const char *)b.data);
    return s;
}

static const char *in(const char *remote)
{
    static char s[300];
    View v;
    if (mqtt_mount_in(&mount, VIEW_STR(remote), &v) != 1) {
        return NULL;
    }
    snprintf(s, sizeof(s), "%.*s", (int)v.n, (const char *)v.p);
    return s;
}

START_TEST(topics_both_ways)
{
    ck_assert_str_eq(out("temp/k1", false), "devices/box17/temp/k1");
    ck_assert_str_eq(in("devices/box17/cmd/reboot"), "cmd/reboot");
    ck_assert_str_eq(in("devices/box17//x"), "/x");
    ck_assert_ptr_null(in("devices/box17"));   /* not under the mount point */
    ck_assert_ptr_null(in("devices/box18/x")); /* another box's */
    ck_assert_ptr_null(in("elsewhere"));
    /* Unmounted: unchanged both ways. */
    ck_assert_str_eq(out("$aws/things/box17/shadow/update", false), "=");
    ck_assert_str_eq(in("$aws/things/box17/shadow/update/accepted"),
                     "$aws/things/box17/shadow/update/accepted");
    ck_assert_str_eq(out("shared/a/status", false), "=");
    ck_assert_str_eq(in("shared/a/status"), "shared/a/status");
    ck_assert_ptr_null(in("shared/a/status/x"));
}
END_TEST

START_TEST(filters_at_the_boundary)
{
    ck_assert_str_eq(out("#", true), "devices/box17/#");
    ck_assert_str_eq(out("+", true), "devices/box17/+");
    ck_assert_str_eq(out("+/temp", true), "devices/box17/+/temp");
    ck_assert_str_eq(out("cmd/#", true), "devices/box17/cmd/#");
    ck_assert_str_eq(out("$share/g/cmd/+", true), "$share/g/devices/box17/cmd/+");
    ck_assert_str_eq(out("$share/g/$aws/x", true), "=");
    /* Within an unmounted filter only when every topic it matches is. */
    ck_assert_str_eq(out("$aws/things/+/shadow/#", true), "=");
    ck_assert_str_eq(out("shared/+/status", true), "=");
    ck_assert_str_eq(out("shared/x/status", true), "=");
    ck_assert_str_eq(out("shared/#", true), "devices/box17/shared/#");
    ck_assert_str_eq(out("shared/+/+", true), "devices/box17/shared/+/+");
    ck_assert_str_eq(out("$SYS/broker/#", true), "=");
}
END_TEST

START_TEST(response_topics_in_properties)
{
    MqttProps p = {
        .response_topic = VIEW_STR("replies/x"),
        .content_type = VIEW_STR("text/plain"),
        .user = (MqttUserProp[]){{VIEW_STR("a"), VIEW_STR("1")}, {VIEW_STR("a"), VIEW_STR("2")}},
        .n_user = 2};
    MQTT_SET(&p, MQTT_PROP_RESPONSE_TOPIC);
    MQTT_SET(&p, MQTT_PROP_CONTENT_TYPE);
    Buf block = {0}, mapped = {0}, back = {0};
    ck_assert_int_eq(mqtt_props_encode(&block, &p, MQTT_PUBLISH), 0);
    ck_assert_int_eq(mqtt_mount_props(&mount, buf_view(&block), true, &mapped), 1);
    MqttProps q;
    ck_assert_int_eq(mqtt_props_check(buf_view(&mapped), MQTT_PUBLISH, &q), 0);
    ck_assert_view_eq(q.response_topic, VIEW_STR("devices/box17/replies/x"));
    ck_assert_view_eq(q.content_type, VIEW_STR("text/plain"));
    ck_assert_uint_eq(q.n_user, 2);
    View raw = q.raw;
    MqttPropItem it;
    const char *values[2] = {"1", "2"};
    int k = 0;
    while (mqtt_props_next(&raw, &it) == 1) {
        if (it.id == MQTT_PROP_USER) {
            const char *want = values[k++];
            ck_assert_view_eq(it.user.value, VIEW_STR(want)); /* in order */
        }
    }
    ck_assert_int_eq(k, 2);
    ck_assert_int_eq(mqtt_mount_props(&mount, buf_view(&mapped), false, &back), 1);
    ck_assert_int_eq(mqtt_props_check(buf_view(&back), MQTT_PUBLISH, &q), 0);
    ck_assert_view_eq(q.response_topic, VIEW_STR("replies/x"));
    /* No Response Topic, or an unmounted one: unchanged. */
    Buf none = {0};
    MqttProps n = {.content_type = VIEW_STR("t")};
    MQTT_SET(&n, MQTT_PROP_CONTENT_TYPE);
    ck_assert_int_eq(mqtt_props_encode(&none, &n, MQTT_PUBLISH), 0);
    ck_assert_int_eq(mqtt_mount_props(&mount, buf_view(&none), true, &mapped), 0);
    buf_free(&block);
    buf_free(&mapped);
    buf_free(&back);
    buf_free(&none);
}
END_TEST

START_TEST(bad_mount_points)
{
    MqttMount m;
    ck_assert_int_eq(mqtt_mount_init(&m, "a/+/", NULL, 0), -EINVAL);
    ck_assert_int_eq(mqtt_mount_init(&m, "a/#/", NULL, 0), -EINVAL);
    ck_assert_int_eq(mqtt_mount_init(&m, "a/b", NULL, 0), -EINVAL); /* no trailing / */
    ck_assert_int_eq(mqtt_mount_init(&m, "$x/", NULL, 0), -EINVAL);
    const char *bad[] = {"a/#/b"};
    ck_assert_int_eq(mqtt_mount_init(&m, "a/", bad, 1), -EINVAL);
    ck_assert_int_eq(mqtt_mount_init(&m, "", NULL, 0), 0); /* none: everything passes */
    ck_assert(!mqtt_mount_active(&m));
    Buf b = {0};
    ck_assert_int_eq(mqtt_mount_out(&m, VIEW_STR("x"), false, &b), 0);
    View v;
    ck_assert_int_eq(mqtt_mount_in(&m, VIEW_STR("x"), &v), 1);
    mqtt_mount_free(&m);
    /* The mount point cannot make a topic longer than MQTT allows. */
    char *big = malloc(65535);
    memset(big, 'x', 65534);
    big[65534] = 0;
    ck_assert_int_eq(mqtt_mount_out(&mount, VIEW_STR(big), false, &b), -E2BIG);
    free(big);
    buf_free(&b);
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("mount");
    TCase *tc = tcase_create("mount");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, topics_both_ways);
    tcase_add_test(tc, filters_at_the_boundary);
    tcase_add_test(tc, response_topics_in_properties);
    tcase_add_test(tc, bad_mount_points);
    suite_add_tcase(s, tc);
    return s;
}

CHECK_MAIN(suite)
