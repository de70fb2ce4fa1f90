"""helpers/tokenization.py against HuggingFace's Python BERT tokenizer and hand-worked rules.

The oracle is ``transformers.models.bert.tokenization_bert_legacy.BertTokenizerLegacy`` set up to
follow Google's rules, which the demo keeps:
* WordPiece word limit raised from HuggingFace's 100 to Google's 200 characters;
* no never-split list: HF is built with ``never_split=None`` and called with
  ``split_special_tokens=True``, so ``[CLS]`` written in the text is split like any word;
* no NFC step: HF normalizes the whole text to NFC before splitting (Google and the demo do
  not).  The oracle runs with that one call neutralized; ``test_hf_nfc_is_the_only_difference``
  shows the difference it makes on the generated corpus.
"""

from __future__ import annotations

import random
import re
import types
import unicodedata

import pytest
from squad_fixtures import minilm_vocab_file

import helpers.tokenization as tokenization

hf_bert = pytest.importorskip("transformers.models.bert.tokenization_bert_legacy")

TINY_VOCAB = [
    "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]",
    "un", "##aff", "##able", "a", "##a", "##b", "b", "the", "cafe", "café", "e", "##e", "##s",
    "!", ",", ".", "?", "'", "[", "]", "`", "-", "北", "京", "東", "ß", "ss", "i", "##i", "run", "##ning",
    "hello", "world", "ü", "u", "##ü", "x", "##x", "é", "ｈ", "😀", "a" * 12, "##" + "a" * 12,
]  # fmt: skip

WORD_POOL = [
    "the", "The", "unaffable", "running", "Hello", "WORLD", "naïve", "Café", "Cafe\u0301", "façade", "Ångström",
    "İstanbul", "Straße", "ÆØÅ", "São", "Zürich", "Łódź", "résumé", "über", "ǅemal", "ﬁne", "ｈｅｌｌｏ",
    "北京", "東京タワー", "中文字", "𠀋𠀐", "\uf900\ufa0b", "\U0002f800", "한국어", "ひらがな", "カタカナ",
    "Москва", "Ελληνικά", "ά\u037e", "a\u1fefb", "\u0387", "العربية", "עברית", "हिन्दी", "ไทย", "ქართული",
    "😀", "👍🏽", "👨\u200d👩\u200d👧", "❤\ufe0f", "🇫🇷", "a\u0301\u0301", "\u0301start", "x\u0308",
    "[CLS]", "[SEP]", "[UNK]", "[MASK]", "##ing", "don't", "U.S.A.", "e-mail", "3.14", "1,000", "$5", "50%",
    "http://ex.com/a?b=c", "user@mail.org", "C++", "#hash", "@at", "¿Qué?", "¡Hola!", "«quote»", "“curly”",
    "…", "—", "·", "§", "©", "®", "™", "°C", "½", "²", "µ", "Ω", "\u212b", "\u2126", "K\u212a",
]  # fmt: skip
PUNCT_RUNS = ["!!!", "?!?", "...", "---", "(((", ")))", "[]{}<>", "$%^&*", "¿¡", "«»", "“”‘’", "@#~`|\\/", ":;,."]
SEPARATORS = [" ", " ", " ", "  ", "\t", "\n", "\r\n", "\u00a0", "\u202f", "\u3000", "\u2003", "\u2028", "", "\u200b"]
ODD_CHARS = [
    "\x00", "\x01", "\x07", "\x1f", "\x7f", "\x85", "\u200b", "\u200c", "\u200d", "\u2060", "\ufeff", "\ufffd",
    "\u00ad", "\u0378", "\ue000", "\U000f0000", "\ud800", "\u061c", "\u202e",
]  # fmt: skip


