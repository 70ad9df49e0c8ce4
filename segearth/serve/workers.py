"""Killable child processes for upload preparation, forked from a zygote.

A thread decoding a decompression bomb cannot be stopped, and multiprocessing's ``spawn`` and
``forkserver`` children re-import the server's main module (seconds per upload, and any script code
not under ``if __name__ == "__main__":``), while a plain ``fork`` would copy a process whose torch
threads are running. So one helper process, the zygote, is started with
``python -m segearth.serve.workers``: it imports the raster stack once, never runs the model, and
forks one short-lived child per upload. The child sends its result over its own socket; when the
time limit passes, the server kills it (SIGKILL) and the upload gets 422.

:class:`PreparePool` runs ``workers`` preparations at once, lets ``max_waiting`` more wait and refuses
the rest with 503. Questions never wait for it: they run on the model thread. POSIX only (fork).
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import pickle
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ..geo.read import RasterInputError
from .errors import ServerFault
from .prepare import Prepared, prepare_files
from .queue import QueueFull
from .upload import TooManyPixels, UploadRejected

log = logging.getLogger("segearth.serve")
STARTUP_S = 120.0  # the zygote's imports, on a busy machine
CHILD_NICE = 5  # questions on the model thread keep most of the CPU while an upload decodes

# Errors that are the file's fault, reported by class name; anything else is a PrepareFailed.
_CLIENT_ERRORS: dict[str, type[Exception]] = {"RasterInputError": RasterInputError, "TooManyPixels": TooManyPixels}


class PrepareTimeout(UploadRejected):
    """Decoding the upload took longer than the limit (answered with 422)."""


class PrepareFailed(ServerFault):
    """The preparation failed for a reason that is not the file's fault (answered with 500)."""


def _child(job: socket.socket, message: bytes) -> None:
    """In the forked child: prepare, send the result, exit without running the zygote's cleanup."""
    try:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        os.nice(CHILD_NICE)
        reply: tuple[str, Prepared | str]
        try:
            reply = ("ok", prepare_files(*pickle.loads(message)))
        except tuple(_CLIENT_ERRORS.values()) as exc:
            reply = (type(exc).__name__, str(exc))
        except Exception:  # logged by the server
            reply = ("internal", traceback.format_exc())
        # Same user and privileges as the server, so its pickle is trusted like the server's own.
        job.sendall(pickle.dumps(reply))
    finally:
        os._exit(0)


def zygote_main(control_fd: int) -> None:
    """The zygote's loop: one message (job arguments + the job's socket) -> fork -> the child's pid."""
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the kernel reaps the children
    control = socket.socket(fileno=control_fd)
    control.send(b"ready")
    while True:
        try:
            message, fds, _, _ = socket.recv_fds(control, 1 << 20, 1)
        except OSError:
            return
        if not message or not fds:  # the server closed its end: it has stopped
            return
        pid = os.fork()
        if pid == 0:
            control.close()
            _child(socket.socket(fileno=fds[0]), message)
        os.close(fds[0])
        control.send(struct.pack("!i", pid))


