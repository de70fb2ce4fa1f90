"""``bert_engine`` for a portable engine: a Triton Python-backend model around the project's runner.

Triton's dynamic batcher hands one ``execute`` call several requests.  Fixed-length requests are
stacked along the batch axis; variable-length requests (ragged ``[b, L]`` token rows of any
lengths) are packed into one sequence of real tokens with ``cu_seqlens``, so requests of
different lengths share one engine execution without padding (with CUDA graphs, only up to the
captured shape, whose padding the engine skips).  The requests' inputs are read as numpy views of
Triton's buffers and joined, checked and split on the host with numpy, whose calls cost a fraction
of PyTorch's on arrays this small; on CUDA, a batch's inputs go to the device in one copy each and
its logits come back in one copy.
"""

from __future__ import annotations

import itertools
import json
import os
from dataclasses import dataclass

import numpy as np
import triton_python_backend_utils as pb_utils

from helpers.cli import RunnerError
from helpers.runner import OUTPUT_NAME, EngineRunner
from serving.packed_layout import sequence_major
from serving.repository import geometric_sizes

TOKEN_INPUTS = ("input_ids", "segment_ids")
FIXED_INPUTS = ("input_ids", "segment_ids", "input_mask")


class BadRequest(ValueError):
    """A request the engine must not run; answered with its message."""


@dataclass
class Rows:
    """The checked inputs of one request: ``count`` sequences of ``length`` tokens each."""

    arrays: dict[str, np.ndarray]
    count: int
    length: int


def model_parameters(args: dict) -> dict[str, str]:
    config = json.loads(args["model_config"])
    return {key: value["string_value"] for key, value in config.get("parameters", {}).items()}


def instance_device(args: dict, configured: str) -> str:
    """The torch device of this instance: the GPU Triton placed it on, else the configured device."""
    if args.get("model_instance_kind") == "GPU":
        return f"cuda:{int(args['model_instance_device_id'])}"
    return configured


def require_numpy_1() -> None:
    """Refuse to load under numpy 2: Triton 2.51's Python backend then reads inputs (``as_numpy``)
    wrong and fails on string outputs."""
    if np.lib.NumpyVersion(np.__version__) >= "2.0.0":
        raise pb_utils.TritonModelException(
            f"Triton's Python backend needs numpy < 2 in the model's environment, found {np.__version__} "
            "(pip install -r requirements-serving.txt)"
        )


def input_arrays(request, names: tuple[str, ...]) -> dict[str, np.ndarray]:
    """The request's inputs of ``names`` (numpy views of Triton's buffers), read in one pass over its inputs."""
    given = {tensor.name(): tensor for tensor in request.inputs()}
    missing = next((name for name in names if name not in given), None)
    if missing is not None:
        raise BadRequest(f"input '{missing}' is missing")
    return {name: given[name].as_numpy() for name in names}


def check_range(name: str, values: np.ndarray, upper: int) -> None:
    # Seen as unsigned, a negative id is larger than any upper bound: one reduction checks both ends.
    if values.size and int(values.view(np.uint32).max()) >= upper:
        raise BadRequest(f"input '{name}' holds values outside 0..{upper - 1}")


