"""Prometheus metrics of a serving process, on a registry of its own (``GET /metrics``).

Two kinds of metric live here:

- observed by the serving code as things happen: request latency per route, freshness per
  worker batch, events accepted by ``POST /events``, users deleted, champion reloads;
- read at scrape time from the worker's counters (`streaming.worker_stats.WorkerStats`), the
  champion watcher's (`consolidation.reload.ChampionWatcher`) and the feature store client's
  (`SourceCollector`), so nothing is counted twice.

Names (all prefixed ``fastslow_``):

=======================================  =========  ===============================================
name                                     type       what
=======================================  =========  ===============================================
http_request_duration_seconds            histogram  per method, route template and status
events_accepted_total                    counter    events validated and acknowledged by Kafka
events_rejected_total                    counter    events refused by ``POST /events`` (422)
recommendations_total                    counter    per ``cold_start`` (true/false)
users_deleted_total                      counter    ``DELETE /users/{id}`` calls answered
freshness_seconds                        histogram  Kafka timestamp of a batch's last record to the
                                                    end of its apply (one observation per batch)
champion_version                         gauge      registry version of the slow model serving
champion_reloads_total                   counter    hot reloads done (by the champion watcher)
champion_reload_failures_total           counter    watcher polls that failed (see the log)
events_consumed_total                    counter    messages the in-process worker read
events_applied_total                     counter    events it learned
dlq_total                                counter    messages it sent to the dead-letter topic
rate_limited_total                       counter    of those, events over their user's rate limit
duplicates_total                         counter    redelivered events it skipped
offset_resets_total                      counter    resumed positions given up: another topic
                                                    incarnation's, or past the log end
consumer_lag                             gauge      per partition: high watermark - next offset
                                                    (negative: past the log end)
consumer_lag_total                       gauge      summed over its partitions (by distance)
feature_reads_total / feature_missing_   counter    per view: online feature reads, and those that
total                                               fell back to defaults (when a store is set)
=======================================  =========  ===============================================

>>> metrics = ServingMetrics()
>>> metrics.champion_version.set(3)
>>> metrics.watch(lambda: {"worker": None, "watcher": None, "features": None})
>>> text = metrics.render().decode()
>>> "fastslow_champion_version 3.0" in text, "fastslow_champion_reloads_total 0.0" in text
(True, True)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS = (0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
FRESHNESS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class ServingMetrics:
    """The metrics of one serving process (see the module docstring)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.request_seconds = Histogram("fastslow_http_request_duration_seconds", "HTTP request latency",
                                         ("method", "route", "status"), buckets=LATENCY_BUCKETS, registry=r)
        self.events_accepted = Counter("fastslow_events_accepted", "Events accepted by POST /events "
                                       "(validated, acknowledged by Kafka)", registry=r)
        self.events_rejected = Counter("fastslow_events_rejected", "Events refused by POST /events", registry=r)
        self.recommendations = Counter("fastslow_recommendations", "Recommendation lists served",
                                       ("cold_start",), registry=r)
        self.users_deleted = Counter("fastslow_users_deleted", "DELETE /users/{id} calls answered", registry=r)
        self.freshness = Histogram("fastslow_freshness_seconds", "Kafka timestamp of a worker batch's last "
                                   "record to the end of its apply", buckets=FRESHNESS_BUCKETS, registry=r)
        self.champion_version = Gauge("fastslow_champion_version", "Registry version of the slow model "
                                      "serving (0: not from the registry)", registry=r)

    def watch(self, source: Callable[[], dict[str, Any]]) -> None:
        """Also report counters of the worker, watcher and feature store that ``source()`` names."""
        self.registry.register(SourceCollector(source))

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)


class SourceCollector(Collector):
    """Worker, champion watcher and feature-store counters, read when scraped.

    ``source()`` returns ``{"worker": WorkerStats, "watcher": ChampionWatcher, "features":
    FeatureStoreClient}``, each possibly None.
    """

    def __init__(self, source: Callable[[], tuple[Any, Any]]) -> None:
        self.source = source

    def describe(self) -> list[Metric]:
        return []  # the families depend on what exists at scrape time

    def collect(self) -> Iterator[Metric]:
        sources = self.source()
        watcher = sources.get("watcher")
        yield CounterMetricFamily("fastslow_champion_reloads", "Champion hot reloads",
                                  value=watcher.applied if watcher is not None else 0)
        yield CounterMetricFamily("fastslow_champion_reload_failures", "Champion watcher polls that failed",
                                  value=watcher.errors if watcher is not None else 0)
        if sources.get("worker") is not None:
            yield from _worker_families(sources["worker"])
        if sources.get("features") is not None:
            yield from _feature_families(sources["features"])


def _worker_families(stats: Any) -> Iterator[Metric]:
    for name, value, help_text in (("events_consumed", stats.records, "Messages the in-process worker read"),
                                   ("events_applied", stats.events_applied, "Events the worker learned"),
                                   ("dlq", stats.dlq, "Messages sent to the dead-letter topic"),
                                   ("rate_limited", stats.rate_limited, "Events over their user's rate limit "
                                                                        "(in the dead-letter topic too)"),
                                   ("duplicates", stats.duplicates, "Redelivered events skipped"),
                                   ("offset_resets", stats.offset_resets, "Resumed positions given up: they "
                                    "belonged to another topic incarnation or lay past the log end")):
        yield CounterMetricFamily(f"fastslow_{name}", help_text, value=value)
    lag = GaugeMetricFamily("fastslow_consumer_lag", "Records behind per partition (high watermark minus "
                            "next offset; negative: past the log end)", labels=("partition",))
    for partition, behind in sorted(dict(stats.lag).items()):
        lag.add_metric((str(partition),), behind)
    yield lag
    yield GaugeMetricFamily("fastslow_consumer_lag_total", "Records behind, all assigned partitions (a "
                            "position past the log end counts by its distance)",
                            value=stats.total_lag)


def _feature_families(features: Any) -> Iterator[Metric]:
    reads = CounterMetricFamily("fastslow_feature_reads", "Online feature entity reads", labels=("view",))
    missing = CounterMetricFamily("fastslow_feature_missing", "Online feature reads that fell back to "
                                  "defaults", labels=("view",))
    for view, count in sorted(dict(features.reads).items()):
        reads.add_metric((view,), count)
    for view, count in sorted(dict(features.missing).items()):
        missing.add_metric((view,), count)
    yield reads
    yield missing
