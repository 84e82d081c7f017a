/* SPDX-License-Identifier: MIT */
/* Topic aliases: see alias.h. */
#include "mqtt/alias.h"

#include <assert.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "mqtt/codec.h"

void alias_out_init(AliasOut *a)
{
    *a = (AliasOut){0};
    hashmap_init(&a->by_topic);
}

void alias_out_free(AliasOut *a)
{
    hashmap_free(&a->by_topic, NULL);
    for (uint16_t i = 0; i < a->n; i++) {
        free(a->slots[i].topic);
    }
    free(a->slots);
    alias_out_init(a);
}

int alias_out_reset(AliasOut *a, uint16_t max)
{
    alias_out_free(a);
    if (max > ALIAS_OUT_CAP) {
        max = ALIAS_OUT_CAP;
    }
    if (max && !(a->slots = calloc(max, sizeof(*a->slots)))) {
        return -ENOMEM;
    }
    a->max = max;
    return 0;
}

/* The slot to (re)use for a new topic: a free one, else the least recently used. */
static uint16_t victim(AliasOut *a)
{
    if (a->n < a->max) {
        return a->n++;
    }
    uint16_t v = 0;
    for (uint16_t i = 0; i < a->n; i++) {
        if (!a->slots[i].topic) {
            return i; /* left free by an allocation that failed */
        }
        if (a->slots[i].used < a->slots[v].used) {
            v = i;
        }
    }
    AliasSlot *s = &a->slots[v];
    void *gone = hashmap_remove(&a->by_topic, VIEW(s->topic, s->len));
    assert(gone == s);
    (void)gone;
    free(s->topic);
    s->topic = NULL;
    return v;
}

int alias_out_get(AliasOut *a, View topic, uint16_t *alias)
{
    /* An alias costs 3 bytes of property and saves the topic: not worth it for 1-2 bytes. */
    if (!a->max || topic.n < 3) {
        return -1;
    }
    AliasSlot *s = hashmap_get(&a->by_topic, topic);
    if (s) {
        s->used = ++a->clock;
        *alias = (uint16_t)(s - a->slots + 1);
        return 1;
    }
    char *copy = malloc(topic.n + 1);
    if (!copy) {
        return -1;
    }
    memcpy(copy, topic.p, topic.n);
    copy[topic.n] = 0;
    uint16_t i = victim(a);
    s = &a->slots[i];
    *s = (AliasSlot){.topic = copy, .len = (uint16_t)topic.n, .used = ++a->clock};
    if (hashmap_put(&a->by_topic, VIEW(copy, topic.n), s) < 0) {
        free(copy);
        s->topic = NULL;
        if (i == a->n - 1) {
            a->n--;
        }
        return -1;
    }
    *alias = (uint16_t)(i + 1);
    return 0;
}

int alias_in_reset(AliasIn *a, uint16_t max)
{
    alias_in_free(a);
    if (max && !(a->topics = calloc(max, sizeof(*a->topics)))) {
        return -ENOMEM;
    }
    a->max = max;
    return 0;
}

void alias_in_free(AliasIn *a)
{
    for (uint16_t i = 0; i < a->max; i++) {
        buf_free(&a->topics[i]);
    }
    free(a->topics);
    *a = (AliasIn){0};
}

int alias_in_resolve(AliasIn *a, uint16_t alias, View *topic)
{
    if (alias == 0 || alias > a->max) {
        return alias ? -MQTT_E_TOPIC_ALIAS_MAX : -MQTT_E_TOPIC_ALIAS;
    }
    Buf *b = &a->topics[alias - 1];
    if (topic->n) {
        buf_clear(b);
        return buf_append(b, topic->p, topic->n);
    }
    if (!buf_size(b)) {
        return -MQTT_E_TOPIC_EMPTY;
    }
    *topic = buf_view(b);
    return 0;
}
