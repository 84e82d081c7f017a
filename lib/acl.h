/* SPDX-License-Identifier: MIT */
/*
 * Access control by the kernel's word on who a local peer is (SO_PEERCRED): which topics it
 * may publish to, which filters it may subscribe to, and whether it may use admin ops.
 *
 * Rules come from [acl] (see mqttbridged.conf(5)):
 *
 *     allow user alice = publish apps/%u/#
 *     allow group sensors = subscribe sensors/#, commands/%u/#
 *     deny uid 1002 = pubsub secret/#
 *     allow all = subscribe public/#
 *     admin = user:alice, group:wheel
 *
 * A deny rule that matches wins; otherwise an allow rule must match. With no allow/deny rule
 * at all, every peer may publish and subscribe (the socket's mode and group are the first
 * gate). %u stands for the peer's user name. A subscription is allowed only when the rule's
 * filter covers every topic the requested filter can match.
 *
 * Rules fail closed. When %u cannot be filled in (the uid has no name, or the name holds '/',
 * '+' or '#', or the result is not a valid filter), an allow rule's filter applies to nothing
 * and a deny rule's filter denies what it would deny for any name: each level holding %u
 * becomes '+' (and, for a name with '/', also as many '+' levels as the name has, so the
 * name's own topics are denied too). Such a '+' in the first level also matches '$' topics,
 * since a name may start with '$'. When a peer's supplementary groups cannot be read, rules
 * by group see only its primary group, and a deny rule by group that this leaves undecided
 * makes acl_view_build refuse the peer.
 *
 * Names are resolved to ids by the daemon (acl_resolve_cb) when the configuration is loaded;
 * evaluation here is pure.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

#include "buf.h"

enum acl_subject { ACL_ALL, ACL_USER, ACL_GROUP, ACL_UID, ACL_GID };
enum { ACL_PUBLISH = 1, ACL_SUBSCRIBE = 2 };

typedef struct AclRule {
    bool deny;
    enum acl_subject subject;
    char *name;    /* user or group name as written (USER, GROUP), else NULL */
    unsigned id;   /* uid or gid (resolved from name by the daemon) */
    bool resolved; /* the name exists on this system */
    unsigned actions;
    char **filters;
    size_t n_filters;
    char *text; /* the rule as written, for messages */
} AclRule;

typedef struct AclAdmin {
    enum acl_subject subject;
    char *name;
    unsigned id;
    bool resolved;
} AclAdmin;

typedef struct Acl {
    AclRule *rules;
    size_t n_rules;
    AclAdmin *admins;
    size_t n_admins;
    unsigned max_connections_per_uid;   /* 0 = no limit */
    unsigned max_subscriptions_per_uid; /* 0 = no limit */
} Acl;

/* Who is asking. */
typedef struct AclPeer {
    uid_t uid;
    const char *user;  /* name of uid, or NULL */
    const gid_t *gids; /* primary and supplementary groups */
    size_t n_gids;
    bool groups_partial; /* the supplementary groups could not be read: gids is incomplete */
} AclPeer;

void acl_free(Acl *acl);
/* Parse one [acl] line (`key = value`); -EINVAL with a message in err. */
int acl_parse_line(Acl *acl, const char *key, const char *value, char *err, size_t errlen);

/* The rules that apply to `peer`, with %u substituted: what a connection caches. */
typedef struct AclEntry {
    const AclRule *rule;
    bool deny;
    unsigned actions;
    char *filter;
    bool any_name; /* a deny whose first level stood for %u: it matches '$' topics too */
} AclEntry;

typedef struct AclView {
    AclEntry *entries;
    size_t n;
    bool open; /* no allow/deny rules: everything allowed */
    bool admin;
} AclView;

/* 0; -ENOMEM; or -EACCES when peer->groups_partial leaves a deny rule by group undecided
 * (the peer must be refused: it may be in that group). */
int acl_view_build(const Acl *acl, const AclPeer *peer, bool default_admin, AclView *ret);
void acl_view_free(AclView *v);

/* Whether `action` (ACL_PUBLISH on a topic, ACL_SUBSCRIBE on a filter) is allowed. When not,
 * `why` says which rule denied it, or that none allowed it. */
bool acl_allows(const AclView *v, unsigned action, View topic_or_filter, char *why, size_t n);

/* Whether every topic matching filter `b` also matches filter `a`. */
bool acl_filter_covers(View a, View b);
