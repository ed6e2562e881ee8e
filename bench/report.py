"""BENCHMARKS.md: the machine, the command, and one table per figure."""

from __future__ import annotations

import os
import platform
import re
import subprocess
import sys
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path

from bench.figures import Figure, Options
from bench.procs import BENCH_VENV, REPO
from proxy.config import usable_cpus


def _first_line(args: Sequence[str]) -> str:
    try:
        done = subprocess.run(args, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "not found"
    return (
        (done.stdout or done.stderr).strip().splitlines()[0] if (done.stdout or done.stderr) else ""
    )


def machine(wrk: str | None, nginx: str | None, load_at_start: float) -> list[tuple[str, str]]:
    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem = Path("/proc/meminfo").read_text().split("\n", 1)[0].split()[1]
    bench_python = str(BENCH_VENV / "bin" / "python")
    proxpi = _first_line(
        [bench_python, "-c", "import importlib.metadata as m; print(m.version('proxpi'))"]
    )
    gunicorn = _first_line(
        [bench_python, "-c", "import importlib.metadata as m; print(m.version('gunicorn'))"]
    )
    commit = _first_line(["git", "-C", str(REPO), "describe", "--always", "--dirty"])
    return [
        ("CPU", f"{cpu}, {os.cpu_count()} CPUs (nproc {len(os.sched_getaffinity(0))})"),
        ("RAM", f"{int(mem) / 2**20:.1f} GiB"),
        ("OS", f"{platform.system()} {platform.release()}"),
        # Other work on the machine moves every figure; the ratios come from the same runs.
        ("load average", f"{load_at_start:.1f} at start, {os.getloadavg()[0]:.1f} at end"),
        ("Python", sys.version.split()[0]),
        (
            "proxy",
            f"commit {commit}, aiohttp {metadata.version('aiohttp')}, "
            f"{'uvloop ' + metadata.version('uvloop') if _has('uvloop') else 'asyncio loop'}; "
            f"the default configuration (server.workers = auto: {usable_cpus()} here, access "
            "log on) unless a column or row says otherwise",
        ),
        ("proxpi", f"{proxpi} under gunicorn {gunicorn} (2 workers x 8 threads)"),
        ("nginx", _first_line([nginx, "-v"]) if nginx else "not installed"),
        ("load", _first_line([wrk, "--version"]) if wrk else "aiohttp load loop"),
        ("pip / uv", f"{_version('pip')} / {_version('uv')}"),
    ]


def _version(dist: str) -> str:
    return metadata.version(dist) if _has(dist) else "not installed"


def _has(dist: str) -> bool:
    try:
        metadata.version(dist)
    except metadata.PackageNotFoundError:
        return False
    return True


def _table(figure: Figure) -> list[str]:
    head = ["", *figure.columns]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in figure.rows:
        lines.append(
            "| " + " | ".join([row.label, *(row.cells.get(c, "") for c in figure.columns)]) + " |"
        )
    return lines


def _verdict(ok: bool | None) -> str:
    return {True: "met", False: "**not met**", None: "n/a (not measured)"}[ok]


def render(
    figures: Sequence[Figure],
    options: Options,
    command: str,
    described: Sequence[tuple[str, str]],
    load_name: str,
) -> str:
    out = [
        "# Benchmarks",
        "",
        "The proxy side by side with proxpi (the PyPI caching proxy a user would otherwise pick)",
        "and nginx with sendfile serving the same files from the same disk (the physical limit).",
        "Every server runs on loopback on this machine, alongside the load generator.",
        "",
        f"Reproduce: `{command}` (see the README). Mode: {'quick' if options.quick else 'full'}; "
        f"throughput: {load_name}, {options.runs} runs of {options.seconds:g} s per server, "
        "servers taking turns, figures are medians and ratios are medians of per-run ratios.",
        "Where the proxy's time goes, with profiles: [bench/PROFILE.md](bench/PROFILE.md).",
        "",
        "| machine | |",
        "|---|---|",
        *(f"| {k} | {v} |" for k, v in described),
        "",
        "## Summary against the targets",
        "",
        "| target | result |",
        "|---|---|",
    ]
    for figure in figures:
        out += [f"| {figure.number}. {name} | {_verdict(ok)} |" for name, ok in figure.verdicts]
    for figure in figures:
        out += ["", f"## {figure.number}. {figure.title}", "", *_table(figure)]
        if figure.notes:
            out += ["", *figure.notes]
    return "\n".join(out) + "\n"


def strip_markdown(text: str) -> str:
    return re.sub(r"\*\*(.+?)\*\*", r"\1", text)
