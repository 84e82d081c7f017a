/* SPDX-License-Identifier: MIT */
/* The hot requests without a JSON tree: see fast.h. */
#include "ipc/fast.h"

#include <assert.h>
#include <errno.h>
#include <string.h>

#define JSMN_STATIC
#define JSMN_STRICT
#include <jsmn.h>

#include "defaults.h"
#include "mqtt/topic.h"
#include "utf8.h"

/* A flat object of at most 9 members: the root and a key and a value each. */
enum { MAX_MEMBERS = 9, MAX_TOKENS = 1 + 2 * MAX_MEMBERS };

enum field { F_ID, F_OP, F_TOPIC, F_PAYLOAD, F_QOS, F_RETAIN, F_WAIT, F_TIMEOUT, F_SEQ, F_COUNT };

static const char *const field_names[F_COUNT] = {"id",     "op",   "topic",      "payload", "qos",
                                                 "retain", "wait", "timeout_ms", "seq"};

typedef struct Fields {
    const jsmntok_t *v[F_COUNT]; /* NULL: absent */
} Fields;

static bool is_ws(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

static size_t skip_ws(const char *s, size_t at, size_t end)
{
    while (at < end && is_ws(s[at])) {
        at++;
    }
    return at;
}

/* A token's bytes in the line, its quotes included. */
static size_t raw_start(const jsmntok_t *t)
{
    return (size_t)t->start - (t->type == JSMN_STRING);
}

static size_t raw_end(const jsmntok_t *t)
{
    return (size_t)t->end + (t->type == JSMN_STRING);
}

/* jsmn finds the tokens; the separators between them are checked here, so that what is
 * taken is JSON as jansson reads it: ws { ws "k" ws : ws v ws , ... } ws. */
static bool well_formed(const char *s, size_t n, const jsmntok_t *t, int count)
{
    if (count < 1 || t[0].type != JSMN_OBJECT || t[0].size > MAX_MEMBERS ||
        count != 1 + 2 * t[0].size) {
        return false;
    }
    size_t at = skip_ws(s, 0, n);
    if (at != (size_t)t[0].start || skip_ws(s, (size_t)t[0].end, n) != n) {
        return false;
    }
    at++; /* '{' */
    for (int i = 0; i < t[0].size; i++) {
        const jsmntok_t *k = &t[1 + 2 * i], *v = k + 1;
        if (k->type != JSMN_STRING || k->size != 1 || v->size != 0 ||
            (v->type != JSMN_STRING && v->type != JSMN_PRIMITIVE)) {
            return false;
        }
        at = skip_ws(s, at, n);
        if (i > 0 && (at == n || s[at++] != ',')) {
            return false;
        }
        if (skip_ws(s, at, n) != raw_start(k)) {
            return false;
        }
        at = skip_ws(s, raw_end(k), n);
        if (at == n || s[at++] != ':' || skip_ws(s, at, n) != raw_start(v)) {
            return false;
        }
        at = raw_end(v);
    }
    at = skip_ws(s, at, n);
    return at < n && at + 1 == (size_t)t[0].end && s[at] == '}';
}

static bool token_is(const char *s, const jsmntok_t *t, const char *word)
{
    size_t n = (size_t)(t->end - t->start);
    return strlen(word) == n && memcmp(s + t->start, word, n) == 0;
}

static int hex4(const char *p)
{
    int v = 0;
    for (int i = 0; i < 4; i++) {
        char c = p[i];
        int d = c >= '0' && c <= '9'   ? c - '0'
                : c >= 'a' && c <= 'f' ? c - 'a' + 10
                : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                       : -1;
        if (d < 0) {
            return -1;
        }
        v = v << 4 | d;
    }
    return v;
}

static int put_utf8(Buf *out, unsigned cp)
{
    uint8_t b[4];
    size_t n;
    if (cp < 0x80) {
        b[0] = (uint8_t)cp, n = 1;
    } else if (cp < 0x800) {
        b[0] = (uint8_t)(0xC0 | cp >> 6), b[1] = (uint8_t)(0x80 | (cp & 0x3F)), n = 2;
    } else if (cp < 0x10000) {
        b[0] = (uint8_t)(0xE0 | cp >> 12), b[1] = (uint8_t)(0x80 | (cp >> 6 & 0x3F));
        b[2] = (uint8_t)(0x80 | (cp & 0x3F)), n = 3;
    } else {
        b[0] = (uint8_t)(0xF0 | cp >> 18), b[1] = (uint8_t)(0x80 | (cp >> 12 & 0x3F));
        b[2] = (uint8_t)(0x80 | (cp >> 6 & 0x3F)), b[3] = (uint8_t)(0x80 | (cp & 0x3F)), n = 4;
    }
    return buf_append(out, b, n);
}

/* One escape at p (after the backslash; `end` bounds it) into out: how many bytes it took,
 * or 0 when it is not one this path takes (jansson then decides). */
static size_t unescape(const char *p, const char *end, Buf *out)
{
    static const char simple[] = "\"\\/bfnrt", value[] = "\"\\/\b\f\n\r\t";
    const char *at = *p ? strchr(simple, *p) : NULL;
    if (at) {
        return buf_put_u8(out, (uint8_t)value[at - simple]) < 0 ? 0 : 1;
    }
    if (*p != 'u' || end - p < 5) {
        return 0;
    }
    int cp = hex4(p + 1);
    if (cp < 0) {
        return 0;
    }
    if (cp >= 0xD800 && cp <= 0xDBFF) { /* a surrogate pair: \uD8xx\uDCxx */
        int lo = end - p >= 11 && p[5] == '\\' && p[6] == 'u' ? hex4(p + 7) : -1;
        if (lo < 0xDC00 || lo > 0xDFFF) {
            return 0;
        }
        return put_utf8(out, 0x10000 + ((unsigned)(cp - 0xD800) << 10) + (unsigned)(lo - 0xDC00)) <
                       0
                   ? 0
                   : 11;
    }
    if ((cp >= 0xDC00 && cp <= 0xDFFF) || cp == 0) {
        return 0; /* a lone low surrogate; NUL (allowed by jansson here, but rare) */
    }
    return put_utf8(out, (unsigned)cp) < 0 ? 0 : 5;
}

/* A string token's text: *ret views the line when it has no escape, else `scratch` from
 * offset *at (the caller makes the view once scratch stops growing). false: not taken. */
static bool string_value(const char *s, const jsmntok_t *t, Buf *scratch, View *ret, size_t *at)
{
    const char *p = s + t->start, *end = s + t->end;
    const char *esc = memchr(p, '\\', (size_t)(end - p));
    for (const char *q = p; q < (esc ? esc : end); q++) {
        if ((uint8_t)*q < 0x20) {
            return false;
        }
    }
    if (!esc) {
        *ret = VIEW(p, (size_t)(end - p));
        *at = SIZE_MAX;
        return utf8_valid(*ret, false);
    }
    *at = buf_size(scratch);
    size_t start = *at;
    for (const char *q = p; q < end;) {
        if (*q == '\\') {
            size_t used = unescape(q + 1, end, scratch);
            if (!used) {
                return false;
            }
            q += 1 + used;
        } else if ((uint8_t)*q < 0x20 || buf_put_u8(scratch, (uint8_t)*q) < 0) {
            return false;
        } else {
            q++;
        }
    }
    *ret = VIEW(NULL, buf_size(scratch) - start);
    return utf8_valid(VIEW(scratch->data + scratch->off + start, ret->n), false);
}

/* A JSON integer as jansson reads one into json_int_t: -?[1-9][0-9]{0,17} or 0. */
static bool integer_value(const char *s, const jsmntok_t *t, int64_t *ret)
{
    if (t->type != JSMN_PRIMITIVE) {
        return false;
    }
    const char *p = s + t->start, *end = s + t->end;
    bool neg = *p == '-';
    p += neg;
    if (p == end || end - p > 18 || (*p == '0' && (end - p > 1 || neg))) {
        return false;
    }
    int64_t v = 0;
    for (; p < end; p++) {
        if (*p < '0' || *p > '9') {
            return false;
        }
        v = v * 10 + (*p - '0');
    }
    *ret = neg ? -v : v;
    return true;
}

static bool bool_value(const char *s, const jsmntok_t *t, bool *ret)
{
    if (t->type == JSMN_PRIMITIVE && (token_is(s, t, "true") || token_is(s, t, "false"))) {
        *ret = s[t->start] == 't';
        return true;
    }
    return false;
}

/* The members by name; false with one this path does not take, or one given twice. */
static bool collect(const char *s, const jsmntok_t *t, Fields *f)
{
    *f = (Fields){0};
    for (int i = 0; i < t[0].size; i++) {
        const jsmntok_t *k = &t[1 + 2 * i];
        int which = 0;
        while (which < F_COUNT && !token_is(s, k, field_names[which])) {
            which++;
        }
        if (which == F_COUNT || f->v[which]) {
            return false;
        }
        f->v[which] = k + 1;
    }
    return true;
}

/* The ring's oldest id when nobody else holds it any more (jansson's refcount is public:
 * json_incref works on it in jansson.h), set to n; else a new one takes its place (its holders
 * keep the old one). Ids are let go of about in the order they came, so one look is enough. */
static json_t *integer_id(FastScratch *fs, int64_t n)
{
    json_t **slot = &fs->ids[fs->next];
    fs->next = (fs->next + 1) % FAST_IDS;
    if (KEEP_SPARES && *slot && (*slot)->refcount == 1 &&
        json_integer_set(*slot, (json_int_t)n) == 0) {
        return json_incref(*slot);
    }
    json_t *j = json_integer((json_int_t)n);
    if (j && KEEP_SPARES) {
        json_decref(*slot);
        *slot = json_incref(j);
    }
    return j;
}

void fast_scratch_free(FastScratch *fs)
{
    buf_free(&fs->text);
    for (unsigned i = 0; i < FAST_IDS; i++) {
        json_decref(fs->ids[i]);
        fs->ids[i] = NULL;
    }
    fs->next = 0;
}

/* The id as jansson would give it (a new reference, or a singleton); NULL: not taken. */
static json_t *id_value(const char *s, const jsmntok_t *t, FastScratch *fs)
{
    int64_t n;
    View v;
    size_t at;
    if (integer_value(s, t, &n)) {
        return integer_id(fs, n);
    }
    if (t->type == JSMN_PRIMITIVE) {
        return token_is(s, t, "null") ? json_null() : NULL;
    }
    Buf none = {0};
    if (!string_value(s, t, &none, &v, &at) || at != SIZE_MAX) {
        buf_free(&none);
        return NULL; /* an id with escapes: rare, left to jansson */
    }
    return json_stringn((const char *)v.p, v.n);
}

static bool publish_fields(const char *s, const Fields *f, Request *req, Buf *scratch)
{
    int64_t qos = 0, timeout = -1;
    size_t topic_at, payload_at;
    if (!f->v[F_TOPIC] || f->v[F_TOPIC]->type != JSMN_STRING || !f->v[F_PAYLOAD] ||
        f->v[F_PAYLOAD]->type != JSMN_STRING || f->v[F_SEQ] ||
        (f->v[F_QOS] && (!integer_value(s, f->v[F_QOS], &qos) || qos < 0 || qos > 2)) ||
        (f->v[F_RETAIN] && !bool_value(s, f->v[F_RETAIN], &req->retain)) ||
        (f->v[F_WAIT] && !bool_value(s, f->v[F_WAIT], &req->wait)) ||
        (f->v[F_TIMEOUT] &&
         (!integer_value(s, f->v[F_TIMEOUT], &timeout) || timeout < 1 || timeout > 86400000)) ||
        !string_value(s, f->v[F_TOPIC], scratch, &req->topic, &topic_at) ||
        !string_value(s, f->v[F_PAYLOAD], scratch, &req->payload, &payload_at)) {
        return false;
    }
    const uint8_t *base = scratch->data ? scratch->data + scratch->off : NULL;
    if (topic_at != SIZE_MAX) {
        req->topic.p = base + topic_at;
    }
    if (payload_at != SIZE_MAX) {
        req->payload.p = base + payload_at;
    }
    req->qos = (uint8_t)qos;
    req->timeout_ms = timeout;
    return mqtt_topic_check(req->topic) == 0; /* else jansson's path names the problem */
}

int request_parse_fast(View line, Request *req, FastScratch *fs)
{
    *req = (Request){
        .wait = true, .timeout_ms = -1, .events_connection = -1, .events_ping = -1, .expiry = -1};
    Buf *scratch = &fs->text;
    buf_clear(scratch);
    const char *s = (const char *)line.p;
    jsmn_parser p;
    jsmntok_t t[MAX_TOKENS];
    jsmn_init(&p);
    int count = jsmn_parse(&p, s, line.n, t, MAX_TOKENS);
    Fields f;
    if (count < 1 || !well_formed(s, line.n, t, count) || !collect(s, t, &f) || !f.v[F_OP] ||
        f.v[F_OP]->type != JSMN_STRING) {
        return 0;
    }
    bool publish = token_is(s, f.v[F_OP], "publish"), ack = token_is(s, f.v[F_OP], "ack");
    int64_t seq = 0;
    bool ack_only = t[0].size == 2 + (f.v[F_ID] != NULL); /* op, seq and the id */
    bool taken = publish ? publish_fields(s, &f, req, scratch)
                 : ack ? (ack_only && f.v[F_SEQ] && integer_value(s, f.v[F_SEQ], &seq) && seq >= 1)
                       : false;
    json_t *id = NULL;
    if (!taken || (f.v[F_ID] && !(id = id_value(s, f.v[F_ID], fs)))) {
        *req = (Request){0};
        return 0;
    }
    req->op = publish ? OP_PUBLISH : OP_ACK;
    req->seq = (uint64_t)seq;
    req->id = id;
    req->root = id; /* it owns the id: request_free drops it */
    return 1;
}
