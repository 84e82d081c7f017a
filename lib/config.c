/* SPDX-License-Identifier: MIT */
/*
 * Configuration parsing: see config.h. One table describes every key (section, name, type,
 * range, where it goes), so the parser, the defaults and the validation cannot drift apart.
 */
#include "config.h"

#include "mqtt/mount.h"
#include "pkcs11_uri.h"

#include <errno.h>
#include <ini.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

#include "defaults.h"
#include "buf.h"
#include "mqtt/topic.h"
#include "utf8.h"

enum key_type {
    K_STRING,
    K_PORT,
    K_UINT,
    K_SIZE,
    K_BOOL,
    K_MODE,
    K_HOSTS,
    K_LEVEL,
    K_FSYNC,
    K_TLSVER,
    K_PROTOCOL,
    K_EXPIRY,
    K_MOUNT,    /* a string: a mount point pattern */
    K_FILTERS,  /* a string: comma-separated topic filters */
    K_TEXTFILE, /* a string: a file path whose directory exists */
    K_KEYFILE,  /* a string: a file path, or a PKCS#11 URI that parses */
};

typedef struct Key {
    const char *section, *name;
    enum key_type type;
    size_t offset;
    unsigned long long min, max;
    enum config_apply applies; /* at reload */
} Key;

#define KEY(sec, nm, ty, field, lo, hi, when)                                                      \
    {                                                                                              \
        sec, nm, ty, offsetof(Config, field), lo, hi, CONFIG_APPLY_##when                          \
    }

