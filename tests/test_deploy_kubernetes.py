"""The Kubernetes deployment of deploy/kubernetes, checked without a cluster: the manifests against the
Kubernetes OpenAPI schemas (kubernetes-validate, strict) and through kustomize; names, labels, ports,
probe paths, volumes and the autoscaler's metric agree with each other and with Triton (its ports,
health endpoints and the counters its metrics port exports); the prometheus-adapter query parses as
PromQL; the init container's script unpacks a local archive; the server image's Dockerfile."""

from __future__ import annotations

import copy
import io
import os
import re
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest
import yaml
from test_docker import copy_sources, dockerignore_patterns, ignored_by_docker, instructions, run_hadolint

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy" / "kubernetes"
DOCKERFILE = DEPLOY / "Dockerfile"
# Files beside the kustomization that are not cluster resources of it (see its comment).
OPTIONAL = {"servicemonitor.yaml", "prometheus-adapter-values.yaml"}
TRITON_PORTS = {"http": 8000, "grpc": 8001, "metrics": 8002}
# Per-model counters on Triton's metrics port, labelled `model` and `version`.
QUEUE_COUNTER = "nv_inference_queue_duration_us"
SUCCESS_COUNTER = "nv_inference_request_success"
QA_MODEL = "bert_qa"
KUBERNETES_VERSIONS = ["1.27.0", "latest"]


def load_one(name: str) -> dict:
    documents = [d for d in yaml.safe_load_all((DEPLOY / name).read_text()) if d is not None]
    assert len(documents) == 1, f"{name}: one object per file"
    return documents[0]


@pytest.fixture(scope="module")
def kustomization() -> dict:
    return load_one("kustomization.yaml")


@pytest.fixture(scope="module")
def resources(kustomization) -> dict[str, dict]:
    objects = [load_one(name) for name in kustomization["resources"]]
    by_kind = {o["kind"]: o for o in objects}
    assert len(by_kind) == len(objects), "one object of each kind"
    return by_kind


@pytest.fixture(scope="module")
def deployment(resources) -> dict:
    return resources["Deployment"]


@pytest.fixture(scope="module")
def pod(deployment) -> dict:
    return deployment["spec"]["template"]["spec"]


@pytest.fixture(scope="module")
def server(pod) -> dict:
    (container,) = pod["containers"]
    return container


@pytest.fixture(scope="module")
def adapter_rule() -> dict:
    (rule,) = load_one("prometheus-adapter-values.yaml")["rules"]["custom"]
    return rule


def container_ports(container: dict) -> dict[str, int]:
    return {p["name"]: p["containerPort"] for p in container["ports"]}


def server_options(container: dict) -> dict[str, str]:
    """The container's `--name=value` arguments."""
    options = {}
    for argument in container["args"]:
        match = re.fullmatch(r"--([\w-]+)=(.*)", argument)
        assert match, f"{argument!r}: expected --name=value"
        options[match.group(1)] = match.group(2)
    return options


def test_kustomization_lists_every_cluster_manifest(kustomization, resources):
    listed = set(kustomization["resources"])
    on_disk = {p.name for p in DEPLOY.glob("*.yaml")}
    assert on_disk == listed | OPTIONAL | {"kustomization.yaml"}
    assert set(resources) == {"Deployment", "Service", "HorizontalPodAutoscaler"}


