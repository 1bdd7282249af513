"""Hostile files cost little: each bomb runs `run.py` in a subprocess under a memory limit
(RLIMIT_AS) and a time limit, and must end in one `error:` line, so "bounded" is proven
rather than assumed. Every bomb here cost gigabytes, minutes or a hang before the
readers refused it (issue 15); the files are small or sparse.
"""

import io
import json
import os
import pickle
import resource
import signal
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.checkpoints.meta import write_torch_zip
from tests.test_meta_reader import FakeStorage, TensorRecord, TorchLikePickler

REPO = Path(__file__).resolve().parents[1]
# Python, NumPy and the readers take ~300 MB of address space; each bomb took gigabytes.
MEMORY_LIMIT = 1 << 30
SECONDS = 30  # a run takes 1-3 s; each bomb took minutes, or forever
LONGEST_MESSAGE = 600  # characters on the error line
# A tiny model's config, for directories whose weight file is the bomb.
HF_CONFIG = json.dumps(dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                           vocab_size=64, intermediate_size=32))
META_PARAMS = json.dumps(dict(dim=16, n_layers=1, n_heads=2, vocab_size=64, multiple_of=16))


def run_bounded(*args, stdin=subprocess.DEVNULL) -> subprocess.CompletedProcess:
    """run.py ARGS with the memory and time limits; fails the test if either is hit."""
    def limit_memory():
        resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))

    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    try:
        return subprocess.run([sys.executable, "run.py", *map(str, args)], cwd=REPO, env=env,
                              stdin=stdin, capture_output=True, preexec_fn=limit_memory,
                              timeout=SECONDS)
    except subprocess.TimeoutExpired:
        pytest.fail(f"run.py {' '.join(map(str, args))} ran past {SECONDS} s")


def assert_refused(result: subprocess.CompletedProcess, message: str) -> str:
    """One short `error:` line matching `message`, exit code 1."""
    stderr = result.stderr.decode(errors="replace")
    assert result.returncode == 1, stderr[-2000:]
    assert stderr.startswith("error: ") and stderr.count("\n") == 1, stderr[-2000:]
    assert len(stderr) < LONGEST_MESSAGE, stderr[:2000]
    assert message in stderr, stderr
    return stderr


# ---- Meta .pth ----------------------------------------------------------------------------

def meta_dir(tmp_path: Path, pickle_bytes: bytes, storages: dict = None) -> Path:
    (tmp_path / "params.json").write_text(META_PARAMS)
    write_torch_zip(tmp_path / "consolidated.00.pth", pickle_bytes, storages)
    return tmp_path


