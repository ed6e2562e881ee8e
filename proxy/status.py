"""`/-/status`: one small HTML page a person reads at a glance, rendered from the metrics."""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from html import escape

from .config import Settings
from .log import redact
from .metrics import TOP_PACKAGES, Metrics, Totals

_STYLE = """
body { font: 15px/1.4 system-ui, sans-serif; margin: 2em auto; max-width: 48em; color: #222; }
h1 { font-size: 1.4em; } h2 { font-size: 1.1em; margin-top: 1.6em; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: .25em .6em; border-bottom: 1px solid #ddd; }
th { width: 14em; font-weight: 600; }
.ok { color: #17702b; } .bad { color: #b00020; } .muted { color: #777; }
#errors td:first-child { white-space: nowrap; }
meter { width: 12em; }
.alert { font-weight: 600; }
"""


def size_text(nbytes: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if nbytes < 1024 or unit == "GiB":
            return f"{nbytes:.0f} {unit}" if unit == "B" else f"{nbytes:.1f} {unit}"
        nbytes /= 1024
    raise AssertionError("unreachable")


def _ago(at: float, now: float) -> str:
    seconds = max(0, int(now - at))
    if seconds < 120:
        return f"{seconds} s ago"
    if seconds < 7200:
        return f"{seconds // 60} min ago"
    return f"{seconds // 3600} h ago"


def _percent(part: int, whole: int) -> str:
    return f"{100 * part / whole:.1f}%" if whole else "n/a"


def _row(key: str, label: str, value: str, css: str = "") -> str:
    attr = f' class="{css}"' if css else ""
    return f'<tr><th>{escape(label)}</th><td id="{key}"{attr}>{value}</td></tr>'


def _upstream_health(settings: Settings, m: Totals, now: float) -> tuple[str, str]:
    if settings.cache.offline:
        return "offline mode: GitLab is never contacted", "muted"
    ok, failed = m.upstream_last_ok, m.upstream_last_error
    if failed is not None and (ok is None or failed > ok):
        since = f"; last answered {_ago(ok, now)}" if ok is not None else ""
        return f"failing: last error {_ago(failed, now)}{since}", "bad"
    if ok is not None:
        return f"ok: last answered {_ago(ok, now)}", "ok"
    return "not contacted yet", "muted"


def render_status(
    settings: Settings, metrics: Metrics, *, alerts: Sequence[str] = (), full: bool = True
) -> str:
    """The page, with every worker's counters; without `full`, counts and health only."""
    now = time.time()
    m = metrics.totals()
    size, files = metrics.cache_size()
    limit = max(1, metrics.cache_limit)
    ratio = m.hit_ratio()
    health, health_css = _upstream_health(settings, m, now)
    latency = m.median_latency()
    cache_rows = [
        _row(
            "cache-size",
            "Cache size",
            f"{size_text(size)} of {size_text(metrics.cache_limit)} ({_percent(size, limit)}) "
            f'<meter min="0" max="{limit}" value="{size}"></meter>',
        ),
        _row("cache-files", "Files cached", str(files)),
        _row(
            "hit-ratio",
            "Hit ratio",
            f"{100 * ratio:.1f}%" if ratio is not None else "no requests yet",
        ),
        _row(
            "page-hits",
            "Pages",
            f"{m.page_hits} hits, {m.page_misses} misses, {m.page_stale} stale",
        ),
        _row("file-hits", "Files", f"{m.file_hits} hits, {m.file_misses} misses"),
        _row("fills", "Downloads in flight", str(metrics.fills_in_flight())),
        _row("evictions", "Evictions", f"{m.evictions} ({size_text(m.evicted_bytes)})"),
    ]
    upstream_rows = [
        _row("upstream-url", "GitLab", escape(redact(settings.upstream.url))),
        _row("upstream-health", "Health", escape(health), health_css),
        _row(
            "upstream-latency",
            "Latency",
            f"median {1000 * latency:.0f} ms of the last {len(m.recent_latencies)} requests"
            if latency is not None
            else "no requests yet",
        ),
    ]
    top = m.packages.most_common(TOP_PACKAGES)
    packages = _packages(top) if full else _hidden(f"{len(m.packages)} packages requested")
    errors = _errors(m, now, full)
    top_alerts = "".join(f'<p class="alert bad">{escape(a)}</p>' for a in alerts)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<meta http-equiv="refresh" content="30">'
        f"<title>gitlab-pypi-proxy status</title><style>{_STYLE}</style></head><body>"
        "<h1>gitlab-pypi-proxy</h1>"
        f'<div id="alerts">{top_alerts}</div>'
        f'<p class="muted">up for {_ago(m.started, now).removesuffix(" ago")}</p>'
        f'<h2>Cache</h2><table id="cache">{"".join(cache_rows)}</table>'
        f'<h2>Upstream</h2><table id="upstream">{"".join(upstream_rows)}</table>'
        f'<h2>Most requested packages</h2><div id="packages">{packages}</div>'
        f'<h2>Recent upstream errors</h2><div id="errors">{errors}</div>'
        f'<h2>Recent policy blocks</h2><div id="blocks">{_blocks(m, now, full)}</div>'
        "</body></html>\n"
    )


