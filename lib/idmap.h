/* SPDX-License-Identifier: MIT */
#pragma once
/* Objects that each carry a nonzero 32-bit id, found by that id. The table holds only
 * pointers (8 bytes a slot, at most 3/4 of the slots used); an object's id is read from the
 * object itself, at the offset given to idmap_init. Open addressing with linear probing and
 * backward-shift deletion: no per-entry allocation. */
#include <stddef.h>
#include <stdint.h>

typedef struct IdMap {
    void **slots;
    size_t n_slots; /* 0, or a power of two */
    size_t count;
    size_t id_offset; /* where each object keeps its uint32_t id */
    unsigned bits;    /* n_slots == 1 << bits */
} IdMap;

void idmap_init(IdMap *m, size_t id_offset);
void idmap_free(IdMap *m); /* the table only: the objects are the caller's */
void *idmap_get(const IdMap *m, uint32_t id);
/* Add obj under the id it carries (not 0). -EEXIST when another object has that id,
 * -ENOMEM when the table cannot grow. Putting back an object just removed never fails. */
int idmap_put(IdMap *m, void *obj);
/* Remove the object with this id; returns it, or NULL when there was none. */
void *idmap_remove(IdMap *m, uint32_t id);
