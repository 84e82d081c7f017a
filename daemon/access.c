/* SPDX-License-Identifier: MIT */
/*
 * Who may do what: the kernel's word on each peer (SO_PEERCRED, SO_PEERGROUPS) turned into
 * the [acl] view a connection keeps (lib/acl.c decides), per-uid limits, and the check that
 * secret files are not readable by others. See docs/security.md.
 */
#include <errno.h>
#include <grp.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "access.h"
#include "log.h"
#include "pkcs11_uri.h"
#include "subs.h"

/* How long a new peer may wait for its user name before it is admitted without one
 * (seconds). */
#define ADMISSION_WAIT 5.0
/* NGROUPS_MAX of Linux: no peer has more supplementary groups. */
#define MAX_PEER_GROUPS 65536

/* A user or group name becomes an id; a missing one makes its entry match nobody. */
static void resolve_name(enum acl_subject kind, const char *name, unsigned *id, bool *resolved,
                         const char *what)
{
    if (kind == ACL_USER) {
        struct passwd *pw = getpwnam(name);
        *resolved = pw != NULL;
        *id = pw ? pw->pw_uid : 0;
    } else if (kind == ACL_GROUP) {
        struct group *gr = getgrnam(name);
        *resolved = gr != NULL;
        *id = gr ? gr->gr_gid : 0;
    } else {
        return;
    }
    if (!*resolved) {
        log_warning("[acl]: there is no %s named '%s' here: %s matches nobody",
                    kind == ACL_USER ? "user" : "group", name, what);
    }
}

/* User and group names in [acl] become ids, once per configuration load. */
int access_resolve(Config *cfg, char *err, size_t errlen)
{
    (void)err;
    (void)errlen;
    Acl *acl = &cfg->acl;
    for (size_t i = 0; i < acl->n_rules; i++) {
        AclRule *r = &acl->rules[i];
        resolve_name(r->subject, r->name, &r->id, &r->resolved, r->text);
    }
    for (size_t i = 0; i < acl->n_admins; i++) {
        AclAdmin *a = &acl->admins[i];
        resolve_name(a->subject, a->name, &a->id, &a->resolved, "that admin entry");
    }
    return 0;
}

/* A secret must not be readable by anyone but its owner (root or us) and root's group. */
static int check_secret(const char *path, const char *what, char *err, size_t errlen)
{
    struct stat st;
    if (!path || !*path) {
        return 0;
    }
    if (stat(path, &st) < 0) {
        snprintf(err, errlen, "%s %s: %s", what, path, strerror(errno));
        return -errno;
    }
    bool owner_ok = st.st_uid == 0 || st.st_uid == geteuid();
    bool group_ok = !(st.st_mode & S_IRGRP) || st.st_gid == 0 || st.st_gid == getegid();
    if (!owner_ok || !group_ok || (st.st_mode & S_IROTH)) {
        snprintf(err, errlen,
                 "refusing to use %s %s: it is readable by others than root and the daemon's "
                 "user (mode %04o, owner %u, group %u); chmod 600 it",
                 what, path, (unsigned)(st.st_mode & 07777), (unsigned)st.st_uid,
                 (unsigned)st.st_gid);
        return -EPERM;
    }
    return 0;
}

int access_check_secrets(const Config *cfg, char *err, size_t errlen)
{
    int r = check_secret(cfg->broker.password_file, "broker.password_file", err, errlen);
    if (r == 0 && cfg->tls.enabled && !pkcs11_uri_is(cfg->tls.key_file)) {
        r = check_secret(cfg->tls.key_file, "tls.key_file", err, errlen);
    }
    if (r == 0 && cfg->tls.enabled) {
        r = check_secret(cfg->tls.pin_file, "tls.pin_file", err, errlen);
    }
    return r;
}

/* The peer's groups as the kernel saw them at connect: its primary group, then every
 * supplementary group (SO_PEERGROUPS says how much room they need when it is too little). */