def generated_corpus(num_lines: int = 2400, seed: int = 20260526) -> list[str]:
    """Lines mixing words of many scripts, punctuation runs, odd characters and whitespace."""
    rng = random.Random(seed)
    alphabet = "abcdefghijklmnopqrstuvwxyzéüßçñ北京ñ"
    lines = ["", " ", "\t\t", "\u00a0\u202f", "\x00\u200b\ufeff", "a" * 200, "a" * 201, "é" * 150, "b" * 150 + "!"]
    while len(lines) < num_lines:
        pieces = []
        for _ in range(rng.randint(1, 25)):
            kind = rng.random()
            if kind < 0.55:
                piece = rng.choice(WORD_POOL)
            elif kind < 0.65:
                piece = rng.choice(PUNCT_RUNS)
            elif kind < 0.75:
                piece = rng.choice(WORD_POOL) + rng.choice(ODD_CHARS) + rng.choice(WORD_POOL)
            elif kind < 0.85:
                piece = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 12)))
            elif kind < 0.86:  # long words are few: the oracle's WordPiece is quadratic in word length
                piece = rng.choice("ab") * rng.choice([99, 100, 101, 199, 200, 201, 260])
            elif kind < 0.95:
                piece = chr(rng.randint(0x20, 0x2FFFF)) + chr(rng.randint(0x20, 0x2FF))
            else:
                piece = rng.choice(ODD_CHARS)
            pieces.append(piece)
            pieces.append(rng.choice(SEPARATORS))
        line = "".join(pieces)
        lines.append(line.upper() if rng.random() < 0.1 else line)
    return lines


CORPUS = generated_corpus()


@pytest.fixture(scope="module")
def tiny_vocab_file(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("vocab") / "tiny_vocab.txt"
    path.write_text("\n".join(TINY_VOCAB) + "\n", encoding="utf-8")
    return str(path)


class _NoNfcUnicodedata(types.SimpleNamespace):
    """``unicodedata`` for the HF module, with the NFC step Google's tokenizer lacks turned off."""

    @staticmethod
    def normalize(form: str, text: str) -> str:
        return text if form == "NFC" else unicodedata.normalize(form, text)

    category = staticmethod(unicodedata.category)


def hf_google_rules(vocab_file: str, do_lower_case: bool):
    hf = hf_bert.BertTokenizerLegacy(vocab_file, do_lower_case=do_lower_case)
    hf.wordpiece_tokenizer.max_input_chars_per_word = tokenization.MAX_INPUT_CHARS_PER_WORD
    assert not hf.basic_tokenizer.never_split

    def tokenize(text: str) -> list[str]:
        return hf._tokenize(text, split_special_tokens=True)

    return hf, tokenize


@pytest.mark.parametrize("do_lower_case", [True, False])
@pytest.mark.parametrize("vocab", ["minilm", "tiny"])
def test_ids_match_huggingface_on_generated_corpus(vocab, do_lower_case, tiny_vocab_file, monkeypatch):
    vocab_file = minilm_vocab_file() if vocab == "minilm" else tiny_vocab_file
    monkeypatch.setattr(hf_bert, "unicodedata", _NoNfcUnicodedata())
    hf, hf_tokenize = hf_google_rules(vocab_file, do_lower_case)
    ours = tokenization.FullTokenizer(vocab_file, do_lower_case=do_lower_case)
    mismatches = []
    for line in CORPUS:
        hf_tokens = hf_tokenize(line)
        tokens = ours.tokenize(line)
        if tokens != hf_tokens or ours.convert_tokens_to_ids(tokens) != hf.convert_tokens_to_ids(hf_tokens):
            mismatches.append((line, tokens, hf_tokens))
    assert not mismatches, f"{len(mismatches)} of {len(CORPUS)} lines differ, first: {mismatches[0]!r}"


def test_corpus_covers_the_hard_cases(tiny_vocab_file):
    """The corpus really exercises [UNK] words, >200-char words, CJK, accents and control characters."""
    text = "".join(CORPUS)
    assert len(CORPUS) >= 2000 and "" in CORPUS
    assert any(len(word) > 200 for line in CORPUS for word in line.split())
    assert any(100 < len(word) <= 200 for line in CORPUS for word in line.split())
    for needle in ("北", "\u0301", "\x00", "\u200b", "\t", "\u00a0", "\u202f", "😀", "!!!", "[CLS]"):
        assert needle in text
    tokens = tokenization.FullTokenizer(minilm_vocab_file()).tokenize(text)
    assert "[UNK]" in tokens and "[" in tokens and "##s" in tokens


def test_hf_nfc_is_the_only_difference(tiny_vocab_file):
    """Plain HF differs from Google's rules only on lines whose NFC form differs."""
    hf_tokenize = hf_google_rules(minilm_vocab_file(), do_lower_case=False)[1]
    ours = tokenization.FullTokenizer(minilm_vocab_file(), do_lower_case=False)
    differing = [line for line in CORPUS if ours.tokenize(line) != hf_tokenize(line)]
    assert differing, "the cased corpus should contain decomposed accents that NFC changes"
    for line in differing:
        assert unicodedata.normalize("NFC", line) != line
    tiny_hf = hf_google_rules(tiny_vocab_file, do_lower_case=False)[1]
    tiny_ours = tokenization.FullTokenizer(tiny_vocab_file, do_lower_case=False)
    assert tiny_hf("cafe\u0301") == ["café"] and tiny_ours.tokenize("cafe\u0301") == ["[UNK]"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Héllo, World!", ["hello", ",", "world", "!"]),
        ("北京abc東", ["北", "京", "abc", "東"]),
        ("[CLS] x", ["[", "cls", "]", "x"]),
        ("a\u200bb\x00c\ufffdd", ["abcd"]),
        ("a\u00a0b\u202fc\td\u3000e", ["a", "b", "c", "d", "e"]),
        ("a\u1fefb", ["a", "`", "b"]),  # U+1FEF decomposes to a backtick, which is punctuation
        ("İ", ["i"]),
        ("Straße", ["straße"]),
        ("ǅ", ["ǆ"]),
        ("  \n ", []),
        (b"caf\xc3\xa9 \xff!", ["cafe", "!"]),
    ],
)
def test_basic_tokenizer_lower_case(text, expected):
    assert tokenization.BasicTokenizer(do_lower_case=True).tokenize(text) == expected


