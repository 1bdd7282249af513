"""Models by name, from where people's tools keep them (llama3_np/locate.py, `run.py list`).

Each store is built in tmp_path exactly as its tool writes it: the Hugging Face cache with
refs/main and snapshots/<commit>/ files symlinked into blobs/; Ollama's JSON manifests and
blobs/sha256-<hex> GGUF files without an extension; Meta's ~/.llama/checkpoints/<name>/.
HOME and the tools' variables point into tmp_path, so nothing outside it is read."""

import hashlib
import importlib.util
import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

import llama3_np
from llama3_np import cli
from llama3_np.checkpoint.detect import detect_format, read_checkpoint
from llama3_np.config import from_meta_params
from llama3_np.errors import CheckpointError
from llama3_np.locate import hf_hub_cache, locate, meta_checkpoints, ollama_models
from tests.checkpoints.gguf import (byte_level_model_config, byte_level_tokenizer_metadata,
                                    write_llama_gguf)
from tests.tiny import random_weights, tiny_config

GGUF_MODEL = byte_level_model_config(max_seq_len=64)
HF_MODEL = tiny_config(dim=32, n_heads=4, n_kv_heads=2, ffn_dim=64, tie_embeddings=True)
META_PARAMS = dict(dim=16, n_layers=2, n_heads=2, n_kv_heads=1, vocab_size=128256,
                   multiple_of=16, rope_theta=500000.0)
COMMIT, OLD_COMMIT = "a" * 40, "b" * 40
TOOL_VARIABLES = ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME", "XDG_CACHE_HOME",
                  "OLLAMA_MODELS", "LLAMA_STACK_CONFIG_DIR")


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """An empty home directory, and no tool variables: every store at its default."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    for name in TOOL_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    return home


@pytest.fixture(scope="module")
def gguf_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("gguf") / "tiny.gguf"
    return write_llama_gguf(path, GGUF_MODEL, random_weights(GGUF_MODEL, seed=3), "Q8_0",
                            metadata=byte_level_tokenizer_metadata())


@pytest.fixture(scope="module")
def hf_files(tmp_path_factory, llama3_tokenizer_path) -> Path:
    """A Hugging Face checkpoint as the repo holds it, with Meta's tokenizer in original/."""
    from tests.checkpoints.hf import write_hf_checkpoint

    directory = tmp_path_factory.mktemp("hf")
    write_hf_checkpoint(directory, random_weights(HF_MODEL, seed=4), HF_MODEL, tied=True)
    (directory / "original").mkdir()
    shutil.copy(llama3_tokenizer_path, directory / "original" / "tokenizer.model")
    return directory


# ---- the stores, as their tools lay them out ----------------------------------------------

def hf_store(cache: Path, repo_id: str, files: dict, commit: str = COMMIT) -> Path:
    """huggingface_hub's layout: each file's content once in blobs/, the snapshot's files
    relative symlinks to them, refs/main holding the commit. files: name -> source file."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    for name, source in files.items():
        data = Path(source).read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = repo / "snapshots" / commit / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    return repo / "snapshots" / commit


def files_in(directory: Path) -> dict:
    return {str(p.relative_to(directory)): p for p in sorted(directory.rglob("*")) if p.is_file()}


def ollama_blob(root: Path, data: bytes) -> dict:
    digest = hashlib.sha256(data).hexdigest()
    (root / "blobs").mkdir(parents=True, exist_ok=True)
    (root / "blobs" / f"sha256-{digest}").write_bytes(data)
    return {"digest": f"sha256:{digest}", "size": len(data)}


def ollama_store(root: Path, name: str, gguf: Path, tag: str = "latest",
                 namespace: str = "library", host: str = "registry.ollama.ai") -> Path:
    """What `ollama pull` leaves: the GGUF, template and params as blobs, and a manifest."""
    layers = [{"mediaType": "application/vnd.ollama.image.model",
               **ollama_blob(root, gguf.read_bytes())},
              {"mediaType": "application/vnd.ollama.image.template",
               **ollama_blob(root, b"{{ .Prompt }}")},
              {"mediaType": "application/vnd.ollama.image.params",
               **ollama_blob(root, b'{"stop": ["<|eot_id|>"]}')}]
    manifest = {"schemaVersion": 2,
                "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                "config": {"mediaType": "application/vnd.docker.container.image.v1+json",
                           **ollama_blob(root, b'{"model_format": "gguf"}')},
                "layers": layers}
    path = root / "manifests" / host / namespace / name / tag
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(manifest))
    return path


def meta_store(folder: Path, tokenizer: Path) -> Path:
    """What Meta's `llama model download` leaves in ~/.llama/checkpoints/<name>/."""
    from tests.checkpoints.meta import write_meta_checkpoint

    config = from_meta_params(META_PARAMS, tie_embeddings=True)
    weights = {k: w for k, w in random_weights(config, seed=5).items() if k != "output.weight"}
    write_meta_checkpoint(folder, weights, META_PARAMS)
    shutil.copy(tokenizer, folder / "tokenizer.model")
    return folder


