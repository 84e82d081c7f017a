#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Subscribe and publish through mqttbridged with only the Python standard library.

Usage: pubsub.py [SOCKET]   (default: $MQTTBRIDGE_SOCKET or /run/mqttbridge/mqttbridge.sock)

Subscribes to a topic, publishes three messages to it at QoS 1, prints them as they come
back, and exits 0 when all three arrived.
"""
import json
import os
import socket
import sys


class Bridge:
    """One connection to mqttbridged: requests out, replies and events in."""

    def __init__(self, path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(path)
        self.sock.settimeout(10)
        self.file = self.sock.makefile("rb")
        self.next_id = 0
        self.events = []

    def request(self, op, **fields):
        """Send a request and return its reply; events read meanwhile are kept."""
        self.next_id += 1
        line = json.dumps({"id": self.next_id, "op": op, **fields}) + "\n"
        self.sock.sendall(line.encode())
        while True:
            msg = self.read()
            if "event" in msg:
                self.events.append(msg)
            elif msg.get("id") == self.next_id:
                if not msg["ok"]:
                    raise RuntimeError(f"{op}: {msg['error']['code']}: {msg['error']['message']}")
                return msg

    def read(self):
        line = self.file.readline()
        if not line:
            raise EOFError("mqttbridged closed the connection")
        return json.loads(line)

    def event(self):
        return self.events.pop(0) if self.events else self.read()


def main():
    path = (sys.argv[1] if len(sys.argv) > 1
            else os.environ.get("MQTTBRIDGE_SOCKET", "/run/mqttbridge/mqttbridge.sock"))
    bridge = Bridge(path)
    topic = f"examples/python/{os.getpid()}"
    granted = bridge.request("subscribe", filter=topic, qos=1)["granted_qos"]
    print(f"subscribed to {topic} (granted QoS {granted})")
    for n in range(3):
        bridge.request("publish", topic=topic, payload=f"message {n}", qos=1)
    got = 0
    while got < 3:
        ev = bridge.event()
        if ev["event"] == "message":
            print(f"{ev['topic']}: {ev['payload']}")
            got += 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
