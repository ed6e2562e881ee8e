"""Scraping /-/metrics and reading one sample out of it."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from tests.support.cli_process import ServeProcess
from tests.support.harness import RunningProxy
from tests.support.http import get

FILES_ROUTE = "/api/v4/projects/{id}/packages/pypi/files/{sha256}/{filename}"


async def scrape(
    proxy: RunningProxy | ServeProcess,
) -> tuple[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]]:
    status, headers, body = await get(f"{proxy.url}/-/metrics")
    assert status == 200
    assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
    text = body.decode()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    return text, samples


def value(
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)
