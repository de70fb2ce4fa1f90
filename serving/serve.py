#!/usr/bin/env python3
"""Runs NVIDIA Triton Inference Server on a model repository, in the foreground.

The server is the ``tritonserver`` of the PyPI package ``nvidia-pytriton`` installed in this
Python environment (its Python backend then runs the models with this environment's Python), or
the ``tritonserver`` on PATH (NVIDIA's container).  Prints the ready URLs once every model is
loaded; SIGINT or SIGTERM stop it cleanly: Triton refuses new requests, finishes those in flight
(for up to ``--exit-timeout`` seconds) and exits.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from helpers.runner import RunnerError, exit_on_error  # noqa: E402

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
    try:
        import pytriton
    except ImportError:
        pytriton = None
    if pytriton is not None:
        package = Path(pytriton.__file__).resolve().parent
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


def url_host(host: str) -> str:
    """The host to connect to for a listen address (a wildcard listens on loopback too)."""
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def serve(args: argparse.Namespace) -> int:
    repository = Path(args.model_repository)
    if not repository.is_dir():
        raise RunnerError(f"model repository not found: {repository}")
    install = find_server()
    with tempfile.TemporaryDirectory(prefix="demobert-triton-") as workspace:
        backends = backend_directory(install, Path(workspace))
        process = subprocess.Popen(
            server_command(install, backends, args),
            env=server_environment(install),
            start_new_session=True,
            preexec_fn=die_with_parent,
        )
        stop_requested = False

        def stop(signum: int, _frame: object) -> None:
            nonlocal stop_requested
            stop_requested = True
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)

        previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            host = url_host(args.host)
            deadline = time.monotonic() + args.ready_timeout
            while not stop_requested and process.poll() is None and not is_ready(host, args.http_port):
                if time.monotonic() > deadline:
                    process.send_signal(signal.SIGTERM)
                    process.wait()
                    raise RunnerError(f"the server was not ready after {args.ready_timeout} s")
                time.sleep(0.2)
            if process.poll() is None and not stop_requested:
                print(
                    f"Triton Inference Server ready: http://{host}:{args.http_port} (HTTP), "
                    f"{host}:{args.grpc_port} (gRPC), http://{host}:{args.metrics_port}/metrics",
                    flush=True,
                )
            status = process.wait()
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
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
