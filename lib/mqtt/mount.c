/* SPDX-License-Identifier: MIT */
/* The topic mount point: see mount.h. */
#include "mqtt/mount.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mqtt/codec.h"
#include "mqtt/topic.h"

#define MQTT_STRING_MAX 65535

bool mqtt_mount_active(const MqttMount *m)
{
    return m && m->prefix;
}

void mqtt_mount_free(MqttMount *m)
{
    for (size_t i = 0; i < m->n_unmounted; i++) {
        free(m->unmounted[i]);
    }
    free(m->unmounted);
    free(m->prefix);
    *m = (MqttMount){0};
}

int mqtt_mount_init(MqttMount *m, const char *prefix, const char *const *unmounted, size_t n)
{
    *m = (MqttMount){0};
    size_t len = prefix ? strlen(prefix) : 0;
    if (len && (prefix[len - 1] != '/' || strpbrk(prefix, "+#") ||
                mqtt_topic_check(VIEW(prefix, len)) < 0 || prefix[0] == '$')) {
        return -EINVAL;
    }
    for (size_t i = 0; i < n; i++) {
        if (mqtt_filter_check(VIEW_STR(unmounted[i])) < 0) {
            return -EINVAL;
        }
    }
    if ((len && !(m->prefix = strdup(prefix))) ||
        (n && !(m->unmounted = calloc(n, sizeof(*m->unmounted))))) {
        mqtt_mount_free(m);
        return -ENOMEM;
    }
    m->len = len;
    for (; m->n_unmounted < n; m->n_unmounted++) {
        if (!(m->unmounted[m->n_unmounted] = strdup(unmounted[m->n_unmounted]))) {
            mqtt_mount_free(m);
            return -ENOMEM;
        }
    }
    return 0;
}

/* The next level of `v` from *at (a level ends at '/' or the end); false past the end. */
static bool next_level(View v, size_t *at, View *ret)
{
    if (*at > v.n) {
        return false;
    }
    const uint8_t *slash = memchr(v.p + *at, '/', v.n - *at);
    size_t end = slash ? (size_t)(slash - v.p) : v.n;
    *ret = VIEW(v.p + *at, end - *at);
    *at = end + 1;
    return true;
}

/* Whether every topic filter `f` matches is one `u` matches (f within u). */
static bool within(View u, View f)
{
    size_t ua = 0, fa = 0;
    View ul, fl;
    for (;;) {
        bool more_u = next_level(u, &ua, &ul), more_f = next_level(f, &fa, &fl);
        if (!more_u || !more_f) {
            return !more_u && !more_f;
        }
        if (view_eq_str(ul, "#")) {
            return true;
        }
        if (view_eq_str(fl, "#") || (view_eq_str(fl, "+") && !view_eq_str(ul, "+")) ||
            (!view_eq_str(ul, "+") && !view_eq(ul, fl))) {
            return false;
        }
    }
}

static bool passes(const MqttMount *m, View topic_or_filter)
{
    for (size_t i = 0; i < m->n_unmounted; i++) {
        if (within(VIEW_STR(m->unmounted[i]), topic_or_filter)) {
            return true;
        }
    }
    return false;
}

int mqtt_mount_out(const MqttMount *m, View local, bool filter, Buf *out)
{
    View target = filter ? mqtt_filter_target(local) : local;
    if (!mqtt_mount_active(m) || passes(m, target)) {
        return 0;
    }
    size_t share = (size_t)(target.p - local.p); /* "$share/G/", kept in front */
    if (local.n + m->len > MQTT_STRING_MAX) {
        return -E2BIG;
    }
    buf_clear(out);
    int r = buf_append(out, local.p, share);
    if (r == 0 && (r = buf_append(out, m->prefix, m->len)) == 0) {
        r = buf_append(out, target.p, target.n);
    }
    return r < 0 ? r : 1;
}

int mqtt_mount_in(const MqttMount *m, View remote, View *ret)
{
    if (!mqtt_mount_active(m)) {
        *ret = remote;
        return 1;
    }
    if (remote.n > m->len && memcmp(remote.p, m->prefix, m->len) == 0) {
        *ret = VIEW(remote.p + m->len, remote.n - m->len);
        return 1;
    }
    if (passes(m, remote)) {
        *ret = remote;
        return 1;
    }
    return 0;
}

