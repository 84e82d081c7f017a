/* SPDX-License-Identifier: MIT */
/* The table of results: medians with their spread over the runs (see bench.h). */
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"

#define MAX_ROWS 64

static Row rows[MAX_ROWS];
static int n_rows;

Row *row(const char *unit, bool lower_is_better, const char *fmt, ...)
{
    char name[sizeof(rows[0].name)];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(name, sizeof(name), fmt, ap);
    va_end(ap);
    for (int i = 0; i < n_rows; i++) {
        if (strcmp(rows[i].name, name) == 0) {
            return &rows[i];
        }
    }
    if (n_rows == MAX_ROWS) {
        fail("more than %d rows", MAX_ROWS);
    }
    Row *r = &rows[n_rows++];
    *r = (Row){.unit = unit, .lower_is_better = lower_is_better};
    memcpy(r->name, name, sizeof(name));
    for (int k = 0; k < MAX_RUNS; k++) {
        r->ours[k] = r->peer[k] = r->cpu_ours[k] = r->cpu_peer[k] = NAN;
    }
    return r;
}

void row_set(Row *r, int run, double ours, double peer)
{
    r->ours[run] = ours;
    r->peer[run] = peer;
}

void row_cpu(Row *r, int run, double ours, double peer)
{
    r->cpu_ours[run] = ours;
    r->cpu_peer[run] = peer;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* Median, minimum and maximum of the runs that have a value; false when none has. */
typedef struct Stat {
    double med, min, max;
    int n;
} Stat;

static Stat stat_of(const double *v)
{
    double s[MAX_RUNS];
    int n = 0;
    for (int i = 0; i < opt.runs; i++) {
        if (!isnan(v[i])) {
            s[n++] = v[i];
        }
    }
    if (!n) {
        return (Stat){NAN, NAN, NAN, 0};
    }
    qsort(s, (size_t)n, sizeof(*s), cmp_double);
    return (Stat){n % 2 ? s[n / 2] : (s[n / 2 - 1] + s[n / 2]) / 2, s[0], s[n - 1], n};
}

/* Ratio ours/peer per run, then its statistics: a ratio is always within one run. */
static Stat ratio_of(const double *ours, const double *peer)
{
    double q[MAX_RUNS];
    for (int i = 0; i < MAX_RUNS; i++) {
        q[i] = isnan(ours[i]) || isnan(peer[i]) || peer[i] == 0 ? NAN : ours[i] / peer[i];
    }
    return stat_of(q);
}

static void put_num(FILE *f, double v, int width)
{
    if (isnan(v)) {
        fprintf(f, "%*s", width, "-");
    } else if (fabs(v) >= 1000) {
        fprintf(f, "%*.0f", width, v);
    } else if (fabs(v) >= 10) {
        fprintf(f, "%*.1f", width, v);
    } else {
        fprintf(f, "%*.2f", width, v);
    }
}

static void put_ratio(FILE *f, Stat s)
{
    if (!s.n) {
        fprintf(f, "%18s", "-");
        return;
    }
    fprintf(f, "%6.2f [%4.2f-%4.2f]", s.med, s.min, s.max);
}

void report_text(FILE *f)
{
    fprintf(f,
            "mqttbridge-bench: %d run(s); medians, [min-max] over the runs; ratio = ours / "
            "peer within a run\n",
            opt.runs);
    fprintf(f, "ours: through mqttbridged (the daemon and its local clients); peer: direct "
               "libmosquitto or mosquitto's tools. cpu: microseconds per message on that side of "
               "the broker\n\n");
    fprintf(f, "%-60s %9s %9s %18s | %6s %6s %18s | %s\n", "case", "ours", "peer", "ratio", "cpu",
            "cpu", "cpu ratio", "lost (ours/peer)");
    for (int i = 0; i < n_rows; i++) {
        const Row *r = &rows[i];

        char name[sizeof(r->name) + 24];
        snprintf(name, sizeof(name), "%.96s (%.16s)", r->name, r->unit);
        fprintf(f, "%-60s ", name);
        put_num(f, stat_of(r->ours).med, 9);
        put_num(f, stat_of(r->peer).med, 10);
        fprintf(f, " ");
        put_ratio(f, ratio_of(r->ours, r->peer));
        fprintf(f, " | ");
        put_num(f, stat_of(r->cpu_ours).med, 6);
        put_num(f, stat_of(r->cpu_peer).med, 7);
        fprintf(f, " ");
        put_ratio(f, ratio_of(r->cpu_ours, r->cpu_peer));
        fprintf(f, " | %ld/%ld\n", r->lost_ours, r->lost_peer);
    }
}

static void json_num(FILE *f, double v)
{
    if (isnan(v)) {
        fprintf(f, "null");
    } else {
        fprintf(f, "%.6g", v);
    }
}

static void json_series(FILE *f, const char *name, const double *v)
{
    Stat s = stat_of(v);
    fprintf(f, "\"%s\":{\"median\":", name);
    json_num(f, s.med);
    fprintf(f, ",\"min\":");
    json_num(f, s.min);
    fprintf(f, ",\"max\":");
    json_num(f, s.max);
    fprintf(f, ",\"runs\":[");
    for (int i = 0; i < opt.runs; i++) {
        fprintf(f, "%s", i ? "," : "");
        json_num(f, v[i]);
    }
    fprintf(f, "]}");
}

static void json_ratio(FILE *f, const char *name, const double *ours, const double *peer)
{
    double q[MAX_RUNS];
    for (int i = 0; i < MAX_RUNS; i++) {
        q[i] = isnan(ours[i]) || isnan(peer[i]) || peer[i] == 0 ? NAN : ours[i] / peer[i];
    }
    json_series(f, name, q);
}

void report_json(FILE *f)
{
    fprintf(f, "{\"runs\":%d,\"quick\":%s,\"rows\":[", opt.runs, opt.quick ? "true" : "false");
    for (int i = 0; i < n_rows; i++) {
        const Row *r = &rows[i];
        fprintf(f, "%s{\"name\":\"%s\",\"unit\":\"%s\",\"lower_is_better\":%s,", i ? "," : "",
                r->name, r->unit, r->lower_is_better ? "true" : "false");
        json_series(f, "ours", r->ours);
        fprintf(f, ",");
        json_series(f, "peer", r->peer);
        fprintf(f, ",");
        json_ratio(f, "ratio", r->ours, r->peer);
        fprintf(f, ",");
        json_series(f, "cpu_us_ours", r->cpu_ours);
        fprintf(f, ",");
        json_series(f, "cpu_us_peer", r->cpu_peer);
        fprintf(f, ",");
        json_ratio(f, "cpu_ratio", r->cpu_ours, r->cpu_peer);
        fprintf(f, ",\"lost_ours\":%ld,\"lost_peer\":%ld}", r->lost_ours, r->lost_peer);
    }
    fprintf(f, "]}\n");
}

long report_lost_ours(void)
{
    long lost = 0;
    for (int i = 0; i < n_rows; i++) {
        lost += rows[i].lost_ours;
    }
    return lost;
}
