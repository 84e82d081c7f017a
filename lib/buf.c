/* SPDX-License-Identifier: MIT */
/* Buf: see buf.h. */
#include "buf.h"

#include <errno.h>
#include <stdlib.h>

int buf_reserve(Buf *b, size_t extra)
{
    size_t unread = b->len - b->off;

    if (b->max && extra > b->max - unread) {
        return -ENOBUFS;
    }
    if (extra <= b->cap - b->len) {
        return 0;
    }
    /* Move the unread bytes to the front only when the read part is at least as big: each
     * byte is then moved O(1) times on average, however the buffer is drained. */
    if (b->off > 0 && extra <= b->cap - unread && b->off >= unread) {
        memmove(b->data, b->data + b->off, unread);
        b->len = unread;
        b->off = 0;
        return 0;
    }
    if (extra > SIZE_MAX / 2 - unread) {
        return -ENOMEM;
    }
    size_t want = unread + extra;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < want) {
        cap *= 2;
    }
    uint8_t *p = malloc(cap);
    if (!p) {
        return -ENOMEM;
    }
    if (unread) {
        memcpy(p, b->data + b->off, unread);
    }
    free(b->data);
    b->data = p;
    b->cap = cap;
    b->len = unread;
    b->off = 0;
    return 0;
}

int buf_append(Buf *b, const void *p, size_t n)
{
    int r = buf_reserve(b, n);
    if (r < 0) {
        return r;
    }
    if (n) {
        memcpy(b->data + b->len, p, n);
    }
    b->len += n;
    return 0;
}

int buf_put_u8(Buf *b, uint8_t v)
{
    return buf_append(b, &v, 1);
}

int buf_put_u16(Buf *b, uint16_t v)
{
    uint8_t be[2] = {(uint8_t)(v >> 8), (uint8_t)v};
    return buf_append(b, be, 2);
}

void buf_consume(Buf *b, size_t n)
{
    b->off += n < b->len - b->off ? n : b->len - b->off;
    if (b->off == b->len) {
        b->off = b->len = 0;
    }
}

void buf_clear(Buf *b)
{
    b->off = b->len = 0;
}

void buf_free(Buf *b)
{
    free(b->data);
    b->data = NULL;
    b->len = b->cap = b->off = 0;
}

void buf_shrink(Buf *b, size_t keep)
{
    if (b->cap <= keep || b->len - b->off > keep / 2) {
        return;
    }
    if (b->len == b->off) {
        buf_free(b);
        return;
    }
    uint8_t *p = malloc(keep);
    if (!p) {
        return;
    }
    size_t unread = b->len - b->off;
    memcpy(p, b->data + b->off, unread);
    free(b->data);
    b->data = p;
    b->cap = keep;
    b->off = 0;
    b->len = unread;
}
