/* SPDX-License-Identifier: MIT */
/*
 * Reconnect storms, simulated with the session's own backoff (session_backoff_ms): N daemons
 * lose their broker together at t = 0; it is back at t = OUTAGE. Each daemon retries after
 * its backoff; an attempt before the broker is back fails (a refused connection), one after
 * succeeds - a TLS handshake the broker cluster must do. Printed: the peak of successful
 * reconnects in any one second, and when 99 % of the fleet is back, for 0.1's backoff
 * (equal jitter, no overload signal) and today's (full jitter, a refused connection widens
 * the window twice more), with the defaults reconnect_min 1 s and reconnect_max 60 s.
 *
 *     reconnect-storm [N]      (default 100000; docs/performance.md has the table)
 *     reconnect-storm --check  (10 000 daemons: exits 1 unless today's peaks are lower)
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mqtt/session.h"

#define MIN_MS 1000
#define MAX_MS 60000

typedef struct Result {
    long peak;    /* successful reconnects in the busiest second */
    double p99_s; /* seconds after the outage began until 99 % are back */
} Result;

static uint64_t splitmix(uint64_t *x)
{
    uint64_t z = (*x += UINT64_C(0x9E3779B97F4A7C15));
    z = (z ^ (z >> 30)) * UINT64_C(0xBF58476D1CE4E5B9);
    z = (z ^ (z >> 27)) * UINT64_C(0x94D049BB133111EB);
    return z ^ (z >> 31);
}

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return x < y ? -1 : x > y;
}

static Result simulate(long n, int64_t outage_ms, bool today)
{
    int64_t *back = malloc((size_t)n * sizeof(*back));
    if (!back) {
        perror("malloc");
        exit(2);
    }
    for (long i = 0; i < n; i++) {
        uint64_t rng = (uint64_t)i * 2654435761u + (today ? 17 : 0);
        unsigned attempts = 0;
        int64_t t = 0;
        enum session_jitter j = today ? SESSION_JITTER_FULL : SESSION_JITTER_EQUAL;
        bool refused = false; /* the first drop is the link lost; then connections refused */
        for (;;) {
            t += session_backoff_ms(j, &attempts, refused, MIN_MS, MAX_MS, splitmix(&rng));
            if (t >= outage_ms) {
                break;
            }
            refused = true;
        }
        back[i] = t;
    }
    qsort(back, (size_t)n, sizeof(*back), cmp_i64);
    Result r = {.p99_s = (double)back[(size_t)((double)n * 0.99)] / 1000.0};
    for (long i = 0, j = 0; i < n; i = j) {
        while (j < n && back[j] / 1000 == back[i] / 1000) {
            j++;
        }
        r.peak = j - i > r.peak ? j - i : r.peak;
    }
    free(back);
    return r;
}

int main(int argc, char **argv)
{
    bool check = argc > 1 && strcmp(argv[1], "--check") == 0;
    long n = check ? 10000 : argc > 1 ? atol(argv[1]) : 100000;
    static const int64_t outages[] = {5000, 60000, 600000};
    static const char *const names[] = {"5 s", "60 s", "10 min"};
    int worse = 0;
    printf("| outage | peak reconnects/s, 0.1 (equal jitter) | peak reconnects/s, now (full "
           "jitter, overload signals) | 99 %% back after (0.1 / now) |\n| --- | --- | --- | --- "
           "|\n");
    for (int k = 0; k < 3; k++) {
        Result before = simulate(n, outages[k], false), now = simulate(n, outages[k], true);
        printf("| %s | %ld | %ld | %.0f s / %.0f s |\n", names[k], before.peak, now.peak,
               before.p99_s, now.p99_s);
        worse += now.peak >= before.peak;
    }
    printf("(%ld daemons, reconnect_min %d s, reconnect_max %d s)\n", n, MIN_MS / 1000,
           MAX_MS / 1000);
    return check && worse ? 1 : 0;
}
