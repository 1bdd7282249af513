"""Positions past 8192 (Llama 3.1 / 3.2 rope scaling) and the rope frequencies themselves.

Tolerances: tolerances.FLOAT32 (relative to each tensor's scale) and
tolerances.FREQUENCIES, justified there.
"""

import numpy as np
import pytest

from llama3_np.config import RopeScaling
from llama3_np.rope import rope_frequencies

from .measure import long_context_run, rope_frequency_differences
from .models import build_parity_model
from .shapes import LONG_CONTEXT_SHAPES, SHAPES
from .tolerances import FLOAT32, FREQUENCIES

pytestmark = pytest.mark.parity


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: s.name)
def test_rope_frequencies_match_transformers_and_meta(shape):
    scaling = None if shape.rope_factor is None else RopeScaling(factor=shape.rope_factor)
    assert rope_frequencies(shape.head_dim, shape.rope_theta, scaling).dtype == np.float32
    differences = rope_frequency_differences(shape)
    assert max(differences.values()) <= FREQUENCIES, differences


@pytest.mark.parametrize("shape", LONG_CONTEXT_SHAPES, ids=lambda s: s.name)
def test_positions_past_8192_match_transformers(shape, tmp_path, llama3_tokenizer_path):
    run = long_context_run(build_parity_model(shape, tmp_path, llama3_tokenizer_path))
    for error in run.rotation_errors:
        assert error.ok, str(error)
    for phase, errors in run.logit_errors.items():  # in position order
        for error in errors:
            assert error.ok, f"{phase}: {error}"
    # The comparison can tell: without the scaling, q at 8190.. is far from transformers'.
    assert run.unscaled_rotation_error.relative > 100 * FLOAT32, str(run.unscaled_rotation_error)
