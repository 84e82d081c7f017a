/* SPDX-License-Identifier: MIT */
/*
 * Peer user names: see names.h. A lookup is a job shared by the loop and one detached thread.
 * Under `jobs_lock` the thread either signals its answer (the loop then takes it and frees the
 * job) or, when the loop has forgotten the job meanwhile, frees it itself; the loop forgets a
 * job whose answer was already signalled by stopping its watcher and freeing it. So after
 * names_free no thread touches the loop.
 */
#include "names.h"

#include <assert.h>
#include <errno.h>
#include <pthread.h>
#include <pwd.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"

/* How long an answer is kept, and a failed lookup (seconds). */
#define NAMES_TTL       60.0
#define NAMES_ERROR_TTL 5.0
/* A lookup running this long (seconds) is given up for a fresh one. */
#define NAMES_STUCK 30.0
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
    ev_tstamp asked; /* when that lookup started */
    DList waits;     /* NameWait.link */
} NameEntry;

struct Lookup {
    ev_async async;
    struct ev_loop *loop;
    DList link;       /* in Names.jobs */
    Names *names;     /* the loop's side (loop only) */
    NameEntry *entry; /* who waits for it, NULL when given up (loop only) */
    uid_t uid;
    char *name;     /* the thread's answer */
    int error;      /* 0, or the errno of a failed lookup (not "no such user") */
    bool forgotten; /* under jobs_lock: the loop dropped it; the thread frees it */
    bool answered;  /* under jobs_lock: the thread signalled its answer */
};

static pthread_mutex_t jobs_lock = PTHREAD_MUTEX_INITIALIZER;
static atomic_uint threads_running;

unsigned names_threads(void)
{
    return atomic_load(&threads_running);
}

static void job_free(Lookup *j)
{
    free(j->name);
    free(j);
}

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
    dlist_init(&n->jobs);
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
    bool forgotten;
    (void)pthread_mutex_lock(&jobs_lock); /* cannot fail: a default mutex, not held here */
    forgotten = j->forgotten;
    if (!forgotten) {
        j->answered = true;
        ev_async_send(j->loop, &j->async);
    }
    (void)pthread_mutex_unlock(&jobs_lock);
    if (forgotten) {
        job_free(j);
    }
    atomic_fetch_sub(&threads_running, 1);
    return NULL;
}

/* The loop drops j: nobody waits for its answer any more. */
static void job_forget(Lookup *j)
{
    Names *n = j->names;
    if (j->entry) {
        j->entry->job = NULL;
    }
    dlist_remove(&j->link);
    n->in_flight--;
    (void)pthread_mutex_lock(&jobs_lock);
    bool answered = j->answered;
    j->forgotten = true;
    ev_async_stop(n->loop, &j->async); /* also clears a signalled answer */
    (void)pthread_mutex_unlock(&jobs_lock);
    if (answered) {
        job_free(j); /* the thread is done with it */
    }
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
    dlist_remove(&j->link);
    j->names->in_flight--;
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

/* A detached thread for j, with every signal blocked (the loop's thread takes them). */
static int spawn(Lookup *j)
{
    sigset_t all, old;
    pthread_attr_t attr;
    pthread_t t;
    (void)sigfillset(&all);
    int r = pthread_attr_init(&attr);
    if (r) {
        return -r;
    }
    (void)pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED); /* cannot fail */
    (void)pthread_sigmask(SIG_SETMASK, &all, &old);                    /* valid arguments */
    atomic_fetch_add(&threads_running, 1);
    r = pthread_create(&t, &attr, worker, j);
    if (r) {
        atomic_fetch_sub(&threads_running, 1);
    }
    (void)pthread_sigmask(SIG_SETMASK, &old, NULL);
    (void)pthread_attr_destroy(&attr);
    return -r;
}

static int start_lookup(Names *n, NameEntry *e)
{
    Lookup *j = calloc(1, sizeof(*j));
    if (!j) {
        return -ENOMEM;
    }
    *j = (Lookup){.loop = n->loop, .names = n, .entry = e, .uid = e->uid};
    ev_async_init(&j->async, on_answer);
    ev_async_start(n->loop, &j->async);
    int r = spawn(j);
    if (r < 0) {
        ev_async_stop(n->loop, &j->async);
        free(j);
        return r;
    }
    dlist_push(&n->jobs, &j->link);
    e->job = j;
    e->until = 0;
    e->asked = ev_now(n->loop);
    n->lookups++;
    n->in_flight++;
    return 0;
}

static void entry_free(void *p)
{
    NameEntry *e = p;
    if (e->job) {
        job_forget(e->job);
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
    ev_tstamp now = ev_now(n->loop);
    if (!e->job && e->until > now) {
        *name = e->name;
        return 0;
    }
    if (e->job && now - e->asked > NAMES_STUCK) {
        log_warning("uid %u: its user name lookup has run for %.0f s: starting another",
                    (unsigned)uid, now - e->asked);
        job_forget(e->job); /* its waiters stay: the fresh lookup answers them */
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
    while (!dlist_empty(&n->jobs)) { /* given-up lookups no entry names */
        job_forget(container_of(n->jobs.next, Lookup, link));
    }
}
