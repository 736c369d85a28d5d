"""One ``/metrics`` for all ``--workers``: the worker a scrape reaches adds its siblings' metrics.

Each worker counts its own requests. Without this, a scrape shows whichever worker the kernel
handed the connection to, so ``smartproxy_requests_total`` jumps between two workers' counts and
Prometheus reads every drop as a counter reset. With ``--workers N`` every worker also listens on
a Unix socket in a private folder (``peers_dir``, mode 0700, made by the parent); a scrape asks
the others there for their own metrics (``PEER_HEADER``) and answers the merge:

- counters, histograms (buckets, ``_sum``, ``_count``) and untyped samples are added up;
- ``_created`` samples take the earliest;
- gauges of what each process holds (``SUMMED_GAUGES``: requests in flight) are added up; the other
  gauges (quota used, quota, circuit state) show shared state that every worker reads from the
  storage backend, and config reloads happen in every worker: they take the largest value;
- a sibling that does not answer within ``PEER_TIMEOUT`` (it is restarting) is left out, and its
  count with it, as if it had restarted.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

PEER_HEADER = "X-SmartProxy-Peer"  # a sibling asks for this worker's own metrics only
PEER_TIMEOUT = 2.0  # seconds a scrape waits for a sibling
SOCKET_NAME = "worker-{}.sock"

SUMMED_GAUGES = frozenset({"smartproxy_in_flight_requests", "smartproxy_channel_in_flight"})
LARGEST = frozenset({"smartproxy_config_reloads"})  # counters that every worker counts alike


@dataclass
class _Family:
    name: str
    documentation: str
    type: str
    unit: str
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = field(default_factory=dict)


def merge(texts: Iterable[str]) -> bytes:
    """Prometheus text of several processes -> one text with their values merged."""
    families: dict[str, _Family] = {}
    for text in texts:
        for metric in text_string_to_metric_families(text):
            fam = families.get(metric.name)
            if fam is None:
                fam = families[metric.name] = _Family(
                    metric.name, metric.documentation, metric.type, metric.unit
                )
            largest = metric.type == "gauge" and metric.name not in SUMMED_GAUGES
            largest = largest or metric.name in LARGEST
            for s in metric.samples:
                key = (s.name, tuple(sorted(s.labels.items())))
                old = fam.samples.get(key)
                if old is None:
                    fam.samples[key] = s.value
                elif s.name.endswith("_created"):
                    fam.samples[key] = min(old, s.value)
                elif largest or metric.type == "info":
                    fam.samples[key] = max(old, s.value)
                else:
                    fam.samples[key] = old + s.value
    return generate_latest(_Collected(families.values()))


class _Collected:
    """What ``generate_latest`` asks of a registry: ``collect()``."""

    def __init__(self, families: Iterable[_Family]) -> None:
        self._families = list(families)

    def collect(self) -> Iterator[Metric]:
        for fam in self._families:
            metric = Metric(fam.name, fam.documentation, fam.type, fam.unit)
            metric.samples = [
                Sample(name, dict(labels), value) for (name, labels), value in fam.samples.items()
            ]
            yield metric


def peer_sockets(peers_dir: str, own: str) -> list[str]:
    """The sockets of the other workers now in ``peers_dir``."""
    try:
        names = sorted(os.listdir(peers_dir))
    except OSError:
        return []
    return [
        os.path.join(peers_dir, n)
        for n in names
        if n.endswith(".sock") and os.path.join(peers_dir, n) != own
    ]


async def peer_text(path: str, timeout: float = PEER_TIMEOUT) -> str | None:
    """One sibling's own metrics over its Unix socket, or None if it does not answer."""
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_unix_connection(path)
            try:
                # HTTP/1.0: the answer is not chunked and ends with the connection.
                writer.write(f"GET /metrics HTTP/1.0\r\n{PEER_HEADER}: 1\r\n\r\n".encode())
                data = await reader.read()
            finally:
                writer.close()
    except (OSError, TimeoutError):
        return None
    head, _, body = data.partition(b"\r\n\r\n")
    if head.split(b" ", 2)[1:2] != [b"200"]:
        return None
    return body.decode("utf-8", "replace")


def asked_by_a_peer(request: Any) -> bool:
    """A sibling worker asking for this one's own metrics: the header, on the Unix socket."""
    if PEER_HEADER not in request.headers or request.transport is None:
        return False
    return isinstance(request.transport.get_extra_info("sockname"), str)