static const Key keys[] = {
    KEY("broker", "host", K_HOSTS, broker.host_list, 0, 0, LINK),
    KEY("broker", "port", K_PORT, broker.port, 1, 65535, LINK),
    KEY("broker", "client_id", K_STRING, broker.client_id, 0, 65535, LINK),
    KEY("broker", "username", K_STRING, broker.username, 0, 65535, LINK),
    /* A changed password reconnects too: reload.c compares the password itself, which may
     * come from a file whose path did not change. */
    KEY("broker", "password", K_STRING, broker.password, 0, 65535, NOW),
    KEY("broker", "password_file", K_STRING, broker.password_file, 0, 4096, NOW),
    KEY("broker", "keepalive", K_UINT, broker.keepalive, 0, 65535, LINK),
    KEY("broker", "clean_session", K_BOOL, broker.clean_session, 0, 0, LINK),
    KEY("broker", "connect_timeout", K_UINT, broker.connect_timeout, 1, 3600, NOW),
    KEY("broker", "reconnect_min", K_UINT, broker.reconnect_min, 1, 86400, NOW),
    KEY("broker", "reconnect_max", K_UINT, broker.reconnect_max, 1, 86400, NOW),
    KEY("broker", "max_inflight", K_UINT, broker.max_inflight, 1, 65000, NOW),
    KEY("broker", "publish_timeout", K_UINT, broker.publish_timeout, 1, 86400, NOW),
    KEY("broker", "max_publish_rate", K_UINT, broker.max_publish_rate, 0, 1000000000, NOW),
    KEY("broker", "max_publish_bytes", K_SIZE, broker.max_publish_bytes, 0, 1ull << 40, NOW),
    KEY("broker", "protocol", K_PROTOCOL, broker.protocol, 0, 0, LINK),
    KEY("broker", "session_expiry", K_EXPIRY, broker.session_expiry, 0, 0xFFFFFFFFull, LINK),
    KEY("broker", "receive_maximum", K_UINT, broker.receive_maximum, 1, 65535, LINK),
    KEY("broker", "maximum_packet_size", K_SIZE, broker.maximum_packet_size, 0, 268435460, LINK),
    KEY("broker", "topic_alias_maximum", K_UINT, broker.topic_alias_maximum, 0, 65535, LINK),
    KEY("broker", "topic_aliases", K_BOOL, broker.topic_aliases, 0, 0, LINK),
    KEY("broker", "request_response_information", K_BOOL, broker.request_response_information, 0, 0,
        LINK),
    KEY("will", "topic", K_STRING, will.topic, 0, 65535, LINK),
    KEY("will", "message", K_STRING, will.message, 0, 65535, LINK),
    KEY("will", "qos", K_UINT, will.qos, 0, 2, LINK),
    KEY("will", "retain", K_BOOL, will.retain, 0, 0, LINK),
    KEY("will", "delay", K_UINT, will.delay, 0, 4294967295ull, LINK),
    KEY("will", "message_expiry", K_UINT, will.message_expiry, 0, 4294967295ull, LINK),
    KEY("will", "content_type", K_STRING, will.content_type, 0, 65535, LINK),
    KEY("tls", "enabled", K_BOOL, tls.enabled, 0, 0, LINK),
    KEY("tls", "ca_file", K_STRING, tls.ca_file, 0, 4096, LINK),
    KEY("tls", "ca_path", K_STRING, tls.ca_path, 0, 4096, LINK),
    KEY("tls", "cert_file", K_STRING, tls.cert_file, 0, 4096, LINK),
    KEY("tls", "key_file", K_KEYFILE, tls.key_file, 0, 4096, LINK),
    KEY("tls", "pkcs11_module", K_STRING, tls.pkcs11_module, 0, 4096, LINK),
    KEY("tls", "pin_file", K_STRING, tls.pin_file, 0, 4096, LINK),
    KEY("tls", "verify", K_BOOL, tls.verify, 0, 0, LINK),
    KEY("tls", "server_name", K_STRING, tls.server_name, 0, 255, LINK),
    KEY("tls", "min_version", K_TLSVER, tls.min_version, 0, 0, LINK),
    KEY("tls", "alpn", K_STRING, tls.alpn, 0, 255, LINK),
    KEY("ipc", "socket", K_STRING, ipc.socket, 1, 107, START),
    KEY("ipc", "mode", K_MODE, ipc.mode, 0, 0777, START),
    KEY("ipc", "group", K_STRING, ipc.group, 0, 255, START),
    KEY("ipc", "max_clients", K_UINT, ipc.max_clients, 1, 1000000, NOW),
    KEY("ipc", "max_line", K_SIZE, ipc.max_line, 1024, 1ull << 30, NOW),
    KEY("ipc", "client_buffer", K_SIZE, ipc.client_buffer, 4096, 1ull << 32, NOW),
    KEY("queue", "max_messages", K_SIZE, queue.max_messages, 1, 100000000, NOW),
    KEY("queue", "max_bytes", K_SIZE, queue.max_bytes, 1024, 1ull << 40, NOW),
    KEY("queue", "spool_dir", K_STRING, queue.spool_dir, 0, 4096, START),
    KEY("queue", "fsync", K_FSYNC, queue.fsync, 0, 0, START),
    KEY("log", "level", K_LEVEL, log.level, 0, 0, NOW),
    KEY("rpc", "response_prefix", K_STRING, rpc.response_prefix, 0, 65535, START),
    KEY("sessions", "max", K_UINT, sessions.max, 0, 1000000, NOW),
    KEY("sessions", "max_per_uid", K_UINT, sessions.max_per_uid, 0, 1000000, NOW),
    KEY("sessions", "max_messages", K_SIZE, sessions.max_messages, 1, 100000000, NOW),
    KEY("sessions", "max_bytes", K_SIZE, sessions.max_bytes, 1024, 1ull << 40, NOW),
    KEY("sessions", "default_expiry", K_UINT, sessions.default_expiry, 0, 4294967295ull, NOW),
    KEY("topics", "mount", K_MOUNT, topics.mount, 0, 65535, START),
    KEY("topics", "unmounted", K_FILTERS, topics.unmounted, 0, 65535, START),
    KEY("metrics", "textfile", K_TEXTFILE, metrics.textfile, 0, 4000, NOW),
    KEY("metrics", "interval", K_UINT, metrics.interval, 1, 86400, NOW),
};