def test_compressed_byteorder_is_not_decompressed(tmp_path):
    """A 5 MB .pth whose byteorder record inflates to 1 GiB (cost 4 GB and a 1 GB line)."""
    path = meta_dir(tmp_path, pickle.dumps({}, protocol=2))
    shard = path / "consolidated.00.pth"  # rewritten with a deflated byteorder record
    zeros = bytes(1 << 20)
    with zipfile.ZipFile(shard, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        archive.writestr("consolidated.00/data.pkl", pickle.dumps({}, protocol=2),
                         compress_type=zipfile.ZIP_STORED)
        with archive.open("consolidated.00/byteorder", "w", force_zip64=True) as member:
            for _ in range(1024):
                member.write(zeros)
    assert shard.stat().st_size < 5 << 20
    assert_refused(run_bounded("info", "--model", path),
                   "consolidated.00/byteorder is compressed; torch.save stores it uncompressed")


@pytest.mark.parametrize("pickle_bytes, message", [
    (b"\x80\x02" + b"\x8f" * 20_000_000 + b".",  # EMPTY_SET x 20M: cost 4.9 GB
     "data.pkl runs more than 524288 pickle opcodes"),
    (b"\x80\x02N" + b"r" + struct.pack("<I", 1 << 28) + b".",  # memo index 2^28: 4 GB
     "data.pkl stores memo entry 268435456"),
], ids=["empty-sets", "memo-index"])
def test_pickle_amplification_is_bounded(tmp_path, pickle_bytes, message):
    assert_refused(run_bounded("info", "--model", meta_dir(tmp_path, pickle_bytes)), message)


def _dump(obj) -> bytes:
    buffer = io.BytesIO()
    TorchLikePickler(buffer, protocol=2).dump(obj)
    return buffer.getvalue()


@pytest.mark.parametrize("size, offset, message", [
    ((10 ** 20000,) * 600, 0, "a tensor has an invalid layout (offset 0, size (<a 66439-bit"),
    ((1,) * 400_000, 0, "size (1, 1, 1, 1, 1, 1, 1, 1, ...)"),
    ((4,), 10 ** 4000, "offset <a 13288-bit integer>"),
], ids=["600-huge-sizes", "400k-dims", "4000-digit-offset"])
def test_pth_layouts_are_checked_before_arithmetic(tmp_path, size, offset, message):
    record = TensorRecord(FakeStorage("0", 16), offset, size, size)
    path = meta_dir(tmp_path, _dump({"x": record}), {"0": bytes(64)})
    assert_refused(run_bounded("info", "--model", path), message)


# ---- safetensors --------------------------------------------------------------------------

def hf_dir(tmp_path: Path, header: str) -> Path:
    (tmp_path / "config.json").write_text(HF_CONFIG)
    raw = header.encode()
    (tmp_path / "model.safetensors").write_bytes(struct.pack("<Q", len(raw)) + raw)
    return tmp_path


@pytest.mark.parametrize("shape, message", [
    ("[" + ", ".join(["9" * 4000] * 800) + "]", "has an invalid shape [<a 13288-bit"),
    ("[" + "1" + "0" * 2200 + ", " + "1" + "0" * 2200 + "]", "has an invalid shape [<a 7309-bit"),
], ids=["800-dims-of-4000-digits", "two-2200-digit-dims"])
def test_safetensors_shapes_are_checked_before_arithmetic(tmp_path, shape, message):
    header = '{"a": {"dtype": "F32", "shape": %s, "data_offsets": [0, 0]}}' % shape
    stderr = assert_refused(run_bounded("info", "--model", hf_dir(tmp_path, header)), message)
    assert "at most 8 dimensions, each below 2**63" in stderr


# ---- GGUF ---------------------------------------------------------------------------------

def gguf_arrays_of_arrays(path: Path, keys: int, count: int) -> Path:
    """`keys` metadata keys, each an array of `count` empty arrays: 12 zero bytes apiece,
    left sparse."""
    with open(path, "wb") as f:
        f.write(b"GGUF" + struct.pack("<IQQ", 3, 0, keys))
        for k in range(keys):
            name = f"bomb.{k}".encode()
            f.write(struct.pack("<Q", len(name)) + name + struct.pack("<IIQ", 9, 9, count))
            f.seek(12 * count, os.SEEK_CUR)
        f.truncate()
    return path


@pytest.mark.parametrize("keys, count", [(3, 1 << 24), (3, 1 << 20)],
                         ids=["3-keys-of-2^24", "3-keys-of-2^20"])
def test_gguf_metadata_is_bounded(tmp_path, keys, count):
    path = gguf_arrays_of_arrays(tmp_path / "bomb.gguf", keys, count)
    assert_refused(run_bounded("info", "--model", path),
                   "is corrupt: the metadata up to metadata 'bomb.")


def gguf_string(text: bytes) -> bytes:
    return struct.pack("<Q", len(text)) + text


@pytest.mark.parametrize("body, counts, message", [
    ((gguf_string(b"k" * 1_000_000) + struct.pack("<IB", 0, 1)) * 2, (0, 2),
     "metadata key 'kkkkk"),
    (gguf_string(b"t" * 1_000_000) + struct.pack("<IQIQ", 1, 4, 0, 0), (1, 0),
     "is 1000000 characters long; ggml allows 63"),
], ids=["1MB-key-twice", "1MB-tensor-name"])
def test_gguf_messages_quote_names_short(tmp_path, body, counts, message):
    path = tmp_path / "long.gguf"
    path.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, *counts) + body)
    assert_refused(run_bounded("info", "--model", path), message)


# ---- configs ------------------------------------------------------------------------------

