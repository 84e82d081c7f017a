/* SPDX-License-Identifier: MIT */
/* OpenMetrics text: see openmetrics.h. */
#include "ipc/openmetrics.h"

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

typedef struct Metric {
    const char *key;  /* in the stats reply */
    const char *name; /* after mqttbridge_ (counters: before _total) */
    bool counter;
    const char *help;
    bool ms; /* the stats give milliseconds; written in seconds, Prometheus's base unit */
} Metric;

static const Metric metrics[] = {
    {"packets_sent", "packets_sent", true, "MQTT packets written to the broker", false},
    {"packets_received", "packets_received", true, "MQTT packets read from the broker", false},
    {"bytes_sent", "sent_bytes", true, "Bytes written to the broker, MQTT framing included", false},
    {"bytes_received", "received_bytes", true, "Bytes read from the broker, MQTT framing included",
     false},
    {"pub_ok_count", "publishes_completed", true,
     "Publishes completed (QoS 0 written, QoS 1 PUBACK, QoS 2 PUBCOMP)", false},
    {"pub_fail_count", "publishes_failed", true,
     "Publishes that failed: timed out, refused, queue full, expired", false},
    {"pub_rtt_ms", "publish_rtt_average_seconds", false,
     "Average PUBLISH to PUBACK/PUBCOMP time (QoS 1/2)", true},
    {"pub_package_avg_size", "publish_sent_average_bytes", false,
     "Average size of the PUBLISH packets sent", false},
    {"sub_package_avg_size", "publish_received_average_bytes", false,
     "Average size of the PUBLISH packets received", false},
    {"connections_sent", "connects", true, "CONNECT attempts", false},
    {"connections_failed", "connects_failed", true, "CONNECT attempts that failed", false},
    {"ping_sent_count", "pings_sent", true, "PINGREQ packets sent", false},
    {"ping_received_count", "pings_answered", true, "PINGRESP packets received", false},
    {"ping_rtt_ms", "ping_rtt_average_seconds", false, "Average PINGREQ to PINGRESP time", true},
    {"reconnects", "reconnects", true, "Broker links re-established after a loss", false},
    {"queued", "queued_messages", false, "Messages waiting to be sent to the broker", false},
    {"inflight", "inflight_messages", false, "Messages sent and not yet acknowledged", false},
    {"queued_bytes", "queued_bytes", false, "Bytes of the messages queued and in flight", false},
    {"local_clients", "local_clients", false, "Connections to the local socket", false},
    {"subscriptions", "subscriptions", false, "Distinct broker subscriptions", false},
    {"messages_received", "messages_received", true, "PUBLISH packets from the broker", false},
    {"messages_delivered", "messages_delivered", true, "Message events written to local clients",
     false},
    {"messages_dropped", "messages_dropped", true,
     "Message events dropped: a client read too slowly, or a session's bounds", false},
    {"duplicates_dropped", "duplicates_dropped", true, "QoS 2 redeliveries not delivered twice",
     false},
    {"clients_rejected", "clients_rejected", true, "Local connections refused by a limit", false},
    {"subscriptions_lost", "subscriptions_lost", true,
     "Restored subscriptions the broker refused after a reconnect", false},
    {"topic_aliases_used", "topic_aliases_used", true, "PUBLISH packets sent with a topic alias",
     false},
    {"messages_expired", "messages_expired", true,
     "Messages whose message_expiry passed in the queue or spool", false},
    {"properties_dropped", "properties_dropped", true,
     "Messages whose MQTT 5 fields were left out on a 3.1.1 link", false},
    {"responses_unmatched", "responses_unmatched", true,
     "Request responses that matched no waiting request", false},
    {"sessions", "sessions", false, "Named local sessions held", false},
    {"rate_limited_ms", "rate_limited_seconds", true,
     "Time the publish rate limit held messages back", true},
    {"spool_pending", "spool_messages", false, "Messages held in the spool", false},
    {"spool_bytes", "spool_bytes", false, "Size of the spool on disk", false},
    {"spool_damaged_regions", "spool_damaged_regions", false,
     "Damaged stretches the last start's recovery found", false},
    {"spool_damaged_bytes", "spool_damaged_bytes", false,
     "Bytes in damaged stretches the last start's recovery found", false},
};

static int put(Buf *out, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int put(Buf *out, const char *fmt, ...)
{
    char line[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= sizeof(line)) {
        return -EINVAL;
    }
    return buf_append(out, line, (size_t)n);
}

/* Seconds as OpenMetrics writes a float: "0.001", "1.0". */
static void seconds(char *out, size_t n, double ms)
{
    double s = ms / 1000.0;
    if (s == (double)(int64_t)s) {
        snprintf(out, n, "%.1f", s);
    } else {
        snprintf(out, n, "%.6g", s);
    }
}

static int histogram(Buf *out, const char *name, const char *help, const json_t *bounds,
                     const json_t *h)
{
    const json_t *counts = json_object_get(h, "counts");
    size_t n = json_array_size(bounds);
    if (json_array_size(counts) != n + 1) {
        return 0; /* not in this reply */
    }
    int r = put(out, "# HELP mqttbridge_%s %s\n# TYPE mqttbridge_%s histogram\n", name, help, name);
    json_int_t cumulative = 0;
    char le[32];
    for (size_t i = 0; r == 0 && i <= n; i++) {
        cumulative += json_integer_value(json_array_get(counts, i));
        if (i < n) {
            seconds(le, sizeof(le), (double)json_integer_value(json_array_get(bounds, i)));
        } else {
            snprintf(le, sizeof(le), "+Inf");
        }
        r = put(out, "mqttbridge_%s_bucket{le=\"%s\"} %" JSON_INTEGER_FORMAT "\n", name, le,
                cumulative);
    }
    char sum[32];
    seconds(sum, sizeof(sum), (double)json_integer_value(json_object_get(h, "sum_ms")));
    if (r == 0) {
        r = put(out, "mqttbridge_%s_sum %s\nmqttbridge_%s_count %" JSON_INTEGER_FORMAT "\n", name,
                sum, name, cumulative);
    }
    return r;
}

int openmetrics_write(Buf *out, const json_t *stats)
{
    int r = 0;
    for (size_t i = 0; r == 0 && i < sizeof(metrics) / sizeof(metrics[0]); i++) {
        const Metric *m = &metrics[i];
        const json_t *v = json_object_get(stats, m->key);
        if (!json_is_integer(v)) {
            continue; /* not in this reply (the spool's, without a spool) */
        }
        const char *total = m->counter ? "_total" : "";
        char value[32];
        if (m->ms) {
            seconds(value, sizeof(value), (double)json_integer_value(v));
        } else {
            snprintf(value, sizeof(value), "%" JSON_INTEGER_FORMAT, json_integer_value(v));
        }
        r = put(out, "# HELP mqttbridge_%s%s %s\n# TYPE mqttbridge_%s%s %s\nmqttbridge_%s%s %s\n",
                m->name, total, m->help, m->name, total, m->counter ? "counter" : "gauge", m->name,
                total, value);
    }
    const json_t *h = json_object_get(stats, "histograms");
    const json_t *bounds = json_object_get(h, "bounds_ms");
    if (r == 0) {
        r = histogram(out, "publish_rtt_seconds", "PUBLISH to PUBACK/PUBCOMP time (QoS 1/2)",
                      bounds, json_object_get(h, "publish_rtt"));
    }
    if (r == 0) {
        r = histogram(out, "ping_rtt_seconds", "PINGREQ to PINGRESP time", bounds,
                      json_object_get(h, "ping_rtt"));
    }
    return r == 0 ? put(out, "# EOF\n") : r;
}
