"""Question answering with the checkpoint's own tokenizer (a HuggingFace ``tokenizer.json``).

Byte-level BPE (RoBERTa), Unigram (XLM-RoBERTa, ALBERT) and WordPiece ``tokenizer.json`` files go
through HuggingFace ``tokenizers``: the passage is tokenized once as text, every piece keeps its
character offsets, and an answer is the passage's text between the offsets of its first and last
piece.  A ``vocab.txt`` keeps the demo's own WordPiece path (``helpers.tokenization``,
``helpers.data_processing``), unchanged.  ``load_tokenizer`` picks between the two for what ``-v``
names and what the engine says about its model; ``question_features`` makes the features of either.

Features follow the demo's rules: the question keeps its first ``max_query_length`` pieces, the
passage is cut into windows ``doc_stride`` pieces apart, and a piece is scored only in the window
where it has the most context.  The special tokens around the pair and the segment ids are the
tokenizer's own (its post-processor: ``[CLS] q [SEP] p [SEP]``, ``<s> q </s></s> p </s>``, ...);
segment ids are clipped to the model's token types (one for RoBERTa and DistilBERT).
"""

from __future__ import annotations

import collections
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

import helpers.data_processing as dp
import helpers.tokenization as tokenization
from helpers.files import VOCAB_FILE_MAX_BYTES, read_limited
from helpers.model_info import ModelInfo

if TYPE_CHECKING:
    from tokenizers import Encoding

TOKENIZER_FILE = "tokenizer.json"
VOCAB_FILE = "vocab.txt"
WORDPIECE = "wordpiece"

# A feature of the offset path: the demo's fields, plus the character span of every passage piece
# (keyed like ``token_to_orig_map``, by position in the feature) and the passage itself.
OffsetFeature = collections.namedtuple("OffsetFeature", [*dp.Feature._fields, "char_spans", "passage"])


class TokenizerFileError(tokenization.VocabError):
    """The vocabulary/tokenizer given does not exist, cannot be read, or does not fit the engine's model."""


def vocabulary_source(path: str, model: ModelInfo) -> tuple[str, str]:
    """(``"vocab.txt"`` or ``"tokenizer.json"``, file) that ``-v PATH`` names for an engine's model.

    ``PATH`` is a vocab.txt, a tokenizer.json or a checkpoint folder.  In a folder, a WordPiece
    model reads its vocab.txt (the demo's path), any other model its tokenizer.json.
    """
    if os.path.isdir(path):
        candidates = (VOCAB_FILE, TOKENIZER_FILE) if model.tokenizer == WORDPIECE else (TOKENIZER_FILE,)
        for name in candidates:
            if os.path.isfile(os.path.join(path, name)):
                return name, os.path.join(path, name)
        raise TokenizerFileError(
            f"{path} holds no {' or '.join(candidates)} (the engine's {model.family} model reads text "
            f"with a {model.tokenizer} tokenizer)"
        )
    if not os.path.exists(path):
        raise TokenizerFileError(f"vocabulary file not found: {path}")
    if path.endswith(".json"):
        return TOKENIZER_FILE, path
    if model.tokenizer != WORDPIECE:
        raise TokenizerFileError(
            f"the engine's {model.family} model reads text with a {model.tokenizer} tokenizer, not a "
            f"WordPiece vocab.txt; pass its tokenizer.json or checkpoint folder with -v"
        )
    return VOCAB_FILE, path


@dataclass(frozen=True)
class PairTemplate:
    """Where the tokenizer puts its special tokens around a question/passage pair, and the segment ids."""

    prefix: tuple[int, ...]
    middle: tuple[int, ...]
    suffix: tuple[int, ...]
    prefix_types: tuple[int, ...]
    middle_types: tuple[int, ...]
    suffix_types: tuple[int, ...]
    question_type: int
    passage_type: int

    @property
    def special_tokens(self) -> int:
        return len(self.prefix) + len(self.middle) + len(self.suffix)


