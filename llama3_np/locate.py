"""Find a model by the name people already know it by, where their tools put it.

    weights/Llama-3.2-1B-Instruct            a path (a directory or a file)
    meta-llama/Llama-3.2-1B-Instruct         a Hugging Face repo id, in the local hub cache
    bartowski/Llama-3.2-1B-Instruct-GGUF/Llama-3.2-1B-Instruct-Q8_0.gguf
                                             a file inside a cached repo
    ollama:llama3.2:1b                       a model Ollama has pulled
    Llama3.2-1B-Instruct                     a folder of Meta's ~/.llama/checkpoints

Offline: only what is on disk is read. Each store is found as its own tool finds it
(environment variables first, then the default), and laid out as that tool writes it:

    Hugging Face  $HF_HUB_CACHE, $HF_HOME/hub or ~/.cache/huggingface/hub:
                  models--org--name/refs/main holds a commit; snapshots/<commit>/ holds
                  the files, as symlinks into blobs/
    Ollama        $OLLAMA_MODELS or ~/.ollama/models: manifests/<host>/<namespace>/<model>/
                  <tag> is JSON whose model layer names blobs/sha256-<hex>, a GGUF file
    Meta          $LLAMA_STACK_CONFIG_DIR/checkpoints or ~/.llama/checkpoints/<name>/
"""

import os
import re
from dataclasses import dataclass
from pathlib import Path

from .errors import CheckpointError
from .files import read_json_object

OLLAMA_PREFIX = "ollama:"
OLLAMA_MODEL_LAYER = "application/vnd.ollama.image.model"
OLLAMA_REGISTRY, OLLAMA_NAMESPACE, OLLAMA_TAG = "registry.ollama.ai", "library", "latest"
_REPO_PART = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*\Z")  # an org or a repo name on the Hub
_FILE_SUFFIXES = (".gguf", ".pth", ".safetensors", ".json", ".bin")  # files, not repos


# ---- where each tool keeps its models ----------------------------------------------------

def _env_path(name: str):
    value = os.environ.get(name)
    return Path(value).expanduser() if value else None


def hf_hub_cache() -> Path:
    """The hub cache huggingface_hub downloads into."""
    explicit = _env_path("HF_HUB_CACHE") or _env_path("HUGGINGFACE_HUB_CACHE")
    if explicit:
        return explicit
    home = _env_path("HF_HOME") or (_env_path("XDG_CACHE_HOME") or Path.home() / ".cache") \
        / "huggingface"
    return home / "hub"


def ollama_models() -> Path:
    return _env_path("OLLAMA_MODELS") or Path.home() / ".ollama" / "models"


def meta_checkpoints() -> Path:
    """Where Meta's `llama model download` (llama-stack) saves checkpoints."""
    return (_env_path("LLAMA_STACK_CONFIG_DIR") or Path.home() / ".llama") / "checkpoints"


def shown(path: Path) -> str:
    """A path as a user would type it: ~ for the home directory."""
    home = str(Path.home())
    text = str(path)
    return "~" + text[len(home):] if home != "/" and text.startswith(home + os.sep) else text


# ---- one model by name -------------------------------------------------------------------

def locate(spec) -> Path:
    """The checkpoint path `spec` names (see the module docstring), or a CheckpointError
    saying where it was looked for and the command that would download it."""
    text = str(spec)
    if text.startswith(OLLAMA_PREFIX):
        return ollama_blob(text[len(OLLAMA_PREFIX):])
    path = Path(text).expanduser()
    if path.exists():
        return path
    if is_repo_id(text):
        return hf_cached(text)
    if not text or os.sep in text:
        raise CheckpointError(f"{text}: no such file or directory")
    if (meta_checkpoints() / text).is_dir():
        return meta_checkpoints() / text
    raise CheckpointError(f"{text}: no such file or directory, nor a folder of that name in "
                          f"{shown(meta_checkpoints())} (where `llama model download` saves)")


