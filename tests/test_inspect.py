"""Inspection: the trace seam (names, shapes, decode steps), the logit lens, and
`run.py inspect` with its dump and plots."""

import contextlib
import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from llama3_np.cli import main
from llama3_np.cli.inspection import head_slice
from llama3_np.config import from_meta_params
from llama3_np.llama import Llama
from llama3_np.model import Transformer, softmax
from llama3_np.tokenizer import Tokenizer
from llama3_np.trace import Trace, logit_lens, step_axes, step_names, step_shape, token_label
from tests.tiny import random_weights, tiny_config

REPO = Path(__file__).resolve().parents[1]
TOKENS = [128000, 2028, 374, 264, 1296, 11914, 13]
PROMPT = "The capital of France is"

# The documented, stable names (README / api map): what scripts and --step globs rely on.
LAYER_STEPS = ["attention_norm", "attention.q", "attention.k", "attention.v",
               "attention.q_rotated", "attention.k_rotated", "attention.scores",
               "attention.masked_scores", "attention.probs", "attention.heads_out",
               "attention.out", "attention_residual", "ffn_norm", "ffn.gate", "ffn.up",
               "ffn.hidden", "ffn.out", "residual"]


def documented_names(n_layers: int) -> list:
    return (["tokens", "embeddings"]
            + [f"layers.{i}.{s}" for i in range(n_layers) for s in LAYER_STEPS]
            + ["norm", "logits"])


def traced_prefill_and_decode(config, weights, *patterns):
    """A 5-token prefill, then 2 decode steps of one token: three forward calls."""
    model = Transformer(config, weights)
    model.cache = model.new_cache()  # kept on the model only for the tests to look at
    with Trace(model, *patterns) as trace:
        model.forward(TOKENS[:5], cache=model.cache)
        model.forward(TOKENS[5:6], start_pos=5, cache=model.cache)
        model.forward(TOKENS[6:7], start_pos=6, cache=model.cache)
    return model, trace


# ---- the trace seam ----------------------------------------------------------------------

@pytest.mark.parametrize("overrides", [{}, dict(n_layers=3, n_kv_heads=4, tie_embeddings=True,
                                                rope_scaling=None)])
def test_every_listed_step_is_recorded_in_order_with_its_documented_shape(overrides):
    """The steps schema.py declares (names, order, axes) are exactly what model.py's trace
    calls record; the decode calls (seq 1, total 6 and 7) give every axis a size no other
    axis has, so a wrong axis in the declaration shows."""
    config = tiny_config(**overrides)
    _, trace = traced_prefill_and_decode(config, random_weights(config))
    assert step_names(config) == documented_names(config.n_layers)
    for step, (seq, total) in zip(trace.steps, [(5, 5), (1, 6), (1, 7)]):
        assert list(step) == step_names(config)  # walk-through order, nothing unlisted
        for name, tensor in step.items():
            assert tensor.shape == step_shape(config, name, seq, total), name
            assert tensor.dtype == (np.int64 if name == "tokens" else np.float32), name


def test_axes_are_named_by_what_they_run_along():
    axes = step_axes(tiny_config())
    assert axes["layers.1.attention.scores"] == ("n_heads", "seq", "total")
    assert axes["layers.0.attention.k_rotated"] == ("seq", "n_kv_heads", "head_dim")
    assert axes["layers.0.ffn.hidden"] == ("seq", "ffn_dim")
    assert axes["logits"] == ("seq", "vocab_size")
    assert step_shape(tiny_config(), "layers.0.attention.q") == ("seq", 4, 16)


