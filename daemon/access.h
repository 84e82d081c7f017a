/* SPDX-License-Identifier: MIT */
/*
 * Who may do what: the kernel's word on each peer (SO_PEERCRED, SO_PEERGROUPS, its user name
 * looked up off the loop) turned into the [acl] view a client keeps (lib/acl.c decides),
 * per-uid connection limits, re-checks at reload, and the check that secret files are not
 * readable by others. See docs/security.md.
 */
#pragma once

#include "daemon.h"

/* User and group names in [acl] become ids, once per configuration load. */
int access_resolve(Config *cfg, char *err, size_t errlen);
/* Refuse secret files (password, TLS key) that others than root and us can read. */
int access_check_secrets(const Config *cfg, char *err, size_t errlen);
/* A new peer: 0 admitted; 1 admission ends later (conn_admit or conn_refuse, once its user
 * name is known); <0 refused with a code and words. */
int access_admit(Client *c, enum ipc_error *code, char *why, size_t n);
/* c is closed: no longer waiting for a name, no longer counted against its uid's limit. */
void access_client_gone(Client *c);
/* After a reload: every admitted client's view rebuilt, subscriptions no longer allowed
 * dropped (with an event), clients that can no longer be placed closed. */
void access_reload(Daemon *d);

/* Drop each of c's subscriptions the [acl] rules no longer allow (a named session resumed
 * after a rule changed), telling c. false when c was closed on the way. */
bool access_recheck_subs(Client *c);