# ---- where the stores are -----------------------------------------------------------------

@pytest.mark.parametrize("variables, expected", [
    ({}, "home/.cache/huggingface/hub"),
    ({"XDG_CACHE_HOME": "xdg"}, "xdg/huggingface/hub"),
    ({"HF_HOME": "hf-home", "XDG_CACHE_HOME": "xdg"}, "hf-home/hub"),
    ({"HF_HUB_CACHE": "hub-cache", "HF_HOME": "hf-home"}, "hub-cache"),
])
def test_the_hub_cache_is_where_huggingface_hub_puts_it(home, monkeypatch, variables, expected):
    for name, value in variables.items():
        monkeypatch.setenv(name, str(home.parent / value))
    assert hf_hub_cache() == home.parent / expected


def test_ollama_and_meta_stores_follow_their_variables(home, monkeypatch, tmp_path):
    assert ollama_models() == home / ".ollama" / "models"
    assert meta_checkpoints() == home / ".llama" / "checkpoints"
    monkeypatch.setenv("OLLAMA_MODELS", str(tmp_path / "o"))
    monkeypatch.setenv("LLAMA_STACK_CONFIG_DIR", str(tmp_path / "stack"))
    assert ollama_models() == tmp_path / "o"
    assert meta_checkpoints() == tmp_path / "stack" / "checkpoints"


# ---- Hugging Face -------------------------------------------------------------------------

def test_a_repo_id_loads_the_snapshot_refs_main_names(home, hf_files, capsys):
    cache = home / ".cache" / "huggingface" / "hub"
    hf_store(cache, "meta-llama/Tiny-Llama", {"config.json": hf_files / "config.json"},
             commit=OLD_COMMIT)  # an older revision, no longer main
    snapshot = hf_store(cache, "meta-llama/Tiny-Llama", files_in(hf_files))
    assert (snapshot / "model.safetensors").is_symlink()
    assert locate("meta-llama/Tiny-Llama") == snapshot
    by_name = llama3_np.load("meta-llama/Tiny-Llama")
    by_path = llama3_np.load(hf_files)
    tokens = by_name.tokenizer.encode("The capital of France is", bos=True)
    np.testing.assert_array_equal(by_name.forward(tokens), by_path.forward(tokens))
    assert by_name.source == str(snapshot)
    # every command's --model takes names (these two read the checkpoint without loading it)
    assert cli.main(["info", "--model", "meta-llama/Tiny-Llama"]) == 0
    assert capsys.readouterr().out.startswith(f"source        {snapshot} (hf)\n")
    assert cli.main(["inspect", "--list", "--model", "meta-llama/Tiny-Llama"]) == 0
    assert re.search(r"^embeddings +\(seq, 32\)", capsys.readouterr().out, re.M)


def test_a_download_of_only_original_is_read_in_metas_format(home, hf_files, llama3_tokenizer_path):
    """`hf download meta-llama/X --include "original/*"` leaves only Meta's files."""
    meta = meta_store(home / "src", llama3_tokenizer_path)
    snapshot = hf_store(hf_hub_cache(), "meta-llama/Tiny-Llama",
                        {f"original/{name}": path for name, path in files_in(meta).items()})
    assert locate("meta-llama/Tiny-Llama") == snapshot / "original"
    assert detect_format(locate("meta-llama/Tiny-Llama")) == "meta"