def test_decode_steps_are_kept_apart():
    config = tiny_config()
    weights = random_weights(config)
    model, trace = traced_prefill_and_decode(config, weights, "layers.1.attention.*", "logits")
    assert len(trace.steps) == 3
    assert [list(s["tokens"]) for s in trace.steps] == [TOKENS[:5], TOKENS[5:6], TOKENS[6:7]]
    assert trace["layers.1.attention.probs"] is trace.steps[2]["layers.1.attention.probs"]
    # Only the chosen steps (and the tokens, always) were kept.
    assert set(trace.names()) == {"tokens", "logits"} | {
        f"layers.1.{s}" for s in LAYER_STEPS if s.startswith("attention.")}
    # Each call's tensors are its own copies: the same as a model that ran only that call.
    fresh = Transformer(config, weights)
    with Trace(fresh, "layers.1.attention.k_rotated") as alone:
        fresh.forward(TOKENS[:5])
    np.testing.assert_array_equal(trace.steps[0]["layers.1.attention.k_rotated"],
                                  alone["layers.1.attention.k_rotated"])
    # A decode step's keys are what the cache holds at its position.
    np.testing.assert_array_equal(trace.steps[1]["layers.1.attention.k_rotated"][0],
                                  model.cache.keys[1][:, 5])
    assert model.trace is fresh.trace  # the default no-op is back after the with block


def test_probabilities_are_normalised_and_masked_entries_exactly_zero():
    config = tiny_config()
    _, trace = traced_prefill_and_decode(config, random_weights(config), "*.masked_scores",
                                         "*.probs")
    for step in trace.steps:
        for i in range(config.n_layers):
            masked, probs = step[f"layers.{i}.attention.masked_scores"], \
                step[f"layers.{i}.attention.probs"]
            # float32 softmax over <= 7 terms: rounding of a few ulps.
            np.testing.assert_allclose(probs.sum(-1), 1, rtol=0, atol=1e-6)
            assert np.all(probs[np.isneginf(masked)] == 0)
            assert np.all(probs[np.isfinite(masked)] > 0)
    prefill = trace.steps[0]["layers.0.attention.masked_scores"]  # the causal mask itself
    assert np.array_equal(np.isneginf(prefill[0]), np.triu(np.ones((5, 5), bool), 1))


def test_head_slice_maps_query_heads_to_their_shared_kv_head():
    config = tiny_config()  # 4 query heads, 2 kv heads: heads 2 and 3 read kv head 1
    _, trace = traced_prefill_and_decode(config, random_weights(config), "layers.0.*")
    axes, step = step_axes(config), trace.steps[0]
    k, probs = step["layers.0.attention.k"], step["layers.0.attention.probs"]
    np.testing.assert_array_equal(head_slice(k, axes["layers.0.attention.k"], 3, 2), k[:, 1])
    np.testing.assert_array_equal(
        head_slice(probs, axes["layers.0.attention.probs"], 3, 2), probs[3])
    norm = step["layers.0.attention_norm"]
    assert head_slice(norm, axes["layers.0.attention_norm"], 3, 2) is norm


# ---- the logit lens ----------------------------------------------------------------------

def test_logit_lens_last_layer_is_the_models_own_prediction():
    config = tiny_config()
    weights = random_weights(config)
    model = Transformer(config, weights)
    with Trace(model, "layers.*.residual") as trace:
        logits = model.forward(TOKENS)
    lens = logit_lens(model, trace)
    assert lens.token_ids.shape == lens.probs.shape == (config.n_layers, len(TOKENS))
    np.testing.assert_array_equal(lens.token_ids[-1], np.argmax(logits, axis=-1))
    # The same operations on the same numbers: identical, not merely close.
    np.testing.assert_array_equal(lens.probs[-1], softmax(logits).max(axis=-1))


def test_logit_lens_middle_layer_equals_a_model_cut_after_that_layer():
    config = tiny_config(n_layers=3)
    weights = random_weights(config)
    model = Transformer(config, weights)
    with Trace(model, "layers.*.residual") as trace:
        model.forward(TOKENS)
    lens = logit_lens(model, trace)
    cut = tiny_config(n_layers=2)
    logits = Transformer(cut, {n: weights[n] for n in random_weights(cut)}).forward(TOKENS)
    np.testing.assert_array_equal(lens.token_ids[1], np.argmax(logits, axis=-1))
    # Same operations, but a model of a different size: float32 rounding at most.
    np.testing.assert_allclose(lens.probs[1], softmax(logits).max(axis=-1), rtol=1e-5)
    assert not np.array_equal(lens.token_ids[0], lens.token_ids[2])  # the lens sees change