class OffsetTokenizer:
    """Features and answers through a ``tokenizer.json``, for an engine whose model has ``token_types`` rows."""

    def __init__(self, path: str, token_types: int):
        try:
            from tokenizers import Tokenizer
        except ImportError:
            raise TokenizerFileError(f"reading {path} needs the tokenizers package (pip install tokenizers)") from None
        try:
            self.tokenizer = Tokenizer.from_str(read_limited(path, VOCAB_FILE_MAX_BYTES, "tokenizer").decode("utf-8"))
        except Exception as err:  # OSError, UnicodeDecodeError; the Rust side raises plain Exceptions
            reason = next((line.strip() for line in str(err).splitlines() if line.strip()), type(err).__name__)
            raise TokenizerFileError(f"cannot read tokenizer {path}: {reason}") from None
        self.tokenizer.no_truncation()
        self.tokenizer.no_padding()
        self.path = path
        self.token_types = token_types

    def check_embedding_rows(self, rows: int, path: str) -> None:
        """TokenizerFileError when the tokenizer has ids that a word embedding table of ``rows`` rows lacks."""
        size = self.tokenizer.get_vocab_size(with_added_tokens=True)
        if size > rows:
            raise TokenizerFileError(
                f"{path}: tokenizer has {size} entries, but the model's word embedding table has {rows} rows "
                f"(ids {rows} and up would embed as zeros); is it another model's tokenizer?"
            )

    def encode(self, text: str) -> Encoding:
        return self.tokenizer.encode(text, add_special_tokens=False)

    def pair_template(self, question: Encoding, passage: Encoding) -> PairTemplate:
        """The tokenizer's post-processing of this pair, read back as prefix/middle/suffix special tokens."""
        pair = self.tokenizer.post_process(question, passage, add_special_tokens=True)
        special = pair.special_tokens_mask
        pieces = [i for i, flag in enumerate(special) if not flag]
        q_len, p_len = len(question.ids), len(passage.ids)
        if len(pieces) != q_len + p_len:
            raise dp.FeatureError(f"{self.path}: the tokenizer's pair template changes the question or passage pieces")
        q_start, p_start = pieces[0], pieces[q_len]
        if pieces != [*range(q_start, q_start + q_len), *range(p_start, p_start + p_len)]:
            raise dp.FeatureError(f"{self.path}: the tokenizer's pair template interleaves special tokens with text")
        if not any(special):
            raise dp.FeatureError(
                f"{self.path}: the tokenizer adds no special tokens to a question/passage pair "
                "(its tokenizer.json has no post_processor)"
            )
        ids, types = pair.ids, [min(t, self.token_types - 1) for t in pair.type_ids]
        q_end, p_end = q_start + q_len, p_start + p_len
        return PairTemplate(
            prefix=tuple(ids[:q_start]),
            middle=tuple(ids[q_end:p_start]),
            suffix=tuple(ids[p_end:]),
            prefix_types=tuple(types[:q_start]),
            middle_types=tuple(types[q_end:p_start]),
            suffix_types=tuple(types[p_end:]),
            question_type=types[q_start],
            passage_type=types[p_start],
        )

    def features(
        self, passage: str, question: str, max_seq_length: int, doc_stride: int, max_query_length: int
    ) -> list[OffsetFeature]:
        """One feature per passage window: the pair template around the question and the window's pieces."""
        dp.check_positive(max_seq_length=max_seq_length, doc_stride=doc_stride, max_query_length=max_query_length)
        question_encoding = self.encode(question)
        if not question_encoding.ids:
            raise dp.FeatureError(f"question has no tokens: {question!r}")
        passage_encoding = self.encode(passage)
        if not passage_encoding.ids:
            raise dp.FeatureError("passage has no tokens")
        template = self.pair_template(question_encoding, passage_encoding)
        query_ids = question_encoding.ids[:max_query_length]
        max_tokens_for_doc = max_seq_length - len(query_ids) - template.special_tokens
        if max_tokens_for_doc < 1:
            raise dp.FeatureError(
                f"max_seq_length {max_seq_length} cannot hold a {len(query_ids)}-token question "
                f"and any passage (needs at least {len(query_ids) + template.special_tokens + 1})"
            )
        head = [*template.prefix, *query_ids, *template.middle]
        head_types = [*template.prefix_types, *[template.question_type] * len(query_ids), *template.middle_types]
        doc_ids, doc_offsets = passage_encoding.ids, passage_encoding.offsets
        spans = dp.doc_windows(len(doc_ids), max_tokens_for_doc, doc_stride)
        best_window = dp.max_context_windows(spans, len(doc_ids))
        features = []
        for window, span in enumerate(spans):
            pieces = range(span.start, span.start + span.length)
            ids = [*head, *doc_ids[span.start : span.start + span.length], *template.suffix]
            types = [*head_types, *[template.passage_type] * span.length, *template.suffix_types]
            positions = range(len(head), len(head) + span.length)
            features.append(
                OffsetFeature(
                    input_ids=padded(ids, max_seq_length),
                    input_mask=padded([1] * len(ids), max_seq_length),
                    segment_ids=padded(types, max_seq_length),
                    tokens=[self.tokenizer.id_to_token(i) for i in ids],
                    token_to_orig_map=dict(zip(positions, pieces)),
                    token_is_max_context={p: best_window[piece] == window for p, piece in zip(positions, pieces)},
                    char_spans={p: doc_offsets[piece] for p, piece in zip(positions, pieces)},
                    passage=passage,
                )
            )
        return features


def load_tokenizer(
    vocab_file: str, model: ModelInfo, wordpiece: type[tokenization.FullTokenizer] | type[tokenization.BertTokenizer]
) -> tokenization.FullTokenizer | tokenization.BertTokenizer | OffsetTokenizer:
    """The tokenizer ``-v`` names for an engine's model: a ``wordpiece`` one over a vocab.txt (the
    demo's path), else an OffsetTokenizer over the tokenizer.json.  Raises VocabError subclasses."""
    source, path = vocabulary_source(vocab_file, model)
    if source == TOKENIZER_FILE:
        return OffsetTokenizer(path, model.token_types)
    return wordpiece(vocab_file=path, do_lower_case=True)


def question_features(
    tokenizer: tokenization.FullTokenizer | tokenization.BertTokenizer | OffsetTokenizer,
    doc_tokens: list[str],
    question: str,
    max_seq_length: int,
    doc_stride: int,
    max_query_length: int,
    token_types: int,
) -> list:
    """The features of a question about a passage (its doc tokens) through either kind of tokenizer;
    a model with one token type gets segment ids 0 throughout."""
    if isinstance(tokenizer, OffsetTokenizer):
        return tokenizer.features(" ".join(doc_tokens), question, max_seq_length, doc_stride, max_query_length)
    features = dp.convert_example_to_features(doc_tokens, question, tokenizer, max_seq_length, doc_stride, max_query_length)
    if token_types == 1:
        features = [feature._replace(segment_ids=np.zeros_like(feature.segment_ids)) for feature in features]
    return features


def padded(values: list[int], length: int) -> np.ndarray:
    """int32 ``values`` zero-padded to ``length``."""
    array = np.zeros(length, dtype=np.int32)
    array[: len(values)] = values
    return array


def answer_text(feature: OffsetFeature, start: int, end: int) -> str:
    """The passage's text from the first character of piece ``start`` to the last of piece ``end``."""
    return feature.passage[feature.char_spans[start][0] : feature.char_spans[end][1]].strip()

