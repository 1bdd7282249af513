"""Random Llama 3 models written by the real producers, and the references that run them.

A model is born as a transformers LlamaForCausalLM (seeded random weights), saved with
its own save_pretrained in float32 and, converted by transformers, in bfloat16; the same
weights in Meta's names and q/k order are written as Meta's consolidated.00.pth. Our
side always loads a directory through llama3_np.load, as a user would.
"""

import json
import shutil
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.initialization import no_init_weights

import llama3_np
from llama3_np.checkpoint.hf import hf_name
from llama3_np.schema import canonical_names
from tests.checkpoints.hf import hf_unpermute

from .reference import MetaReference
from .shapes import FULL_VOCAB, SHAPES_BY_NAME, Shape

# transformers' initializer_range. Embeddings this small leave the residual stream to
# the layers' outputs; with O(1) embeddings a tied model's logits are dominated by the
# current token's own embedding, and greedy decoding just repeats the last token.
EMBEDDING_STD = 0.02


def matrix_std(name: str, shape: tuple) -> float:
    """The spread of a random weight matrix: EMBEDDING_STD for the embedding, else
    1/sqrt(fan_in), so activations stay O(1) through the layers (as in tests/tiny.py)."""
    return EMBEDDING_STD if name == "model.embed_tokens.weight" else shape[1] ** -0.5


def random_hf_model(shape: Shape, seed: int, attn_implementation: str = "eager"):
    """A float32 LlamaForCausalLM of `shape` with seeded random weights: matrices
    matrix_std * u, norm gains 1 + 0.1 u, with u of mean 0 and variance 1 (uniform: it
    draws several times faster than a normal)."""
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
            else:
                param.mul_(matrix_std(name, param.shape))
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


def write_meta_snapshot(weights: dict, shape: Shape, directory: Path,
                        tokenizer_path: Path) -> Path:
    """Meta's layout as Meta ships it: params.json, a single consolidated.00.pth of
    bfloat16 tensors written by torch.save (as tests/checkpoints/meta.py does; that writer
    takes float32 NumPy arrays, these are torch tensors), and tokenizer.model."""
    directory.mkdir(parents=True)
    (directory / "params.json").write_text(json.dumps(shape.meta_params()))
    # contiguous: every tensor owns its storage, as in Meta's files
    torch.save({name: w.to(torch.bfloat16).contiguous() for name, w in weights.items()},
               directory / "consolidated.00.pth")
    shutil.copy(tokenizer_path, directory / "tokenizer.model")
    return directory


def load_ours(directory: Path):
    """llama3_np's normal loading path: llama3_np.load, weights in float32."""
    return llama3_np.load(directory, dtype="f32")


def meta_reference(weights: dict, shape: Shape, max_positions: int) -> MetaReference:
    """Meta's model.py over the canonical weights (tied: output is the embedding)."""
    weights = dict(weights)
    weights.setdefault("output.weight", weights["tok_embeddings.weight"])
    return MetaReference(weights, n_layers=shape.n_layers, n_heads=shape.n_heads,
                         n_kv_heads=shape.n_kv_heads, norm_eps=shape.norm_eps,
                         rope_theta=shape.rope_theta, scale_factor=shape.rope_factor,
                         max_positions=max_positions)


def load_hf_reference(directory: Path, attn_implementation: str = "eager"):
    """transformers' own reading of a snapshot, computed in float32 (a bfloat16 snapshot
    becomes its bf16-rounded weights in float32). Eager attention returns the attention
    probabilities; "sdpa" does not hold a (seq x seq) matrix per head, for long prompts."""
    return LlamaForCausalLM.from_pretrained(directory, dtype=torch.float32,
                                            attn_implementation=attn_implementation).eval()


@dataclass
class ParityModel:
    """One random model of a shape, kept for a whole session: the float32 transformers
    model (the reference) and its snapshots on disk."""

    shape: Shape
    reference: LlamaForCausalLM  # float32, eager attention
    snapshots: dict  # "float32" / "bfloat16": HF snapshot; "meta": Meta's layout, if any

    def prompt(self, length: int, seed: int = 1) -> list:
        """Seeded token ids, all valid for the shape's vocabulary."""
        return np.random.default_rng(seed).integers(0, self.shape.vocab_size, length).tolist()


