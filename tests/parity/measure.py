"""Run llama3_np and the PyTorch references side by side and measure the distance.

The tests assert on these measurements; report.py tabulates them into PARITY.md, so
both always describe the same runs.
"""

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from llama3_np.rope import RotaryTable, apply_rope, rope_frequencies

from .models import (ParityModel, canonical_weights, load_hf_reference, load_ours,
                     meta_reference)
from .steps import (HFSteps, StepError, hf_heads_to_meta, meta_heads_to_hf, meta_steps,
                    step_error)
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


LONG_PROMPT = 8300  # ends past 8192, where Llama 3.1 scaling starts to matter
LONG_PROMPT_LAST_CHUNK = 8190  # the last prefill call starts here: 8190..8299
PREFILL_CHUNK = 1024  # keeps our (heads, chunk, positions) score arrays ~100 MB
DECODED_PAST_PROMPT = 4  # then single tokens at 8300..8303 through the KV cache


@dataclass
class LongContextRun:
    logit_errors: list  # StepError per forward call, ours vs transformers (sdpa)
    rotation_errors: list  # q and k after RoPE at 8190..8299 vs transformers' rotary_emb
    unscaled_rotation_error: StepError  # the same q rotated WITHOUT scaling: must be far off


def long_context_run(pm: ParityModel) -> LongContextRun:
    """A prompt of 8300 tokens prefilled in chunks through the KV cache (the last chunk
    at start_pos 8190), then 4 single decode steps, against transformers running all
    8304 tokens in one call with position_ids 0..8303; and q, k after RoPE at positions
    8190..8299 against transformers' own scaled rotary embedding at those positions."""
    shape, tokens = pm.shape, pm.prompt(LONG_PROMPT + DECODED_PAST_PROMPT, seed=4)
    reference = load_hf_reference(pm.snapshots["float32"], attn_implementation="sdpa")
    with torch.no_grad():
        reference_logits = reference(torch.tensor([tokens])).logits[0].numpy()

    ours = load_ours(pm.snapshots["float32"])
    starts = [*range(0, LONG_PROMPT_LAST_CHUNK, PREFILL_CHUNK), LONG_PROMPT_LAST_CHUNK,
              *range(LONG_PROMPT, len(tokens))]
    ends = starts[1:] + [len(tokens)]
    rope_steps = ["layers.0.attention." + s for s in ("q", "k", "q_rotated", "k_rotated")]
    logit_errors = []
    with ours.trace(*rope_steps) as trace:
        for start, end in zip(starts, ends):
            logits = ours.forward(tokens[start:end], start_pos=start)
            logit_errors.append(step_error(f"logits at positions {start}..{end - 1}", logits,
                                           reference_logits[start:end], FLOAT32))
    recorded = trace.steps[starts.index(LONG_PROMPT_LAST_CHUNK)]

    positions = np.arange(LONG_PROMPT_LAST_CHUNK, LONG_PROMPT)
    hf_rotated = hf_rotary(reference, recorded["layers.0.attention.q"],
                           recorded["layers.0.attention.k"], positions)
    rotation_errors = [step_error(name + " at positions 8190..8299", recorded[name], theirs,
                                  FLOAT32)
                       for name, theirs in zip(rope_steps[2:], hf_rotated)]
    unscaled = RotaryTable(rope_frequencies(shape.head_dim, shape.rope_theta))
    q_unscaled = apply_rope(recorded["layers.0.attention.q"],
                            unscaled.rotations(LONG_PROMPT_LAST_CHUNK, len(positions)))
    return LongContextRun(logit_errors, rotation_errors,
                          step_error("q rotated without scaling", q_unscaled, hf_rotated[0],
                                     FLOAT32))


def hf_rotary(model, q: np.ndarray, k: np.ndarray, positions: np.ndarray) -> tuple:
    """q, k (seq, heads, head_dim) in Meta's layout rotated by transformers' own rotary
    embedding (the model's rotary_emb, with its rope scaling) at `positions`; the
    results back in Meta's layout."""
    q_hf, k_hf = (meta_heads_to_hf(torch.from_numpy(x)).transpose(0, 1)[None] for x in (q, k))
    with torch.no_grad():
        cos, sin = model.model.rotary_emb(q_hf, torch.from_numpy(positions)[None])
        q_hf, k_hf = apply_rotary_pos_emb(q_hf, k_hf, cos, sin)
    return tuple(hf_heads_to_meta(x[0].transpose(0, 1), x.shape[1]).numpy()
                 for x in (q_hf, k_hf))
