"""Counters for `/-/metrics` and `/-/status`: plain ints on the hot path, prometheus at scrape."""

from __future__ import annotations

import time
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware
from prometheus_client import CollectorRegistry, Histogram, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

from .log import redact

PREFIX = "gitlab_pypi_proxy"
UpstreamKind = Literal["page", "file", "probe"]
PageState = Literal["HIT", "MISS", "STALE"]
# Seconds: GitLab answers a simple page in tens of milliseconds when well, seconds when not.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
TOP_PACKAGES = 10
# Names beyond this are dropped (least requested first), so clients cannot grow it without bound.
TRACKED_PACKAGES = 1000
RECENT_ERRORS = 20
RECENT_LATENCIES = 100
UNMATCHED = "unmatched"


@dataclass(frozen=True, slots=True)
class UpstreamFailure:
    at: float
    kind: str
    message: str


class Metrics:
    """One per app. Single-threaded event loop: plain ints need no lock on the hit path."""

    def __init__(self) -> None:
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
        self.upstream_errors = {"page": 0, "file": 0, "probe": 0}
        self.packages: Counter[str] = Counter()
        self.recent_errors: deque[UpstreamFailure] = deque(maxlen=RECENT_ERRORS)
        self.recent_latencies: deque[float] = deque(maxlen=RECENT_LATENCIES)
        self.upstream_last_ok: float | None = None
        self.upstream_last_error: float | None = None
        # GitLab's status when it last refused the proxy's own credentials; None once accepted.
        self.token_refused: int | None = None
        self.started = time.time()
        # Set by the composition root once the file cache exists: (bytes, files) and fills.
        self.cache_size: Callable[[], tuple[int, int]] = lambda: (0, 0)
        self.cache_limit = 0
        self.fills_in_flight: Callable[[], int] = lambda: 0
        self.latency = Histogram(
            f"{PREFIX}_upstream_latency_seconds",
            "Seconds until GitLab (or object storage) answered with headers",
            ["kind"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(_Collector(self))
        ProcessCollector(registry=self.registry)

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

    def evicted(self, nbytes: int) -> None:
        """One blob evicted from the cache to stay under cache.max_size."""
        self.evictions += 1
        self.evicted_bytes += nbytes

    def package_requested(self, name: str) -> None:
        """`name` is normalized; only pages GitLab answered are counted."""
        self.packages[name] += 1
        if len(self.packages) > TRACKED_PACKAGES:
            self.packages = Counter(dict(self.packages.most_common(TRACKED_PACKAGES // 2)))

    def upstream_answered(self, kind: UpstreamKind, seconds: float, status: int) -> None:
        self.latency.labels(kind).observe(seconds)
        self.recent_latencies.append(seconds)
        if status < 500 and status != 429:
            self.upstream_last_ok = time.time()

    def upstream_failed(self, kind: UpstreamKind, message: str) -> None:
        """`message` must be client-safe already; it is redacted again on the way in."""
        now = time.time()
        self.upstream_errors[kind] += 1
        self.upstream_last_error = now
        self.recent_errors.appendleft(UpstreamFailure(now, kind, redact(message)))

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

    def render(self) -> web.Response:
        """The Prometheus text format (0.0.4: what every Prometheus version parses)."""
        body = generate_latest(self.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_PLAIN_0_0_4})


class _Collector:
    """Turns the plain counters into metric families when Prometheus scrapes."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterable[Metric]:
        m = self.metrics
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
        size, files = m.cache_size()
        yield GaugeMetricFamily(f"{PREFIX}_cache_size_bytes", "Bytes of verified files", value=size)
        yield GaugeMetricFamily(f"{PREFIX}_cache_files", "Verified files in the cache", value=files)
        yield GaugeMetricFamily(
            f"{PREFIX}_cache_max_size_bytes", "cache.max_size", value=m.cache_limit
        )
        yield GaugeMetricFamily(
            f"{PREFIX}_upstream_token_refused",
            "1 while GitLab refuses the proxy's own credentials (upstream.token), else 0",
            value=0 if m.token_refused is None else 1,
        )
        yield GaugeMetricFamily(
            f"{PREFIX}_fills_in_flight", "Upstream downloads running now", value=m.fills_in_flight()
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