static bool is_string(enum key_type t)
{
    return t == K_STRING || t == K_HOSTS || t == K_MOUNT || t == K_FILTERS || t == K_TEXTFILE ||
           t == K_KEYFILE;
}

static const char *const level_names[] = {"error", "warning", "info", "debug", "packet"};

const char *log_level_name(enum log_level l)
{
    return l <= LOG_LEVEL_PACKET ? level_names[l] : "?";
}

int log_level_parse(const char *s, enum log_level *ret)
{
    for (int i = 0; i <= LOG_LEVEL_PACKET; i++) {
        if (strcmp(s, level_names[i]) == 0) {
            *ret = (enum log_level)i;
            return 0;
        }
    }
    return -EINVAL;
}

static int set_string(char **slot, const char *v)
{
    char *copy = strdup(v);
    if (!copy) {
        return -ENOMEM;
    }
    free(*slot);
    *slot = copy;
    return 0;
}

int config_init(Config *cfg)
{
    *cfg = (Config){
        .sessions = {.max = 256,
                     .max_per_uid = 64,
                     .max_messages = 10000,
                     .max_bytes = 16u << 20,
                     .default_expiry = 3600},
        .broker = {.port = DEFAULT_BROKER_PORT,
                   .keepalive = DEFAULT_KEEPALIVE,
                   .clean_session = true,
                   .connect_timeout = DEFAULT_CONNECT_TIMEOUT,
                   .reconnect_min = DEFAULT_RECONNECT_MIN,
                   .reconnect_max = DEFAULT_RECONNECT_MAX,
                   .max_inflight = DEFAULT_MAX_INFLIGHT,
                   .publish_timeout = DEFAULT_PUBLISH_TIMEOUT,
                   .protocol = PROTOCOL_AUTO,
                   .session_expiry = -1,
                   .receive_maximum = 65535,
                   .topic_alias_maximum = DEFAULT_TOPIC_ALIAS_MAXIMUM,
                   .topic_aliases = true,
                   .request_response_information = true},
        .tls = {.verify = true, .min_version = 12},
        .ipc = {.mode = DEFAULT_IPC_MODE,
                .max_clients = DEFAULT_MAX_CLIENTS,
                .max_line = DEFAULT_MAX_LINE,
                .client_buffer = DEFAULT_CLIENT_BUFFER},
        .queue = {.max_messages = DEFAULT_QUEUE_MAX_MESSAGES,
                  .max_bytes = DEFAULT_QUEUE_MAX_BYTES,
                  .fsync = FSYNC_BATCH},
        .log = {.level = LOG_LEVEL_INFO},
        .metrics = {.interval = 15},
    };
    char err[64];
    if (set_string(&cfg->ipc.socket, DEFAULT_SOCKET) < 0 ||
        set_string(&cfg->topics.unmounted, DEFAULT_UNMOUNTED) < 0 ||
        config_set_hosts(cfg, DEFAULT_BROKER_HOST, err, sizeof(err)) < 0) {
        config_free(cfg);
        return -ENOMEM;
    }
    return 0;
}

void config_free(Config *cfg)
{
    for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++) {
        if (is_string(keys[i].type)) {
            char **slot = (char **)((char *)cfg + keys[i].offset);
            free(*slot);
            *slot = NULL;
        }
    }
    for (size_t i = 0; i < cfg->broker.n_addrs; i++) {
        free(cfg->broker.addrs[i].host);
    }
    cfg->broker.n_addrs = 0;
    acl_free(&cfg->acl);
}

static void fmt(char *err, size_t errlen, const char *f, ...) __attribute__((format(printf, 3, 4)));
static void fmt(char *err, size_t errlen, const char *f, ...)
{
    va_list ap;
    va_start(ap, f);
    vsnprintf(err, errlen, f, ap);
    va_end(ap);
}