def test_logit_lens_says_which_step_is_missing():
    config = tiny_config()
    model = Transformer(config, random_weights(config))
    with Trace(model, "logits") as trace:
        model.forward(TOKENS[:3])
    with pytest.raises(KeyError, match="layers.0.residual"):
        logit_lens(model, trace)


# ---- the command line on a tiny checkpoint -----------------------------------------------

@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """A 2-layer Meta checkpoint (tied embeddings, so no output.weight) and its weights."""
    from tests.checkpoints.meta import write_meta_checkpoint

    params = dict(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=128256,
                  multiple_of=32, norm_eps=1e-5, rope_theta=500000.0, use_scaled_rope=True)
    config = from_meta_params(params, tie_embeddings=True)
    weights = random_weights(config, seed=3)
    stored = {n: w for n, w in weights.items() if n != "output.weight"}
    directory = write_meta_checkpoint(tmp_path_factory.mktemp("tiny"), stored, params,
                                      dtype="float32")
    return directory, config, weights


@pytest.fixture(scope="module")
def tiny_run(tiny_checkpoint, llama3_tokenizer_path, tmp_path_factory):
    """`inspect --dump --plot` on the tiny checkpoint:
    (exit code, stdout, stderr, dump, plot dir)."""
    directory = tiny_checkpoint[0]
    out = tmp_path_factory.mktemp("inspect")
    argv = ["inspect", "--model", str(directory), "--tokenizer", str(llama3_tokenizer_path),
            "--dump", str(out / "steps.npz"), "--plot", str(out / "plots"), "--top", "3",
            PROMPT]
    stdout, stderr = io.StringIO(), io.StringIO()  # capsys is per test; this serves several
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = main(argv)
    return code, stdout.getvalue(), stderr.getvalue(), out / "steps.npz", out / "plots"


def tiny_llama(tiny_checkpoint, llama3_tokenizer_path) -> Llama:
    _, config, weights = tiny_checkpoint
    return Llama(config, weights, Tokenizer.from_tiktoken_file(llama3_tokenizer_path))


def test_cli_prints_every_step_then_tokens_then_predictions(tiny_run, tiny_checkpoint,
                                                            llama3_tokenizer_path):
    code, out, _, _, _ = tiny_run
    assert code == 0
    lines = out.splitlines()
    printed = [line.split()[0] for line in lines if line.startswith(("tokens ", "embeddings ",
                                                                      "layers.", "norm ",
                                                                      "logits "))]
    assert printed == documented_names(2)  # 2 layers: both in full, in walk-through order
    assert max(map(len, lines)) <= 100
    model = tiny_llama(tiny_checkpoint, llama3_tokenizer_path)
    tokens = model.encode_prompt(PROMPT)
    probs = softmax(model.forward(tokens)[-1])
    best = np.argsort(-probs)[:3]
    assert lines[-4] == "top 3 next tokens:"
    for line, token in zip(lines[-3:], best):  # rank, text, probability, id
        assert line.endswith(f"(id {token})") and f"{probs[token]:8.4f}" in line
    assert "  ".join(f"{t}:'{token_label(model.tokenizer, t)}'" for t in tokens) in out
    embeddings = lines[printed_index(lines, "embeddings")]
    x = model.weights["tok_embeddings.weight"][tokens]
    assert embeddings.split()[-4:] == [f"{v:.3g}" for v in (x.mean(), x.std(), x.min(), x.max())]


def printed_index(lines: list, name: str) -> int:
    return next(i for i, line in enumerate(lines) if line.split()[:1] == [name])


def test_dump_round_trips_every_recorded_tensor(tiny_run, tiny_checkpoint, llama3_tokenizer_path):
    _, _, err, dump, _ = tiny_run
    assert f"saved {len(documented_names(2))} tensors to {dump}" in err
    model = tiny_llama(tiny_checkpoint, llama3_tokenizer_path)
    with model.trace() as trace:
        model.forward(model.encode_prompt(PROMPT))
    with np.load(dump) as saved:
        assert sorted(saved.files) == sorted(documented_names(2))
        for name in saved.files:
            np.testing.assert_array_equal(saved[name], trace[name])


