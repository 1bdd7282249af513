"""Meta's original layout and Hugging Face's give the same model, bit for bit.

The same bfloat16 weights, written once by transformers' save_pretrained and once by
torch.save in Meta's names and q/k order, must read as identical canonical tensors and
configs, and so give identical logits (no tolerance: the same arithmetic on the same
bits). A Meta params.json implies Llama 3's special token ids, so Meta's layout is
written with the full 128256 vocabulary: the Llama 3.2 parity models have it; the 8B
shapes get a 1-layer full-vocabulary model of their own (models.write_full_vocab_8b).
"""

import pytest

from .measure import compare_layouts

pytestmark = pytest.mark.parity


@pytest.fixture
def layouts(parity_model, request) -> dict:
    """{"hf": dir, "meta": dir} holding the same bfloat16 weights."""
    if "meta" in parity_model.snapshots:
        return {"hf": parity_model.snapshots["bfloat16"], "meta": parity_model.snapshots["meta"]}
    return request.getfixturevalue("full_vocab_8b")[parity_model.shape.name]


def test_meta_layout_loads_the_same_model_as_hf(layouts, parity_model):
    result = compare_layouts(layouts, parity_model.prompt(6, seed=3))
    assert result.formats == ("hf", "meta")
    assert result.configs_equal  # rope scaling factor, FFN width, tying, special ids
    assert result.names_equal
    assert result.differing_tensors == []
    assert result.tied_output_shared
    assert result.logits_finite and result.logits_equal
