"""BERT tokenization with Google's original rules (docs/SPEC.md "Tokenization").

``BasicTokenizer`` cleans the text, isolates CJK ideographs, optionally lower-cases and strips
accents, and splits punctuation off; ``WordpieceTokenizer`` then splits each word greedily into
the longest vocabulary pieces.  ``FullTokenizer`` (used by inference) and ``BertTokenizer`` (used
by the calibrator) chain the two.

Unlike HuggingFace's BERT tokenizers there is no never-split list (``[CLS]`` in the text is
split like any other word), no NFC normalization of the input, and the WordPiece word limit is
Google's 200 characters rather than HuggingFace's 100.

Speed: character classes are looked up through lazily filled ``str.translate`` tables instead
of per-character Python calls, and the end-to-end front ends cache the pieces of recently seen
texts.  SQuAD featurization tokenizes every passage word once per question, so most calls hit.
"""

from __future__ import annotations

import functools
import io
import unicodedata
from collections.abc import Iterable, Mapping

from helpers.files import VOCAB_FILE_MAX_BYTES, read_limited

UNK_TOKEN = "[UNK]"
CLS_TOKEN = "[CLS]"
SEP_TOKEN = "[SEP]"
# Google's limit; words longer than this (in code points) become [UNK].
MAX_INPUT_CHARS_PER_WORD = 200
# Entries kept by the front ends' text -> pieces cache (a SQuAD dev set has ~60k distinct words).
TOKENIZE_CACHE_SIZE = 1 << 18

# Code point ranges of the CJK ideograph blocks that get a space on both sides.
_CJK_RANGES = (
    (0x4E00, 0x9FFF),
    (0x3400, 0x4DBF),
    (0x20000, 0x2A6DF),
    (0x2A700, 0x2B73F),
    (0x2B740, 0x2B81F),
    (0x2B820, 0x2CEAF),
    (0xF900, 0xFAFF),
    (0x2F800, 0x2FA1F),
)


class VocabError(ValueError):
    """The vocabulary file cannot be read or lacks a token the tokenizer needs."""


def is_whitespace(char: str) -> bool:
    """Space, tab, newline, carriage return, or any Unicode space separator (Zs)."""
    return char in " \t\n\r" or unicodedata.category(char) == "Zs"


def is_control(char: str) -> bool:
    """Unicode "other" categories (C*), except tab/newline/CR, which count as whitespace."""
    return char not in "\t\n\r" and unicodedata.category(char).startswith("C")


def is_punctuation(char: str) -> bool:
    """Every ASCII non-alphanumeric printable symbol, plus Unicode punctuation (P*)."""
    cp = ord(char)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(char).startswith("P")


def is_cjk_ideograph(cp: int) -> bool:
    return any(low <= cp <= high for low, high in _CJK_RANGES)


class _TranslationTable(dict):
    """A ``str.translate`` table that classifies each code point the first time it is seen."""

    def __init__(self, classify):
        super().__init__()
        self._classify = classify

    def __missing__(self, cp: int):
        value = self._classify(chr(cp))
        self[cp] = value
        return value


def _clean_and_space_cjk(char: str) -> str | None:
    cp = ord(char)
    if cp == 0 or cp == 0xFFFD or is_control(char):
        return None
    if is_whitespace(char):
        return " "
    if is_cjk_ideograph(cp):
        return f" {char} "
    return char


def _space_punctuation(char: str) -> str:
    return f" {char} " if is_punctuation(char) else char


def _drop_nonspacing_mark(char: str) -> str | None:
    return None if unicodedata.category(char) == "Mn" else char


_CLEAN_AND_SPACE_CJK = _TranslationTable(_clean_and_space_cjk)
_SPACE_PUNCTUATION = _TranslationTable(_space_punctuation)
_DROP_NONSPACING_MARKS = _TranslationTable(_drop_nonspacing_mark)


def convert_to_unicode(text: str | bytes) -> str:
    """``str`` unchanged; ``bytes`` decoded as UTF-8, dropping invalid sequences."""
    if isinstance(text, str):
        return text
    if isinstance(text, bytes):
        return text.decode("utf-8", "ignore")
    raise TypeError(f"expected str or bytes, got {type(text).__name__}")


def strip_accents(text: str) -> str:
    """NFD-decompose and drop the non-spacing marks (category Mn)."""
    if text.isascii():
        return text
    return unicodedata.normalize("NFD", text).translate(_DROP_NONSPACING_MARKS)


def load_vocab(vocab_file: str) -> dict[str, int]:
    """Map each stripped line of a UTF-8 vocabulary file to its 0-based line number.

    A later duplicate of a token overrides the earlier one's id, as in Google's loader.
    """
    try:
        data = read_limited(vocab_file, VOCAB_FILE_MAX_BYTES, "vocabulary")
        # Universal newlines, as text-mode readlines() splits.
        lines = io.TextIOWrapper(io.BytesIO(data), encoding="utf-8").readlines()
    except OSError as err:
        raise VocabError(f"{vocab_file}: cannot read vocabulary ({err.strerror or err})") from err
    except UnicodeDecodeError as err:
        raise VocabError(f"{vocab_file}: vocabulary is not UTF-8 (byte {err.start})") from err
    if not lines:
        raise VocabError(f"{vocab_file}: vocabulary is empty")
    return {line.strip(): index for index, line in enumerate(lines)}


