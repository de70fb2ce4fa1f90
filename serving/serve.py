#!/usr/bin/env python3
"""Runs NVIDIA Triton Inference Server on a model repository, in the foreground.

The server is the ``tritonserver`` of the PyPI package ``nvidia-pytriton`` installed in this
Python environment (its Python backend then runs the models with this environment's Python), or
the ``tritonserver`` on PATH (NVIDIA's container).  Prints the ready URLs once every model is
loaded.  SIGINT or SIGTERM stop it cleanly: the models are unloaded first (Triton answers new
requests with an error and finishes those in flight; ``bert_qa`` before the ``bert_engine`` it
calls), then Triton is told to exit.  Triton alone would keep taking requests on open keep-alive
connections until ``--exit-timeout`` and then drop those in flight.

Triton does not restart a Python-backend process that dies (its model then fails every request
while the server still reports ready), so this launcher watches them: when one dies, it reloads
that model through Triton's repository API, and stops the server with a non-zero status if the
reload fails.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from helpers.cli import RunnerError, exit_on_error  # noqa: E402
from serving import ENGINE_MODEL  # noqa: E402

PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class ServerInstall:
    """A tritonserver binary and what it needs to run here."""

    binary: Path
    library_path: Path | None
    """Folder of the wheel's bundled libraries (LD_LIBRARY_PATH)."""
    python_backend: Path | None
    """The wheel's Python backend folder, still without a stub for this Python."""
    stub: Path | None


def find_server() -> ServerInstall:
    """The wheel's tritonserver when nvidia-pytriton is installed here, else the one on PATH."""
    # Located, not imported: the package's own imports are of no use here.
    spec = importlib.util.find_spec("pytriton")
    if spec is not None and spec.origin is not None:
        package = Path(spec.origin).resolve().parent
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        dist = package / "tritonserver"
        stub = dist / "python_backend_stubs" / version / "triton_python_backend_stub"
        if not stub.is_file():
            raise RunnerError(f"nvidia-pytriton has no Python-backend stub for Python {version}")
        return ServerInstall(dist / "bin" / "tritonserver", package.parent / "nvidia_pytriton.libs", dist / "backends" / "python", stub)
    on_path = shutil.which("tritonserver")
    if on_path is None:
        raise RunnerError(
            "no tritonserver: install the serving environment (bash scripts/setup_serving_env.sh) and run "
            "this with .venv-serving/bin/python, or use NVIDIA's tritonserver container"
        )
    return ServerInstall(Path(on_path), None, None, None)


def backend_directory(install: ServerInstall, workspace: Path) -> Path | None:
    """A backends folder whose Python backend runs this Python (the wheel's folder has no stub in it)."""
    if install.python_backend is None or install.stub is None:
        return None
    target = workspace / "backends" / "python"
    shutil.copytree(install.python_backend, target)
    shutil.copy2(install.stub, target / "triton_python_backend_stub")
    return target.parent


def server_command(install: ServerInstall, backends: Path | None, args: argparse.Namespace) -> list[str]:
    command = [
        str(install.binary),
        f"--model-repository={args.model_repository}",
        f"--http-address={args.host}",
        f"--http-port={args.http_port}",
        f"--grpc-address={args.host}",
        f"--grpc-port={args.grpc_port}",
        f"--metrics-address={args.host}",
        f"--metrics-port={args.metrics_port}",
        f"--exit-timeout-secs={args.exit_timeout}",
        f"--log-verbose={args.log_verbose}",
        # Explicit control (every model loaded at start) lets a model be reloaded when its process dies.
        "--model-control-mode=explicit",
        "--load-model=*",
    ]
    if backends is not None:
        command.append(f"--backend-directory={backends}")
    return command


def server_environment(install: ServerInstall) -> dict[str, str]:
    env = dict(os.environ)
    if install.library_path is not None:
        env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (env.get("LD_LIBRARY_PATH"), str(install.library_path)) if p)
    # The Python backend's stub runs the first python3 on PATH: this environment's.
    env["PATH"] = os.pathsep.join((str(Path(sys.executable).parent), env.get("PATH", "")))
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def die_with_parent() -> None:
    """Runs in the child before exec: the server gets SIGTERM if this process dies."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def is_ready(host: str, port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://{host}:{port}/v2/health/ready", timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def python_stubs(server_pid: int) -> Counter[str]:
    """Live Python-backend processes of the server, counted by model name."""
    counts: Counter[str] = Counter()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            command = (entry / "cmdline").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if parent == server_pid and len(command) > 1 and command[0].endswith(b"triton_python_backend_stub"):
            # The stub's first argument is <repository>/<model>/<version>/model.py.
            counts[Path(command[1].decode(errors="replace")).parent.parent.name] += 1
    return counts


def reload_model(host: str, port: int, model: str) -> bool:
    """Unload and load ``model`` through Triton's repository API; True when it is loaded again."""
    for action in ("unload", "load"):
        request = urllib.request.Request(f"http://{host}:{port}/v2/repository/models/{model}/{action}", data=b"{}", method="POST")
        try:
            with urllib.request.urlopen(request, timeout=600) as response:
                if response.status != 200:
                    return False
        except (urllib.error.URLError, OSError) as err:
            print(f"serve: {action} of {model} failed: {err}", file=sys.stderr, flush=True)
            return False
    return True


