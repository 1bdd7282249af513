"""The forward pass step by step on the reference side, and the walk that compares it.

`HFSteps` hooks transformers' Llama modules and records each step's tensor under
llama3_np's trace name, in llama3_np's layout: batch dimension dropped, heads split as
(seq, heads, head_dim), and q/k turned from HF's per-head [real parts | imaginary
parts] order into Meta's interleaved (real, imag) pairs. `compare_steps` then walks
llama3_np's steps in the order the model took them, so the first step that diverges is
the first one reported.
"""

import math
from dataclasses import dataclass

import numpy as np
import torch


def hf_heads_to_meta(x: torch.Tensor, n_heads: int) -> torch.Tensor:
    """(seq, n_heads * head_dim) in HF's q/k order -> (seq, n_heads, head_dim) in Meta's.

    HF keeps each head as [re_0 .. re_{d/2-1}, im_0 .. im_{d/2-1}] (its rotate_half
    RoPE); Meta as [re_0, im_0, re_1, im_1, ...] (complex pairs)."""
    seq = x.shape[0]
    halves = x.reshape(seq, n_heads, 2, -1)  # (seq, heads, [re|im], head_dim/2)
    return halves.transpose(2, 3).reshape(seq, n_heads, -1)


def meta_heads_to_hf(x: torch.Tensor) -> torch.Tensor:
    """(seq, n_heads, head_dim) in Meta's order -> the same in HF's (per head, real
    parts then imaginary parts): the inverse of hf_heads_to_meta."""
    seq, n_heads, head_dim = x.shape
    return x.reshape(seq, n_heads, head_dim // 2, 2).transpose(2, 3).reshape(seq, n_heads, -1)


class HFSteps:
    """Record a LlamaForCausalLM's steps while active: `with HFSteps(model) as steps:`.

    The model must use eager attention (attn_implementation="eager"): only that path
    hands back the attention probabilities. Holds the latest forward call's tensors."""

    def __init__(self, model):
        self.model = model
        self.tensors = {}
        self._handles = []

    def __enter__(self) -> "HFSteps":
        if self.model.config._attn_implementation != "eager":
            raise ValueError("HFSteps needs attn_implementation='eager' to see attention "
                             "probabilities")
        config, base = self.model.config, self.model.model
        self._output(base.embed_tokens, "embeddings")
        for i, layer in enumerate(base.layers):
            p, attn, mlp = f"layers.{i}.", layer.self_attn, layer.mlp
            self._output(layer.input_layernorm, p + "attention_norm")
            self._output(attn.q_proj, p + "attention.q",
                         lambda t: hf_heads_to_meta(t, config.num_attention_heads))
            self._output(attn.k_proj, p + "attention.k",
                         lambda t: hf_heads_to_meta(t, config.num_key_value_heads))
            self._output(attn.v_proj, p + "attention.v",
                         lambda t: t.reshape(len(t), config.num_key_value_heads, -1))
            self._output(attn, p + "attention.probs", pick=1)  # (attn_output, attn_weights)
            self._input(attn.o_proj, p + "attention.heads_out",
                        lambda t: t.reshape(len(t), config.num_attention_heads, -1))
            self._output(attn.o_proj, p + "attention.out")
            self._input(layer.post_attention_layernorm, p + "attention_residual")
            self._output(layer.post_attention_layernorm, p + "ffn_norm")
            self._output(mlp.gate_proj, p + "ffn.gate")
            self._output(mlp.up_proj, p + "ffn.up")
            self._input(mlp.down_proj, p + "ffn.hidden")
            self._output(mlp, p + "ffn.out")
            self._output(layer, p + "residual")
        self._output(base.norm, "norm")
        self._output(self.model.lm_head, "logits")
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _record(self, name: str, tensor: torch.Tensor, convert) -> None:
        tensor = tensor.detach()[0]  # drop the batch dimension (batch size 1)
        self.tensors[name] = (convert(tensor) if convert else tensor).float().numpy().copy()

    def _output(self, module, name: str, convert=None, pick=None) -> None:
        def hook(_module, _args, output):
            self._record(name, output if pick is None else output[pick], convert)
        self._handles.append(module.register_forward_hook(hook))

    def _input(self, module, name: str, convert=None) -> None:
        def hook(_module, args):
            self._record(name, args[0], convert)
        self._handles.append(module.register_forward_pre_hook(hook))


def meta_steps(reference, tokens, start_pos: int = 0) -> dict:
    """Every step of one MetaReference forward call, as float32 NumPy arrays."""
    tensors = {}
    reference.trace = lambda name, t: tensors.__setitem__(name, t.float().numpy().copy())
    try:
        reference.forward(tokens, start_pos)
    finally:
        reference.trace = lambda name, t: None
    return tensors


@dataclass
class StepError:
    """How far one of our steps is from the reference's: the largest absolute difference
    over the tensor, measured against the tensor's own scale (its largest magnitude)."""

    name: str
    max_abs: float
    scale: float
    tolerance: float

    @property
    def relative(self) -> float:
        return self.max_abs / self.scale if self.scale > 0 else self.max_abs

    @property
    def ok(self) -> bool:
        return self.relative <= self.tolerance

    def __str__(self) -> str:
        return (f"{self.name}: max |ours - reference| {self.max_abs:.3g} on a scale of "
                f"{self.scale:.3g} (relative {self.relative:.3g}, tolerance {self.tolerance:.3g})")


def step_error(name: str, ours: np.ndarray, reference: np.ndarray, tolerance: float) -> StepError:
    """Masked entries (-inf) must sit in the same places; finite entries are compared."""
    if ours.shape != reference.shape:
        raise AssertionError(f"{name}: shape {ours.shape} but the reference has "
                             f"{reference.shape}")
    finite = np.isfinite(reference)
    if not np.array_equal(finite, np.isfinite(ours)) or \
            not np.array_equal(ours[~finite], reference[~finite]):
        return StepError(name, math.inf, 1.0, tolerance)
    diff = np.abs(ours[finite].astype(np.float64) - reference[finite])
    scale = float(np.abs(reference[finite]).max(initial=0.0))
    return StepError(name, float(diff.max(initial=0.0)), scale, tolerance)


def compare_steps(ours: dict, reference: dict, tolerance: float) -> list:
    """StepErrors for every step both sides recorded, in the order ours recorded them."""
    return [step_error(name, tensor, reference[name], tolerance)
            for name, tensor in ours.items() if name in reference]


def assert_steps_match(ours: dict, reference: dict, tolerance: float, expected_steps=()) -> list:
    """Fail at the first step that diverges, saying by how much (and how the step before
    it did, to show where the error entered); return all StepErrors otherwise."""
    missing = [name for name in expected_steps if name not in ours or name not in reference]
    assert not missing, f"steps not recorded on both sides: {missing}"
    errors = compare_steps(ours, reference, tolerance)
    for i, error in enumerate(errors):
        if not error.ok:
            before = f"; the step before, {errors[i - 1]}" if i else ""
            raise AssertionError(f"first divergence at {error}{before}")
    return errors
