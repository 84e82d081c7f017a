/* SPDX-License-Identifier: MIT */
/* Router: see router.h. */
#include "router.h"

#include <assert.h>
#include <errno.h>
#include <stddef.h>
#include <stdlib.h>

#include "mqtt/topic.h"

/* One (subscriber, filter) pair. A plain filter's holders live in the trie node the filter
 * ends at (that node stands for exactly one plain filter); a shared filter's members live in
 * its RouterFilter, in turn order, and the node lists the shared filters ending there. */
typedef struct RouterHolder {
    RouterTarget *t;
    uint8_t qos;
    bool base64;
    bool fresh; /* new: retained messages are for it (plain filters only) */
} Holder;

struct RouterNode { /* one per filter level: counts are 32 bits to keep it small */
    RouterNode *parent;
    RouterNode *plus, *hash; /* the '+' and '#' children */
    Holder *holders;         /* of the plain filter ending here */
    RouterFilter *plain;     /* the plain filter ending here, while it has holders */
    RouterFilter **groups;   /* the shared filters ending here ("$share/G/<this node>") */
    uint32_t n_children;     /* all children, wildcards included */
    uint32_t n_holders;      /* room for: see room_for() */
    uint32_t n_groups;
    uint16_t level_len;
    uint8_t level[]; /* this node's level text (for removal from `edges`) */
};

/* What router_match was asked, passed down its walk. */
typedef struct Match {
    bool retained;
    router_ready_fn ready;
    void *userdata;
    /* Restricted to the filters with these subscription identifiers (n_only > 0). */
    const uint32_t *only;
    size_t n_only;
    /* router_match_copy: groups are noted here, not picked, and targets rank their filters. */
    bool copy;
    Buf *groups;    /* RouterFilter * of the matching shared filters */
    uint8_t domain; /* Router.match_domain */
} Match;

/* Edge key: the parent's address followed by the level text, built in r->key (only
 * needed for the duration of one map call). */
static View edge_key(Router *r, const RouterNode *parent, View level)
{
    buf_clear(&r->key);
    if (buf_append(&r->key, &parent, sizeof(parent)) < 0 ||
        buf_append(&r->key, level.p, level.n) < 0) {
        return VIEW_NULL; /* matches no edge; creating one fails on it */
    }
    return buf_view(&r->key);
}

static RouterNode *node_new(RouterNode *parent, View level)
{
    RouterNode *n = calloc(1, sizeof(*n) + level.n);
    if (n) {
        n->parent = parent;
        n->level_len = (uint16_t)level.n;
        if (level.n) {
            memcpy(n->level, level.p, level.n);
        }
    }
    return n;
}

static void node_free(void *p)
{
    RouterNode *n = p;
    if (n) {
        free(n->holders);
        free(n->groups); /* the filters themselves are r->filters' */
        free(n);
    }
}

static void filter_free(void *p)
{
    RouterFilter *fc = p;
    if (fc) {
        free(fc->members);
        free(fc);
    }
}

int router_init(Router *r)
{
    *r = (Router){.next_subid = 1};
    hashmap_init(&r->edges);
    hashmap_init(&r->filters);
    idmap_init(&r->subids, offsetof(RouterFilter, subid));
    r->root = node_new(NULL, VIEW_NULL);
    return r->root ? 0 : -ENOMEM;
}

void router_free(Router *r)
{
    hashmap_free(&r->edges, node_free); /* every node but the root is one edge's value */
    hashmap_free(&r->filters, filter_free);
    idmap_free(&r->subids);
    node_free(r->root);
    free(r->matched);
    buf_free(&r->key);
    buf_free(&r->stack);
    buf_free(&r->groups_scratch);
    *r = (Router){0};
}

/* Split off the next level of `rest` (which is consumed); *last when it was the final one. */
static View next_level(View *rest, bool *last)
{
    const uint8_t *slash = memchr(rest->p, '/', rest->n);
    View level = VIEW(rest->p, slash ? (size_t)(slash - rest->p) : rest->n);
    *last = !slash;
    *rest = slash ? VIEW(slash + 1, rest->n - level.n - 1) : VIEW(rest->p + rest->n, 0);
    return level;
}

static RouterNode *child(Router *r, RouterNode *n, View level, bool create)
{
    View k = edge_key(r, n, level);
    RouterNode *c = hashmap_get(&r->edges, k);
    if (c || !create || !k.n) {
        return c;
    }
    c = node_new(n, level);
    if (!c || hashmap_put(&r->edges, k, c) < 0) {
        free(c);
        return NULL;
    }
    n->n_children++;
    if (view_eq_str(level, "+")) {
        n->plus = c;
    } else if (view_eq_str(level, "#")) {
        n->hash = c;
    }
    return c;
}

