"""The Meta checkpoint reader against checkpoints written by torch.save itself.

Every weight comparison is bit-exact: the reader only reinterprets stored bits, so the
reference is torch's own rounding of the same float32 values to the stored dtype.
"""

import io
import mmap
import os
import pickle
import re
import shutil
import subprocess
import zipfile
from collections import OrderedDict

import numpy as np
import pytest
import torch

from llama3_np.checkpoint.meta import read_meta, read_pth
from llama3_np.config import from_meta_params
from llama3_np.errors import CheckpointError
from llama3_np.formats import as_float32
from llama3_np.formats.bf16 import BF16
from llama3_np.schema import canonical_names
from tests.checkpoints.meta import TORCH_DTYPES, write_meta_checkpoint, write_torch_zip
from tests.tiny import random_weights

# The tiny Llama 3 shapes (dim 64, GQA 4/2, ffn 160, full vocabulary) as Meta writes them:
# multiple_of 32 and multiplier 0.9 turn Meta's rule's 170 into 153, rounded up to 160.
PARAMS = dict(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=128256, multiple_of=32,
              ffn_dim_multiplier=0.9, norm_eps=1e-5, rope_theta=500000.0, use_scaled_rope=True)


@pytest.fixture(scope="module")
def weights():
    return random_weights(from_meta_params(PARAMS))


def untied(weights):
    return {name: w for name, w in weights.items() if name != "output.weight"}


def stored_by_torch(w: np.ndarray, dtype: str) -> np.ndarray:
    return torch.tensor(w).to(TORCH_DTYPES[dtype]).float().numpy()


def assert_loads_exactly(checkpoint, weights, dtype):
    assert set(checkpoint.tensors) == set(canonical_names(2)) | {"output.weight"}
    for name, w in weights.items():
        tensor = checkpoint.tensors[name]
        assert isinstance(tensor, BF16) if dtype == "bfloat16" else tensor.dtype == np.float32
        np.testing.assert_array_equal(as_float32(tensor), stored_by_torch(w, dtype), err_msg=name)


def is_memory_mapped(array: np.ndarray) -> bool:
    base = array
    while base is not None:
        if isinstance(base, (np.memmap, mmap.mmap)):
            return True
        base = getattr(base, "base", None)
    return False


def test_params_give_the_tiny_shapes():
    config = from_meta_params(PARAMS)
    assert (config.dim, config.ffn_dim, config.n_heads, config.n_kv_heads) == (64, 160, 4, 2)


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
@pytest.mark.parametrize("n_shards", [1, 2])
def test_loads_canonical_weights_bit_exact(tmp_path, weights, n_shards, dtype):
    write_meta_checkpoint(tmp_path, weights, PARAMS, n_shards=n_shards, dtype=dtype)
    checkpoint = read_meta(tmp_path)
    assert checkpoint.format == "meta" and checkpoint.path == tmp_path
    assert checkpoint.config == from_meta_params(PARAMS)
    assert checkpoint.tokenizer_file is None
    assert_loads_exactly(checkpoint, weights, dtype)


def test_llama2_embedding_split_along_dim_is_joined(tmp_path, weights):
    # Llama 2's ParallelEmbedding sharded the embedding dim rather than the vocabulary.
    write_meta_checkpoint(tmp_path, weights, PARAMS, n_shards=2, embedding_axis=1)
    assert_loads_exactly(read_meta(tmp_path), weights, "bfloat16")


@pytest.mark.parametrize("n_shards", [1, 2])
def test_no_output_weight_means_tied_embeddings(tmp_path, weights, n_shards):
    write_meta_checkpoint(tmp_path, untied(weights), PARAMS, n_shards=n_shards)
    checkpoint = read_meta(tmp_path)
    assert checkpoint.config.tie_embeddings
    assert checkpoint.tensors["output.weight"] is checkpoint.tensors["tok_embeddings.weight"]
    np.testing.assert_array_equal(
        as_float32(checkpoint.tensors["output.weight"]),
        stored_by_torch(weights["tok_embeddings.weight"], "bfloat16"))


