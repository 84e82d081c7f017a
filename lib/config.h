/* SPDX-License-Identifier: MIT */
/*
 * The configuration of mqttbridged: the INI file of config.md, parsed from a string with
 * inih, every key validated. Errors come back as "FILE:LINE: message". The daemon reads the
 * file and the password file; this module does no I/O.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "defaults.h"

#include "acl.h"

enum log_level {
    LOG_LEVEL_ERROR,
    LOG_LEVEL_WARNING,
    LOG_LEVEL_INFO,
    LOG_LEVEL_DEBUG,
    LOG_LEVEL_PACKET
};

enum fsync_mode { FSYNC_ALWAYS, FSYNC_BATCH, FSYNC_NEVER };

/* [broker] protocol (the same order as the session's enum session_protocol). */
enum mqtt_protocol { PROTOCOL_311, PROTOCOL_5, PROTOCOL_AUTO };

/* [broker] session_expiry: "never" as the standard writes it. */
#define SESSION_EXPIRY_NEVER 0xFFFFFFFFu

typedef struct BrokerAddr {
    char *host;    /* name or address, without IPv6 brackets */
    uint16_t port; /* 0: the [broker] port */
} BrokerAddr;

typedef struct Config {
    struct BrokerConfig {
        BrokerAddr addrs[MAX_BROKER_HOSTS];
        size_t n_addrs;
        char *host_list; /* as written, for messages */
        uint16_t port;
        char *client_id, *username, *password, *password_file;
        unsigned keepalive, connect_timeout, reconnect_min, reconnect_max, max_inflight;
        unsigned publish_timeout;
        unsigned max_publish_rate; /* PUBLISH packets a second toward the broker; 0: no limit */
        size_t max_publish_bytes;  /* bytes a second; 0: no limit */
        bool clean_session;
        /* MQTT 5 */
        enum mqtt_protocol protocol;
        long long session_expiry; /* seconds, SESSION_EXPIRY_NEVER, or -1: not set (see
                                     config_session_expiry) */
        unsigned receive_maximum, topic_alias_maximum;
        size_t maximum_packet_size; /* 0: MQTT's own limit, not announced */
        bool topic_aliases, request_response_information;
    } broker;
    struct {
        char *topic, *message;
        unsigned qos;
        bool retain;
        unsigned delay, message_expiry; /* MQTT 5, seconds */
        char *content_type;             /* MQTT 5 */
    } will;
    struct {
        bool enabled, verify;
        char *ca_file, *ca_path, *cert_file, *key_file, *server_name, *alpn;
        char *pkcs11_module, *pin_file; /* a key_file that is a PKCS#11 URI: its token's */
        unsigned min_version;           /* 12 or 13 */
    } tls;
    struct {
        char *socket, *group;
        mode_t mode;
        unsigned max_clients;
        size_t max_line, client_buffer;
    } ipc;
    struct {
        size_t max_messages, max_bytes;
        char *spool_dir;
        enum fsync_mode fsync;
    } queue;
    struct {
        enum log_level level;
    } log;
    struct {
        char *response_prefix; /* where request replies arrive; NULL/"": see daemon/rpc.c */
    } rpc;
    struct {
        unsigned max;                   /* named sessions held at once */
        unsigned max_per_uid;           /* of those, made by one uid (0: no limit but max) */
        size_t max_messages, max_bytes; /* kept for one session */
        unsigned default_expiry;        /* seconds */
    } sessions;
    struct {
        char *textfile;    /* OpenMetrics written there for node_exporter; NULL/"": none */
        unsigned interval; /* seconds */
    } metrics;
    struct {
        char *mount;     /* a pattern (%h, %c, %%); NULL/"": no mount point (lib/mqtt/mount.h) */
        char *unmounted; /* comma-separated filters passed through unchanged */
    } topics;
    Acl acl;
} Config;

/* Fill `cfg` with the defaults. */
int config_init(Config *cfg);
void config_free(Config *cfg);

/* Parse INI text over the values already in `cfg`. On error returns -EINVAL and writes
 * "FILENAME:LINE: message" to err; `cfg` may then be partly changed (parse into a scratch
 * copy to keep a running configuration). */
int config_parse(Config *cfg, const char *text, const char *filename, char *err, size_t errlen);

/* One "host[:port]" or "[v6addr]:port" of n bytes into *ret (host allocated; port 0 when
 * not given). -EINVAL, -ENOMEM. */
int config_parse_addr(const char *s, size_t n, BrokerAddr *ret);
/* Set broker hosts from "host[:port], ..." (the -b option goes through here too). */
int config_set_hosts(Config *cfg, const char *list, char *err, size_t errlen);

/* Checks across keys, after all sources are applied (e.g. reconnect_min <= reconnect_max). */
int config_check(const Config *cfg, char *err, size_t errlen);

/* The Session Expiry Interval to ask for: as set, else "never" for a persistent session
 * (clean_session = false) and 0 for a clean one. */
uint32_t config_session_expiry(const Config *cfg);
/* A line about a default the configuration implies that its reader may not expect, for
 * --check-config ("" when none). */
void config_notes(const Config *cfg, char *out, size_t n);

/* When a changed key takes effect at reload: at once, with a new broker link, or at the next
 * start. ([acl] applies at once: it is re-checked on every client.) */
enum config_apply { CONFIG_APPLY_NOW, CONFIG_APPLY_LINK, CONFIG_APPLY_START };

/* What going from configuration a to b changes. */
typedef struct ConfigDiff {
    unsigned changed;   /* keys whose values differ */
    bool reconnect;     /* one of them needs a new broker link */
    char at_start[160]; /* "ipc.socket, queue.fsync": changed keys that wait for the next start */
} ConfigDiff;

/* Compare every key of a and b (the broker password is the caller's to compare: it may come
 * from a file whose path did not change). */
void config_diff(const Config *a, const Config *b, ConfigDiff *out);

const char *log_level_name(enum log_level l);
int log_level_parse(const char *s, enum log_level *ret);
