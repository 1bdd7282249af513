"""Every step of the forward pass against transformers and Meta's model.py, per shape.

A failure names the first step that diverges and by how much (steps.assert_steps_match).
Tolerance: tolerances.FLOAT32 (relative to each tensor's scale), justified there.
"""

import numpy as np
import pytest
import torch

from .measure import PROMPT_LENGTH, step_run
from .models import load_hf_reference
from .steps import assert_steps_match, step_error
from .tolerances import FLOAT32

pytestmark = pytest.mark.parity


def test_float32_snapshot_every_step(parity_model):
    tokens = parity_model.prompt(PROMPT_LENGTH)
    run = step_run(parity_model.snapshots["float32"], parity_model.reference,
                   parity_model.shape, tokens)
    # Meta's reference stands in for the steps transformers hides (q/k after RoPE, raw and
    # masked scores), so first it must agree with transformers on every step both show.
    assert_steps_match(run.meta, run.hf, FLOAT32, expected_steps=["embeddings", "logits"])
    assert_steps_match(run.ours, run.reference, FLOAT32, expected_steps=list(run.ours))


def test_bfloat16_snapshot_every_step(parity_model):
    """The bf16 snapshot (transformers' own conversion) against transformers running the
    same bf16-rounded weights in float32: the float32 tolerance applies unchanged."""
    tokens = parity_model.prompt(PROMPT_LENGTH)
    rounded = load_hf_reference(parity_model.snapshots["bfloat16"])
    run = step_run(parity_model.snapshots["bfloat16"], rounded, parity_model.shape, tokens)
    assert_steps_match(run.ours, run.reference, FLOAT32, expected_steps=list(run.ours))
    assert np.array_equal(run.ours["embeddings"], run.hf["embeddings"])  # a lookup: exact

    # The rounding is really there: the float32 model's logits are far outside tolerance.
    with torch.no_grad():
        unrounded = parity_model.reference(torch.tensor([tokens])).logits[0].numpy()
    assert not step_error("logits", run.ours["logits"], unrounded, FLOAT32).ok
