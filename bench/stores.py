"""Real storage servers on loopback, for the loader benchmark and the object-storage tests: moto's
S3 server and Python's HTTP server, each a process of its own (so a test can kill it and start it
again on the same port)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

BUCKET = "seqtrain"
# Few, short retries: a dead server is given up on within about a second.
FAST_RETRIES = {"SEQTRAIN_IO_RETRIES": "2", "SEQTRAIN_IO_BACKOFF": "0.1"}


def free_port() -> int:
    """A TCP port nobody listens on now, so parallel servers and launches don't collide."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A server process listening on 127.0.0.1:`port`; `start` waits until it accepts."""

    def __init__(self, argv: list[str], port: int, env: dict[str, str] | None = None) -> None:
        self.argv, self.port, self.env = argv, port, env
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Server:
        self.process = subprocess.Popen(
            self.argv, env={**os.environ, **(self.env or {})},
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.argv} exited with {self.process.returncode}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"{self.argv} did not listen on port {self.port} within 30 s")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def moto_server(auth: bool = False) -> Server:
    """moto's S3 server; with `auth`, every access key is refused (none is known to its IAM)."""
    port = free_port()
    argv = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    return Server(argv, port, {"INITIAL_NO_AUTH_ACTION_COUNT": "0"} if auth else None)


def http_server(root: Path, port: int | None = None) -> Server:
    """`python -m http.server` (threaded) serving `root`."""
    port = port or free_port()
    argv = [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", "--directory", str(root)]
    return Server([*argv, str(port)], port)


def s3_env(endpoint: str) -> dict[str, str]:
    """The standard AWS variables pointing the S3 client at `endpoint`, plus fast retries
    (the client's own retries off: seqtrain's are under test)."""
    return {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_MAX_ATTEMPTS": "1",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        **FAST_RETRIES,
    }
