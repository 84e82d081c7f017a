/* SPDX-License-Identifier: MIT */
/* Configuration loading and reload: see reload.h. */
#include "reload.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <unistd.h>

#include "access.h"
#include "log.h"
#include "notify.h"
#include "metrics.h"
#include "sessions.h"

#define MAX_CONFIG_FILE (1 << 20)

/* Read a whole small file. */
static int read_file(const char *path, char **ret)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        return -errno;
    }
    Buf b = {.max = MAX_CONFIG_FILE};
    int r = 0;
    for (;;) {
        if ((r = buf_reserve(&b, 4096)) < 0) {
            break;
        }
        ssize_t n = read(fd, b.data + b.len, b.cap - b.len - 1);
        if (n < 0) {
            r = errno == EINTR ? 0 : -errno;
            if (r) {
                break;
            }
            continue;
        }
        if (n == 0) {
            break;
        }
        b.len += (size_t)n;
    }
    close(fd);
    if (r < 0) {
        buf_free(&b);
        return r;
    }
    if (buf_reserve(&b, 1) < 0) {
        buf_free(&b);
        return -ENOMEM;
    }
    b.data[b.len] = 0;
    *ret = (char *)b.data;
    return 0;
}

/* The first line of the password file, without its newline. */
static int read_password(const char *path, char **ret, char *err, size_t errlen)
{
    char *text;
    int r = read_file(path, &text);
    if (r < 0) {
        snprintf(err, errlen, "cannot read broker.password_file %s: %s", path, strerror(-r));
        return r;
    }
    text[strcspn(text, "\r\n")] = 0;
    if (strlen(text) > 65535) {
        snprintf(err, errlen,
                 "broker.password_file %s: the password is %zu bytes; MQTT carries "
                 "at most 65535",
                 path, strlen(text));
        free(text);
        return -EINVAL;
    }
    *ret = text;
    return 0;
}

/* Build a complete configuration from the file and the command line. */
int config_load(const Daemon *d, Loaded *out, bool explicit_path, char *err, size_t errlen)
{
    int r = config_init(&out->cfg);
    out->password = NULL;
    out->tls = NULL;
    if (r < 0) {
        snprintf(err, errlen, "out of memory");
        return r;
    }
    char *text = NULL;
    r = read_file(d->config_path, &text);
    if (r == -ENOENT && !explicit_path) {
        log_info("no %s: using the defaults", d->config_path);
    } else if (r < 0) {
        snprintf(err, errlen, "cannot read %s: %s", d->config_path, strerror(-r));
        goto fail;
    } else {
        r = config_parse(&out->cfg, text, d->config_path, err, errlen);
        free(text);
        if (r < 0) {
            goto fail;
        }
    }
    if (d->socket_override) {
        free(out->cfg.ipc.socket);
        out->cfg.ipc.socket = strdup(d->socket_override);
    }
    if (d->broker_override &&
        (r = config_set_hosts(&out->cfg, d->broker_override, err, errlen)) < 0) {
        goto fail;
    }
    if (d->verbosity) {
        int level = LOG_LEVEL_INFO + d->verbosity;
        out->cfg.log.level = level > LOG_LEVEL_PACKET ? LOG_LEVEL_PACKET : (enum log_level)level;
    }
    if ((r = config_check(&out->cfg, err, errlen)) < 0 ||
        (r = access_check_secrets(&out->cfg, err, errlen)) < 0 ||
        (r = access_resolve(&out->cfg, err, errlen)) < 0) {
        goto fail;
    }
    const struct BrokerConfig *b = &out->cfg.broker;
    if (b->password_file && *b->password_file) {
        if ((r = read_password(b->password_file, &out->password, err, errlen)) < 0) {
            goto fail;
        }
    } else if (b->password && *b->password) {
        out->password = strdup(b->password);
    }
    /* Last: the CA store and the client key are read once here, not at every connect. */
    if ((r = tls_context_new(&out->cfg, &out->tls, err, errlen)) < 0) {
        free(out->password);
        goto fail;
    }
    return 0;
fail:
    config_free(&out->cfg);
    return r ? r : -EINVAL;
}

static bool str_eq(const char *a, const char *b)
{
    return strcmp(a ? a : "", b ? b : "") == 0;
}

/* "mqttbridge-HOST-RANDOM": stable for the life of the process. */
char *make_client_id(const Config *cfg)
{
    const char *given = cfg->broker.client_id;
    if (given && strlen(given) >= 2) {
        return strdup(given);
    }
    char host[64] = "", clean[24];
    if (gethostname(host, sizeof(host) - 1) < 0) {
        snprintf(host, sizeof(host), "host");
    }
    size_t n = 0;
    for (const char *p = host; *p && n < sizeof(clean) - 1; p++) {
        if ((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9')) {
            clean[n++] = *p;
        }
    }
    clean[n] = 0;
    uint32_t rnd = 0;
    if (getrandom(&rnd, sizeof(rnd), GRND_NONBLOCK) != sizeof(rnd)) {
        rnd = (uint32_t)now_ms() ^ (uint32_t)getpid();
    }
    char id[64];
    snprintf(id, sizeof(id), "mqttbridge-%s-%08x", clean, rnd);
    return strdup(id);
}

int daemon_reload(Daemon *d, char *err, size_t errlen)
{
    Loaded n;
    notify_reloading();
    int r = config_load(d, &n, true, err, errlen);
    if (r < 0) {
        log_error("reload: %s; keeping the running configuration", err);
        notify_ready();
        return r;
    }
    ConfigDiff diff;
    config_diff(&d->cfg, &n.cfg, &diff);
    if (diff.at_start[0]) {
        log_warning("reload: %s changed; that takes effect at the next start", diff.at_start);
    }
    bool reconnect = diff.reconnect || !str_eq(d->password, n.password);
    char *old_client_id = d->cfg.broker.client_id ? strdup(d->cfg.broker.client_id) : NULL;
    config_free(&d->cfg);
    d->cfg = n.cfg; /* in place: the server and the broker keep pointing at d->cfg */
    free(d->password);
    d->password = n.password;
    /* A generated id stays for the life of the process; a configured one follows the file. */
    char *id = str_eq(old_client_id, d->cfg.broker.client_id) ? NULL : make_client_id(&d->cfg);
    if (id) { /* out of memory: the old id stays */
        free(d->client_id);
        d->client_id = id;
    }
    free(old_client_id);
    TlsContext *old_tls = d->tls;
    d->tls = n.tls;
    if (broker_configure(&d->broker, &d->cfg, d->tls, d->client_id, d->password) < 0) {
        log_error("reload: out of memory applying the broker settings; the link keeps the "
                  "previous ones until the next reload");
    }
    tls_context_unref(old_tls); /* a connection made with it keeps it until it closes */
    log_set_level(d->cfg.log.level);
    server_limits_changed(&d->server);
    access_reload(d);
    sessions_reload(d);
    metrics_reload(d);
    log_info("configuration reloaded from %s%s", d->config_path,
             reconnect ? "; reconnecting to apply the broker settings" : "");
    if (reconnect) {
        broker_reconnect(&d->broker);
    }
    notify_ready();
    return 0;
}
