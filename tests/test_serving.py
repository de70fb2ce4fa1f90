"""The Triton serving path, against the real tritonserver (PyPI nvidia-pytriton) on 127.0.0.1.

The server runs from the serving environment (``bash scripts/setup_serving_env.sh`` makes
``.venv-serving``; ``DEMOBERT_SERVING_PYTHON`` names another interpreter).  Without it these tests
skip, except under CI, where they fail.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import builder
import engines
import family_models
import inference
import squad_fixtures

tritonclient = pytest.importorskip("tritonclient.grpc")

import helpers.data_processing as dp  # noqa: E402
from helpers.question_answering import AnswerExtractor, QuestionAnswerer  # noqa: E402
from helpers.runner import EngineRunner  # noqa: E402
from serving import client as serving_client  # noqa: E402
from serving import ENGINE_MODEL, QA_MODEL, load_test, repository  # noqa: E402
from serving.triton_client import TritonClient  # noqa: E402

# One xdist worker runs this module, so its servers start once (.ci/run uses --dist loadgroup).
pytestmark = pytest.mark.xdist_group("triton_server")

SERVER_PYTHON = Path(os.environ.get("DEMOBERT_SERVING_PYTHON", engines.REPO_ROOT / ".venv-serving" / "bin" / "python"))
ENGINE_BATCH = 8
# How Triton answers a request for a model that is being or has been unloaded.
REFUSAL = re.compile(r"unknown model|not found|unavailable|not ready|no available version", re.IGNORECASE)
QUESTIONS = ["What is TensorRT?", "What does it deliver?", "What does it include?", "Which apps does it serve?"]
SECOND_PASSAGE = (
    "The Amazon rainforest covers much of the Amazon basin of South America. The basin encompasses seven million "
    "square kilometres, of which five and a half million are covered by the rainforest. The region includes "
    "territory belonging to nine nations, and the majority of the forest is contained within Brazil."
)
# 11 doc-stride windows at the tiny engine's sequence length: more than one engine batch.
LONG_PASSAGE = " ".join([engines.PASSAGE] * 9)
PAIRS = [(q, engines.PASSAGE) for q in QUESTIONS] + [
    ("How large is the basin?", SECOND_PASSAGE),
    ("Which country holds most of the forest?", SECOND_PASSAGE),
]


def server_available() -> None:
    if not SERVER_PYTHON.exists():
        message = f"no serving environment at {SERVER_PYTHON} (bash scripts/setup_serving_env.sh)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


def free_ports(count: int) -> list[int]:
    sockets = []
    for _ in range(count):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        sockets.append(s)
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


class Server:
    """``python -m serving.serve`` on free loopback ports, its output collected in a log file."""

    def __init__(self, repo: Path, log: Path, started_when: str = "Triton Inference Server ready"):
        self.http, self.grpc, self.metrics = free_ports(3)
        self.log = log
        self._log_file = open(log, "w")
        self.process = subprocess.Popen(
            [str(SERVER_PYTHON), "-m", "serving.serve", "--model-repository", str(repo), "--http-port", str(self.http),
             "--grpc-port", str(self.grpc), "--metrics-port", str(self.metrics), "--exit-timeout", "20"],
            cwd=engines.REPO_ROOT, stdout=self._log_file, stderr=subprocess.STDOUT,
        )
        self.wait_for(started_when, timeout=240)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, text: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.output():
            if self.process.poll() is not None:
                raise AssertionError(f"serve exited with {self.process.returncode}:\n{self.output()[-3000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no {text!r} after {timeout} s:\n{self.output()[-3000:]}")
            time.sleep(0.2)

    def client(self, protocol: str = "http") -> TritonClient:
        return TritonClient(f"127.0.0.1:{self.http if protocol == 'http' else self.grpc}", protocol)

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            status = self.process.wait(timeout=90)
        except subprocess.TimeoutExpired:
            self.process.kill()
            status = self.process.wait()
        self._log_file.close()
        return status


def write_repository(tmp_path_factory, engine: Path, name: str, vocab: Path | None = None, device: str = "cpu", **options) -> Path:
    repo = tmp_path_factory.mktemp(name) / "repo"
    vocab = vocab or engines.tiny_model_dir(tmp_path_factory) / "vocab.txt"
    repository.write_repository(engine, vocab, repo, repository.RepositoryOptions(device=device, **options))
    return repo


def start_server(tmp_path_factory, engine: Path, name: str, vocab: Path | None = None, device: str = "cpu", **options) -> Server:
    repo = write_repository(tmp_path_factory, engine, name, vocab, device, **options)
    return Server(repo, repo.parent / "serve.log")


@pytest.fixture(scope="module")
def fixed_engine(tmp_path_factory) -> Path:
    return engines.tiny_engine(tmp_path_factory, batch_sizes=(1, ENGINE_BATCH))


@pytest.fixture(scope="module")
def packed_engine(tmp_path_factory) -> Path:
    return engines.tiny_engine(tmp_path_factory, batch_sizes=(1, ENGINE_BATCH), packed=True)


@pytest.fixture(scope="module")
def fixed_server(tmp_path_factory, fixed_engine):
    server_available()
    server = start_server(tmp_path_factory, fixed_engine, "fixed", max_queue_delay_us=20000)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def packed_server(tmp_path_factory, packed_engine):
    server_available()
    server = start_server(tmp_path_factory, packed_engine, "packed", max_queue_delay_us=20000, qa_instances=1)
    yield server
    server.stop()


def local_answers(engine: Path, tmp_path_factory, pairs, vocab: Path | None = None) -> dict[tuple[str, str], tuple[str, float]]:
    """What inference.py's QuestionAnswerer answers, one question at a time."""
    vocab = vocab or engines.tiny_model_dir(tmp_path_factory) / "vocab.txt"
    answerer = QuestionAnswerer(EngineRunner(engine, device="cpu"), str(vocab), max_seq_length=engines.SEQ_LEN)
    results = {}
    for question, passage in pairs:
        answer = answerer.answer_text(passage, question)
        results[(question, passage)] = (answer.text, answer.probability)
    return results


