"""Run llama3_np and the PyTorch references side by side and measure the distance.

The tests assert on these measurements; report.py tabulates them into PARITY.md, so
both always describe the same runs.
"""

from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from transformers import LlamaConfig
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding, apply_rotary_pos_emb

import llama3_np
from llama3_np.checkpoint.detect import read_checkpoint
from llama3_np.config import RopeScaling
from llama3_np.rope import RotaryTable, apply_rope, rope_frequencies
from llama3_np.formats.bf16 import BF16

from . import reference
from .models import (ParityModel, canonical_weights, load_hf_reference, load_ours,
                     meta_reference)
from .steps import (HFSteps, StepError, hf_heads_to_meta, meta_heads_to_hf, meta_steps,
                    step_error)
from .tolerances import FLOAT32

PROMPT_LENGTH = 12  # long enough for a real causal mask, short enough for 8B shapes
GENERATED_TOKENS = 32


def max_relative(errors) -> float:
    return max((e.relative for e in errors), default=0.0)


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


@dataclass
class StepRun:
    """One prompt through llama3_np and through both references, every step recorded."""

    ours: dict
    hf: dict  # what transformers' modules expose
    meta: dict  # Meta's model.py: every step, q/k after RoPE and raw scores included

    @property
    def reference(self) -> dict:
        """Transformers where its modules show the step, Meta's reference elsewhere."""
        return {**self.meta, **self.hf}

    def source(self, name: str) -> str:
        return "transformers" if name in self.hf else "Meta model.py"


def step_run(snapshot: Path, reference_model, shape, tokens) -> StepRun:
    """llama3_np loading `snapshot` against `reference_model` (a LlamaForCausalLM) and
    Meta's reference over the same weights."""
    meta = meta_reference(canonical_weights(reference_model, shape), shape,
                          max_positions=len(tokens))
    return StepRun(our_steps(snapshot, tokens), hf_steps(reference_model, tokens),
                   meta_steps(meta, tokens))


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
            torch.tensor([prompt]), max_new_tokens=n_tokens, do_sample=False,
            eos_token_id=None, pad_token_id=0,  # one sequence: nothing to stop or pad
            output_logits=True, return_dict_in_generate=True)
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


LONG_PROMPT = 8300  # ends past 8192, where Llama 3.1 scaling starts to matter
LONG_PROMPT_LAST_CHUNK = 8190  # the last prefill call starts here: 8190..8299
DECODED_PAST_PROMPT = 4  # then single tokens at 8300..8303 through the KV cache


@dataclass
class LongContextRun:
    logit_errors: dict  # phase -> StepErrors of its forward calls, ours vs transformers
    rotation_errors: list  # q and k after RoPE at 8190..8299 vs transformers' rotary_emb
    unscaled_rotation_error: StepError  # the same q rotated WITHOUT scaling: must be far off


