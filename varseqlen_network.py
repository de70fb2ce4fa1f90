"""The packed BERT network of ``builder_varseqlen.py``: token ids of all sequences of a batch in
one stream of T tokens, ``cu_seqlens`` (the B+1 prefix sums of their lengths) and ``max_seqlen``
(only its length is read) in; ``logits_out`` ``[2, T, 1, 1]`` (start logits, then end logits) out.
(docs/SPEC.md: "Variable-length network", "Plugins", "QAT ranges".)

Two layouts:
* packed ``[T, E, 1, 1]`` (FP32/FP16, and INT8 without ``-il``);
* interleaved ``[1, E, T, 1]`` (``--int8 -il``; and ``--megatron``).  Its Q/K/V channels are ordered
  q block, k block, v block.  The original builds it only for INT8 (TensorRT's CHW32 INT8 kernels);
  the portable engine also runs it with float tensors, which is how Megatron runs in FP32/FP16 there.

Megatron-BERT's residual stream (``megatron``) adds *pre*-LayerNorm sums at the skip connections
(the embedding sum, then each skip-LayerNorm's second output).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from bert_weights import BertConfig, WeightMap
from bert_weights.names import B_AOUT, B_LOUT, B_MID, BQKV, EMBEDDING_NAMES, SQD_B, SQD_W, W_AOUT, W_LOUT, W_MID, WQKV
from builder_utils import (
    add_channel_scale,
    add_dense,
    add_embedding_projection,
    add_gelu,
    add_plugin,
    amax,
    name_network,
    plugin_field,
    set_output_range,
    set_qkv_input_range,
)
from helpers.backend import trt
from helpers.smoothing import FC1_LAYER, HEAD_LAYER, QKV_LAYER, SKIP_SCALE, gelu_output_range

INPUT_NAMES = ("input_ids", "segment_ids", "cu_seqlens", "max_seqlen")
CHANNEL_AXIS = 1  # of both layouts, [T, E, 1, 1] and [1, E, T, 1]


class PackedShape(NamedTuple):
    """One optimization profile's largest batch: ``tokens`` tokens in up to ``sequences`` sequences."""

    tokens: int
    sequences: int


def batch_profiles(batch_sizes: Sequence[int], max_sequence_length: int) -> list[PackedShape]:
    """The profile of each -b: b sequences of up to S tokens (docs/SPEC.md "Variable-length network")."""
    return [PackedShape(max_sequence_length * b, b) for b in batch_sizes]