static int parse_uint(const char *v, unsigned long long *ret, bool size_suffix)
{
    char *end;
    if (*v < '0' || *v > '9') {
        return -EINVAL;
    }
    errno = 0;
    unsigned long long n = strtoull(v, &end, 10);
    if (errno) {
        return -EINVAL;
    }
    if (size_suffix && *end) {
        unsigned shift = 0;
        switch (*end) {
        case 'k':
        case 'K':
            shift = 10;
            break;
        case 'm':
        case 'M':
            shift = 20;
            break;
        case 'g':
        case 'G':
            shift = 30;
            break;
        default:
            return -EINVAL;
        }
        if (n > (ULLONG_MAX >> shift)) {
            return -EINVAL;
        }
        n <<= shift;
        end++;
    }
    if (*end) {
        return -EINVAL;
    }
    *ret = n;
    return 0;
}

static int parse_bool(const char *v, bool *ret)
{
    static const char *const yes[] = {"true", "yes", "on", "1"}, *const no[] = {"false", "no",
                                                                                "off", "0"};
    for (int i = 0; i < 4; i++) {
        if (strcasecmp(v, yes[i]) == 0) {
            *ret = true;
            return 0;
        }
        if (strcasecmp(v, no[i]) == 0) {
            *ret = false;
            return 0;
        }
    }
    return -EINVAL;
}

/* One "host[:port]" entry; IPv6 addresses in brackets: "[::1]:1883". */
int config_parse_addr(const char *s, size_t n, BrokerAddr *ret)
{
    const char *host = s, *port = NULL;
    size_t host_n = n;
    if (n && s[0] == '[') {
        const char *close = memchr(s, ']', n);
        if (!close) {
            return -EINVAL;
        }
        host = s + 1;
        host_n = (size_t)(close - host);
        if (close + 1 < s + n) {
            if (close[1] != ':') {
                return -EINVAL;
            }
            port = close + 2;
        }
    } else {
        const char *colon = memchr(s, ':', n);
        if (colon && memchr(colon + 1, ':', (size_t)(s + n - colon - 1))) {
            colon = NULL; /* a bare IPv6 address: no port */
        }
        if (colon) {
            host_n = (size_t)(colon - s);
            port = colon + 1;
        }
    }
    if (host_n == 0 || host_n > 253) {
        return -EINVAL;
    }
    unsigned long p = 0;
    if (port) {
        char buf[8];
        size_t pn = (size_t)(s + n - port);
        char *end;
        if (pn == 0 || pn >= sizeof(buf)) {
            return -EINVAL;
        }
        memcpy(buf, port, pn);
        buf[pn] = 0;
        p = strtoul(buf, &end, 10);
        if (*end || p == 0 || p > 65535) {
            return -EINVAL;
        }
    }
    ret->host = strndup(host, host_n);
    if (!ret->host) {
        return -ENOMEM;
    }
    ret->port = (uint16_t)p; /* 0: use [broker] port */
    return 0;
}

int config_set_hosts(Config *cfg, const char *list, char *err, size_t errlen)
{
    BrokerAddr addrs[MAX_BROKER_HOSTS];
    size_t n = 0;
    const char *p = list;
    int r = 0;
    for (;;) {
        while (*p == ' ' || *p == '\t') {
            p++;
        }
        const char *end = strchr(p, ',');
        size_t len = end ? (size_t)(end - p) : strlen(p);
        while (len && (p[len - 1] == ' ' || p[len - 1] == '\t')) {
            len--;
        }
        if (n == MAX_BROKER_HOSTS) {
            fmt(err, errlen, "more than %d broker hosts", MAX_BROKER_HOSTS);
            r = -EINVAL;
            break;
        }
        if ((r = config_parse_addr(p, len, &addrs[n])) < 0) {
            fmt(err, errlen, "invalid broker address '%.*s' (want host[:port], [v6addr]:port)",
                (int)len, p);
            break;
        }
        n++;
        if (!end) {
            break;
        }
        p = end + 1;
    }
    if (r < 0) {
        while (n) {
            free(addrs[--n].host);
        }
        return r;
    }
    for (size_t i = 0; i < cfg->broker.n_addrs; i++) {
        free(cfg->broker.addrs[i].host);
    }
    memcpy(cfg->broker.addrs, addrs, n * sizeof(addrs[0]));
    cfg->broker.n_addrs = n;
    return set_string(&cfg->broker.host_list, list);
}

