/* SPDX-License-Identifier: MIT */
/* mqttctl's MQTT 5 options: see v5opts.h. */
#include "v5opts.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "base64.h"
#include "buf.h"
#include "utf8.h"

static char *err_out;
static size_t err_n;

/* The usage error, into the caller's buffer: -1. */
static int bad(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int bad(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err_out, err_n, fmt, ap);
    va_end(ap);
    return -1;
}

/* A whole number from `s` within [lo, hi], or -1. */
static long long number(const char *s, long long lo, long long hi)
{
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    return *s && !*end && !errno && v >= lo && v <= hi ? v : -1;
}

/* The single-valued properties: mosquitto's name, our field, and whether it is a number. */
static const struct {
    const char *name, *field;
    long long max; /* 0: a string */
} singles[] = {
    {"content-type", "content_type", 0},
    {"response-topic", "response_topic", 0},
    {"correlation-data", "correlation_data", 0},
    {"message-expiry-interval", "message_expiry", 4294967295LL},
    {"payload-format-indicator", "payload_format", 1},
};

int v5_define(json_t *fields, const char *command, int argc, char **argv, int *next, char *err,
              size_t err_size)
{
    err_out = err;
    err_n = err_size;
    if (strcmp(command, "publish") != 0) {
        return bad("-D %s: only 'publish' properties are supported", command);
    }
    if (*next >= argc) {
        return bad("-D publish: needs a PROPERTY and its value");
    }
    const char *name = argv[(*next)++];
    if (strcmp(name, "user-property") == 0) {
        if (*next + 1 >= argc) {
            return bad("-D publish user-property: needs NAME and VALUE");
        }
        const char *k = argv[*next], *v = argv[*next + 1];
        *next += 2;
        if (!utf8_valid(VIEW_STR(k), false) || !utf8_valid(VIEW_STR(v), false)) {
            return bad("-D publish user-property: '%s' '%s' is not UTF-8", k, v);
        }
        json_t *list = json_object_get(fields, "user_properties");
        if (!list &&
            (!(list = json_array()) || json_object_set_new(fields, "user_properties", list) < 0)) {
            return bad("out of memory");
        }
        return json_array_append_new(list, json_pack("[s, s]", k, v)) < 0 ? bad("out of memory")
                                                                          : 0;
    }
    for (size_t i = 0; i < sizeof(singles) / sizeof(singles[0]); i++) {
        if (strcmp(name, singles[i].name) != 0) {
            continue;
        }
        if (*next >= argc) {
            return bad("-D publish %s: needs a value", name);
        }
        const char *v = argv[(*next)++];
        long long n = singles[i].max ? number(v, singles[i].max == 1 ? 0 : 1, singles[i].max) : 0;
        if (singles[i].max && n < 0) {
            return bad("-D publish: '%s' is not a valid value", v);
        }
        json_t *value;
        const char *field = singles[i].field;
        if (singles[i].max) {
            value = json_integer(n);
        } else if (utf8_valid(VIEW_STR(v), false)) {
            value = json_string(v);
        } else if (strcmp(field, "correlation_data") == 0) { /* bytes: as base64 */
            Buf b64 = {0};
            value = base64_encode(&b64, VIEW_STR(v)) == 0
                        ? json_stringn((const char *)b64.data, b64.len)
                        : NULL;
            buf_free(&b64);
            field = "correlation_data_b64";
        } else {
            return bad("-D publish %s: '%s' is not UTF-8", name, v);
        }
        return json_object_set_new(fields, field, value) < 0 ? bad("out of memory") : 0;
    }
    return bad("-D publish %s: unknown property (user-property, content-type, "
               "message-expiry-interval, payload-format-indicator, response-topic, "
               "correlation-data)",
               name);
}

char *v5_fragment(json_t *fields)
{
    if (!fields || json_object_size(fields) == 0) {
        return strdup("");
    }
    char *s = json_dumps(fields, JSON_COMPACT);
    if (!s) {
        return NULL;
    }
    size_t n = strlen(s); /* "{...}" -> ",..." */
    s[0] = ',';
    s[n - 1] = '\0';
    return s;
}

static int put(Buf *b, const void *p, size_t n)
{
    return buf_append(b, p, n);
}

static int put_str(Buf *b, const char *s)
{
    return s ? put(b, s, strlen(s)) : 0;
}

static int put_payload(Buf *b, json_t *ev)
{
    json_t *b64 = json_object_get(ev, "payload_b64");
    if (b64) {
        return base64_decode(
            b, (View){(const uint8_t *)json_string_value(b64), json_string_length(b64)});
    }
    json_t *text = json_object_get(ev, "payload");
    return put(b, json_string_value(text), json_string_length(text));
}

static int put_user_props(Buf *b, json_t *ev)
{
    json_t *list = json_object_get(ev, "user_properties");
    int r = 0;
    for (size_t i = 0; r == 0 && i < json_array_size(list); i++) {
        json_t *pair = json_array_get(list, i);
        r = (i ? put(b, " ", 1) : 0) | put_str(b, json_string_value(json_array_get(pair, 0))) |
            put(b, ":", 1) | put_str(b, json_string_value(json_array_get(pair, 1)));
    }
    return r;
}

static int put_directive(Buf *b, json_t *ev, char c)
{
    char num[24];
    switch (c) {
    case 't':
        return put_str(b, json_string_value(json_object_get(ev, "topic")));
    case 'p':
        return put_payload(b, ev);
    case 'q':
        snprintf(num, sizeof(num), "%lld",
                 (long long)json_integer_value(json_object_get(ev, "qos")));
        return put_str(b, num);
    case 'r':
        return put_str(b, json_is_true(json_object_get(ev, "retain")) ? "1" : "0");
    case 'P':
        return put_user_props(b, ev);
    default:
        return put(b, "%", 1) | put(b, &c, 1); /* %% and unknown ones as written */
    }
}

int v5_print_format(json_t *ev, const char *format)
{
    Buf b = {0};
    int r = 0;
    for (const char *f = format; *f && r == 0; f++) {
        if (*f == '%' && f[1]) {
            f++;
            r = *f == '%' ? put(&b, "%", 1) : put_directive(&b, ev, *f);
        } else if (*f == '\\' && f[1]) {
            f++;
            char c = *f == 'n' ? '\n' : *f == 't' ? '\t' : *f;
            r = put(&b, &c, 1);
        } else {
            r = put(&b, f, 1);
        }
    }
    r |= put(&b, "\n", 1);
    int w = 0;
    for (size_t off = 0; r == 0 && off < b.len;) {
        ssize_t n = write(STDOUT_FILENO, b.data + off, b.len - off);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n <= 0) {
            w = -1;
            break;
        }
        off += (size_t)n;
    }
    buf_free(&b);
    return r < 0 ? 0 : w; /* out of memory: that message is not printed */
}