def repository_index(host: str, port: int) -> list[dict]:
    request = urllib.request.Request(f"http://{host}:{port}/v2/repository/index", data=b"{}", method="POST")
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def unload_all(host: str, port: int, timeout: float) -> None:
    """Unload every ready model, callers before the engine they call, each once its requests finished."""
    try:
        ready = [m["name"] for m in repository_index(host, port) if m.get("state") == "READY"]
    except (urllib.error.URLError, OSError, ValueError):
        return
    deadline = time.monotonic() + timeout
    for model in sorted(ready, key=lambda name: name == ENGINE_MODEL):
        request = urllib.request.Request(f"http://{host}:{port}/v2/repository/models/{model}/unload", data=b"{}", method="POST")
        try:
            urllib.request.urlopen(request, timeout=timeout).close()
            while time.monotonic() < deadline and any(
                m["name"] == model and m.get("state") in ("READY", "UNLOADING") for m in repository_index(host, port)
            ):
                time.sleep(0.1)
        except (urllib.error.URLError, OSError, ValueError):
            return


def watch(process: subprocess.Popen, host: str, port: int, stopping: Callable[[], bool]) -> bool:
    """Wait for the server to exit or a stop request, reloading any model whose Python-backend process dies.

    Returns False when a reload failed (the server is then being stopped).
    """
    expected = python_stubs(process.pid)
    while process.poll() is None and not stopping():
        time.sleep(0.2)
        current = python_stubs(process.pid)
        dead = [model for model, count in expected.items() if current[model] < count]
        for model in dead:
            print(f"serve: a Python-backend process of model {model} died; reloading {model}", file=sys.stderr, flush=True)
            if not reload_model(host, port, model):
                print(f"serve: cannot reload {model}; stopping the server", file=sys.stderr, flush=True)
                process.send_signal(signal.SIGTERM)
                process.wait()
                return False
            print(f"serve: {model} reloaded", file=sys.stderr, flush=True)
        if dead:
            expected = python_stubs(process.pid)
    return True


def url_host(host: str) -> str:
    """The host to connect to for a listen address (a wildcard listens on loopback too)."""
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def run_server(install: ServerInstall, args: argparse.Namespace, stopping: Callable[[], bool]) -> int:
    """Start tritonserver, announce it once ready, keep its models alive until it exits or
    ``stopping()``, then stop it gracefully.  Returns its exit status."""
    with tempfile.TemporaryDirectory(prefix="demobert-triton-") as workspace:
        backends = backend_directory(install, Path(workspace))
        process = subprocess.Popen(
            server_command(install, backends, args),
            env=server_environment(install),
            start_new_session=True,
            preexec_fn=die_with_parent,
        )
        try:
            host = url_host(args.host)
            deadline = time.monotonic() + args.ready_timeout
            while not stopping() and process.poll() is None and not is_ready(host, args.http_port):
                if time.monotonic() > deadline:
                    process.send_signal(signal.SIGTERM)
                    process.wait()
                    raise RunnerError(f"the server was not ready after {args.ready_timeout} s")
                time.sleep(0.2)
            if process.poll() is None and not stopping():
                print(
                    f"Triton Inference Server ready: http://{host}:{args.http_port} (HTTP), "
                    f"{host}:{args.grpc_port} (gRPC), http://{host}:{args.metrics_port}/metrics",
                    flush=True,
                )
            recovered = watch(process, host, args.http_port, stopping)
            if process.poll() is None:
                print("Stopping: finishing the requests in flight", flush=True)
                unload_all(host, args.http_port, args.exit_timeout)
                process.send_signal(signal.SIGTERM)
            status = process.wait()
            if not recovered:
                raise RunnerError("a Python-backend process died and its model could not be reloaded")
            return status
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
            # A Python-backend process that the server started while stopping can outlive it; the
            # server leads its own process group, so whatever is left of the group goes with it.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)


def serve(args: argparse.Namespace) -> int:
    repository = Path(args.model_repository)
    if not repository.is_dir():
        raise RunnerError(f"model repository not found: {repository}")
    install = find_server()
    stop_requested = False

    def stop(signum: int, _frame: object) -> None:
        nonlocal stop_requested
        stop_requested = True

    # Installed before the server starts: a stop that arrives while it starts still stops it cleanly.
    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        status = run_server(install, args, lambda: stop_requested)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if stop_requested and status in (0, -signal.SIGTERM):
        print("Triton Inference Server stopped", flush=True)
        return 0
    if status != 0:
        raise RunnerError(f"tritonserver exited with status {status} (its log above says why)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model-repository", required=True, help="Folder written by python3 -m serving.repository")
    parser.add_argument("--host", default="127.0.0.1", help="Address the endpoints listen on (default: 127.0.0.1)")
    parser.add_argument("--http-port", type=int, default=8000, help="HTTP/REST port (default: 8000)")
    parser.add_argument("--grpc-port", type=int, default=8001, help="gRPC port (default: 8001)")
    parser.add_argument("--metrics-port", type=int, default=8002, help="Prometheus metrics port (default: 8002)")
    parser.add_argument("--exit-timeout", type=int, default=30, help="Seconds in-flight requests get to finish on stop (default: 30)")
    parser.add_argument("--ready-timeout", type=float, default=300.0, help="Seconds to wait for the models to load (default: 300)")
    parser.add_argument("--log-verbose", type=int, default=0, help="Triton's verbose log level (default: 0)")
    return parser


@exit_on_error
def main(argv: list[str] | None = None) -> int:
    return serve(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
