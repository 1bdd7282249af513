"""Tiny GGUF files for tests, written with the `gguf` package (test-only) the way
llama.cpp's convert_hf_to_gguf.py writes a Llama model.

The tensor names, the q/k permutations and the rope_freqs formula below are written
out from llama.cpp's and transformers' converters, independently of the reader, so a
test that reads these files back checks the reader against the converters.
"""

from pathlib import Path

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType, GGUFWriter
from gguf.quants import quantize

from llama3_np.config import ModelConfig

# Byte offsets of the float16 scale fields inside one block (ggml-common.h block_*);
# everything else in a block is packed integers, so any byte value is valid there.
F16_FIELDS = {"Q8_0": (0,), "Q4_0": (0,), "Q4_1": (0, 2), "Q5_0": (0,), "Q5_1": (0, 2),
              "Q4_K": (0, 2), "Q5_K": (0, 2), "Q6_K": (208,)}
QUANTIZABLE = ("BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1")  # gguf.quants.quantize can

_LAYER_NAMES = {  # Meta's per-layer name -> llama.cpp's
    "attention_norm": "attn_norm", "ffn_norm": "ffn_norm",
    "attention.wq": "attn_q", "attention.wk": "attn_k", "attention.wv": "attn_v",
    "attention.wo": "attn_output",
    "feed_forward.w1": "ffn_gate", "feed_forward.w2": "ffn_down", "feed_forward.w3": "ffn_up",
}
_GLOBAL_NAMES = {"tok_embeddings.weight": "token_embd.weight", "norm.weight": "output_norm.weight",
                 "output.weight": "output.weight"}


def gguf_name(meta_name: str) -> str:
    if meta_name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[meta_name]
    _, layer, rest = meta_name.split(".", 2)
    return f"blk.{layer}.{_LAYER_NAMES[rest.removesuffix('.weight')]}.weight"


