"""`python -m proxy.worker LIFELINE_FD SHARED_DIR`: one serving process under the supervisor.

SHARED_DIR is empty when the supervisor found no place for the workers' shared counters.
"""

from __future__ import annotations

import pickle
import sys
from pathlib import Path

from .cli import serve_worker
from .config import Settings


def main(lifeline: int, shared: Path | None) -> int:
    # The settings come on stdin, never argv or the environment, which others can read.
    settings: Settings = pickle.loads(sys.stdin.buffer.read())  # noqa: S301 - from our supervisor
    return serve_worker(settings, lifeline, shared)


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1]), Path(sys.argv[2]) if sys.argv[2] else None))
