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

#include "daemon.h"
#include "log.h"

#define MAX_GROUPS 256

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
    if (r == 0 && cfg->tls.enabled) {
        r = check_secret(cfg->tls.key_file, "tls.key_file", err, errlen);
    }
    return r;
}

static int build_view(Client *c)
{
    gid_t gids[MAX_GROUPS];
    socklen_t len = sizeof(gids) - sizeof(gid_t);
    size_t n = 0;
    gids[n++] = c->gid;
    /* Supplementary groups of the peer process, as the kernel saw them at connect. */
    if (getsockopt(c->fd, SOL_SOCKET, SO_PEERGROUPS, gids + 1, &len) == 0) {
        n += len / sizeof(gid_t);
    }
    AclPeer peer = {.uid = c->uid, .user = c->user, .gids = gids, .n_gids = n};
    bool default_admin = c->uid == 0 || c->uid == geteuid();
    AclView v;
    int r = acl_view_build(&c->d->cfg.acl, &peer, default_admin, &v);
    if (r == 0) {
        acl_view_free(&c->acl);
        c->acl = v;
    }
    return r;
}

int access_client_init(Client *c, const struct ucred *cred)
{
    c->pid = cred->pid;
    c->uid = cred->uid;
    c->gid = cred->gid;
    struct passwd pw, *res = NULL;
    char buf[1024];
    if (getpwuid_r(c->uid, &pw, buf, sizeof(buf), &res) == 0 && res) {
        c->user = strdup(res->pw_name);
    }
    return build_view(c);
}

static size_t count_uid(Daemon *d, uid_t uid, bool subscriptions)
{
    size_t n = 0;
    for (DList *l = d->clients.next; l != &d->clients; l = l->next) {
        Client *c = container_of(l, Client, link);
        if (c->uid == uid) {
            n += subscriptions ? c->n_subs : 1;
        }
    }
    return n;
}

bool access_uid_below_limit(Daemon *d, uid_t uid, bool subscriptions, char *why, size_t n)
{
    unsigned max =
        subscriptions ? d->cfg.acl.max_subscriptions_per_uid : d->cfg.acl.max_connections_per_uid;
    if (max && count_uid(d, uid, subscriptions) >= max) {
        const char *what = subscriptions ? "subscriptions" : "connections";
        snprintf(why, n, "too many %s for uid %u ([acl] max_%s_per_uid = %u)", what, (unsigned)uid,
                 what, max);
        return false;
    }
    return true;
}

void access_reload(Daemon *d)
{
    for (DList *l = d->clients.next; l != &d->clients; l = l->next) {
        Client *c = container_of(l, Client, link);
        if (build_view(c) < 0) {
            client_close(c, "out of memory rebuilding its access rules");
            continue;
        }
        /* Forbidden data must stop flowing at once, not at the next subscribe. */
        for (size_t i = 0; i < c->n_subs;) {
            char why[300];
            ClientSub *s = c->subs[i];
            if (acl_allows(&c->acl, ACL_SUBSCRIBE, VIEW(s->filter, s->len), why, sizeof(why))) {
                i++;
                continue;
            }
            log_info("client %llu (uid %u) loses %s after reload: %s",
                     (unsigned long long)c->serial, (unsigned)c->uid, s->filter, why);
            json_t *ev = json_pack("{s:s, s:s, s:s}", "event", "unsubscribed", "filter", s->filter,
                                   "reason", why);
            Buf b = {0};
            if (write_json_line(&b, ev) == 0) {
                client_send(c, buf_view(&b));
            }
            buf_free(&b);
            ops_drop_subscription(c, i);
        }
    }
}