# Host[:port] as a browser sends it; anything else is not echoed into the page at all.
_HOST_RE = re.compile(r"(?:[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*|\[[0-9A-Fa-f:.]+\])(?::\d{1,5})?")


def proxy_address(settings: Settings, host: str, scheme: str) -> str:
    """This proxy's base URL: server.public_url, else the Host header if it is only a host."""
    if settings.server.public_url:
        return settings.server.public_url.rstrip("/")
    if _HOST_RE.fullmatch(host) and scheme in ("http", "https"):
        return f"{scheme}://{host}"
    return "http://PROXY-HOST:PORT"


def render_home(settings: Settings, host: str, scheme: str) -> str:
    """`/` and `/simple/`: the URL layout to give pip, uv and twine, with this proxy's address."""
    base = escape(proxy_address(settings, host, scheme))
    project = f"{base}/api/v4/projects/&lt;project id or url-encoded path&gt;/packages/pypi"
    group = f"{base}/api/v4/groups/&lt;group id&gt;/-/packages/pypi"
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>gitlab-pypi-proxy</title><style>{_STYLE}</style></head><body>"
        "<h1>gitlab-pypi-proxy</h1>"
        f"<p>A caching proxy in front of GitLab's PyPI registry at "
        f"<code>{escape(redact(settings.upstream.url))}</code>. Its URLs are GitLab's:</p>"
        '<table id="layout">'
        + _row("project-index", "A project's index", f"<code>{project}/simple/</code>")
        + _row("group-index", "A group's index", f"<code>{group}/simple/</code>")
        + _row("upload", "Upload (twine)", f"<code>{project}</code>")
        + _row("status", "Status", f"<code>{base}/-/status</code>")
        + "</table>"
        f"<p>For example: <code>pip install --index-url {project}/simple/ NAME</code></p>"
        "</body></html>\n"
    )


def _hidden(counted: str) -> str:
    return (
        f'<p>{escape(counted)}; <span class="muted">names are shown only to an operator '
        "token (access.ops_tokens)</span></p>"
    )


def _packages(top: list[tuple[str, int]]) -> str:
    return (
        "<ol>"
        + "".join(
            f'<li><span class="name">{escape(name)}</span> '
            f'<span class="count muted">{count} requests</span></li>'
            for name, count in top
        )
        + "</ol>"
        if top
        else '<p class="muted">none yet</p>'
    )


def _errors(m: Totals, now: float, full: bool) -> str:
    if not m.recent_errors:
        return '<p class="muted">none</p>'
    # A message names the project path and file it failed for: operators only.
    rows = "".join(
        f'<tr><td class="muted">{_ago(e.at, now)}</td><td>{escape(e.kind)}</td>'
        + (f"<td>{escape(e.message)}</td></tr>" if full else "</tr>")
        for e in m.recent_errors
    )
    table = f"<table>{rows}</table>"
    return table if full else table + _hidden(f"{len(m.recent_errors)} recent errors")


def _blocks(m: Totals, now: float, full: bool) -> str:
    if not m.recent_blocks:
        return '<p class="muted">none</p>'
    counts = ", ".join(f"{rule}: {n}" for rule, n in sorted(m.policy_blocks.items()))
    # What was refused names a package: operators only, as for errors.
    rows = "".join(
        f'<tr><td class="muted">{_ago(b.at, now)}</td><td>{escape(b.rule)}</td>'
        + (f'<td class="what">{escape(b.what)}</td></tr>' if full else "</tr>")
        for b in m.recent_blocks
    )
    table = f'<p id="block-counts">{escape(counts)}</p><table>{rows}</table>'
    return table if full else table + _hidden(f"{len(m.recent_blocks)} recent blocks")
