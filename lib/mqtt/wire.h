/* SPDX-License-Identifier: MIT */
/*
 * The codec's primitives, shared by codec.c and props.c (not a public interface): big-endian
 * integers, variable byte integers, length-prefixed strings, written into space already
 * measured and read through a bounds-checked Reader.
 */
#pragma once

#include <string.h>

#include "mqtt/codec.h"
#include "utf8.h"

#define MQTT_VARINT_MAX 268435455u

static inline size_t varint_len(size_t n)
{
    return n < 128 ? 1 : n < 16384 ? 2 : n < 2097152 ? 3 : 4;
}

static inline uint8_t *put_varint(uint8_t *w, size_t n)
{
    do {
        uint8_t b = n & 0x7f;
        n >>= 7;
        *w++ = n ? b | 0x80 : b;
    } while (n);
    return w;
}

static inline uint8_t *put_u16(uint8_t *w, uint16_t v)
{
    *w++ = (uint8_t)(v >> 8);
    *w++ = (uint8_t)v;
    return w;
}

static inline uint8_t *put_u32(uint8_t *w, uint32_t v)
{
    return put_u16(put_u16(w, (uint16_t)(v >> 16)), (uint16_t)v);
}

static inline uint8_t *put_bytes(uint8_t *w, View v)
{
    if (v.n) {
        memcpy(w, v.p, v.n);
    }
    return w + v.n;
}

static inline uint8_t *put_string(uint8_t *w, View v)
{
    return put_bytes(put_u16(w, (uint16_t)v.n), v);
}

/* A string the encoder may write: at most 65535 bytes of well-formed UTF-8 without U+0000. */
static inline int check_string(View s)
{
    if (s.n > 65535) {
        return -MQTT_E_STRING_LONG;
    }
    return utf8_valid(s, false) ? 0 : -MQTT_E_UTF8;
}

typedef struct Reader {
    const uint8_t *p, *end;
} Reader;

static inline size_t reader_left(const Reader *r)
{
    return (size_t)(r->end - r->p);
}

static inline int get_u8(Reader *r, uint8_t *ret)
{
    if (r->p == r->end) {
        return -MQTT_E_LENGTH;
    }
    *ret = *r->p++;
    return 0;
}

static inline int get_u16(Reader *r, uint16_t *ret)
{
    if (reader_left(r) < 2) {
        return -MQTT_E_LENGTH;
    }
    *ret = (uint16_t)(r->p[0] << 8 | r->p[1]);
    r->p += 2;
    return 0;
}

static inline int get_u32(Reader *r, uint32_t *ret)
{
    if (reader_left(r) < 4) {
        return -MQTT_E_LENGTH;
    }
    *ret = (uint32_t)r->p[0] << 24 | (uint32_t)r->p[1] << 16 | (uint32_t)r->p[2] << 8 | r->p[3];
    r->p += 4;
    return 0;
}

/* A variable byte integer in its shortest form (MQTT 5, 1.5.5): at most 4 bytes, and no
 * trailing zero continuation byte. */
static inline int get_varint(Reader *r, uint32_t *ret)
{
    uint32_t v = 0;
    for (int i = 0; i < 4; i++) {
        uint8_t b;
        if (get_u8(r, &b) < 0) {
            return -MQTT_E_LENGTH;
        }
        if (i > 0 && b == 0) {
            return -MQTT_E_VARINT; /* longer than it needs to be */
        }
        v |= (uint32_t)(b & 0x7f) << (7 * i);
        if (!(b & 0x80)) {
            *ret = v;
            return 0;
        }
    }
    return -MQTT_E_VARINT;
}

/* Length-prefixed bytes, no content check. */
static inline int get_binary(Reader *r, View *ret)
{
    uint16_t n;
    int e = get_u16(r, &n);
    if (e < 0) {
        return e;
    }
    if (reader_left(r) < n) {
        return -MQTT_E_LENGTH;
    }
    *ret = VIEW(r->p, n);
    r->p += n;
    return 0;
}

static inline int get_string(Reader *r, View *ret)
{
    int e = get_binary(r, ret);
    if (e < 0) {
        return e;
    }
    return utf8_valid(*ret, false) ? 0 : -MQTT_E_UTF8;
}

#define TRY(expr)                                                                                  \
    do {                                                                                           \
        int e_ = (expr);                                                                           \
        if (e_ < 0) {                                                                              \
            return e_;                                                                             \
        }                                                                                          \
    } while (0)

/* props.c: the property block of a packet of `type` (0 for a will), with its length. */
int props_measure(const MqttProps *p, int type, size_t *ret_len);
uint8_t *props_put(uint8_t *w, const MqttProps *p, size_t len);
int props_get(Reader *r, int type, MqttProps *ret);
/* Whether `code` is a reason code packets of `type` may carry (MQTT 5). */
bool reason_allowed(int type, uint8_t code);
