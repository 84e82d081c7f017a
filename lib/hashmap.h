/* SPDX-License-Identifier: MIT */
/*
 * A small chained hash map from byte-string keys to pointers. Keys are copied; values are
 * the caller's. Used by the router for trie edges and per-filter holder counts.
 */
#pragma once

#include "buf.h"

typedef struct HashEntry HashEntry;

typedef struct HashMap {
    HashEntry **slots;
    size_t n_slots, count;
} HashMap;

void hashmap_init(HashMap *m);
/* Frees the entries, and each value with free_value when it is not NULL. */
void hashmap_free(HashMap *m, void (*free_value)(void *));
void *hashmap_get(const HashMap *m, View key);
/* Insert or replace. -ENOMEM on allocation failure. */
int hashmap_put(HashMap *m, View key, void *value);
/* Remove; returns the value that was there, or NULL. */
void *hashmap_remove(HashMap *m, View key);

/* Iteration, in no particular order; the map must not change meanwhile. */
typedef struct HashIter {
    const HashMap *m;
    size_t slot;
    const HashEntry *e;
} HashIter;

void hashmap_iter(const HashMap *m, HashIter *it);
/* 1 with the next value, 0 at the end. */
int hashmap_iter_next(HashIter *it, void **ret_value);

/* Counters kept in a map (values are size_t, owned by the map: free them with
 * hashmap_free(m, free)). Add delta (+1 or -1) to key's count; a count that reaches 0 is
 * removed. -ENOMEM when a new counter cannot be made (nothing counted). */
int hashmap_count_add(HashMap *m, View key, int delta);
size_t hashmap_count(const HashMap *m, View key);
