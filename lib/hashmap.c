/* SPDX-License-Identifier: MIT */
/* Chained hash map: see hashmap.h. FNV-1a hashing, doubling at load factor 1. */
#include "hashmap.h"

#include <errno.h>
#include <stdlib.h>

struct HashEntry {
    HashEntry *next;
    void *value;
    uint32_t hash;
    uint32_t len;
    uint8_t key[];
};

static uint32_t hash_bytes(View k)
{
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < k.n; i++) {
        h = (h ^ k.p[i]) * 16777619u;
    }
    return h;
}

void hashmap_init(HashMap *m)
{
    *m = (HashMap){0};
}

void hashmap_free(HashMap *m, void (*free_value)(void *))
{
    for (size_t i = 0; i < m->n_slots; i++) {
        for (HashEntry *e = m->slots[i], *n; e; e = n) {
            n = e->next;
            if (free_value) {
                free_value(e->value);
            }
            free(e);
        }
    }
    free(m->slots);
    *m = (HashMap){0};
}

static HashEntry **find(const HashMap *m, View key, uint32_t h)
{
    if (!m->n_slots) {
        return NULL;
    }
    HashEntry **pp = &m->slots[h & (m->n_slots - 1)];
    for (; *pp; pp = &(*pp)->next) {
        if ((*pp)->hash == h && (*pp)->len == key.n &&
            (key.n == 0 || memcmp((*pp)->key, key.p, key.n) == 0)) {
            return pp;
        }
    }
    return pp;
}

void *hashmap_get(const HashMap *m, View key)
{
    HashEntry **pp = find(m, key, hash_bytes(key));
    return pp && *pp ? (*pp)->value : NULL;
}

static int grow(HashMap *m)
{
    size_t n = m->n_slots ? m->n_slots * 2 : 16;
    HashEntry **slots = calloc(n, sizeof(*slots));
    if (!slots) {
        return -ENOMEM;
    }
    for (size_t i = 0; i < m->n_slots; i++) {
        for (HashEntry *e = m->slots[i], *next; e; e = next) {
            next = e->next;
            e->next = slots[e->hash & (n - 1)];
            slots[e->hash & (n - 1)] = e;
        }
    }
    free(m->slots);
    m->slots = slots;
    m->n_slots = n;
    return 0;
}

int hashmap_put(HashMap *m, View key, void *value)
{
    uint32_t h = hash_bytes(key);
    HashEntry **pp = find(m, key, h);
    if (pp && *pp) {
        (*pp)->value = value;
        return 0;
    }
    if (m->count >= m->n_slots && grow(m) < 0) {
        return -ENOMEM;
    }
    HashEntry *e = malloc(sizeof(*e) + key.n);
    if (!e) {
        return -ENOMEM;
    }
    e->value = value;
    e->hash = h;
    e->len = (uint32_t)key.n;
    if (key.n) {
        memcpy(e->key, key.p, key.n);
    }
    HashEntry **slot = &m->slots[h & (m->n_slots - 1)];
    e->next = *slot;
    *slot = e;
    m->count++;
    return 0;
}

void *hashmap_remove(HashMap *m, View key)
{
    HashEntry **pp = find(m, key, hash_bytes(key));
    if (!pp || !*pp) {
        return NULL;
    }
    HashEntry *e = *pp;
    void *v = e->value;
    *pp = e->next;
    free(e);
    m->count--;
    return v;
}

void hashmap_iter(const HashMap *m, HashIter *it)
{
    *it = (HashIter){.m = m};
}

int hashmap_iter_next(HashIter *it, void **ret_value)
{
    if (it->e) {
        it->e = it->e->next;
    }
    while (!it->e) {
        if (it->slot >= it->m->n_slots) {
            return 0;
        }
        it->e = it->m->slots[it->slot++];
    }
    *ret_value = it->e->value;
    return 1;
}

int hashmap_count_add(HashMap *m, View key, int delta)
{
    size_t *n = hashmap_get(m, key);
    if (delta > 0) {
        if (!n) {
            if (!(n = calloc(1, sizeof(*n)))) {
                return -ENOMEM;
            }
            if (hashmap_put(m, key, n) < 0) {
                free(n);
                return -ENOMEM;
            }
        }
        *n += (size_t)delta;
    } else if (n) {
        size_t down = (size_t)-delta;
        *n = *n > down ? *n - down : 0;
        if (*n == 0) {
            free(hashmap_remove(m, key));
        }
    }
    return 0;
}

size_t hashmap_count(const HashMap *m, View key)
{
    const size_t *n = hashmap_get(m, key);
    return n ? *n : 0;
}