def convert_by_vocab(vocab: Mapping, items: Iterable) -> list:
    """Look every item up; an unknown item raises KeyError."""
    return [vocab[item] for item in items]


def convert_tokens_to_ids(vocab: Mapping[str, int], tokens: Iterable[str]) -> list[int]:
    return convert_by_vocab(vocab, tokens)


def convert_ids_to_tokens(inv_vocab: Mapping[int, str], ids: Iterable[int]) -> list[str]:
    return convert_by_vocab(inv_vocab, ids)


class BasicTokenizer:
    """Cleaning, CJK isolation, optional lower-casing + accent stripping, punctuation split."""

    def __init__(self, do_lower_case: bool = True):
        self.do_lower_case = do_lower_case

    def tokenize(self, text: str | bytes) -> list[str]:
        text = convert_to_unicode(text)
        pieces: list[str] = []
        # Lower-casing and NFD can create punctuation (U+1FEF decomposes to "`"), so the
        # punctuation split runs per word after them, as in Google's order of steps.
        for word in text.translate(_CLEAN_AND_SPACE_CJK).split():
            if self.do_lower_case:
                word = strip_accents(word.lower())
            pieces.extend(word.translate(_SPACE_PUNCTUATION).split())
        return pieces


class WordpieceTokenizer:
    """Greedy longest-match-first split of words into vocabulary pieces (``##`` marks a suffix)."""

    def __init__(
        self,
        vocab: Mapping[str, int],
        unk_token: str = UNK_TOKEN,
        max_input_chars_per_word: int = MAX_INPUT_CHARS_PER_WORD,
    ):
        self.vocab = vocab
        self.unk_token = unk_token
        self.max_input_chars_per_word = max_input_chars_per_word
        # No piece is longer than the longest vocabulary entry, so the search starts there.
        self._longest_piece = max((len(token) for token in vocab), default=0)

    def tokenize(self, text: str | bytes) -> list[str]:
        """Pieces of every whitespace-separated word in ``text`` (already basic-tokenized)."""
        pieces: list[str] = []
        for word in convert_to_unicode(text).split():
            pieces.extend(self.word_pieces(word))
        return pieces

    def word_pieces(self, word: str) -> list[str]:
        """The pieces of one word, or ``[unk_token]`` if it is too long or any part is unknown."""
        if len(word) > self.max_input_chars_per_word:
            return [self.unk_token]
        vocab = self.vocab
        pieces = []
        start = 0
        while start < len(word):
            end = min(len(word), start + self._longest_piece)
            prefix = "##" if start > 0 else ""
            while end > start and prefix + word[start:end] not in vocab:
                end -= 1
            if end == start:
                return [self.unk_token]
            pieces.append(prefix + word[start:end])
            start = end
        return pieces


class _EndToEndTokenizer:
    """BasicTokenizer followed by WordPiece, with a cache of recent texts."""

    def __init__(self, vocab_file: str, do_lower_case: bool = True):
        self.vocab = load_vocab(vocab_file)
        # Every feature of a question starts with [CLS] and separates with [SEP].
        missing = [token for token in (UNK_TOKEN, CLS_TOKEN, SEP_TOKEN) if token not in self.vocab]
        if missing:
            raise VocabError(f"{vocab_file}: vocabulary has no {' or '.join(missing)} token")
        self.inv_vocab = {index: token for token, index in self.vocab.items()}
        self.basic_tokenizer = BasicTokenizer(do_lower_case=do_lower_case)
        self.wordpiece_tokenizer = WordpieceTokenizer(vocab=self.vocab)
        self._cached_pieces = functools.lru_cache(maxsize=TOKENIZE_CACHE_SIZE)(self._pieces)

    def _pieces(self, text: str | bytes) -> tuple[str, ...]:
        word_pieces = self.wordpiece_tokenizer.word_pieces
        return tuple(piece for word in self.basic_tokenizer.tokenize(text) for piece in word_pieces(word))

    def tokenize(self, text: str | bytes) -> list[str]:
        return list(self._cached_pieces(text))

    def convert_tokens_to_ids(self, tokens: Iterable[str]) -> list[int]:
        return convert_by_vocab(self.vocab, tokens)

    def convert_ids_to_tokens(self, ids: Iterable[int]) -> list[str]:
        return convert_by_vocab(self.inv_vocab, ids)

    def check_embedding_rows(self, rows: int, vocab_file: str) -> None:
        """VocabError when the vocabulary holds ids that a word embedding table of ``rows`` rows
        lacks: the embedding plugin would silently embed them as zeros."""
        size = max(index for token, index in self.vocab.items() if token) + 1
        if size > rows:
            raise VocabError(
                f"{vocab_file}: vocabulary has {size} entries, but the model's word embedding table has {rows} "
                f"rows (ids {rows} and up would embed as zeros); is it another model's vocabulary?"
            )


class FullTokenizer(_EndToEndTokenizer):
    """The front end the inference scripts use; ``inv_vocab`` maps ids back to tokens."""


class BertTokenizer(_EndToEndTokenizer):
    """The front end the INT8 calibrator uses; ``ids_to_tokens`` maps ids back to tokens."""

    @property
    def ids_to_tokens(self) -> dict[int, str]:
        return self.inv_vocab

