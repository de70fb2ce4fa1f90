"""HuggingFace ``RobertaForQuestionAnswering`` and ``XLMRobertaForQuestionAnswering`` folders.

The encoder is BERT's under ``roberta.``; two things differ.  Positions start after the padding
index: token ``i`` of a sequence reads row ``padding_idx + 1 + i`` of the position table (HF
numbers only non-padding tokens, and real text never holds the padding token), so the loader
hands the builders the table from that row on.  There is one token type (type_vocab_size 1):
every segment id must be 0, which the engine file's ``token_types`` tells the runners.
"""

from __future__ import annotations

import numpy as np

from bert_weights.config import dimensions
from bert_weights.errors import ConfigError
from bert_weights.hf_bert import bert_named_entries
from bert_weights.hf_family import HFFamily, check_absolute_positions, gelu_form
from bert_weights.weight_map import Entry

POSITIONS = "roberta.embeddings.position_embeddings.weight"


def padding_index(data: dict, path: str) -> int:
    value = data.get("pad_token_id", 1)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ConfigError(f"{path}: 'pad_token_id' must be a non-negative integer, found {value!r}")
    return value


def roberta_dimensions(data: dict, path: str) -> dict:
    check_absolute_positions(data, path)
    padding_index(data, path)
    return {**dimensions(data, path), "model_type": data["model_type"], "gelu": gelu_form(data, path)}


def roberta_entries(arrays: dict[str, np.ndarray], data: dict, path: str) -> list[Entry]:
    first_position = padding_index(data, path) + 1
    return [
        (source, name, value[first_position:] if source.endswith(POSITIONS.removeprefix("roberta.")) else value)
        for source, name, value in bert_named_entries(arrays, "roberta.")
    ]


ROBERTA = HFFamily("RobertaForQuestionAnswering", "bpe", roberta_dimensions, roberta_entries)
XLM_ROBERTA = HFFamily("XLMRobertaForQuestionAnswering", "unigram", roberta_dimensions, roberta_entries)
