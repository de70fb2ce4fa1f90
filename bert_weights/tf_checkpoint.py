"""TensorFlow checkpoints with Google BERT variable names; needs the optional ``tensorflow``."""

from __future__ import annotations

import os

import numpy as np

from bert_weights.config import BertConfig
from bert_weights.errors import WeightLoadError, first_line
from bert_weights.names import tf_to_trt_name
from bert_weights.weight_map import Entry, WeightMap, weight_map

# Training state and the pooler, which the SQuAD network does not use.
SKIPPED_VARIABLES = ("adam", "global_step", "pooler")


def load_tf_weights(prefix: str, config: BertConfig) -> WeightMap:
    """A TensorFlow checkpoint with Google BERT variable names; ``prefix`` as given to Saver."""
    if not os.path.isfile(prefix + ".index"):
        raise WeightLoadError(f"TF checkpoint not found: {prefix}.index does not exist")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        import tensorflow as tf
    except ImportError as exc:
        raise WeightLoadError(f"reading a TF checkpoint needs tensorflow: {first_line(exc)}") from None
    try:
        reader = tf.train.load_checkpoint(prefix)
        entries: list[Entry] = []
        for variable in sorted(reader.get_variable_to_shape_map()):
            if any(skip in variable for skip in SKIPPED_VARIABLES):
                continue
            name = tf_to_trt_name(variable)
            value = np.asarray(reader.get_tensor(variable))
            # TF dense kernels are [in, out]; the builders read [out, in].
            entries.append((variable, name, value.T if "kernel" in name else value))
    except WeightLoadError:
        raise
    except Exception as exc:  # tf.errors.OpError, and IndexError/ValueError from truncated shards
        raise WeightLoadError(f"cannot read TF checkpoint {prefix}: {first_line(exc)}") from None
    return weight_map(entries, config, prefix)
