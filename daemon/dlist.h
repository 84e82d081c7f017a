/* SPDX-License-Identifier: MIT */
/* An intrusive doubly-linked list: a DList member in each element, a DList head. */
#pragma once

#include <stdbool.h>
#include <stddef.h>

typedef struct DList {
    struct DList *prev, *next;
} DList;

static inline void dlist_init(DList *h)
{
    h->prev = h->next = h;
}

static inline bool dlist_empty(const DList *h)
{
    return h->next == h;
}

static inline void dlist_push(DList *h, DList *n)
{
    n->prev = h->prev;
    n->next = h;
    h->prev->next = n;
    h->prev = n;
}

static inline void dlist_remove(DList *n)
{
    n->prev->next = n->next;
    n->next->prev = n->prev;
    n->prev = n->next = n;
}

#define container_of(ptr, type, member) ((type *)((char *)(ptr)-offsetof(type, member)))

/* Each element of a list, its successor taken first: the body may unlink `pos`. */
#define dlist_for_each_safe(pos, next, head)                                                       \
    for (DList *pos = (head)->next, *next = pos->next; pos != (head); pos = next, next = pos->next)