/* The Response Topic of `block` mapped, or 0 when it stays. */
static int mapped_response(const MqttMount *m, View topic, bool out_dir, Buf *to)
{
    if (out_dir) {
        return mqtt_mount_out(m, topic, false, to);
    }
    View local;
    if (mqtt_mount_in(m, topic, &local) != 1 || local.n == topic.n) {
        return 0;
    }
    buf_clear(to);
    return buf_append(to, local.p, local.n) < 0 ? -ENOMEM : 1;
}

int mqtt_mount_props(const MqttMount *m, View block, bool out_dir, Buf *out)
{
    MqttProps p;
    if (!mqtt_mount_active(m) || mqtt_props_check(block, MQTT_PUBLISH, &p) < 0 ||
        !MQTT_HAS(&p, MQTT_PROP_RESPONSE_TOPIC)) {
        return 0;
    }
    Buf topic = {0};
    int r = mapped_response(m, p.response_topic, out_dir, &topic);
    if (r <= 0) {
        buf_free(&topic);
        return r;
    }
    MqttProps only = {.response_topic = buf_view(&topic)};
    MQTT_SET(&only, MQTT_PROP_RESPONSE_TOPIC);
    buf_clear(out);
    r = mqtt_props_encode(out, &only, MQTT_PUBLISH);
    View rest = block;
    MqttPropItem it;
    while (r >= 0) { /* every other property, its bytes as they were */
        const uint8_t *at = rest.p;
        if ((r = mqtt_props_next(&rest, &it)) <= 0) {
            break;
        }
        if (it.id != MQTT_PROP_RESPONSE_TOPIC) {
            r = buf_append(out, at, (size_t)(rest.p - at));
        }
    }
    buf_free(&topic);
    return r < 0 ? r : 1;
}

/* `pattern` with %h, %c and %% expanded, into out (cleared). */
static int expand(const char *pattern, const char *host, const char *client_id, Buf *out, char *err,
                  size_t errlen)
{
    buf_clear(out);
    for (const char *p = pattern; *p; p++) {
        const char *put = p;
        size_t n = 1;
        if (*p == '%') {
            char e = p[1];
            put = e == 'h' ? host : e == 'c' ? client_id : e == '%' ? "%" : NULL;
            if (put && !*put) {
                snprintf(err, errlen, "mount: %%%c is empty here (%s)", e,
                         e == 'h' ? "no host name" : "no client id");
                return -EINVAL;
            }
            if (!put) {
                snprintf(err, errlen,
                         "mount: unknown escape '%%%c' (%%h host name, %%c client "
                         "id, %%%% a percent sign)",
                         e ? e : ' ');
                return -EINVAL;
            }
            n = strlen(put);
            p++;
        }
        if (buf_append(out, put, n) < 0) {
            return -ENOMEM;
        }
    }
    return buf_put_u8(out, 0) < 0 ? -ENOMEM : 0;
}

int mqtt_mount_setup(MqttMount *m, const char *pattern, const char *host, const char *client_id,
                     const char *unmounted, char *err, size_t errlen)
{
    Buf prefix = {0}, list = {0};
    char *filters[64];
    size_t n = 0;
    int r = expand(pattern ? pattern : "", host, client_id, &prefix, err, errlen);
    if (r == 0 && (r = buf_append(&list, unmounted ? unmounted : "",
                                  strlen(unmounted ? unmounted : "") + 1)) < 0) {
        r = -ENOMEM;
    }
    for (char *save = NULL, *f = r == 0 ? strtok_r((char *)list.data, ",", &save) : NULL; f;
         f = strtok_r(NULL, ",", &save)) {
        f += strspn(f, " \t");
        for (size_t k = strlen(f); k && (f[k - 1] == ' ' || f[k - 1] == '\t'); k--) {
            f[k - 1] = 0;
        }
        if (*f && n == 64) {
            snprintf(err, errlen, "unmounted: at most 64 filters");
            r = -EINVAL;
            break;
        }
        if (*f) {
            filters[n++] = f;
        }
    }
    const char *p = (const char *)prefix.data;
    if (r == 0 && (r = mqtt_mount_init(m, p, (const char *const *)filters, n)) == -EINVAL) {
        size_t len = strlen(p);
        if (len && (p[len - 1] != '/' || strpbrk(p, "+#") || p[0] == '$')) {
            snprintf(err, errlen,
                     "mount: '%s' must be a topic prefix ending in '/', without "
                     "'+', '#' or a leading '$'",
                     p);
        } else if (unmounted) {
            snprintf(err, errlen, "unmounted: '%s' holds a filter that is not valid", unmounted);
        } else {
            snprintf(err, errlen, "mount: '%s' is not a valid topic prefix", p);
        }
    }
    buf_free(&prefix);
    buf_free(&list);
    return r;
}