static int peer_groups(const Client *c, gid_t **ret, size_t *ret_n)
{
    size_t cap = 64; /* supplementary groups; most peers have a few */
    for (int tries = 0; tries < 3; tries++) {
        gid_t *g = malloc((cap + 1) * sizeof(*g));
        if (!g) {
            return -ENOMEM;
        }
        g[0] = c->conn.gid;
        socklen_t len = (socklen_t)(cap * sizeof(*g));
        if (getsockopt(c->conn.fd, SOL_SOCKET, SO_PEERGROUPS, g + 1, &len) == 0) {
            *ret = g;
            *ret_n = 1 + len / sizeof(*g);
            return 0;
        }
        int e = errno;
        free(g);
        size_t need = len / sizeof(*g);
        if (e != ERANGE || need <= cap || need > MAX_PEER_GROUPS) {
            return e == ERANGE ? -E2BIG : -e;
        }
        cap = need;
    }
    return -ERANGE; /* the kernel keeps a peer's groups fixed: not reached */
}

/* c->acl from the current [acl]. -EACCES (logged) when the peer must be refused: its
 * supplementary groups are unknown and a deny rule by group may be meant for it. */
static int build_view(Client *c)
{
    gid_t *gids = NULL, primary = c->conn.gid;
    size_t n = 0;
    int g = peer_groups(c, &gids, &n);
    if (g == -ENOMEM) {
        return g;
    }
    if (g < 0) {
        log_warning("client %llu (pid %d, uid %u): cannot read its supplementary groups "
                    "(SO_PEERGROUPS: %s); [acl] rules by group see only its primary group %u",
                    (unsigned long long)c->conn.serial, (int)c->conn.pid, (unsigned)c->conn.uid,
                    strerror(-g), (unsigned)c->conn.gid);
    }
    AclPeer peer = {.uid = c->conn.uid,
                    .user = c->user,
                    .gids = g < 0 ? &primary : gids,
                    .n_gids = g < 0 ? 1 : n,
                    .groups_partial = g < 0};
    bool default_admin = c->conn.uid == 0 || c->conn.uid == geteuid();
    AclView v;
    int r = acl_view_build(&c->d->cfg.acl, &peer, default_admin, &v);
    free(gids);
    if (r == -EACCES) {
        log_warning("refusing client %llu (pid %d, uid %u): its supplementary groups are "
                    "unknown and [acl] has a deny rule by group that may be meant for it",
                    (unsigned long long)c->conn.serial, (int)c->conn.pid, (unsigned)c->conn.uid);
    }
    if (r < 0) {
        return r;
    }
    acl_view_free(&c->acl);
    c->acl = v;
    return 0;
}

/* Whether uid may have one more connection under [acl] max_connections_per_uid; when not,
 * `why` says so. */
static bool below_limit(Daemon *d, uid_t uid, char *why, size_t n)
{
    unsigned max = d->cfg.acl.max_connections_per_uid;
    if (max && hashmap_count(&d->uid_conns, uid_key(&uid)) >= max) {
        snprintf(why, n, "too many connections for uid %u ([acl] max_connections_per_uid = %u)",
                 (unsigned)uid, max);
        return false;
    }
    return true;
}

/* With the peer's name known: its view built. 0, or <0 with the refusal's code and words. */
static int finish_admission(Client *c, const char *name, enum ipc_error *code, char *why, size_t n)
{
    int r = -ENOMEM;
    if ((!name || (c->user = strdup(name))) && (r = build_view(c)) == 0) {
        return 0;
    }
    *code = r == -ENOMEM ? IPC_INTERNAL : IPC_FORBIDDEN;
    snprintf(why, n, "%s",
             r == -ENOMEM ? "out of memory"
                          : "who the peer is could not be established ([acl] fails closed)");
    return r;
}

/* The name arrived (names.c): admission ends. */
static void on_name(NameWait *w, const char *name)
{
    Client *c = container_of(w, Client, naming);
    ev_timer_stop(c->d->loop, &c->admission);
    enum ipc_error code;
    char why[160];
    if (finish_admission(c, name, &code, why, sizeof(why)) < 0) {
        conn_refuse(&c->conn, code, why);
    } else {
        conn_admit(&c->conn);
    }
}

