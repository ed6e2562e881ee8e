"""Counters for `/-/metrics` and `/-/status`: plain ints on the hot path, prometheus at scrape.

With `server.workers > 1` each worker publishes its counters to a file of its own in the
supervisor's private directory (every PUBLISH_SECONDS, and before it answers a scrape); a scrape
or the status page sums every worker's file, so each answer shows the whole process group.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import json
import os
import time
from collections import Counter, deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware
from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.utils import floatToGoString

from .log import redact

PREFIX = "gitlab_pypi_proxy"
UpstreamKind = Literal["page", "file", "probe", "api"]
PageState = Literal["HIT", "MISS", "STALE"]
# Uploads' invalidations: told to the other replicas, not told (Redis down), heard from them.
InvalidationKind = Literal["sent", "unsent", "received"]
SharedTierEvent = Literal["hit", "miss", "error", "bad", "uploaded", "upload_failed", "bytes_read"]
# Seconds: GitLab answers a simple page in tens of milliseconds when well, seconds when not.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
TOP_PACKAGES = 10
# Names beyond this are dropped (least requested first), so clients cannot grow it without bound.
TRACKED_PACKAGES = 1000
RECENT_ERRORS = 20
RECENT_BLOCKS = 20
RECENT_LATENCIES = 100
UNMATCHED = "unmatched"
# How stale another worker's counters may be in a scrape; a worker's own are always current.
PUBLISH_SECONDS = 0.2


@dataclass(frozen=True, slots=True)
class UpstreamFailure:
    at: float
    kind: str
    message: str


@dataclass(frozen=True, slots=True)
class PolicyBlock:
    """One request the [policy] rules refused: `what` is the file or the package name."""

    at: float
    rule: str
    what: str


@dataclass(slots=True)
class Totals:
    """Every counter of one process, or summed over the process group."""

    requests: dict[tuple[str, int], int] = field(default_factory=dict)
    page_hits: int = 0
    page_misses: int = 0
    page_stale: int = 0
    file_hits: int = 0
    file_misses: int = 0
    served_bytes: int = 0
    fetched_bytes: dict[str, int] = field(default_factory=dict)
    evictions: int = 0
    evicted_bytes: int = 0
    metadata_replaced: int = 0
    upstream_errors: dict[str, int] = field(default_factory=dict)
    invalidations: dict[str, int] = field(default_factory=dict)
    redis_outages: int = 0
    # The shared tier's answers (hit, miss, error, bad), uploads and bytes read back.
    shared_tier: dict[str, int] = field(default_factory=dict)
    packages: Counter[str] = field(default_factory=Counter)
    recent_errors: list[UpstreamFailure] = field(default_factory=list)
    # Requests refused by the [policy] rules, by rule, and the latest of them.
    policy_blocks: dict[str, int] = field(default_factory=dict)
    recent_blocks: list[PolicyBlock] = field(default_factory=list)
    recent_latencies: list[float] = field(default_factory=list)
    # kind -> observations per bucket of LATENCY_BUCKETS (the last one +Inf), and their sum.
    latency_counts: dict[str, list[int]] = field(default_factory=dict)
    latency_sums: dict[str, float] = field(default_factory=dict)
    upstream_last_ok: float | None = None
    upstream_last_error: float | None = None
    # GitLab's status when it last refused the proxy's own credentials (None: accepted), and
    # when that was learnt: across workers the latest word wins.
    token_refused: int | None = None
    token_checked_at: float = 0.0
    started: float = 0.0

    def hit_ratio(self) -> float | None:
        """Pages and files answered from the cache, of all that were looked up."""
        hits = self.page_hits + self.file_hits
        total = hits + self.page_misses + self.page_stale + self.file_misses
        return hits / total if total else None

    def median_latency(self) -> float | None:
        if not self.recent_latencies:
            return None
        ordered = sorted(self.recent_latencies)
        return ordered[len(ordered) // 2]

    def to_json(self) -> str:
        document = {
            name: getattr(self, name)
            for name in self.__slots__
            if name not in ("requests", "recent_errors", "recent_blocks")
        }
        document["requests"] = [[r, s, n] for (r, s), n in self.requests.items()]
        document["recent_errors"] = [[e.at, e.kind, e.message] for e in self.recent_errors]
        document["recent_blocks"] = [[b.at, b.rule, b.what] for b in self.recent_blocks]
        return json.dumps(document)

    @classmethod
    def from_json(cls, text: str) -> Totals:
        document: dict[str, Any] = json.loads(text)
        requests = {(r, s): n for r, s, n in document.pop("requests")}
        errors = [UpstreamFailure(*e) for e in document.pop("recent_errors")]
        blocks = [PolicyBlock(*b) for b in document.pop("recent_blocks", [])]
        packages = Counter(document.pop("packages"))
        return cls(
            requests=requests,
            recent_errors=errors,
            recent_blocks=blocks,
            packages=packages,
            **document,
        )

    def add(self, other: Totals) -> None:
        """Fold another process's counters into these."""
        for key, count in other.requests.items():
            self.requests[key] = self.requests.get(key, 0) + count
        self.page_hits += other.page_hits
        self.page_misses += other.page_misses
        self.page_stale += other.page_stale
        self.file_hits += other.file_hits
        self.file_misses += other.file_misses
        self.served_bytes += other.served_bytes
        self.evictions += other.evictions
        self.evicted_bytes += other.evicted_bytes
        self.metadata_replaced += other.metadata_replaced
        self.redis_outages += other.redis_outages
        for mine, theirs in (
            (self.fetched_bytes, other.fetched_bytes),
            (self.upstream_errors, other.upstream_errors),
            (self.invalidations, other.invalidations),
            (self.shared_tier, other.shared_tier),
            (self.latency_sums, other.latency_sums),
            (self.policy_blocks, other.policy_blocks),
        ):
            for kind, amount in theirs.items():
                mine[kind] = mine.get(kind, 0) + amount  # type: ignore[assignment]
        for kind, counts in other.latency_counts.items():
            mine_counts = self.latency_counts.setdefault(kind, [0] * len(counts))
            self.latency_counts[kind] = [a + b for a, b in zip(mine_counts, counts, strict=True)]
        self.packages.update(other.packages)
        self.recent_errors = sorted(
            self.recent_errors + other.recent_errors, key=lambda e: e.at, reverse=True
        )[:RECENT_ERRORS]
        self.recent_blocks = sorted(
            self.recent_blocks + other.recent_blocks, key=lambda b: b.at, reverse=True
        )[:RECENT_BLOCKS]
        self.recent_latencies = (self.recent_latencies + other.recent_latencies)[-RECENT_LATENCIES:]
        self.upstream_last_ok = _latest(self.upstream_last_ok, other.upstream_last_ok)
        self.upstream_last_error = _latest(self.upstream_last_error, other.upstream_last_error)
        self.started = min(self.started, other.started) if self.started else other.started
        if other.token_checked_at > self.token_checked_at:
            self.token_refused = other.token_refused
            self.token_checked_at = other.token_checked_at


