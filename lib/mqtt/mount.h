/* SPDX-License-Identifier: MIT */
/*
 * The topic mount point ([topics] mount, shared/spec/fleet.md): a prefix put in front of every
 * topic and filter the broker sees, and taken off every topic that comes from it, so that local
 * programs (and [acl] rules) only ever see local topics. Topics and filters within one of the
 * `unmounted` filters pass through unchanged both ways. Pure: the session applies it at the
 * wire (lib/mqtt/session.c), to PUBLISH topics, SUBSCRIBE and UNSUBSCRIBE filters (inside
 * "$share/GROUP/"), the will topic, and MQTT 5 Response Topic properties.
 */
#pragma once

#include "buf.h"

typedef struct MqttMount {
    char *prefix; /* e.g. "devices/box17/"; NULL: no mount point (everything passes) */
    size_t len;
    char **unmounted; /* filters */
    size_t n_unmounted;
} MqttMount;

/* A mount point `prefix` (already expanded; "" or NULL: none; else a valid topic prefix ending
 * in '/', no wildcard) and the filters passed through. -EINVAL with a prefix that is not
 * one, or an unmounted filter that is not valid; -ENOMEM. */
int mqtt_mount_init(MqttMount *m, const char *prefix, const char *const *unmounted, size_t n);
void mqtt_mount_free(MqttMount *m);
/* From the configuration: `pattern` with %h (host name), %c (client id) and %% expanded,
 * `unmounted` a comma-separated list of filters (up to 64). -EINVAL with `err` saying why. */
int mqtt_mount_setup(MqttMount *m, const char *pattern, const char *host, const char *client_id,
                     const char *unmounted, char *err, size_t errlen);
bool mqtt_mount_active(const MqttMount *m);

/* A local topic (filter: true for a filter; "$share/G/" stays in front) as the broker sees it,
 * into `out` (cleared): 1 when it changed, 0 when it passes unchanged (out untouched),
 * -E2BIG when the result is longer than MQTT allows, -ENOMEM. */
int mqtt_mount_out(const MqttMount *m, View local, bool filter, Buf *out);
/* A topic from the broker as local subscribers see it: 1 with *ret (a view into `remote`),
 * 0 when it is outside the mount point and no unmounted filter (not for local subscribers). */
int mqtt_mount_in(const MqttMount *m, View remote, View *ret);

/* An MQTT 5 PUBLISH property block whose Response Topic is mapped like a topic (out: local to
 * broker; in: broker to local, left as it is when outside the mount point), rebuilt into
 * `out` (cleared): 1 when rebuilt, 0 when unchanged, -errno. The other properties keep their
 * bytes and order. */
int mqtt_mount_props(const MqttMount *m, View block, bool out_dir, Buf *out);
