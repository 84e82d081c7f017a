/* SPDX-License-Identifier: MIT */
/* Every default and limit of mqttbridge in one place (see ../shared/spec/config.md). */
#pragma once

#define DEFAULT_CONFIG_FILE "/etc/mqttbridge/mqttbridged.conf"
#define DEFAULT_SOCKET      "/run/mqttbridge/mqttbridge.sock"
#define DEFAULT_UNMOUNTED   "$aws/#, $SYS/#" /* [topics] unmounted */

#define DEFAULT_BROKER_HOST         "localhost"
#define DEFAULT_BROKER_PORT         1883
#define DEFAULT_KEEPALIVE           60
#define DEFAULT_CONNECT_TIMEOUT     10
#define DEFAULT_RECONNECT_MIN       1
#define DEFAULT_RECONNECT_MAX       60
#define DEFAULT_MAX_INFLIGHT        20
#define DEFAULT_PUBLISH_TIMEOUT     30
#define MIN_MAXIMUM_PACKET_SIZE     1024 /* [broker] maximum_packet_size, when not 0 */
#define DEFAULT_TOPIC_ALIAS_MAXIMUM 64   /* incoming aliases we accept (MQTT 5) */
#define MAX_BROKER_HOSTS            16

#define DEFAULT_IPC_MODE       0660
#define DEFAULT_MAX_CLIENTS    1024
#define DEFAULT_MAX_LINE       1048576
#define DEFAULT_CLIENT_BUFFER  4194304
#define MAX_SUBS_PER_CLIENT    10000
#define MAX_WAITERS_PER_CLIENT 16384 /* requests of one connection waiting for the broker */

#define DEFAULT_QUEUE_MAX_MESSAGES 100000
#define DEFAULT_QUEUE_MAX_BYTES    67108864

/* The publish path keeps a few blocks for reuse (session messages and waiters: spares.h;
 * request ids: ipc/fast.h). An ASan build keeps none (meson.build defines MQTTBRIDGE_NO_SPARES):
 * every block is freed, so a stale pointer is reported instead of reading whatever reused the
 * block. */
#ifdef MQTTBRIDGE_NO_SPARES
#define KEEP_SPARES 0
#else
#define KEEP_SPARES 1
#endif
