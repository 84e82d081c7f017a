/* SPDX-License-Identifier: MIT */
/*
 * Peer user names: see names.h. A lookup is a job shared by the loop and one detached thread;
 * the thread only fills in the answer and signals, the loop frees the job (in the async
 * callback), so forgetting a lookup just unhooks it from its cache entry.
 */
#include "names.h"

#include <assert.h>
#include <errno.h>
#include <pthread.h>
#include <pwd.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"

/* How long an answer is kept, and a failed lookup (seconds). */
#define NAMES_TTL       60.0
#define NAMES_ERROR_TTL 5.0
/* Past this many cached uids, answers that are not being looked up are forgotten. */
#define NAMES_MAX_CACHED 4096
/* Beyond this a passwd entry is not a user's but a broken NSS module's. */
#define MAX_PASSWD_BUF (1u << 20)

typedef struct Lookup Lookup;

typedef struct NameEntry {
    uid_t uid;
    char *name;      /* NULL: none */
    ev_tstamp until; /* the answer is good until then; 0 while being looked up */
    Lookup *job;     /* while being looked up */
    DList waits;     /* NameWait.link */
} NameEntry;

struct Lookup {
    ev_async async;
    Names *names;     /* NULL once forgotten */
    NameEntry *entry; /* NULL once forgotten */
    uid_t uid;
    char *name; /* the thread's answer */
    int error;  /* 0, or the errno of a failed lookup (not "no such user") */
};

static View key_of(const uid_t *uid)
{
    return VIEW(uid, sizeof(*uid));
}

void name_wait_init(NameWait *w)
{
    dlist_init(&w->link);
    w->done = NULL;
}

void names_init(Names *n, struct ev_loop *loop)
{
    *n = (Names){.loop = loop};
    hashmap_init(&n->cache);
}

/* The thread: getpwuid_r with a buffer that grows to what the entry needs. */
static void *worker(void *arg)
{
    Lookup *j = arg;
    for (size_t size = 1024;; size *= 2) {
        char *buf = malloc(size);
        if (!buf) {
            j->error = ENOMEM;
            break;
        }
        struct passwd pw, *res = NULL;
        int e = getpwuid_r(j->uid, &pw, buf, size, &res);
        if (e == ERANGE && size < MAX_PASSWD_BUF) {
            free(buf);
            continue;
        }
        if (e == 0 && res && !(j->name = strdup(res->pw_name))) {
            e = ENOMEM;
        }
        j->error = e == ENOENT || e == ESRCH ? 0 : e; /* those two: no such user */
        free(buf);
        break;
    }
    ev_async_send(j->async.data, &j->async);
    return NULL;
}

/* Answer every waiter of e (each is unhooked first: its callback may free it). */
static void answer(NameEntry *e)
{
    while (!dlist_empty(&e->waits)) {
        NameWait *w = container_of(e->waits.next, NameWait, link);
        dlist_remove(&w->link);
        w->done(w, e->name);
    }
}

static void on_answer(struct ev_loop *loop, ev_async *a, int revents)
{
    Lookup *j = container_of(a, Lookup, async);
    (void)revents;
    ev_async_stop(loop, a);
    NameEntry *e = j->entry;
    if (j->names) {
        j->names->in_flight--;
    }
    if (e) {
        assert(e->job == j && !e->name);
        if (j->error) {
            log_warning("uid %u: cannot look up its user name (%s); [acl] %%u rules treat it as "
                        "having none",
                        (unsigned)j->uid, strerror(j->error));
        }
        e->job = NULL;
        e->name = j->name;
        j->name = NULL;
        e->until = ev_now(loop) + (j->error ? NAMES_ERROR_TTL : NAMES_TTL);
        answer(e);
    }
    free(j->name);
    free(j);
}

static int start_lookup(Names *n, NameEntry *e)
{
    Lookup *j = calloc(1, sizeof(*j));
    if (!j) {
        return -ENOMEM;
    }
    *j = (Lookup){.names = n, .entry = e, .uid = e->uid};
    ev_async_init(&j->async, on_answer);
    j->async.data = n->loop;
    ev_async_start(n->loop, &j->async);
    pthread_attr_t attr;
    pthread_t t;
    int r = pthread_attr_init(&attr);
    if (r == 0) {
        (void)pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED); /* cannot fail */
        r = pthread_create(&t, &attr, worker, j);
        (void)pthread_attr_destroy(&attr);
    }
    if (r) {
        ev_async_stop(n->loop, &j->async);
        free(j);
        return -r;
    }
    e->job = j;
    e->until = 0;
    n->lookups++;
    n->in_flight++;
    return 0;
}

static void entry_free(void *p)
{
    NameEntry *e = p;
    if (e->job) { /* its thread answers into the job, which on_answer frees */
        e->job->entry = NULL;
        e->job->names = NULL;
    }
    while (!dlist_empty(&e->waits)) {
        dlist_remove(e->waits.next);
    }
    free(e->name);
    free(e);
}

/* Too many uids cached: forget every answer not being looked up (best effort: without the
 * memory to list them, nothing is forgotten this time). */
static void trim(Names *n)
{
    uid_t *gone = malloc(n->cache.count * sizeof(*gone));
    if (!gone) {
        return;
    }
    size_t k = 0;
    HashIter it;
    void *v;
    hashmap_iter(&n->cache, &it);
    while (hashmap_iter_next(&it, &v)) {
        const NameEntry *e = v;
        if (!e->job) {
            gone[k++] = e->uid;
        }
    }
    for (size_t i = 0; i < k; i++) {
        entry_free(hashmap_remove(&n->cache, key_of(&gone[i])));
    }
    free(gone);
}

static NameEntry *entry_get(Names *n, uid_t uid)
{
    NameEntry *e = hashmap_get(&n->cache, key_of(&uid));
    if (e) {
        return e;
    }
    if (n->cache.count >= NAMES_MAX_CACHED) {
        trim(n);
    }
    if (!(e = calloc(1, sizeof(*e)))) {
        return NULL;
    }
    e->uid = uid;
    dlist_init(&e->waits);
    if (hashmap_put(&n->cache, key_of(&e->uid), e) < 0) {
        free(e);
        return NULL;
    }
    return e;
}

int names_lookup(Names *n, uid_t uid, const char **name, NameWait *w, name_cb done)
{
    assert(dlist_empty(&w->link));
    NameEntry *e = entry_get(n, uid);
    if (!e) {
        return -ENOMEM;
    }
    if (!e->job && e->until > ev_now(n->loop)) {
        *name = e->name;
        return 0;
    }
    if (!e->job) {
        free(e->name);
        e->name = NULL;
        int r = start_lookup(n, e);
        if (r < 0) {
            return r;
        }
    }
    w->done = done;
    dlist_push(&e->waits, &w->link);
    return 1;
}

void names_cancel(NameWait *w)
{
    dlist_remove(&w->link);
}

void names_free(Names *n)
{
    hashmap_free(&n->cache, entry_free);
}