static RouterNode *find_node(Router *r, View filter, bool create)
{
    View rest = mqtt_filter_target(filter);
    RouterNode *n = r->root;
    bool last = false;
    while (n && !last) {
        n = child(r, n, next_level(&rest, &last), create);
    }
    return n;
}

/* Drop empty nodes from `n` up. */
static void prune(Router *r, RouterNode *n)
{
    while (n != r->root && n->n_holders == 0 && n->n_groups == 0 && n->n_children == 0) {
        RouterNode *p = n->parent;
        hashmap_remove(&r->edges, edge_key(r, p, VIEW(n->level, n->level_len)));
        if (p->plus == n) {
            p->plus = NULL;
        }
        if (p->hash == n) {
            p->hash = NULL;
        }
        p->n_children--;
        node_free(n);
        n = p;
    }
}

/* `t`'s holding of fc, which ends at node n. */
static Holder *find_holder(const RouterNode *n, const RouterFilter *fc, const RouterTarget *t)
{
    Holder *a = fc->shared ? fc->members : n->holders;
    size_t count = fc->shared ? fc->holders : n->n_holders;
    for (size_t i = 0; i < count; i++) {
        if (a[i].t == t) {
            return &a[i];
        }
    }
    return NULL;
}

/* Arrays that only grow at their end have room for the next power of two of their count
 * (none for 0): the count says when to grow, and nodes carry no capacity. 0, or -ENOMEM
 * (nothing changed) when *a could not make room for element n (of size `each`). */
static int room_for(void **a, uint32_t n, size_t each)
{
    if (n & (n - 1)) { /* not a power of two (nor 0): room left */
        return 0;
    }
    if (n > UINT32_MAX / 2) {
        return -ENOMEM;
    }
    void *na = realloc(*a, (n ? 2 * (size_t)n : 1) * each);
    if (!na) {
        return -ENOMEM;
    }
    *a = na;
    return 0;
}

/* A new, zeroed holder at the end of a (n entries), or NULL (nothing changed) when out of
 * memory. The caller counts it. */
static Holder *holder_append(Holder **a, uint32_t n)
{
    void *p = *a;
    if (room_for(&p, n, sizeof(Holder)) < 0) {
        return NULL;
    }
    *a = p;
    (*a)[n] = (Holder){0};
    return &(*a)[n];
}

/* The record of `filter` (ending at node n), with no holder yet; NULL when out of memory. */
static RouterFilter *filter_new(Router *r, RouterNode *n, View filter)
{
    RouterFilter *fc = calloc(1, sizeof(*fc));
    if (!fc) {
        return NULL;
    }
    fc->shared = mqtt_filter_target(filter).n != filter.n;
    do { /* the next one no live filter has (one a recovered session kept may be) */
        fc->subid = r->next_subid;
        r->next_subid = r->next_subid >= ROUTER_SUBID_MAX ? 1 : r->next_subid + 1;
    } while (idmap_get(&r->subids, fc->subid));
    void *g = n->groups;
    if (fc->shared && room_for(&g, n->n_groups, sizeof(*n->groups)) < 0) {
        free(fc);
        return NULL;
    }
    n->groups = g;
    if (idmap_put(&r->subids, fc) < 0) {
        free(fc);
        return NULL;
    }
    if (hashmap_put(&r->filters, filter, fc) < 0) {
        (void)idmap_remove(&r->subids, fc->subid); /* put just above */
        free(fc);
        return NULL;
    }
    if (fc->shared) {
        n->groups[n->n_groups++] = fc;
    } else {
        n->plain = fc;
    }
    return fc;
}

/* Forget `filter`'s record (ending at node n). */
static void filter_drop(Router *r, RouterNode *n, View filter, RouterFilter *fc)
{
    for (size_t i = 0; fc->shared && i < n->n_groups; i++) {
        if (n->groups[i] == fc) {
            n->groups[i] = n->groups[--n->n_groups];
            break;
        }
    }
    if (n->plain == fc) {
        n->plain = NULL;
    }
    hashmap_remove(&r->filters, filter);
    (void)idmap_remove(&r->subids, fc->subid);
    filter_free(fc);
}

