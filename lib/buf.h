/* SPDX-License-Identifier: MIT */
/*
 * Buf: the one growable byte buffer of the project, and View, a borrowed span of bytes.
 *
 * A Buf holds bytes [off, len) of data[0, cap). Writers append at len; readers consume from
 * off. `max` is a hard ceiling on len - off (0 = unlimited): an append that would pass it
 * fails with -ENOBUFS and leaves the buffer untouched, which is how every peer-controlled
 * buffer is capped. The Buf owns `data`; a View owns nothing.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

typedef struct View {
    const uint8_t *p;
    size_t n;
} View;

typedef struct Buf {
    uint8_t *data;
    size_t len; /* end of the written bytes */
    size_t cap;
    size_t off; /* start of the unread bytes */
    size_t max; /* hard maximum of unread bytes, 0 = none */
} Buf;

#define VIEW(ptr, len) ((View){(const uint8_t *)(ptr), (len)})
#define VIEW_STR(s)    ((View){(const uint8_t *)(s), strlen(s)})
#define VIEW_LIT(lit)  ((View){(const uint8_t *)("" lit), sizeof(lit) - 1}) /* constant */
#define VIEW_NULL      ((View){NULL, 0})

static inline bool view_eq(View a, View b)
{
    return a.n == b.n && (a.n == 0 || memcmp(a.p, b.p, a.n) == 0);
}

static inline bool view_eq_str(View a, const char *s)
{
    return view_eq(a, VIEW_STR(s));
}

/* The unread bytes. */
static inline View buf_view(const Buf *b)
{
    return b->data ? VIEW(b->data + b->off, b->len - b->off) : VIEW_NULL;
}

/* A place in the unread bytes that survives buf_reserve moving them to the front: what to
 * roll back to after a write that failed half way, or where a write began. */
static inline size_t buf_mark(const Buf *b)
{
    return b->len - b->off;
}

static inline void buf_rollback(Buf *b, size_t mark)
{
    b->len = b->off + mark;
}

static inline size_t buf_size(const Buf *b)
{
    return b->len - b->off;
}

/* Make room for `extra` more bytes at the end (moving unread bytes to the front if that is
 * enough). -ENOBUFS past `max`, -ENOMEM when allocation fails. */
int buf_reserve(Buf *b, size_t extra);
int buf_append(Buf *b, const void *p, size_t n);
int buf_put_u8(Buf *b, uint8_t v);
int buf_put_u16(Buf *b, uint16_t v); /* big endian, as MQTT wants */

/* Mark n unread bytes as read; an emptied buffer rewinds to offset 0. */
void buf_consume(Buf *b, size_t n);
/* Drop everything (keeps the allocation). */
void buf_clear(Buf *b);
/* Release the allocation; the Buf is empty and reusable afterwards. */
void buf_free(Buf *b);
/* Give back memory above `keep` bytes of capacity when the buffer is mostly empty. */
void buf_shrink(Buf *b, size_t keep);
