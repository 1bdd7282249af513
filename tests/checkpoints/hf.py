"""Writes tiny Hugging Face snapshots the way transformers' Llama convert script does.

The q/k permutation is HF's own (convert_llama_weights_to_hf.py) in torch, and the
files are written by safetensors.torch, so the reader is checked against the real
producers rather than against its own inverse.
"""

import json
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from llama3_np.checkpoint.hf import INDEX_FILE, SINGLE_FILE, hf_name
from llama3_np.config import ModelConfig

TORCH_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def hf_permute(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """transformers' convert_llama_weights_to_hf.permute: Meta's (real, imag) row pairs
    -> per head, all real rows then all imaginary rows."""
    dim1, dim2 = w.shape
    return w.view(n_heads, dim1 // n_heads // 2, 2, dim2).transpose(1, 2).reshape(dim1, dim2)


def hf_unpermute(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """The inverse of hf_permute, in torch: an independent reference for the reader."""
    dim1, dim2 = w.shape
    return w.view(n_heads, 2, dim1 // n_heads // 2, dim2).transpose(1, 2).reshape(dim1, dim2)


def hf_config_json(config: ModelConfig, tied: bool, dtype: str) -> dict:
    """config.json as transformers 4.x writes it for LlamaForCausalLM."""
    scaling = config.rope_scaling
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
        "hidden_size": config.dim,
        "intermediate_size": config.ffn_dim,
        "num_hidden_layers": config.n_layers,
        "num_attention_heads": config.n_heads,
        "num_key_value_heads": config.n_kv_heads,
        "head_dim": config.head_dim,
        "vocab_size": config.vocab_size,
        "rms_norm_eps": config.norm_eps,
        "rope_theta": config.rope_theta,
        "rope_scaling": None if scaling is None else {
            "rope_type": "llama3",
            "factor": scaling.factor,
            "low_freq_factor": scaling.low_freq_factor,
            "high_freq_factor": scaling.high_freq_factor,
            "original_max_position_embeddings": scaling.original_context,
        },
        "max_position_embeddings": config.max_seq_len,
        "tie_word_embeddings": tied,
        "bos_token_id": config.bos_id,
        "eos_token_id": config.stop_ids[0] if config.stop_ids else None,
        "torch_dtype": dtype,
    }


def hf_state_dict(weights: dict, config: ModelConfig, dtype: str, tied: bool) -> dict:
    """Canonical float32 weights -> HF names, HF q/k order, torch tensors in `dtype`."""
    state = {}
    for name, array in weights.items():
        if tied and name == "output.weight":
            continue  # tied checkpoints store only the embedding
        w = torch.from_numpy(np.ascontiguousarray(array))
        if name.endswith("attention.wq.weight"):
            w = hf_permute(w, config.n_heads)
        elif name.endswith("attention.wk.weight"):
            w = hf_permute(w, config.n_kv_heads)
        state[hf_name(name)] = w.to(TORCH_DTYPES[dtype]).contiguous()
    return state


def shard_file_name(k: int, n: int) -> str:
    return f"model-{k:05d}-of-{n:05d}.safetensors"


def write_hf_checkpoint(directory: Path, weights: dict, config: ModelConfig,
                        dtype: str = "bfloat16", shards: int = 1, tied: bool = False) -> Path:
    """A HF snapshot of `weights` (canonical float32) in `directory`; returns it.

    shards > 1 splits the tensors over model-0000k-of-0000n.safetensors with an index;
    tied=True stores no lm_head and says tie_word_embeddings in config.json."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(hf_config_json(config, tied, dtype)))
    (directory / "generation_config.json").write_text(json.dumps(
        {"bos_token_id": config.bos_id, "eos_token_id": list(config.stop_ids)}))

    state = hf_state_dict(weights, config, dtype, tied)
    if shards == 1:
        save_file(state, directory / SINGLE_FILE, metadata={"format": "pt"})
        return directory
    names = list(state)
    weight_map = {}
    for k, part in enumerate(np.array_split(np.arange(len(names)), shards), start=1):
        file_name = shard_file_name(k, shards)
        save_file({names[i]: state[names[i]] for i in part}, directory / file_name,
                  metadata={"format": "pt"})
        weight_map.update({names[i]: file_name for i in part})
    total_size = sum(t.numel() * t.element_size() for t in state.values())
    (directory / INDEX_FILE).write_text(json.dumps(
        {"metadata": {"total_size": total_size}, "weight_map": weight_map}))
    return directory
