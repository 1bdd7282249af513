"""Random Llama 3 models written by the real producers, and the references that run them.

A model is born as a transformers LlamaForCausalLM (seeded random weights), saved with
its own save_pretrained in float32 and, converted by transformers, in bfloat16; the same
weights in Meta's names and q/k order are written as Meta's consolidated.00.pth. Our
side always loads a directory through llama3_np.load, as a user would.
"""

import shutil
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.initialization import no_init_weights

import llama3_np
from llama3_np.checkpoint import canonical_names
from llama3_np.checkpoint.hf import hf_name
from tests.checkpoints.hf import hf_unpermute
from tests.checkpoints.meta import write_meta_checkpoint

from .reference import MetaReference
from .shapes import Shape


def random_hf_model(shape: Shape, seed: int, attn_implementation: str = "eager"):
    """A float32 LlamaForCausalLM of `shape` with seeded random weights, scaled as in
    tests/tiny.py so activations stay O(1) through the layers: norm gains 1 + 0.1 u,
    embeddings u, every matrix u / sqrt(fan_in), u of mean 0 and variance 1 (uniform:
    it draws several times faster than a normal, and these sizes reach 10^9 values)."""
    config = LlamaConfig(**shape.hf_config_kwargs(), attn_implementation=attn_implementation)
    with no_init_weights():  # transformers' own init is slow and overwritten anyway
        model = LlamaForCausalLM(config)
    model.tie_weights()  # skipped under no_init_weights; tied: lm_head IS the embedding
    generator = torch.Generator().manual_seed(seed)
    half_width = 3 ** 0.5  # U(-sqrt(3), sqrt(3)) has variance 1
    with torch.no_grad():
        for name, param in model.named_parameters():  # a tied lm_head is listed once
            param.uniform_(-half_width, half_width, generator=generator)
            if param.ndim == 1:
                param.mul_(0.1).add_(1.0)
            elif name != "model.embed_tokens.weight":
                param.mul_(param.shape[1] ** -0.5)
    return model.eval()


def canonical_weights(model, shape: Shape) -> dict:
    """The model's weights under Meta's names, q/k rows in Meta's order (undone with
    torch, independently of llama3_np's reader); other tensors are shared, not copied.
    Tied models have no output.weight, as in Meta's Llama 3.2 checkpoints."""
    state = model.state_dict()
    weights = {}
    for name in canonical_names(shape.n_layers, tie_embeddings=shape.tied):
        w = state[hf_name(name)]
        if name.endswith("attention.wq.weight"):
            w = hf_unpermute(w, shape.n_heads)
        elif name.endswith("attention.wk.weight"):
            w = hf_unpermute(w, shape.n_kv_heads)
        weights[name] = w
    return weights


def write_hf_snapshots(model, root: Path, tokenizer_path: Path) -> dict:
    """{"float32": dir, "bfloat16": dir}: save_pretrained in float32, then transformers'
    own float32 -> bfloat16 conversion of that snapshot. Each carries Meta's tokenizer
    where HF's Llama 3 snapshots keep it (original/tokenizer.model)."""
    f32 = root / "hf-float32"
    model.save_pretrained(f32)
    bf16 = root / "hf-bfloat16"
    LlamaForCausalLM.from_pretrained(f32, dtype=torch.bfloat16).save_pretrained(bf16)
    for snapshot in (f32, bf16):
        (snapshot / "original").mkdir()
        shutil.copy(tokenizer_path, snapshot / "original" / "tokenizer.model")
    return {"float32": f32, "bfloat16": bf16}


def write_meta_snapshot(weights: dict, shape: Shape, directory: Path, tokenizer_path: Path,
                        dtype: str = "bfloat16") -> Path:
    """Meta's layout: params.json, consolidated.00.pth (torch.save), tokenizer.model."""
    arrays = {name: w.numpy() for name, w in weights.items()}
    write_meta_checkpoint(directory, arrays, shape.meta_params(), dtype=dtype)
    shutil.copy(tokenizer_path, directory / "tokenizer.model")
    return directory


def load_ours(directory: Path):
    """llama3_np's normal loading path: llama3_np.load, weights in float32."""
    return llama3_np.load(directory, dtype="f32")


def meta_reference(weights: dict, shape: Shape, max_positions: int = 512) -> MetaReference:
    """Meta's model.py over the canonical weights (tied: output is the embedding)."""
    weights = dict(weights)
    weights.setdefault("output.weight", weights["tok_embeddings.weight"])
    return MetaReference(weights, n_layers=shape.n_layers, n_heads=shape.n_heads,
                         n_kv_heads=shape.n_kv_heads, norm_eps=shape.norm_eps,
                         rope_theta=shape.rope_theta, scale_factor=shape.rope_factor,
                         max_positions=max_positions)


def load_hf_reference(directory: Path):
    """transformers' own reading of a snapshot, computed in float32 (a bfloat16 snapshot
    becomes its bf16-rounded weights in float32), with eager attention."""
    return LlamaForCausalLM.from_pretrained(directory, dtype=torch.float32,
                                            attn_implementation="eager").eval()
