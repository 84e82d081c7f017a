# SPDX-License-Identifier: MIT
"""A strict parser of the text format mqttbridge writes for Prometheus (the Prometheus text
format, which node_exporter's textfile collector reads, closed by OpenMetrics' # EOF), for the
tests: raises ValueError naming the line for anything that format does not allow; returns
{family: {"type": ..., "help": ..., "samples": [(name, labels, value)]}}. As in that format, a
counter's family is named with its _total, and its one sample has that name."""
import math
import re

NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
SAMPLE = re.compile(rf"^({NAME})(\{{(.*)\}})? (\S+)$")
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"')
TYPES = {"counter", "gauge", "histogram", "gaugehistogram", "summary", "info", "stateset",
         "unknown"}
SUFFIXES = {"counter": ("",), "histogram": ("_bucket", "_sum", "_count",
                                                             "_created"),
            "gauge": ("",), "unknown": ("",)}


def parse_labels(text, where):
    labels, pos = {}, 0
    while pos < len(text):
        m = LABEL.match(text, pos)
        if not m or m.group(1) in labels:
            raise ValueError(f"{where}: bad label set {text!r}")
        labels[m.group(1)] = m.group(2)
        pos = m.end()
        if pos < len(text):
            if text[pos] != ",":
                raise ValueError(f"{where}: bad label set {text!r}")
            pos += 1
    return labels


def family_of(name, families, current):
    if current and any(name == current + s for s in SUFFIXES.get(families[current]["type"], ("",))):
        return current
    raise ValueError(f"sample {name} does not belong to family {current}")


def check_histogram(name, fam):
    buckets = [(s[1].get("le"), s[2]) for s in fam["samples"] if s[0] == name + "_bucket"]
    if not buckets or buckets[-1][0] != "+Inf":
        raise ValueError(f"{name}: the last bucket must be le=\"+Inf\"")
    les = [float(le) for le, _ in buckets]
    counts = [v for _, v in buckets]
    if les != sorted(les) or len(set(les)) != len(les) or counts != sorted(counts):
        raise ValueError(f"{name}: buckets not in order or not cumulative")
    count = [s[2] for s in fam["samples"] if s[0] == name + "_count"]
    if count != [counts[-1]]:
        raise ValueError(f"{name}: _count {count} is not the +Inf bucket {counts[-1]}")
    if not [s for s in fam["samples"] if s[0] == name + "_sum"]:
        raise ValueError(f"{name}: no _sum")


def parse(text):
    if not text.endswith("# EOF\n"):
        raise ValueError("the exposition must end with '# EOF' and a newline")
    families, current, seen = {}, None, set()
    for i, line in enumerate(text[:-len("# EOF\n")].split("\n")[:-1], 1):
        where = f"line {i}"
        if line.startswith("# "):
            parts = line.split(" ", 3)
            if len(parts) < 4 or parts[1] not in ("HELP", "TYPE", "UNIT") or \
                    not re.fullmatch(NAME, parts[2]):
                raise ValueError(f"{where}: bad metadata {line!r}")
            name = parts[2]
            if name != current:
                if name in seen:
                    raise ValueError(f"{where}: family {name} interleaved")
                seen.add(name)
                current = name
                families[name] = {"type": "unknown", "help": None, "samples": []}
            if families[name]["samples"]:
                raise ValueError(f"{where}: metadata after samples of {name}")
            if parts[1] == "TYPE":
                if parts[3] not in TYPES:
                    raise ValueError(f"{where}: unknown type {parts[3]}")
                families[name]["type"] = parts[3]
            elif parts[1] == "HELP":
                families[name]["help"] = parts[3]
            continue
        m = SAMPLE.match(line)
        if not m:
            raise ValueError(f"{where}: not a sample {line!r}")
        fam = family_of(m.group(1), families, current)
        value = float(m.group(4))
        if math.isnan(value) or (families[fam]["type"] == "counter" and value < 0):
            raise ValueError(f"{where}: bad value {m.group(4)}")
        families[fam]["samples"].append((m.group(1), parse_labels(m.group(3) or "", where),
                                         value))
    for name, fam in families.items():
        if not fam["samples"]:
            raise ValueError(f"family {name} has no samples")
        if fam["help"] is None:
            raise ValueError(f"family {name} has no HELP")
        if fam["type"] == "counter" and not name.endswith("_total"):
            raise ValueError(f"counter {name} is not named ..._total")
        if fam["type"] == "histogram":
            check_histogram(name, fam)
    return families