def is_repo_id(text: str) -> bool:
    """"org/name" or "org/name/file-inside", when "org" is not a local directory and
    "name" is not a checkpoint file's name (so weights/x and dir/model.gguf stay paths,
    and their errors say they are missing)."""
    parts = text.split("/")
    return (len(parts) >= 2 and all(_REPO_PART.match(p) for p in parts[:2])
            and ".." not in parts and not Path(parts[0]).expanduser().is_dir()
            and not (len(parts) == 2 and parts[1].endswith(_FILE_SUFFIXES)))


def hf_download_command(repo_id: str) -> str:
    """What downloads `repo_id` into the cache, without the files llama3_np does not use."""
    if repo_id.lower().endswith("gguf"):  # one quantisation, not all twenty
        return f'hf download {repo_id} --include "*Q8_0.gguf"'
    if repo_id.split("/")[0] == "meta-llama":  # original/ repeats the weights in Meta's format
        return f'hf download {repo_id} --exclude "original/consolidated*"'
    return f"hf download {repo_id}"


def hf_repo_dir(repo_id: str, cache: Path = None) -> Path:
    return (cache or hf_hub_cache()) / ("models--" + repo_id.replace("/", "--"))


def hf_cached(spec: str) -> Path:
    """The checkpoint of a repo in the hub cache: "org/name" is its snapshot (or the
    snapshot's original/ folder when only Meta's files were downloaded); "org/name/file"
    a file in it."""
    org, name, *inside = spec.split("/")
    repo_id = f"{org}/{name}"
    cache = hf_hub_cache()
    repo_dir = hf_repo_dir(repo_id, cache)
    if not repo_dir.is_dir():
        raise CheckpointError(
            f"{spec}: no such file or directory, and the Hugging Face cache {shown(cache)} "
            f"does not hold {repo_id}; download it with `{hf_download_command(repo_id)}` "
            "(meta-llama repos are gated: accept the licence on the model's page and run "
            "`hf auth login` first)")
    snapshot = hf_snapshot(repo_dir)
    if inside:
        target = snapshot.joinpath(*inside)
        if not target.exists():
            raise CheckpointError(f"{spec}: the cached snapshot {shown(snapshot)} has no "
                                  f"{'/'.join(inside)}")
        return target
    return hf_model_dir(snapshot)


def hf_model_dir(snapshot: Path) -> Path:
    """The snapshot itself, unless only Meta's original/ files were downloaded into it."""
    original = snapshot / "original"
    has_hf = (snapshot / "config.json").exists()
    return original if not has_hf and (original / "params.json").exists() else snapshot


def hf_snapshot(repo_dir: Path) -> Path:
    """The snapshot refs/main points to (the one a plain `hf download` updates)."""
    snapshots = repo_dir / "snapshots"
    try:
        commit = (repo_dir / "refs" / "main").read_text().strip()
    except OSError:
        commit = ""
    if commit and (snapshots / commit).is_dir():
        return snapshots / commit
    found = sorted(p.name for p in snapshots.iterdir()) if snapshots.is_dir() else []
    if len(found) == 1:
        return snapshots / found[0]
    if not found:
        raise CheckpointError(f"{shown(repo_dir)} holds no snapshot (an interrupted download?)")
    raise CheckpointError(f"{shown(repo_dir)} has no refs/main and several snapshots "
                          f"({', '.join(found)}); pass one as --model {shown(snapshots)}/<commit>")


def parse_ollama_name(name: str) -> tuple:
    """"llama3.2:1b" -> ("registry.ollama.ai", "library", "llama3.2", "1b"), filling in
    Ollama's defaults for the host, namespace and tag."""
    path, _, tag = name.rpartition(":") if ":" in name.rsplit("/", 1)[-1] else (name, "", "")
    parts = path.split("/")
    if not 1 <= len(parts) <= 3 or not all(parts) or ".." in parts or (tag and "/" in tag):
        raise CheckpointError(f"ollama:{name} is not an Ollama model name (like "
                              "ollama:llama3.2:1b)")
    defaults = [OLLAMA_REGISTRY, OLLAMA_NAMESPACE][:3 - len(parts)]
    return (*defaults, *parts, tag or OLLAMA_TAG)