typedef struct ParseState {
    Config *cfg;
    char *msg; /* first error */
    size_t msglen;
    bool failed;
} ParseState;

static int parse_protocol(const char *v, void *slot, char *err, size_t errlen)
{
    static const char *const names[] = {
        [PROTOCOL_311] = "3.1.1", [PROTOCOL_5] = "5", [PROTOCOL_AUTO] = "auto"};
    for (int i = 0; i < 3; i++) {
        if (strcmp(v, names[i]) == 0) {
            *(enum mqtt_protocol *)slot = (enum mqtt_protocol)i;
            return 0;
        }
    }
    fmt(err, errlen, "protocol must be 5, 3.1.1 or auto, not '%s'", v);
    return -EINVAL;
}

/* Seconds up to 4294967295, or "never" (the same value, as the standard reads it). */
static int parse_expiry(const char *v, const Key *k, void *slot, char *err, size_t errlen)
{
    unsigned long long n;
    if (strcmp(v, "never") == 0) {
        n = SESSION_EXPIRY_NEVER;
    } else if (parse_uint(v, &n, false) < 0 || n > k->max) {
        fmt(err, errlen, "%s must be a number of seconds up to %llu, or never, not '%s'", k->name,
            k->max, v);
        return -EINVAL;
    }
    *(long long *)slot = (long long)n;
    return 0;
}

/* A file the daemon writes: an absolute path in a directory that exists ("" : none). */
static int check_textfile(const char *v, char *err, size_t errlen)
{
    if (!*v) {
        return 0;
    }
    const char *slash = strrchr(v, '/');
    if (v[0] != '/' || !slash[1]) {
        fmt(err, errlen, "textfile must be an absolute file path, not '%s'", v);
        return -EINVAL;
    }
    char dir[4096];
    snprintf(dir, sizeof(dir), "%.*s", slash == v ? 1 : (int)(slash - v), v);
    struct stat st;
    if (stat(dir, &st) < 0 || !S_ISDIR(st.st_mode)) {
        fmt(err, errlen, "textfile: the directory %s does not exist", dir);
        return -EINVAL;
    }
    return 0;
}

