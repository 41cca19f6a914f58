"""A deadline for per-clip work: run one call in a child process that can be stopped.

A clip that stalls (a decoder wedged in native code, a mount or bucket that stops
answering, a named pipe that never delivers) must not stall its worker or the run. A
thread cannot be stopped from outside, and one stuck in native code may hold the GIL, so
the call runs in a child process of our own: the parent waits at most ``seconds`` for the
answer and kills the child when none comes. One child per process serves call after call
(started once, about a second), so the cost per clip is pickling its arguments and result
through a pipe.

    runner = DeadlineRunner()
    result = runner.call("tasks.decode.sources:decode_clip", (ref, storage, 5, 224), seconds=60)

``target`` names the function as ``"module:function"`` and is imported in the child, so
this module depends on nothing of the project. Errors raised by the function come back
as themselves; a call past its deadline raises :class:`DeadlineExceeded`, a child that
dies (a crash in native code) raises :class:`ChildDied`. Either way the next call starts
a fresh child.
"""
from __future__ import annotations

import importlib
import logging
import os
import pickle
import subprocess
import sys
import threading
import time
from multiprocessing.connection import Connection
from typing import Any

log = logging.getLogger(__name__)

STARTUP_TIMEOUT_S = 120.0  # importing the decoders in a fresh interpreter; generous for loaded nodes


class DeadlineExceeded(TimeoutError):
    """The call gave no answer within its deadline; its child process was killed."""


class ChildDied(RuntimeError):
    """The child process ended while working on the call (e.g. a crash in native code)."""


class DeadlineRunner:
    """Runs calls one at a time in a child process, each with a deadline. Thread-safe."""

    def __init__(self, startup_timeout_s: float = STARTUP_TIMEOUT_S) -> None:
        self.startup_timeout_s = startup_timeout_s
        self._proc: subprocess.Popen | None = None
        self._send: Connection | None = None
        self._recv: Connection | None = None
        self._lock = threading.Lock()

    def call(self, target: str, args: tuple, seconds: float) -> Any:
        """target(*args) in the child; its result, or its exception re-raised here."""
        if seconds <= 0:
            raise ValueError(f"deadline must be > 0 seconds, got {seconds}")
        with self._lock:
            self._ensure_started()
            assert self._send is not None and self._recv is not None
            try:
                self._send.send_bytes(pickle.dumps((target, args), protocol=pickle.HIGHEST_PROTOCOL))
            except OSError:
                code = self._stop()
                raise ChildDied(f"the worker process had ended (exit code {code})") from None
            start = time.monotonic()
            if not self._recv.poll(seconds):
                self._stop()
                raise DeadlineExceeded(f"no result within {seconds:g} s; the worker process was stopped")
            try:
                ok, value = pickle.loads(self._recv.recv_bytes())
            except (EOFError, OSError):
                code = self._stop()
                raise ChildDied(f"the worker process died after {time.monotonic() - start:.1f} s "
                                f"(exit code {code})") from None
        if ok:
            return value
        raise value

    def close(self) -> None:
        with self._lock:
            self._stop()

    def __del__(self) -> None:  # pragma: no cover - best effort at interpreter exit
        try:
            self._stop()
        except Exception:  # noqa: BLE001
            pass

    # -- the child -----------------------------------------------------------------------
    def _ensure_started(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            return
        self._stop()
        to_child_r, to_child_w = os.pipe()
        from_child_r, from_child_w = os.pipe()
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", __name__, str(to_child_r), str(from_child_w), str(os.getpid())],
                pass_fds=(to_child_r, from_child_w),
                stdin=subprocess.DEVNULL,
                close_fds=True,
            )
        finally:
            os.close(to_child_r)
            os.close(from_child_w)
        self._proc = proc
        self._send = Connection(to_child_w, readable=False)
        self._recv = Connection(from_child_r, writable=False)
        if not self._recv.poll(self.startup_timeout_s):
            self._stop()
            raise ChildDied(f"the worker process did not start within {self.startup_timeout_s:g} s")
        try:
            self._recv.recv_bytes()  # "ready"
        except (EOFError, OSError):
            code = self._stop()
            raise ChildDied(f"the worker process failed to start (exit code {code})") from None

    def _stop(self) -> int | None:
        proc, self._proc = self._proc, None
        for conn in (self._send, self._recv):
            if conn is not None:
                try:
                    conn.close()
                except OSError:
                    pass
        self._send = self._recv = None
        if proc is None:
            return None
        if proc.poll() is None:
            proc.kill()
        try:
            return proc.wait(timeout=10)
        except subprocess.TimeoutExpired:  # pragma: no cover - a process that ignores SIGKILL
            log.warning("worker process %d did not exit after SIGKILL", proc.pid)
            return None


def _die_with_parent(parent: int) -> None:
    """Linux: have the kernel kill this child when its parent goes, even while it is stuck."""
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):  # pragma: no cover - no prctl: the pipe's EOF still ends us
            return
    if os.getppid() != parent:  # the parent went before the signal was armed
        os._exit(0)


def _serve(recv: Connection, send: Connection) -> None:
    send.send_bytes(b"ready")
    functions: dict[str, Any] = {}
    while True:
        try:
            target, args = pickle.loads(recv.recv_bytes())
        except EOFError:  # the parent closed the pipe or died: nothing more to do
            return
        try:
            if target not in functions:
                module, _, name = target.partition(":")
                functions[target] = getattr(importlib.import_module(module), name)
            reply = (True, functions[target](*args))
        except Exception as e:  # noqa: BLE001 - every error goes back to the caller
            reply = (False, e)
        try:
            data = pickle.dumps(reply, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as e:  # noqa: BLE001 - an unpicklable result or exception
            data = pickle.dumps((False, RuntimeError(f"{target}: result cannot be sent back: {e!r}")))
        send.send_bytes(data)


if __name__ == "__main__":
    _die_with_parent(int(sys.argv[3]))
    _serve(Connection(int(sys.argv[1]), writable=False), Connection(int(sys.argv[2]), readable=False))
