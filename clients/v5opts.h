/* SPDX-License-Identifier: MIT */
/*
 * mqttctl's MQTT 5 options, spelt as mosquitto_pub, mosquitto_sub and mosquitto_rr spell
 * them: -D publish PROPERTY VALUE into the fields of a publish or request, and sub's -F
 * output format.
 */
#pragma once

#include <jansson.h>
#include <stddef.h>

/* After getopt returned -D with `command` (optarg): read PROPERTY and its value(s) from
 * argv[*next...], advancing *next, into `fields` (the request's MQTT 5 fields). 0, or -1 with
 * what is wrong in err (n bytes). */
int v5_define(json_t *fields, const char *command, int argc, char **argv, int *next, char *err,
              size_t n);

/* `fields` as the text to add inside a request object: "" or ",\"k\":v,..." (malloc'd). */
char *v5_fragment(json_t *fields);

/* A message event printed as -F says: %t topic, %p payload, %q QoS, %r retain (0/1), %P its
 * user properties as name:value separated by spaces, %% a percent sign; \n, \t and \\ as in
 * C; a newline after each. -1 when stdout is closed, else 0. */
int v5_print_format(json_t *event, const char *format);