static int set_key(Config *cfg, const Key *k, const char *v, char *err, size_t errlen)
{
    void *slot = (char *)cfg + k->offset;
    unsigned long long n;
    switch (k->type) {
    case K_STRING:
        if (strlen(v) < k->min || strlen(v) > k->max) {
            fmt(err, errlen, "%s must be %llu to %llu characters", k->name, k->min, k->max);
            return -EINVAL;
        }
        return set_string(slot, v);
    case K_HOSTS:
        return config_set_hosts(cfg, v, err, errlen);
    case K_PORT:
    case K_UINT:
    case K_SIZE:
        if (parse_uint(v, &n, k->type == K_SIZE) < 0 || n < k->min || n > k->max) {
            fmt(err, errlen, "%s must be a whole number from %llu to %llu%s, not '%s'", k->name,
                k->min, k->max, k->type == K_SIZE ? " (suffix K, M, G allowed)" : "", v);
            return -EINVAL;
        }
        if (k->type == K_SIZE) {
            *(size_t *)slot = (size_t)n;
        } else if (k->type == K_PORT) {
            *(uint16_t *)slot = (uint16_t)n;
        } else {
            *(unsigned *)slot = (unsigned)n;
        }
        return 0;
    case K_BOOL:
        if (parse_bool(v, slot) < 0) {
            fmt(err, errlen, "%s must be true or false, not '%s'", k->name, v);
            return -EINVAL;
        }
        return 0;
    case K_MODE: {
        char *end;
        unsigned long m = strtoul(v, &end, 8);
        if (!*v || *end || m > 0777) {
            fmt(err, errlen, "mode must be octal permission bits like 0660, not '%s'", v);
            return -EINVAL;
        }
        *(mode_t *)slot = (mode_t)m;
        return 0;
    }
    case K_LEVEL:
        if (log_level_parse(v, slot) < 0) {
            fmt(err, errlen, "level must be error, warning, info, debug or packet, not '%s'", v);
            return -EINVAL;
        }
        return 0;
    case K_FSYNC: {
        static const char *const modes[] = {"always", "batch", "never"};
        for (int i = 0; i < 3; i++) {
            if (strcmp(v, modes[i]) == 0) {
                *(enum fsync_mode *)slot = (enum fsync_mode)i;
                return 0;
            }
        }
        fmt(err, errlen, "fsync must be always, batch or never, not '%s'", v);
        return -EINVAL;
    }
    case K_PROTOCOL:
        return parse_protocol(v, slot, err, errlen);
    case K_EXPIRY:
        return parse_expiry(v, k, slot, err, errlen);
    case K_TEXTFILE:
        return check_textfile(v, err, errlen) < 0 ? -EINVAL : set_string(slot, v);
    case K_KEYFILE: {
        Pkcs11Uri uri;
        if (pkcs11_uri_is(v) && pkcs11_uri_parse(v, &uri, err, errlen) < 0) {
            return -EINVAL;
        }
        return set_string(slot, v);
    }
    case K_MOUNT:
    case K_FILTERS: { /* checked as the daemon will use it (a sample host name, client id) */
        MqttMount m;
        bool mount = k->type == K_MOUNT;
        int r =
            mqtt_mount_setup(&m, mount ? v : NULL, "host", "client", mount ? NULL : v, err, errlen);
        if (r < 0) {
            return r;
        }
        mqtt_mount_free(&m);
        return set_string(slot, v);
    }
    case K_TLSVER:
        if (strcmp(v, "1.2") == 0) {
            *(unsigned *)slot = 12;
        } else if (strcmp(v, "1.3") == 0) {
            *(unsigned *)slot = 13;
        } else {
            fmt(err, errlen, "min_version must be 1.2 or 1.3, not '%s'", v);
            return -EINVAL;
        }
        return 0;
    }
    return -EINVAL;
}

static int on_key(void *user, const char *section, const char *name, const char *value)
{
    ParseState *st = user;
    if (st->failed) {
        return 1; /* report the first error only */
    }
    if (strcmp(section, "acl") == 0) {
        if (acl_parse_line(&st->cfg->acl, name, value, st->msg, st->msglen) < 0) {
            st->failed = true;
            return 0;
        }
        return 1;
    }
    for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++) {
        if (strcmp(keys[i].section, section) == 0 && strcmp(keys[i].name, name) == 0) {
            if (set_key(st->cfg, &keys[i], value, st->msg, st->msglen) < 0) {
                st->failed = true;
                return 0;
            }
            return 1;
        }
    }
    bool known_section = strcmp(section, "acl") == 0;
    for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++) {
        known_section |= strcmp(keys[i].section, section) == 0;
    }
    if (!*section) {
        fmt(st->msg, st->msglen, "key '%s' outside of any [section]", name);
    } else if (!known_section) {
        fmt(st->msg, st->msglen, "unknown section [%s]", section);
    } else {
        fmt(st->msg, st->msglen, "unknown key '%s' in [%s]", name, section);
    }
    st->failed = true;
    return 0;
}

/* The first line longer than inih reads whole (INI_MAX_LINE with the NUL; the rest would be
 * read as a line of its own): 0 when none. */
static int overlong_line(const char *text)
{
    int line = 1;
    for (const char *p = text; *p; line++) {
        size_t n = strcspn(p, "\n");
        if (n > INI_MAX_LINE - 1) {
            return line;
        }
        p += n + (p[n] == '\n');
    }
    return 0;
}