def test_a_file_inside_a_cached_gguf_repo(home, gguf_file):
    snapshot = hf_store(hf_hub_cache(), "someone/Tiny-Llama-GGUF",
                        {"tiny-Q8_0.gguf": gguf_file, "tiny-Q4_0.gguf": gguf_file})
    assert locate("someone/Tiny-Llama-GGUF/tiny-Q8_0.gguf") == snapshot / "tiny-Q8_0.gguf"
    model = llama3_np.load("someone/Tiny-Llama-GGUF/tiny-Q8_0.gguf")
    assert model.config.dim == GGUF_MODEL.dim
    with pytest.raises(CheckpointError, match="several .gguf files"):
        read_checkpoint(locate("someone/Tiny-Llama-GGUF"))
    with pytest.raises(CheckpointError, match="has no tiny-Q2_K.gguf"):
        locate("someone/Tiny-Llama-GGUF/tiny-Q2_K.gguf")


def test_a_repo_not_in_the_cache_says_the_download_command(home, capsys):
    assert cli.main(["--model", "meta-llama/Llama-3.2-1B-Instruct", "hi"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: meta-llama/Llama-3.2-1B-Instruct: ")
    assert "the Hugging Face cache ~/.cache/huggingface/hub does not hold" in err
    assert ('`hf download meta-llama/Llama-3.2-1B-Instruct --exclude "original/consolidated*"`'
            in err)
    assert "hf auth login" in err
    with pytest.raises(CheckpointError, match=r'hf download bartowski/X-GGUF --include "\*Q8_0'):
        locate("bartowski/X-GGUF")


def test_a_local_path_wins_over_a_repo_id(home, tmp_path, monkeypatch, gguf_file):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "meta-llama").mkdir()
    shutil.copy(gguf_file, tmp_path / "meta-llama" / "model.gguf")
    hf_store(hf_hub_cache(), "meta-llama/model.gguf", {"config.json": gguf_file})
    assert locate("meta-llama/model.gguf") == Path("meta-llama/model.gguf")
    with pytest.raises(CheckpointError, match=r"^meta-llama/nope: no such file or directory$"):
        locate("meta-llama/nope")  # meta-llama/ is a local folder: a path, not a repo id
    with pytest.raises(CheckpointError, match=r"^elsewhere/model.gguf: no such file or "
                                              r"directory$"):
        locate("elsewhere/model.gguf")  # a file's name: a path, not a repo id


# ---- Ollama -------------------------------------------------------------------------------

def test_an_ollama_name_loads_the_gguf_blob_its_manifest_names(home, gguf_file, capsys):
    root = home / ".ollama" / "models"
    ollama_store(root, "tiny", gguf_file, tag="1b")
    blob = locate("ollama:tiny:1b")
    assert blob.parent == root / "blobs" and blob.name.startswith("sha256-")
    assert blob.suffix == "" and detect_format(blob) == "gguf"  # by its magic bytes
    assert cli.main(["--model", "ollama:tiny:1b", "--max-tokens", "3", "he"]) == 0
    numba = importlib.util.find_spec("numba") is not None  # backend auto: numba if there
    kept = "Q8_0 kept (q8 kernel)" if numba else "f32 (from Q8_0)"
    assert f"| weights: {kept}" in capsys.readouterr().err
    expected = llama3_np.load(gguf_file).generate("he", max_tokens=3).text
    assert llama3_np.load("ollama:tiny:1b").generate("he", max_tokens=3).text == expected


@pytest.mark.parametrize("name, parts", [
    ("tiny", ("registry.ollama.ai", "library", "tiny", "latest")),
    ("someone/tiny:q4", ("registry.ollama.ai", "someone", "tiny", "q4")),
    ("hf.co/someone/Tiny-GGUF:Q8_0", ("hf.co", "someone", "Tiny-GGUF", "Q8_0")),
])
def test_ollama_names_fill_in_ollamas_defaults(home, monkeypatch, tmp_path, gguf_file, name,
                                                parts):
    monkeypatch.setenv("OLLAMA_MODELS", str(tmp_path / "models"))
    host, namespace, model, tag = parts
    ollama_store(tmp_path / "models", model, gguf_file, tag, namespace, host)
    assert detect_format(locate(f"ollama:{name}")) == "gguf"


def test_ollama_errors_name_the_pull_command_or_the_broken_file(home, gguf_file):
    root = home / ".ollama" / "models"
    with pytest.raises(CheckpointError, match=r"^ollama:llama3.2:1b: Ollama has not pulled "
                                              r"llama3.2:1b .*; pull it with `ollama pull "
                                              r"llama3.2:1b`$"):
        locate("ollama:llama3.2:1b")
    manifest = ollama_store(root, "tiny", gguf_file)
    doc = json.loads(manifest.read_text())
    os.remove(root / "blobs" / doc["layers"][0]["digest"].replace(":", "-"))
    with pytest.raises(CheckpointError, match="which is missing"):
        locate("ollama:tiny")
    doc["layers"] = doc["layers"][1:]
    manifest.write_text(json.dumps(doc))
    with pytest.raises(CheckpointError, match="names no model layer"):
        locate("ollama:tiny")
    with pytest.raises(CheckpointError, match="is not an Ollama model name"):
        locate("ollama:a/b/c/d:1b")


# ---- Meta ---------------------------------------------------------------------------------

def test_a_name_in_metas_checkpoints_folder(home, llama3_tokenizer_path):
    folder = meta_store(home / ".llama" / "checkpoints" / "Llama3.2-Tiny", llama3_tokenizer_path)
    assert locate("Llama3.2-Tiny") == folder
    assert llama3_np.load("Llama3.2-Tiny").config.dim == META_PARAMS["dim"]
    with pytest.raises(CheckpointError, match=r"^Llama3.2-Huge: no such file or directory"):
        locate("Llama3.2-Huge")


# ---- GGUF by content ----------------------------------------------------------------------

def test_gguf_is_recognised_by_its_magic_not_its_name(tmp_path, gguf_file):
    renamed = tmp_path / "model.bin"
    shutil.copy(gguf_file, renamed)
    assert detect_format(renamed) == "gguf"
    other = tmp_path / "notes.bin"
    other.write_bytes(b"GGUx and more")
    with pytest.raises(CheckpointError, match="not a checkpoint"):
        detect_format(other)


# ---- run.py list --------------------------------------------------------------------------

def test_list_shows_each_llama_model_by_the_name_model_takes(home, hf_files, gguf_file,
                                                           llama3_tokenizer_path, tmp_path,
                                                           capsys):
    hf_store(hf_hub_cache(), "meta-llama/Tiny-Llama", files_in(hf_files))
    qwen = tmp_path / "qwen"
    qwen.mkdir()
    (qwen / "config.json").write_text(json.dumps({"model_type": "qwen2"}))
    (qwen / "model.safetensors").write_bytes(b"")
    hf_store(hf_hub_cache(), "Qwen/Qwen-Tiny", files_in(qwen))
    ollama_store(home / ".ollama" / "models", "tiny", gguf_file, tag="1b")
    meta_store(home / ".llama" / "checkpoints" / "Llama3.2-Tiny", llama3_tokenizer_path)
    (home / ".cache" / "huggingface" / "hub" / ".locks").mkdir()  # the cache's lock folder
    hf_store(hf_hub_cache(), "meta-llama/Half-Done", {"config.json": hf_files / "config.json"})

    assert cli.main(["list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = {line.split()[0]: line.split()[1:] for line in lines[1:] if line.strip()
            and not line.startswith("searched")}
    assert lines[0].split() == ["NAME", "FORMAT", "SIZE", "WHERE"]
    assert rows["meta-llama/Tiny-Llama"][0] == "hf"
    assert rows["ollama:tiny:1b"][:2] == ["gguf", "Q8_0"]
    assert rows["ollama:tiny:1b"][-1].startswith("~/.ollama/models/blobs/sha256-")
    assert rows["Llama3.2-Tiny"][0] == "meta"
    assert "Qwen/Qwen-Tiny" not in rows and "meta-llama/Half-Done" not in rows
    assert lines[-1].endswith("; not Llama: 1 qwen2")
    for name in ("meta-llama/Tiny-Llama", "ollama:tiny:1b", "Llama3.2-Tiny"):
        locate(name)  # each name listed is one --model takes


def test_list_with_no_stores_says_where_it_looked(home, monkeypatch, tmp_path, capsys):
    monkeypatch.setattr("llama3_np.cli.listing.WEIGHTS_DIR", tmp_path / "empty")
    assert cli.main(["list"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("no Llama models found; searched the Hugging Face cache "
                          "~/.cache/huggingface/hub, Ollama ~/.ollama/models")