def served_answer(client: TritonClient, question: str, passage: str) -> tuple[str, float]:
    return serving_client.answer_of(serving_client.ask(client, question, passage))


def assert_served_answers(client: TritonClient, expected: dict[tuple[str, str], tuple[str, float]]) -> None:
    """Each question answered by the server as ``expected`` says (text, probability)."""
    for pair, (text, probability) in expected.items():
        served_text, served_probability = served_answer(client, *pair)
        assert served_text == text
        assert served_probability == pytest.approx(probability, rel=1e-5)


# ---- answers ------------------------------------------------------------------------------------


def test_answers_over_http_and_grpc_equal_inference_py(fixed_server, fixed_engine, tmp_path_factory, capsys):
    vocab = str(engines.tiny_model_dir(tmp_path_factory) / "vocab.txt")
    for question, passage in PAIRS[:3]:
        argv = ["-e", str(fixed_engine), "-v", vocab, "-s", str(engines.SEQ_LEN), "--device", "cpu", "-p", passage, "-q", question]
        status, expected, _ = engines.run_main(inference.main, argv, capsys)
        assert status == 0
        expected_lines = [line for line in expected.splitlines() if line.startswith(("Answer:", "With probability:"))]
        for protocol, port in (("http", fixed_server.http), ("grpc", fixed_server.grpc)):
            argv = ["--url", f"127.0.0.1:{port}", "--protocol", protocol, "-p", passage, "-q", question]
            status, printed, err = engines.run_main(serving_client.main, argv, capsys)
            assert status == 0, err
            assert [line for line in printed.splitlines() if line.startswith(("Answer:", "With probability:"))] == expected_lines
            assert f"Question: {question}" in printed