/* A new holder of fc (ending at node n) for t, counted; NULL when out of memory. */
static Holder *holder_new(Router *r, RouterNode *n, RouterFilter *fc, RouterTarget *t)
{
    Holder *h = fc->shared ? holder_append(&fc->members, fc->holders)
                           : holder_append(&n->holders, n->n_holders);
    if (!h) {
        return NULL;
    }
    if (!fc->shared) {
        n->n_holders++;
    }
    h->t = t;
    fc->holders++;
    r->subscriptions++;
    return h;
}

int router_add(Router *r, View filter, RouterTarget *t, uint8_t qos, bool base64)
{
    RouterNode *n = find_node(r, filter, true);
    if (!n) {
        return -ENOMEM;
    }
    RouterFilter *fc = hashmap_get(&r->filters, filter);
    bool created = !fc;
    if (created && !(fc = filter_new(r, n, filter))) {
        prune(r, n);
        return -ENOMEM;
    }
    Holder *h = find_holder(n, fc, t);
    if (!h && !(h = holder_new(r, n, fc, t))) {
        if (created) {
            filter_drop(r, n, filter, fc);
        }
        prune(r, n);
        return -ENOMEM;
    }
    h->qos = qos;
    h->base64 = base64;
    fc->fresh += !h->fresh;
    h->fresh = true;
    int result = created ? ROUTER_FIRST : qos > fc->broker_qos ? ROUTER_UPGRADE : 0;
    if (created || qos > fc->broker_qos) {
        fc->broker_qos = qos;
    }
    return result;
}

/* Take member i out of a shared filter's turn order; the others keep theirs, and the turn
 * stays with whoever was due (the next member when it was i's). */
static void member_remove(RouterFilter *fc, size_t i)
{
    memmove(&fc->members[i], &fc->members[i + 1], (fc->holders - i - 1) * sizeof(Holder));
    fc->holders--;
    if (i < fc->next) {
        fc->next--;
    }
    if (fc->next >= fc->holders) {
        fc->next = 0;
    }
}

int router_remove(Router *r, View filter, RouterTarget *t)
{
    RouterNode *n = find_node(r, filter, false);
    RouterFilter *fc = hashmap_get(&r->filters, filter);
    Holder *h = n && fc ? find_holder(n, fc, t) : NULL;
    if (!h) {
        return -ENOENT;
    }
    fc->fresh -= h->fresh;
    if (fc->shared) {
        member_remove(fc, (size_t)(h - fc->members));
    } else {
        *h = n->holders[--n->n_holders];
        fc->holders--;
    }
    r->subscriptions--;
    bool last = fc->holders == 0;
    if (last) {
        filter_drop(r, n, filter, fc);
    }
    prune(r, n);
    return last ? ROUTER_LAST : 0;
}

static Holder *lookup(Router *r, View filter, const RouterTarget *t)
{
    RouterFilter *fc = hashmap_get(&r->filters, filter);
    RouterNode *n = fc ? find_node(r, filter, false) : NULL;
    return n ? find_holder(n, fc, t) : NULL;
}

bool router_holds(Router *r, View filter, const RouterTarget *t)
{
    return lookup(r, filter, t) != NULL;
}

RouterFilter *router_filter(Router *r, View filter)
{
    return hashmap_get(&r->filters, filter);
}

void router_settle(Router *r, View filter, const RouterTarget *t)
{
    Holder *h = lookup(r, filter, t);
    if (h && h->fresh) {
        h->fresh = false;
        RouterFilter *fc = hashmap_get(&r->filters, filter);
        assert(fc && fc->fresh > 0);
        fc->fresh--;
    }
}

static int push_match(Router *r, RouterTarget *t)
{
    if (r->n_matched == r->cap_matched) {
        size_t cap = r->cap_matched ? r->cap_matched * 2 : 16;
        RouterTarget **m = realloc(r->matched, cap * sizeof(*m));
        if (!m) {
            return -ENOMEM;
        }
        r->matched = m;
        r->cap_matched = cap;
    }
    r->matched[r->n_matched++] = t;
    return 0;
}

/* Count h's target in the result, once per message, merging QoS and encoding. */
static void take(Router *r, const Holder *h)
{
    RouterTarget *t = h->t;
    if (t->epoch != r->epoch) {
        if (push_match(r, t) < 0) {
            return; /* out of memory: this target misses the message */
        }
        t->epoch = r->epoch;
        t->qos = h->qos;
        t->base64 = h->base64;
        t->best_id = 0;
    } else {
        t->qos = h->qos > t->qos ? h->qos : t->qos;
        t->base64 |= h->base64;
    }
}

