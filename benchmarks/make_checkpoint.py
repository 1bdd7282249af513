"""Random-weight Llama 3 checkpoints in Hugging Face format (bfloat16 safetensors).

    python benchmarks/make_checkpoint.py OUT_DIR [--shape llama-3.2-1b|llama-3-8b] [--seed 0]

The safetensors files are written here from the format's published layout (8-byte
header length, JSON header, raw data), a few MB of rows at a time, so even Llama 3 8B
(16 GB) is generated in under 100 MB of memory. Tensor names, shapes and config.json
are those of Meta's published Hugging Face snapshots; transformers' LlamaForCausalLM
and llama3_np load the result alike. Values are random (so HF's q/k row order needs
no care), scaled so activations stay O(1) through the layers. Meta's Llama 3
tokenizer.model is copied into original/ when found, as in Meta's snapshots, so
llama3_np.load finds a tokenizer.
"""

import argparse
import json
import math
import shutil
import struct
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from llama3_np.checkpoint.hf import INDEX_FILE, SINGLE_FILE, hf_name  # noqa: E402
from llama3_np.config import from_hf_config  # noqa: E402
from llama3_np.schema import iter_canonical_shapes  # noqa: E402

TOKENIZER_CANDIDATES = [REPO.parent / "shared" / "llama3" / "tokenizer.model",
                        REPO / "weights" / "llama3" / "tokenizer.model"]

