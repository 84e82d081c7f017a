/* SPDX-License-Identifier: MIT */
/*
 * Blocks done with, kept for reuse so that a hot path need not allocate: a queue, oldest
 * first, of at most the owner's `cap` blocks. A kept block's first pointer-sized bytes hold the
 * link (every block kept here starts with a list link of its own). An ASan build keeps none
 * (KEEP_SPARES in defaults.h): every block is freed, so that a stale pointer is reported instead
 * of reading whatever reused the block. A zeroed Spares is empty.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>

typedef struct Spares {
    void *head, *tail;
    size_t n;
} Spares;

/* The oldest kept block, or NULL. */
void *spares_take(Spares *s);
/* Keeps `block` unless `cap` are kept already (or none are kept in this build): false, and the
 * caller frees it. */
bool spares_keep(Spares *s, void *block, size_t cap);
/* Frees every kept block. */
void spares_free(Spares *s);
