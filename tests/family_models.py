"""Random-weight question-answering models of every encoder family ``builder.py --hf`` builds,
each written with ``save_pretrained`` next to a tokenizer trained on the fly with ``tokenizers``.

Sizes are awkward on purpose (odd head sizes, an intermediate size of 37, embedding widths that
differ from the hidden size).  Every parameter is perturbed (``checkpoints.perturb_parameters``)
so that LayerNorms, biases and every embedding table matter.  The oracle is the family's own
``*ForQuestionAnswering`` class from ``transformers``; ``hf_answer`` is the HuggingFace way of
answering: the tokenizer's pair encoding, the model's logits, the best span cut from the passage
by its character offsets.
"""

from __future__ import annotations

import copy
import functools
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

import checkpoints

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

CORPUS = [
    "The quick brown fox jumps over the lazy dog near the river bank.",
    "TensorRT is a high performance deep learning inference platform from NVIDIA.",
    "Paris is the capital of France and its largest city, on the Seine.",
    "The engine answers questions about passages with a fine-tuned encoder.",
    "In 1995 the museum opened with three hundred paintings and forty statues.",
    "Marie Curie won two Nobel prizes, in physics and in chemistry.",
    "Rivers carry water from the mountains to the sea through wide valleys.",
    "Which city hosts the tower? Who won the prize? When did it open?",
]
LAYERNORM_WEIGHT = r"(LayerNorm|layer_norm)\.weight"


@dataclass(frozen=True)
class Family:
    """One encoder family: its model type, tokenizer kind, and whether it reads segment ids."""

    model_type: str
    tokenizer: str
    token_types: int


FAMILIES = {
    "roberta": Family("roberta", "bpe", 1),
    "xlm-roberta": Family("xlm-roberta", "unigram", 1),
    "distilbert": Family("distilbert", "wordpiece", 1),
    "electra": Family("electra", "wordpiece", 2),
    "albert": Family("albert", "unigram", 2),
}


# ---------------------------------------------------------------------------------------------
# Tokenizers


