"""`ads serve`: the packaged GGUF behind llama-cpp-python's OpenAI-compatible server.

The quickest way to try `backend: openai` on one machine, and what the server tests and
`benchmarks/bench_backend.py` start. Needs the `server` extra: `pip install -e '.[server]'`
(llama-cpp-python compiles from source, about 9 minutes on 2 cores the first time; pip keeps
the built wheel).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from ..engine.roles import role_source
from ..errors import AdsError
from ..paths import Paths
from ..sources import extract_file


def gguf_path(params: dict, role: str, paths: Paths) -> Path:
    """The GGUF file that `lm.<role>` names, fetched and extracted into the cache as usual."""
    source, cache_dir, lock = role_source(params, role, paths)
    if not source.split("#")[-1].endswith(".gguf"):
        raise AdsError(f"lm.{role}: {source!r} is not a GGUF file; llama.cpp serves GGUF models only")
    return extract_file(source, cache_dir, lock)[0]


def server_command(gguf: Path, alias: str, host: str, port: int, n_ctx: int = 4096, threads: int = 0) -> list[str]:
    if importlib.util.find_spec("llama_cpp") is None:
        raise AdsError("llama-cpp-python is not installed: pip install -e '.[server]' (compiles llama.cpp once, 4-9 min on 2 cores)")
    threads = threads or os.cpu_count() or 1
    return [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--model_alias", alias, "--host", host,
            "--port", str(port), "--n_ctx", str(n_ctx), "--n_threads", str(threads), "--n_threads_batch", str(threads)]


def become(command: list[str]) -> None:
    """Replace this process with the server (`os.execv`): SIGTERM, SIGINT and SIGHUP then reach
    the server itself, and no child is left holding the port when `ads serve` is stopped."""
    logging.shutdown()  # flush logs/serve.log: execv does not return
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(command[0], command)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_ready(base_url: str, process: subprocess.Popen | None = None, timeout: float = 120.0) -> None:
    """Poll `<base_url>/models` until the server answers; fail early if its process exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise AdsError(f"the server exited with code {process.returncode} before it was ready")
        try:
            if httpx.get(base_url.rstrip("/") + "/models", timeout=2.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.25)
    raise AdsError(f"{base_url}: no answer within {timeout:g}s")


def start(gguf: Path, alias: str, host: str = "127.0.0.1", port: int = 0, threads: int = 0,
          log_file: Path | None = None) -> tuple[subprocess.Popen, str]:
    """Start the server in the background; returns (process, base_url) once it answers."""
    port = port or free_port(host)
    out = open(log_file, "ab") if log_file else subprocess.DEVNULL
    process = subprocess.Popen(server_command(gguf, alias, host, port, threads=threads), stdout=out, stderr=subprocess.STDOUT)
    base_url = f"http://{host}:{port}/v1"
    try:
        wait_ready(base_url, process)
    except BaseException:
        process.kill()
        process.wait()
        raise
    return process, base_url
