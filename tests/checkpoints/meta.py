"""Writes tiny checkpoints in Meta's original format with torch itself (the reference):
params.json + consolidated.NN.pth, split across shards as Meta's model-parallel code
splits them. Also builds hand-made torch.save archives for hostile-input tests."""

import json
import zipfile
from pathlib import Path

import numpy as np
import torch

TORCH_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def meta_split_axis(name: str, embedding_axis: int = 0):
    """Meta's layout: ColumnParallelLinear shards keep output rows, RowParallelLinear shards
    input columns; Llama 3's VocabParallelEmbedding splits the vocabulary (axis 0), Llama 2's
    ParallelEmbedding the embedding dim (axis 1); everything else is replicated (None)."""
    kind = name.split(".")[-2]
    if kind in ("wq", "wk", "wv", "w1", "w3", "output"):
        return 0
    if kind in ("wo", "w2"):
        return 1
    if kind == "tok_embeddings":
        return embedding_axis
    return None


def write_meta_checkpoint(directory, weights: dict, params: dict, n_shards: int = 1,
                          dtype: str = "bfloat16", embedding_axis: int = 0) -> Path:
    """Save `weights` (float32 arrays under Meta's names) as torch tensors of `dtype`."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "params.json").write_text(json.dumps(params))
    stored = {name: torch.from_numpy(np.ascontiguousarray(w)).to(TORCH_DTYPES[dtype])
              for name, w in weights.items()}
    for shard in range(n_shards):
        state = {}
        for name, tensor in stored.items():
            axis = meta_split_axis(name, embedding_axis)
            part = tensor if axis is None else tensor.chunk(n_shards, dim=axis)[shard]
            # clone: each shard owns its storage, as in Meta's files (a view saves it whole)
            state[name] = part.clone()
        torch.save(state, directory / f"consolidated.{shard:02d}.pth")
    return directory


def write_torch_zip(path, pickle_bytes: bytes, storages: dict = None,
                    compression: int = zipfile.ZIP_STORED, compress_pickle: bool = True) -> Path:
    """A torch.save-shaped zip from raw parts: data.pkl plus data/<key> storage blobs,
    the members written with `compression` (data.pkl and byteorder too unless
    compress_pickle=False)."""
    path = Path(path)
    prefix = path.name.removesuffix(".pth")
    pickle_compression = compression if compress_pickle else zipfile.ZIP_STORED
    with zipfile.ZipFile(path, "w", compression=compression) as archive:
        archive.writestr(f"{prefix}/data.pkl", pickle_bytes, compress_type=pickle_compression)
        archive.writestr(f"{prefix}/byteorder", "little", compress_type=pickle_compression)
        for key, blob in (storages or {}).items():
            archive.writestr(f"{prefix}/data/{key}", blob)
        archive.writestr(f"{prefix}/version", "3\n")
    return path
