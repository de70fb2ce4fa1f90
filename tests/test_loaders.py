"""Weight loaders of bert_weights: names, QKV packing, formats agreeing with HF, bad input."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import checkpoints
import numpy as np
import pytest
import torch

import bert_weights as bw
import builder_utils as bu


def tiny_config(model, **options) -> bw.BertConfig:
    c = model.config
    return bw.BertConfig(c.num_attention_heads, c.hidden_size, c.intermediate_size, c.num_hidden_layers, **options)


# ---------------------------------------------------------------------------------------------
# Name conversion (examples worked out by hand from the naming rules of docs/SPEC.md "ONNX and PyTorch names")


@pytest.mark.parametrize(
    "onnx_name, trt_name",
    [
        ("bert.encoder.layer.0.attention.self.query._input_quantizer._amax", "l0_attention_self_query_input_amax"),
        ("bert.encoder.layer.0.attention.self.matmul_q_input_quantizer._amax", "l0_attention_self_qv_a_input_quantizer_amax"),
        ("bert.encoder.layer.3.attention.self.matmul_k_input_quantizer._amax", "l3_attention_self_qv_b_input_quantizer_amax"),
        ("bert.encoder.layer.3.attention.self.matmul_v_input_quantizer._amax", "l3_attention_self_av_b_input_quantizer_amax"),
        ("bert.encoder.layer.3.attention.self.matmul_a_input_quantizer._amax", "l3_attention_self_av_a_input_quantizer_amax"),
        ("bert.encoder.final_input_quantizer._amax", "bert_encoder_final_input_quantizer_amax"),
        ("qa_outputs.weight", "cls_squad_output_weights"),
        ("qa_outputs.bias", "cls_squad_output_bias"),
        ("bert.embeddings.word_embeddings.weight", "bert_embeddings_word_embeddings"),
        ("bert.embeddings.LayerNorm.weight", "bert_embeddings_layernorm_gamma"),
        ("bert.embeddings.LayerNorm.bias", "bert_embeddings_layernorm_beta"),
        ("bert.encoder.layer.11.attention.output.LayerNorm.weight", "l11_attention_output_layernorm_gamma"),
        ("bert.encoder.layer.2.intermediate.dense.weight", "l2_intermediate_dense_kernel"),
        ("bert.encoder.layer.2.intermediate.dense.bias", "l2_intermediate_dense_bias"),
        ("bert.encoder.layer.2.intermediate.dense._weight_quantizer._amax", "l2_intermediate_dense_kernel_amax"),
        ("bert.encoder.layer.2.output.add_local_input_quantizer._amax", "l2_output_add_local_input_quantizer_amax"),
        ("bert.encoder.layer.1.intermediate.dense_act.weight", "l1_intermediate_dense_kernel"),
        ("bert.encoder.layer.1.intermediate.dense_act._input_quantizer._amax", "l1_intermediate_dense_input_amax"),
        ("bert.encoder.layers.4.attention.query_key_value.weight", "l4_attention_query_key_value_kernel"),
    ],
)
def test_onnx_to_trt_name(onnx_name, trt_name):
    assert bw.onnx_to_trt_name(onnx_name) == trt_name


def test_onnx_to_trt_name_rejects_unknown_names():
    with pytest.raises(bw.WeightLoadError, match="unknown tensor name 'cls.predictions.bias'"):
        bw.onnx_to_trt_name("cls.predictions.bias")


# ---------------------------------------------------------------------------------------------
# QKV packing


def test_pack_qkv_orders_channels_per_head_or_per_projection():
    hidden, heads, head_size = 6, 3, 2
    # Row r of projection p holds the value 100*p + r in every column, so each packed row names its origin.
    parts = [(np.full((hidden, hidden), 0.0) + (100 * p + np.arange(hidden))[:, None], 100 * p + np.arange(hidden) + 0.5)
             for p in range(3)]
    kernel, bias = bw.pack_qkv(*parts, num_heads=heads)
    assert kernel.shape == (3 * hidden, hidden) and bias.shape == (3 * hidden,)
    for n in range(heads):
        for p in range(3):
            for h in range(head_size):
                row = n * 3 * head_size + p * head_size + h
                assert kernel[row, 0] == 100 * p + n * head_size + h
                assert bias[row] == 100 * p + n * head_size + h + 0.5
    kernel, bias = bw.pack_qkv(*parts, num_heads=heads, interleaved=True)
    expected = np.concatenate([100 * p + np.arange(hidden) for p in range(3)])
    np.testing.assert_array_equal(kernel[:, 0], expected)
    np.testing.assert_array_equal(bias, expected + 0.5)


# ---------------------------------------------------------------------------------------------
# Formats


def test_every_format_loads_the_hf_weights(tiny_model, tiny_files):
    config = tiny_config(tiny_model)
    sd = checkpoints.state_dict_arrays(tiny_model)
    maps = {
        "hf": bw.load_hf_weights(str(tiny_files["hf"]), config),
        "pytorch": bw.load_pytorch_weights_and_quant(str(tiny_files["pytorch"]), config),
        "onnx": bw.load_onnx_weights_and_quant(str(tiny_files["onnx"]), config),
        "ckpt": bw.load_tf_weights(tiny_files["ckpt"], config),
    }
    expected = set(bw.expected_weight_shapes(config))
    for kind, weights in maps.items():
        assert set(weights) == expected, kind
        bw.check_weights(weights, config, 384)
        for name, value in weights.items():
            assert value.dtype == np.float32 and value.flags.c_contiguous, (kind, name)
            np.testing.assert_array_equal(value, maps["hf"][name], err_msg=f"{kind} {name}")

    weights = maps["hf"]
    h = config.head_size
    for layer in range(config.num_hidden_layers):
        p = f"bert.encoder.layer.{layer}."
        qkv = weights[f"l{layer}_attention_self_qkv_kernel"]
        for n in range(config.num_attention_heads):
            for index, projection in enumerate(("query", "key", "value")):
                rows = slice(n * 3 * h + index * h, n * 3 * h + (index + 1) * h)
                np.testing.assert_array_equal(qkv[rows], sd[p + f"attention.self.{projection}.weight"][n * h:(n + 1) * h])
        np.testing.assert_array_equal(weights[f"l{layer}_intermediate_dense_kernel"], sd[p + "intermediate.dense.weight"])
        np.testing.assert_array_equal(weights[f"l{layer}_output_layernorm_beta"], sd[p + "output.LayerNorm.bias"])
    np.testing.assert_array_equal(weights["cls_squad_output_weights"], sd["qa_outputs.weight"])
    np.testing.assert_array_equal(weights["bert_embeddings_layernorm_gamma"], sd["bert.embeddings.LayerNorm.weight"])


def test_onnx_amax_entries_are_loaded_raw(tiny_model, tmp_path):
    names = checkpoints.qat_amax_names(tiny_model.config.num_hidden_layers)
    amax = {name: 1.0 + index / 8 for index, name in enumerate(names)}
    path = checkpoints.write_onnx_model(tiny_model, tmp_path / "qat.onnx", amax)
    weights = bw.load_onnx_weights_and_quant(str(path), tiny_config(tiny_model))
    assert float(weights["l1_attention_self_av_a_input_quantizer_amax"]) == amax[
        "bert.encoder.layer.1.attention.self.matmul_a_input_quantizer._amax"
    ]
    assert float(weights["bert_encoder_final_input_quantizer_amax"]) == amax["bert.encoder.final_input_quantizer._amax"]
    assert float(weights["l0_attention_output_dense_input_amax"]) == amax[
        "bert.encoder.layer.0.attention.output.dense._input_quantizer._amax"
    ]
    assert sum(name.endswith("_amax") for name in weights) == len(names)
    bw.check_weights(weights, tiny_config(tiny_model))


def test_hf_folder_without_bert_prefix(tiny_model, tmp_path):
    from safetensors.torch import save_file

    folder = tmp_path / "bare"
    shutil.copytree(checkpoints.write_hf_folder(tiny_model, tmp_path / "hf"), folder)
    state = {k.removeprefix("bert."): v.contiguous() for k, v in tiny_model.state_dict().items()}
    save_file(state, str(folder / "model.safetensors"))
    config = bw.load_hf_config(str(folder))
    weights = bw.load_hf_weights(str(folder), config)
    bw.check_weights(weights, config)
    np.testing.assert_array_equal(weights["l1_output_dense_bias"], state["encoder.layer.1.output.dense.bias"].numpy())


def test_hf_folder_with_pytorch_model_bin(tiny_model, tmp_path):
    folder = checkpoints.write_hf_folder(tiny_model, tmp_path / "hf")
    (folder / "model.safetensors").unlink()
    torch.save(tiny_model.state_dict(), folder / "pytorch_model.bin")
    config = bw.load_hf_config(str(folder))
    weights = bw.load_hf_weights(str(folder), config)
    bw.check_weights(weights, config)
    np.testing.assert_array_equal(weights["cls_squad_output_bias"], tiny_model.qa_outputs.bias.detach().numpy())


def test_configs_give_heads_hidden_intermediate_layers(tiny_model, tiny_files):
    for config in (bw.load_bert_config(str(tiny_files["config_dir"] / "bert_config.json")),
                   bw.load_hf_config(str(tiny_files["hf"]))):
        assert (config.num_attention_heads, config.hidden_size, config.intermediate_size, config.num_hidden_layers) == (3, 48, 37, 2)
        assert config.head_size == 16


def test_megatron_pickle_keeps_fused_qkv_and_copies_qkv_amax(tmp_path):
    hidden, heads = 8, 2
    rng = np.random.default_rng(0)
    qkv = rng.standard_normal((3 * hidden, hidden)).astype(np.float32)
    tensors = {
        "bert.encoder.layers.0.attention.query_key_value.weight": qkv,
        "bert.encoder.layers.0.attention.query_key_value.bias": np.arange(3 * hidden, dtype=np.float32),
        "bert.encoder.layers.0.attention.query_key_value._input_quantizer._amax": np.float32(3.5),
        "bert.encoder.layers.0.output.layernorm.output_quantizer._amax": np.float32(7.0),
        "bert.encoder.layers.0.attention.query_key_value._weight_quantizer._scale": np.float32(1.0),
        "bert.embedding.tokentype_embeddings.weight": np.ones((2, hidden), np.float32),
    }
    path = tmp_path / "megatron.pkl"
    path.write_bytes(pickle.dumps(tensors))
    weights = bw.load_megatron_pickle_weights(str(path), bw.BertConfig(heads, hidden, 16, 1))
    np.testing.assert_array_equal(weights["l0_attention_self_qkv_kernel"], qkv)
    np.testing.assert_array_equal(weights["l0_attention_self_qkv_bias"], np.arange(3 * hidden))
    for projection in ("qkv", "query", "key", "value"):
        assert float(weights[f"l0_attention_self_{projection}_input_amax"]) == 3.5
    assert float(weights["bert_encoder_final_input_quantizer_amax"]) == 7.0
    assert "bert_embeddings_token_type_embeddings" in weights
    assert not any("scale" in name for name in weights)


# ---------------------------------------------------------------------------------------------
# Bad input: one-line errors that name the problem


def assert_one_line(excinfo, *fragments):
    message = str(excinfo.value)
    assert "\n" not in message, message
    for fragment in fragments:
        assert fragment in message, message


def test_corrupt_files_give_one_line_errors(tiny_model, tiny_files, tmp_path):
    config = tiny_config(tiny_model)
    garbage = tmp_path / "garbage.bin"
    garbage.write_bytes(b"\x08\x07not a model at all" * 50)
    for loader in (bw.load_onnx_weights_and_quant, bw.load_pytorch_weights_and_quant, bw.load_megatron_pickle_weights):
        with pytest.raises(bw.WeightLoadError) as excinfo:
            loader(str(garbage), config)
        assert_one_line(excinfo, "cannot read", str(garbage))

    folder = tmp_path / "hf"
    shutil.copytree(tiny_files["hf"], folder)
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(bw.WeightLoadError) as excinfo:
        bw.load_hf_weights(str(folder), config)
    assert_one_line(excinfo, "cannot read", "model.safetensors")

    prefix = tmp_path / "model.ckpt"
    for source in Path(tiny_files["ckpt"]).parent.glob("model.ckpt.*"):
        shutil.copy(source, tmp_path / source.name)
    shard = next(tmp_path.glob("model.ckpt.data-*"))
    shard.write_bytes(shard.read_bytes()[:100])
    with pytest.raises(bw.WeightLoadError) as excinfo:
        bw.load_tf_weights(str(prefix), config)
    assert_one_line(excinfo, "cannot read TF checkpoint")


def test_missing_files_give_one_line_errors(tiny_model, tmp_path):
    config = tiny_config(tiny_model)
    with pytest.raises(bw.WeightLoadError) as excinfo:
        bw.load_tf_weights(str(tmp_path / "nothing.ckpt"), config)
    assert_one_line(excinfo, "nothing.ckpt.index")
    with pytest.raises(bw.WeightLoadError) as excinfo:
        bw.load_hf_weights(str(tmp_path), config)
    assert_one_line(excinfo, "neither model.safetensors nor pytorch_model.bin")
    with pytest.raises(bw.ConfigError) as excinfo:
        bw.load_bert_config(str(tmp_path / "bert_config.json"))
    assert_one_line(excinfo, "configuration file not found")


def test_unknown_tensor_names_are_refused(tiny_model, tmp_path):
    config = tiny_config(tiny_model)
    sd = tiny_model.state_dict()
    sd["bert.encoder.layer.0.attention.self.rotary.weight"] = torch.zeros(3)
    torch.save({"model": sd}, tmp_path / "extra.pt")
    with pytest.raises(bw.WeightLoadError) as excinfo:
        bw.load_pytorch_weights_and_quant(str(tmp_path / "extra.pt"), config)
    assert_one_line(excinfo, "unknown tensor 'bert.encoder.layer.0.attention.self.rotary.weight'")

    tf = pytest.importorskip("tensorflow")
    variables = checkpoints.tf_variables(tiny_model)
    variables["bert/encoder/layer_0/attention/self/rotary/kernel"] = np.zeros((2, 2), np.float32)
    names = sorted(variables)
    tf.raw_ops.SaveV2(prefix=str(tmp_path / "extra.ckpt"), tensor_names=names, shape_and_slices=[""] * len(names),
                      tensors=[tf.constant(variables[n]) for n in names])
    with pytest.raises(bw.WeightLoadError) as excinfo:
        bw.load_tf_weights(str(tmp_path / "extra.ckpt"), config)
    assert_one_line(excinfo, "unknown tensor 'bert/encoder/layer_0/attention/self/rotary/kernel'")


def test_hf_folder_without_squad_head_is_refused(tmp_path):
    from transformers import BertConfig, BertModel

    BertModel(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=20)).save_pretrained(tmp_path)
    config = bw.load_hf_config(str(tmp_path))
    with pytest.raises(bw.WeightLoadError) as excinfo:
        bw.load_hf_weights(str(tmp_path), config)
    assert_one_line(excinfo, "no SQuAD head (qa_outputs.weight)")


def test_config_that_disagrees_with_the_weights(tiny_model, tiny_files):
    weights = bw.load_hf_weights(str(tiny_files["hf"]), tiny_config(tiny_model))
    wider = bw.BertConfig(3, 48, 40, 2)
    with pytest.raises(bw.WeightLoadError) as excinfo:
        bw.check_weights(weights, wider)
    assert_one_line(excinfo, "'l0_intermediate_dense_kernel'", "(37, 48)", "(40, 48)")
    with pytest.raises(bw.WeightLoadError) as excinfo:
        bw.check_weights(weights, bw.BertConfig(3, 48, 37, 3))
    assert_one_line(excinfo, "'l2_attention_self_qkv_kernel' is missing")
    with pytest.raises(bw.WeightLoadError) as excinfo:
        bw.check_weights(weights, bw.BertConfig(3, 48, 37, 1))
    assert_one_line(excinfo, "'l1_", "does not fit the config")
    with pytest.raises(bw.WeightLoadError) as excinfo:
        bw.check_weights(weights, tiny_config(tiny_model), max_sequence_length=513)
    assert_one_line(excinfo, "sequence length 513 exceeds the 512 position embeddings")
    # The packer checks Q/K/V against the config before anything is packed.
    with pytest.raises(bw.WeightLoadError) as excinfo:
        bw.load_hf_weights(str(tiny_files["hf"]), bw.BertConfig(4, 64, 37, 2))
    assert_one_line(excinfo, "'bert.encoder.layer.0.attention.self.query.weight'", "(48, 48)", "(64, 64)")


@pytest.mark.parametrize(
    "change, fragment",
    [
        ({"hidden_size": 50}, "not divisible by num_attention_heads"),
        ({"num_hidden_layers": "2"}, "'num_hidden_layers' must be a positive integer"),
        ({"hidden_act": "relu"}, "hidden_act 'relu' is not supported"),
        ({"position_embedding_type": "relative_key"}, "position_embedding_type 'relative_key'"),
        ({"model_type": "deberta-v2"}, "model_type 'deberta-v2' is not supported"),
    ],
)
def test_unsupported_hf_configs_are_refused(tiny_files, tmp_path, change, fragment):
    data = json.loads((tiny_files["hf"] / "config.json").read_text())
    data.update(change)
    (tmp_path / "config.json").write_text(json.dumps(data))
    with pytest.raises(bw.ConfigError) as excinfo:
        bw.load_hf_config(str(tmp_path))
    assert_one_line(excinfo, fragment)


def test_atomic_write_leaves_no_file_on_failure(tmp_path):
    target = tmp_path / "out.bin"
    bu.write_file_atomically(str(target), b"abc")
    assert target.read_bytes() == b"abc"
    with pytest.raises(TypeError):
        bu.write_file_atomically(str(tmp_path / "other.bin"), object())  # type: ignore[arg-type]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]
    with pytest.raises(OSError, match="output folder does not exist"):
        bu.write_file_atomically(str(tmp_path / "missing" / "x.bin"), b"abc")
