/* SPDX-License-Identifier: MIT */
/*
 * The router's data structure: which local subscribers hold which topic filters.
 *
 * Matching walks a trie over topic levels ('+' and '#' are children of their own), so the
 * cost of routing a message grows with the depth of its topic and the number of matching
 * subscriptions, not with the number of subscriptions held. A subscriber whose several
 * filters match one message is returned once, with the highest QoS among them and base64 if
 * any of them asked for it.
 *
 * Per exact filter it also counts holders, which is how one broker subscription serves many
 * local subscribers: router_add reports the first holder (SUBSCRIBE needed) and a QoS above
 * what the broker was asked for (SUBSCRIBE again); router_remove reports the last one
 * (UNSUBSCRIBE needed).
 *
 * Shared subscriptions ("$share/G/F") are matched through F, but a message goes to one member
 * of each group, not to all of them. The broker sends the session one copy of a message however
 * many of its subscriptions match, shared ones included (mosquitto 2.0.11 does; MQTT 3.1.1 lets
 * a broker send a copy per subscription, and those would reach local subscribers again), and
 * the router hands that copy to every plain holder and to one member of each matching group.
 * Members take turns (round robin, in the order they joined); a member the caller says is not
 * ready (its buffer is full) is passed over for the next one that is; when none is, the one
 * whose turn it was gets it anyway (and the caller drops it there, as for any full client). A
 * subscriber is still returned at most once per message. Retained messages never go to shared
 * members (MQTT 5 says brokers send none for a new shared subscription; mosquitto 2.0.11 does).
 */
#pragma once

#include "buf.h"
#include "hashmap.h"
#include "idmap.h"

/* Embedded in whatever a subscriber is (the daemon's client); the router writes the match
 * results into it. */
typedef struct RouterTarget {
    uint64_t epoch;
    uint8_t qos;
    bool base64;
    /* router_match_copy: the target's own choice among its plain filters that match (the
     * copy it takes), 0 when it matched none. */
    uint32_t best_id;
    uint8_t best_rank;
    uint8_t kind; /* the caller's: what the target is (the router does not look) */
} RouterTarget;

typedef struct RouterNode RouterNode;
typedef struct RouterHolder RouterHolder; /* one (subscriber, filter) pair: router.c's */

/* Subscription identifiers run from 1 to this (MQTT 5's largest). */
#define ROUTER_SUBID_MAX 268435455u

typedef struct Router {
    HashMap edges;   /* (parent node, level) -> child node */
    HashMap filters; /* exact filter -> holder counts */
    IdMap subids;    /* subscription identifier -> its RouterFilter */
    RouterNode *root;
    uint64_t epoch;
    RouterTarget **matched; /* result array of router_match */
    size_t n_matched, cap_matched;
    size_t subscriptions; /* (filter, target) pairs */
    Buf key;              /* scratch for edge keys */
    Buf stack;            /* scratch for router_match's walk */
    Buf groups_scratch;   /* router_match_copy's matching groups */
    uint32_t next_subid;  /* for the next new filter; the caller may seed it (1 by default) */
    /* With a topic mount point the broker's topics are in two domains: under the mount point,
     * or passed through unchanged (filters the daemon marks `unmounted`). The caller sets the
     * domain of the message it matches next: ROUTER_ANY (every filter), ROUTER_MOUNTED or
     * ROUTER_UNMOUNTED (only filters of that kind: a local "#" does not take what came through
     * an unmounted filter, its broker subscription never covered it). */
    uint8_t match_domain;
} Router;

enum { ROUTER_ANY, ROUTER_MOUNTED, ROUTER_UNMOUNTED };

/* Per exact filter string: what one broker subscription serves. */
typedef struct RouterFilter { /* one per filter: fields ordered to keep it small */
    /* A shared subscription ("$share/G/F") keeps its members here, in the order they joined
     * (`holders` of them), rather than in the trie node; `next` is the index of the member
     * whose turn it is. The router owns these fields. */
    RouterHolder *members;
    uint32_t next;
    uint32_t holders;
    uint32_t subid; /* its MQTT 5 subscription identifier, unique among live filters */
    /* MQTT 5 options of the broker subscription (the daemon sets them). With Retain As
     * Published the broker keeps the retain flag on live messages, so one with the flag goes
     * to every holder while none is fresh (`fresh` counts those that are); while one is, it
     * is taken for a retained message of that holder's subscribe, and goes to the fresh ones
     * only. */
    uint32_t fresh;
    bool no_local, retain_as_published;
    uint8_t broker_qos; /* the highest QoS any holder asked for */
    uint8_t granted;    /* the QoS it granted */
    bool active;        /* the broker granted it (the daemon sets this on SUBACK) */
    bool was_active;    /* granted before the link went down (router_reconfirm_all) */
    bool unmounted; /* its broker subscription is not under the mount point (the daemon sets it) */
    bool shared;
} RouterFilter;

