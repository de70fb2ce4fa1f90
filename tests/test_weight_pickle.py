"""Weight pickles (Megatron --pickle, helpers.sparsity) load through a restricted unpickler: plain
data, numpy arrays and torch tensors come back equal; a pickle that would run code is refused
with one line naming the global, and the code never runs."""

from __future__ import annotations

import builtins
import collections
import io
import pickle

import numpy as np
import pytest
import torch

import builder_varseqlen
from engines import run_main
from helpers import sparsity
from helpers.weight_pickle import WeightPickleError, load_weight_pickle


class _RunsCode:
    """Unpickling this calls ``exec``, which creates the marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return builtins.exec, (f"open({self.marker!r}, 'w').close()",)


def hostile_pickle(marker, protocol: int = pickle.HIGHEST_PROTOCOL) -> bytes:
    """A plausible weight dictionary with the code-running object nested inside."""
    return pickle.dumps({"bert.embedding.word_embeddings.weight": np.ones((4, 2), np.float32),
                         "extra": [1, {"deep": _RunsCode(marker)}]}, protocol=protocol)


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_weights_of_every_kind_round_trip(protocol):
    weights = collections.OrderedDict(
        numpy=np.arange(12, dtype=np.float16).reshape(3, 4)[:, ::2],
        scalar=np.float32(2.5),
        tensor=torch.arange(6, dtype=torch.float32).reshape(2, 3)[1:],
        parameter=torch.nn.Parameter(torch.ones(2, dtype=torch.bfloat16)),
        plain={"int": 3, "float": 0.5, "text": "x", "bytes": b"\x00\xff", "none": None, "flag": True,
               "list": [1, 2], "tuple": (1,), "set": {1, 2}, "complex": 1j},
    )
    loaded = load_weight_pickle(io.BytesIO(pickle.dumps(weights, protocol=protocol)))
    assert type(loaded) is collections.OrderedDict and list(loaded) == list(weights)
    assert loaded["numpy"].dtype == np.float16 and np.array_equal(loaded["numpy"], weights["numpy"])
    assert loaded["scalar"] == np.float32(2.5) and loaded["scalar"].dtype == np.float32
    assert torch.equal(loaded["tensor"], weights["tensor"])
    assert type(loaded["parameter"]) is torch.nn.Parameter and torch.equal(loaded["parameter"], weights["parameter"])
    assert loaded["plain"] == weights["plain"]


@pytest.mark.parametrize("protocol", [0, 2, 5])
def test_a_pickle_that_runs_code_is_refused_before_running_it(tmp_path, protocol):
    marker = tmp_path / "ran"
    data = hostile_pickle(marker, protocol)
    with pytest.raises(WeightPickleError) as err:
        load_weight_pickle(io.BytesIO(data))
    assert str(err.value).startswith("refusing global builtins.exec:") and "\n" not in str(err.value)
    assert not marker.exists()
    pickle.loads(data)  # the test pickle is real: a plain load runs its code
    assert marker.exists()


@pytest.mark.parametrize(
    "module, name",
    [("os", "system"), ("subprocess", "Popen"), ("numpy", "load"), ("torch", "load"), ("torch.serialization", "load"),
     ("builtins", "getattr"), ("collections", "namedtuple"), ("numpy.testing", "assert_equal")],
)
def test_only_the_globals_of_weight_pickles_are_admitted(module, name):
    data = b"c" + f"{module}\n{name}\n".encode() + b")R."  # GLOBAL, empty tuple, REDUCE, STOP
    with pytest.raises(WeightPickleError, match=f"^refusing global {module}.{name}: "):
        load_weight_pickle(io.BytesIO(data))


def test_bytes_only_through_latin1_and_malformed_pickles_are_one_line():
    rot13 = b"c_codecs\nencode\n(Vabc\nVrot13\ntR."  # _codecs.encode("abc", "rot13")
    with pytest.raises(WeightPickleError, match="codec 'rot13'"):
        load_weight_pickle(io.BytesIO(rot13))
    for broken in (b"", pickle.dumps({"a": [1, 2, 3]})[:-3], b"not a pickle"):
        with pytest.raises(WeightPickleError, match="^not a readable weight pickle") as err:
            load_weight_pickle(io.BytesIO(broken))
        assert "\n" not in str(err.value)


def test_megatron_builder_refuses_a_code_running_pickle(tmp_path, tiny_files, capsys):
    marker = tmp_path / "ran"
    hostile = tmp_path / "megatron.pkl"
    hostile.write_bytes(hostile_pickle(marker))
    engine = tmp_path / "x.engine"
    argv = ["--pickle", str(hostile), "-c", str(tiny_files["config_dir"]), "-o", str(engine), "--megatron",
            "--backend", "portable", "--device", "cpu"]
    status, _, err = run_main(builder_varseqlen.main, argv, capsys)
    assert status == 1 and err.splitlines()[-1] == (
        f"error: cannot read Megatron pickle {hostile}: refusing global builtins.exec: a weight pickle holds only "
        "dicts, lists, strings, numbers, numpy arrays and torch tensors (loading it could run code)"
    )
    assert not marker.exists() and not engine.exists()


def test_sparsity_refuses_a_code_running_pickle(tmp_path, capsys):
    marker = tmp_path / "ran"
    hostile = tmp_path / "megatron.pkl"
    hostile.write_bytes(hostile_pickle(marker))
    status, out, err = run_main(sparsity.main, [str(hostile), str(tmp_path / "sparse.pkl")], capsys)
    assert status == 1 and out == ""
    assert err == f"sparsity: error: cannot prune {hostile}: refusing global builtins.exec: a weight pickle holds only " \
        "dicts, lists, strings, numbers, numpy arrays and torch tensors (loading it could run code)\n"
    assert not marker.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["megatron.pkl"]
