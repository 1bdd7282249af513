"""Run llama3_np and the PyTorch references side by side and measure the distance.

The tests assert on these measurements; report.py tabulates them into PARITY.md, so
both always describe the same runs.
"""

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .models import ParityModel, canonical_weights, load_ours, meta_reference
from .steps import HFSteps, StepError, meta_steps, step_error
from .tolerances import FLOAT32

PROMPT_LENGTH = 12  # long enough for a real causal mask, short enough for 8B shapes
GENERATED_TOKENS = 32


def tolerance_of(_name: str) -> float:
    return FLOAT32


def our_steps(directory: Path, tokens) -> dict:
    """Every named step of one llama3_np forward pass over `tokens`, loading `directory`
    the way a user does."""
    model = load_ours(directory)
    with model.trace() as trace:
        model.forward(tokens)
    steps = trace.steps[0]
    del steps["tokens"]
    return steps


def hf_steps(model, tokens) -> dict:
    """The steps transformers' modules expose, in llama3_np's names and layout."""
    with torch.no_grad(), HFSteps(model) as steps:
        model(torch.tensor([tokens]))
    return steps.tensors


def reference_steps(model, shape, tokens) -> tuple:
    """(transformers' steps, Meta-reference steps) for one LlamaForCausalLM's weights.
    Meta's reference also records what transformers does not expose: q and k after
    RoPE in Meta's layout, the raw and the masked attention scores."""
    meta = meta_reference(canonical_weights(model, shape), shape, max_positions=len(tokens))
    return hf_steps(model, tokens), meta_steps(meta, tokens)


@dataclass
class GenerationRun:
    prompt: list
    reference_tokens: list  # transformers' generate(), greedy
    our_tokens: list  # llama3_np's generate(), greedy, with its KV cache
    logit_errors: list  # StepError of each step's logits (ours vs transformers')
    margins: list  # transformers' top-1 lead over the runner-up, / the logits' scale

    @property
    def distinct_tokens(self) -> int:
        return len(set(self.reference_tokens))


def greedy_generation(pm: ParityModel, prompt: list,
                      n_tokens: int = GENERATED_TOKENS) -> GenerationRun:
    """Greedy decoding on both sides from the float32 snapshot, no stop tokens: HF's
    generate() with its DynamicCache against llama3_np's generate() with its KVCache,
    with the logits each side chose from at every step."""
    with torch.no_grad():
        out = pm.reference.generate(
            torch.tensor([prompt]), max_new_tokens=n_tokens, min_new_tokens=n_tokens,
            do_sample=False, eos_token_id=None, pad_token_id=0, output_logits=True,
            return_dict_in_generate=True)
    reference_logits = [step[0].numpy() for step in out.logits]
    ours = load_ours(pm.snapshots["float32"])
    with ours.trace("logits") as trace:
        completion = ours.generate(prompt, max_tokens=n_tokens, temperature=0.0, stop_ids=())
    our_logits = [step["logits"][-1] for step in trace.steps]
    errors = [step_error(f"logits at generated token {i}", mine, theirs, FLOAT32)
              for i, (mine, theirs) in enumerate(zip(our_logits, reference_logits))]
    margins = []
    for logits in reference_logits:
        runner_up, top = np.sort(logits)[-2:]
        margins.append(float(top - runner_up) / float(np.abs(logits).max()))
    return GenerationRun(prompt, out.sequences[0, len(prompt):].tolist(),
                         list(completion.tokens), errors, margins)


def max_relative(errors) -> float:
    return max((e.relative for e in errors), default=0.0)


def worst(errors) -> StepError:
    return max(errors, key=lambda e: e.relative)