class VarSeqLenNetwork:
    """Adds the packed BERT network to a TensorRT network definition."""

    def __init__(
        self,
        network: trt.INetworkDefinition,
        config: BertConfig,
        weights: WeightMap,
        megatron: bool,
    ):
        self.network = network
        self.config = config
        self.weights = weights
        self.megatron = megatron
        self.interleaved = config.interleaved

    # ---- helpers ------------------------------------------------------------------------

    def amax(self, name: str) -> float:
        return amax(self.weights, name)

    def plugin(self, key: str, inputs: list[trt.ITensor], fields: list[trt.PluginField]) -> trt.ILayer:
        return add_plugin(self.network, key, inputs, fields, self.config)

    def transpose(self, tensor: trt.ITensor, order: tuple[int, ...]) -> trt.ITensor:
        shuffle = self.network.add_shuffle(tensor)
        shuffle.second_transpose = order
        return shuffle.get_output(0)

    def plugin_type_id(self) -> int:
        if self.config.use_int8 and not self.config.is_calib_mode:
            return int(trt.int8)
        return int(trt.float16 if self.config.use_fp16 else trt.float32)

    # ---- layers -------------------------------------------------------------------------

    def add_inputs(
        self, builder: trt.Builder, builder_config: trt.IBuilderConfig, profiles: Sequence[PackedShape], max_sequence_length: int
    ) -> list[trt.ITensor]:
        inputs = [self.network.add_input(name, trt.int32, (-1,)) for name in INPUT_NAMES]
        for shape in profiles:
            profile = builder.create_optimization_profile()
            tokens = (shape.tokens,)
            profile.set_shape("input_ids", (1,), tokens, tokens)
            profile.set_shape("segment_ids", (1,), tokens, tokens)
            profile.set_shape("cu_seqlens", (1,), (shape.sequences + 1,), (shape.sequences + 1,))
            profile.set_shape("max_seqlen", (1,), (max_sequence_length,), (max_sequence_length,))
            builder_config.add_optimization_profile(profile)
        return inputs

    def add_embeddings(self, inputs: list[trt.ITensor]) -> trt.ILayer:
        config = self.config
        fields = [plugin_field(name, self.weights[name], "float32") for name in EMBEDDING_NAMES]
        half = config.use_fp16 or (config.use_int8 and not config.is_calib_mode)
        fields.append(plugin_field("output_fp16", 1 if half else 0, "int32"))
        key = "emb_layer_norm_megatron" if self.megatron else "emb_layer_norm_huggingface"
        layer = self.plugin(key, inputs, fields)
        if config.use_int8 and config.use_qat:
            set_output_range(layer, self.amax("l0_attention_self_query_input_amax"))
            if self.megatron:
                set_output_range(layer, self.amax("l0_attention_output_add_residual_input_quantizer_amax"), index=1)
        layer.get_output(0).name = "embeddings_output"
        return layer

    def add_attention(
        self, prefix: str, x: trt.ITensor, mask_idx: trt.ITensor | None, cu_seqlens: trt.ITensor, max_seqlen: trt.ITensor
    ) -> trt.ILayer:
        config = self.config
        hidden = config.hidden_size
        qkv = add_dense(self.network, x, 3 * hidden, self.weights[prefix + WQKV], self.weights[prefix + BQKV])
        qkv.name = prefix + QKV_LAYER
        if config.use_qat:
            names = ("qv_a", "qv_b", "av_b")
            set_output_range(qkv, max(self.amax(f"{prefix}attention_self_{n}_input_quantizer_amax") for n in names))
        qkv.get_output(0).name = prefix + "attention_qkv_mult"

        fields = [plugin_field("hidden_size", hidden, "int32"), plugin_field("num_heads", config.num_attention_heads, "int32")]
        if config.use_qat:
            dq_probs = self.amax(prefix + "attention_self_av_a_input_quantizer_amax") / 127.0
            fields.append(plugin_field("dq_probs", dq_probs, "float32"))
        if self.interleaved:
            context = self.plugin("qkv_to_context_interleaved", [qkv.get_output(0), cu_seqlens, max_seqlen], fields)
        else:
            assert mask_idx is not None
            fields.append(plugin_field("has_mask", 1, "int32"))
            fields.append(plugin_field("type_id", self.plugin_type_id(), "int32"))
            # As in the original: an int32 value tagged FLOAT32; the plugin reads the raw int32.
            fields.append(trt.PluginField("var_seqlen", np.array([1], dtype=np.int32), trt.PluginFieldType.FLOAT32))
            context = self.plugin(
                "qkv_to_context_varseqlen", [qkv.get_output(0), mask_idx, cu_seqlens, max_seqlen], fields
            )
        context.name = prefix + "attention_qkv_to_ctx"
        if config.use_qat:
            set_output_range(context, self.amax(prefix + "attention_output_dense_input_amax"))
        context.get_output(0).name = prefix + "attention_context_layer"
        return context

    def add_skip_layernorm(self, prefix: str, x: trt.ITensor, skip: trt.ITensor, pre_ln_output: bool) -> trt.ILayer:
        """Skip + LayerNorm; ``pre_ln_output`` asks for the Megatron version (second output: the sum)."""
        beta = plugin_field("beta", self.weights[prefix + "beta"], "float32")
        gamma = plugin_field("gamma", self.weights[prefix + "gamma"], "float32")
        # With activation smoothing the skip (a smoothed LayerNorm output) is scaled back first.
        skip = add_channel_scale(self.network, skip, self.weights.get(prefix + SKIP_SCALE), CHANNEL_AXIS, prefix + "skip")
        if self.interleaved:
            key = "skip_layer_norm_megatron" if pre_ln_output else "skip_layer_norm_huggingface"
            return self.plugin(key, [x, skip], [beta, gamma])
        # v2 does not declare "ld"; the original sends it anyway.
        fields = [
            plugin_field("ld", self.config.hidden_size, "int32"),
            beta,
            gamma,
            plugin_field("type_id", self.plugin_type_id(), "int32"),
        ]
        return self.plugin("skip_layer_norm_varseqlen", [x, skip], fields)

    def add_transformer_layer(
        self,
        index: int,
        x: trt.ITensor,
        residual: trt.ITensor | None,
        mask_idx: trt.ITensor | None,
        cu_seqlens: trt.ITensor,
        max_seqlen: trt.ITensor,
    ) -> trt.ILayer:
        config, weights, network = self.config, self.weights, self.network
        prefix = f"l{index}_"
        hidden = config.hidden_size
        last = index == config.num_hidden_layers - 1
        if config.use_qat:
            set_qkv_input_range(weights, prefix, x)

        context = self.add_attention(prefix, x, mask_idx, cu_seqlens, max_seqlen)
        attention_dense = add_dense(network, context.get_output(0), hidden, weights[prefix + W_AOUT], weights[prefix + B_AOUT])
        attention_dense.name = prefix + "attention_output_dense"
        if config.use_int8 and config.use_qat:
            set_output_range(attention_dense, self.amax(prefix + "attention_output_add_local_input_quantizer_amax"))

        if self.megatron:
            assert residual is not None
            if config.use_qat:
                amax_residual = self.amax(prefix + "attention_output_add_residual_input_quantizer_amax")
                residual.set_dynamic_range(-amax_residual, amax_residual)
            skip = residual
        else:
            skip = x
        attention_ln = self.add_skip_layernorm(
            prefix + "attention_output_layernorm_", attention_dense.get_output(0), skip, pre_ln_output=self.megatron
        )
        if config.use_qat:
            set_output_range(attention_ln, self.amax(prefix + "intermediate_dense_input_amax"))

        intermediate = add_dense(
            network, attention_ln.get_output(0), config.intermediate_size, weights[prefix + W_MID], weights[prefix + B_MID]
        )
        intermediate.name = prefix + FC1_LAYER
        # The FP32-pinned tanh chain is what TensorRT fuses with the dense layer; GELU_ERF is one layer.
        gelu = add_gelu(network, intermediate.get_output(0), force_fp32=config.gelu == "tanh", form=config.gelu)
        gelu.get_output(0).name = prefix + "gelu"
        if config.use_int8 and config.use_qat:
            set_output_range(gelu, self.amax(prefix + "output_dense_input_amax"))
        elif config.use_int8:
            set_output_range(gelu, gelu_output_range(weights, prefix))  # as builder.py's post-training calibration

        output_dense = add_dense(network, gelu.get_output(0), hidden, weights[prefix + W_LOUT], weights[prefix + B_LOUT])
        output_dense.name = prefix + "output_dense"
        if config.use_int8 and config.use_qat:
            set_output_range(output_dense, self.amax(prefix + "output_add_local_input_quantizer_amax"))
        output_dense.get_output(0).name = prefix + "output_dense"

        if self.megatron:
            if config.use_qat:
                set_output_range(attention_ln, self.amax(prefix + "output_add_residual_input_quantizer_amax"), index=1)
            skip = attention_ln.get_output(1)
        else:
            skip = attention_ln.get_output(0)
        output_ln = self.add_skip_layernorm(
            prefix + "output_layernorm_", output_dense.get_output(0), skip, pre_ln_output=self.megatron and not last
        )
        output_ln.get_output(0).name = prefix + "output_reshape"
        return output_ln

    def add_squad_head(self, x: trt.ITensor) -> trt.ITensor:
        logits = add_dense(self.network, x, 2, self.weights["cls_" + SQD_W], self.weights["cls_" + SQD_B])
        logits.name = HEAD_LAYER
        # [T, 2, 1, 1] or interleaved [1, 2, T, 1] -> [2, T, 1, 1]
        order = (1, 2, 0, 3) if self.interleaved else (1, 0, 2, 3)
        output = self.transpose(logits.get_output(0), order)
        output.name = "logits_out"
        self.network.mark_output(output)
        return output

    def populate(
        self, builder: trt.Builder, builder_config: trt.IBuilderConfig, profiles: Sequence[PackedShape], max_sequence_length: int
    ) -> None:
        name_network(self.network, self.config, self.weights)
        inputs = self.add_inputs(builder, builder_config, profiles, max_sequence_length)
        cu_seqlens, max_seqlen = inputs[2], inputs[3]
        embeddings = self.add_embeddings(inputs)
        x = add_embedding_projection(self.network, self.config, self.weights, embeddings.get_output(0))
        mask_idx: trt.ITensor | None = None
        residual: trt.ITensor | None = None
        if self.interleaved:
            # [T, E, 1, 1] -> [1, E, T, 1]
            x = self.transpose(x, (2, 1, 0, 3))
        else:
            mask_idx = embeddings.get_output(1)
        if self.megatron:
            # Layer 0 sets its dynamic range (l0_attention_output_add_residual_input_quantizer_amax).
            residual = self.transpose(embeddings.get_output(1), (2, 1, 0, 3))
        for index in range(self.config.num_hidden_layers):
            layer = self.add_transformer_layer(index, x, residual, mask_idx, cu_seqlens, max_seqlen)
            x = layer.get_output(0)
            if self.megatron and index != self.config.num_hidden_layers - 1:
                residual = layer.get_output(1)
        if self.config.use_qat:
            set_output_range(layer, self.amax("bert_encoder_final_input_quantizer_amax"))
        self.add_squad_head(x)
