"""The model configuration the builders read: dimensions from a config file plus the build options."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass

from bert_weights.errors import ConfigError, first_line
from helpers.files import CONFIG_FILE_MAX_BYTES, read_limited


@dataclass
class BertConfig:
    """Model dimensions (from bert_config.json / config.json) plus the build options."""

    num_attention_heads: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    use_fp16: bool = False
    use_int8: bool = False
    use_strict: bool = False
    use_fc2_gemm: bool = False
    use_int8_skipln: bool = False
    use_int8_multihead: bool = False
    use_qat: bool = False
    use_sparsity: bool = False
    timing_cache: str | None = None
    distributive_independence: bool = False
    use_deprecated_plugins: bool = True
    interleaved: bool = False
    is_calib_mode: bool = False
    use_fp8: bool = False
    # The HuggingFace model_type the weights came from (Google/NVIDIA checkpoints are "bert").
    model_type: str = "bert"
    # The GELU the feed-forward layers compute: "tanh" (the approximation Google's BERT was trained
    # with, HF's "gelu_new") or "erf" (the exact form, HF's "gelu").
    gelu: str = "tanh"
    # Width of the embedding tables when it differs from hidden_size (ALBERT, ELECTRA-small): a
    # dense projection then maps the normalized embeddings to hidden_size.
    embedding_size: int | None = None
    # The kind of tokenizer the model reads text with: "wordpiece", "bpe" (byte-level) or "unigram".
    tokenizer: str = "wordpiece"

    @property
    def head_size(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def embedding_width(self) -> int:
        return self.hidden_size if self.embedding_size is None else self.embedding_size


DIMENSION_KEYS = ("num_attention_heads", "hidden_size", "intermediate_size", "num_hidden_layers")


def read_json(path: str, limit: int = CONFIG_FILE_MAX_BYTES, what: str = "configuration file") -> dict:
    """The JSON object stored at ``path`` (at most ``limit`` bytes); ConfigError when it is missing,
    unreadable or not an object."""
    try:
        data = json.loads(read_limited(path, limit, what).decode("utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{what} not found: {path}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"cannot read {what} {path}: {first_line(exc)}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{what} {path} does not hold a JSON object")
    return data


def positive_int(data: dict, key: str, path: str) -> int:
    value = data.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ConfigError(f"{path}: {key!r} must be a positive integer, found {value!r}")
    return value


def dimensions(data: dict, path: str) -> dict[str, int]:
    """The four dimensions of DIMENSION_KEYS, checked positive and with whole heads."""
    dims = {key: positive_int(data, key, path) for key in DIMENSION_KEYS}
    if dims["hidden_size"] % dims["num_attention_heads"]:
        raise ConfigError(
            f"{path}: hidden_size {dims['hidden_size']} is not divisible by "
            f"num_attention_heads {dims['num_attention_heads']}"
        )
    return dims


def bert_config_path(config_dir: str) -> str:
    return os.path.join(config_dir, "bert_config.json")


def load_bert_config(path: str, **options: bool | str | None) -> BertConfig:
    """Dimensions from a Google-style ``bert_config.json``; ``options`` are BertConfig build fields."""
    return BertConfig(**dimensions(read_json(path), path), **options)  # type: ignore[arg-type]


def default_calibration_cache_name(config: BertConfig, sequence_lengths: Sequence[int]) -> str:
    """The PTQ calibration cache name (docs/SPEC.md "INT8"); its H field is the head size, as in the original.

    Other families than BERT name themselves first (``RobertaSquadL...``, ``XlmRobertaSquadL...``), so
    that models of the same sizes do not share a cache."""
    seqs = "-".join(str(s) for s in sequence_lengths)
    family = "".join(part.capitalize() for part in config.model_type.split("-"))
    return f"{family}SquadL{config.num_hidden_layers}H{config.head_size}A{config.num_attention_heads}S{seqs}CalibCache"