enum {
    ROUTER_FIRST = 1,   /* router_add: the filter had no holder before */
    ROUTER_UPGRADE = 2, /* router_add: a holder asks a higher QoS than the broker was asked */
    ROUTER_LAST = 4,    /* router_remove: the filter has no holder left */
};

int router_init(Router *r);
void router_free(Router *r);

/* Add or update target's subscription to `filter` (valid). Returns ROUTER_FIRST,
 * ROUTER_UPGRADE or 0, or -ENOMEM. A new holder is marked fresh: it alone receives the
 * retained messages that arrive until router_settle() (the daemon calls it when the broker
 * has answered a barrier sent after the SUBSCRIBE: see daemon/ops.c and daemon/bridge.c).
 * A new member of a shared group joins the end of the group's turn order. The router keeps a
 * pointer to `t` (the caller's) until router_remove. */
int router_add(Router *r, View filter, RouterTarget *t, uint8_t qos, bool base64);
/* Returns ROUTER_LAST or 0, or -ENOENT when the target did not hold the filter. A member
 * leaving a shared group keeps the others' turn order, and the turn where it was. */
int router_remove(Router *r, View filter, RouterTarget *t);
/* The broker link went down: no filter counts as granted until the next link says so. */
void router_unconfirm_all(Router *r);
/* The next link is up: a session the broker resumed still holds what was granted; a new one
 * holds nothing until each restore's SUBACK. */
void router_reconfirm_all(Router *r, bool session_present);
/* Whether target holds exactly this filter. */
bool router_holds(Router *r, View filter, const RouterTarget *t);
/* The exact filter's broker-side record, or NULL when nobody holds it. */
RouterFilter *router_filter(Router *r, View filter);
/* Give `filter` (held) the subscription identifier an earlier run gave it (a recovered named
 * session's), so that copies the broker queued under it meanwhile find their holders. 0, or
 * -ENOENT (not held), -EINVAL (0 or above ROUTER_SUBID_MAX), -EEXIST (another filter has
 * it: it keeps its own), -ENOMEM. */
int router_set_subid(Router *r, View filter, uint32_t subid);
/* The retained messages for target's new subscription to `filter` have all arrived. */
void router_settle(Router *r, View filter, const RouterTarget *t);
/* Whether a subscriber can take the message being matched now (its output has room). */
typedef bool (*router_ready_fn)(const RouterTarget *t, void *userdata);

/* Targets matching `topic`, each once, with their highest QoS and base64 choice written into
 * them: every plain holder of a matching filter, and one member per matching shared group,
 * the first in turn order for which `ready` says yes (`ready` NULL: all are ready). `ready`
 * is asked only about shared members, and must not call the router. A retained message goes
 * only to fresh plain holders. The array is the router's, valid until the next router call.
 * Allocates nothing once the result array has grown to the largest match. */
size_t router_match(Router *r, View topic, bool retained, router_ready_fn ready, void *userdata,
                    RouterTarget ***ret);

/* The same for one copy of a message from an MQTT 5 broker, which sends a copy per matching
 * subscription, each at that subscription's QoS and naming its identifier (`ids`). So that
 * every target still gets a message once, at the highest QoS it can: a plain holder takes the
 * copy of its own best matching filter (granted before pending, then the highest granted QoS,
 * then the lowest identifier) and no other; a shared group takes the copy naming the group
 * (the broker chose this session for it) and gives it to its member in turn, unless that
 * member takes a plain copy of the message anyway (the group has delivered). Retained
 * messages (sent for one new subscription) go to the fresh holders of the filters named.
 * Without ids: router_match.
 * Known limit: each copy is judged against the target's filters as they are when it arrives;
 * if they change between two copies of one message (an unsubscribe, a SUBACK raising another
 * filter's QoS), that target can get the message twice or not at all. */
size_t router_match_copy(Router *r, View topic, bool retained, const uint32_t *ids, size_t n_ids,
                         router_ready_fn ready, void *userdata, RouterTarget ***ret);
