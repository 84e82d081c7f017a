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

/* Where the module is: beside the executable when it is there (a build tree, a relocated
 * install), else where the package installs it. */
static void module_path(char *path, size_t n)
{
    char exe[PATH_MAX];
    ssize_t len = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
    char *slash = len > 0 ? memrchr(exe, '/', (size_t)len) : NULL;
    if (slash) {
        *slash = '\0';
        snprintf(path, n, "%s/" TLS_MODULE_FILE, exe);
        if (access(path, F_OK) == 0) {
            return;
        }
    }
    snprintf(path, n, "%s/" TLS_MODULE_FILE, MQTTBRIDGE_MODULEDIR);
}

static const TlsModule *load(char *err, size_t errlen)
{
    if (mod) {
        return mod;
    }
    char path[PATH_MAX + sizeof(TLS_MODULE_FILE)];
    module_path(path, sizeof(path));
    void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!h) {
        snprintf(err, errlen, "TLS: cannot load the TLS module: %s", dlerror());
        return NULL;
    }
    const TlsModule *m = dlsym(h, TLS_MODULE_SYMBOL);
    if (!m || m->size != sizeof(*m) || strcmp(m->version, MQTTBRIDGE_VERSION) != 0) {
        snprintf(err, errlen, "TLS: %s is not the module of mqttbridged %s (it says %s)", path,
                 MQTTBRIDGE_VERSION, m ? m->version : "nothing");
        (void)dlclose(h); /* nothing of it was used */
        return NULL;
    }
    mod = m;
    return mod;
}

int tls_context_new(const Config *cfg, TlsContext **ret, char *err, size_t errlen)
{
    *ret = NULL;
    if (!cfg->tls.enabled) {
        return 0;
    }
    const TlsModule *m = load(err, errlen);
    return m ? m->context_new(cfg, ret, err, errlen) : -ENOENT;
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