/* The member of a shared filter that gets this message: the first ready one from the one
 * whose turn it is, or that one when none is ready. The turn passes to the member after the
 * chosen one. A member already in the result (through another filter) may be chosen: it
 * still gets one copy, and the group has delivered. */
static const Holder *pick(RouterFilter *fc, const Match *m)
{
    size_t count = fc->holders; /* >= 1: a filter without holders is dropped */
    size_t first = fc->next < count ? fc->next : 0, chosen = first;
    for (size_t k = 0; m->ready && k < count; k++) {
        size_t i = first + k < count ? first + k : first + k - count;
        if (m->ready(fc->members[i].t, m->userdata)) {
            chosen = i;
            break;
        }
    }
    fc->next = chosen + 1 < count ? chosen + 1 : 0;
    return &fc->members[chosen];
}

static bool names(const uint32_t *ids, size_t n, uint32_t id)
{
    for (size_t i = 0; i < n; i++) {
        if (ids[i] == id) {
            return true;
        }
    }
    return false;
}

static bool wanted(const Match *m, const RouterFilter *fc)
{
    if (m->domain != ROUTER_ANY && fc->unmounted != (m->domain == ROUTER_UNMOUNTED)) {
        return false;
    }
    return m->n_only == 0 || names(m->only, m->n_only, fc->subid);
}

/* How good a copy of filter fc is for its holders: one the broker granted beats one still
 * waiting for its SUBACK, then the higher granted (or asked) QoS. */
static uint8_t rank_of(const RouterFilter *fc)
{
    return fc->active ? (uint8_t)(4 + fc->granted) : fc->broker_qos;
}

/* A plain holder's filter fc as a candidate for the copy it takes (router_match_copy). */
static void consider(const Holder *h, const RouterFilter *fc)
{
    RouterTarget *t = h->t;
    uint8_t rank = rank_of(fc);
    if (!t->best_id || rank > t->best_rank || (rank == t->best_rank && fc->subid < t->best_id)) {
        t->best_id = fc->subid;
        t->best_rank = rank;
    }
}

/* A message with the retain flag that is not for fresh holders only: with Retain As
 * Published, the flag stays on live messages too, so while no holder of the filter waits for
 * its retained messages, one is live (see RouterFilter.retain_as_published). */
static bool live_retained(const RouterFilter *fc)
{
    return fc->retain_as_published && fc->fresh == 0;
}

static void collect(Router *r, const RouterNode *n, Match *m)
{
    for (size_t i = 0; n->plain && wanted(m, n->plain) && i < n->n_holders; i++) {
        if (!m->retained || n->holders[i].fresh || live_retained(n->plain)) {
            take(r, &n->holders[i]);
            if (m->copy) {
                consider(&n->holders[i], n->plain);
            }
        }
    }
    if (m->copy) {
        for (size_t i = 0; !m->retained && i < n->n_groups; i++) {
            (void)buf_append(m->groups, &n->groups[i], sizeof(n->groups[i])); /* OOM: missed */
        }
        return;
    }
    /* Retained messages are not for shared subscriptions (see router.h). */
    for (size_t i = 0; !m->retained && i < n->n_groups; i++) {
        if (wanted(m, n->groups[i])) {
            take(r, pick(n->groups[i], m));
        }
    }
}

typedef struct Frame { /* one branch of the walk still to explore */
    const RouterNode *node;
    View rest;   /* levels not yet matched */
    bool at_end; /* every level matched */
} Frame;

/* Depth-first over the trie with an explicit stack: a topic may have 32 768 levels, too
 * many for recursion. */
static void match_all(Router *r, View topic, Match *m)
{
    bool dollar = topic.n && topic.p[0] == '$'; /* 4.7.2: no root wildcards for $topics */
    buf_clear(&r->stack);
    Frame f = {r->root, topic, false};
    for (;;) {
        const RouterNode *n = f.node;
        bool root = n == r->root;
        if (n->hash && !(root && dollar)) {
            collect(r, n->hash, m); /* '#' matches the parent level too */
        }
        if (f.at_end) {
            collect(r, n, m);
        } else {
            bool last;
            View rest = f.rest;
            View level = next_level(&rest, &last);
            RouterNode *c = hashmap_get(&r->edges, edge_key(r, n, level));
            Frame next[2] = {{n->plus, rest, last}, {c, rest, last}};
            if (root && dollar) {
                next[0].node = NULL;
            }
            if (c == n->plus || c == n->hash) {
                next[1].node = NULL;
            }
            for (int i = 0; i < 2; i++) {
                if (next[i].node && buf_append(&r->stack, &next[i], sizeof(Frame)) < 0) {
                    return; /* out of memory: a partial match */
                }
            }
        }
        if (!buf_size(&r->stack)) {
            return;
        }
        r->stack.len -= sizeof(Frame);
        memcpy(&f, r->stack.data + r->stack.len, sizeof(Frame));
    }
}

