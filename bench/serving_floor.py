"""``bert_engine`` without the engine: what Triton's Python backend and the model's own request
handling cost on their own.

Served in place of ``serving.engine_model.EngineModel`` by ``bench/serving_bench.py``: the same
config, the same input checks, joining and per-request split of the logits, but zero logits
instead of an engine execution.  Its latency and throughput under the same load are the floor
that any engine behind this model adds its execution time to.
"""

from __future__ import annotations

import json

import numpy as np

from serving.engine_model import EngineModel, model_parameters

OUTPUT_TYPES = {"TYPE_FP32": np.float32, "TYPE_FP16": np.float16}


class FloorModel(EngineModel):
    """EngineModel whose batches produce zero logits on the host without running anything."""

    def initialize(self, args: dict) -> None:
        parameters = model_parameters(args)
        config = json.loads(args["model_config"])
        self.varseqlen = parameters["varseqlen"] == "true"
        self.sequence_length = int(parameters["sequence_length"])
        self.token_types = int(parameters["token_types"])
        self.vocab_size = np.iinfo(np.int32).max
        self.max_batch_size = config["max_batch_size"]
        self.output_dtype = OUTPUT_TYPES[config["output"][0]["data_type"]]

    def run_batch(self, inputs: dict) -> np.ndarray:
        return np.zeros((len(inputs["input_ids"]), self.sequence_length, 2, 1, 1), dtype=self.output_dtype)

    def run_tokens(self, lengths: list[int], input_ids, segment_ids) -> np.ndarray:
        return np.zeros((2, sum(lengths), 1, 1), dtype=self.output_dtype)
