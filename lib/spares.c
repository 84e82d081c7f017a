/* SPDX-License-Identifier: MIT */
/* Blocks kept for reuse: see spares.h. */
#include "spares.h"

#include <assert.h>
#include <stdlib.h>

#include "defaults.h"

static void **next_of(void *block)
{
    return (void **)block;
}

void *spares_take(Spares *s)
{
    void *b = s->head;
    if (b) {
        s->head = *next_of(b);
        s->tail = s->head ? s->tail : NULL;
        assert(s->n > 0);
        s->n--;
    }
    return b;
}

bool spares_keep(Spares *s, void *block, size_t cap)
{
    if (!KEEP_SPARES || s->n >= cap) {
        return false;
    }
    *next_of(block) = NULL;
    if (s->tail) {
        *next_of(s->tail) = block;
    } else {
        s->head = block;
    }
    s->tail = block;
    s->n++;
    return true;
}

void spares_free(Spares *s)
{
    for (void *b; (b = spares_take(s));) {
        free(b);
    }
}
