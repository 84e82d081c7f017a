/* SPDX-License-Identifier: MIT */
/*
 * MQTT 5 topic aliases of one network connection, both ways. Outgoing: up to `max` topics
 * get a two-byte alias, the least recently used one given up for a new topic when all are
 * taken. Incoming: what the broker's aliases stand for, bounded by the maximum we announced.
 * Both start empty on every new link.
 */
#pragma once

#include "buf.h"
#include "hashmap.h"

/* At most this many outgoing aliases are used, whatever the broker allows. */
#define ALIAS_OUT_CAP 256

typedef struct AliasSlot {
    char *topic; /* NULL when free; NUL-terminated copy, also the map's key */
    uint16_t len;
    uint64_t used; /* LRU stamp */
} AliasSlot;

typedef struct AliasOut {
    HashMap by_topic; /* topic -> AliasSlot */
    AliasSlot *slots; /* [max], slot i is alias i + 1 */
    uint16_t max, n;
    uint64_t clock;
} AliasOut;

void alias_out_init(AliasOut *a);
/* A new link whose broker accepts `max` aliases (capped at ALIAS_OUT_CAP; 0 = none). */
int alias_out_reset(AliasOut *a, uint16_t max);
void alias_out_free(AliasOut *a);
/* The alias for `topic` in *alias: 1 when the broker already knows it (send an empty topic),
 * 0 when it is new (send the topic with the alias), -1 when there is none to use (no aliases,
 * a topic too long to be worth one, or out of memory: send the topic alone). */
int alias_out_get(AliasOut *a, View topic, uint16_t *alias);

typedef struct AliasIn {
    Buf *topics; /* [max], index alias - 1; an empty one is unset */
    uint16_t max;
} AliasIn;

/* A new link on which we accept `max` aliases. -ENOMEM. */
int alias_in_reset(AliasIn *a, uint16_t max);
void alias_in_free(AliasIn *a);
/* A PUBLISH with Topic Alias `alias`: its topic (non-empty) is remembered, or (empty) looked
 * up into *topic. -MQTT_E_TOPIC_ALIAS_MAX above our maximum, -MQTT_E_TOPIC_EMPTY for an alias
 * never set, -ENOMEM. */
int alias_in_resolve(AliasIn *a, uint16_t alias, View *topic);
