"""Start the real OpenAI-compatible servers ``scripts/install_servers.sh`` installs, on loopback.

llama.cpp's ``llama-server`` and llama-cpp-python's server, serving a GGUF, for the tests that must
meet a server no one here wrote (``tests/test_real_servers.py``) and for the forcing benchmark. One
place knows where they live, how they start and when they are ready, so both use the same servers.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

SERVERS = Path(os.environ.get("REFLECTUNE_SERVERS") or Path.home() / ".cache" / "reflectune" / "servers")
LLAMA_SERVER = SERVERS / "llama-server-11434" / "llama-server"
LLAMA_CPP_PYTHON = SERVERS / "llama-cpp-python" / "bin" / "python"
#: server name -> the executable that must exist for it
EXECUTABLES = {"llama-server": LLAMA_SERVER, "llama-cpp-python": LLAMA_CPP_PYTHON}


class ServerFailed(RuntimeError):
    """The server exited or did not become ready; the message ends with its log's tail."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def command(name: str, gguf: Path, port: int) -> tuple[list[str], str]:
    """How to start ``name``, and the path that answers 200 once it is ready."""
    if name == "llama-server":
        return [str(LLAMA_SERVER), "-m", str(gguf), "--host", "127.0.0.1", "--port", str(port), "-t", "2",
                "-c", "8192", "-np", "4", "--no-webui"], "/health"
    return [str(LLAMA_CPP_PYTHON), "-m", "llama_cpp.server", "--model", str(gguf), "--host", "127.0.0.1",
            "--port", str(port), "--n_threads", "2", "--n_ctx", "4096", "--verbose", "false"], "/v1/models"


@contextlib.contextmanager
def serving(name: str, gguf: Path, log: Path, *, timeout_s: float = 120.0) -> Iterator[str]:
    """Start ``name`` on a free loopback port; yield its base URL (``.../v1``); stop it at the end."""
    port = free_port()
    argv, ready = command(name, gguf, port)
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}  # an idle server must not spin on our 2 cores
    with log.open("wb") as out:
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env,
                                   start_new_session=True)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if process.poll() is not None:
                raise ServerFailed(f"{name} exited with {process.returncode} before it was ready: "
                                   f"{log.read_text(errors='replace')[-800:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}{ready}", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                raise ServerFailed(f"{name} not ready within {timeout_s:g} s: "
                                   f"{log.read_text(errors='replace')[-800:]}")
            time.sleep(0.2)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(10)