def test_plots_are_readable_png_files(tiny_run):
    import matplotlib.image

    _, _, err, _, plots = tiny_run
    names = sorted(p.name for p in plots.iterdir())
    assert names == ["attention_layer00.png", "attention_layer01.png", "logit_lens.png",
                     "norm.png", "rope.png"]
    assert f"wrote 5 pictures to {plots}" in err
    for path in plots.iterdir():
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        image = matplotlib.image.imread(path)
        assert image.ndim == 3 and image.shape[0] >= 200 and image.shape[1] >= 300, path
        assert image[..., :3].std() > 0.05, f"{path} is blank"


def test_filters_choose_layers_heads_and_steps(tiny_checkpoint, llama3_tokenizer_path, capsys):
    argv = ["inspect", "--model", str(tiny_checkpoint[0]), "--tokenizer",
            str(llama3_tokenizer_path), "--layer", "-1", "--step", "*.probs", "--step", "*.k",
            "--head", "3", PROMPT]
    assert main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    shown = [line.split()[:2] for line in lines if line.startswith("layers.")]
    seq = len(tiny_llama(tiny_checkpoint, llama3_tokenizer_path).encode_prompt(PROMPT))
    assert shown == [["layers.1.attention.k", f"({seq},"], ["layers.1.attention.probs", f"({seq},"]]
    probs_row = lines[printed_index(lines, "layers.1.attention.probs")]
    assert probs_row.split()[1:3] == [f"({seq},", f"{seq})"]  # one head: (seq, total)


@pytest.mark.parametrize("option, message", [
    (["--layer", "2"], "--layer 2: the model has 2 layers"),
    (["--layer", "x"], "--layer wants layer numbers"),
    (["--head", "4"], "--head 4: the model has 4 query heads"),
    (["--step", "*.nothing"], "matches no step"),
    (["--top", "0"], "--top must be between 1"),
])
def test_bad_options_are_one_line_errors(tiny_checkpoint, llama3_tokenizer_path, capsys,
                                         option, message):
    argv = ["inspect", "--model", str(tiny_checkpoint[0]), "--tokenizer",
            str(llama3_tokenizer_path), *option, PROMPT]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1


def test_plot_without_matplotlib_says_how_to_install_it(tiny_checkpoint, llama3_tokenizer_path,
                                                         capsys, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` fail
    argv = ["inspect", "--model", str(tiny_checkpoint[0]), "--tokenizer",
            str(llama3_tokenizer_path), "--plot", str(tmp_path / "plots"), PROMPT]
    assert main(argv) == 1
    assert "pip install matplotlib" in capsys.readouterr().err
    assert not (tmp_path / "plots").exists()


# ---- the command line on the demo model --------------------------------------------------

def run_cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "run.py"), "inspect", *args],
                          capture_output=True, text=True, cwd=REPO, timeout=300)


def test_cli_on_the_demo_model(demo_model_path):
    result = run_cli("--model", str(demo_model_path), "--step", "*.probs", "--layer", "0", PROMPT)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert [line.split()[:2] for line in lines if line.startswith("layers.")] == \
        [["layers.0.attention.probs", "(9,"]]  # SmolLM2: 9 query heads
    assert lines[-6] == "top 5 next tokens:"
    assert "' Paris'" in lines[-5]  # what transformers' reference also predicts
    assert max(map(len, lines)) <= 100


def test_list_prints_every_step_with_its_shape(demo_model_path):
    result = run_cli("--model", str(demo_model_path), "--list")
    assert result.returncode == 0, result.stderr
    rows = [line.split(None, 1) for line in result.stdout.splitlines()
            if line.split()[:1] and line.split()[0] in documented_names(30)]
    assert [name for name, _ in rows] == documented_names(30)  # SmolLM2: 30 layers
    shapes = dict(rows)
    assert shapes["layers.29.attention.probs"].startswith("(9, seq, total)")
    assert shapes["layers.0.attention.k"].startswith("(seq, 3, 64)")
    assert shapes["logits"].startswith("(seq, 49152)")