int config_parse(Config *cfg, const char *text, const char *filename, char *err, size_t errlen)
{
    int too_long = overlong_line(text);
    if (too_long) {
        fmt(err, errlen, "%s:%d: the line is longer than %d bytes (the parser's limit)", filename,
            too_long, INI_MAX_LINE - 1);
        return -EINVAL;
    }
    char msg[300] = "";
    ParseState st = {.cfg = cfg, .msg = msg, .msglen = sizeof(msg)};
    int line = ini_parse_string(text, on_key, &st);
    if (line != 0) {
        fmt(err, errlen, "%s:%d: %s", filename, line,
            st.failed ? msg : "syntax error (expected [section] or key = value)");
        return -EINVAL;
    }
    return 0;
}

/* What goes into CONNECT must be encodable: UTF-8 strings without NUL, at most 65535 bytes. */
static int check_connect_fields(const Config *cfg, char *err, size_t errlen)
{
    const struct {
        const char *key, *value;
        bool text;
    } fields[] = {
        {"broker.client_id", cfg->broker.client_id, true},
        {"broker.username", cfg->broker.username, true},
        {"broker.password", cfg->broker.password, false},
        {"will.message", cfg->will.message, false},
    };
    for (size_t i = 0; i < sizeof(fields) / sizeof(fields[0]); i++) {
        View v = VIEW_STR(fields[i].value ? fields[i].value : "");
        if (v.n > 65535) {
            fmt(err, errlen, "%s is %zu bytes long; MQTT carries at most 65535", fields[i].key,
                v.n);
            return -EINVAL;
        }
        if (fields[i].text && !utf8_valid(v, false)) {
            fmt(err, errlen, "%s is not valid UTF-8", fields[i].key);
            return -EINVAL;
        }
    }
    return 0;
}

int config_check(const Config *cfg, char *err, size_t errlen)
{
    const struct BrokerConfig *b = &cfg->broker;
    int r = check_connect_fields(cfg, err, errlen);
    if (r < 0) {
        return r;
    }
    if (b->reconnect_min > b->reconnect_max) {
        fmt(err, errlen, "broker.reconnect_min (%u) is larger than reconnect_max (%u)",
            b->reconnect_min, b->reconnect_max);
        return -EINVAL;
    }
    if (b->password && *b->password && b->password_file && *b->password_file) {
        fmt(err, errlen, "broker.password and broker.password_file are both set: use one");
        return -EINVAL;
    }
    if (((b->password && *b->password) || (b->password_file && *b->password_file)) &&
        !(b->username && *b->username)) {
        fmt(err, errlen, "a broker password needs broker.username (MQTT 3.1.1 rule)");
        return -EINVAL;
    }
    if (b->maximum_packet_size && b->maximum_packet_size < MIN_MAXIMUM_PACKET_SIZE) {
        fmt(err, errlen,
            "broker.maximum_packet_size must be 0 (no limit but MQTT's) or at least %u bytes, "
            "not %zu: smaller, even the broker's CONNACK could be too large",
            MIN_MAXIMUM_PACKET_SIZE, b->maximum_packet_size);
        return -EINVAL;
    }
    if (b->session_expiry == 0 && !b->clean_session && b->protocol != PROTOCOL_311) {
        fmt(err, errlen,
            "broker.session_expiry = 0 with clean_session = false: an MQTT 5 broker would end "
            "the session as soon as the link drops; leave session_expiry out (never) or give "
            "it a time");
        return -EINVAL;
    }
    if (cfg->will.topic && *cfg->will.topic && mqtt_topic_check(VIEW_STR(cfg->will.topic)) < 0) {
        fmt(err, errlen, "will.topic '%s' is not a valid topic name", cfg->will.topic);
        return -EINVAL;
    }
    const char *rp = cfg->rpc.response_prefix;
    if (rp && *rp && (mqtt_topic_check(VIEW_STR(rp)) < 0 || rp[0] == '$')) {
        fmt(err, errlen,
            "rpc.response_prefix '%s' must be a topic name (no wildcards, not starting with $)",
            rp);
        return -EINVAL;
    }
    if ((cfg->tls.cert_file && *cfg->tls.cert_file) != (cfg->tls.key_file && *cfg->tls.key_file)) {
        fmt(err, errlen, "tls.cert_file and tls.key_file go together");
        return -EINVAL;
    }
    bool token = pkcs11_uri_is(cfg->tls.key_file);
    if (token != (cfg->tls.pkcs11_module && *cfg->tls.pkcs11_module)) {
        fmt(err, errlen, "%s",
            token ? "tls.key_file is a PKCS#11 URI: it needs tls.pkcs11_module"
                  : "tls.pkcs11_module is for a key_file that is a PKCS#11 URI");
        return -EINVAL;
    }
    /* The largest MQTT message (256 MiB) as base64 in a JSON request, with room for the rest
     * of the line: a longer line can only be refused. */
    size_t useful_line = (size_t)268435455 / 3 * 4 + 4 + 65536;
    if (cfg->ipc.max_line > useful_line) {
        fmt(err, errlen,
            "ipc.max_line (%zu) is larger than any request can use: MQTT carries at most 256 "
            "MiB per message, %zu bytes as base64 in a publish request",
            cfg->ipc.max_line, useful_line);
        return -EINVAL;
    }
    if (cfg->ipc.socket[0] != '/') {
        fmt(err, errlen, "ipc.socket must be an absolute path, not '%s'", cfg->ipc.socket);
        return -EINVAL;
    }
    return 0;
}