_LLAMA3_COMMON = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu",
    "attention_bias": False, "mlp_bias": False, "rms_norm_eps": 1e-5,
    "rope_theta": 500000.0, "vocab_size": 128256, "bos_token_id": 128000,
    "torch_dtype": "bfloat16", "use_cache": True,
}
# config.json of Meta's published snapshots, as far as the architecture goes.
SHAPES = {
    "llama-3.2-1b": {
        **_LLAMA3_COMMON, "hidden_size": 2048, "intermediate_size": 8192,
        "num_hidden_layers": 16, "num_attention_heads": 32, "num_key_value_heads": 8,
        "head_dim": 64, "max_position_embeddings": 131072, "tie_word_embeddings": True,
        "eos_token_id": [128001, 128008, 128009],
        "rope_scaling": {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                         "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
    },
    "llama-3-8b": {
        **_LLAMA3_COMMON, "hidden_size": 4096, "intermediate_size": 14336,
        "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
        "max_position_embeddings": 8192, "tie_word_embeddings": False,
        "eos_token_id": 128001, "rope_scaling": None,
    },
}

BF16_BYTES = 2
# transformers' default max_shard_size ("5GB"); Meta's 8B snapshot has 4 such shards.
MAX_SHARD_BYTES = 5 * 10**9
_CHUNK_VALUES = 1 << 22  # values generated per write: 16 MB of float32 scratch
_BF16_ONE = 0x3F80


def hf_tensor_shapes(hf_config: dict) -> dict:
    """HF tensor name -> shape for a config.json, in Meta's order (embedding first)."""
    config = from_hf_config(hf_config)
    return {hf_name(name): shape for name, shape in iter_canonical_shapes(config)
            if not (name == "output.weight" and config.tie_embeddings)}


def hf_config_of(shape: str, n_layers: int = None) -> dict:
    """config.json of `shape` (a key of SHAPES), cut to its first n_layers when given."""
    return {**SHAPES[shape], **({} if n_layers is None else {"num_hidden_layers": n_layers})}


def checkpoint_bytes(shape: str, n_layers: int = None) -> int:
    """Bytes of tensor data in a checkpoint of `shape` (a key of SHAPES)."""
    shapes = hf_tensor_shapes(hf_config_of(shape, n_layers))
    return BF16_BYTES * sum(math.prod(s) for s in shapes.values())


def random_bf16_chunks(rng: np.random.Generator, name: str, shape: tuple):
    """A random tensor's bfloat16 bits (uint16), a few MB of rows at a time.

    Vectors (norm gains) are 1; the embedding is N(0, 1); projections are
    N(0, 1 / in_features), so each output has unit variance. Rounding to bfloat16 by
    truncation is fine for random values."""
    if len(shape) == 1:
        yield np.full(shape, _BF16_ONE, dtype=np.uint16)
        return
    n_rows, n_cols = shape
    scale = np.float32(1.0 if name == "model.embed_tokens.weight" else n_cols ** -0.5)
    step = max(1, _CHUNK_VALUES // n_cols)
    for start in range(0, n_rows, step):
        values = rng.standard_normal((min(step, n_rows - start), n_cols), dtype=np.float32)
        values *= scale
        yield (values.view(np.uint32) >> 16).astype(np.uint16)


def write_random_safetensors(path: Path, shapes: dict, rng: np.random.Generator) -> None:
    """One safetensors file holding random BF16 tensors of the given shapes, written
    in header order, so the data section is tiled exactly as the format requires."""
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for name, shape in shapes.items():
        size = BF16_BYTES * math.prod(shape)
        header[name] = {"dtype": "BF16", "shape": list(shape),
                        "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the safetensors library pads the header to 8 bytes
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for name, shape in shapes.items():
            for chunk in random_bf16_chunks(rng, name, shape):
                f.write(chunk.data)


def plan_shards(shapes: dict, max_shard_bytes: int) -> list:
    """Consecutive groups of tensors ({name: shape}), each at most max_shard_bytes
    unless a single tensor is bigger."""
    shards, current, current_bytes = [], {}, 0
    for name, shape in shapes.items():
        size = BF16_BYTES * math.prod(shape)
        if current and current_bytes + size > max_shard_bytes:
            shards.append(current)
            current, current_bytes = {}, 0
        current[name] = shape
        current_bytes += size
    shards.append(current)
    return shards


def shard_file_name(k: int, n: int) -> str:
    return f"model-{k:05d}-of-{n:05d}.safetensors"


def is_complete(directory: Path, shape: str, n_layers: int = None) -> bool:
    """True when `directory` holds a finished checkpoint of `shape` (config.json is
    written last, so an interrupted write is never taken for a finished one)."""
    config_path = Path(directory) / "config.json"
    return config_path.is_file() and \
        json.loads(config_path.read_text()) == hf_config_of(shape, n_layers)


def write_random_checkpoint(directory, shape: str = "llama-3.2-1b", seed: int = 0,
                            max_shard_bytes: int = MAX_SHARD_BYTES, log=print,
                            n_layers: int = None) -> Path:
    """A random bfloat16 HF snapshot of `shape` (a key of SHAPES) in `directory`, with
    only its first n_layers layers when given (long-context benchmarks)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    hf_config = hf_config_of(shape, n_layers)
    shapes = hf_tensor_shapes(hf_config)
    rng = np.random.default_rng(seed)
    shards = plan_shards(shapes, max_shard_bytes)
    total_bytes = checkpoint_bytes(shape, n_layers)
    log(f"writing a random {shape} checkpoint ({total_bytes / 1e9:.1f} GB bf16, "
        f"{len(shards)} file(s)) to {directory}")
    start = time.perf_counter()
    if len(shards) == 1:
        write_random_safetensors(directory / SINGLE_FILE, shapes, rng)
    else:
        weight_map = {}
        for k, shard in enumerate(shards, start=1):
            file_name = shard_file_name(k, len(shards))
            write_random_safetensors(directory / file_name, shard, rng)
            weight_map.update(dict.fromkeys(shard, file_name))
            log(f"  {file_name} written ({time.perf_counter() - start:.0f} s)")
        (directory / INDEX_FILE).write_text(json.dumps(
            {"metadata": {"total_size": total_bytes}, "weight_map": weight_map}, indent=2))
    tokenizer = next((p for p in TOKENIZER_CANDIDATES if p.is_file()), None)
    if tokenizer is not None:
        (directory / "original").mkdir(exist_ok=True)
        shutil.copyfile(tokenizer, directory / "original" / "tokenizer.model")
    else:
        log("warning: Meta's tokenizer.model not found (bash weights/fetch.sh); "
            "llama3_np.load will need tokenizer_path")
    (directory / "generation_config.json").write_text(json.dumps(
        {"bos_token_id": hf_config["bos_token_id"], "eos_token_id": hf_config["eos_token_id"]}))
    (directory / "config.json").write_text(json.dumps(hf_config, indent=2))  # last: complete
    log(f"done in {time.perf_counter() - start:.0f} s")
    return directory


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory", type=Path)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="llama-3.2-1b")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    write_random_checkpoint(args.directory, args.shape, args.seed)


if __name__ == "__main__":
    main()