def build_parity_model(shape: Shape, root: Path, tokenizer_path: Path,
                       seed: int = 0) -> ParityModel:
    """Make, save and describe one random model of `shape` under `root`. Meta's layout
    is written only with the full vocabulary: a params.json implies the Llama 3 special
    token ids, which a reduced vocabulary does not hold."""
    model = random_hf_model(shape, seed)
    snapshots = write_hf_snapshots(model, root, tokenizer_path)
    if shape.vocab_size == FULL_VOCAB:
        snapshots["meta"] = write_meta_snapshot(canonical_weights(model, shape), shape,
                                                root / "meta", tokenizer_path)
    return ParityModel(shape, model, snapshots)


def random_bf16_model(shape: Shape, seed: int):
    """A bfloat16 LlamaForCausalLM whose weights are drawn as raw bits: random sign and
    7-bit mantissa, the exponent fixed per tensor at the magnitude random_hf_model
    gives it. Three times faster than drawing floats, which counts at 10^9 values; for
    the format check, where only bit-identical loading matters."""
    config = LlamaConfig(**shape.hf_config_kwargs())
    with no_init_weights():
        model = LlamaForCausalLM._from_config(config, dtype=torch.bfloat16)
    model.tie_weights()
    rng = np.random.default_rng(seed)
    for name, param in model.named_parameters():
        scale = 1.0 if param.ndim == 1 else matrix_std(name, param.shape)
        # |value| in [2^e, 2^(e+1)) with e = floor(log2(scale)): within 2x of the scale
        exponent = np.uint16(127 + int(np.floor(np.log2(scale))))
        bits = rng.integers(0, 1 << 16, param.shape, dtype=np.uint16) & np.uint16(0x807F)
        param.data = torch.from_numpy(bits | (exponent << np.uint16(7))).view(torch.bfloat16)
    return model.eval()


def write_format_snapshots(shape: Shape, root: Path, tokenizer_path: Path,
                           seed: int = 0) -> dict:
    """{"hf": dir, "meta": dir}: one random bfloat16 model of `shape` in both layouts."""
    model = random_bf16_model(shape, seed)
    hf = root / "hf"
    model.save_pretrained(hf)
    (hf / "original").mkdir()
    shutil.copy(tokenizer_path, hf / "original" / "tokenizer.model")
    meta = write_meta_snapshot(canonical_weights(model, shape), shape, root / "meta",
                               tokenizer_path)
    return {"hf": hf, "meta": meta}


def restate_snapshots(snapshots: dict, shape: Shape, root: Path) -> dict:
    """The same weight files (hard links, no copy) described as `shape`: for two models
    whose tensors have identical shapes, e.g. Llama 3.0 and 3.1 8B (rope scaling is
    configuration, not weights)."""
    hf, meta = root / "hf", root / "meta"
    restated = ("config.json", "params.json")  # written anew, never through a link
    for source, target in ((snapshots["hf"], hf), (snapshots["meta"], meta)):
        for file in source.rglob("*"):
            if file.is_file() and file.name not in restated:
                link = target / file.relative_to(source)
                link.parent.mkdir(parents=True, exist_ok=True)
                link.hardlink_to(file)
    LlamaConfig(**shape.hf_config_kwargs(), dtype=torch.bfloat16).save_pretrained(hf)
    (meta / "params.json").write_text(json.dumps(shape.meta_params()))
    return {"hf": hf, "meta": meta}


def write_full_vocab_8b(root: Path, tokenizer_path: Path) -> dict:
    """{shape name: {"hf": dir, "meta": dir}} for Llama 3.0 and 3.1 8B with the full
    vocabulary (Meta's layout needs it, see build_parity_model), 1 layer, bfloat16: the
    two 128256 x 4096 matrices are 2 GB even so. Both share one set of weight files:
    they differ only in configuration (rope scaling)."""
    v30, v31 = (replace(SHAPES_BY_NAME[name], vocab_size=FULL_VOCAB, n_layers=1)
                for name in ("llama-3.0-8b", "llama-3.1-8b"))
    snapshots = write_format_snapshots(v31, root / v31.name, tokenizer_path)
    return {v31.name: snapshots, v30.name: restate_snapshots(snapshots, v30, root / v30.name)}
