#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""A worker that resumes: it processes jobs in a named session of mqttbridged and
acknowledges each one once done, so a restart (or a crash) loses nothing and repeats only
what was not acknowledged.

Usage: worker.py SESSION FILTER [COUNT]   process COUNT jobs (default: until killed)

Each job's payload is printed as "seq payload" (with " (again)" when it is a redelivery);
the socket is $MQTTBRIDGE_SOCKET, else /run/mqttbridge/mqttbridge.sock.
"""
import json
import os
import socket
import sys


def main(session, filt, count):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(os.environ.get("MQTTBRIDGE_SOCKET", "/run/mqttbridge/mqttbridge.sock"))
    lines = sock.makefile("rb")

    def send(**request):
        sock.sendall((json.dumps(request) + "\n").encode())

    send(id="session", op="session", name=session, expiry=3600)
    # Subscribing again on resume is harmless; retain_handling 1: no retained messages again.
    send(id="sub", op="subscribe", filter=filt, qos=1, retain_handling=1)
    done = 0
    for line in lines:
        msg = json.loads(line)
        if "error" in msg:
            sys.exit(f"{msg['id']}: {msg['error']['message']}")
        if msg.get("event") != "message":
            continue
        again = " (again)" if msg.get("redelivered") else ""
        print(f"{msg['seq']} {msg.get('payload')}{again}", flush=True)  # the work
        send(op="ack", seq=msg["seq"])  # done: never sent again
        done += 1
        if count and done == count:
            return 0
    return 1


if __name__ == "__main__":
    if len(sys.argv) not in (3, 4):
        sys.exit(__doc__)
    sys.exit(main(sys.argv[1], sys.argv[2], int(sys.argv[3]) if len(sys.argv) == 4 else 0))
