"""The parity suite's marker, torch settings and the one model per shape it shares.

Run it alone with `python -m pytest tests/parity` (or select it anywhere with
`-m parity`, leave it out with `-m "not parity"`).
"""

import shutil

import pytest
import torch

from .models import build_parity_model, write_full_vocab_8b
from .shapes import SHAPES

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
    yield build_parity_model(shape, root, llama3_tokenizer_path)
    shutil.rmtree(root)  # gigabytes of snapshots; pytest would keep three runs' worth


@pytest.fixture(scope="session")
def full_vocab_8b(tmp_path_factory, llama3_tokenizer_path) -> dict:
    """Meta's layout for the 8B shapes: see models.write_full_vocab_8b."""
    root = tmp_path_factory.mktemp("full-vocab-8b")
    yield write_full_vocab_8b(root, llama3_tokenizer_path)
    shutil.rmtree(root)
