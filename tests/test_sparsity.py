"""2:4 sparsity: detection, magnitude pruning, the checkpoint pruning CLI, and -sp builds."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

import builder_varseqlen
import checkpoints
from helpers import sparsity
from helpers.runner import EngineRunner


# ---------------------------------------------------------------------------------------------
# is_2to4 / prune_2to4 against hand-computed values


def test_is_2to4_hand_examples():
    assert sparsity.is_2to4(np.array([[1.0, 0.0, 0.0, 2.0, 0.0, 0.0, 3.0, 0.0]]))
    assert sparsity.is_2to4(np.zeros((3, 8), np.float32))
    assert not sparsity.is_2to4(np.array([[1.0, 1.0, 0.0, 2.0]]))  # one zero only
    assert not sparsity.is_2to4(np.array([[0.0, 0.0, 0.0, 0.0, 1.0, 2.0, 3.0, 0.0]]))  # second group fails
    assert not sparsity.is_2to4(np.zeros((2, 6), np.float32))  # input dim not a multiple of 4
    # Groups run along the input (last) axis: zeros down a column do not count.
    column_zeros = np.array([[0.0, 1.0, 2.0, 3.0], [0.0, 1.0, 2.0, 3.0]]).T.copy()
    assert not sparsity.is_2to4(column_zeros)
    assert sparsity.is_2to4(torch.tensor([[0.0, 5.0, 0.0, -1.0]], dtype=torch.float16))


def test_prune_2to4_keeps_two_largest_magnitudes():
    weight = np.array([[1.0, -3.0, 2.0, 0.5, 0.1, 0.2, -0.3, 0.4]], np.float32)
    expected = np.array([[0.0, -3.0, 2.0, 0.0, 0.0, 0.0, -0.3, 0.4]], np.float32)
    np.testing.assert_array_equal(sparsity.prune_2to4(weight), expected)
    # Ties keep the earlier positions.
    np.testing.assert_array_equal(sparsity.prune_2to4(np.ones((1, 4), np.float32)), [[1.0, 1.0, 0.0, 0.0]])


def test_prune_2to4_keeps_type_dtype_and_shape():
    tensor = torch.randn(6, 16, dtype=torch.float16)
    pruned = sparsity.prune_2to4(tensor)
    assert isinstance(pruned, torch.Tensor) and pruned.dtype == torch.float16 and pruned.shape == tensor.shape
    assert sparsity.is_2to4(pruned)
    kept = pruned != 0
    assert int(kept.sum()) == tensor.numel() // 2
    np.testing.assert_array_equal(pruned[kept].numpy(), tensor[kept].numpy())  # kept values are untouched
    array = np.random.default_rng(0).standard_normal((5, 12)).astype(np.float64)
    assert sparsity.prune_2to4(array).dtype == np.float64
    with pytest.raises(sparsity.SparsityError, match="multiple of 4"):
        sparsity.prune_2to4(np.ones((2, 6)))


def test_to_semi_structured_is_none_where_it_cannot_run():
    pruned = sparsity.prune_2to4(torch.randn(64, 64, dtype=torch.float16))
    assert sparsity.to_semi_structured(pruned) is None  # CPU tensors never use the sparse kernels
    if torch.cuda.is_available():
        assert sparsity.to_semi_structured(torch.randn(64, 64, device="cuda", dtype=torch.float16)) is None


@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability() < (8, 0), reason="needs a CUDA GPU of SM 8.0+")
def test_semi_structured_linear_matches_dense_on_cuda():
    weight = sparsity.prune_2to4(torch.randn(128, 256, device="cuda", dtype=torch.float16))
    sparse = sparsity.to_semi_structured(weight)
    assert sparse is not None
    x = torch.randn(77, 256, device="cuda", dtype=torch.float16)
    bias = torch.randn(128, device="cuda", dtype=torch.float16)
    torch.testing.assert_close(torch.nn.functional.linear(x, sparse, bias), torch.nn.functional.linear(x, weight, bias), atol=2e-2, rtol=2e-2)


# ---------------------------------------------------------------------------------------------
# Checkpoint pruning CLI


def _hf_state(folder):
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


def test_cli_prunes_a_hf_folder(tiny_model, tmp_path, capsys):
    source = checkpoints.write_hf_folder(tiny_model, tmp_path / "dense")
    before = _hf_state(source)
    assert sparsity.main([str(source), str(tmp_path / "sparse")]) == 0
    after = _hf_state(tmp_path / "sparse")
    assert (tmp_path / "sparse" / "config.json").read_bytes() == (source / "config.json").read_bytes()
    assert set(after) == set(before)
    pruned = [name for name in after if not torch.equal(after[name], before[name])]
    layers = tiny_model.config.num_hidden_layers
    # Q, K, V, attention output and intermediate per layer; the output dense reads the intermediate
    # size 37, not a multiple of 4, and stays dense.
    assert len(pruned) == 5 * layers
    for name in pruned:
        assert name.endswith(".weight") and ".encoder." in name and sparsity.is_2to4(after[name])
        assert torch.equal(after[name], sparsity.prune_2to4(before[name]))
    assert torch.equal(_hf_state(source)["bert.encoder.layer.0.attention.self.query.weight"],
                       before["bert.encoder.layer.0.attention.self.query.weight"])  # source untouched
    out, err = capsys.readouterr()
    assert f"Pruned {5 * layers} weights" in out
    assert "left 2 weights dense" in err and "bert.encoder.layer.1.output.dense.weight" in err


def test_cli_prunes_a_pytorch_checkpoint_and_a_pickle(tiny_model, tmp_path):
    torch_path = checkpoints.write_pytorch_checkpoint(tiny_model, tmp_path / "model.pt")
    assert sparsity.main([str(torch_path), str(tmp_path / "sparse.pt")]) == 0
    checkpoint = torch.load(tmp_path / "sparse.pt", weights_only=True)
    assert checkpoint["epoch"] == 2
    state = checkpoint["model"]
    assert sparsity.is_2to4(state["bert.encoder.layer.1.intermediate.dense.weight"])
    assert torch.equal(state["qa_outputs.weight"], tiny_model.state_dict()["qa_outputs.weight"])

    tensors = {
        "bert.encoder.layers.0.attention.query_key_value.weight": np.arange(1, 49, dtype=np.float32).reshape(6, 8),
        "bert.embedding.word_embeddings.weight": np.ones((5, 8), np.float32),
    }
    (tmp_path / "megatron.pkl").write_bytes(pickle.dumps(tensors))
    assert sparsity.main([str(tmp_path / "megatron.pkl"), str(tmp_path / "sparse.pkl")]) == 0
    pruned = pickle.loads((tmp_path / "sparse.pkl").read_bytes())
    # Largest two of each ascending group of four are the last two.
    expected = np.arange(1, 49, dtype=np.float32).reshape(6, 2, 4) * np.array([0, 0, 1, 1], np.float32)
    np.testing.assert_array_equal(pruned["bert.encoder.layers.0.attention.query_key_value.weight"], expected.reshape(6, 8))
    np.testing.assert_array_equal(pruned["bert.embedding.word_embeddings.weight"], np.ones((5, 8)))


def test_cli_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys):
    (tmp_path / "garbage.pkl").write_bytes(b"\x80\x04 not a pickle")
    (tmp_path / "exists.pkl").write_bytes(b"keep")
    cases = [
        ([str(tmp_path / "missing.pkl"), str(tmp_path / "a.pkl")], "checkpoint not found"),
        ([str(tmp_path / "garbage.pkl"), str(tmp_path / "b.pkl")], "cannot prune"),
        ([str(tmp_path / "garbage.pkl"), str(tmp_path / "exists.pkl")], "output already exists"),
        ([str(tmp_path / "garbage.pkl"), str(tmp_path / "no_dir" / "c.pkl")], "output folder does not exist"),
    ]
    for argv, message in cases:
        assert sparsity.main(argv) == 1
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exists.pkl", "garbage.pkl"]
    assert (tmp_path / "exists.pkl").read_bytes() == b"keep"


# ---------------------------------------------------------------------------------------------
# -sp builds


@pytest.fixture(scope="module")
def pruned_model_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sparse")
    # Intermediate size 64, so every encoder dense kernel can be pruned.
    dense = checkpoints.write_hf_folder(checkpoints.tiny_qa_model(intermediate=64, max_positions=128), folder / "dense")
    assert sparsity.main([str(dense), str(folder / "pruned")]) == 0
    return folder / "pruned"


def _packed_logits(engine, device: str) -> np.ndarray:
    lengths = [1, 33, 128, 70]
    rng = np.random.default_rng(3)
    batch = {
        "input_ids": rng.integers(0, 101, size=sum(lengths), dtype=np.int32),
        "segment_ids": np.concatenate([(np.arange(n) >= n // 2).astype(np.int32) for n in lengths]),
        "cu_seqlens": np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32),
    }
    runner = EngineRunner(engine, device=device)
    runner.activate(len(lengths), 128, total_tokens=sum(lengths))
    return runner.infer(batch)


@pytest.mark.parametrize(
    "device",
    ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="FP16 sparse GEMMs need CUDA"))],
)
def test_pruned_model_gives_the_same_logits_with_and_without_sp(pruned_model_folder, tmp_path, capfd, device):
    precision = ["--fp16"] if device == "cuda" else []
    logits = {}
    for flag in ([], ["-sp"]):
        engine = tmp_path / f"engine{len(flag)}"
        argv = ["--hf", str(pruned_model_folder), "-o", str(engine), "-b", "4", "-s", "128", "--backend", "portable",
                "--device", device, *precision, *flag]
        assert builder_varseqlen.main(argv) == 0
        log = capfd.readouterr().err
        if flag:
            assert "Setting sparsity flag on builder_config." in log
            # Q/K/V, attention output, intermediate and output per layer; the SQuAD head stays dense.
            assert "Sparse (2:4) weights in 8 of 9 dense layers: l0_attention_qkv, l0_attention_output_dense," in log
            assert "Dense weights (not 2:4), kept dense: cls_squad_output" in log
        else:
            assert "Sparse (2:4)" not in log
        logits[bool(flag)] = _packed_logits(engine, device)
    tolerance = 2e-2 if device == "cuda" else 1e-6
    np.testing.assert_allclose(logits[True], logits[False], atol=tolerance, rtol=tolerance)