def test_kustomize_builds_the_manifests_with_the_pushed_image(kustomization, resources):
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed")
    result = subprocess.run([kubectl, "kustomize", str(DEPLOY)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    built = {o["kind"]: o for o in yaml.safe_load_all(result.stdout)}
    (image,) = kustomization["images"]
    expected = copy.deepcopy(resources)
    pod = expected["Deployment"]["spec"]["template"]["spec"]
    for container in pod["initContainers"] + pod["containers"]:
        assert container["image"] == f"{image['name']}:{image['newTag']}"
        container["image"] = f"{image['newName']}:{image['newTag']}"
    assert built == expected


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_manifests_match_the_kubernetes_schema(resources, version):
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    if version == "latest":
        version = kubernetes_validate.utils.latest_version()
    for obj in resources.values():
        kubernetes_validate.validate(obj, version, strict=True)
    # The validator rejects what the API server would: a misspelled field, a port given as text.
    misspelled = copy.deepcopy(resources["Deployment"])
    container = misspelled["spec"]["template"]["spec"]["containers"][0]
    container["readinessprobe"] = container.pop("readinessProbe")
    text_port = copy.deepcopy(resources["Service"])
    text_port["spec"]["ports"][0]["port"] = "8000"
    for broken in (misspelled, text_port):
        with pytest.raises(kubernetes_validate.ValidationError):
            kubernetes_validate.validate(broken, version, strict=True)


def test_service_selects_the_pods_on_triton_ports(resources, deployment, server):
    service = resources["Service"]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert container_ports(server) == TRITON_PORTS
    ports = {p["name"]: (p["port"], p["targetPort"]) for p in service["spec"]["ports"]}
    assert ports == {name: (number, name) for name, number in TRITON_PORTS.items()}


def test_server_listens_on_the_declared_ports(server):
    options = server_options(server)
    assert server["command"] == ["tritonserver"]
    for name, number in TRITON_PORTS.items():
        assert options[f"{name}-port"] == str(number)


def test_probes_ask_triton_health_endpoints_on_the_http_port(server):
    ports = container_ports(server)
    ready, live = "/v2/health/ready", "/v2/health/live"
    for probe, path in {"startupProbe": ready, "readinessProbe": ready, "livenessProbe": live}.items():
        request = server[probe]["httpGet"]
        assert request["path"] == path, probe
        port = request["port"]
        assert ports.get(port, port) == TRITON_PORTS["http"], probe
    # Loading an engine takes minutes; the startup probe, not liveness, must cover that.
    startup = server["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 300


def test_termination_grace_covers_pre_stop_and_triton_drain(pod, server):
    sleep_command = server["lifecycle"]["preStop"]["exec"]["command"]
    assert sleep_command[0] == "sleep"
    drain = int(server_options(server)["exit-timeout-secs"])
    assert pod["terminationGracePeriodSeconds"] > int(sleep_command[1]) + drain


def test_model_repository_is_the_volume_the_init_container_fills(pod, server):
    repository = server_options(server)["model-repository"]
    server_mounts = {m["mountPath"]: m for m in server["volumeMounts"]}
    volume_name = server_mounts[repository]["name"]
    assert server_mounts[repository]["readOnly"] is True
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[volume_name]
    (init,) = pod["initContainers"]
    assert {m["name"]: m["mountPath"] for m in init["volumeMounts"]} == {volume_name: repository}


def run_init_container(pod: dict, server: dict, repository: Path, url: str) -> subprocess.CompletedProcess[str]:
    """The init container's command on this machine, with the repository path moved to ``repository``."""
    (init,) = pod["initContainers"]
    repository_path = server_options(server)["model-repository"]
    command = [word.replace(repository_path, str(repository)) for word in init["command"] + init["args"]]
    environment = {**os.environ, "MODEL_REPOSITORY_URL": url}
    return subprocess.run(command, env=environment, capture_output=True, text=True, check=False)


def make_archive(path: Path, models: list[str]) -> str:
    with tarfile.open(path, "w:gz") as archive:
        for model in models:
            config = tarfile.TarInfo(f"./{model}/config.pbtxt")
            text = f'name: "{model}"\n'.encode()
            config.size = len(text)
            archive.addfile(config, io.BytesIO(text))
    return path.as_uri()


def test_init_container_unpacks_the_repository_archive(pod, server, tmp_path):
    url = make_archive(tmp_path / "repository.tar.gz", [QA_MODEL, "bert_engine"])
    repository = tmp_path / "models"
    repository.mkdir()
    result = run_init_container(pod, server, repository, url)
    assert result.returncode == 0, result.stderr
    assert (repository / QA_MODEL / "config.pbtxt").read_text() == f'name: "{QA_MODEL}"\n'
    assert (repository / "bert_engine" / "config.pbtxt").is_file()

    incomplete = make_archive(tmp_path / "incomplete.tar.gz", [QA_MODEL])
    for name in ("second", "third"):
        (tmp_path / name).mkdir()
    result = run_init_container(pod, server, tmp_path / "second", incomplete)
    assert result.returncode != 0
    assert "bert_engine/config.pbtxt" in result.stderr

    result = run_init_container(pod, server, tmp_path / "third", (tmp_path / "missing.tar.gz").as_uri())
    assert result.returncode != 0, "a failed download fails the pod start"


def test_image_is_triton_24_10_with_the_project_code(pod, server, kustomization):
    dockerfile = instructions(DOCKERFILE.read_text())
    arguments = dict(a.split("=", 1) for keyword, a in dockerfile if keyword == "ARG" and "=" in a)
    base_line = next(a for keyword, a in dockerfile if keyword == "FROM")
    base = re.sub(r"\$\{(\w+)\}", lambda m: arguments[m.group(1)], base_line)
    # Triton 2.51, the tritonserver of nvidia-pytriton 0.7 that serving/ is tested with, is release 24.10.
    assert base == "nvcr.io/nvidia/tritonserver:24.10-py3"
    (image,) = kustomization["images"]
    assert image["newTag"] == "24.10"
    assert {c["image"] for c in pod["initContainers"] + pod["containers"]} == {f"{image['name']}:24.10"}

    patterns = dockerignore_patterns()
    sources = [source for keyword, a in dockerfile if keyword == "COPY" for source in copy_sources(a)]
    for source in sources:
        assert (REPO / source).exists(), f"COPY {source}: not in the repository"
        assert not ignored_by_docker(source, patterns), f"COPY {source}: excluded by .dockerignore"
    # The packages the repository's model.py files import, where --project-root points.
    assert {"helpers", "serving"} <= set(sources)
    workdir = next(a for keyword, a in dockerfile if keyword == "WORKDIR")
    readme = (DEPLOY / "README.md").read_text()
    assert re.findall(r"--project-root (\S+)", readme) == [workdir]


def test_hadolint_passes_on_the_server_image():
    result = run_hadolint(DOCKERFILE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_one_gpu_and_a_memory_backed_dev_shm(pod, server):
    resources = server["resources"]
    assert resources["limits"]["nvidia.com/gpu"] == 1
    assert resources.get("requests", {}).get("nvidia.com/gpu", 1) == 1
    shm = next(m for m in server["volumeMounts"] if m["mountPath"] == "/dev/shm")
    volume = next(v for v in pod["volumes"] if v["name"] == shm["name"])
    assert volume["emptyDir"]["medium"] == "Memory"


def test_autoscaler_owns_the_deployment_replicas(resources, deployment):
    assert "replicas" not in deployment["spec"], "kubectl apply would reset the autoscaler's count"
    hpa = resources["HorizontalPodAutoscaler"]["spec"]
    target = {"apiVersion": deployment["apiVersion"], "kind": "Deployment", "name": deployment["metadata"]["name"]}
    assert hpa["scaleTargetRef"] == target
    assert hpa["minReplicas"] >= 1, "no replica would serve until the first scale-up"
    assert hpa["maxReplicas"] > hpa["minReplicas"], "equal bounds leave the autoscaler nothing to scale"


def test_autoscaler_metric_is_the_one_the_adapter_rule_makes(resources, adapter_rule):
    (metric,) = resources["HorizontalPodAutoscaler"]["spec"]["metrics"]
    assert metric["type"] == "Pods"
    assert metric["pods"]["metric"]["name"] == adapter_rule["name"]["as"]
    assert metric["pods"]["target"]["type"] == "AverageValue"
    # A pods metric is looked up per namespace and pod: the rule must map both labels.
    overrides = adapter_rule["resources"]["overrides"]
    assert overrides == {"namespace": {"resource": "namespace"}, "pod": {"resource": "pod"}}


def selectors(expression) -> list:
    promql_parser = pytest.importorskip("promql_parser")
    found = []

    def keep(node):
        if isinstance(node, promql_parser.VectorSelector):
            found.append(node)

    promql_parser.walk(expression, keep)
    return found


def matchers(selector) -> dict[str, tuple[object, str]]:
    return {m.name: (m.op, m.value) for m in selector.matchers.matchers}


def test_adapter_query_divides_queue_time_by_answered_questions(adapter_rule):
    promql_parser = pytest.importorskip("promql_parser")
    (series,) = selectors(promql_parser.parse(adapter_rule["seriesQuery"]))
    assert series.name == QUEUE_COUNTER
    assert re.search(adapter_rule["name"]["matches"], series.name)
    assert set(matchers(series)) == {"namespace", "pod"}

    # What prometheus-adapter substitutes for a request about two pods of one namespace.
    query = (
        adapter_rule["metricsQuery"]
        .replace("<<.GroupBy>>", "pod")
        .replace("<<.LabelMatchers>>", 'namespace="serving",pod=~"triton-bert-qa-a|triton-bert-qa-b"')
    )
    expression = promql_parser.parse(query)
    assert isinstance(expression, promql_parser.BinaryExpr) and str(expression.op) == "/"
    by_name = {s.name: matchers(s) for s in selectors(expression)}
    assert set(by_name) == {QUEUE_COUNTER, SUCCESS_COUNTER}
    for name, labels in by_name.items():
        assert {"namespace", "pod"} <= set(labels), f"{name} is not restricted to the pods asked about"
    assert "model" not in by_name[QUEUE_COUNTER], "queue time of every model (bert_qa and bert_engine)"
    assert by_name[SUCCESS_COUNTER]["model"] == (promql_parser.MatchOp.Equal, QA_MODEL)
    for side in (expression.lhs, expression.rhs):
        assert "by (pod)" in str(side)


def test_prometheus_scrapes_the_metrics_port(resources, deployment, server):
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == container_ports(server)["metrics"]
    assert annotations["prometheus.io/path"] == "/metrics"

    monitor = load_one("servicemonitor.yaml")
    service = resources["Service"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] == "metrics" and endpoint["path"] == "/metrics"
    assert "metrics" in {p["name"] for p in service["spec"]["ports"]}
