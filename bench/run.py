"""`python bench/run.py [--quick]`: start every server on loopback, measure, write BENCHMARKS.md."""

from __future__ import annotations

import argparse
import asyncio
import atexit
import os
import secrets
import shutil
import signal
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    # Run as a script: the repo root holds `bench`, `proxy` and `tests`.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import data, procs
from bench.figures import Bench, Figure, Options
from bench.load import LoadGenerator
from bench.report import machine, render

DATA_DIR = procs.REPO / "bench" / ".data"


# Where BENCHMARKS.md's sections from other scripts (bench/s3client.py) start: a run keeps them.
APART = "\n## Measured apart"


def _measured_apart(out: Path) -> str:
    """The sections of `out` that other scripts measured, kept as they are."""
    try:
        text = out.read_text()
    except FileNotFoundError:
        return ""
    at = text.find(APART)
    return text[at:] if at >= 0 else ""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bench/run.py", description="The proxy side by side with proxpi and nginx."
    )
    parser.add_argument("--quick", action="store_true", help="fewer, shorter runs (~2 minutes)")
    parser.add_argument("--runs", type=int, help="runs per figure (default 5; quick 3)")
    parser.add_argument("--seconds", type=float, help="seconds per load run (default 5; quick 2)")
    parser.add_argument(
        "--only", help="comma-separated figure numbers to measure, e.g. 1,2 (default: all)"
    )
    parser.add_argument(
        "--latency", type=float, default=0.0, help="ms added to each fake GitLab answer (figs 1-6)"
    )
    parser.add_argument(
        "--fanout-rates",
        default="25,100",
        help="MB/s at which fake GitLab sends each download in figure 5, comma-separated "
        "(default 25,100: about a 200 Mbit/s and a 1 Gbit/s link; 0: unlimited)",
    )
    parser.add_argument("--threads", type=int, default=1, help="wrk threads")
    parser.add_argument("--out", type=Path, default=procs.REPO / "BENCHMARKS.md")
    parser.add_argument("--keep", action="store_true", help="keep bench/.data/run (logs, caches)")
    return parser


def _options(args: argparse.Namespace) -> Options:
    only = frozenset(range(1, 12))
    if args.only:
        only = frozenset(int(n) for n in args.only.split(","))
    return Options(
        runs=args.runs or (3 if args.quick else 5),
        seconds=args.seconds or (2.0 if args.quick else 5.0),
        warmup=1.0,
        resolve_runs=1 if args.quick else 3,
        latency=args.latency / 1000,
        fanout_rates=tuple(float(r) * 1e6 for r in args.fanout_rates.split(",")),
        threads=args.threads,
        only=only,
        quick=args.quick,
    )


async def _run(options: Options, processes: procs.Processes, out: Path, command: str) -> str:
    started = time.monotonic()
    load_at_start = os.getloadavg()[0]
    wrk = await asyncio.to_thread(procs.wrk_binary)
    nginx = await asyncio.to_thread(procs.nginx_binary)
    for note in procs.optional_tools(wrk, nginx):
        print(note, flush=True)
    # proxpi comes from PyPI: a machine without it learns so before the data set is built.
    await asyncio.to_thread(procs.ensure_bench_venv)
    print("preparing the data set in bench/.data (first run: ~2 GB, once)", flush=True)
    entries = await asyncio.to_thread(data.build, DATA_DIR)
    load = LoadGenerator(wrk, options.threads)
    bench = Bench(options, processes, processes.logs.parent, entries, secrets.token_hex(16), load)
    figures: list[Figure] = []
    try:
        await bench.start(DATA_DIR, nginx, with_proxpi=True)
        steps = [
            (1, bench.figure_small),
            (2, bench.figure_big),
            (3, bench.figure_pages),
            (4, bench.figure_cold),
            (5, bench.figure_fanout),
            (6, bench.figure_memory),
            (7, bench.figure_resolve),
            (8, bench.figure_big_resolve),
            (9, bench.figure_cluster_fetches),
            (10, bench.figure_cluster_hits),
            (11, bench.figure_shared_tier),
        ]
        for number, step in steps:
            if number in options.only:
                print(f"figure {number} ...", flush=True)
                figure = await step()
                figures.append(figure)
                print(render([figure], options, command, [], load.name).split("## ", 2)[-1])
    finally:
        await bench.close()
    report = render(figures, options, command, machine(wrk, nginx, load_at_start), load.name)
    report += _measured_apart(out)
    out.write_text(report)
    print(f"wrote {out} in {time.monotonic() - started:.0f} s", flush=True)
    return report


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    options = _options(args)
    missing = procs.missing_requirements(options.only)
    if missing:
        print("bench/run.py needs, before it measures anything:", file=sys.stderr)
        for line in missing:
            print(f"  - {line}", file=sys.stderr)
        return 2
    run_dir = DATA_DIR / "run"
    shutil.rmtree(run_dir, ignore_errors=True)
    (run_dir / "logs").mkdir(parents=True)
    processes = procs.Processes(run_dir / "logs")
    atexit.register(processes.kill_all_now)
    command = "python bench/run.py" + (" --quick" if args.quick else "")

    async def session() -> None:
        # SIGTERM ends the run as Ctrl-C does: through the finally below.
        task = asyncio.current_task()
        assert task is not None
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
        try:
            await _run(options, processes, args.out, command)
        finally:
            await processes.stop_all()

    try:
        asyncio.run(session())
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("interrupted; every server stopped", file=sys.stderr)
        return 130
    finally:
        if not args.keep:
            shutil.rmtree(run_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
