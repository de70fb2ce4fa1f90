"""The fast CUDA program of the fixed-length BERT network (DEMOBERT_SPEC §3.2).

``BertWeights`` holds the network's weights once, on the GPU, in the compute dtype (GEMM weights
stay ``[out, in]``, the layout cuBLAS reads fastest for ``x @ Wᵀ``).  A ``BertProgram`` is built
per (batch, sequence length): it owns every activation buffer, so ``run`` is a fixed list of
kernel launches with no host synchronisation, no shape arithmetic and nothing for a CUDA graph to
trip on.

Tokens are kept batch-major ([B·S, E] rows) inside: the engine's inputs and its logits are
batch-major already, so the two transposes of the network vanish, and the per-token QKV rows of
one sequence are contiguous, which the attention kernels read in place.  The result equals the
sequence-major network's, row for row.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from helpers.portable import ops
from helpers.portable.kernels.attention import attention_fixed_biased, key_padding_bias
from helpers.portable.kernels.norms import embed_layernorm_into, skip_layernorm_into


@dataclass(frozen=True)
class LayerWeights:
    qkv_weight: torch.Tensor  # [3E, E], channels in the per-head [head][q|k|v][h] order
    qkv_bias: torch.Tensor
    attention_out_weight: torch.Tensor  # [E, E]
    attention_out_bias: torch.Tensor
    attention_ln_gamma: torch.Tensor
    attention_ln_beta: torch.Tensor
    attention_ln_eps: float
    intermediate_weight: torch.Tensor  # [I, E]
    intermediate_bias: torch.Tensor
    output_weight: torch.Tensor  # [E, I]
    output_bias: torch.Tensor
    output_ln_gamma: torch.Tensor
    output_ln_beta: torch.Tensor
    output_ln_eps: float


@dataclass(frozen=True)
class BertWeights:
    word: torch.Tensor
    token_type: torch.Tensor
    position: torch.Tensor
    embedding_gamma: torch.Tensor
    embedding_beta: torch.Tensor
    layers: tuple[LayerWeights, ...]
    head_weight: torch.Tensor  # [2, E]
    head_bias: torch.Tensor
    num_heads: int

    @property
    def hidden_size(self) -> int:
        return self.embedding_gamma.numel()

    @property
    def dtype(self) -> torch.dtype:
        return self.word.dtype

    @classmethod
    def from_weight_map(
        cls, weights: dict[str, np.ndarray], num_heads: int, num_layers: int, dtype: torch.dtype, device: torch.device
    ) -> "BertWeights":
        """From the demo's weight dictionary (§5.1, QKV packed per head); LayerNorm epsilons are
        the skip-LayerNorm plugin's for this width and dtype."""

        def tensor(name: str, as_dtype: torch.dtype = dtype) -> torch.Tensor:
            return torch.from_numpy(np.ascontiguousarray(weights[name])).to(device=device, dtype=as_dtype)

        def layer(i: int) -> LayerWeights:
            p = f"l{i}_"
            return LayerWeights(
                tensor(p + "attention_self_qkv_kernel"), tensor(p + "attention_self_qkv_bias"),
                tensor(p + "attention_output_dense_kernel"), tensor(p + "attention_output_dense_bias"),
                tensor(p + "attention_output_layernorm_gamma", torch.float32),
                tensor(p + "attention_output_layernorm_beta", torch.float32), eps,
                tensor(p + "intermediate_dense_kernel"), tensor(p + "intermediate_dense_bias"),
                tensor(p + "output_dense_kernel"), tensor(p + "output_dense_bias"),
                tensor(p + "output_layernorm_gamma", torch.float32),
                tensor(p + "output_layernorm_beta", torch.float32), eps,
            )

        hidden = weights["bert_embeddings_layernorm_gamma"].size
        eps = ops.skip_layernorm_eps(hidden, dtype)
        return cls(
            tensor("bert_embeddings_word_embeddings").view(-1, hidden),
            tensor("bert_embeddings_token_type_embeddings").view(-1, hidden),
            tensor("bert_embeddings_position_embeddings").view(-1, hidden),
            tensor("bert_embeddings_layernorm_gamma", torch.float32),
            tensor("bert_embeddings_layernorm_beta", torch.float32),
            tuple(layer(i) for i in range(num_layers)),
            tensor("cls_squad_output_weights").view(2, hidden),
            tensor("cls_squad_output_bias"),
            num_heads,
        )


class BertProgram:
    """The network for one (batch, seq): ``run(input_ids, segment_ids, input_mask, logits)``
    with int32 [B, S] inputs and a float32 [B, S, 2] output, all contiguous CUDA tensors."""

    def __init__(self, weights: BertWeights, batch: int, seq_len: int) -> None:
        self.weights, self.batch, self.seq_len = weights, batch, seq_len
        tokens, hidden, dt, dev = batch * seq_len, weights.hidden_size, weights.dtype, weights.word.device
        inter = weights.layers[0].intermediate_weight.shape[0] if weights.layers else hidden
        self.positions = torch.arange(seq_len, dtype=torch.int32, device=dev).repeat(batch)
        self.hidden = torch.empty(tokens, hidden, dtype=dt, device=dev)
        self.attention_ln = torch.empty_like(self.hidden)
        self.dense = torch.empty_like(self.hidden)
        self.qkv = torch.empty(tokens, 3 * hidden, dtype=dt, device=dev)
        self.intermediate = torch.empty(tokens, inter, dtype=dt, device=dev)
        self.head = torch.empty(tokens, 2, dtype=dt, device=dev)

    def run(self, input_ids: torch.Tensor, segment_ids: torch.Tensor, input_mask: torch.Tensor,
            logits: torch.Tensor) -> None:
        w, h, ln = self.weights, self.hidden, self.attention_ln
        embed_layernorm_into(h, None, input_ids, segment_ids, self.positions, w.word, w.token_type, w.position,
                             w.embedding_gamma, w.embedding_beta)
        mask_idx = ops.mask_index(input_mask.t())
        key_bias = key_padding_bias(mask_idx, self.seq_len, w.dtype)
        qkv_bs = self.qkv.view(self.batch, self.seq_len, -1).transpose(0, 1)  # [S, B, 3E] view
        for layer in w.layers:
            torch.addmm(layer.qkv_bias, h, layer.qkv_weight.t(), out=self.qkv)
            context = attention_fixed_biased(qkv_bs, key_bias, w.num_heads)  # [S, B, E] view of [B, S, E]
            torch.mm(context.transpose(0, 1).reshape(h.shape), layer.attention_out_weight.t(), out=self.dense)
            skip_layernorm_into(ln, None, self.dense, h, layer.attention_ln_gamma, layer.attention_ln_beta,
                                layer.attention_out_bias, layer.attention_ln_eps)
            torch._addmm_activation(layer.intermediate_bias, ln, layer.intermediate_weight.t(), use_gelu=True,
                                    out=self.intermediate)
            torch.mm(self.intermediate, layer.output_weight.t(), out=self.dense)
            skip_layernorm_into(h, None, self.dense, ln, layer.output_ln_gamma, layer.output_ln_beta,
                                layer.output_bias, layer.output_ln_eps)
        torch.addmm(w.head_bias, h, w.head_weight.t(), out=self.head)
        logits.copy_(self.head.view(logits.shape))
