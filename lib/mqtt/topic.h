/* SPDX-License-Identifier: MIT */
/*
 * MQTT 3.1.1 topic names and topic filters (spec section 4.7): validation and matching.
 *
 * A topic name is what a PUBLISH carries: non-empty, no wildcards. A topic filter is what a
 * SUBSCRIBE carries: '+' stands for exactly one level and must fill it, '#' for any number of
 * trailing levels and must be the last level. Filters starting with a wildcard never match
 * topics starting with '$' (the broker's $SYS tree, 4.7.2). A shared subscription filter
 * "$share/GROUP/FILTER" is accepted by mqtt_filter_check and matched through its FILTER part.
 */
#pragma once

#include "buf.h"

#define MQTT_TOPIC_MAX 65535

/* 0, or a negative MQTT_E_* code (codec.h) saying what is wrong. */
int mqtt_topic_check(View topic);
int mqtt_filter_check(View filter);

/* The part of a filter that is matched against topics: FILTER for "$share/GROUP/FILTER",
 * else the filter itself. Only meaningful for a filter that passed mqtt_filter_check. */
View mqtt_filter_target(View filter);

/* Whether a valid topic name matches a valid filter (shared prefix included). */
bool mqtt_topic_matches(View filter, View topic);
