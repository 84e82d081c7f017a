/* SPDX-License-Identifier: MIT */
/*
 * User names of local peers without blocking the event loop on NSS (an LDAP or sssd lookup
 * can take seconds): getpwuid_r runs on a helper thread, and each answer is kept for a while
 * (NAMES_TTL; a failed lookup for less) so that a uid seen recently is answered at once.
 * Several peers of one uid wait for one lookup; one that has run for NAMES_STUCK seconds is
 * given up for a fresh one (callers bound their own wait: see access.c).
 */
#pragma once

#include <ev.h>
#include <sys/types.h>

#include "dlist.h"
#include "hashmap.h"

typedef struct NameWait NameWait;
/* The answer: the name, or NULL when uid has none (or the lookup failed: logged). Valid for
 * the call only. */
typedef void (*name_cb)(NameWait *w, const char *name);

/* Embedded in whatever waits for a name. */
struct NameWait {
    DList link; /* in its entry's waits while waiting; else on its own */
    name_cb done;
};

typedef struct Names {
    struct ev_loop *loop;
    HashMap cache;      /* uid -> NameEntry */
    DList jobs;         /* every lookup whose answer the loop has not taken */
    unsigned lookups;   /* lookups made (for tests and logs) */
    unsigned in_flight; /* lookups whose answer the loop has not taken */
} Names;

void names_init(Names *n, struct ev_loop *loop);
/* Waits are dropped without an answer; a lookup still running is forgotten (its thread frees
 * it and never touches the loop again), so the loop may be destroyed right after. */
void names_free(Names *n);
/* Helper threads not yet finished, forgotten ones included (for tests). */
unsigned names_threads(void);
/* uid's name. 0: known (*name set, NULL when none; valid until the loop next runs). 1: w is
 * queued and w->done runs from the loop later (never inside this call). -ENOMEM or -errno
 * (no thread): the caller decides (nothing is queued). */
int names_lookup(Names *n, uid_t uid, const char **name, NameWait *w, name_cb done);
/* w no longer waits (idempotent; fine for a w that never waited once initialised). */
void names_cancel(NameWait *w);
void name_wait_init(NameWait *w);
