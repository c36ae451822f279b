"""A supervisor (workers.py) whose workers are stand-ins, for tests/test_workers.py.

``python -m tests.worker_harness MODE DIRECTORY``: two workers on a free port of 127.0.0.1.
Each worker that starts writes ``DIRECTORY/<index>-<pid>`` and, in mode ``serve``, says it
listens and waits for SIGTERM; in mode ``fail`` it exits 3 before it listens.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable
from pathlib import Path

from wsgateway.settings import Settings
from wsgateway.siblings import WorkerRole
from wsgateway.workers import Backoff, Supervisor


def main() -> int:
    mode, directory = sys.argv[1], Path(sys.argv[2])

    def run_worker(settings: Settings, role: WorkerRole, listening: Callable[[], None]) -> int:
        import os

        (directory / f"{role.index}-{os.getpid()}").write_text(str(settings.port))
        if mode == "fail":
            return 3
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        listening()
        while True:
            signal.pause()

    settings = Settings(host="127.0.0.1", port=0, workers=2, close_timeout=1.0, drain_seconds=1.0)
    return Supervisor(settings, run_worker, backoff=Backoff(first=0.2, cap=1.0)).run()


if __name__ == "__main__":
    sys.exit(main())