def test_extra_tensors_are_ignored_and_tokenizer_is_found(tmp_path, weights):
    rope_freqs = np.linspace(0, 1, 8, dtype=np.float32)  # what Llama 2 era files carry
    write_meta_checkpoint(tmp_path, {**weights, "rope.freqs": rope_freqs}, PARAMS, n_shards=2)
    (tmp_path / "tokenizer.model").write_bytes(b"")
    checkpoint = read_meta(tmp_path)
    assert "rope.freqs" not in checkpoint.tensors
    assert checkpoint.tokenizer_file == tmp_path / "tokenizer.model"


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_single_shard_weights_stay_memory_mapped(tmp_path, weights, dtype):
    write_meta_checkpoint(tmp_path, weights, PARAMS, dtype=dtype)
    for name, tensor in read_meta(tmp_path).tensors.items():
        array = tensor.bits if isinstance(tensor, BF16) else tensor
        assert not array.flags.owndata and not array.flags.writeable, name
        assert is_memory_mapped(array), name


def test_views_offsets_and_shared_storages(tmp_path):
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    saved = {"transposed": base.t(), "rows": base[1:3], "column": base[:, 2],
             "half": base.half()[2:], "bf16_strided": base.bfloat16()[:, ::2]}
    torch.save(saved, tmp_path / "views.pth")
    loaded = read_pth(tmp_path / "views.pth")
    for name, tensor in saved.items():
        np.testing.assert_array_equal(as_float32(loaded[name]), tensor.float().numpy(),
                                      err_msg=name)


# ---- hostile and broken input ----

def _system(marker):
    return os.system, (f"touch {marker}",)


def _eval(marker):
    return eval, (f"open({str(marker)!r}, 'w').close()",)


def _exec(marker):
    return exec, (f"open({str(marker)!r}, 'w').close()",)


def _popen(marker):
    return subprocess.Popen, (["touch", str(marker)],)


class Payload:
    """Pickles as a call to an arbitrary global, as a malicious checkpoint would."""

    def __init__(self, reduce):
        self.reduce = reduce

    def __reduce__(self):
        return self.reduce


@pytest.mark.parametrize("payload", [_system, _eval, _exec, _popen],
                         ids=["system", "eval", "exec", "Popen"])
def test_malicious_pickle_is_refused_before_it_runs(tmp_path, weights, payload):
    # Control: plain pickle really runs the payload, so the marker check below means something.
    control = tmp_path / "control"
    result = pickle.loads(pickle.dumps(Payload(payload(control)), protocol=2))
    if isinstance(result, subprocess.Popen):
        result.wait()
    assert control.exists()

    marker = tmp_path / "marker"
    write_meta_checkpoint(tmp_path, weights, PARAMS)
    data = pickle.dumps({"tok_embeddings.weight": Payload(payload(marker))}, protocol=2)
    write_torch_zip(tmp_path / "consolidated.00.pth", data)
    with pytest.raises(CheckpointError, match="consolidated.00.pth refuses to load global"):
        read_meta(tmp_path)
    assert not marker.exists()


def _global_call(module: str, name: str, command: str) -> bytes:
    """A protocol-0 pickle written by hand: GLOBAL module.name, called on one string."""
    return f"c{module}\n{name}\n(V{command}\ntR.".encode()


def _getattr_chain(command: str) -> bytes:
    """getattr(__import__("os"), "system")(command): only builtins that look harmless."""
    return (b"cbuiltins\ngetattr\n(cbuiltins\n__import__\n(Vos\ntRVsystem\ntR(V"
            + command.encode() + b"\ntR.")