static size_t run_match(Router *r, View topic, Match *m, RouterTarget ***ret)
{
    r->epoch++;
    r->n_matched = 0;
    match_all(r, topic, m);
    *ret = r->matched;
    return r->n_matched;
}

size_t router_match(Router *r, View topic, bool retained, router_ready_fn ready, void *userdata,
                    RouterTarget ***ret)
{
    Match m = {
        .retained = retained, .ready = ready, .userdata = userdata, .domain = r->match_domain};
    return run_match(r, topic, &m, ret);
}

/* Of the targets a copy's walk found, keep the plain holders whose own choice it is, then let
 * each group it names pick a member (see router.h). */
static size_t choose_copy(Router *r, const uint32_t *ids, size_t n_ids, Match *m)
{
    size_t kept = 0;
    for (size_t i = 0; i < r->n_matched; i++) {
        RouterTarget *t = r->matched[i];
        if (names(ids, n_ids, t->best_id)) {
            r->matched[kept++] = t;
        } /* else: another copy of this message is its own (it stays marked as matched) */
    }
    r->n_matched = kept;
    size_t n_groups = buf_size(m->groups) / sizeof(RouterFilter *);
    for (size_t g = 0; g < n_groups; g++) {
        RouterFilter *fc;
        memcpy(&fc, m->groups->data + m->groups->off + g * sizeof(fc), sizeof(fc));
        if (!names(ids, n_ids, fc->subid)) {
            continue; /* the broker gave this group's copy to another session, or sends it apart */
        }
        const Holder *h = pick(fc, m);
        if (h->t->epoch == r->epoch && h->t->best_id) {
            continue; /* it takes a plain copy of this message: the group has delivered */
        }
        take(r, h);
    }
    return r->n_matched;
}

size_t router_match_copy(Router *r, View topic, bool retained, const uint32_t *ids, size_t n_ids,
                         router_ready_fn ready, void *userdata, RouterTarget ***ret)
{
    Match m = {
        .retained = retained, .ready = ready, .userdata = userdata, .domain = r->match_domain};
    if (!n_ids) {
        return run_match(r, topic, &m, ret);
    }
    if (retained) { /* for the new subscriptions it names */
        m.only = ids;
        m.n_only = n_ids;
        return run_match(r, topic, &m, ret);
    }
    m.copy = true;
    m.groups = &r->groups_scratch;
    buf_clear(m.groups);
    run_match(r, topic, &m, ret);
    size_t n = choose_copy(r, ids, n_ids, &m);
    *ret = r->matched;
    return n;
}

void router_unconfirm_all(Router *r)
{
    HashIter it;
    void *v;
    hashmap_iter(&r->filters, &it);
    while (hashmap_iter_next(&it, &v)) {
        RouterFilter *fc = v;
        fc->was_active |= fc->active;
        fc->active = false;
    }
}

void router_reconfirm_all(Router *r, bool session_present)
{
    HashIter it;
    void *v;
    hashmap_iter(&r->filters, &it);
    while (hashmap_iter_next(&it, &v)) {
        RouterFilter *fc = v;
        fc->active = session_present && fc->was_active;
        fc->was_active = false;
    }
}

int router_set_subid(Router *r, View filter, uint32_t subid)
{
    RouterFilter *fc = hashmap_get(&r->filters, filter);
    if (!fc) {
        return -ENOENT;
    }
    if (subid == 0 || subid > ROUTER_SUBID_MAX) {
        return -EINVAL;
    }
    RouterFilter *other = idmap_get(&r->subids, subid);
    if (other) {
        return other == fc ? 0 : -EEXIST;
    }
    /* Moved, not copied: the map reads the id from the record. */
    uint32_t old = fc->subid;
    (void)idmap_remove(&r->subids, old); /* it is there: filter_new put it */
    fc->subid = subid;
    if (idmap_put(&r->subids, fc) < 0) {
        fc->subid = old;
        int r2 = idmap_put(&r->subids, fc);
        assert(r2 == 0); /* putting back what was just removed never fails */
        (void)r2;
        return -ENOMEM;
    }
    return 0;
}