/* The name did not come in time (a stuck NSS lookup): admitted as a peer without a name,
 * which [acl] %u rules fail closed on. */
static void on_admission_timeout(struct ev_loop *loop, ev_timer *t, int revents)
{
    Client *c = container_of(t, Client, admission);
    (void)loop;
    (void)revents;
    names_cancel(&c->naming);
    log_warning("client %llu (pid %d, uid %u): its user name did not come within %.0f s; "
                "[acl] %%u rules treat it as having none",
                (unsigned long long)c->conn.serial, (int)c->conn.pid, (unsigned)c->conn.uid,
                ADMISSION_WAIT);
    on_name(&c->naming, NULL);
}

int access_admit(Client *c, enum ipc_error *code, char *why, size_t n)
{
    Daemon *d = c->d;
    const Conn *k = &c->conn;
    *code = IPC_FORBIDDEN;
    /* (uid_t)-1 is no one's uid: what is left when SO_PEERCRED could not be read. */
    if (k->uid == (uid_t)-1 || k->gid == (gid_t)-1) {
        snprintf(why, n, "the kernel did not say who the peer is ([acl] fails closed)");
        return -EACCES;
    }
    if (!below_limit(d, k->uid, why, n)) {
        return -EPERM;
    }
    /* Out of memory: uncounted, so the limit is a little lenient. */
    c->counted = hashmap_count_add(&d->uid_conns, uid_key(&k->uid), +1) == 0;
    const char *name = NULL;
    int r = names_lookup(&d->names, k->uid, &name, &c->naming, on_name);
    if (r == 1) { /* on_name ends it, or the deadline */
        ev_timer_init(&c->admission, on_admission_timeout, ADMISSION_WAIT, 0.0);
        ev_timer_start(d->loop, &c->admission);
        return 1;
    }
    if (r == -ENOMEM) {
        *code = IPC_INTERNAL;
        snprintf(why, n, "out of memory");
        return r;
    }
    if (r < 0) { /* no thread: nameless, which %u rules fail closed on */
        log_warning("uid %u: cannot look up its user name (%s); [acl] %%u rules treat it as "
                    "having none",
                    (unsigned)k->uid, strerror(-r));
    }
    return finish_admission(c, name, code, why, n);
}

void access_client_gone(Client *c)
{
    names_cancel(&c->naming);
    ev_timer_stop(c->d->loop, &c->admission);
    if (c->counted) {
        (void)hashmap_count_add(&c->d->uid_conns, uid_key(&c->conn.uid), -1); /* never fails */
        c->counted = false;
    }
}

static bool still_allowed(Client *c, View filter, char *why, size_t n)
{
    return acl_allows(&c->acl, ACL_SUBSCRIBE, filter, why, n);
}

bool access_recheck_subs(Client *c)
{
    return subs_recheck(c, still_allowed);
}

/* One open client under the reloaded rules: its view rebuilt, and each subscription it may
 * no longer hold dropped at once, with an event. It may be closed on the way. */
static void reload_client(Client *c)
{
    int r = build_view(c);
    if (r < 0) {
        acl_view_free(&c->acl); /* its entries point into the configuration just freed */
        conn_close(&c->conn, r == -EACCES
                                 ? "its groups are unknown and [acl] has deny rules by group"
                                 : "out of memory rebuilding its access rules");
        return;
    }
    (void)subs_recheck(c, still_allowed); /* false: c was closed (out of memory) */
}

void access_reload(Daemon *d)
{
    /* The next link is taken before acting: reload_client may close c, which moves it to
     * d->closed. It never closes another client (dropping a subscription only queues an
     * UNSUBSCRIBE; no session event runs from here). */
    dlist_for_each_safe(l, next, &d->server.conns)
    {
        Client *c = client_at(l);
        if (c->conn.admitted) { /* one being admitted gets its view from the new rules then */
            reload_client(c);
        }
    }
}
