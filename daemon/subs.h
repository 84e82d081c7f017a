/* SPDX-License-Identifier: MIT */
/*
 * Local subscriptions, one owner: which filters each client holds (hashed per client), the
 * router behind them (lib/router.c), the broker SUBSCRIBE/UNSUBSCRIBE that serve them, their
 * retained-message barriers, and per-uid counts. The session's own list stays the broker's
 * truth; what it reports (SUBACK, a refused restore, the link going down) is reconciled here.
 */
#pragma once

#include "daemon.h"

/* One filter a client holds. */
typedef struct ClientSub {
    uint8_t qos;
    bool base64;
    uint16_t len;
    char filter[]; /* NUL-terminated */
} ClientSub;

void subs_init(Daemon *d);
void subs_free(Daemon *d);
void subs_client_init(Client *c);
/* c is closing: every subscription dropped (the broker's goes with its last holder). */
void subs_client_gone(Client *c);

/* The subscribe / unsubscribe ops (after the [acl] check): answered here, at once or when
 * the broker confirms. */
/* MQTT 5 subscription options. no_local and retain_as_published belong to the broker's
 * subscription, which all local holders of a filter share: the first holder sets them and
 * another may join only with the same. retain_handling is this holder's own: 0 the retained
 * messages at every subscribe, 1 only when the filter is new for this connection, 2 none. */
typedef struct SubOptions {
    bool no_local, retain_as_published;
    uint8_t retain_handling;
} SubOptions;

void subs_subscribe(Client *c, json_t *id, View filter, uint8_t qos, bool base64,
                    int64_t timeout_ms, const SubOptions *opts /* NULL: all 0 */);
void subs_unsubscribe(Client *c, json_t *id, View filter, int64_t timeout_ms);

size_t subs_count(const Client *c);
/* Ask the broker (again) for `filter`, which the router holds: as its record says (QoS,
 * subscription identifier, options), with or without the retained messages. `req` comes back in the
 * session's SUBSCRIBE_DONE. 0, or -errno when it cannot be asked. */
int subs_ask_broker(Daemon *d, View filter, void *req, bool retained);
/* Drop every subscription of a holder that has no client (a named session that ends): the
 * broker's go with their last holder. */
void subs_holder_clear(Daemon *d, SubHolder *h);
/* Hold `filter` again for a holder that has no client (a named session recovered from the
 * spool): in the router at once, asked of the broker (without its retained messages) when it
 * is new there, under `subid` (the MQTT 5 subscription identifier it had, so that what the
 * broker queued under it finds its holder; 0: a new one). 0, or -errno (-EEXIST: held
 * already). */
int subs_holder_restore(Daemon *d, SubHolder *h, View filter, uint8_t qos, bool base64,
                        const SubOptions *opts, uint32_t subid);
/* The holder stops holding `filter` (the broker refused it): true when it did hold it. */
bool subs_holder_forget(Daemon *d, SubHolder *h, View filter);
size_t subs_of_uid(Daemon *d, uid_t uid);

/* Drop each of c's subscriptions that `keep` refuses, telling c why (an "unsubscribed" event).
 * c may be closed on the way (out of memory); false then. */
bool subs_recheck(Client *c, bool (*keep)(Client *c, View filter, char *why, size_t n));

/* The broker granted `filter` (a request's SUBACK or a restore's): it counts as held there. */
void subs_granted(Daemon *d, View filter, uint8_t qos);
/* A link is up: what a resumed session holds stays granted; a new one holds nothing yet. */
void subs_link_up(Daemon *d, bool session_present);
/* The broker refused a subscription the session restored after a reconnect: its holders are
 * told and stop holding it. */
void subs_lost(Daemon *d, View filter, uint8_t code);
/* The link went down: no filter counts as granted until its next SUBACK. */
void subs_link_down(Daemon *d);