@pytest.mark.parametrize("make, refused", [
    (lambda cmd: _global_call("os", "system", cmd), "os.system"),
    (lambda cmd: _global_call("posix", "system", cmd), "posix.system"),
    (lambda cmd: _global_call("subprocess", "getoutput", cmd), "subprocess.getoutput"),
    (_getattr_chain, "builtins.getattr"),
], ids=["os.system", "posix.system", "subprocess.getoutput", "getattr"])
def test_hand_written_global_opcodes_are_refused(tmp_path, weights, make, refused):
    pickle.loads(make(f"touch {tmp_path / 'control'}"))  # plain pickle runs it
    assert (tmp_path / "control").exists()

    marker = tmp_path / "marker"
    write_meta_checkpoint(tmp_path, weights, PARAMS)
    write_torch_zip(tmp_path / "consolidated.00.pth", make(f"touch {marker}"))
    with pytest.raises(CheckpointError, match=f"refuses to load global {re.escape(refused)}"):
        read_meta(tmp_path)
    assert not marker.exists()


class FakeStorage:
    def __init__(self, key, numel, kind=torch.FloatStorage):
        self.key, self.numel, self.kind = key, numel, kind


class TensorRecord:
    """Pickles exactly as torch.save pickles a tensor, with any layout we like."""

    def __init__(self, storage, offset, size, stride):
        self.args = (storage, offset, size, stride, False, OrderedDict())

    def __reduce__(self):
        return torch._utils._rebuild_tensor_v2, self.args


class TorchLikePickler(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, FakeStorage):
            return ("storage", obj.kind, obj.key, "cpu", obj.numel)
        return None


def crafted_pth(path, record, numel):
    buffer = io.BytesIO()
    TorchLikePickler(buffer, protocol=2).dump({"x": record})
    storage_bytes = np.arange(numel, dtype=np.float32).tobytes()
    return write_torch_zip(path, buffer.getvalue(), {"0": storage_bytes})


def test_crafted_record_reads_like_torch(tmp_path):
    # The hand-made format is right: a valid record loads (so the next test is meaningful).
    record = TensorRecord(FakeStorage("0", 16), 4, (3, 4), (4, 1))
    loaded = read_pth(crafted_pth(tmp_path / "ok.pth", record, 16))
    np.testing.assert_array_equal(loaded["x"], np.arange(4, 16, dtype=np.float32).reshape(3, 4))


class Call:
    """Pickles as fn(*args), then BUILD with `state` if given (a pickle may do both)."""

    def __init__(self, fn, args, state=None):
        self.reduce = (fn, args) if state is None else (fn, args, state)

    def __reduce__(self):
        return self.reduce


@pytest.mark.parametrize("record, message", [
    (Call(OrderedDict, (5,)), r"data\.pkl is corrupt \(TypeError"),
    (Call(torch._utils._rebuild_tensor_v2, ("no storage", 0, (4,), (1,))),
     "builds a tensor without a storage"),
    (Call(torch._utils._rebuild_tensor_v2, (FakeStorage("0", 16), 0, "4", (1,))),
     "invalid layout"),
    (Call(torch._utils._rebuild_tensor_v2, (FakeStorage("0", 16), 0, (4,), (1,), False,
                                            OrderedDict()), {"shape": (2, 2)}),
     r"data\.pkl sets the state of a Tensor \(\{'shape': \(2, 2\)\}\), which torch\.save "
     "never writes"),
    (Call(torch._utils._rebuild_tensor_v2, (FakeStorage("0", 32, torch.BFloat16Storage), 0,
                                            (4,), (1,), False, OrderedDict()),
          {"bits": "not an array"}),
     r"sets the state of a Tensor \(\{'bits': 'not an array'\}\)"),
    (Call(torch._utils._rebuild_tensor_v2, (FakeStorage("0", 32, torch.BFloat16Storage), 0,
                                            (4,), (1,), False, OrderedDict()),
          (None, {"to_float32": "not a method"})),
     r"sets the state of a Tensor \(\(None, \{'to_float32': 'not a method'\}\)\)"),
], ids=["OrderedDict(5)", "no-storage", "size-not-tuple", "BUILD-on-array", "BUILD-on-bf16",
                                                   "BUILD-slots-on-bf16"])
