"""The real demo model, SmolLM2-135M-Instruct (Q4_1 GGUF): it knows things, and our
logits are what transformers computes from the same file."""

import numpy as np
import pytest

import llama3_np

PROMPTS = ["The capital of France is", "def fibonacci(n):\n    ",
           "Once upon a time, in a small village,", "1, 2, 3, 4,"]


@pytest.fixture(scope="module")
def model(demo_model_path):
    return llama3_np.load(demo_model_path)


@pytest.fixture(scope="module")
def reference(demo_model_path):
    """transformers' own GGUF loader: dequantised to float32 by the gguf package."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.set_num_threads(2)
    return transformers.AutoModelForCausalLM.from_pretrained(
        demo_model_path.parent, gguf_file=demo_model_path.name, dtype=torch.float32,
        attn_implementation="eager").eval()


def test_greedy_completion_knows_the_capital_of_france(model):
    completion = model.generate("The capital of France is", max_tokens=8)
    assert "Paris" in completion.text


@pytest.mark.parametrize("prompt", PROMPTS)
def test_logits_match_transformers_on_the_same_file(model, reference, prompt):
    import torch

    tokens = model.tokenizer.encode(prompt, bos=model.tokenizer.add_bos)
    ours = model.forward(tokens)
    with torch.no_grad():
        theirs = reference(torch.tensor([tokens])).logits[0].numpy()
    # Both dequantise the same Q4_1 / Q8_0 blocks to float32 exactly and then run 30
    # float32 layers; only summation order differs. Measured: 1.4e-6 to 2.4e-6 of the
    # logit scale on these prompts; 2e-5 leaves room for other BLAS builds and is far
    # below a real fault (a wrong rope base moves logits by more than 1e-1 of the scale).
    scale = np.abs(theirs).max()
    assert np.abs(ours - theirs).max() <= 2e-5 * scale
    assert (ours.argmax(-1) == theirs.argmax(-1)).all()
