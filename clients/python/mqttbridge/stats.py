# SPDX-License-Identifier: MIT
"""MqttStats, as aiomqttc has it: counters recorded by its methods. Given to an MQTTClient it is
filled from the daemon instead (the daemon's broker session is the one that sends and
receives): get_stats() asks the daemon then, and reset() starts the counts again from the
daemon's current values."""
import json
import socket

KEYS = ("packets_sent", "packets_received", "bytes_sent", "bytes_received", "pub_ok_count",
        "pub_fail_count", "pub_rtt_ms", "pub_package_avg_size", "sub_package_avg_size",
        "connections_sent", "connections_failed", "ping_sent_count", "ping_received_count",
        "ping_rtt_ms")
AVERAGES = ("pub_rtt_ms", "pub_package_avg_size", "sub_package_avg_size", "ping_rtt_ms")


class MqttStats:
    """Statistics of an MQTT client; get_stats() returns the 14 keys of aiomqttc."""

    def __init__(self):
        self._daemon = None    # the daemon's counters when a client fills this object
        self._baseline = {}    # ... as they were at the last reset()
        self._source = None    # the daemon's socket, once a client fills this object
        self.reset()

    def reset(self):
        """Start again from zero."""
        self.packets_sent = self.packets_received = 0
        self.bytes_sent = self.bytes_received = 0
        self.pub_ok_count = self.pub_fail_count = 0
        self._pub_rtt_sum = self._pub_rtt_n = 0
        self._pub_size_sum = self._pub_size_n = 0
        self._sub_size_sum = self._sub_size_n = 0
        self.connections_sent = self.connections_failed = 0
        self.ping_sent_count = self.ping_received_count = 0
        self._ping_rtt_sum = 0
        if self._source is not None:
            self._ask_daemon()
        if self._daemon is not None:
            self._baseline = dict(self._daemon)

    def publish(self, status: bool, rtt_ms: int, packet_size: int) -> None:
        """Record one publish: whether it succeeded, its round trip and its packet size."""
        self.packets_sent += 1
        self.bytes_sent += packet_size
        self._pub_size_sum += packet_size
        self._pub_size_n += 1
        if status:
            self.pub_ok_count += 1
            self._pub_rtt_sum += rtt_ms
            self._pub_rtt_n += 1
        else:
            self.pub_fail_count += 1

    def receive(self, packet_size: int) -> None:
        """Record one packet received."""
        self.packets_received += 1
        self.bytes_received += packet_size
        self._sub_size_sum += packet_size
        self._sub_size_n += 1

    def connect(self):
        self.connections_sent += 1

    def connect_fail(self):
        self.connections_failed += 1

    def ping_sent(self):
        self.ping_sent_count += 1

    def ping_received(self, rtt_ms: int) -> None:
        self.ping_received_count += 1
        self._ping_rtt_sum += rtt_ms

    def get_stats(self) -> dict:
        """The 14 statistics as a dict of ints (when a client fills this object: the daemon's,
        asked now, with a half-second bound; the last ones it gave if it does not answer)."""
        if self._source is not None:
            self._ask_daemon()
        if self._daemon is not None:
            return {k: self._daemon.get(k, 0) if k in AVERAGES
                    else max(0, self._daemon.get(k, 0) - self._baseline.get(k, 0)) for k in KEYS}

        def avg(total, n):
            return round(total / n) if n else 0
        return {
            "packets_sent": self.packets_sent,
            "packets_received": self.packets_received,
            "bytes_sent": self.bytes_sent,
            "bytes_received": self.bytes_received,
            "pub_ok_count": self.pub_ok_count,
            "pub_fail_count": self.pub_fail_count,
            "pub_rtt_ms": avg(self._pub_rtt_sum, self._pub_rtt_n),
            "pub_package_avg_size": avg(self._pub_size_sum, self._pub_size_n),
            "sub_package_avg_size": avg(self._sub_size_sum, self._sub_size_n),
            "connections_sent": self.connections_sent,
            "connections_failed": self.connections_failed,
            "ping_sent_count": self.ping_sent_count,
            "ping_received_count": self.ping_received_count,
            "ping_rtt_ms": avg(self._ping_rtt_sum, self.ping_received_count),
        }

    def _fill(self, daemon_stats, source=None):
        """The daemon's counters (MQTTClient calls this), and its socket to ask again."""
        self._daemon = {k: int(daemon_stats.get(k) or 0) for k in KEYS}
        self._source = source or self._source

    def _ask_daemon(self):
        """The daemon's counters now, over a short connection of its own (a local socket the
        daemon answers at once: this is as quick as reading a file)."""
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(0.5)
                s.connect(self._source)
                s.sendall(b'{"id":1,"op":"stats"}\n')
                buf = b""
                while not buf.endswith(b"\n"):
                    chunk = s.recv(65536)
                    if not chunk:
                        return
                    buf += chunk
            reply = json.loads(buf)
            if reply.get("ok"):
                self._fill(reply["stats"])
        except (OSError, ValueError):
            pass  # the last values stand
