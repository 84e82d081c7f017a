/* SPDX-License-Identifier: MIT */
/* PKCS#11 URIs: see pkcs11_uri.h. */
#include "pkcs11_uri.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

#define SCHEME "pkcs11:"

bool pkcs11_uri_is(const char *s)
{
    return s && strncmp(s, SCHEME, strlen(SCHEME)) == 0;
}

static int hex(char c)
{
    return c >= '0' && c <= '9'   ? c - '0'
           : c >= 'a' && c <= 'f' ? c - 'a' + 10
           : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                  : -1;
}

/* The value [p, end) percent-decoded into out (at most cap bytes): its length, or -1. */
static long decode(const char *p, const char *end, uint8_t *out, size_t cap)
{
    size_t n = 0;
    while (p < end) {
        int c = (unsigned char)*p;
        if (c == '%') {
            int hi = end - p >= 3 ? hex(p[1]) : -1, lo = end - p >= 3 ? hex(p[2]) : -1;
            if (hi < 0 || lo < 0) {
                return -1;
            }
            c = hi << 4 | lo;
            p += 3;
        } else {
            p++;
        }
        if (n == cap) {
            return -1;
        }
        out[n++] = (uint8_t)c;
    }
    return (long)n;
}

/* Ignored: they narrow the search, and the token's label is enough for ours. */
static bool ignorable(const char *name, size_t n)
{
    static const char *const names[] = {"manufacturer",
                                        "model",
                                        "serial",
                                        "slot-id",
                                        "slot-manufacturer",
                                        "slot-description",
                                        "library-manufacturer",
                                        "library-description",
                                        "library-version"};
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        if (strlen(names[i]) == n && memcmp(name, names[i], n) == 0) {
            return true;
        }
    }
    return false;
}

/* A text value: decoded, without a NUL inside (%00 would cut it short). */
static long text(const char *v, const char *end, char *out, size_t cap)
{
    long len = decode(v, end, (uint8_t *)out, cap - 1);
    return len >= 0 && memchr(out, 0, (size_t)len) ? -1 : len;
}

enum { SEEN_TOKEN = 1, SEEN_OBJECT = 2, SEEN_ID = 4, SEEN_TYPE = 8 };

static int attribute(Pkcs11Uri *u, unsigned *seen, const char *name, size_t nn, const char *v,
                     const char *end, char *err, size_t errlen)
{
    long len;
    unsigned bit = 0;
    if (nn == 5 && memcmp(name, "token", 5) == 0) {
        bit = SEEN_TOKEN;
        len = text(v, end, u->token, sizeof(u->token));
    } else if (nn == 6 && memcmp(name, "object", 6) == 0) {
        bit = SEEN_OBJECT;
        len = text(v, end, u->object, sizeof(u->object));
    } else if (nn == 2 && memcmp(name, "id", 2) == 0) {
        bit = SEEN_ID;
        len = decode(v, end, u->id, sizeof(u->id));
        u->id_len = len > 0 ? (size_t)len : 0;
    } else if (nn == 4 && memcmp(name, "type", 4) == 0) {
        bit = SEEN_TYPE;
        len = (size_t)(end - v) == 7 && memcmp(v, "private", 7) == 0 ? 7 : -1;
    } else if (ignorable(name, nn)) {
        len = 0;
    } else {
        snprintf(err, errlen, "PKCS#11 URI: unknown attribute '%.*s'", (int)nn, name);
        return -EINVAL;
    }
    if (*seen & bit) {
        len = -1;
    }
    *seen |= bit;
    if (len < 0) {
        snprintf(err, errlen,
                 "PKCS#11 URI: bad value of '%.*s' (repeated, too long, a bad %%-escape, %%00, "
                 "or a type other than private)",
                 (int)nn, name);
        return -EINVAL;
    }
    return 0;
}

int pkcs11_uri_parse(const char *uri, Pkcs11Uri *ret, char *err, size_t errlen)
{
    Pkcs11Uri u = {0};
    unsigned seen = 0;
    if (!pkcs11_uri_is(uri)) {
        snprintf(err, errlen, "not a PKCS#11 URI (pkcs11:...)");
        return -EINVAL;
    }
    const char *p = uri + strlen(SCHEME);
    if (strchr(p, '?')) {
        snprintf(err, errlen,
                 "PKCS#11 URI: no query part (give the module in pkcs11_module and "
                 "the PIN in pin_file)");
        return -EINVAL;
    }
    while (*p) {
        const char *end = strchr(p, ';');
        end = end ? end : p + strlen(p);
        const char *eq = memchr(p, '=', (size_t)(end - p));
        if (!eq || eq == p) {
            snprintf(err, errlen, "PKCS#11 URI: '%.*s' is not name=value", (int)(end - p), p);
            return -EINVAL;
        }
        if (attribute(&u, &seen, p, (size_t)(eq - p), eq + 1, end, err, errlen) < 0) {
            return -EINVAL;
        }
        p = *end ? end + 1 : end;
    }
    if (!u.object[0] && !u.id_len) {
        snprintf(err, errlen, "PKCS#11 URI: name the key with object= or id=");
        return -EINVAL;
    }
    *ret = u;
    return 0;
}