static bool str_eq(const char *a, const char *b)
{
    return strcmp(a ? a : "", b ? b : "") == 0;
}

static bool key_equal(const Key *k, const Config *a, const Config *b)
{
    const char *pa = (const char *)a + k->offset, *pb = (const char *)b + k->offset;
    switch (k->type) {
    case K_STRING:
    case K_HOSTS:
    case K_MOUNT:
    case K_FILTERS:
    case K_TEXTFILE:
    case K_KEYFILE:
        return str_eq(*(char *const *)pa, *(char *const *)pb);
    case K_PORT:
        return *(const uint16_t *)pa == *(const uint16_t *)pb;
    case K_UINT:
    case K_TLSVER:
        return *(const unsigned *)pa == *(const unsigned *)pb;
    case K_PROTOCOL:
        return *(const enum mqtt_protocol *)pa == *(const enum mqtt_protocol *)pb;
    case K_EXPIRY:
        return *(const long long *)pa == *(const long long *)pb;
    case K_SIZE:
        return *(const size_t *)pa == *(const size_t *)pb;
    case K_BOOL:
        return *(const bool *)pa == *(const bool *)pb;
    case K_MODE:
        return *(const mode_t *)pa == *(const mode_t *)pb;
    case K_LEVEL:
        return *(const enum log_level *)pa == *(const enum log_level *)pb;
    case K_FSYNC:
        return *(const enum fsync_mode *)pa == *(const enum fsync_mode *)pb;
    }
    return false;
}

void config_diff(const Config *a, const Config *b, ConfigDiff *out)
{
    *out = (ConfigDiff){0};
    for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++) {
        const Key *k = &keys[i];
        if (key_equal(k, a, b)) {
            continue;
        }
        out->changed++;
        if (k->applies == CONFIG_APPLY_LINK) {
            out->reconnect = true;
        } else if (k->applies == CONFIG_APPLY_START) {
            size_t used = strlen(out->at_start);
            snprintf(out->at_start + used, sizeof(out->at_start) - used, "%s%s.%s",
                     used ? ", " : "", k->section, k->name);
        }
    }
}

uint32_t config_session_expiry(const Config *cfg)
{
    const struct BrokerConfig *b = &cfg->broker;
    if (b->session_expiry >= 0) {
        return (uint32_t)b->session_expiry;
    }
    return b->clean_session ? 0 : SESSION_EXPIRY_NEVER;
}

void config_notes(const Config *cfg, char *out, size_t n)
{
    const struct BrokerConfig *b = &cfg->broker;
    snprintf(out, n, "%s",
             b->session_expiry < 0 && !b->clean_session && b->protocol != PROTOCOL_311
                 ? "note: broker.session_expiry is not set and clean_session = false: with MQTT "
                   "5 the daemon asks the broker to keep the session forever (never)"
                 : "");
}
