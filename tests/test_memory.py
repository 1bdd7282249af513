"""load() refuses weights that would not fit in memory, before converting any of them,
with the numbers and the --dtype that would fit (instead of being killed half-way)."""

import os

import numpy as np
import pytest

import llama3_np
from llama3_np import cli, memory
from llama3_np.checkpoint.detect import read_checkpoint
from llama3_np.errors import InputError
from llama3_np.formats import convert, distinct
from llama3_np.formats.q8 import Q8
from llama3_np.memory import human_size, meminfo_bytes
from tests.checkpoints.gguf import (byte_level_model_config, byte_level_tokenizer_metadata,
                                    write_llama_gguf)
from tests.tiny import random_weights

CONFIG = byte_level_model_config()


def gguf(path, type_name):
    return write_llama_gguf(path, CONFIG, random_weights(CONFIG, seed=2), type_name,
                            metadata=byte_level_tokenizer_metadata())


@pytest.fixture(scope="module")
def f16_model(tmp_path_factory):
    """Matrices stored as float16, norms as float32 (as llama.cpp writes them)."""
    return gguf(tmp_path_factory.mktemp("f16") / "model.gguf", "F16")


def matrix_weights(path) -> int:
    tensors = distinct(read_checkpoint(path).tensors.values())
    return sum(int(np.prod(t.shape)) for t in tensors if len(t.shape) == 2)


def available(monkeypatch, n_bytes):
    """Pretend the process has n_bytes available (None: it cannot tell)."""
    monkeypatch.setattr(memory, "available_bytes", lambda: n_bytes)


def test_weights_that_do_not_fit_are_refused_before_any_conversion(f16_model, monkeypatch):
    n = matrix_weights(f16_model)  # float16 matrices: f32 makes 4 bytes each, q8 1.125
    available(monkeypatch, int(1.5 * n))

    def no_conversion(*args, **kwargs):
        raise AssertionError("converted weights before checking the memory")
    monkeypatch.setattr(convert, "to_dtype", no_conversion)
    with pytest.raises(InputError) as refused:
        llama3_np.load(f16_model, dtype="f32")
    assert str(refused.value) == (
        f"{f16_model}: keeping the weights in f32 needs {human_size(4 * n)} of new memory, "
        f"but only {human_size(int(1.5 * n))} is available; use --dtype q8 "
        f"({human_size(1.125 * n)})")


def test_without_a_dtype_the_default_precision_is_checked(f16_model, monkeypatch):
    n = matrix_weights(f16_model)  # float16 matrices are kept in f32 by default
    available(monkeypatch, int(1.5 * n))
    with pytest.raises(InputError, match=rf"keeping the weights in the default precision "
                                         rf"needs {human_size(4 * n)} of new memory"):
        llama3_np.load(f16_model)


def test_a_dtype_that_fits_loads(f16_model, monkeypatch):
    n = matrix_weights(f16_model)
    available(monkeypatch, int(1.5 * n))
    model = llama3_np.load(f16_model, dtype="q8")
    assert isinstance(model.weights["layers.0.attention.wq.weight"], Q8)


def test_when_nothing_fits_the_smallest_need_is_named(f16_model, monkeypatch):
    n = matrix_weights(f16_model)
    available(monkeypatch, 1000)
    with pytest.raises(InputError, match=rf"needs {human_size(2 * n)} of new memory, but "
                                         rf"only 1000 B is available; no --dtype fits \(the "
                                         rf"smallest, q8, needs {human_size(1.125 * n)}\)"):
        llama3_np.load(f16_model, dtype="bf16")


def test_weights_used_as_stored_need_no_new_memory(tmp_path, monkeypatch):
    """float32 on disk asked for as f32: memory-mapped, nothing copied, nothing needed."""
    available(monkeypatch, 0)
    model = llama3_np.load(gguf(tmp_path / "f32.gguf", "F32"), dtype="f32")
    assert model.forward([1, 2, 3]).shape == (3, CONFIG.vocab_size)


def test_a_machine_that_cannot_tell_is_not_checked(f16_model, monkeypatch):
    available(monkeypatch, None)
    assert llama3_np.load(f16_model, dtype="f32") is not None


def test_run_py_prints_the_refusal_in_one_line(f16_model, monkeypatch, capsys):
    available(monkeypatch, int(1.5 * matrix_weights(f16_model)))
    assert cli.main(["--model", str(f16_model), "--dtype", "f32", "Hello"]) == 1
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and err.startswith(f"error: {f16_model}: keeping "), err
    assert "use --dtype q8" in err


@pytest.mark.skipif(not os.path.exists("/proc/meminfo"), reason="no /proc/meminfo here")
def test_meminfo_is_read_in_bytes():
    total, free = meminfo_bytes("MemTotal"), meminfo_bytes("MemAvailable")
    assert 0 < free <= total and total % 1024 == 0  # the file counts in kB
    assert meminfo_bytes("NoSuchField") is None


def test_human_size():
    assert [human_size(n) for n in (0, 1023, 1536, 5 << 20, 3 << 30, 5000 << 30)] == \
        ["0 B", "1023 B", "1.5 KiB", "5.0 MiB", "3.0 GiB", "5000.0 GiB"]


def cgroup(tmp_path, monkeypatch, line: str, folder: str, files: dict):
    """A fake /proc/self/cgroup holding `line`, and the cgroup's files in `folder`."""
    (tmp_path / "proc_cgroup").write_text(line + "\n")
    (tmp_path / folder).mkdir(parents=True)
    for name, text in files.items():
        (tmp_path / folder / name).write_text(text)
    monkeypatch.setattr(memory, "PROCESS_CGROUPS", tmp_path / "proc_cgroup")
    monkeypatch.setattr(memory, "CGROUP_ROOT", tmp_path)


def test_a_container_limit_counts_as_available_memory_less_its_working_set(tmp_path,
                                                                            monkeypatch):
    """cgroup v2: limit 1000 MB, 600 MB used of which 100 MB reclaimable page cache."""
    cgroup(tmp_path, monkeypatch, "0::/box", "box", {
        "memory.max": "1000000000\n", "memory.current": "600000000\n",
        "memory.stat": "anon 500000000\ninactive_file 100000000\n"})
    assert memory.cgroup_room() == 500_000_000
    assert memory.available_bytes() == min(500_000_000, meminfo_bytes("MemAvailable") or 1 << 62)


def test_cgroup_v1_limit_and_no_limit(tmp_path, monkeypatch):
    cgroup(tmp_path, monkeypatch, "4:memory:/box", "memory/box", {
        "memory.limit_in_bytes": "2000\n", "memory.usage_in_bytes": "1500\n",
        "memory.stat": "cache 400\ntotal_inactive_file 300\n"})
    assert memory.cgroup_room() == 800
    (tmp_path / "memory/box/memory.limit_in_bytes").write_text("9223372036854771712\n")
    assert memory.cgroup_room() is None  # v1 writes "no limit" as a huge number


def test_no_memory_cgroup_means_no_cgroup_limit(tmp_path, monkeypatch):
    cgroup(tmp_path, monkeypatch, "0::/unlimited", "unlimited", {
        "memory.max": "max\n", "memory.current": "5\n", "memory.stat": ""})
    assert memory.cgroup_room() is None
    monkeypatch.setattr(memory, "PROCESS_CGROUPS", tmp_path / "missing")
    assert memory.cgroup_room() is None


def test_an_unknown_dtype_is_named_before_memory_is_checked(f16_model):
    with pytest.raises(InputError, match="unknown weight dtype 'fp16'"):
        llama3_np.load(f16_model, dtype="fp16")
