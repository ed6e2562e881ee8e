"""Issue 7: /-/status as a person sees it, rendered by headless Chromium."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import aiohttp
import lxml.html
import pytest

from proxy.status import size_text
from tests.support.fake_gitlab import FakeGitLab
from tests.support.harness import TOKEN, RunningProxy, clean_env, pip_install, run
from tests.support.wheels import wheel_metadata

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="needs Debian's chromium (apt-get install -y chromium)"
)


async def render(url: str, profile: Path) -> lxml.html.HtmlElement:
    """The DOM after Chromium loaded and laid out the page."""
    assert CHROMIUM is not None
    result = await run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            f"--user-data-dir={profile}",
            "--dump-dom",
            url,
        ],
        env=clean_env(),
        timeout=60,
    )
    result.check()
    return lxml.html.fromstring(result.stdout)


def text(dom: lxml.html.HtmlElement, element_id: str) -> str:
    found = dom.get_element_by_id(element_id)
    return " ".join(found.text_content().split())


async def test_status_page_shows_its_figures_in_chromium(
    gitlab: FakeGitLab, proxy: RunningProxy, tmp_path: Path
) -> None:
    util = gitlab.add_wheel(42, "corp-util", "1.0.0")
    app = gitlab.add_wheel(42, "corp-app", "1.0.0", requires=["corp-util"])
    index = proxy.index_url("projects/42")
    (await pip_install(index, tmp_path / "one", "corp-app")).check()
    (await pip_install(index, tmp_path / "two", "corp-app")).check()
    (await pip_install(index, tmp_path / "three", "corp-util")).check()
    gitlab.fail_status = 503
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{proxy.url}/api/v4/projects/42/packages/pypi/simple/corp-new/") as resp,
    ):
        assert resp.status == 503

    dom = await render(f"{proxy.url}/-/status", tmp_path / "chromium")

    assert dom.findtext(".//title") == "gitlab-pypi-proxy status"
    # Both wheels and the METADATA (PEP 658) the proxy extracted from each.
    size = sum(len(w.content) + len(wheel_metadata(w.content)) for w in (util, app))
    assert text(dom, "cache-size").startswith(f"{size_text(size)} of 20.0 GiB (0.0%)")
    assert dom.get_element_by_id("cache-size").find("meter").get("value") == str(size)
    assert text(dom, "cache-files") == "4"
    # Pages: 2 misses then 3 hits and a miss that failed upstream (no answer, not counted).
    # Files: pip reads each wheel's metadata before the wheel; the first metadata request of
    # each wheel is a miss (it brings the wheel in), the other 8 requests are hits.
    assert text(dom, "page-hits") == "3 hits, 2 misses, 0 stale"
    assert text(dom, "file-hits") == "8 hits, 2 misses"
    assert text(dom, "hit-ratio") == "73.3%"
    assert text(dom, "fills") == "0"
    assert text(dom, "upstream-url") == gitlab.url
    assert re.fullmatch(
        r"failing: last error \d+ s ago; last answered \d+ s ago", text(dom, "upstream-health")
    )
    assert dom.get_element_by_id("upstream-health").get("class") == "bad"
    assert text(dom, "upstream-latency").startswith("median ")
    # 5 to the registry, and 2 each page miss asks the Packages API (versions, then files).
    assert text(dom, "upstream-latency").endswith(" ms of the last 9 requests")
    packages = [
        " ".join(li.text_content().split()) for li in dom.get_element_by_id("packages").iter("li")
    ]
    assert packages == ["corp-util 3 requests", "corp-app 2 requests"]
    errors = text(dom, "errors")
    assert "answered 503 for /api/v4/projects/42/packages/pypi/simple/corp-new" in errors
    assert TOKEN not in lxml.html.tostring(dom, encoding="unicode")