def train_tokenizer(kind: str, vocab_size: int):
    """A ``tokenizers.Tokenizer`` of ``kind`` trained on CORPUS, with the pair template of its family."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    if kind == "bpe":  # RoBERTa: byte-level BPE, <s> q </s></s> p </s>
        specials = ["<s>", "<pad>", "</s>", "<unk>"]
        tokenizer = Tokenizer(models.BPE())
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tokenizer.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        tokenizer.train_from_iterator(CORPUS, trainer)
        tokenizer.post_processor = processors.RobertaProcessing(
            ("</s>", tokenizer.token_to_id("</s>")), ("<s>", tokenizer.token_to_id("<s>")), trim_offsets=True,
            add_prefix_space=False)
        return tokenizer
    if kind == "unigram":  # SentencePiece-style (XLM-R, ALBERT): Metaspace pieces
        specials = ["<s>", "<pad>", "</s>", "<unk>", "[CLS]", "[SEP]"]
        tokenizer = Tokenizer(models.Unigram())
        tokenizer.normalizer = normalizers.NFKC()
        tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
        tokenizer.decoder = decoders.Metaspace()
        trainer = trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=specials, unk_token="<unk>")
        tokenizer.train_from_iterator(CORPUS, trainer)
        return tokenizer
    if kind == "wordpiece":  # BERT-style uncased WordPiece: [CLS] q [SEP] p [SEP]
        specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]
        tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
        tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
        tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tokenizer.decoder = decoders.WordPiece()
        trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=specials)
        tokenizer.train_from_iterator(CORPUS, trainer)
        return tokenizer
    raise ValueError(kind)


def set_pair_template(tokenizer, first: str, middle: str, last: str, passage_type: int) -> None:
    """``first $A middle $B last`` with the passage (and what follows it) in segment ``passage_type``."""
    from tokenizers import processors

    names = {name for part in (first, middle, last) for name in part.split()}
    pair = f"{first}:0 $A:0 " + " ".join(f"{n}:0" for n in middle.split()) + f" $B:{passage_type} {last}:{passage_type}"
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{first} $A {last}", pair=pair, special_tokens=[(n, tokenizer.token_to_id(n)) for n in sorted(names)])


def family_tokenizer(model_type: str):
    """The trained tokenizer of a family, with its pair template."""
    if model_type == "roberta":
        return train_tokenizer("bpe", 301)
    if model_type == "xlm-roberta":
        tokenizer = train_tokenizer("unigram", 173)
        set_pair_template(tokenizer, "<s>", "</s> </s>", "</s>", 0)
        return tokenizer
    if model_type == "albert":
        tokenizer = train_tokenizer("unigram", 167)
        set_pair_template(tokenizer, "[CLS]", "[SEP]", "[SEP]", 1)
        return tokenizer
    tokenizer = train_tokenizer("wordpiece", 211)
    set_pair_template(tokenizer, "[CLS]", "[SEP]", "[SEP]", 1)
    return tokenizer


# ---------------------------------------------------------------------------------------------
# Models


def family_model(model_type: str, vocab_size: int, max_positions: int = 130, seed: int = 0, **sizes):
    """A seeded random ``*ForQuestionAnswering`` of the family, every parameter perturbed."""
    import transformers as tf

    common = dict(vocab_size=vocab_size, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                  architectures=None)
    if model_type in ("roberta", "xlm-roberta"):
        config_class, model_class = ((tf.RobertaConfig, tf.RobertaForQuestionAnswering) if model_type == "roberta"
                                     else (tf.XLMRobertaConfig, tf.XLMRobertaForQuestionAnswering))
        config = config_class(hidden_size=40, num_attention_heads=5, intermediate_size=37, num_hidden_layers=2,
                              max_position_embeddings=max_positions + 2, type_vocab_size=1, pad_token_id=1,
                              bos_token_id=0, eos_token_id=2, hidden_act="gelu", layer_norm_eps=1e-5, **common)
    elif model_type == "distilbert":
        config_class, model_class = tf.DistilBertConfig, tf.DistilBertForQuestionAnswering
        config = config_class(vocab_size=vocab_size, dim=48, n_heads=3, hidden_dim=37, n_layers=2,
                              max_position_embeddings=max_positions, activation="gelu", dropout=0.0,
                              attention_dropout=0.0, qa_dropout=0.0)
    elif model_type == "electra":
        config_class, model_class = tf.ElectraConfig, tf.ElectraForQuestionAnswering
        config = config_class(embedding_size=24, hidden_size=36, num_attention_heads=3, intermediate_size=37,
                              num_hidden_layers=2, max_position_embeddings=max_positions, hidden_act="gelu", **common)
    elif model_type == "albert":
        config_class, model_class = tf.AlbertConfig, tf.AlbertForQuestionAnswering
        options = dict(num_hidden_layers=3, num_hidden_groups=1, inner_group_num=1)
        options.update(sizes)
        config = config_class(embedding_size=20, hidden_size=36, num_attention_heads=4, intermediate_size=37,
                              max_position_embeddings=max_positions, hidden_act="gelu_new", pad_token_id=1,
                              **options, **common)
    else:
        raise ValueError(model_type)
    torch.manual_seed(seed)
    model = model_class(config).eval()
    return checkpoints.perturb_parameters(model, seed, LAYERNORM_WEIGHT)


def write_family_folder(model_type: str, folder: Path, seed: int = 0, **sizes) -> tuple[object, Path]:
    """(model, folder): ``save_pretrained`` of a random family model plus its tokenizer.json."""
    tokenizer = family_tokenizer(model_type)
    model = family_model(model_type, tokenizer.get_vocab_size(), seed=seed, **sizes)
    model.save_pretrained(folder)
    tokenizer.save(str(folder / "tokenizer.json"))
    return model, folder


# ---------------------------------------------------------------------------------------------
# Oracle


_references: dict[int, tuple[object, object]] = {}


def reference(model):
    """A float64 copy of ``model`` (made once per model)."""
    if id(model) not in _references:
        _references[id(model)] = (model, copy.deepcopy(model).double().eval())
    return _references[id(model)][1]


def hf_logits(model, inputs: dict[str, np.ndarray], token_types: int) -> np.ndarray:
    """Start/end logits ``[B, S, 2]`` in float64; segment ids only for families that read them."""
    arguments = dict(input_ids=torch.as_tensor(inputs["input_ids"], dtype=torch.long),
                     attention_mask=torch.as_tensor(inputs["input_mask"], dtype=torch.long))
    if token_types > 1:
        arguments["token_type_ids"] = torch.as_tensor(inputs["segment_ids"], dtype=torch.long)
    with torch.no_grad():
        out = reference(model)(**arguments)
    return torch.stack([out.start_logits, out.end_logits], dim=-1).numpy()


def random_inputs(batch: int, seq: int, vocab: int, token_types: int, seed: int, avoid: int) -> dict[str, np.ndarray]:
    """``checkpoints.random_inputs`` with segment ids the family accepts and no token ``avoid`` (the
    padding index, which HF RoBERTa gives no position of its own)."""
    inputs = checkpoints.random_inputs(batch, seq, vocab, seed=seed)
    ids = inputs["input_ids"]
    inputs["input_ids"] = np.where((ids == avoid) & (inputs["input_mask"] == 1), avoid + 1, ids).astype(np.int32)
    if token_types == 1:
        inputs["segment_ids"] = np.zeros_like(inputs["segment_ids"])
    return inputs


def packed_logits(model, batch: dict[str, np.ndarray], token_types: int) -> np.ndarray:
    """HF float64 logits of every sequence of a packed batch run alone, ``[2, T]``."""
    bounds = batch["cu_seqlens"].tolist()
    pieces = []
    for start, end in zip(bounds[:-1], bounds[1:]):
        inputs = {"input_ids": batch["input_ids"][None, start:end], "segment_ids": batch["segment_ids"][None, start:end],
                  "input_mask": np.ones((1, end - start), np.int32)}
        pieces.append(hf_logits(model, inputs, token_types)[0].T)
    return np.concatenate(pieces, axis=1)


@functools.cache
def fast_tokenizer(tokenizer_file: Path):
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_file=str(tokenizer_file))


def hf_answer(model, tokenizer_file: Path, question: str, passage: str, token_types: int, pad_to: int | None = None,
              n_best_size: int = 20, max_answer_length: int = 30) -> str:
    """HuggingFace's answer, as its SQuAD example post-processes (``utils_qa``): the fast tokenizer's
    pair encoding with offsets (padded to ``pad_to`` tokens, as a fixed-length engine's features are,
    so that padding takes its share of the best starts and ends), the model's logits, the
    ``n_best_size`` best starts and ends, and the highest-scoring passage span of at most
    ``max_answer_length`` pieces with any text, cut from the passage by its offsets."""
    tokenizer = fast_tokenizer(tokenizer_file)
    encoding = tokenizer(question, passage, return_offsets_mapping=True, return_token_type_ids=True)
    in_passage = [s == 1 for s in encoding.sequence_ids()]
    length = len(in_passage) if pad_to is None else pad_to
    inputs = {name: np.zeros((1, length), np.int32) for name in ("input_ids", "input_mask", "segment_ids")}
    for name, key in (("input_ids", "input_ids"), ("input_mask", "attention_mask"), ("segment_ids", "token_type_ids")):
        inputs[name][0, : len(in_passage)] = encoding[key]
    in_passage += [False] * (length - len(in_passage))
    logits = hf_logits(model, inputs, token_types)[0]
    offsets = encoding["offset_mapping"]
    starts = np.argsort(-logits[:, 0], kind="stable")[:n_best_size]
    ends = np.argsort(-logits[:, 1], kind="stable")[:n_best_size]
    candidates = []
    for start in starts:
        for end in ends:
            if in_passage[start] and in_passage[end] and start <= end < start + max_answer_length:
                text = passage[offsets[start][0]: offsets[end][1]].strip()
                if text:
                    candidates.append((logits[start, 0] + logits[end, 1], text))
    # utils_qa's placeholder when no span qualifies (the demo's too).
    return max(candidates)[1] if candidates else "empty"
