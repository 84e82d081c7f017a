/* SPDX-License-Identifier: MIT */
/* Router: see router.h. */
#include "router.h"

#include <errno.h>
#include <stdlib.h>

#include "mqtt/topic.h"

typedef struct Holder {
    RouterTarget *t;
    RouterFilter *filter; /* tells "a/b" from "$share/g/a/b", which share a node */
    uint8_t qos;
    bool base64;
    bool fresh; /* new: retained messages are for it */
} Holder;

struct RouterNode {
    RouterNode *parent;
    RouterNode *plus, *hash; /* the '+' and '#' children */
    size_t n_children;       /* all children, wildcards included */
    Holder *holders;
    size_t n_holders, cap_holders;
    uint16_t level_len;
    uint8_t level[]; /* this node's level text (for removal from `edges`) */
};

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
        free(n);
    }
}

int router_init(Router *r)
{
    *r = (Router){0};
    hashmap_init(&r->edges);
    hashmap_init(&r->filters);
    r->root = node_new(NULL, VIEW_NULL);
    return r->root ? 0 : -ENOMEM;
}

void router_free(Router *r)
{
    hashmap_free(&r->edges, node_free); /* every node but the root is one edge's value */
    hashmap_free(&r->filters, free);
    node_free(r->root);
    free(r->matched);
    buf_free(&r->key);
    buf_free(&r->stack);
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
    while (n != r->root && n->n_holders == 0 && n->n_children == 0) {
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

static Holder *find_holder(const RouterNode *n, const RouterTarget *t, const RouterFilter *fc)
{
    for (size_t i = 0; i < n->n_holders; i++) {
        if (n->holders[i].t == t && n->holders[i].filter == fc) {
            return &n->holders[i];
        }
    }
    return NULL;
}

int router_add(Router *r, View filter, RouterTarget *t, uint8_t qos, bool base64)
{
    RouterNode *n = find_node(r, filter, true);
    if (!n) {
        return -ENOMEM;
    }
    RouterFilter *fc = hashmap_get(&r->filters, filter);
    bool created = !fc;
    if (created) {
        fc = calloc(1, sizeof(*fc));
        if (!fc || hashmap_put(&r->filters, filter, fc) < 0) {
            free(fc);
            prune(r, n);
            return -ENOMEM;
        }
    }
    Holder *h = find_holder(n, t, fc);
    if (!h) {
        if (n->n_holders == n->cap_holders) {
            size_t cap = n->cap_holders ? n->cap_holders * 2 : 1;
            Holder *nh = realloc(n->holders, cap * sizeof(*nh));
            if (!nh) {
                if (created) {
                    free(hashmap_remove(&r->filters, filter));
                }
                prune(r, n);
                return -ENOMEM;
            }
            n->holders = nh;
            n->cap_holders = cap;
        }
        h = &n->holders[n->n_holders++];
        *h = (Holder){.t = t, .filter = fc};
        fc->holders++;
        r->subscriptions++;
    }
    h->qos = qos;
    h->base64 = base64;
    h->fresh = true;
    int result = created ? ROUTER_FIRST : qos > fc->broker_qos ? ROUTER_UPGRADE : 0;
    if (created || qos > fc->broker_qos) {
        fc->broker_qos = qos;
    }
    return result;
}

int router_remove(Router *r, View filter, RouterTarget *t)
{
    RouterNode *n = find_node(r, filter, false);
    RouterFilter *fc = hashmap_get(&r->filters, filter);
    Holder *h = n && fc ? find_holder(n, t, fc) : NULL;
    if (!h) {
        return -ENOENT;
    }
    fc->holders--;
    *h = n->holders[--n->n_holders];
    r->subscriptions--;
    prune(r, n);
    if (fc->holders == 0) {
        free(hashmap_remove(&r->filters, filter));
        return ROUTER_LAST;
    }
    return 0;
}

static Holder *lookup(Router *r, View filter, const RouterTarget *t)
{
    RouterFilter *fc = hashmap_get(&r->filters, filter);
    RouterNode *n = fc ? find_node(r, filter, false) : NULL;
    return n ? find_holder(n, t, fc) : NULL;
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
    if (h) {
        h->fresh = false;
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

static void collect(Router *r, const RouterNode *n, bool retained)
{
    for (size_t i = 0; n && i < n->n_holders; i++) {
        const Holder *h = &n->holders[i];
        RouterTarget *t = h->t;
        if (retained && !h->fresh) {
            continue;
        }
        if (t->epoch != r->epoch) {
            if (push_match(r, t) < 0) {
                continue; /* out of memory: this target misses the message */
            }
            t->epoch = r->epoch;
            t->qos = h->qos;
            t->base64 = h->base64;
        } else {
            t->qos = h->qos > t->qos ? h->qos : t->qos;
            t->base64 |= h->base64;
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
static void match_all(Router *r, View topic, bool retained)
{
    bool dollar = topic.n && topic.p[0] == '$'; /* 4.7.2: no root wildcards for $topics */
    buf_clear(&r->stack);
    Frame f = {r->root, topic, false};
    for (;;) {
        const RouterNode *n = f.node;
        bool root = n == r->root;
        if (n->hash && !(root && dollar)) {
            collect(r, n->hash, retained); /* '#' matches the parent level too */
        }
        if (f.at_end) {
            collect(r, n, retained);
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

size_t router_match(Router *r, View topic, bool retained, RouterTarget ***ret)
{
    r->epoch++;
    r->n_matched = 0;
    match_all(r, topic, retained);
    *ret = r->matched;
    return r->n_matched;
}
