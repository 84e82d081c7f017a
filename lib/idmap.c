/* SPDX-License-Identifier: MIT */
/* Id map: see idmap.h. */
#include "idmap.h"

#include <assert.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

void idmap_init(IdMap *m, size_t id_offset)
{
    *m = (IdMap){.id_offset = id_offset};
}

void idmap_free(IdMap *m)
{
    free(m->slots);
    idmap_init(m, m->id_offset);
}

static uint32_t id_of(const IdMap *m, const void *obj)
{
    uint32_t id;
    memcpy(&id, (const char *)obj + m->id_offset, sizeof(id));
    return id;
}

/* The slot an id starts probing from: Fibonacci hashing, so dense runs of ids spread. */
static size_t home(const IdMap *m, uint32_t id)
{
    assert(m->bits >= 1 && m->bits <= 32);
    return (size_t)((uint32_t)(id * 2654435769u) >> (32 - m->bits));
}

/* The slot holding id, or the empty slot where the probe for it ends. */
static size_t probe(const IdMap *m, uint32_t id)
{
    size_t mask = m->n_slots - 1, i = home(m, id);
    while (m->slots[i] && id_of(m, m->slots[i]) != id) {
        i = (i + 1) & mask;
    }
    return i;
}

void *idmap_get(const IdMap *m, uint32_t id)
{
    return m->n_slots ? m->slots[probe(m, id)] : NULL;
}

static int grow(IdMap *m)
{
    if (m->bits >= 32) {
        return -ENOMEM;
    }
    unsigned bits = m->n_slots ? m->bits + 1 : 4;
    void **old = m->slots;
    size_t n_old = m->n_slots;
    if (!(m->slots = calloc((size_t)1 << bits, sizeof(*m->slots)))) {
        m->slots = old;
        return -ENOMEM;
    }
    m->n_slots = (size_t)1 << bits;
    m->bits = bits;
    for (size_t i = 0; i < n_old; i++) {
        if (old[i]) {
            m->slots[probe(m, id_of(m, old[i]))] = old[i];
        }
    }
    free(old);
    return 0;
}

int idmap_put(IdMap *m, void *obj)
{
    uint32_t id = id_of(m, obj);
    assert(obj && id);
    if (m->n_slots) {
        void *there = m->slots[probe(m, id)];
        if (there) {
            return there == obj ? 0 : -EEXIST;
        }
    }
    if ((m->count + 1) * 4 > m->n_slots * 3) {
        int r = grow(m);
        if (r < 0) {
            return r;
        }
    }
    m->slots[probe(m, id)] = obj;
    m->count++;
    return 0;
}

void *idmap_remove(IdMap *m, uint32_t id)
{
    if (!m->n_slots) {
        return NULL;
    }
    size_t mask = m->n_slots - 1, hole = probe(m, id);
    void *gone = m->slots[hole];
    if (!gone) {
        return NULL;
    }
    /* Backward shift: later entries of the run whose probe passed the hole move into it. */
    for (size_t i = (hole + 1) & mask; m->slots[i]; i = (i + 1) & mask) {
        size_t h = home(m, id_of(m, m->slots[i]));
        if (((i - h) & mask) >= ((i - hole) & mask)) {
            m->slots[hole] = m->slots[i];
            hole = i;
        }
    }
    m->slots[hole] = NULL;
    m->count--;
    return gone;
}
