#!/bin/sh
# SPDX-License-Identifier: MIT
# A worker that resumes, with mqttctl: each run processes the next COUNT jobs of the named
# session and acknowledges them, so the runs together see every job once.
# Usage: worker.sh SESSION FILTER COUNT   (socket: $MQTTBRIDGE_SOCKET or the default)
set -eu
${MQTTCTL:-mqttctl} sub --session "$1" -t "$2" -q 1 -C "$3" |
  while read -r job; do
    printf 'done: %s\n' "$job"   # the work, one line per job
  done
