"""``bert_qa``: a Triton Python-backend model that answers a question about a passage.

The text side is :class:`helpers.question_answering.AnswerExtractor`, as in ``inference.py``:
the passage is split into doc-stride windows, the windows go to ``bert_engine`` (BLS) as few
requests of several rows each, all of them in flight at once, so that one question's windows run
in one engine execution and the engine's dynamic batcher batches them with the windows of other
questions, and the best span over all windows is the answer.
"""

from __future__ import annotations

import asyncio
import os

import numpy as np
import triton_python_backend_utils as pb_utils
from torch.utils import dlpack

import helpers.data_processing as dp
from helpers.cli import RunnerError
from helpers.model_info import ModelInfo
from helpers.question_answering import AnswerExtractor, NetworkOutput
from helpers.runner import OUTPUT_NAME
from serving.engine_model import BadRequest, model_parameters, require_numpy_1


def text_rows(request, name: str) -> list[str]:
    """The UTF-8 strings of a ``[batch, 1]`` TYPE_STRING input."""
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    if tensor is None:
        raise BadRequest(f"input '{name}' is missing")
    values = tensor.as_numpy()
    if values.ndim != 2 or values.shape[1] != 1:
        raise BadRequest(f"input '{name}' must hold one string per batch row, got shape {values.shape}")
    rows = []
    for value in values[:, 0]:
        if not isinstance(value, bytes):
            raise BadRequest(f"input '{name}' must be TYPE_STRING")
        try:
            text = value.decode("utf-8")
        except UnicodeDecodeError as err:
            raise BadRequest(f"input '{name}' is not UTF-8 text (byte {err.start}: {err.reason})") from None
        if not text.strip():
            raise BadRequest(f"input '{name}' is empty")
        rows.append(text)
    return rows


def error_response(message: str):
    return pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(message))


class QuestionAnsweringModel:
    def initialize(self, args: dict) -> None:
        require_numpy_1()
        parameters = model_parameters(args)
        vocab = os.path.join(args["model_repository"], args["model_version"], parameters["vocab_file"])
        self.engine_model = parameters["engine_model"]
        self.varseqlen = parameters["varseqlen"] == "true"
        self.max_context_bytes = int(parameters["max_context_bytes"])
        # Repositories written before this parameter existed sent one window per request.
        self.request_rows = int(parameters.get("engine_request_rows", "1"))
        try:
            self.extractor = AnswerExtractor(
                vocab,
                max_seq_length=int(parameters["sequence_length"]),
                doc_stride=int(parameters["doc_stride"]),
                max_query_length=int(parameters["max_query_length"]),
                n_best_size=int(parameters["n_best_size"]),
                max_answer_length=int(parameters["max_answer_length"]),
                model=ModelInfo(parameters["family"], parameters["tokenizer"], int(parameters["token_types"])),
            )
        except RunnerError as err:
            raise pb_utils.TritonModelException(str(err)) from None

    async def execute(self, requests: list) -> list:
        return list(await asyncio.gather(*(self.respond(request) for request in requests)))

    async def respond(self, request):
        try:
            questions = text_rows(request, "question")
            contexts = text_rows(request, "context")
            if len(questions) != len(contexts):
                raise BadRequest(f"{len(questions)} questions but {len(contexts)} contexts")
            for context in contexts:
                size = len(context.encode("utf-8"))
                if size > self.max_context_bytes:
                    raise BadRequest(f"context is {size} bytes; this server answers passages of at most {self.max_context_bytes} bytes")
            answers = await asyncio.gather(*(self.answer(q, c) for q, c in zip(questions, contexts)))
        except (BadRequest, RunnerError) as err:
            return error_response(str(err))
        text = np.array([[a[0].encode("utf-8")] for a in answers], dtype=np.object_)
        probability = np.array([[a[1]] for a in answers], dtype=np.float32)
        return pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("answer", text), pb_utils.Tensor("probability", probability)])

    async def answer(self, question: str, context: str) -> tuple[str, float]:
        doc_tokens = dp.convert_doc_tokens(context)
        features = self.extractor.features(doc_tokens, question)
        groups = self.request_groups(features)
        responses = await asyncio.gather(*(self.engine_request([features[i] for i in group]).async_exec() for group in groups))
        outputs = []
        for group, response in zip(groups, responses):
            if response.has_error():
                raise RunnerError(f"{self.engine_model}: {response.error().message()}")
            logits = host_array(pb_utils.get_output_tensor_by_name(response, OUTPUT_NAME))
            for row, index in enumerate(group):
                if self.varseqlen:
                    start, end = logits[row, 0].reshape(-1), logits[row, 1].reshape(-1)
                else:
                    pairs = logits[row].reshape(-1, 2)
                    start, end = pairs[:, 0], pairs[:, 1]
                outputs.append(NetworkOutput(start_logits=start, end_logits=end, feature_index=index))
        text, probability, _ = self.extractor.best_answer(doc_tokens, features, outputs)
        return text, float(probability)

    def request_groups(self, features: list) -> list[list[int]]:
        """The features' indexes, in order, split into ``bert_engine`` requests: at most
        ``request_rows`` rows each, and (variable length) rows of one length each."""
        groups: list[list[int]] = []
        length = None
        for index, feature in enumerate(features):
            row_length = int(np.sum(feature.input_mask)) if self.varseqlen else None
            if not groups or len(groups[-1]) == self.request_rows or row_length != length:
                groups.append([])
                length = row_length
            groups[-1].append(index)
        return groups

    def engine_request(self, features: list):
        """One ``bert_engine`` request of the features' rows (variable length: all of one length)."""
        if self.varseqlen:
            length = int(np.sum(features[0].input_mask))
            names = ("input_ids", "segment_ids")
            arrays = {name: np.array([getattr(f, name)[:length] for f in features], dtype=np.int32) for name in names}
        else:
            names = ("input_ids", "segment_ids", "input_mask")
            arrays = {name: np.array([getattr(f, name) for f in features], dtype=np.int32) for name in names}
        return pb_utils.InferenceRequest(
            model_name=self.engine_model,
            requested_output_names=[OUTPUT_NAME],
            inputs=[pb_utils.Tensor(name, array) for name, array in arrays.items()],
        )


def host_array(tensor) -> np.ndarray:
    """A float32 host copy of an output tensor, wherever Triton put it."""
    if tensor.is_cpu():
        return tensor.as_numpy().astype(np.float32)
    return dlpack.from_dlpack(tensor.to_dlpack()).float().cpu().numpy()