def meta_to_hf(w: np.ndarray, n_heads: int) -> np.ndarray:
    """transformers' convert_llama_weights_to_hf.py `permute`: adjacent pairs -> halves."""
    rows, cols = w.shape
    return w.reshape(n_heads, rows // n_heads // 2, 2, cols).swapaxes(1, 2).reshape(rows, cols)


def hf_to_gguf(w: np.ndarray, n_heads: int) -> np.ndarray:
    """llama.cpp's convert_hf_to_gguf.py `LlamaModel.permute` (n_heads = kv heads for k)."""
    return w.reshape(n_heads, 2, w.shape[0] // n_heads // 2, *w.shape[1:]) \
        .swapaxes(1, 2).reshape(w.shape)


def llama31_rope_divisors(head_dim: int, theta: float, factor: float, low: float = 1.0,
                          high: float = 4.0, original_context: int = 8192) -> np.ndarray:
    """The rope_freqs tensor of convert_hf_to_gguf.py's LlamaModel.generate_extra_tensors."""
    freqs = 1.0 / (np.float32(theta) ** (np.arange(0, head_dim, 2, dtype=np.float32) / head_dim))
    divisors = []
    for freq in freqs.astype(np.float32):
        wavelength = np.float32(2 * np.pi) / freq
        if wavelength < original_context / high:
            divisors.append(1.0)
        elif wavelength > original_context / low:
            divisors.append(factor)
        else:
            smooth = (original_context / wavelength - low) / (high - low)
            divisors.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(divisors, dtype=np.float32)


def random_blocks(type_name: str, rows: int, cols: int, rng) -> np.ndarray:
    """(rows, bytes_per_row) uint8 of random blocks whose float16 scales are finite."""
    per_block, block_bytes = GGML_QUANT_SIZES[GGMLQuantizationType[type_name]]
    blocks = rng.integers(0, 256, (rows * cols // per_block, block_bytes), dtype=np.uint8)
    for offset in F16_FIELDS[type_name]:
        scales = rng.uniform(-2, 2, len(blocks)).astype(np.float16)
        blocks[:, offset:offset + 2] = scales.view(np.uint8).reshape(-1, 2)
    return blocks.reshape(rows, -1)


def encode(w: np.ndarray, type_name: str):
    """float32 weights -> (array to write, raw ggml type or None for plain float arrays)."""
    if type_name == "F32":
        return w.astype(np.float32), None
    if type_name == "F16":
        return w.astype(np.float16), None
    return quantize(w, GGMLQuantizationType[type_name]), GGMLQuantizationType[type_name]


def write_gguf(path: Path, tensors: dict, metadata: dict = (), arch: str = "llama",
               alignment: int = None) -> Path:
    """Write a GGUF file.

    tensors: GGUF name -> (array, raw ggml type or None), as from `encode`;
    metadata: key -> (value, GGUFValueType[, element GGUFValueType for arrays])."""
    writer = GGUFWriter(path, arch)
    if alignment is not None:
        writer.add_custom_alignment(alignment)
    for key, (value, vtype, *sub) in dict(metadata).items():
        writer.add_key_value(key, value, vtype, *sub)
    for name, (array, raw_type) in tensors.items():
        writer.add_tensor(name, array, raw_dtype=raw_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return Path(path)


def llama_metadata(config: ModelConfig) -> dict:
    """The llama.* and tokenizer.ggml.* keys convert_hf_to_gguf.py writes for `config`."""
    u32, f32 = GGUFValueType.UINT32, GGUFValueType.FLOAT32
    metadata = {
        "general.name": ("tiny test llama", GGUFValueType.STRING),
        "llama.block_count": (config.n_layers, u32),
        "llama.context_length": (config.max_seq_len, u32),
        "llama.embedding_length": (config.dim, u32),
        "llama.feed_forward_length": (config.ffn_dim, u32),
        "llama.attention.head_count": (config.n_heads, u32),
        "llama.attention.head_count_kv": (config.n_kv_heads, u32),
        "llama.rope.freq_base": (config.rope_theta, f32),
        "llama.attention.layer_norm_rms_epsilon": (config.norm_eps, f32),
        "llama.vocab_size": (config.vocab_size, u32),
        "llama.rope.dimension_count": (config.head_dim, u32),
        "tokenizer.ggml.model": ("gpt2", GGUFValueType.STRING),
        "tokenizer.ggml.tokens": ([f"t{i}" for i in range(config.vocab_size)],
                                  GGUFValueType.ARRAY, GGUFValueType.STRING),
    }
    if config.bos_id is not None:
        metadata["tokenizer.ggml.bos_token_id"] = (config.bos_id, u32)
    for kind, token in zip(("eos", "eot", "eom"), config.stop_ids):
        metadata[f"tokenizer.ggml.{kind}_token_id"] = (token, u32)
    return metadata


def write_llama_gguf(path: Path, config: ModelConfig, weights: dict, type_name: str = "F32",
                     metadata: dict = ()) -> Path:
    """Canonical Meta-layout weights as a llama.cpp GGUF: q/k go Meta -> HF (as the HF
    checkpoint holds them) -> GGUF (convert_hf_to_gguf's permute); matrices are stored as
    `type_name`, norms as F32 (as llama.cpp does); tied embeddings write no output.weight;
    Llama 3.1 scaling becomes a rope_freqs tensor. `metadata` adds or overrides keys."""
    tensors = {}
    for name, w in weights.items():
        if name == "output.weight" and config.tie_embeddings:
            continue
        if name.endswith(("attention.wq.weight", "attention.wk.weight")):
            heads = config.n_heads if ".wq." in name else config.n_kv_heads
            w = hf_to_gguf(meta_to_hf(w, heads), heads)
        tensors[gguf_name(name)] = encode(w, type_name if w.ndim == 2 else "F32")
    if config.rope_scaling is not None:
        s = config.rope_scaling
        divisors = llama31_rope_divisors(config.head_dim, config.rope_theta, s.factor,
                                         s.low_freq_factor, s.high_freq_factor, s.original_context)
        tensors["rope_freqs.weight"] = (divisors, None)
    return write_gguf(path, tensors, {**llama_metadata(config), **dict(metadata)})


def byte_level_model_config(**overrides) -> ModelConfig:
    """A tiny model for byte_level_tokenizer_metadata's vocabulary (259 tokens, bos 257,
    eos 258): with it, a GGUF file runs end to end in milliseconds."""
    from tests.tiny import tiny_config

    return tiny_config(**{"dim": 32, "n_heads": 4, "n_kv_heads": 2, "ffn_dim": 64,
                          "vocab_size": 259, "bos_id": 257, "stop_ids": (258,),
                          "rope_scaling": None, **overrides})


def byte_level_tokenizer_metadata() -> dict:
    """tokenizer.ggml.* keys of a minimal byte-level BPE vocabulary, so a tiny model runs
    end to end: ids 0-255 are the bytes (in GPT-2's spelling, from transformers), 256 is
    "he" (the one merge), 257 <|begin_of_text|> (bos), 258 <|end_of_text|> (eos)."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    spelling = bytes_to_unicode()
    tokens = [spelling[b] for b in range(256)] + ["he", "<|begin_of_text|>", "<|end_of_text|>"]
    strings = (GGUFValueType.ARRAY, GGUFValueType.STRING)
    return {
        "tokenizer.ggml.model": ("gpt2", GGUFValueType.STRING),
        "tokenizer.ggml.pre": ("gpt-2", GGUFValueType.STRING),
        "tokenizer.ggml.tokens": (tokens, *strings),
        "tokenizer.ggml.token_type": ([1] * 257 + [3, 3], GGUFValueType.ARRAY,
                                      GGUFValueType.INT32),
        "tokenizer.ggml.merges": (["h e"], *strings),
        "tokenizer.ggml.add_bos_token": (True, GGUFValueType.BOOL),
    }
