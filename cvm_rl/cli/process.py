"""``cvm serve`` as a child process: start it on a free port, wait until it serves, stop it.

Used by the demo, the serving benchmark and the process tests, so that all of them start
and stop the server the way an operator would (a separate process, SIGTERM to stop).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

START_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 60.0


class ServeProcessError(RuntimeError):
    """``cvm serve`` exited early, did not become ready, or did not stop."""


@dataclass
class ServeProcess:
    """A running ``cvm serve``: the process, its port, its serving pids, its stderr file."""

    proc: subprocess.Popen[bytes]
    port: int
    pids: list[int]
    stderr_path: Path

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> int:
        """SIGTERM (graceful shutdown) and wait; returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            raise ServeProcessError(
                f"cvm serve did not stop within {timeout_s} s of SIGTERM"
            ) from None

    def kill(self) -> None:
        """SIGKILL the process and any worker that outlives it."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for pid in self.pids:
            if pid != self.proc.pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


@contextlib.contextmanager
def serve_process(
    args: Sequence[str],
    workdir: str | Path,
    *,
    name: str = "serve",
    start_timeout_s: float = START_TIMEOUT_S,
    cvm: Sequence[str] | None = None,
) -> Iterator[ServeProcess]:
    """Run ``cvm serve ARGS --port 0 --ready-file F`` (unless ARGS set ``--port``) until the
    block ends; then SIGTERM it, and SIGKILL it and its workers if they do not stop.

    ``cvm`` is the command that runs the CLI (default: this interpreter's ``-m cvm_rl.cli``;
    e.g. another environment's ``bin/cvm``)."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    ready = workdir / f"{name}.ready.json"
    stderr_path = workdir / f"{name}.stderr"
    ready.unlink(missing_ok=True)
    port_args = [] if "--port" in args else ["--port", "0"]
    command = [sys.executable, "-m", "cvm_rl.cli"] if cvm is None else list(cvm)
    cmd = [*command, "serve", *args, *port_args]
    with stderr_path.open("wb") as stderr:
        proc = subprocess.Popen(
            [*cmd, "--ready-file", str(ready)], stdout=subprocess.DEVNULL, stderr=stderr
        )
    server = ServeProcess(proc, 0, [], stderr_path)
    try:
        deadline = time.monotonic() + start_timeout_s
        while not ready.exists():
            if proc.poll() is not None:
                raise ServeProcessError(
                    f"cvm serve exited with {proc.returncode} before it was ready: "
                    f"{server.stderr()[-2000:]}"
                )
            if time.monotonic() > deadline:
                raise ServeProcessError(f"cvm serve was not ready within {start_timeout_s} s")
            time.sleep(0.05)
        info = json.loads(ready.read_text())
        server.port, server.pids = int(info["port"]), [int(p) for p in info["pids"]]
        yield server
    finally:
        if proc.poll() is None:
            # A stop that times out has killed it; the block's own error matters more.
            with contextlib.suppress(ServeProcessError):
                server.stop()
        server.kill()