class Zygote:
    """The server side of the zygote: started on first use, restarted if it died."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._process: subprocess.Popen | None = None
        self._control: socket.socket | None = None

    def _start(self) -> socket.socket:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        # The package's own folder goes first on the path, so the zygote runs this very code.
        path = os.pathsep.join(p for p in (str(Path(__file__).parents[2]), os.environ.get("PYTHONPATH")) if p)
        self._process = subprocess.Popen(
            [sys.executable, "-m", __name__, str(theirs.fileno())], pass_fds=[theirs.fileno()],
            stdin=subprocess.DEVNULL, env={**os.environ, "PYTHONPATH": path})
        theirs.close()
        ours.settimeout(STARTUP_S)
        try:
            if ours.recv(16) != b"ready":
                raise OSError("the zygote exited while starting")
        except OSError:
            ours.close()
            raise
        ours.settimeout(None)
        self._control = ours
        return ours

    def _stop(self) -> None:
        if self._control is not None:
            self._control.close()  # the zygote exits on EOF
        self._control = None
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait()
        self._process = None

    def ensure_started(self) -> None:
        with self._lock:
            if self._control is None or self._process is None or self._process.poll() is not None:
                self._stop()
                self._start()

    def fork(self, args: tuple, job: socket.socket) -> int:
        """Start a child preparing ``args`` that answers on ``job``; its pid."""
        with self._lock:
            for _ in range(2):  # a dead zygote is replaced once
                try:
                    if self._control is None or self._process is None or self._process.poll() is not None:
                        self._stop()
                        self._start()
                    assert self._control is not None
                    socket.send_fds(self._control, [pickle.dumps(args)], [job.fileno()])
                    reply = self._control.recv(4)
                    if len(reply) == 4:
                        return struct.unpack("!i", reply)[0]
                except OSError:
                    log.warning("the upload preparation process failed; starting a new one", exc_info=True)
                self._stop()
        raise PrepareFailed("the upload preparation process could not be started")


_ZYGOTE = Zygote()  # one per server process, shared by every app in it


def _receive_all(sock: socket.socket, timeout_s: float) -> bytes | None:
    """Everything until EOF, or None when ``timeout_s`` passes first."""
    deadline = time.monotonic() + timeout_s
    chunks: list[bytes] = []
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        sock.settimeout(left)
        try:
            chunk = sock.recv(1 << 16)
        except TimeoutError:
            return None
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


class PreparePool:
    """Runs :func:`~segearth.serve.prepare.prepare_files` in killable children, ``workers`` at a time."""

    def __init__(self, workers: int, max_waiting: int, timeout_s: float) -> None:
        self.capacity, self.timeout_s = workers + max_waiting, timeout_s
        self._threads = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="segearth-prepare")
        self._lock = threading.Lock()
        self._outstanding = 0
        self._pids: set[int] = set()
        self._closed = False
        self._threads.submit(self._warm_up)  # the first upload need not wait for the zygote's imports

    @staticmethod
    def _warm_up() -> None:
        try:
            _ZYGOTE.ensure_started()
        except Exception:  # the first upload retries and reports
            log.warning("the upload preparation process could not be started in advance", exc_info=True)

    @property
    def outstanding(self) -> int:
        """Preparations running or waiting."""
        with self._lock:
            return self._outstanding

    async def run(self, folder: Path, path: Path, filename: str, bands: tuple[int, ...] | None, model_size: int,
                  display_max: int, max_pixels: int) -> Prepared:
        """Prepare one upload in a child; raises the file's error, PrepareTimeout, PrepareFailed or QueueFull."""
        with self._lock:
            if self._outstanding >= self.capacity:
                raise QueueFull(max(1, math.ceil(self.timeout_s / 4)), "the server is busy preparing other uploads")
            self._outstanding += 1
        args = (folder, path, filename, bands, model_size, display_max, max_pixels)
        try:
            return await asyncio.get_running_loop().run_in_executor(self._threads, self._run, args)
        finally:
            with self._lock:
                self._outstanding -= 1

    def _run(self, args: tuple) -> Prepared:
        ours, theirs = socket.socketpair()
        try:
            pid = _ZYGOTE.fork(args, theirs)
            theirs.close()  # the child holds the other copy: its exit reads as EOF here
            with self._lock:
                self._pids.add(pid)
                closed = self._closed
            try:
                data = None if closed else _receive_all(ours, self.timeout_s)
            finally:
                with self._lock:
                    self._pids.discard(pid)
            if data is None:
                _kill(pid)  # no EOF yet: the child is alive, so the pid is still its own
                if closed:
                    raise PrepareFailed("the server is shutting down")
                raise PrepareTimeout(
                    f"preparing the image took longer than the limit of {self.timeout_s:g} s; it is too large or "
                    "too slow to decode (a GeoTIFF with internal overviews, e.g. from gdaladdo, reads much faster)")
        finally:
            ours.close()
            theirs.close()
        if not data:
            raise PrepareFailed("preparing the image stopped unexpectedly (out of memory, or the server is stopping)")
        kind, value = pickle.loads(data)
        if kind == "ok":
            return value
        if kind in _CLIENT_ERRORS:
            raise _CLIENT_ERRORS[kind](value)
        log.error("preparing an upload failed:\n%s", value)
        raise PrepareFailed("preparing the image failed (internal error; see the server log)")

    def shutdown(self) -> None:
        """Kill the preparations in progress (their uploads fail) and stop the pool."""
        with self._lock:
            self._closed = True
            pids = list(self._pids)
        for pid in pids:
            _kill(pid)
        self._threads.shutdown(wait=True, cancel_futures=True)


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


if __name__ == "__main__":
    zygote_main(int(sys.argv[1]))
