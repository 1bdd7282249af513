"""The formats package: every in-memory weight form follows the declared StoredTensor
protocol and brings its own kernels; the matmul layer stands on formats, not on the
readers; keeping a GGUF file's quantisation is a load option, fixed at load."""

import importlib.util
import subprocess
import sys

import numpy as np
import pytest

import llama3_np
from llama3_np import kernels
from llama3_np.errors import InputError
from llama3_np.formats import StoredTensor
from llama3_np.formats.convert import to_dtype
from llama3_np.formats.gguf_blocks import QuantizedTensor
from llama3_np.formats.q4 import Q4
from tests.checkpoints.gguf import (byte_level_model_config, byte_level_tokenizer_metadata,
                                    random_blocks, write_llama_gguf)
from tests.conftest import REPO
from tests.tiny import random_weights

NEEDS_NUMBA = pytest.mark.skipif(importlib.util.find_spec("numba") is None,
                                 reason="numba is not installed")


@pytest.fixture(autouse=True)
def restore_backend():
    yield
    kernels.set_backend("auto")


@pytest.fixture(scope="module")
def q4_gguf(tmp_path_factory):
    config = byte_level_model_config()
    return write_llama_gguf(tmp_path_factory.mktemp("formats") / "q4_0.gguf", config,
                            random_weights(config), "Q4_0",
                            metadata=byte_level_tokenizer_metadata())


def every_form() -> list:
    w = np.random.default_rng(0).standard_normal((4, 64)).astype(np.float32)
    q4_0 = QuantizedTensor(random_blocks("Q4_0", 4, 64, np.random.default_rng(1)), "Q4_0")
    return [to_dtype(w, "bf16"), to_dtype(w, "q8"), to_dtype(q4_0, None), q4_0]


@pytest.mark.parametrize("form", every_form(), ids=repr)
def test_every_form_is_a_stored_tensor_with_its_own_kernels(form):
    assert isinstance(form, StoredTensor)
    assert form.take(slice(1, 3)).shape == (2, 64) and form.nbytes > 0
    tile = np.empty((2, 64), np.float32)
    form.tile_decoder(None)(1, tile)  # NumPy's decoding, no numba needed
    np.testing.assert_array_equal(tile, form.to_float32()[1:3])
    assert form.fused(None, 1) is None  # fused kernels exist only as compiled loops


def every_kept_form(rows: int, cols: int) -> list:
    w = np.random.default_rng(0).standard_normal((rows, cols)).astype(np.float32)
    kept = [to_dtype(QuantizedTensor(random_blocks(t, rows, cols, np.random.default_rng(1)),
                                     t), None) for t in ("Q8_0", "Q4_0", "Q4_1", "Q4_K")]
    return [to_dtype(w, "bf16"), to_dtype(w, "q8")] + kept


@NEEDS_NUMBA
@pytest.mark.parametrize("form", every_kept_form(37, 512), ids=repr)
def test_compiled_tile_decoders_give_numpys_bits(form):
    """The tiles BLAS multiplies (prefill, float32 x) hold exactly the stored values:
    each is one exact product (and one sum) whichever loop computes it."""
    from llama3_np import kernels_numba
    tile = np.empty((5, 512), np.float32)
    form.tile_decoder(kernels_numba)(30, tile)
    np.testing.assert_array_equal(tile, form.to_float32()[30:35])


def test_the_matmul_layer_does_not_import_the_readers():
    code = ("import sys, llama3_np.kernels, llama3_np.formats.convert; "
            "print(sorted(m for m in sys.modules if m.startswith('llama3_np.checkpoint')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                         text=True, check=True).stdout
    assert out.strip() == "[]"


def test_keeping_the_quantisation_is_a_load_option_whatever_the_backend(q4_gguf):
    wq = "layers.0.attention.wq.weight"
    kept = llama3_np.load(q4_gguf, backend="numpy", keep_quantized=True)
    assert isinstance(kept.weights[wq], Q4)
    assert "Q4_0 kept (4-bit kernel)" in kept.precision
    decoded = llama3_np.load(q4_gguf, backend="auto", keep_quantized=False)
    assert isinstance(decoded.weights[wq], np.ndarray)
    np.testing.assert_array_equal(decoded.weights[wq], kept.weights[wq].to_float32())


def test_keeping_the_quantisation_and_asking_for_a_dtype_is_refused(q4_gguf):
    with pytest.raises(InputError, match="keep_quantized .* dtype 'bf16'"):
        llama3_np.load(q4_gguf, dtype="bf16", keep_quantized=True)


@NEEDS_NUMBA
def test_set_backend_after_load_changes_no_weights_form(q4_gguf, float_activations):
    model = llama3_np.load(q4_gguf, backend="numba")
    before = dict(model.weights)
    logits = model.forward([1, 2, 3])
    kernels.set_backend("numpy")
    assert all(model.weights[name] is w for name, w in before.items())
    assert isinstance(model.weights["layers.0.attention.wq.weight"], Q4)
    # The numpy loops multiply the same Q4 weights: the same numbers, summed in another order.
    np.testing.assert_allclose(model.forward([1, 2, 3]), logits, rtol=1e-4, atol=1e-4)