def test_sixteen_concurrent_clients_get_every_answer_once(fixed_server, fixed_engine, tmp_path_factory):
    expected = local_answers(fixed_engine, tmp_path_factory, PAIRS)
    replies: dict[str, tuple] = {}
    lock = threading.Lock()

    def client_thread(index: int) -> None:
        client = fixed_server.client("grpc" if index % 2 else "http")
        try:
            for k in range(25):
                question, passage = PAIRS[(index + k) % len(PAIRS)]
                request_id = f"{index}-{k}"
                reply = serving_client.ask(client, question, passage, request_id=request_id)
                with lock:
                    assert request_id not in replies
                    replies[request_id] = (reply, (question, passage))
        finally:
            client.close()

    threads = [threading.Thread(target=client_thread, args=(i,)) for i in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=600)
    assert not any(thread.is_alive() for thread in threads)
    assert len(replies) == 16 * 25
    for request_id, (reply, pair) in replies.items():
        assert reply.error is None and reply.request_id == request_id
        text, probability = serving_client.answer_of(reply)
        assert text == expected[pair][0]
        assert probability == pytest.approx(expected[pair][1], rel=1e-5)
    stats = engine_statistics(fixed_server)
    # The dynamic batcher put several requests into one engine execution.
    assert stats["inference_count"] > stats["execution_count"]


def engine_statistics(server: Server) -> dict:
    client = server.client("http")
    try:
        return client._client.get_inference_statistics(ENGINE_MODEL)["model_stats"][0]
    finally:
        client.close()


def engine_statistics_counting(server: Server, before: dict, rows: int) -> dict:
    """bert_engine's statistics once they count ``rows`` more inferences than ``before``: Triton
    counts a request once it is released, which can be just after its response went out."""
    deadline = time.monotonic() + 30
    while (after := engine_statistics(server))["inference_count"] - before["inference_count"] < rows:
        assert time.monotonic() < deadline, after
        time.sleep(0.2)
    return after


def assert_mixed_lengths_batch_together(server: Server, engine: Path, device: str, tolerance: float) -> None:
    """Ragged token rows share packed executions and get the logits they get alone."""
    rng = np.random.default_rng(7)
    lengths = [5, 64, 17, 33, 1, 48, 9, 60, 23, 40, 2, 64]
    rows = [(rng.integers(1000, 5000, size=(1, n), dtype=np.int32), (rng.random((1, n)) < 0.5).astype(np.int32)) for n in lengths]
    runner = EngineRunner(engine, device=device)
    alone = []
    for ids, segments in rows:
        runner.activate(1, engines.SEQ_LEN, total_tokens=ids.shape[1])
        alone.append(runner.infer({"input_ids": ids[0], "segment_ids": segments[0], "cu_seqlens": np.array([0, ids.shape[1]], np.int32)}))
    before = engine_statistics(server)
    results: dict[int, object] = {}

    def send(index: int) -> None:
        client = server.client("grpc")
        try:
            ids, segments = rows[index]
            results[index] = client.infer(ENGINE_MODEL, {"input_ids": ids, "segment_ids": segments}, ["logits_out"])
        finally:
            client.close()

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(rows))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert sorted(results) == list(range(len(rows)))
    for index, reply in results.items():
        assert reply.error is None
        logits = reply.outputs["logits_out"]
        assert logits.shape == (1, 2, lengths[index], 1, 1)
        np.testing.assert_allclose(logits[0], alone[index], rtol=tolerance, atol=tolerance)
    after = engine_statistics_counting(server, before, len(rows))
    requests = after["inference_count"] - before["inference_count"]
    executions = after["execution_count"] - before["execution_count"]
    assert requests == len(rows) and executions < requests