class EngineModel:
    """The Triton model: one runner per instance, on the instance's device."""

    def initialize(self, args: dict) -> None:
        require_numpy_1()
        parameters = model_parameters(args)
        engine_path = os.path.join(args["model_repository"], args["model_version"], parameters["engine_file"])
        device = instance_device(args, parameters.get("device", "cpu"))
        self.varseqlen = parameters["varseqlen"] == "true"
        self.sequence_length = int(parameters["sequence_length"])
        self.token_types = int(parameters["token_types"])
        try:
            self.runner = EngineRunner(engine_path, device=device, enable_graph=parameters.get("cuda_graphs") == "true")
        except RunnerError as err:
            raise pb_utils.TritonModelException(f"cannot load {engine_path}: {err}") from None
        if self.runner.varseqlen != self.varseqlen:
            raise pb_utils.TritonModelException(f"{engine_path}: the engine's layout does not match config.pbtxt")
        # Ids past the embedding table would fault on the GPU and ruin the instance's CUDA context.
        if self.runner.word_embedding_rows is None:
            raise pb_utils.TritonModelException(f"{engine_path}: no word embedding table found in the engine")
        self.vocab_size = self.runner.word_embedding_rows
        self.max_batch_size = json.loads(args["model_config"])["max_batch_size"]
        # A graph replays one shape: fixed batches run padded to the next captured batch size;
        # packed ones to the next captured token count, always with max_batch_size sequences.
        self.buckets = geometric_sizes(self.max_batch_size * (self.sequence_length if self.varseqlen else 1))
        self.warm_up()

    def warm_up(self) -> None:
        """Run every batch size (fixed) or token count (packed) bucket once before the first request.

        The fast path tunes each GEMM shape the first time it meets it (a few row-count buckets per
        octave), which takes far longer than the execution itself: served batches have every size,
        so without this the first minutes of load are spent tuning.  With CUDA graphs this also
        captures the graph of each bucket, the largest first, so that the smaller ones reuse its
        scratch memory.
        """
        s = self.sequence_length
        for size in reversed(self.buckets):
            if self.varseqlen:
                lengths = [s] * (size // s) + ([size % s] if size % s else [])
                self.run_tokens(lengths, np.ones(size, dtype=np.int32), np.zeros(size, dtype=np.int32))
            else:
                ones = np.ones((size, s), dtype=np.int32)
                self.run_batch({"input_ids": ones, "segment_ids": ones * 0, "input_mask": ones})

    def execute(self, requests: list) -> list:
        rows: list[Rows | None] = []
        errors: dict[int, str] = {}
        for index, request in enumerate(requests):
            try:
                rows.append(self.checked_rows(request))
            except BadRequest as err:
                rows.append(None)
                errors[index] = str(err)
        valid, inputs = self.with_valid_values(rows, errors)
        outputs: list[np.ndarray] = []
        if valid:
            try:
                outputs = self.run_packed(valid, inputs) if self.varseqlen else self.run_stacked(valid, inputs)
            except RunnerError as err:
                errors.update({i: str(err) for i, r in enumerate(rows) if r is not None})
        responses = []
        results = iter(outputs)
        for index, row in enumerate(rows):
            if index in errors:
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(errors[index])))
            else:
                responses.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(OUTPUT_NAME, next(results))]))
        return responses

    def checked_rows(self, request) -> Rows:
        """A request's inputs with their shapes checked (their values: :meth:`check_values`)."""
        names = TOKEN_INPUTS if self.varseqlen else FIXED_INPUTS
        arrays = input_arrays(request, names)
        shape = arrays["input_ids"].shape
        if any(a.shape != shape for a in arrays.values()):
            raise BadRequest(f"inputs {', '.join(names)} must have one shape, got {[a.shape for a in arrays.values()]}")
        if len(shape) != 2 or shape[0] < 1:
            raise BadRequest(f"expected [batch, tokens] inputs, got shape {shape}")
        if not 1 <= shape[1] <= self.sequence_length:
            raise BadRequest(f"a sequence of {shape[1]} tokens; this engine takes 1 to {self.sequence_length}")
        return Rows(arrays, shape[0], shape[1])

    def check_values(self, arrays: dict[str, np.ndarray]) -> None:
        """BadRequest unless every id indexes its embedding table and the mask is 0 or 1."""
        check_range("input_ids", arrays["input_ids"], self.vocab_size)
        check_range("segment_ids", arrays["segment_ids"], self.token_types)
        if "input_mask" in arrays:
            check_range("input_mask", arrays["input_mask"], 2)

    def with_valid_values(self, rows: list[Rows | None], errors: dict[int, str]) -> tuple[list[Rows], dict[str, np.ndarray]]:
        """The rows whose values are valid, and their inputs :meth:`joined`; the others become errors.
        One check over the whole batch usually settles it: only when it fails is each request
        checked on its own."""
        present = [r for r in rows if r is not None]
        if not present:
            return [], {}
        try:
            inputs = self.joined(present)
            self.check_values(inputs)
            return present, inputs
        except BadRequest:
            pass
        for index, row in enumerate(rows):
            if row is None:
                continue
            try:
                self.check_values(row.arrays)
            except BadRequest as err:
                errors[index] = str(err)
                rows[index] = None
        valid = [r for r in rows if r is not None]
        return valid, self.joined(valid) if valid else {}

    def joined(self, rows: list[Rows]) -> dict[str, np.ndarray]:
        """The rows' inputs as one batch: stacked ``[B, S]`` (fixed) or concatenated tokens (packed)."""
        return {name: np.concatenate([r.arrays[name].reshape(-1) if self.varseqlen else r.arrays[name] for r in rows])
                for name in rows[0].arrays}

    def run_stacked(self, rows: list[Rows], inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Fixed length: all requests as one batch; each request's logits ``[b, S, 2, 1, 1]``."""
        logits = self.run_batch(inputs)
        starts = list(itertools.accumulate((r.count for r in rows), initial=0))
        return [logits[a:b] for a, b in zip(starts, starts[1:])]

    def run_batch(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        """Logits ``[B, S, 2, 1, 1]`` of a fixed-length batch of B rows, run padded to the next
        bucket when graphs are on."""
        batch = inputs["input_ids"].shape[0]
        padded = self.bucket(batch) if self.runner.enable_graph else batch
        if padded > batch:
            # Padding rows repeat the last sequence: real inputs, whose results are dropped.
            inputs = {name: np.concatenate([a, np.broadcast_to(a[-1:], (padded - batch, a.shape[1]))]) for name, a in inputs.items()}
        self.runner.activate(padded, self.sequence_length)
        self.runner.copy_inputs(inputs)
        return self.run()[:batch]

    def run_packed(self, rows: list[Rows], inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Variable length: the real tokens of all requests back to back; each request's logits ``[b, 2, L, 1, 1]``."""
        lengths = [r.length for r in rows for _ in range(r.count)]
        logits = self.run_tokens(lengths, inputs["input_ids"], inputs["segment_ids"])
        blocks = sequence_major(logits.reshape(2, -1), lengths)
        results, start = [], 0
        for r in rows:
            end = start + 2 * r.count * r.length
            results.append(blocks[start:end].reshape(r.count, 2, r.length, 1, 1))
            start = end
        return results

    def run_tokens(self, lengths: list[int], input_ids: np.ndarray, segment_ids: np.ndarray) -> np.ndarray:
        """Logits ``[2, T, 1, 1]`` of the T packed tokens of sequences of ``lengths``.  With graphs
        the batch is padded to the captured shape: empty sequences up to ``max_batch_size`` and
        tokens past the last sequence up to the next bucket (the engine skips both)."""
        total = sum(lengths)
        tokens, sequences = (self.bucket(total), self.max_batch_size) if self.runner.enable_graph else (total, len(lengths))
        cu_seqlens = np.array([0, *itertools.accumulate(lengths)] + [total] * (sequences - len(lengths)), dtype=np.int32)
        padding = np.zeros(tokens - total, dtype=np.int32)
        self.runner.activate(sequences, self.sequence_length, total_tokens=tokens)
        self.runner.copy_inputs(
            {"input_ids": np.concatenate([input_ids, padding]), "segment_ids": np.concatenate([segment_ids, padding]), "cu_seqlens": cu_seqlens},
            padding=self.runner.enable_graph,
        )
        return self.run().reshape(2, tokens, 1, 1)[:, :total]

    def bucket(self, size: int) -> int:
        return next(bucket for bucket in self.buckets if bucket >= size)

    def run(self) -> np.ndarray:
        """Execute the activated batch; its logits in a host array of their own."""
        self.runner.execute()
        self.runner.synchronize()
        # Triton answers from host memory: one copy of the batch costs less than a device transfer per response.
        return self.runner.output().to("cpu", copy=True).numpy()

    def finalize(self) -> None:
        self.runner = None
