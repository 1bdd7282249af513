"""The parity suite's marker, torch settings and the one model per shape it shares.

Run it alone with `python -m pytest tests/parity` (or select it anywhere with
`-m parity`, leave it out with `-m "not parity"`).
"""

import shutil
from dataclasses import replace

import pytest
import torch

from .models import build_parity_model, restate_snapshots, write_format_snapshots
from .shapes import FULL_VOCAB, SHAPES, SHAPES_BY_NAME

torch.set_num_threads(2)  # the CI machine has 2 cores


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "parity: llama3_np against the PyTorch references (transformers, Meta's "
        "model.py) on Llama 3 shaped random models; minutes, not seconds")


@pytest.fixture(scope="session", params=SHAPES, ids=lambda shape: shape.name)
def parity_model(request, tmp_path_factory, llama3_tokenizer_path):
    """One random model per shape for the whole session. Parametrised at session scope,
    pytest runs every test of one shape before building the next and drops the previous
    one first, so at most one of these (up to ~2.5 GB) is alive at a time."""
    shape = request.param
    root = tmp_path_factory.mktemp(shape.name)
    yield build_parity_model(shape, root, llama3_tokenizer_path, seed=SHAPES.index(shape))
    shutil.rmtree(root)  # gigabytes of snapshots; pytest would keep three runs' worth


@pytest.fixture(scope="session")
def full_vocab_8b(tmp_path_factory, llama3_tokenizer_path) -> dict:
    """{shape name: {"hf": dir, "meta": dir}} for Llama 3.0 and 3.1 8B at the full
    vocabulary, 1 layer, bfloat16: two 128256 x 4096 matrices are 2 GB even so. The two
    share one set of weight files: they differ only in configuration (rope scaling)."""
    root = tmp_path_factory.mktemp("full-vocab-8b")
    v30, v31 = (replace(SHAPES_BY_NAME[name], vocab_size=FULL_VOCAB, n_layers=1)
                for name in ("llama-3.0-8b", "llama-3.1-8b"))
    snapshots = write_format_snapshots(v31, root / v31.name, llama3_tokenizer_path)
    yield {v31.name: snapshots,
           v30.name: restate_snapshots(snapshots, v30, root / v30.name)}
    shutil.rmtree(root)
