/* SPDX-License-Identifier: MIT */
/* tls.h's API over the TLS module, loaded on first use: see tls_module.h. */
#include "tls_module.h"

#include <assert.h>
#include <dlfcn.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static const TlsModule *mod;

/* Where the module is: where the package installs it, except for a daemon run from outside
 * the installed sbindir (a build tree) with the module beside it. An installed daemon never
 * loads code from its own directory. */
static void module_path(char *path, size_t n)
{
    char exe[PATH_MAX];
    ssize_t len = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
    char *slash = len > 0 ? memrchr(exe, '/', (size_t)len) : NULL;
    if (slash) {
        *slash = '\0';
        snprintf(path, n, "%s/" TLS_MODULE_FILE, exe);
        if (strcmp(exe, MQTTBRIDGE_SBINDIR) != 0 && access(path, F_OK) == 0) {
            return;
        }
    }
    snprintf(path, n, "%s/" TLS_MODULE_FILE, MQTTBRIDGE_MODULEDIR);
}

/* 0 and `mod` set, or -ENOENT (no module) / -ENOEXEC (not this build's) with err. */
static int load(char *err, size_t errlen)
{
    if (mod) {
        return 0;
    }
    char path[PATH_MAX + sizeof(TLS_MODULE_FILE)];
    module_path(path, sizeof(path));
    void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!h) {
        snprintf(err, errlen, "TLS: cannot load the TLS module: %s", dlerror());
        return -ENOENT;
    }
    const TlsModule *m = dlsym(h, TLS_MODULE_SYMBOL);
    if (!m || m->size != sizeof(*m) || m->config_size != sizeof(Config) ||
        strcmp(m->version, MQTTBRIDGE_VERSION) != 0) {
        snprintf(err, errlen,
                 "TLS: %s is not the TLS module of this mqttbridged %s (%s): install the two "
                 "from one build",
                 path, MQTTBRIDGE_VERSION,
                 !m                                       ? "it has no table"
                 : strcmp(m->version, MQTTBRIDGE_VERSION) ? "it is of another release"
                                                          : "built from other sources");
        (void)dlclose(h); /* nothing of it was used */
        return -ENOEXEC;
    }
    mod = m;
    return 0;
}

int tls_context_new(const Config *cfg, TlsContext **ret, char *err, size_t errlen)
{
    *ret = NULL;
    if (!cfg->tls.enabled) {
        return 0;
    }
    int r = load(err, errlen);
    return r < 0 ? r : mod->context_new(cfg, ret, err, errlen);
}

/* A context or connection exists only once the module is loaded. */

void tls_context_unref(TlsContext *c)
{
    if (c) {
        assert(mod);
        mod->context_unref(c);
    }
}

int tls_new(TlsContext *ctx, const Config *cfg, int fd, const char *host, TlsConn **ret, char *err,
            size_t errlen)
{
    assert(mod && ctx);
    return mod->conn_new(ctx, cfg, fd, host, ret, err, errlen);
}

void tls_free(TlsConn *t)
{
    if (t) {
        assert(mod);
        mod->conn_free(t);
    }
}

int tls_handshake(TlsConn *t, int *want, char *err, size_t errlen)
{
    assert(mod && t);
    return mod->handshake(t, want, err, errlen);
}

long tls_read(TlsConn *t, void *buf, size_t n, int *want)
{
    assert(mod && t);
    return mod->read(t, buf, n, want);
}

long tls_write(TlsConn *t, const void *buf, size_t n, int *want)
{
    assert(mod && t);
    return mod->write(t, buf, n, want);
}

const char *tls_last_error(TlsConn *t)
{
    assert(mod && t);
    return mod->last_error(t);
}

bool tls_pending(TlsConn *t)
{
    assert(mod && t);
    return mod->pending(t);
}

bool tls_resumed(TlsConn *t)
{
    assert(mod && t);
    return mod->resumed(t);
}

const char *tls_version(TlsConn *t)
{
    assert(mod && t);
    return mod->version_of(t);
}

const char *tls_cipher(TlsConn *t)
{
    assert(mod && t);
    return mod->cipher(t);
}