def ollama_name(host: str, namespace: str, model: str, tag: str) -> str:
    """The name `ollama list` shows: defaults left out."""
    if host != OLLAMA_REGISTRY:
        return f"{host}/{namespace}/{model}:{tag}"
    return f"{model}:{tag}" if namespace == OLLAMA_NAMESPACE else f"{namespace}/{model}:{tag}"


def ollama_blob(name: str) -> Path:
    """The GGUF blob of a pulled Ollama model, found through its manifest."""
    root = ollama_models()
    host, namespace, model, tag = parse_ollama_name(name)
    manifest = root / "manifests" / host / namespace / model / tag
    if not manifest.is_file():
        raise CheckpointError(f"ollama:{name}: Ollama has not pulled {model}:{tag} "
                              f"(no {shown(manifest)}); pull it with `ollama pull {name}`")
    return ollama_manifest_blob(manifest, root)


def ollama_manifest_blob(manifest: Path, root: Path) -> Path:
    layers = read_json_object(manifest, CheckpointError).get("layers")
    digests = [layer.get("digest") for layer in layers or [] if isinstance(layer, dict)
               and layer.get("mediaType") == OLLAMA_MODEL_LAYER]
    if len(digests) != 1 or not isinstance(digests[0], str) \
            or not re.fullmatch(r"sha256:[0-9a-f]{64}", digests[0]):
        raise CheckpointError(f"{shown(manifest)} names no model layer "
                              f"({OLLAMA_MODEL_LAYER} with a sha256 digest)")
    blob = root / "blobs" / digests[0].replace(":", "-")
    if not blob.is_file():
        raise CheckpointError(f"{shown(manifest)} names {shown(blob)}, which is missing "
                              "(an interrupted pull?)")
    return blob


# ---- every model in the stores -----------------------------------------------------------

@dataclass
class Found:
    name: str  # what --model takes
    path: Path  # what it resolves to
    store: str  # "hf", "ollama", "meta" or "weights"


def find_all(weights_dir: Path = None):
    """Every candidate checkpoint in the stores (and in weights_dir), not yet checked to
    be a Llama model; a store that is absent or unreadable contributes nothing."""
    yield from _find_hf()
    yield from _find_ollama()
    yield from _find_in(meta_checkpoints(), "meta", lambda p: p.name)
    if weights_dir is not None:
        yield from _find_in(weights_dir, "weights", _as_typed)


def _find_hf():
    cache = hf_hub_cache()
    for repo_dir in _listing(cache):
        if not repo_dir.name.startswith("models--"):
            continue  # datasets--, spaces--, .locks
        repo_id = repo_dir.name[len("models--"):].replace("--", "/", 1)
        try:
            snapshot = hf_snapshot(repo_dir)
        except (CheckpointError, OSError):
            continue
        ggufs = sorted(p for p in _listing(snapshot) if p.name.endswith(".gguf"))
        if ggufs:  # a repo of quantisations: each file is a model
            yield from (Found(f"{repo_id}/{p.name}", p, "hf") for p in ggufs)
        else:
            yield Found(repo_id, hf_model_dir(snapshot), "hf")


def _find_ollama():
    root = ollama_models()
    for manifest in sorted((root / "manifests").glob("*/*/*/*")):
        host, namespace, model, tag = manifest.relative_to(root / "manifests").parts
        try:
            blob = ollama_manifest_blob(manifest, root)
        except (CheckpointError, OSError):
            continue
        yield Found(OLLAMA_PREFIX + ollama_name(host, namespace, model, tag), blob, "ollama")


def _find_in(folder: Path, store: str, name_of):
    for path in _listing(folder):
        if path.is_dir() or path.name.endswith(".gguf"):
            yield Found(name_of(path), path, store)


def _as_typed(path: Path) -> str:
    """A path relative to the working directory when it is below it, else as shown()."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return shown(path)


def _listing(folder: Path) -> list:
    try:
        return sorted(folder.iterdir())
    except OSError:
        return []
