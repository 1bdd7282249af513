"""Meta's original layout and Hugging Face's give the same model, bit for bit.

The same bfloat16 weights, written once by transformers' save_pretrained and once by
torch.save in Meta's names and q/k order, must read as identical canonical tensors and
configs, and so give identical logits (no tolerance: the same arithmetic on the same
bits). A Meta params.json implies Llama 3's special token ids, so Meta's layout is
written with the full 128256 vocabulary: the Llama 3.2 parity models have it; the 8B
shapes get a 1-layer full-vocabulary model of their own (conftest.full_vocab_8b).
"""

import numpy as np
import pytest

import llama3_np
from llama3_np.checkpoint.detect import read_checkpoint
from llama3_np.storage import BF16

pytestmark = pytest.mark.parity


@pytest.fixture
def format_pair(parity_model, request) -> dict:
    if "meta" in parity_model.snapshots:
        return {"hf": parity_model.snapshots["bfloat16"], "meta": parity_model.snapshots["meta"]}
    return request.getfixturevalue("full_vocab_8b")[parity_model.shape.name]


def stored_bits(tensor) -> np.ndarray:
    return tensor.bits if isinstance(tensor, BF16) else tensor


def test_meta_layout_loads_the_same_model_as_hf(format_pair, parity_model):
    hf, meta = read_checkpoint(format_pair["hf"]), read_checkpoint(format_pair["meta"])
    assert (hf.format, meta.format) == ("hf", "meta")
    assert meta.config == hf.config  # rope scaling factor, FFN width, tying, special ids
    assert meta.tensors.keys() == hf.tensors.keys()
    for name, tensor in hf.tensors.items():
        assert isinstance(meta.tensors[name], BF16) and isinstance(tensor, BF16), name
        assert np.array_equal(stored_bits(meta.tensors[name]), stored_bits(tensor)), name
    if hf.config.tie_embeddings:
        assert meta.tensors["output.weight"] is meta.tensors["tok_embeddings.weight"]

    tokens = parity_model.prompt(6, seed=3)
    logits = [llama3_np.load(d, dtype="bf16", backend="numpy").forward(tokens)
              for d in (format_pair["hf"], format_pair["meta"])]
    assert np.isfinite(logits[0]).all()
    assert np.array_equal(logits[0], logits[1])