def _latest(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else max(a, b)


class Metrics:
    """One per app. Single-threaded event loop: plain ints need no lock on the hit path.

    `shared`: the directory where the workers of one supervisor publish their counters.
    """

    def __init__(self, shared: Path | None = None) -> None:
        self.shared = shared
        self._published = ""
        self.registry = CollectorRegistry()
        # (route template, status): both bounded, by the route table and by HTTP.
        self.requests: dict[tuple[str, int], int] = {}
        self.page_hits = 0
        self.page_misses = 0
        self.page_stale = 0
        self.file_hits = 0
        self.file_misses = 0
        self.served_bytes = 0
        self.fetched_bytes = {"page": 0, "file": 0}
        self.evictions = 0
        self.evicted_bytes = 0
        # Metadata read by Range that its wheel, once downloaded and verified, contradicted.
        self.metadata_replaced = 0
        self.upstream_errors = {"page": 0, "file": 0, "probe": 0, "api": 0}
        self.invalidations = {"sent": 0, "unsent": 0, "received": 0}
        self.redis_outages = 0
        # None: no cluster.redis_url; else whether this worker hears the other replicas now.
        self.redis_connected: bool | None = None
        self.shared_tier_counts: dict[str, int] = {}
        # Set when storage.url names a tier: its counters show from the start, zeros included.
        self.shared_tier_on = False
        self.packages: Counter[str] = Counter()
        self.recent_errors: deque[UpstreamFailure] = deque(maxlen=RECENT_ERRORS)
        self.policy_blocks: dict[str, int] = {}
        self.recent_blocks: deque[PolicyBlock] = deque(maxlen=RECENT_BLOCKS)
        self.recent_latencies: deque[float] = deque(maxlen=RECENT_LATENCIES)
        self.upstream_last_ok: float | None = None
        self.upstream_last_error: float | None = None
        self._token_refused: int | None = None
        self._token_checked_at = 0.0
        self.started = time.time()
        # Told by the file cache as they change: (bytes, files) it serves, and its fills.
        self._cache_size = (0, 0)
        self.cache_limit = 0
        self._fills_in_flight = 0
        self.latency_counts: dict[str, list[int]] = {}
        self.latency_sums: dict[str, float] = {}
        self.registry.register(_Collector(self))
        ProcessCollector(registry=self.registry)

    def cache_changed(self, size: int, files: int) -> None:
        """The file cache now serves `files` verified files of `size` bytes."""
        self._cache_size = (size, files)

    def cache_size(self) -> tuple[int, int]:
        """Bytes and number of the verified files this worker serves."""
        return self._cache_size

    def fills_changed(self, running: int) -> None:
        """This worker now runs `running` upstream downloads."""
        self._fills_in_flight = running

    def fills_in_flight(self) -> int:
        return self._fills_in_flight

    def request(self, route: str, status: int) -> None:
        key = (route, status)
        self.requests[key] = self.requests.get(key, 0) + 1

    def page_result(self, state: PageState) -> None:
        if state == "HIT":
            self.page_hits += 1
        elif state == "MISS":
            self.page_misses += 1
        else:
            self.page_stale += 1

    def file_hit(self, nbytes: int) -> None:
        self.file_hits += 1
        self.served_bytes += nbytes

    def file_miss(self) -> None:
        self.file_misses += 1

    def fetched(self, kind: Literal["page", "file"], nbytes: int) -> None:
        self.fetched_bytes[kind] += nbytes

    def shared_tier(self, event: SharedTierEvent, amount: int = 1) -> None:
        """One answer of the shared tier, an upload, or `amount` bytes read back from it."""
        self.shared_tier_counts[event] = self.shared_tier_counts.get(event, 0) + amount

    def evicted(self, nbytes: int) -> None:
        """One blob evicted from the cache to stay under cache.max_size."""
        self.evictions += 1
        self.evicted_bytes += nbytes

    def invalidation(self, kind: InvalidationKind) -> None:
        self.invalidations[kind] += 1

    def package_requested(self, name: str) -> None:
        """`name` is normalized; only pages GitLab answered are counted."""
        self.packages[name] += 1
        if len(self.packages) > TRACKED_PACKAGES:
            self.packages = Counter(dict(self.packages.most_common(TRACKED_PACKAGES // 2)))

    def policy_blocked(self, rule: str, what: str) -> None:
        """A request the [policy] rules refused: `what` is the file or package it named."""
        self.policy_blocks[rule] = self.policy_blocks.get(rule, 0) + 1
        self.recent_blocks.appendleft(PolicyBlock(time.time(), rule, what))

    def upstream_answered(self, kind: UpstreamKind, seconds: float, status: int) -> None:
        counts = self.latency_counts.setdefault(kind, [0] * (len(LATENCY_BUCKETS) + 1))
        counts[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.latency_sums[kind] = self.latency_sums.get(kind, 0.0) + seconds
        self.recent_latencies.append(seconds)
        if status < 500 and status != 429:
            self.upstream_last_ok = time.time()

    def upstream_failed(self, kind: UpstreamKind, message: str) -> None:
        """`message` must be client-safe already; it is redacted again on the way in."""
        now = time.time()
        self.upstream_errors[kind] += 1
        self.upstream_last_error = now
        self.recent_errors.appendleft(UpstreamFailure(now, kind, redact(message)))

    @property
    def token_refused(self) -> int | None:
        """GitLab's status when it last refused the proxy's own credentials; None once accepted.

        This worker's word; `totals().token_refused` is the process group's latest.
        """
        return self._token_refused

    @token_refused.setter
    def token_refused(self, status: int | None) -> None:
        self._token_refused = status
        self._token_checked_at = time.time()

    def own(self) -> Totals:
        """This process's counters (copies: the event loop goes on counting)."""
        return Totals(
            requests=dict(self.requests),
            page_hits=self.page_hits,
            page_misses=self.page_misses,
            page_stale=self.page_stale,
            file_hits=self.file_hits,
            file_misses=self.file_misses,
            served_bytes=self.served_bytes,
            fetched_bytes=dict(self.fetched_bytes),
            evictions=self.evictions,
            evicted_bytes=self.evicted_bytes,
            metadata_replaced=self.metadata_replaced,
            upstream_errors=dict(self.upstream_errors),
            invalidations=dict(self.invalidations),
            redis_outages=self.redis_outages,
            shared_tier=dict(self.shared_tier_counts),
            packages=Counter(self.packages),
            recent_errors=list(self.recent_errors),
            policy_blocks=dict(self.policy_blocks),
            recent_blocks=list(self.recent_blocks),
            recent_latencies=list(self.recent_latencies),
            latency_counts={k: list(v) for k, v in self.latency_counts.items()},
            latency_sums=dict(self.latency_sums),
            upstream_last_ok=self.upstream_last_ok,
            upstream_last_error=self.upstream_last_error,
            token_refused=self._token_refused,
            token_checked_at=self._token_checked_at,
            started=self.started,
        )

    def totals(self) -> Totals:
        """The process group's counters: this worker's now, the others' as last published."""
        if self.shared is None:
            return self.own()
        self.publish()
        totals = Totals()
        for path in self.shared.glob("*.json"):
            with contextlib.suppress(OSError, ValueError):
                totals.add(Totals.from_json(path.read_text()))
        return totals

    def publish(self) -> None:
        """Replace this worker's file in `shared` with its counters, if they changed."""
        if self.shared is None:
            return
        text = self.own().to_json()
        if text == self._published:
            return
        path = self.shared / f"{os.getpid()}.json"
        temp = path.with_suffix(".tmp")
        temp.write_text(text)
        # Atomic: a reader sees the old counters or the new ones, never half a file.
        temp.replace(path)
        self._published = text

    async def run_publisher(self) -> None:
        """Publish every PUBLISH_SECONDS until cancelled, then once more."""
        try:
            while True:
                await asyncio.sleep(PUBLISH_SECONDS)
                self.publish()
        finally:
            self.publish()

    def render(self) -> web.Response:
        """The Prometheus text format (0.0.4: what every Prometheus version parses)."""
        body = generate_latest(self.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_PLAIN_0_0_4})


class _Collector:
    """Turns the plain counters into metric families when Prometheus scrapes."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterable[Metric]:
        m = self.metrics.totals()
        requests = CounterMetricFamily(
            f"{PREFIX}_requests",
            "HTTP requests answered, by route template",
            labels=["route", "status"],
        )
        for (route, status), count in m.requests.items():
            requests.add_metric([route, str(status)], count)
        yield requests
        hits = CounterMetricFamily(
            f"{PREFIX}_cache_hits", "Answered from the cache", labels=["kind"]
        )
        hits.add_metric(["page"], m.page_hits)
        hits.add_metric(["file"], m.file_hits)
        yield hits
        misses = CounterMetricFamily(
            f"{PREFIX}_cache_misses", "Fetched from upstream to answer", labels=["kind"]
        )
        misses.add_metric(["page"], m.page_misses)
        misses.add_metric(["file"], m.file_misses)
        yield misses
        yield CounterMetricFamily(
            f"{PREFIX}_cache_stale",
            "Pages answered from the last good copy because GitLab failed",
            value=m.page_stale,
        )
        yield CounterMetricFamily(
            f"{PREFIX}_cache_served_bytes",
            "Bytes of cached files answered (a range request counts the whole file)",
            value=m.served_bytes,
        )
        fetched = CounterMetricFamily(
            f"{PREFIX}_upstream_fetched_bytes", "Bytes received from upstream", labels=["kind"]
        )
        for kind, nbytes in m.fetched_bytes.items():
            fetched.add_metric([kind], nbytes)
        yield fetched
        errors = CounterMetricFamily(
            f"{PREFIX}_upstream_errors",
            "Upstream failures: unreachable, timeouts, 5xx, 429, refused credentials, bad files",
            labels=["kind"],
        )
        for kind, count in m.upstream_errors.items():
            errors.add_metric([kind], count)
        yield errors
        if self.metrics.shared_tier_on or m.shared_tier:
            answers = CounterMetricFamily(
                f"{PREFIX}_shared_tier_requests",
                "Shared tier look-ups: hit, miss, error (down, slow, refused), bad (removed)",
                labels=["result"],
            )
            for result in ("hit", "miss", "error", "bad"):
                answers.add_metric([result], m.shared_tier.get(result, 0))
            yield answers
            uploads = CounterMetricFamily(
                f"{PREFIX}_shared_tier_uploads",
                "Blobs and page copies put to the shared tier, or that failed to be",
                labels=["result"],
            )
            uploads.add_metric(["ok"], m.shared_tier.get("uploaded", 0))
            uploads.add_metric(["failed"], m.shared_tier.get("upload_failed", 0))
            yield uploads
            yield CounterMetricFamily(
                f"{PREFIX}_shared_tier_read_bytes",
                "Bytes of files read back from the shared tier",
                value=m.shared_tier.get("bytes_read", 0),
            )
        yield CounterMetricFamily(
            f"{PREFIX}_cache_evictions",
            "Files evicted to stay under cache.max_size",
            value=m.evictions,
        )
        yield CounterMetricFamily(
            f"{PREFIX}_cache_evicted_bytes", "Bytes of evicted files", value=m.evicted_bytes
        )
        yield CounterMetricFamily(
            f"{PREFIX}_core_metadata_replaced",
            "Core metadata read by Range that differed from the verified wheel's, so replaced",
            value=m.metadata_replaced,
        )
        if self.metrics.redis_connected is not None:
            invalidations = CounterMetricFamily(
                f"{PREFIX}_cluster_invalidations",
                "Uploads' page invalidations: sent to the other replicas, unsent (Redis down), "
                "received from them",
                labels=["kind"],
            )
            for kind, count in m.invalidations.items():
                invalidations.add_metric([kind], count)
            yield invalidations
            yield CounterMetricFamily(
                f"{PREFIX}_cluster_redis_outages",
                "Times a worker lost Redis (cluster.redis_url) and with it the other replicas",
                value=m.redis_outages,
            )
            yield GaugeMetricFamily(
                f"{PREFIX}_cluster_redis_connected",
                "1 while this worker hears the other replicas' invalidations through Redis",
                value=1 if self.metrics.redis_connected else 0,
            )
        blocks = CounterMetricFamily(
            f"{PREFIX}_policy_blocks",
            "Requests the [policy] rules refused: too young, of unknown age, protected names",
            labels=["rule"],
        )
        for rule, count in m.policy_blocks.items():
            blocks.add_metric([rule], count)
        yield blocks
        latency = HistogramMetricFamily(
            f"{PREFIX}_upstream_latency_seconds",
            "Seconds until GitLab (or object storage) answered with headers",
            labels=["kind"],
        )
        for kind, counts in m.latency_counts.items():
            bounds = [*map(floatToGoString, LATENCY_BUCKETS), "+Inf"]
            cumulative = [sum(counts[: i + 1]) for i in range(len(counts))]
            latency.add_metric(
                [kind], list(zip(bounds, cumulative, strict=True)), m.latency_sums[kind]
            )
        yield latency
        # Gauges are this worker's view: the cache index every worker shares, its own fills.
        size, files = self.metrics.cache_size()
        yield GaugeMetricFamily(f"{PREFIX}_cache_size_bytes", "Bytes of verified files", value=size)
        yield GaugeMetricFamily(f"{PREFIX}_cache_files", "Verified files in the cache", value=files)
        yield GaugeMetricFamily(
            f"{PREFIX}_cache_max_size_bytes", "cache.max_size", value=self.metrics.cache_limit
        )
        yield GaugeMetricFamily(
            f"{PREFIX}_upstream_token_refused",
            "1 while GitLab refuses the proxy's own credentials (upstream.token), else 0",
            value=0 if m.token_refused is None else 1,
        )
        yield GaugeMetricFamily(
            f"{PREFIX}_fills_in_flight",
            "Upstream downloads running now",
            value=self.metrics.fills_in_flight(),
        )


def route_of(request: web.Request) -> str:
    """The route template ('/api/v4/projects/{id}/...'), never the raw path: a bounded label."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else UNMATCHED


def metrics_middleware(metrics: Metrics) -> Middleware:
    """Counts every answer by route and status, after errors were mapped to HTTP."""

    @web.middleware
    async def count(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            response = await handler(request)
        except web.HTTPException as e:
            metrics.request(route_of(request), e.status)
            raise
        except Exception:
            metrics.request(route_of(request), 500)
            raise
        metrics.request(route_of(request), response.status)
        return response

    return count
