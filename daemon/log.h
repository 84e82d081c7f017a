/* SPDX-License-Identifier: MIT */
/*
 * Logging for mqttbridged: one line per event on stderr. Under systemd (JOURNAL_STREAM set)
 * each line carries a "<N>" syslog priority prefix, which journald turns into the entry's
 * priority; otherwise lines carry a timestamp and the level name.
 */
#pragma once

#include <stdbool.h>

#include "buf.h"
#include "config.h"
#include "mqtt/codec.h"

void log_init(const char *ident);
void log_set_level(enum log_level level);
bool log_enabled(enum log_level level);
void log_msg(enum log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define log_error(...)   log_msg(LOG_LEVEL_ERROR, __VA_ARGS__)
#define log_warning(...) log_msg(LOG_LEVEL_WARNING, __VA_ARGS__)
#define log_info(...)    log_msg(LOG_LEVEL_INFO, __VA_ARGS__)
#define log_debug(...)   log_msg(LOG_LEVEL_DEBUG, __VA_ARGS__)

/* At level packet: one line per MQTT packet with a hex dump (passwords masked). */
void log_packet(bool out, const MqttPacket *pkt, View raw);