def test_basic_tokenizer_keeps_case_and_accents():
    assert tokenization.BasicTokenizer(do_lower_case=False).tokenize("Héllo, World!") == ["Héllo", ",", "World", "!"]


def test_wordpiece_rules(tiny_vocab_file):
    vocab = tokenization.load_vocab(tiny_vocab_file)
    wordpiece = tokenization.WordpieceTokenizer(vocab)
    assert wordpiece.tokenize("unaffable running") == ["un", "##aff", "##able", "run", "##ning"]
    assert wordpiece.tokenize("unaffablex") == ["un", "##aff", "##able", "##x"]
    assert wordpiece.tokenize("unaffableq") == ["[UNK]"]  # one unknown suffix spoils the word
    assert wordpiece.tokenize("a" * 13) == ["a" * 12, "##a"]  # longest match first
    assert wordpiece.tokenize("a" * 200) == ["a" * 12] + ["##" + "a" * 12] * 15 + ["##a"] * 8
    assert wordpiece.tokenize("a" * 201) == ["[UNK]"]


def test_front_ends_and_conversions(tiny_vocab_file):
    full = tokenization.FullTokenizer(tiny_vocab_file)
    bert = tokenization.BertTokenizer(tiny_vocab_file)
    tokens = full.tokenize("Unaffable café!")
    assert tokens == bert.tokenize("Unaffable café!") == ["un", "##aff", "##able", "cafe", "!"]
    ids = full.convert_tokens_to_ids(tokens)
    assert ids == [TINY_VOCAB.index(token) for token in tokens]
    assert full.convert_ids_to_tokens(ids) == tokens == bert.convert_ids_to_tokens(ids)
    assert full.inv_vocab[1] == bert.ids_to_tokens[1] == "[UNK]"
    assert tokenization.convert_tokens_to_ids(full.vocab, ["[CLS]"]) == [2]
    assert tokenization.convert_ids_to_tokens(full.inv_vocab, [3]) == ["[SEP]"]
    with pytest.raises(KeyError):
        full.convert_tokens_to_ids(["notinvocab"])


def test_cached_results_are_fresh_lists(tiny_vocab_file):
    full = tokenization.FullTokenizer(tiny_vocab_file)
    first = full.tokenize("the café")
    first.append("mutated")
    assert full.tokenize("the café") == ["the", "cafe"]


def test_load_vocab_line_numbers(tmp_path):
    path = tmp_path / "vocab.txt"
    path.write_text("[UNK]\n  spaced  \n\nx\nx\n", encoding="utf-8")
    assert tokenization.load_vocab(str(path)) == {"[UNK]": 0, "spaced": 1, "": 2, "x": 4}


@pytest.mark.parametrize(
    ("content", "message"),
    [(None, "cannot read"), (b"[UNK]\n\xff\xfe\n", "not UTF-8"), (b"", "empty"), (b"a\nb\n", "no [UNK]")],
)
def test_bad_vocab_files(tmp_path, content, message):
    path = tmp_path / "vocab.txt"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(tokenization.VocabError, match=re.escape(message)) as err:
        tokenization.FullTokenizer(str(path))
    assert str(path) in str(err.value) and "\n" not in str(err.value)