def test_allowed_globals_with_bogus_arguments_are_refused(tmp_path, record, message):
    """REDUCE / BUILD on allow-listed callables with arguments no torch.save writes."""
    buffer = io.BytesIO()
    TorchLikePickler(buffer, protocol=2).dump({"x": record})
    path = write_torch_zip(tmp_path / "bogus.pth", buffer.getvalue(), {"0": bytes(64)})
    with pytest.raises(CheckpointError, match=message):
        read_pth(path)


def save_compressed(path, state: dict, compress_pickle: bool = True) -> None:
    """torch.save, then the same members re-zipped with deflate (torch never compresses)."""
    torch.save(state, path)
    with zipfile.ZipFile(path) as archive:
        members = {name.split("/", 1)[1]: archive.read(name) for name in archive.namelist()}
    storages = {name.removeprefix("data/"): blob for name, blob in members.items()
                if name.startswith("data/")}
    write_torch_zip(path, members["data.pkl"], storages, compression=zipfile.ZIP_DEFLATED,
                    compress_pickle=compress_pickle)


def test_compressed_pickle_is_refused(tmp_path):
    path = tmp_path / "zipped.pth"
    save_compressed(path, {"x": torch.ones(4)})
    with pytest.raises(CheckpointError, match="data.pkl is compressed"):
        read_pth(path)


def test_tensor_reaching_past_its_storage_is_refused(tmp_path):
    storage = FakeStorage("0", 16)
    path = crafted_pth(tmp_path / "bad.pth", TensorRecord(storage, 8, (3, 4), (4, 1)), 16)
    with pytest.raises(CheckpointError, match="reaches past its storage of 16 elements"):
        read_pth(path)


def test_missing_params_json(tmp_path, weights):
    write_meta_checkpoint(tmp_path, weights, PARAMS)
    (tmp_path / "params.json").unlink()
    with pytest.raises(CheckpointError, match="has no params.json"):
        read_meta(tmp_path)


def test_no_shard_files(tmp_path):
    (tmp_path / "params.json").write_text("{}")
    with pytest.raises(CheckpointError, match=r"has no consolidated\.NN\.pth"):
        read_meta(tmp_path)


def test_gap_in_shard_numbers(tmp_path, weights):
    write_meta_checkpoint(tmp_path, weights, PARAMS, n_shards=2)
    shutil.copy(tmp_path / "consolidated.01.pth", tmp_path / "consolidated.03.pth")
    with pytest.raises(CheckpointError, match=r"consolidated\.02\.pth is missing"):
        read_meta(tmp_path)


def test_truncated_shard(tmp_path, weights):
    write_meta_checkpoint(tmp_path, weights, PARAMS)
    shard = tmp_path / "consolidated.00.pth"
    os.truncate(shard, shard.stat().st_size // 2)
    with pytest.raises(CheckpointError, match=r"consolidated\.00\.pth is not a complete zip"):
        read_meta(tmp_path)


def test_compressed_storage_is_refused(tmp_path):
    shard = tmp_path / "consolidated.00.pth"
    save_compressed(shard, {"x": torch.ones(64)}, compress_pickle=False)
    with pytest.raises(CheckpointError, match=r"data/0 is compressed"):
        read_pth(shard)


def test_missing_tensor_is_named(tmp_path, weights):
    incomplete = {k: w for k, w in weights.items() if k != "layers.1.ffn_norm.weight"}
    write_meta_checkpoint(tmp_path, incomplete, PARAMS)
    with pytest.raises(CheckpointError, match="has no tensor 'layers.1.ffn_norm.weight'"):
        read_meta(tmp_path)


def test_shapes_that_contradict_params_are_refused(tmp_path, weights):
    write_meta_checkpoint(tmp_path, weights, {**PARAMS, "n_kv_heads": 4}, n_shards=2)
    with pytest.raises(CheckpointError, match=r"'layers\.0\.attention\.wk\.weight' has shape "
                                              r"\(32, 64\), but params.json implies \(64, 64\)"):
        read_meta(tmp_path)
