/* SPDX-License-Identifier: MIT */
/*
 * Configuration as the daemon uses it: the file and the command line made into one checked
 * Config (with the password read and the TLS context loaded), and reload: what changes,
 * applied in order (limits, access rules, then the broker link when its settings changed).
 */
#pragma once

#include "daemon.h"
#include "tls.h"

/* A complete configuration, not yet in use. */
typedef struct Loaded {
    Config cfg;
    char *password;  /* resolved from password or password_file, NULL when none */
    TlsContext *tls; /* [tls] loaded, NULL when off */
} Loaded;

/* Read d->config_path (absent is fine unless explicit_path) with d's overrides. 0, or -errno
 * with the reason in err; nothing to free on failure. */
int config_load(const Daemon *d, Loaded *out, bool explicit_path, char *err, size_t errlen);
/* The client id to use: broker.client_id, else "mqttbridge-HOST-RANDOM". */
char *make_client_id(const Config *cfg);
/* Load the file again and apply it (SIGHUP, the reload op). On failure the running
 * configuration stays and err says why. */
int daemon_reload(Daemon *d, char *err, size_t errlen);