@pytest.mark.parametrize("field, value, message", [
    ("num_hidden_layers", "1000000", "n_layers 1000000 is beyond any real model (at most 1024)"),
    ("max_position_embeddings", "1" + "0" * 400,
     "max_seq_len <a 1329-bit integer> is beyond any real model (at most 16777216)"),
    ("rope_scaling", '{"rope_type": "llama3", "factor": 8, "original_max_position_embeddings": 1'
     + "0" * 400 + "}", "rope scaling original_context <a 1329-bit integer> is beyond"),
], ids=["10^6-layers", "10^400-context", "10^400-original-context"])
def test_config_values_beyond_any_model_are_refused(tmp_path, field, value, message):
    config = dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32,
                  vocab_size=128256, intermediate_size=14336)
    text = json.dumps(config)[:-1] + f', "{field}": {value}}}'
    (tmp_path / "config.json").write_text(text)
    assert_refused(run_bounded("info", "--config", tmp_path / "config.json"), message)


# ---- paths that are not regular files -----------------------------------------------------

@pytest.mark.parametrize("fifo, rest", [
    ("model.safetensors", {"config.json": HF_CONFIG}),
    ("model.safetensors.index.json", {"config.json": HF_CONFIG}),
    ("config.json", {"model.safetensors": ""}),
    ("generation_config.json", {"config.json": HF_CONFIG}),
    ("params.json", {}),
    ("consolidated.00.pth", {"params.json": META_PARAMS}),
])
def test_named_pipes_are_refused_not_waited_on(tmp_path, fifo, rest):
    for name, text in rest.items():
        (tmp_path / name).write_text(text)
    os.mkfifo(tmp_path / fifo)
    assert_refused(run_bounded("info", "--model", tmp_path), "is a named pipe, not a regular file")


def test_ppl_refuses_a_pipe_and_a_device(tmp_path):
    os.mkfifo(tmp_path / "text.txt")
    assert_refused(run_bounded("ppl", tmp_path / "text.txt"), "is a named pipe")
    assert_refused(run_bounded("ppl", "/dev/zero"), "/dev/zero is a character device")


def test_ppl_reads_standard_input_with_a_cap():
    with open("/dev/zero", "rb") as zeros:
        assert_refused(run_bounded("ppl", "-", stdin=zeros),
                       "standard input is larger than 67,108,864 bytes")


# ---- a weight file truncated under a running model ------------------------------------------

TRUNCATE_AFTER_LOAD = """
import os, runpy, sys
import llama3_np
path, load = sys.argv[1], llama3_np.load
def load_then_truncate(*args, **kwargs):
    model = load(*args, **kwargs)
    os.truncate(path, 4096)  # the float32 weights stay memory-mapped: their pages go
    return model
llama3_np.load = load_then_truncate
sys.argv = ["run.py", "--model", path, "--max-tokens", "2", "hi"]
runpy.run_path("run.py", run_name="__main__")
"""


def test_weights_truncated_while_mapped_end_with_a_message(tmp_path):
    """SIGBUS cannot be survived (the faulting read repeats), so run.py cannot print one
    error line; it used to die silently, and now says "Bus error" with the stack."""
    from tests.checkpoints.gguf import (byte_level_model_config, byte_level_tokenizer_metadata,
                                        write_llama_gguf)
    from tests.tiny import random_weights

    config = byte_level_model_config(max_seq_len=16)
    path = write_llama_gguf(tmp_path / "tiny.gguf", config, random_weights(config, seed=1),
                            metadata=byte_level_tokenizer_metadata())
    result = subprocess.run([sys.executable, "-c", TRUNCATE_AFTER_LOAD, str(path)], cwd=REPO,
                            capture_output=True, timeout=SECONDS)
    stderr = result.stderr.decode()
    assert result.returncode == -signal.SIGBUS, stderr
    assert stderr.startswith("Fatal Python error: Bus error"), stderr


def test_tokenizer_pipe_is_refused(tmp_path):
    os.mkfifo(tmp_path / "tokenizer.model")
    assert_refused(run_bounded("info", "--tokenizer", tmp_path / "tokenizer.model"),
                   "tokenizer.model is a named pipe, not a regular file")
