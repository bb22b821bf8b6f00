"""Jobs run in a child process, so a decoder that aborts or hangs on a hostile file costs that job, not the service.

Native decoders (GDCM above all) answer some corrupt pixel data by aborting the
whole process, which a Python ``try`` cannot catch. The service therefore hands
each job to one long-lived child process (started with ``spawn``, so it shares
no threads or locks with the server) that loads the model bundles once and
runs jobs one at a time. When the child dies (a signal, an abort) or overruns
its time limit, the caller gets a :class:`JobCrashed`, the child is replaced
before the next job, and the service goes on answering.

The child logs through the same PHI filter as the service (warnings included).
"""

from __future__ import annotations

import logging
import multiprocessing
import signal
import threading
import time
import traceback
from collections.abc import Callable
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

from medlens.errors import MedlensError
from medlens.phi import install_phi_filter

log = logging.getLogger(__name__)


class JobCrashed(MedlensError):
    """The child process running a job died or overran its time limit; the job counts one attempt."""

    def __init__(self, message: str, timed_out: bool = False) -> None:
        super().__init__(message)
        self.timed_out = timed_out


class JobError(MedlensError):
    """A job raised in the child; ``user_error`` is True when it was a MedlensError (the study is the problem)."""

    def __init__(self, message: str, user_error: bool, kind: str = "") -> None:
        super().__init__(message)
        self.user_error, self.kind = user_error, kind


class Sandbox:
    """One child process that runs ``fn(state, *args)`` calls; ``setup(*setup_args)`` builds its state once.

    ``fn`` and ``setup`` must be module-level functions (they are imported by name in the child).
    """

    def __init__(self, setup: Callable[..., Any], setup_args: tuple = (), timeout_seconds: float = 600.0) -> None:
        self.setup, self.setup_args, self.timeout_seconds = setup, setup_args, timeout_seconds
        self._process: BaseProcess | None = None
        self._conn: Connection | None = None
        self._lock = threading.Lock()

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None and self._process.is_alive() else None

    def start(self) -> None:
        """Start the child now (it loads its state while the caller goes on), not at the first call."""
        with self._lock:
            self._ensure_started()

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn``'s return value; JobError if it raised, JobCrashed if the child died or timed out."""
        with self._lock:
            conn = self._ensure_started()
            conn.send((fn, args))
            answer = self._wait(conn)
        kind, payload = answer
        if kind == "ok":
            return payload
        name, message, user_error = payload
        raise JobError(message if user_error else f"{name}: {message}", user_error, name)

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                try:
                    self._conn.send(None)
                except OSError:
                    pass
            self._kill(graceful=True)

    def _ensure_started(self) -> Connection:
        if self._process is not None and self._process.is_alive() and self._conn is not None:
            return self._conn
        self._kill()
        context = multiprocessing.get_context("spawn")
        parent, child = context.Pipe()
        self._process = context.Process(
            target=_child_main, args=(child, self.setup, self.setup_args), name="medlens-job", daemon=True
        )
        self._process.start()
        child.close()
        self._conn = parent
        return parent

    def _wait(self, conn: Connection) -> tuple[str, Any]:
        deadline = time.monotonic() + self.timeout_seconds
        while time.monotonic() < deadline:
            try:
                if conn.poll(0.2):
                    return conn.recv()
            except (EOFError, OSError):  # the child closed its end by dying
                break
            if self._process is not None and not self._process.is_alive():
                break
        else:
            self._kill()
            raise JobCrashed(
                f"the job ran longer than {self.timeout_seconds:.0f} s and was stopped; a file may make the "
                "reader or a decoder hang",
                timed_out=True,
            )
        code = self._exit_code()
        self._kill()
        raise JobCrashed(
            f"the job's process died ({_describe(code)}) while running it; a native decoder probably "
            "aborted on corrupt pixel data (the service itself kept running)"
        )

    def _exit_code(self) -> int | None:
        if self._process is None:
            return None
        self._process.join(2.0)
        return self._process.exitcode

    def _kill(self, graceful: bool = False) -> None:
        """Stop the child (after 1 s to leave on its own when ``graceful``) and close the pipe."""
        if self._process is not None:
            if graceful:
                self._process.join(1.0)
            if self._process.is_alive():
                self._process.kill()
                self._process.join(5.0)
        if self._conn is not None:
            self._conn.close()
        self._process, self._conn = None, None


def _describe(code: int | None) -> str:
    if code is None:
        return "no exit status"
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"exit code {code}"


def _child_main(conn: Connection, setup: Callable[..., Any], setup_args: tuple) -> None:
    """The child's loop: build the state once, then answer calls until told to stop (None) or the pipe closes."""
    install_phi_filter()
    state = setup(*setup_args)
    while True:
        try:
            request = conn.recv()
        except (EOFError, OSError):
            return
        if request is None:
            return
        fn, args = request
        try:
            conn.send(("ok", fn(state, *args)))
        except MedlensError as exc:
            conn.send(("error", (type(exc).__name__, str(exc), True)))
        except Exception as exc:  # reported to the parent, which decides whether to retry
            conn.send(("error", (type(exc).__name__, f"{str(exc)[:300]} (at {_origin(exc)})", False)))


def _origin(exc: BaseException) -> str:
    """Where in medlens an unexpected exception came from (file:line of the innermost medlens frame), for bug reports."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if "medlens" in f.filename] or traceback.extract_tb(
        exc.__traceback__
    )
    return f"{Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else "unknown"
