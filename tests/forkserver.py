"""A fork server for the tests' ``recsys`` commands (tests only).

Each ``python -m recsys`` the tests start used to pay for importing torch and
Lightning again (~3 s and ~5 s of CPU on the 2-core CI machine, well over a hundred
commands per run). The server is one process per pytest worker that imports those
libraries once and forks a child per command. The child is a fresh command in every
way the tests look at: its own working directory, environment, argv, stdin
(/dev/null), stdout and stderr (files the caller reads), process group (killed on a
timeout), exit code, and what a normal interpreter exit does (non-daemon threads
joined, atexit handlers, buffers flushed; the modules are not torn down, which takes
~2 s with torch loaded). It runs ``recsys/__main__.py`` as ``python -m
recsys`` does.

What it cannot reproduce is a command's own import cost and import-time output, so
a test of either (no library chatter, which modules a command imports) uses
``run(..., fresh=True)``, a real ``subprocess``. ``RECSYS_TEST_FORK=0`` turns the
server off.

Protocol (one request at a time, JSON lines): the client writes ``{"args", "cwd",
"env", "stdout", "stderr"}``; the server answers ``{"pid"}`` when the child is
forked, then ``{"code"}`` when it exits.
"""
from __future__ import annotations

import atexit
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _child(req: dict) -> None:
    """In the forked child: become the command, then exit the way ``python -m recsys`` does."""
    import runpy

    os.setpgid(0, 0)
    os.chdir(req["cwd"])
    os.environ.clear()
    os.environ.update(req["env"])
    fds = (os.open(os.devnull, os.O_RDONLY), os.open(req["stdout"], os.O_WRONLY | os.O_TRUNC),
           os.open(req["stderr"], os.O_WRONLY | os.O_TRUNC))
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    sys.stdin = open(0, "r", closefd=False)
    sys.stdout = open(1, "w", buffering=1, closefd=False)
    sys.stderr = open(2, "w", buffering=1, closefd=False)
    sys.argv = [str(ROOT / "recsys" / "__main__.py"), *req["args"]]
    sys.path[0] = os.getcwd()  # as `python -m` puts the working directory first
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    code = 0
    try:
        runpy.run_module("recsys", run_name="__main__", alter_sys=True)
    except SystemExit as e:  # what the interpreter makes of it
        if e.code is None or isinstance(e.code, int):
            code = e.code or 0
        else:
            print(e.code, file=sys.stderr)
            code = 1
    except BaseException:
        traceback.print_exc()
        code = 1
    # the rest of a normal exit, without tearing down the modules the server loaded (~2 s with torch):
    # non-daemon threads joined, atexit handlers, buffers flushed
    threading._shutdown()  # type: ignore[attr-defined]
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(code)


def serve() -> None:
    """The server's loop: warm the imports, then fork one child per request line."""
    import numpy  # noqa: F401
    import pandas  # noqa: F401
    import pyarrow  # noqa: F401
    import pytorch_lightning  # noqa: F401
    import torch  # noqa: F401

    import recsys.cli.main  # noqa: F401

    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(os.open(os.devnull, os.O_WRONLY), 1)  # stray prints of the server itself go nowhere
    out.write(json.dumps({"ready": True}) + "\n")
    for line in sys.stdin:
        req = json.loads(line)
        pid = os.fork()
        if pid == 0:
            out.close()
            _child(req)  # never returns (os._exit)
        out.write(json.dumps({"pid": pid}) + "\n")
        _, status = os.waitpid(pid, 0)
        out.write(json.dumps({"code": os.waitstatus_to_exitcode(status)}) + "\n")


class ForkServer:
    """The client side, one per test process (see :func:`run`)."""

    def __init__(self) -> None:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.forkserver"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=ROOT, env=env, text=True)
        self.lock = threading.Lock()
        if self._read(120.0) != {"ready": True}:
            raise RuntimeError("the tests' fork server did not start")
        atexit.register(self.close)

    def close(self) -> None:
        """End of input: the server's loop ends and it exits."""
        if self.proc.poll() is None:
            assert self.proc.stdin is not None and self.proc.stdout is not None
            self.proc.stdin.close()
            self.proc.wait(timeout=30)
            self.proc.stdout.close()

    def _read(self, timeout: float) -> dict | None:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], max(timeout, 0.0))
        if not ready:
            return None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("the tests' fork server exited")
        return json.loads(line)

    def run(self, args: list[str], cwd: Path, env: dict, timeout: float) -> subprocess.CompletedProcess:
        with self.lock, tempfile.TemporaryDirectory(prefix="recsys-fork-") as tmp:
            out, err = Path(tmp) / "stdout", Path(tmp) / "stderr"
            out.touch()
            err.touch()
            assert self.proc.stdin is not None
            self.proc.stdin.write(json.dumps({"args": list(args), "cwd": str(cwd), "env": env, "stdout": str(out),
                                              "stderr": str(err)}) + "\n")
            self.proc.stdin.flush()
            deadline = time.monotonic() + timeout
            started = self._read(30.0)
            if started is None:
                raise RuntimeError("the tests' fork server did not fork")
            done = self._read(deadline - time.monotonic())
            if done is None:  # like subprocess.run(timeout=...): kill the command (its group), then raise
                os.killpg(started["pid"], signal.SIGKILL)
                self._read(30.0)
                raise subprocess.TimeoutExpired(["recsys", *args], timeout)
            return subprocess.CompletedProcess(["recsys", *args], done["code"], out.read_text(), err.read_text())


_SERVER: ForkServer | None = None


def server() -> ForkServer | None:
    """This process's fork server, started on first use (None where fork is unavailable or turned off)."""
    global _SERVER
    if os.environ.get("RECSYS_TEST_FORK", "1") == "0" or not hasattr(os, "fork") or sys.platform == "darwin":
        return None
    if _SERVER is None or _SERVER.proc.poll() is not None:
        _SERVER = ForkServer()
    return _SERVER


if __name__ == "__main__":
    serve()
