"""A quiet console for long commands (`tcm demo`, `tcm train`): our stage lines on the terminal, Ray's output in a
log file.

    quiet_console(log)   file descriptors 1 and 2 point at `log` for the duration: Ray's driver messages, the
                         worker output it forwards (Train/Tune/Data logs, progress bars, known-benign warnings
                         such as the placement-group cleaner's "Failed to query Ray Train Controller actor
                         state" when no dashboard runs) and the processes `ray.init` starts all land there
    console.stage(...)   one line per stage: redrawn in place on a terminal while `poll()` has news, printed
                         once with its duration otherwise (logs, CI)

`log=None` (`--verbose`): nothing is redirected, the stage lines are printed as well.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TextIO

QUIET_ENV = {  # set for the driver and every Ray process started under it (a local instance inherits them)
    "RAY_DATA_DISABLE_PROGRESS_BARS": "1",  # Ray Data redraws per-operator bars hundreds of times a minute
}


class Console:
    """Where our own lines go: the terminal the command was started from."""

    def __init__(self, stream: TextIO, log: Path | None = None):
        self.stream = stream
        self.log = log  # where everything else went (None: nowhere else)
        self.tty = stream.isatty()

    def say(self, message: str) -> None:
        print(message, file=self.stream, flush=True)

    @contextlib.contextmanager
    def stage(self, title: str, poll: Callable[[], str] | None = None, every_s: float = 3.0) -> Iterator[dict]:
        """Announce `title`, keep one line up to date with `poll()` (on a terminal), end it with the duration.
        Yields a dict whose "elapsed_s" is set on exit."""
        start = time.perf_counter()
        done = threading.Event()
        result: dict = {}

        def line(status: str, suffix: str) -> str:
            return f"{title}: {status + ', ' if status else ''}{suffix}"

        def status() -> str:
            try:
                return poll() if poll else ""
            except Exception:  # noqa: BLE001 - a progress query must never break the stage
                return ""

        def refresh() -> None:
            while not done.wait(every_s):
                text = line(status(), f"{time.perf_counter() - start:.0f} s")
                self.stream.write("\r\033[K" + text)
                self.stream.flush()

        if self.tty:
            self.stream.write(f"{title} ...")
            self.stream.flush()
        else:
            self.say(f"{title} ...")
        thread = threading.Thread(target=refresh, daemon=True) if self.tty and poll else None
        if thread:
            thread.start()
        ok = False
        try:
            yield result
            ok = True
        finally:
            done.set()
            if thread:
                thread.join()
            result["elapsed_s"] = round(time.perf_counter() - start, 1)
            end = f"done in {result['elapsed_s']:.0f} s" if ok else f"failed after {result['elapsed_s']:.0f} s"
            if not ok and self.log:
                end += f" (Ray's output: {self.log})"
            self.stream.write(("\r\033[K" if self.tty else "") + line(status() if ok else "", end) + "\n")
            self.stream.flush()


@contextlib.contextmanager
def quiet_console(log: Path | None) -> Iterator[Console]:
    """A Console on the terminal; with `log`, fds 1 and 2 (and sys.stdout/stderr with them) write to `log`."""
    if log is None:
        yield Console(sys.stdout)
        return
    log.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    terminal = os.fdopen(os.dup(saved[0]), "w", buffering=1)
    previous_env = {k: os.environ.get(k) for k in QUIET_ENV}
    os.environ.update(QUIET_ENV)
    with open(log, "ab", buffering=0) as sink:
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        try:
            yield Console(terminal, log)
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            terminal.close()
            for k, v in previous_env.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