def long_context_run(pm: ParityModel) -> LongContextRun:
    """A prompt of 8300 tokens prefilled in two calls through the KV cache (the second
    at start_pos 8190), then 4 single decode steps, against transformers running all
    8304 tokens in one call with position_ids 0..8303; and q, k after RoPE at positions
    8190..8299 against transformers' own scaled rotary embedding at those positions."""
    shape, tokens = pm.shape, pm.prompt(LONG_PROMPT + DECODED_PAST_PROMPT, seed=4)
    hf_model = load_hf_reference(pm.snapshots["float32"], attn_implementation="sdpa")
    with torch.no_grad():
        reference_logits = hf_model(torch.tensor([tokens])).logits[0].numpy()

    last = LONG_PROMPT_LAST_CHUNK
    phases = {f"prefill 0..{last - 1}": [0],  # one call: the model splits it in chunks
              f"prefill {last}..{LONG_PROMPT - 1}": [last],
              f"decode {LONG_PROMPT}..{len(tokens) - 1}": range(LONG_PROMPT, len(tokens))}
    starts = [start for phase_starts in phases.values() for start in phase_starts]
    ends = dict(zip(starts, starts[1:] + [len(tokens)]))
    rope_steps = ["layers.0.attention." + s for s in ("q", "k", "q_rotated", "k_rotated")]
    ours = load_ours(pm.snapshots["float32"])
    cache, logit_errors = ours.new_cache(), {}
    for phase, phase_starts in phases.items():
        for start in phase_starts:
            # Only the call whose rotations are compared is traced: the others run as
            # they do untraced (a traced call is never split into chunks).
            with ours.trace(*rope_steps) if start == last else nullcontext() as trace:
                logits = ours.forward(tokens[start:ends[start]], start_pos=start, cache=cache)
            if start == last:
                recorded = trace.steps[0]
            logit_errors.setdefault(phase, []).append(step_error(
                f"logits at positions {start}..{ends[start] - 1}", logits,
                reference_logits[start:ends[start]], FLOAT32))

    positions = np.arange(last, LONG_PROMPT)
    hf_rotated = hf_rotary(hf_model, recorded["layers.0.attention.q"],
                           recorded["layers.0.attention.k"], positions)
    rotation_errors = [step_error(f"{name} at positions {last}..{LONG_PROMPT - 1}",
                                  recorded[name], theirs, FLOAT32)
                       for name, theirs in zip(rope_steps[2:], hf_rotated)]
    unscaled = RotaryTable(rope_frequencies(shape.head_dim, shape.rope_theta))
    q_unscaled = apply_rope(recorded["layers.0.attention.q"],
                            unscaled.rotations(last, len(positions)))
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


@dataclass
class LayoutComparison:
    """One model read from its HF and its Meta snapshot (see test_formats.py)."""

    formats: tuple  # as detected: ("hf", "meta")
    configs_equal: bool
    names_equal: bool
    differing_tensors: list  # canonical names whose stored bits differ (or are not bf16)
    tied_output_shared: bool  # tied: output.weight IS tok_embeddings.weight (Meta side)
    logits_equal: bool
    logits_finite: bool


def compare_layouts(snapshots: dict, tokens) -> LayoutComparison:
    """Read snapshots["hf"] and snapshots["meta"] with read_checkpoint; then load each
    with llama3_np.load (bf16 kept in memory, NumPy kernels) and run `tokens`."""
    hf, meta = read_checkpoint(snapshots["hf"]), read_checkpoint(snapshots["meta"])
    differing = [name for name, tensor in hf.tensors.items()
                 if not (isinstance(tensor, BF16) and isinstance(meta.tensors.get(name), BF16)
                         and np.array_equal(tensor.bits, meta.tensors[name].bits))]
    shared = meta.tensors.get("output.weight") is meta.tensors.get("tok_embeddings.weight")
    hf_logits, meta_logits = (llama3_np.load(snapshots[k], dtype="bf16", backend="numpy")
                              .forward(tokens) for k in ("hf", "meta"))
    return LayoutComparison(
        formats=(hf.format, meta.format), configs_equal=hf.config == meta.config,
        names_equal=hf.tensors.keys() == meta.tensors.keys(), differing_tensors=differing,
        tied_output_shared=shared or not meta.config.tie_embeddings,
        logits_equal=np.array_equal(hf_logits, meta_logits),
        logits_finite=bool(np.isfinite(hf_logits).all()))


def rope_frequency_differences(shape) -> dict:
    """Largest relative difference of rope.rope_frequencies from transformers' inv_freq
    and from Meta's apply_scaling, for `shape`'s head_dim, theta and scaling."""
    scaling = None if shape.rope_factor is None else RopeScaling(factor=shape.rope_factor)
    ours = rope_frequencies(shape.head_dim, shape.rope_theta, scaling)
    theirs = {
        "transformers": LlamaRotaryEmbedding(LlamaConfig(**shape.hf_config_kwargs())).inv_freq,
        "Meta model.py": reference.rope_frequencies(shape.head_dim, shape.rope_theta,
                                                    shape.rope_factor),
    }
    return {name: float(np.abs(ours.astype(np.float64) / freqs.numpy() - 1).max())
            for name, freqs in theirs.items()}
