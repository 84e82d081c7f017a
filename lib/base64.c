/* SPDX-License-Identifier: MIT */
/* base64: see base64.h. */
#include "base64.h"

#include <errno.h>

static const char alphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

int base64_encode(Buf *out, View in)
{
    size_t n = (in.n + 2) / 3 * 4;
    if (n == 0) {
        return 0; /* nothing to write, and out->data may still be NULL */
    }
    int r = buf_reserve(out, n);
    if (r < 0) {
        return r;
    }
    uint8_t *w = out->data + out->len;
    size_t i = 0;
    for (; i + 3 <= in.n; i += 3) {
        uint32_t v = (uint32_t)in.p[i] << 16 | (uint32_t)in.p[i + 1] << 8 | in.p[i + 2];
        *w++ = (uint8_t)alphabet[v >> 18];
        *w++ = (uint8_t)alphabet[v >> 12 & 63];
        *w++ = (uint8_t)alphabet[v >> 6 & 63];
        *w++ = (uint8_t)alphabet[v & 63];
    }
    if (i < in.n) {
        uint32_t v = (uint32_t)in.p[i] << 16 | (i + 1 < in.n ? (uint32_t)in.p[i + 1] << 8 : 0);
        *w++ = (uint8_t)alphabet[v >> 18];
        *w++ = (uint8_t)alphabet[v >> 12 & 63];
        *w++ = i + 1 < in.n ? (uint8_t)alphabet[v >> 6 & 63] : '=';
        *w++ = '=';
    }
    out->len += n;
    return 0;
}

static int value(uint8_t c)
{
    if (c >= 'A' && c <= 'Z') {
        return c - 'A';
    }
    if (c >= 'a' && c <= 'z') {
        return c - 'a' + 26;
    }
    if (c >= '0' && c <= '9') {
        return c - '0' + 52;
    }
    return c == '+' ? 62 : c == '/' ? 63 : -1;
}

int base64_decode(Buf *out, View in)
{
    size_t n = in.n;
    if (n % 4 == 0 && n >= 2 && in.p[n - 1] == '=') {
        n -= in.p[n - 2] == '=' ? 2 : 1;
    }
    if (n % 4 == 1) {
        return -EINVAL;
    }
    int r = buf_reserve(out, n / 4 * 3 + 2);
    if (r < 0) {
        return r;
    }
    uint8_t *w = out->data + out->len;
    uint32_t acc = 0;
    unsigned bits = 0;
    for (size_t i = 0; i < n; i++) {
        int v = value(in.p[i]);
        if (v < 0) {
            return -EINVAL;
        }
        acc = acc << 6 | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            *w++ = (uint8_t)(acc >> bits);
        }
    }
    if (acc & ((1u << bits) - 1)) {
        return -EINVAL; /* non-zero bits left over: not canonical */
    }
    out->len = (size_t)(w - out->data);
    return 0;
}
