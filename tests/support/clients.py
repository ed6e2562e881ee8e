"""What pip and uv send and what they leave behind, and a project to install."""

from __future__ import annotations

from pathlib import Path

from tests.support.fake_gitlab import FakeGitLab


def installed(target: Path) -> set[str]:
    return {p.name for p in target.iterdir() if p.name.endswith(".dist-info")}


def publish_app_with_dependency(gitlab: FakeGitLab) -> None:
    gitlab.add_wheel(42, "Corp.Util", "1.0.0")
    gitlab.add_wheel(42, "Corp.Util", "1.1.0")
    gitlab.add_wheel(42, "corp-app", "2.0.0", requires=["corp.util>=1.1"], requires_python=">=3.8")


# Captured from real clients (pip 26.3 and uv 0.13.9) asking a test server for a page.
PIP_ACCEPT = (
    "application/vnd.pypi.simple.v1+json, application/vnd.pypi.simple.v1+html; q=0.1, "
    "text/html; q=0.01"
)


UV_ACCEPT = (
    "application/vnd.pypi.simple.v1+json, application/vnd.pypi.simple.v1+html;q=0.2, "
    "text/html;q=0.01"
)
