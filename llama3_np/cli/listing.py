"""List the Llama-architecture models on this machine, by the name --model takes: the
Hugging Face hub cache, Ollama's models, Meta's ~/.llama/checkpoints and weights/.
Reads only headers and configs (nothing is loaded); other architectures are counted,
not listed."""

from collections import Counter
from pathlib import Path

from ..errors import Llama3Error
from ..locate import find_all, hf_hub_cache, meta_checkpoints, ollama_models, shown
from ..memory import human_size
from .common import WEIGHTS_DIR


def add_arguments(parser) -> None:
    pass


def run(args) -> int:
    rows, others = [], Counter()
    for found in find_all(WEIGHTS_DIR):
        try:
            fmt, arch = describe(found.path)
        except (Llama3Error, OSError, ValueError):
            continue  # not a checkpoint (a tokenizer folder, a partial download)
        if arch != "llama":
            others[arch] += 1
            continue
        rows.append((found.name, fmt, human_size(size_on_disk(found.path)), shown(found.path)))
    searched = (f"searched the Hugging Face cache {shown(hf_hub_cache())}, Ollama "
                f"{shown(ollama_models())}, {shown(meta_checkpoints())} and "
                f"{shown(WEIGHTS_DIR)}")
    if not rows:
        print(f"no Llama models found; {searched}")
        return 0
    header = ("NAME", "FORMAT", "SIZE", "WHERE")
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(3)]
    for row in [header, *rows]:
        print("  ".join(f"{cell:<{w}}" if i != 2 else f"{cell:>{w}}"
                        for i, (cell, w) in enumerate(zip(row, widths))) + "  " + row[3])
    skipped = ", ".join(f"{n} {arch}" for arch, n in others.most_common())
    print(f"\n{searched}" + (f"; not Llama: {skipped}" if skipped else ""))
    return 0


def describe(path: Path) -> tuple:
    """(format, architecture) from a checkpoint's config or GGUF header; the format of a
    GGUF file names its most common matrix type, e.g. "gguf Q4_K"."""
    from ..files import read_json_object
    from ..checkpoint.detect import detect_format
    from ..errors import CheckpointError

    fmt = detect_format(path)
    weights = {"meta": "consolidated.*.pth", "hf": "*.safetensors"}.get(fmt)
    if weights and not any(path.glob(weights)):  # a config without weights: not runnable
        raise CheckpointError(f"{path} has no {weights}")
    if fmt == "meta":
        return "meta", "llama"  # params.json has no architecture field: Meta's are Llama
    if fmt == "hf":
        config = read_json_object(path / "config.json", CheckpointError)
        return "hf", str(config.get("model_type"))
    from ..checkpoint.gguf import read_gguf_file

    from ..precision import stored_kind

    gguf = read_gguf_file(path if path.is_file() else next(path.glob("*.gguf")))
    types = Counter(stored_kind(t) for t in gguf.tensors.values() if len(t.shape) == 2)
    main_type = f" {types.most_common(1)[0][0]}" if types else ""
    return f"gguf{main_type}", str(gguf.metadata.get("general.architecture"))


def size_on_disk(path: Path) -> int:
    """A file's size, or the files directly in a directory (symlinks followed, as the
    Hugging Face cache links its snapshots to blobs)."""
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.iterdir() if p.is_file())
