"""Recognise a checkpoint by what a path holds, and hand it to the right reader."""

from pathlib import Path

from ..errors import CheckpointError
from ..files import regular_file
from .gguf import MAGIC as GGUF_MAGIC


def detect_format(path: Path) -> str:
    """'meta', 'hf' or 'gguf'; otherwise an error saying what is there and what is missing."""
    if not path.exists():
        raise CheckpointError(f"{path}: no such file or directory")
    if not path.is_dir():
        regular_file(path, CheckpointError)  # a FIFO or device: say what it is
        # By content: Ollama keeps GGUF files as blobs/sha256-<hex>, without a suffix.
        if path.suffix == ".gguf" or _starts_with(path, GGUF_MAGIC):
            return "gguf"
        raise CheckpointError(f"{path}: not a checkpoint (expected a GGUF file or a "
                              "directory of a Meta or Hugging Face download)")
    try:
        names = {p.name for p in path.iterdir()}
    except OSError as e:
        raise CheckpointError(f"cannot list {path}: {e.strerror}") from None
    ggufs = sorted(n for n in names if n.endswith(".gguf"))
    if "params.json" in names or any(n.startswith("consolidated.") for n in names):
        return "meta"
    if "config.json" in names or any(n.endswith(".safetensors") for n in names):
        return "hf"
    if len(ggufs) == 1:
        return "gguf"
    if len(ggufs) > 1:
        raise CheckpointError(f"{path}: holds several .gguf files ({', '.join(ggufs)}); "
                              "name one")
    raise CheckpointError(
        f"{path}: no checkpoint found (expected params.json + consolidated.*.pth from Meta, "
        "config.json + *.safetensors from Hugging Face, or a .gguf file)")


def _starts_with(path: Path, magic: bytes) -> bool:
    try:
        with open(path, "rb") as file:
            return file.read(len(magic)) == magic
    except OSError as e:
        raise CheckpointError(f"cannot read {path}: {e.strerror}") from None


def read_checkpoint(path):
    """Read any supported checkpoint into a Checkpoint (config + canonical tensors)."""
    path = Path(path)
    fmt = detect_format(path)
    if fmt == "meta":
        from .meta import read_meta
        return read_meta(path)
    if fmt == "hf":
        from .hf import read_hf
        return read_hf(path)
    from .gguf import read_gguf
    return read_gguf(path if path.is_file() else next(path.glob("*.gguf")))
