# SPDX-License-Identifier: MIT
"""mqttbridge: the aiomqttc API over mqttbridged's local socket.

    from mqttbridge import MQTTClient, MqttStats

An aiomqttc program moves to the daemon by changing its import; see docs/clients.md.
"""
from .client import Message, MQTTClient, topic_matches
from .connection import Closed, Connection, Error
from .stats import MqttStats

__version__ = "0.1.0"
__all__ = ["MQTTClient", "MqttStats", "Message", "Error", "Closed", "Connection",
           "topic_matches", "__version__"]
