/* SPDX-License-Identifier: MIT */
/* Topic names and filters: see topic.h. */
#include "mqtt/topic.h"

#include "mqtt/codec.h"
#include "utf8.h"

static int string_check(View s)
{
    if (s.n == 0) {
        return -MQTT_E_TOPIC_EMPTY;
    }
    if (s.n > MQTT_TOPIC_MAX) {
        return -MQTT_E_TOPIC_LONG;
    }
    if (!utf8_valid(s, false)) {
        return -MQTT_E_UTF8;
    }
    return 0;
}

int mqtt_topic_check(View topic)
{
    int r = string_check(topic);
    if (r < 0) {
        return r;
    }
    for (size_t i = 0; i < topic.n; i++) {
        if (topic.p[i] == '+' || topic.p[i] == '#') {
            return -MQTT_E_TOPIC_WILDCARD;
        }
    }
    return 0;
}

static bool has_share_prefix(View f)
{
    return f.n >= 7 && memcmp(f.p, "$share/", 7) == 0;
}

/* Wildcard placement inside one filter (without the $share/GROUP/ prefix). */
static int wildcards_check(View f)
{
    for (size_t i = 0; i < f.n; i++) {
        uint8_t c = f.p[i];
        if (c != '+' && c != '#') {
            continue;
        }
        bool starts_level = i == 0 || f.p[i - 1] == '/';
        bool ends_level = i + 1 == f.n || f.p[i + 1] == '/';
        if (!starts_level || !ends_level || (c == '#' && i + 1 != f.n)) {
            return -MQTT_E_FILTER;
        }
    }
    return 0;
}

int mqtt_filter_check(View filter)
{
    int r = string_check(filter);
    if (r < 0) {
        return r;
    }
    if (has_share_prefix(filter)) {
        /* "$share/" GROUP "/" FILTER: a non-empty group without wildcards or '/'. */
        const uint8_t *slash = memchr(filter.p + 7, '/', filter.n - 7);
        if (!slash || slash == filter.p + 7) {
            return -MQTT_E_FILTER;
        }
        for (const uint8_t *g = filter.p + 7; g < slash; g++) {
            if (*g == '+' || *g == '#') {
                return -MQTT_E_FILTER;
            }
        }
        View target = mqtt_filter_target(filter);
        if (target.n == 0) {
            return -MQTT_E_FILTER;
        }
        return wildcards_check(target);
    }
    return wildcards_check(filter);
}

View mqtt_filter_target(View filter)
{
    if (!has_share_prefix(filter)) {
        return filter;
    }
    const uint8_t *slash = memchr(filter.p + 7, '/', filter.n - 7);
    if (!slash) {
        return VIEW(filter.p + filter.n, 0);
    }
    return VIEW(slash + 1, (size_t)(filter.p + filter.n - slash - 1));
}

bool mqtt_topic_matches(View filter, View topic)
{
    filter = mqtt_filter_target(filter);
    if (topic.n > 0 && topic.p[0] == '$' && filter.n > 0 &&
        (filter.p[0] == '+' || filter.p[0] == '#')) {
        return false;
    }
    size_t f = 0, t = 0;
    for (;;) {
        if (f < filter.n && filter.p[f] == '#') {
            return true; /* matches the parent level too: "a/#" matches "a" */
        }
        if (f < filter.n && filter.p[f] == '+') {
            f++;
            while (t < topic.n && topic.p[t] != '/') {
                t++;
            }
        } else {
            while (f < filter.n && t < topic.n && filter.p[f] != '/' && topic.p[t] != '/') {
                if (filter.p[f] != topic.p[t]) {
                    return false;
                }
                f++, t++;
            }
            /* Both must be at a level boundary now. */
            bool f_end = f == filter.n || filter.p[f] == '/';
            bool t_end = t == topic.n || topic.p[t] == '/';
            if (!f_end || !t_end) {
                return false;
            }
        }
        if (f == filter.n && t == topic.n) {
            return true;
        }
        if (f == filter.n) {
            return false; /* topic has more levels */
        }
        /* filter has a '/' here */
        if (t == topic.n) {
            /* topic ended: only "/#" may follow in the filter */
            return filter.n - f == 2 && filter.p[f + 1] == '#';
        }
        f++, t++;
    }
}
