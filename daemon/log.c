/* SPDX-License-Identifier: MIT */
/* Logging: see log.h. */
#include "log.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

static enum log_level current = LOG_LEVEL_INFO;
static bool journal;
static const char *name = "mqttbridged";

void log_init(const char *ident)
{
    name = ident;
    journal = getenv("JOURNAL_STREAM") != NULL;
}

void log_set_level(enum log_level level)
{
    current = level;
}

bool log_enabled(enum log_level level)
{
    return level <= current;
}

void log_msg(enum log_level level, const char *fmt, ...)
{
    if (!log_enabled(level)) {
        return;
    }
    /* syslog priorities: err 3, warning 4, info 6, debug 7 */
    static const int prio[] = {3, 4, 6, 7, 7};
    char line[2048];
    int n;
    if (journal) {
        n = snprintf(line, sizeof(line), "<%d>", prio[level]);
    } else {
        struct timespec ts;
        struct tm tm;
        clock_gettime(CLOCK_REALTIME, &ts);
        localtime_r(&ts.tv_sec, &tm);
        n = (int)strftime(line, sizeof(line), "%Y-%m-%dT%H:%M:%S", &tm);
        n += snprintf(line + n, sizeof(line) - (size_t)n,
                      ".%03ld %s[%d]: %s: ", ts.tv_nsec / 1000000, name, (int)getpid(),
                      log_level_name(level));
    }
    va_list ap;
    va_start(ap, fmt);
    int m = vsnprintf(line + n, sizeof(line) - (size_t)n - 1, fmt, ap);
    va_end(ap);
    n = m < 0 ? n : n + m < (int)sizeof(line) - 1 ? n + m : (int)sizeof(line) - 2;
    line[n++] = '\n';
    /* One write per line, so lines from a crash-looping daemon never interleave. */
    ssize_t w = write(STDERR_FILENO, line, (size_t)n);
    (void)w;
}

void log_packet(bool out, const MqttPacket *pkt, View raw)
{
    if (!log_enabled(LOG_LEVEL_PACKET)) {
        return;
    }
    enum { MAX_DUMP = 256 };
    char hex[MAX_DUMP * 3 + 8];
    size_t n = raw.n < MAX_DUMP ? raw.n : MAX_DUMP, o = 0;
    /* The password is the tail of a CONNECT: never dump it. */
    if (pkt->type == MQTT_CONNECT && pkt->connect.has_password) {
        n = n < raw.n - pkt->connect.password.n ? n : raw.n - pkt->connect.password.n;
    }
    for (size_t i = 0; i < n; i++) {
        o += (size_t)snprintf(hex + o, sizeof(hex) - o, "%02x ", raw.p[i]);
    }
    if (n < raw.n) {
        snprintf(hex + o, sizeof(hex) - o, "...");
    }
    log_msg(LOG_LEVEL_PACKET, "%s %s (%zu bytes): %s", out ? ">" : "<", mqtt_type_name(pkt->type),
            raw.n, hex);
}