def test_packed_requests_of_mixed_lengths_batch_together(packed_server, packed_engine):
    assert_mixed_lengths_batch_together(packed_server, packed_engine, "cpu", 1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_cuda_graph_packed_instances_pad_to_captured_token_counts(tmp_path_factory, packed_engine):
    """With --cuda-graphs, packed batches run as max_batch_size sequences of the next captured
    token count (empty sequences and tokens past the last one filling the shape)."""
    server_available()
    server = start_server(tmp_path_factory, packed_engine, "packed-graphs", device="cuda", cuda_graphs=True,
                          max_queue_delay_us=200000, qa_instances=1)
    try:
        assert_mixed_lengths_batch_together(server, packed_engine, "cuda", 1e-4)
    finally:
        assert server.stop() == 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_cuda_graph_instances_pad_batches_to_captured_sizes(tmp_path_factory):
    """With --cuda-graphs, a batch of a size without a graph (15 of 16) runs padded to the next
    captured size, and every request gets the logits it gets alone."""
    server_available()
    engine = engines.tiny_engine(tmp_path_factory, batch_sizes=(1, 16))
    assert 15 not in repository.geometric_sizes(16)
    rng = np.random.default_rng(11)
    rows = [rng.integers(1000, 5000, size=(1, engines.SEQ_LEN), dtype=np.int32) for _ in range(15)]
    runner = EngineRunner(engine, device="cuda")
    runner.activate(1, engines.SEQ_LEN)
    ones = np.ones((1, engines.SEQ_LEN), np.int32)
    alone = [runner.infer({"input_ids": ids, "segment_ids": ones * 0, "input_mask": ones}) for ids in rows]
    server = start_server(tmp_path_factory, engine, "graphs", device="cuda", cuda_graphs=True, max_batch_size=16,
                          max_queue_delay_us=200000)
    try:
        for count in (1, 15):
            results: dict[int, object] = {}

            def send(index: int) -> None:
                client = server.client("grpc")
                try:
                    results[index] = client.infer(ENGINE_MODEL, {"input_ids": rows[index], "segment_ids": ones * 0,
                                                                            "input_mask": ones}, ["logits_out"])
                finally:
                    client.close()

            threads = [threading.Thread(target=send, args=(i,)) for i in range(count)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(timeout=120)
            assert sorted(results) == list(range(count))
            for index, reply in results.items():
                assert reply.error is None
                np.testing.assert_allclose(reply.outputs["logits_out"], alone[index], rtol=1e-4, atol=1e-4)
        sizes = {entry["batch_size"] for entry in engine_statistics(server)["batch_stats"]}
        assert 15 in sizes, sizes
    finally:
        assert server.stop() == 0


def test_packed_server_answers_like_inference_varseqlen(packed_server, packed_engine, tmp_path_factory):
    client = packed_server.client("http")
    try:
        # The long passage's windows reach the engine as requests of one length each.
        assert_served_answers(client, local_answers(packed_engine, tmp_path_factory, PAIRS + [(QUESTIONS[0], LONG_PASSAGE)]))
    finally:
        client.close()


def window_count(tmp_path_factory, question: str, passage: str) -> int:
    """How many doc-stride windows bert_qa makes of ``passage`` (the repository's defaults)."""
    extractor = AnswerExtractor(str(engines.tiny_model_dir(tmp_path_factory) / "vocab.txt"), max_seq_length=engines.SEQ_LEN)
    return len(extractor.features(dp.convert_doc_tokens(passage), question))


def test_a_questions_windows_reach_the_engine_as_requests_of_up_to_its_batch(fixed_server, fixed_engine, tmp_path_factory):
    # The engine's batch is 8: a request of 8 rows and one of 3, each run in one execution.
    question, passage = QUESTIONS[0], LONG_PASSAGE
    windows = window_count(tmp_path_factory, question, passage)
    assert windows == ENGINE_BATCH + 3
    expected = local_answers(fixed_engine, tmp_path_factory, [(question, passage)])[(question, passage)]
    before = engine_statistics(fixed_server)
    client = fixed_server.client("grpc")
    try:
        text, probability = served_answer(client, question, passage)
    finally:
        client.close()
    assert text == expected[0] and probability == pytest.approx(expected[1], rel=1e-5)
    after = engine_statistics_counting(fixed_server, before, windows)
    requests = int(after["inference_stats"]["success"]["count"]) - int(before["inference_stats"]["success"]["count"])
    assert (after["inference_count"] - before["inference_count"], requests) == (windows, 2)
    assert after["execution_count"] - before["execution_count"] == 2


def test_squad_file_through_the_server_equals_inference_py(fixed_server, fixed_engine, tmp_path, tmp_path_factory, capsys):
    paragraphs = [
        (engines.PASSAGE, [squad_fixtures.make_qa(f"q{i}", q) for i, q in enumerate(QUESTIONS)]),
        (SECOND_PASSAGE, [squad_fixtures.make_qa("a0", "How large is the basin?"), squad_fixtures.make_qa("a1", "Who holds the forest?")]),
    ]
    squad = squad_fixtures.write_squad_file(tmp_path / "dev.json", paragraphs)
    vocab = str(engines.tiny_model_dir(tmp_path_factory) / "vocab.txt")
    local, served = tmp_path / "local.json", tmp_path / "served.json"
    argv = ["-e", str(fixed_engine), "-v", vocab, "-s", str(engines.SEQ_LEN), "--device", "cpu", "-sq", squad, "-o", str(local)]
    assert engines.run_main(inference.main, argv, capsys)[0] == 0
    argv = ["--url", f"127.0.0.1:{fixed_server.http}", "-sq", squad, "-o", str(served), "--concurrency", "4"]
    assert engines.run_main(serving_client.main, argv, capsys)[0] == 0
    assert json.loads(served.read_text()) == json.loads(local.read_text())


def test_a_roberta_engine_is_served_with_its_own_tokenizer(tmp_path_factory):
    """Byte-level BPE, one token type: the repository carries tokenizer.json and the family."""
    root = tmp_path_factory.mktemp("roberta")
    _, folder = family_models.write_family_folder("roberta", root / "hf")
    engine = root / "roberta.engine"
    argv = ["--hf", str(folder), "-o", str(engine), "--backend", "portable", "--device", "cpu", "-b", "1", "-b", "4", "-s", str(engines.SEQ_LEN)]
    assert builder.main(argv) == 0
    server_available()
    server = start_server(tmp_path_factory, engine, "roberta-served", vocab=folder, qa_instances=1)
    try:
        repo = server.log.parent / "repo"
        assert (repo / "bert_qa" / "1" / "tokenizer.json").is_file() and not (repo / "bert_qa" / "1" / "vocab.txt").exists()
        client = server.client("grpc")
        try:
            assert_served_answers(client, local_answers(engine, tmp_path_factory, PAIRS, vocab=folder))
            row = np.full((1, engines.SEQ_LEN), 7, dtype=np.int32)
            reply = client.infer(ENGINE_MODEL, {"input_ids": row, "segment_ids": row * 0 + 1, "input_mask": row * 0 + 1}, ["logits_out"])
            assert reply.error and "segment_ids" in reply.error  # one token type: every segment id is 0
        finally:
            client.close()
    finally:
        assert server.stop() == 0


# ---- bad input ----------------------------------------------------------------------------------


def bytes_input(*values: bytes) -> np.ndarray:
    return np.array([[v] for v in values], dtype=np.object_)


def test_bad_requests_get_error_responses_and_the_server_keeps_answering(fixed_server, fixed_engine, tmp_path_factory):
    question, passage = PAIRS[0]
    good = {"question": bytes_input(question.encode()), "context": bytes_input(passage.encode())}
    row = np.ones((1, engines.SEQ_LEN), dtype=np.int32)
    cases = {
        "missing question": (QA_MODEL, {"context": good["context"]}),
        "missing context": (QA_MODEL, {"question": good["question"]}),
        "wrong datatype": (QA_MODEL, {"question": np.array([[1]], dtype=np.int32), "context": good["context"]}),
        "empty question": (QA_MODEL, {"question": bytes_input(b""), "context": good["context"]}),
        "empty context": (QA_MODEL, {"question": good["question"], "context": bytes_input(b"   ")}),
        "not UTF-8": (QA_MODEL, {"question": bytes_input(b"\xff\xfe what"), "context": good["context"]}),
        "1 MB context": (QA_MODEL, {"question": good["question"], "context": bytes_input(b"word " * 200_000)}),
        "question without tokens": (QA_MODEL, {"question": bytes_input("\u0301".encode()), "context": good["context"]}),
        "batch above the maximum": (QA_MODEL, {name: np.repeat(v, repository.QA_MAX_BATCH_SIZE + 1, axis=0) for name, v in good.items()}),
        "engine batch above the maximum": (ENGINE_MODEL, {n: np.repeat(row, ENGINE_BATCH + 1, axis=0) for n in ("input_ids", "segment_ids", "input_mask")}),
        "token id outside the vocabulary": (ENGINE_MODEL, {"input_ids": row * 10**6, "segment_ids": row * 0, "input_mask": row}),
        "segment id above 1": (ENGINE_MODEL, {"input_ids": row, "segment_ids": row * 2, "input_mask": row}),
        "unknown model": ("no_such_model", good),
    }
    expected = local_answers(fixed_engine, tmp_path_factory, [(question, passage)])[(question, passage)]
    for protocol in ("http", "grpc"):
        client = fixed_server.client(protocol)
        try:
            for name, (model, inputs) in cases.items():
                outputs = ["logits_out"] if model == ENGINE_MODEL else ["answer", "probability"]
                reply = client.infer(model, inputs, outputs)
                assert reply.error, f"{name} ({protocol}) was answered"
            assert served_answer(client, question, passage)[0] == expected[0]
        finally:
            client.close()
    assert fixed_server.process.poll() is None


def test_a_killed_backend_process_is_reloaded(fixed_server, fixed_engine, tmp_path_factory):
    question, passage = PAIRS[1]
    expected = local_answers(fixed_engine, tmp_path_factory, [(question, passage)])[(question, passage)][0]
    stubs = [pid for pid in os.listdir("/proc") if pid.isdigit() and _is_engine_stub(pid, fixed_server.process.pid)]
    assert stubs, "no Python-backend process of bert_engine found"
    os.kill(int(stubs[0]), signal.SIGKILL)
    fixed_server.wait_for("bert_engine reloaded", timeout=180)
    client = fixed_server.client("http")
    try:
        assert served_answer(client, question, passage)[0] == expected
    finally:
        client.close()


def _is_engine_stub(pid: str, server_pid: int) -> bool:
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    children = [int(p) for p in Path(f"/proc/{server_pid}/task/{server_pid}/children").read_text().split()]
    tritonserver = children[0] if children else -1
    return int(stat.rsplit(")", 1)[1].split()[1]) == tritonserver and len(command) > 1 and b"/bert_engine/" in command[1]


def numpy_2_environment(where: Path) -> Path:
    """A Python of the serving environment that imports numpy 2 (this process's) before the
    environment's own numpy: a venv holding only numpy, with the serving packages on a .pth line."""
    if np.lib.NumpyVersion(np.__version__) < "2.0.0":
        pytest.skip(f"this process has numpy {np.__version__}, not 2")
    probe = "import sys, sysconfig; print(sys._base_executable); print(sysconfig.get_paths()['purelib']); print(sys.version_info[:2])"
    base, packages, version = subprocess.run([str(SERVER_PYTHON), "-c", probe], capture_output=True, text=True, check=True).stdout.split("\n")[:3]
    if version != str(tuple(sys.version_info[:2])):
        pytest.skip(f"the serving environment runs Python {version}, this process {tuple(sys.version_info[:2])}")
    subprocess.run([base, "-m", "venv", "--without-pip", str(where)], check=True)
    purelib = Path(subprocess.run([str(where / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                  capture_output=True, text=True, check=True).stdout.strip())
    source = Path(np.__file__).parent
    for name in (source.name, source.name + ".libs"):
        if (source.parent / name).exists():
            (purelib / name).symlink_to(source.parent / name)
    (purelib / "serving_environment.pth").write_text(packages + "\n")
    return where / "bin" / "python"


def test_a_numpy_2_environment_is_refused_when_the_models_load(tmp_path_factory, fixed_engine, tmp_path):
    # Triton 2.51's Python backend reads numpy 2 arrays wrong: refusing to load beats wrong answers.
    server_available()
    python = numpy_2_environment(tmp_path / "numpy2")
    repo = write_repository(tmp_path_factory, fixed_engine, "numpy2")
    http, grpc, metrics = free_ports(3)
    served = subprocess.run(
        [str(python), "-m", "serving.serve", "--model-repository", str(repo), "--http-port", str(http), "--grpc-port", str(grpc),
         "--metrics-port", str(metrics)], cwd=engines.REPO_ROOT, capture_output=True, text=True, timeout=300,
    )
    assert served.returncode != 0
    for model in (ENGINE_MODEL, QA_MODEL):
        assert re.search(rf"\| {model} +\| 1 +\| UNAVAILABLE: .*needs numpy < 2 in the model's environment, found 2\.", served.stdout + served.stderr)


def test_sigterm_under_load_answers_every_accepted_request(tmp_path_factory, fixed_engine):
    server_available()
    server = start_server(tmp_path_factory, fixed_engine, "sigterm")
    question, passage = PAIRS[0]
    expected = local_answers(fixed_engine, tmp_path_factory, [(question, passage)])[(question, passage)][0]
    outcomes: list[str] = []
    lock = threading.Lock()
    answered = threading.Event()

    def client_thread() -> None:
        client = server.client("http")
        try:
            for _ in range(200):
                try:
                    reply = serving_client.ask(client, question, passage)
                except ConnectionRefusedError:
                    outcome = "refused"
                except Exception as err:  # noqa: BLE001 - anything else lost an accepted request
                    outcome = f"lost: {type(err).__name__}: {err}"
                else:
                    if reply.error is not None:
                        outcome = "refused" if REFUSAL.search(reply.error) else f"error: {reply.error}"
                    else:
                        outcome = "answered" if serving_client.answer_of(reply)[0] == expected else f"wrong: {reply}"
                with lock:
                    outcomes.append(outcome)
                answered.set()
                if outcome != "answered":
                    return
        finally:
            client.close()

    threads = [threading.Thread(target=client_thread) for _ in range(6)]
    for thread in threads:
        thread.start()
    assert answered.wait(timeout=120)
    time.sleep(1.0)
    status = server.stop()
    for thread in threads:
        thread.join(timeout=120)
    assert status == 0, server.output()[-2000:]
    assert "Triton Inference Server stopped" in server.output()
    assert "answered" in outcomes
    assert all(outcome in ("answered", "refused") for outcome in outcomes), [o for o in outcomes if o not in ("answered", "refused")]


def children(pid: int) -> list[int]:
    return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def live_group_members(group: int) -> list[int]:
    """The processes of a process group that have not exited (a zombie has)."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            state, _parent, process_group = stat.read_text().rsplit(")", 1)[1].split()[:3]
        except OSError:
            continue
        if int(process_group) == group and state not in "ZX":
            members.append(int(stat.parent.name))
    return members


def test_sigterm_while_the_models_load_stops_the_server_and_every_process_it_started(tmp_path_factory, fixed_engine):
    server_available()
    repo = write_repository(tmp_path_factory, fixed_engine, "sigterm_loading")
    server = Server(repo, repo.parent / "serve.log", started_when='"loading: ')
    tritonserver = children(server.process.pid)
    assert len(tritonserver) == 1, tritonserver
    status = server.stop()
    assert status == 0, server.output()[-2000:]
    assert "Triton Inference Server stopped" in server.output()
    assert "Triton Inference Server ready" not in server.output()
    assert live_group_members(tritonserver[0]) == []


# ---- the load test ------------------------------------------------------------------------------


def test_load_test_reports_every_request_of_each_level(fixed_server, tmp_path):
    report = tmp_path / "load.json"
    argv = ["--url", f"127.0.0.1:{fixed_server.grpc}", "--protocol", "grpc", "--concurrency", "1,4", "--requests", "12",
            "--json", str(report), "--plot", str(tmp_path / "load.png")]
    assert load_test.main(argv) == 0
    levels = json.loads(report.read_text())["levels"]
    assert [(level["concurrency"], level["requests"], level["errors"], level["lost"]) for level in levels] == [(1, 12, 0, 0), (4, 12, 0, 0)]
    assert all(0 < level["p50_ms"] <= level["p95_ms"] <= level["p99_ms"] for level in levels)
    assert (tmp_path / "load.png").stat().st_size > 0
    argv = ["--url", f"127.0.0.1:{fixed_server.http}", "--model", "bert_engine", "--concurrency", "3", "--requests", "9", "--processes", "2"]
    assert load_test.main(argv) == 0
