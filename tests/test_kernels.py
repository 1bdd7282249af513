"""kernels.linear against float64 math on the dequantised weight; the formats package's
Q8 and Q4 forms and to_dtype conversions; the path without numba; threads.configure_threads."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import llama3_np
from llama3_np import kernels, threads
from llama3_np.checkpoint.detect import read_checkpoint
from llama3_np.errors import CheckpointError, InputError
from llama3_np.formats import convert, fused_matmul, int8_matmul
from llama3_np.formats.bf16 import BF16, bf16_bits_to_float32, float32_to_bf16_bits
from llama3_np.formats.convert import new_bytes, to_dtype
from llama3_np.formats.gguf_blocks import QuantizedTensor
from llama3_np.formats.q4 import Q4, SuperScales
from llama3_np.formats.q8 import Q8, dequantize_q8, quantize_q8
from llama3_np.threads import configure_threads
from tests.checkpoints.gguf import (byte_level_model_config, byte_level_tokenizer_metadata,
                                    random_blocks, write_llama_gguf)
from tests.tiny import random_weights

HAVE_NUMBA = importlib.util.find_spec("numba") is not None
NEEDS_NUMBA = pytest.mark.skipif(not HAVE_NUMBA, reason="numba is not installed")
BACKENDS = ["numpy", pytest.param("numba", marks=NEEDS_NUMBA)]
U32 = 2.0 ** -24  # float32 unit roundoff
N_OUT, N_IN = 67, 544  # 17 Q8 blocks a row; 67 rows: a prime, so tiles end ragged
N_IN_K = 256  # K-quants (Q4_K) come in super-blocks of 256 values
GGUF_KINDS = ["gguf_q8_0", "gguf_q4_0", "gguf_q4_1", "gguf_q4_k", "gguf_q5_0"]
# Weights the integer kernels multiply: q8 (float32 scales), Q8_0 (the file's float16
# scales) and the 4-bit forms.
INT8_KINDS = ["q8", "gguf_q8_0", "gguf_q4_0", "gguf_q4_1", "gguf_q4_k"]


@pytest.fixture(autouse=True)
def restore_backend(float_activations):
    """Each test starts on float32 activations (the default, whose arithmetic
    assert_matches_float64 bounds); the int8 ones have their own tests below, the bf16
    ones theirs in test_kernels_bf16.py."""
    yield
    kernels.set_backend("auto")


@pytest.fixture
def small_tiles(monkeypatch):
    """Tiles of 10 weight rows: 6 full tiles and a partial one for N_OUT rows."""
    monkeypatch.setattr(kernels, "_TILE_VALUES", 10 * N_IN)


def random_matrix(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def gguf_blocks(kind: str, n_rows: int, n_cols: int, seed=0) -> QuantizedTensor:
    """A valid GGUF tensor: float16 scales (finite), random quantised bytes."""
    rng = np.random.default_rng(seed)
    n_blocks = n_rows * n_cols // 32
    scales = (rng.uniform(0.001, 0.05, (n_blocks, 1))).astype("<f2").view(np.uint8)
    payload = rng.integers(0, 256, (n_blocks, 32 if kind == "Q8_0" else 16), dtype=np.uint8)
    raw = np.concatenate([scales, payload], axis=1).reshape(n_rows, -1)
    return QuantizedTensor(raw, kind)


def weight_in(dtype: str, w: np.ndarray):
    """w in the in-memory form `dtype`, and that form decoded to float32. "gguf_X": random
    GGUF blocks of type X in w's shape, as load() keeps them: Q8_0 becomes a Q8 (float16
    scales), Q4_0, Q4_1, Q4_K a Q4; Q5_0 has no kernel of its own and stays a stored
    tensor."""
    if dtype == "f16":
        stored = w.astype(np.float16)
    elif dtype.startswith("gguf_"):
        kind = dtype[len("gguf_"):].upper()
        blocks = QuantizedTensor(random_blocks(kind, *w.shape, np.random.default_rng(5)), kind)
        stored = blocks if kind == "Q5_0" else to_dtype(blocks, None)
    else:
        stored = to_dtype(w, dtype)
    return stored, np.asarray(stored if isinstance(stored, np.ndarray) else
                              stored.to_float32(), dtype=np.float32)


def assert_matches_float64(y, x, w_float32):
    """Float32 sums of K products, in any order, stay within a few roundoffs times
    sqrt(K) of the float64 value relative to sum_j |x_j w_ij| (random-walk growth of
    rounding errors; the worst case K * u is never approached by random data)."""
    k = x.shape[-1]
    exact = x.astype(np.float64) @ w_float32.T.astype(np.float64)
    scale = np.abs(x).astype(np.float64) @ np.abs(w_float32).T.astype(np.float64)
    assert y.dtype == np.float32 and y.shape == exact.shape
    np.testing.assert_array_less(np.abs(y - exact), 4 * U32 * np.sqrt(k) * scale + 1e-30)


# 1 and 7 rows: a token, a short prompt (numba: fused kernels); more: decoded tiles.
ROW_COUNTS = [1, 7, kernels._FUSED_MAX_ROWS + 1]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", ["f32", "bf16", "q8", "f16"] + GGUF_KINDS)
@pytest.mark.parametrize("n_rows", ROW_COUNTS)
def test_linear_matches_float64_on_the_decoded_weight(backend, dtype, n_rows, small_tiles):
    kernels.set_backend(backend)
    n_in = 2 * N_IN_K if dtype == "gguf_q4_k" else N_IN
    w, w_float32 = weight_in(dtype, random_matrix((N_OUT, n_in)))
    x = random_matrix((n_rows, n_in), seed=1)
    assert_matches_float64(kernels.linear(x, w), x, w_float32)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", ["bf16", "f16"])
@pytest.mark.parametrize("n_rows", [1, 7])
def test_linear_row_length_not_a_multiple_of_the_vector_width(backend, dtype, n_rows):
    kernels.set_backend(backend)
    w, w_float32 = weight_in(dtype, random_matrix((5, 37)))
    x = random_matrix((n_rows, 37), seed=1)
    assert_matches_float64(kernels.linear(x, w), x, w_float32)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", ["f32", "bf16", "q8"])
def test_linear_keeps_the_leading_shape_of_x(backend, dtype):
    kernels.set_backend(backend)
    w, w_float32 = weight_in(dtype, random_matrix((12, 64)))
    for x_shape in [(64,), (1, 64), (2, 3, 64)]:
        x = random_matrix(x_shape, seed=2)
        y = kernels.linear(x, w)
        assert y.shape == x_shape[:-1] + (12,)
        assert_matches_float64(y.reshape(-1, 12), x.reshape(-1, 64), w_float32)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("n_rows", ROW_COUNTS)
def test_linear_reads_weights_from_read_only_memory(backend, n_rows):
    """Weights memory-mapped from a checkpoint are read-only arrays."""
    kernels.set_backend(backend)
    w = to_dtype(random_matrix((9, 64)), "bf16")
    w.bits.flags.writeable = False
    x = random_matrix((n_rows, 64), seed=3)
    assert_matches_float64(kernels.linear(x, w), x, w.to_float32())


@NEEDS_NUMBA
@pytest.mark.parametrize("dtype", ["bf16", "q8", "gguf_q8_0", "gguf_q4_1", "gguf_q4_k"])
@pytest.mark.parametrize("n_rows", [1, 2, 3, "most"])
def test_numba_multiplies_few_rows_without_decoding_weights(dtype, n_rows, monkeypatch):
    """The point of the numba backend: a token (or a short prompt) never decodes weights
    to memory. Odd and even counts: rows of x go through the kernels in pairs. "most":
    as many rows as the form's fused loop takes (float32 x: Q4's is fewer)."""
    from llama3_np.formats.q4 import Q4_FLOAT_FUSED_MAX_ROWS

    if n_rows == "most":
        n_rows = Q4_FLOAT_FUSED_MAX_ROWS if dtype.startswith("gguf_q4") \
            else kernels._FUSED_MAX_ROWS

    def no_tiles(*args):
        raise AssertionError(f"decoded weight tiles for {n_rows} row(s)")
    monkeypatch.setattr(kernels, "_tiled_matmul", no_tiles)
    kernels.set_backend("numba")
    n_in = 2 * N_IN_K if dtype == "gguf_q4_k" else N_IN
    w, w_float32 = weight_in(dtype, random_matrix((N_OUT, n_in)))
    x = random_matrix((n_rows, n_in), seed=6)
    assert_matches_float64(kernels.linear(x, w), x, w_float32)


def test_linear_rejects_a_feature_mismatch():
    with pytest.raises(ValueError, match="x has 63 features"):
        kernels.linear(random_matrix((1, 63)), to_dtype(random_matrix((4, 64)), "bf16"))


# --- backends and threads ----------------------------------------------------------

def test_unknown_backend_and_thread_count_are_input_errors():
    with pytest.raises(InputError, match="'cuda'"):
        kernels.set_backend("cuda")
    with pytest.raises(InputError, match="at least 1"):
        kernels.set_threads(0)


def test_without_numba_auto_falls_back_to_numpy(monkeypatch):
    """numba missing: `import numba` fails, as on a machine without it."""
    monkeypatch.setitem(sys.modules, "numba", None)
    monkeypatch.delitem(sys.modules, "llama3_np.kernels_numba", raising=False)
    monkeypatch.delattr(llama3_np, "kernels_numba", raising=False)
    monkeypatch.setattr(kernels, "_numba_state", {})
    kernels.set_backend("auto")
    assert kernels.active_backend() == "numpy"
    with pytest.raises(InputError, match="needs the numba package"):
        kernels.set_backend("numba")
    kernels.warmup()  # nothing to compile, must not fail
    kernels.set_threads(1)
    for dtype in ("bf16", "q8", "gguf_q4_1"):
        w, w_float32 = weight_in(dtype, random_matrix((20, 64)))
        for n_rows in (1, 7):
            x = random_matrix((n_rows, 64), seed=4)
            assert_matches_float64(kernels.linear(x, w), x, w_float32)


@NEEDS_NUMBA
def test_auto_uses_numba_when_installed():
    kernels.set_backend("auto")
    assert kernels.active_backend() == "numba"
    kernels.warmup()


@NEEDS_NUMBA
def test_numba_runs_on_openmp_that_sleeps_after_a_short_spin_when_libgomp_is_there():
    """A decode step starts ~80 parallel regions: OpenMP starts one in microseconds,
    numba's workqueue in tens of them (kernels_numba.py). Checked in a fresh process, as
    the layer is chosen once, at the first parallel call."""
    code = ("import os, numba, numpy as np\n"
            "from llama3_np import kernels_numba\n"
            "kernels_numba.matmul_bf16(np.ones((1, 64), np.float32), np.zeros((2, 64), np.uint16),"
            " np.empty((1, 2), np.float32))\n"
            "print(numba.threading_layer(), os.environ['GOMP_SPINCOUNT'])")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("NUMBA_THREADING_LAYER", "GOMP_"))}
    try:
        from numba.np.ufunc import omppool  # noqa: F401  (fails without libgomp)
        expected = "omp"
    except ImportError:
        expected = "workqueue"
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                            text=True, cwd=Path(__file__).resolve().parents[1])
    assert result.returncode == 0, result.stderr
    from llama3_np.kernels_numba import SPIN_COUNT
    assert result.stdout.split() == [expected, SPIN_COUNT]


def test_configure_threads_sets_blas_and_numba_variables_unless_user_set(monkeypatch):
    for variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                     "NUMBA_NUM_THREADS", "OPENBLAS_THREAD_TIMEOUT"):
        monkeypatch.setenv(variable, "")  # so monkeypatch restores it afterwards ...
        monkeypatch.delenv(variable)  # ... and unset, as in a fresh shell
    monkeypatch.setenv("MKL_NUM_THREADS", "5")
    monkeypatch.setattr(threads, "available_cores", lambda: 8)  # 3 is not capped
    picked_up = configure_threads(3)
    assert picked_up is False  # NumPy is imported already in this process
    assert [os.environ[v] for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                    "NUMBA_NUM_THREADS")] == ["3", "3", "3"]
    assert os.environ["MKL_NUM_THREADS"] == "5"
    assert os.environ["OPENBLAS_THREAD_TIMEOUT"] == "4"
    with pytest.raises(InputError):
        configure_threads(0)


# --- Q8 ------------------------------------------------------------------------------

def test_q8_error_is_at_most_half_a_step_per_block():
    rng = np.random.default_rng(5)
    magnitudes = 10.0 ** rng.uniform(-4, 3, (40, 8, 1))  # blocks of very different scale
    w = (rng.standard_normal((40, 8, 32)) * magnitudes).astype(np.float32)
    w[0, 0] = 0  # an all-zero block
    w[1, 1] = 0
    w[1, 1, 7] = -3.0  # a single non-zero value
    w = w.reshape(40, 256)
    q = quantize_q8(w)
    assert q.values.dtype == np.int8 and q.scales.dtype == np.float32
    assert q.shape == (40, 256) and q.scales.shape == (40, 8)
    error = np.abs(w - q.to_float32()).reshape(40, 8, 32)
    # Half a step from rounding, plus float32 roundoff of w / scale and of q * scale
    # (each at most u * 127.5 steps).
    bound = (q.scales * (0.5 + 256 * U32))[..., None]
    np.testing.assert_array_less(error, np.broadcast_to(bound, error.shape) + 1e-30)
    largest = np.abs(q.values.reshape(40, 8, 32)).max(axis=-1)
    assert (largest[q.scales > 0] == 127).all()  # each block uses the full range
    assert q.scales[0, 0] == 0 and not q.values[0, :32].any()
    assert q.values[1, 32 + 7] == -127 and q.scales[1, 1] == np.float32(3.0 / 127)


def test_q8_take_and_dequantize_into_a_buffer():
    q = quantize_q8(random_matrix((10, 64)))
    rows = np.array([7, 2, 2])
    np.testing.assert_array_equal(q.take(rows).to_float32(), q.to_float32()[rows])
    out = np.empty((10, 64), dtype=np.float32)
    assert dequantize_q8(q.values, q.scales, out=out) is out
    np.testing.assert_array_equal(out, q.to_float32())


def test_quantize_q8_refuses_bad_rows_and_non_finite_values():
    with pytest.raises(InputError, match=r"wq \(4, 40\).*multiple of 32"):
        quantize_q8(random_matrix((4, 40)), name="wq")
    bad = random_matrix((2, 64))
    bad[1, 5] = np.nan
    with pytest.raises(CheckpointError, match="NaN or infinite"):
        quantize_q8(bad)


# --- to_dtype ------------------------------------------------------------------------

def test_to_dtype_keeps_a_tensor_already_in_the_asked_form():
    w = random_matrix((8, 64))
    bf16, q8 = to_dtype(w, "bf16"), to_dtype(w, "q8")
    assert to_dtype(w, "f32") is w
    assert to_dtype(bf16, "bf16") is bf16
    assert to_dtype(q8, "q8") is q8


def test_to_dtype_round_trips(monkeypatch):
    monkeypatch.setattr(convert, "_CONVERT_CHUNK_VALUES", 3 * 64)  # 3 rows a chunk
    w = random_matrix((8, 64))
    bf16 = to_dtype(w, "bf16")
    assert isinstance(bf16, BF16)
    np.testing.assert_array_equal(bf16.bits, float32_to_bf16_bits(w))
    np.testing.assert_array_equal(to_dtype(bf16, "f32"), bf16_bits_to_float32(bf16.bits))
    np.testing.assert_allclose(bf16.to_float32(), w, rtol=2.0 ** -8, atol=0)  # bf16: 8-bit mantissa
    q8 = to_dtype(w, "q8")
    reference = quantize_q8(w)
    np.testing.assert_array_equal(q8.values, reference.values)
    np.testing.assert_array_equal(q8.scales, reference.scales)
    np.testing.assert_array_equal(to_dtype(q8, "f32"), reference.to_float32())
    from_bf16 = to_dtype(bf16, "q8")  # converted chunk by chunk through float32
    np.testing.assert_array_equal(from_bf16.values, quantize_q8(bf16.to_float32()).values)
    np.testing.assert_array_equal(to_dtype(w.astype(np.float16), "f32"),
                                  w.astype(np.float16).astype(np.float32))


@pytest.mark.parametrize("dtype", ["f32", "bf16", "q8"])
def test_to_dtype_keeps_vectors_float32(dtype):
    gain = random_matrix((64,))
    for stored in (gain, gain.astype(np.float16), BF16(float32_to_bf16_bits(gain))):
        kept = to_dtype(stored, dtype)
        assert isinstance(kept, np.ndarray) and kept.dtype == np.float32
        np.testing.assert_array_equal(kept, np.asarray(stored if isinstance(stored, np.ndarray)
                                                       else stored.to_float32(), np.float32))


@pytest.mark.parametrize("dtype", [None, "q8"])
def test_gguf_q8_0_becomes_q8_exactly_by_default_and_as_q8(dtype):
    tensor = gguf_blocks("Q8_0", 6, 96)
    kept = to_dtype(tensor, dtype)
    assert isinstance(kept, Q8) and kept.scales.dtype == np.float16  # the file's, as stored
    np.testing.assert_array_equal(kept.to_float32(), tensor.to_float32())


@pytest.mark.parametrize("kind", ["Q4_0", "Q4_1", "Q4_K"])
def test_gguf_4_bit_formats_become_q4_exactly_by_default(kind, monkeypatch):
    monkeypatch.setattr(convert, "_CONVERT_CHUNK_VALUES", 2 * 512)  # 2 rows a chunk
    tensor = QuantizedTensor(random_blocks(kind, 6, 512, np.random.default_rng(7)), kind)
    kept = to_dtype(tensor, None)
    assert isinstance(kept, Q4) and kept.shape == (6, 512)
    np.testing.assert_array_equal(kept.to_float32(), tensor.to_float32())
    np.testing.assert_array_equal(kept.take(slice(2, 4)).to_float32(),
                                  tensor.to_float32()[2:4])


def test_gguf_q4_k_keeps_its_two_levels_of_scales_in_under_0_58_bytes_a_weight():
    """Q4_K's 6-bit scale and min codes stay a byte each per 32 values, under the file's
    float16 d and -dmin per 256 (SuperScales): 0.578 bytes a weight, where float32
    products per block took 0.75; the values stay exactly the decoder's."""
    tensor = QuantizedTensor(random_blocks("Q4_K", 4, 512, np.random.default_rng(8)), "Q4_K")
    kept = to_dtype(tensor, None)
    assert isinstance(kept.scales, SuperScales) and isinstance(kept.mins, SuperScales)
    assert kept.scales.codes.dtype == np.uint8 and kept.scales.codes.max() < 64
    assert kept.nbytes / (4 * 512) == 0.5 + 2 * (1 / 32 + 2 / 256) == 0.578125
    assert new_bytes(tensor, None) == kept.nbytes
    np.testing.assert_array_equal(kept.to_float32(), tensor.to_float32())


def test_q4_refuses_scales_of_different_kinds_and_misshapen_super_blocks():
    packed = np.zeros((2, 256), np.uint8)
    codes, supers = np.zeros((2, 16), np.uint8), np.ones((2, 2), np.float16)
    with pytest.raises(TypeError, match="same kind"):
        Q4(packed, SuperScales(codes, supers), np.ones((2, 16), np.float16))
    with pytest.raises(TypeError, match="come with SuperScales mins"):
        Q4(packed, SuperScales(codes, supers))  # the row dots need Q4_K's mins
    with pytest.raises(ValueError, match="one super per 8 codes"):
        Q4(packed, SuperScales(codes, supers[:, :1]), SuperScales(codes, supers[:, :1]))


@pytest.mark.parametrize("backend", BACKENDS)
def test_load_keeps_gguf_quantisation_only_where_the_numba_kernels_run(backend, tmp_path):
    """Without the fused kernels NumPy would decode a Q4 matrix for every product, slower
    than multiplying float32: then GGUF matrices are converted to the dtype asked."""
    config = byte_level_model_config()
    path = write_llama_gguf(tmp_path / "q4_0.gguf", config, random_weights(config), "Q4_0",
                            metadata=byte_level_tokenizer_metadata())
    wq = llama3_np.load(path, backend=backend).weights["layers.0.attention.wq.weight"]
    decoded = read_checkpoint(path).tensors["layers.0.attention.wq.weight"].to_float32()
    assert isinstance(wq, Q4 if backend == "numba" else np.ndarray)
    np.testing.assert_array_equal(np.asarray(wq.to_float32() if backend == "numba" else wq),
                                  decoded)


def test_gguf_q8_0_asked_for_as_q8_is_re_laid_without_the_kernels_too():
    tensor = gguf_blocks("Q8_0", 6, 96)
    kept = to_dtype(tensor, "q8", keep_quantized=False)
    assert isinstance(kept, Q8)
    np.testing.assert_array_equal(kept.to_float32(), tensor.to_float32())
    assert isinstance(to_dtype(tensor, "f32", keep_quantized=False), np.ndarray)


@pytest.mark.parametrize("kind", ["Q8_0", "Q4_1"])
def test_gguf_kernel_formats_asked_for_another_dtype_are_converted(kind):
    """--dtype given explicitly is what the weights become, even where a kernel would
    multiply the stored quantisation."""
    tensor = QuantizedTensor(random_blocks(kind, 6, 64, np.random.default_rng(8)), kind)
    decoded = tensor.to_float32()
    np.testing.assert_array_equal(to_dtype(tensor, "f32"), decoded)
    np.testing.assert_array_equal(to_dtype(tensor, "bf16").bits, float32_to_bf16_bits(decoded))
    if kind != "Q8_0":  # Q8_0 asked for as q8 is re-laid (the test above)
        np.testing.assert_array_equal(to_dtype(tensor, "q8").values,
                                      quantize_q8(decoded).values)


def test_gguf_block_format_without_kernel_is_converted():
    tensor = QuantizedTensor(random_blocks("Q5_0", 6, 96, np.random.default_rng(8)), "Q5_0")
    decoded = tensor.to_float32()
    np.testing.assert_array_equal(to_dtype(tensor, "f32"), decoded)
    np.testing.assert_array_equal(to_dtype(tensor, "bf16").bits, float32_to_bf16_bits(decoded))
    np.testing.assert_array_equal(to_dtype(tensor, "q8").values, quantize_q8(decoded).values)


@pytest.mark.parametrize("keep_quantized", [True, False])
@pytest.mark.parametrize("dtype", [None, "f32", "bf16", "q8"])
def test_new_bytes_is_what_to_dtype_allocates(dtype, keep_quantized):
    """load() checks the memory a conversion takes before making it: new_bytes must be
    exactly what to_dtype allocates, and 0 for what it hands back untouched."""
    w = random_matrix((8, 64))
    bf16_bits = float32_to_bf16_bits(random_matrix((8, 128)))
    stored = [w, w.astype(np.float16), BF16(bf16_bits[:, :64]), BF16(bf16_bits[:, 64:].copy()),
              quantize_q8(w), gguf_blocks("Q8_0", 6, 96), gguf_blocks("Q4_0", 6, 96),
              QuantizedTensor(random_blocks("Q4_K", 2, 256, np.random.default_rng(9)), "Q4_K"),
              QuantizedTensor(random_blocks("Q5_0", 2, 64, np.random.default_rng(9)), "Q5_0"),
              w[0], w[0].astype(np.float16)]
    for tensor in stored:
        converted = to_dtype(tensor, dtype, keep_quantized=keep_quantized)
        expected = 0 if converted is tensor else converted.nbytes
        assert new_bytes(tensor, dtype, keep_quantized) == expected, (tensor, dtype)
    assert new_bytes(w, "f32") == 0 and new_bytes(w, "bf16") == w.size * 2  # both branches seen


def test_to_dtype_rejects_an_unknown_dtype():
    with pytest.raises(InputError, match="'int4'.*f32, bf16, q8"):
        to_dtype(random_matrix((2, 32)), "int4")


# --- int8 activations (numba, q8 / Q4) ---------------------------------------------------

INT8_FORMS = list(importlib.import_module("llama3_np.kernels_simd").available()) \
    if HAVE_NUMBA else []
INT8_GEMM_ROUTES = list(importlib.import_module("llama3_np.kernels_int8").available_routes()) \
    if HAVE_NUMBA else []
NEEDS_INT8_GEMM = pytest.mark.skipif(not INT8_GEMM_ROUTES, reason="no AVX2 on this CPU")


def quantised_activations(x):
    """x as kernels_numba.quantize_block rounds it, back in float32: per 32-value block,
    round(x * 127 / max|x|) * max|x| / 127."""
    blocks = x.reshape(len(x), -1, 32)
    largest = np.abs(blocks).max(axis=-1, keepdims=True)
    inverse = np.float32(127) / np.where(largest > 0, largest, np.float32(1))
    q = np.rint(blocks * np.where(largest > 0, inverse, np.float32(0)))
    return (q * (largest / np.float32(127))).reshape(x.shape)


@NEEDS_NUMBA
@pytest.mark.parametrize("q4_order", [False, True])
def test_activations_are_quantised_as_numpy_rounds_them(q4_order):
    """quantize_rows' int8 values and scales, bit for bit, against the same rounding in
    NumPy: blocks of every magnitude, halves (ties go to even), a zero block, blocks with
    inf or NaN (d NaN, q 0), a block too small for 1 / d (q 0); an odd last block."""
    from llama3_np import kernels_numba

    rng = np.random.default_rng(7)
    n_x, n_blocks = 6, 19
    blocks = rng.standard_normal((n_x, n_blocks, 32)) * 10.0 ** rng.uniform(
        -30, 30, (n_x, n_blocks, 1))
    blocks[0, :4] = rng.integers(-254, 255, (4, 32)) / 2  # 127 / largest = 1: .5s are ties
    blocks[0, :4, 0] = 127
    blocks[1, 0], blocks[1, 1, 5], blocks[1, 2, 9], blocks[1, 3] = 0, np.inf, np.nan, 1e-38
    blocks = blocks.astype(np.float32)

    xq, x_scales, x_start, _ = kernels_numba.quantize_rows(blocks.reshape(n_x, -1), q4_order)

    largest = np.abs(blocks).max(axis=-1)
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        inverse = np.float32(127) / largest
        inverse[~np.isfinite(inverse)] = 0
        q = np.rint(blocks * inverse[..., None])
        q[~np.isfinite(largest)] = 0
        scales = np.where(np.isfinite(largest), largest / np.float32(127), np.float32(np.nan))
    q = q.astype(np.int8)
    np.testing.assert_array_equal(x_scales.view(np.uint32), scales.view(np.uint32))
    if q4_order:  # each block's halves where _q4_halves put them, its sum in its lane
        places = [kernels_numba._q4_halves(b, n_blocks) for b in range(n_blocks)]
        xq = np.stack([np.concatenate([xq[:, first:first + 16], xq[:, second:second + 16]],
                                      axis=1) for first, second in places], axis=1)
        lanes = [(b >> 1, 4 * (b & 1) if b + 1 < n_blocks else 0) for b in range(n_blocks)]
        q_sums = np.stack([x_start[:, row, lane] for row, lane in lanes], axis=1) // -8
    else:
        xq, q_sums = xq.reshape(n_x, n_blocks, 32), x_start[:, :, 0] // -128
    np.testing.assert_array_equal(xq, q)
    np.testing.assert_array_equal(q_sums, q.sum(axis=-1, dtype=np.int32))
    assert np.abs(q[0, :4]).max() == 127 and not q[1, :4].any()


@NEEDS_NUMBA
@pytest.mark.skipif(not INT8_FORMS, reason="no integer dot product on this CPU")
@pytest.mark.parametrize("form", INT8_FORMS)
@pytest.mark.parametrize("dtype", INT8_KINDS)
@pytest.mark.parametrize("n_rows", [1, 2, 7, kernels._FUSED_MAX_ROWS,
                                    pytest.param(kernels._FUSED_MAX_ROWS + 1,
                                                 marks=NEEDS_INT8_GEMM),
                                    pytest.param(75, marks=NEEDS_INT8_GEMM)])
def test_int8_activations_are_the_quantised_x_times_the_weight(form, dtype, n_rows):
    """The integer block sums are exact and Q4's mins multiply the same quantised x, so
    the result is the float64 product of the quantised x and the decoded weight, within
    float32 roundoff (the bound of the float path). Against x itself the error is at most
    half a step per value: sum over blocks of max|x_b| / 254 * sum |w_b|. Beyond 32
    rows the GEMM (kernels_int8) multiplies (rows of x in groups of 32, weight rows in
    6s: 75 rows and 67 weight rows end both ragged)."""
    kernels.set_backend("numba")
    kernels._numba_kernels().set_int8_activations(True, form)
    n_in = 2 * N_IN_K if dtype == "gguf_q4_k" else N_IN
    w, w_float32 = weight_in(dtype, random_matrix((N_OUT, n_in)))
    rng = np.random.default_rng(n_rows)  # blocks of very different magnitude, one all 0
    x = (random_matrix((n_rows, n_in), seed=2) * 10.0 ** rng.uniform(-3, 2, (n_rows, n_in))
         ).astype(np.float32)
    x[0, 32:64] = 0
    y = kernels.linear(x, w)
    assert_matches_float64(y, quantised_activations(x), w_float32)
    exact = x.astype(np.float64) @ w_float32.T.astype(np.float64)
    half_steps = np.abs(x).reshape(n_rows, -1, 32).max(axis=-1) / 254  # (M, blocks)
    weight_sums = np.abs(w_float32).reshape(N_OUT, -1, 32).sum(axis=-1)  # (N, blocks)
    bound = half_steps.astype(np.float64) @ weight_sums.T.astype(np.float64)
    scale = np.abs(x).astype(np.float64) @ np.abs(w_float32).T.astype(np.float64)
    np.testing.assert_array_less(np.abs(y - exact), bound * (1 + 1e-5) + 8 * U32 * scale)


@NEEDS_NUMBA
@pytest.mark.parametrize("n_rows", [1, 13, 77, 1000])
@pytest.mark.parametrize("threads_", [1, 2, 3])
def test_the_row_loops_split_every_matrix_into_a_few_long_runs_a_thread(n_rows, threads_):
    """kernels_numba.streamed_task: blocks of at least 16 rows, _STREAMED_TASKS_PER_THREAD
    blocks a thread (fewer where 16-row blocks cover the matrix), covering every row."""
    import numba

    from llama3_np import kernels_numba

    before = numba.get_num_threads()
    threads_ = kernels_numba.set_threads(threads_)  # at most the cores numba has
    try:
        task = kernels_numba.streamed_task(n_rows)
    finally:
        numba.set_num_threads(before)
    n_tasks, per_thread = -(-n_rows // task), kernels_numba._STREAMED_TASKS_PER_THREAD
    assert task >= 16 and n_tasks <= per_thread * threads_
    assert n_tasks == per_thread * threads_ or task == 16


@NEEDS_NUMBA
@pytest.mark.skipif(not INT8_FORMS, reason="no integer dot product on this CPU")
@pytest.mark.parametrize("dtype", ["gguf_q8_0", "gguf_q4_1"])
def test_the_integer_rows_have_the_same_bits_however_the_threads_split_them(dtype):
    """Each thread reads its blocks of rows one row after another (_streamed_rows): every
    row of a 77-row matrix (blocks of 16 rows and 13 after them, on two threads) has the
    bits it has alone, on the calling thread and on all threads."""
    from llama3_np import kernels_numba

    n_out, n_in = 77, 2048
    kernels.set_backend("numba")
    kernels_numba.set_int8_activations(True)
    w, _ = weight_in(dtype, random_matrix((n_out, n_in)))
    x = random_matrix((2, n_in), seed=3)
    alone = np.concatenate([kernels.linear(x, w.take(slice(r, r + 1))) for r in range(n_out)],
                           axis=1)
    for module in (kernels_numba.SERIAL, kernels_numba):
        together = np.empty_like(alone)
        fused_matmul(w, module, len(x))(x, together)
        np.testing.assert_array_equal(together.view(np.uint32), alone.view(np.uint32))


@NEEDS_NUMBA
@pytest.mark.parametrize("dtype", ["bf16", "f32"])
def test_decoding_by_float_weights_gives_each_row_its_own_bits_however_the_threads_split_them(
        dtype):
    """One row of x by bf16 or float32 weights takes the row dot products (as the integer
    rows above): 4100 values a row, 128 vector steps and 4 values after them. Each row's
    result has the bits it has alone and the float32 sum's accuracy, on the calling
    thread and on all threads."""
    from llama3_np import kernels_numba

    n_out, n_in = 77, 4100
    kernels.set_backend("numba")
    w, w_float32 = weight_in(dtype, random_matrix((n_out, n_in)))
    x = random_matrix((1, n_in), seed=3)
    alone = np.concatenate([kernels.linear(x, w[[r]] if dtype == "f32" else w.take([r]))
                            for r in range(n_out)], axis=1)
    assert_matches_float64(alone, x, w_float32)
    for module in (kernels_numba.SERIAL, kernels_numba):
        together = np.empty_like(alone)
        fused_matmul(w, module, len(x))(x, together)
        np.testing.assert_array_equal(together.view(np.uint32), alone.view(np.uint32))


@NEEDS_NUMBA
def test_float32_weights_take_the_row_dots_for_one_row_of_x_and_blas_for_more():
    """kernels.linear by a float32 matrix: one row of x through kernels_numba.gemv_f32
    (its bits), several rows and a non-contiguous matrix through BLAS (x @ w.T's bits);
    the NumPy backend always BLAS."""
    from llama3_np import kernels_numba

    kernels.set_backend("numba")
    w = random_matrix((67, 544))
    one, several = random_matrix((1, 544), seed=2), random_matrix((3, 544), seed=3)
    expected = np.empty((1, 67), dtype=np.float32)
    kernels_numba.SERIAL.gemv_f32(one, w, expected)
    np.testing.assert_array_equal(kernels.linear(one, w), expected)
    np.testing.assert_array_equal(kernels.linear(several, w), several @ w.T)
    strided = np.asfortranarray(w)
    np.testing.assert_array_equal(kernels.linear(one, strided), one @ strided.T)
    kernels.set_backend("numpy")
    np.testing.assert_array_equal(kernels.linear(one, w), one @ w.T)


@NEEDS_NUMBA
@pytest.mark.skipif(not INT8_FORMS, reason="no integer dot product on this CPU")
@pytest.mark.parametrize("form", INT8_FORMS)
@pytest.mark.parametrize("n_rows", [3, pytest.param(40, marks=NEEDS_INT8_GEMM)])
def test_int8_activations_read_only_weights_extreme_values_and_nan(form, n_rows):
    """Memory-mapped (read-only) weights; Q8 values of -128 and 127 (a GGUF file may hold
    -128: the "avx2" form's |w| must not wrap, nor the flipped w + 128 of the "vnni" form
    and the GEMM); a NaN in x makes its row NaN, as float32. 40 rows: the GEMM."""
    kernels.set_backend("numba")
    kernels._numba_kernels().set_int8_activations(True, form)
    q8 = to_dtype(random_matrix((9, 96)), "q8")
    q8.values[:, :32] = -128
    q8.values[:, 32:64] = 127
    for array in (q8.values, q8.scales):
        array.flags.writeable = False
    x = random_matrix((n_rows, 96), seed=4)
    y = kernels.linear(x, q8)
    assert_matches_float64(y, quantised_activations(x), q8.to_float32())
    x[1, 40] = np.nan
    y = kernels.linear(x, q8)
    others = np.arange(n_rows) != 1
    assert np.isnan(y[1]).all() and np.isfinite(y[others]).all()


def four_rows_at_once():
    """A compiled loop calling the row dot products with four weight rows at a time (as
    benchmarks/gemv_streams.py does): out = x @ w.T, n_out a multiple of 4; x_form: x as
    the dots read it (quantize_rows' for the integer forms, the float32 rows for bf16)."""
    from numba import njit

    from llama3_np import kernels_numba

    @njit
    def multiply(use_vnni, weights, scales, mins, x_form, out):
        for r in range(0, weights.shape[0], 4):
            for i in range(out.shape[0]):
                dots = kernels_numba._row_dots(use_vnni, weights, scales, mins, x_form, i,
                                               (r, r + 1, r + 2, r + 3))
                for k in range(4):
                    out[i, r + k] = dots[k]
    return multiply


def kernel_arrays(w) -> tuple:
    """(weights, scales, mins) of a float32 matrix, a BF16, Q8 or Q4 as its fused kernels
    receive them."""
    if isinstance(w, np.ndarray):
        return w, None, None
    if isinstance(w, BF16):
        return w.bits, None, None
    if isinstance(w, Q8):
        return w.values, w._kernel_scales, None
    return (w.packed, *w._kernel_parts)


@NEEDS_NUMBA
@pytest.mark.parametrize("form, dtype", [(form, dtype) for form in INT8_FORMS
                                          for dtype in INT8_KINDS] +
                         [("float", "bf16"), ("float", "f32")])
def test_row_dot_products_give_each_of_several_weight_rows_its_own_bits(form, dtype):
    """The row dot products multiply a tuple of weight rows at once, each in accumulators
    of its own: four at a time, every row's result has the bits it gets alone (the
    loops kernels.linear runs, one row after another). bf16 and float32 weights take
    float32 x."""
    kernels_numba = kernels._numba_kernels()
    kernels.set_backend("numba")
    if form != "float":
        kernels_numba.set_int8_activations(True, form)
    n_out, n_in = 68, (2 * N_IN_K if dtype == "gguf_q4_k" else N_IN)
    w, _ = weight_in(dtype, random_matrix((n_out, n_in)))
    x = random_matrix((2 if form != "float" else 1, n_in), seed=3)
    alone = kernels.linear(x, w)
    together = np.empty_like(alone)
    x_form = x if form == "float" else kernels_numba.quantize_rows(x, isinstance(w, Q4))
    four_rows_at_once()(form == "vnni", *kernel_arrays(w), x_form, together)
    np.testing.assert_array_equal(together.view(np.uint32), alone.view(np.uint32))


@NEEDS_INT8_GEMM
@pytest.mark.parametrize("dtype", INT8_KINDS)
def test_int8_gemm_agrees_with_the_row_loops_of_decoding(dtype):
    """A prompt's rows go through the GEMM, a decode step's through the row loops
    (kernels_numba, called here on all 40 rows): the same quantised x and the same float32
    operations per block, summed in another order (float32 roundoff of sum |x_j w_ij|).
    Read-only weights, as memory-mapped ones are."""
    kernels_numba = kernels._numba_kernels()
    kernels.set_backend("numba")
    kernels_numba.set_int8_activations(True)
    n_in = 2 * N_IN_K if dtype == "gguf_q4_k" else N_IN
    w, w_float32 = weight_in(dtype, random_matrix((N_OUT, n_in)))
    for array in vars(w).values():
        if isinstance(array, np.ndarray):
            array.flags.writeable = False
    x = random_matrix((40, n_in), seed=6)
    prompt = kernels.linear(x, w)
    steps = np.empty_like(prompt)
    fused_matmul(w, kernels_numba, len(x))(x, steps)
    scale = np.abs(quantised_activations(x)).astype(np.float64) @ \
        np.abs(w_float32).T.astype(np.float64)
    np.testing.assert_array_less(np.abs(prompt - steps), 8 * U32 * np.sqrt(n_in) * scale)


@pytest.fixture
def int8_gemm():
    """kernels_int8, its route put back after the test."""
    kernels_int8 = importlib.import_module("llama3_np.kernels_int8")
    best = kernels_int8.route()
    yield kernels_int8
    kernels_int8.set_route(best)


@pytest.mark.skipif(len(INT8_GEMM_ROUTES) < 2, reason="one int8 GEMM route on this CPU")
@pytest.mark.parametrize("dtype", INT8_KINDS)
@pytest.mark.parametrize("n_out", [N_OUT, 300])
def test_int8_gemm_routes_give_the_same_bits(int8_gemm, dtype, n_out):
    """AMX and AVX2 sum each block in integers as vpdpbusd does and scale the sums in the
    same float32 operations, in the same order: every route this CPU offers gives the
    same bits, for ragged blocks of rows (67 weight rows; 300: several tasks, on both
    threads; 17 rows of x, the fewest AMX takes, 40 and 75), read-only weights, blocks of
    very different magnitude, and a NaN and an inf in x (their rows NaN, as in float32;
    the others finite)."""
    n_in = 2 * N_IN_K if dtype == "gguf_q4_k" else N_IN
    w, _ = weight_in(dtype, random_matrix((n_out, n_in)))
    for array in vars(w).values():
        if isinstance(array, np.ndarray):
            array.flags.writeable = False
    multiply = int8_matmul(w, int8_gemm)  # the weight format's call of matmul_q8 / q4
    for n_rows in (17, 40, 75):
        rng = np.random.default_rng(n_rows)
        x = (random_matrix((n_rows, n_in), seed=8) * 10.0 ** rng.uniform(-3, 2, (n_rows, n_in))
             ).astype(np.float32)
        x[3, 5], x[n_rows - 1, 40] = np.nan, np.inf
        results = []
        for route in INT8_GEMM_ROUTES:
            int8_gemm.set_route(route)
            out = np.empty((n_rows, n_out), dtype=np.float32)
            multiply(x, out)
            results.append(out)
        for other in results[1:]:
            np.testing.assert_array_equal(other.view(np.uint32), results[0].view(np.uint32))
        special = np.isin(np.arange(n_rows), [3, n_rows - 1])
        assert np.isnan(results[1][special]).all() and np.isfinite(results[1][~special]).all()


@NEEDS_NUMBA
@pytest.mark.parametrize("dtype", ["q8", "gguf_q4_0", "gguf_q4_1"])
def test_int8_gemm_stages_weight_rows_block_by_block(dtype):
    """AMX reads Q4 (and a last partial block of Q8 rows) from a copy staged block by
    block as int8 values in their order (Q4_0's as q - 8, the others' nibbles as they
    are), rows past the last repeating it. Plain vector code: checked on any CPU."""
    kernels_int8 = importlib.import_module("llama3_np.kernels_int8")
    w, _ = weight_in(dtype, random_matrix((40, 96)))
    q4_0 = dtype == "gguf_q4_0"
    if dtype == "q8":
        weights, values = w.values, w.values
    else:
        weights = w.packed
        low, high = weights.reshape(40, 3, 16) & 15, weights.reshape(40, 3, 16) >> 4
        values = (np.concatenate([low, high], axis=-1).reshape(40, 96).astype(np.int16)
                  - (8 if q4_0 else 0)).astype(np.int8)
    staged = np.empty((3, 32, 32), dtype=np.int8)
    kernels_int8._stage_rows(weights, 8 if q4_0 else 0, 32, staged)  # rows 32..39, then 39
    rows = np.minimum(np.arange(32, 64), 39)
    np.testing.assert_array_equal(staged, values[rows].reshape(32, 3, 32).transpose(1, 0, 2))


@NEEDS_NUMBA
@pytest.mark.parametrize("align", [16, 32])
def test_int8_gemm_lays_x_out_in_quads_of_16_rows(align):
    """pack_activations: the int8 values quantize_rows makes, quad p of row 16 g + l at
    x_quads[g, p, l], block scales and sums of q beside them; padding rows 0."""
    kernels_int8 = importlib.import_module("llama3_np.kernels_int8")
    x = random_matrix((19, 96), seed=9)
    x_quads, x_scales, x_sums = kernels_int8.pack_activations(x, align)
    xq, scales, _, _ = kernels._numba_kernels().quantize_rows(x, False)
    n_padded = -(-19 // align) * align
    assert x_quads.shape == (n_padded // 16, 24, 16) and x_scales.shape == (3, n_padded)
    quads = np.zeros((n_padded, 24), dtype=np.int32)
    quads[:19] = xq.view(np.int32)
    np.testing.assert_array_equal(x_quads, quads.reshape(-1, 16, 24).transpose(0, 2, 1))
    np.testing.assert_array_equal(x_scales[:, :19], scales.T)
    np.testing.assert_array_equal(x_sums[:, :19], xq.reshape(19, 3, 32).sum(-1).T)
    assert not x_scales[:, 19:].any() and not x_sums[:, 19:].any()


@NEEDS_INT8_GEMM
def test_int8_gemm_refuses_shapes_it_would_read_past():
    """The micro-kernel reads rows at the scales' length unchecked: a mismatched x, out
    or a non-contiguous weight is refused before it runs."""
    kernels_int8 = importlib.import_module("llama3_np.kernels_int8")
    q8 = to_dtype(random_matrix((12, 64)), "q8")
    x, out = random_matrix((40, 64)), np.empty((40, 12), dtype=np.float32)
    kernels_int8.matmul_q8(x, q8.values, q8.scales, out)
    assert_matches_float64(out, quantised_activations(x), q8.to_float32())
    for bad_x, bad_out, values, scales in [
            (random_matrix((40, 96)), out, q8.values, q8.scales),
            (x, np.empty((40, 11), dtype=np.float32), q8.values, q8.scales),
            (x, np.empty((40, 6), dtype=np.float32), q8.values[::2], q8.scales[::2])]:
        with pytest.raises(ValueError, match="int8 GEMM"):
            kernels_int8.matmul_q8(bad_x, values, scales, bad_out)
    q4_k = to_dtype(gguf_blocks("Q4_K", 12, 256), None)  # two levels: supers per 8 blocks
    parts = [(p.codes, p.supers.view(np.uint16)) for p in (q4_k.scales, q4_k.mins)]
    x_256 = random_matrix((40, 256), seed=5)
    kernels_int8.matmul_q4(x_256, q4_k.packed, *parts, out)
    assert_matches_float64(out, quantised_activations(x_256), q4_k.to_float32())
    short = [(codes, supers[:, :0]) for codes, supers in parts]
    with pytest.raises(ValueError, match="int8 GEMM"):
        kernels_int8.matmul_q4(x_256, q4_k.packed, *short, out)


@NEEDS_NUMBA
def test_int8_prefill_without_an_int8_gemm_route_decodes_float32_tiles(int8_gemm):
    """Where the CPU lacks AVX2 (no route: forced here), more than 32 rows of x
    go on to float32 tiles for BLAS (float32 x) even with int8 activations on."""
    kernels.set_backend("numba")
    kernels._numba_kernels().set_int8_activations(True)
    int8_gemm.set_route(None)
    w, w_float32 = weight_in("q8", random_matrix((N_OUT, N_IN)))
    x = random_matrix((kernels._FUSED_MAX_ROWS + 1, N_IN), seed=7)
    assert_matches_float64(kernels.linear(x, w), x, w_float32)


def test_int8_gemm_route_follows_the_environment():
    """LLAMA3_NP_INT8_GEMM=off, vnni (AMX not used even where the CPU has it) or avx2
    (the portable route, also where the CPU has better); a route the CPU lacks is
    refused. A fresh process: the route is chosen on import."""
    if not HAVE_NUMBA:
        pytest.skip("numba is not installed")
    code = ("from llama3_np import kernels_int8\n"
            "print(kernels_int8.route(), *kernels_int8.available_routes())\n"
            "try:\n"
            "    kernels_int8.set_route('tpu')\n"
            "except ValueError:\n"
            "    print('refused')\n")
    features = kernels._numba_kernels().kernels_simd.cpu_features()
    portable = ["avx2"] if "avx2" in features else []
    from_vnni = (["vnni"] if {"avx512vnni", "avx512bw"} <= features else []) + portable
    for wish, expected in [("off", ["None", "refused"]),
                           ("vnni", (from_vnni or ["None"])[:1] + from_vnni + ["refused"]),
                           ("avx2", (portable or ["None"]) + portable + ["refused"])]:
        env = dict(os.environ, LLAMA3_NP_INT8_GEMM=wish)
        result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                                text=True, cwd=Path(__file__).resolve().parents[1])
        assert result.returncode == 0, result.stderr
        assert result.stdout.split() == expected
    env = dict(os.environ, LLAMA3_NP_INT8_GEMM="avx3")  # a typo is said, not ignored
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                            text=True, cwd=Path(__file__).resolve().parents[1])
    assert "LLAMA3_NP_INT8_GEMM='avx3' is not one of amx, vnni, avx2, off, auto" in \
        result.stderr


@NEEDS_NUMBA
def test_int8_activations_off_or_missing_instructions_use_the_float_loops(monkeypatch):
    """By default, after set_int8_activations(False), or asked for on a CPU with neither
    VNNI nor AVX2 (forced here),
    multiplies by float32 x: the float path's bound, far tighter than int8's."""
    kernels_numba = kernels._numba_kernels()
    kernels.set_backend("numba")
    w, w_float32 = weight_in("gguf_q4_1", random_matrix((N_OUT, N_IN)))
    x = random_matrix((3, N_IN), seed=5)
    assert kernels_numba.int8_activations() is None  # the default
    assert_matches_float64(kernels.linear(x, w), x, w_float32)
    kernels.set_int8_activations(True)
    kernels.set_int8_activations(False)
    assert kernels_numba.int8_activations() is None
    assert_matches_float64(kernels.linear(x, w), x, w_float32)
    monkeypatch.setattr(kernels_numba, "_INT8_FORMS", ())
    kernels.set_int8_activations(True)
    assert kernels_numba.int8_activations() is None
    assert_matches_float64(kernels.linear(x, w), x, w_float32)
    with pytest.raises(ValueError, match="no 'vnni'"):
        kernels_numba.set_int8_activations(True, "vnni")


@NEEDS_NUMBA
def test_int8_forms_follow_the_cpu_features(monkeypatch):
    simd = kernels._numba_kernels().kernels_simd
    for features, forms in [({"avx2", "avx512vnni", "avx512vl"}, ("vnni", "avx2")),
                            ({"avx2", "avxvnni"}, ("vnni", "avx2")),
                            ({"avx2", "avx512vnni"}, ("avx2",)),  # no 256-bit form without VL
                            ({"sse4.2"}, ())]:
        monkeypatch.setattr(simd, "cpu_features", lambda features=features: features)
        assert simd.available() == forms


@NEEDS_NUMBA
@pytest.mark.parametrize("f16c", [True, False])
def test_float16_scales_widen_exactly_with_and_without_f16c(f16c, monkeypatch):
    """Q4_0 / Q4_1 keep float16 scales; kernels_simd.half_to_float32 widens them with F16C
    where the CPU has it, else in integer operations (forced here by hiding the feature
    while a fresh function compiles): every one of the 65536 bit patterns as NumPy
    widens it (a NaN may come back quieted: still NaN)."""
    from numba import njit

    simd = kernels._numba_kernels().kernels_simd
    features = simd.cpu_features()
    if f16c and "f16c" not in features:
        pytest.skip("this CPU has no F16C")
    monkeypatch.setattr(simd, "cpu_features", lambda: features - ({"f16c"} if not f16c
                                                                   else set()))

    @njit
    def widen(bits, out):
        for i in range(bits.size):
            out[i] = simd.half_to_float32(bits[i])

    bits = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
    out = np.empty(bits.shape, dtype=np.float32)
    widen(bits, out)
    expected = bits.view(np.float16).astype(np.float32)
    nan = np.isnan(expected)
    np.testing.assert_array_equal(np.isnan(out), nan)
    np.testing.assert_array_equal(out[~nan].view(np.uint32), expected[~nan].view(np.uint32))


@NEEDS_NUMBA
def test_cached_kernels_are_dropped_when_the_code_built_into_them_changes(tmp_path,
                                                                          monkeypatch):
    """numba would re-use kernels compiled from an older kernels_simd.py (it watches only
    each kernel's own file), and kernels_int8's from an older quantize_block: a changed
    kernels_simd.py or kernels_numba.py must drop the cached kernels of the four modules
    built from them, unchanged ones keep them."""
    from llama3_np import kernels_numba, kernels_simd

    sources = {module: tmp_path / f"{module.__name__}.py" for module in (kernels_simd,
                                                                           kernels_numba)}
    for module, source in sources.items():
        source.write_text("# version 1")
        monkeypatch.setattr(module, "__file__", str(source))
    monkeypatch.setattr(kernels_numba.matmul_bf16._cache, "_cache_path", str(tmp_path))
    built = [tmp_path / f"{name}.py311.nbi" for name in (
        "kernels_numba.matmul_bf16-258", "kernels_int8._gemm-240", "kernels_bf16._pack_pairs-90",
        "kernels_steps._attend-72")]
    other = tmp_path / "model.rms_norm-10.py311.nbi"
    for path in built + [other]:
        path.write_text("")
    kernels_numba._forget_kernels_built_from_older_sources()
    assert not any(path.exists() for path in built) and other.exists()
    for source in sources.values():
        for path in built:
            path.write_text("")
        kernels_numba._forget_kernels_built_from_older_sources()
        assert all(path.exists() for path in built)  # the same code: kept
        source.write_text("# version 2")
        kernels_numba._forget_kernels_built_from_older_sources()
        assert not any(path.exists() for path in built)


@NEEDS_NUMBA
def test_q4_takes_tiles_beyond_a_few_rows_of_float32_x():
    """The float32 Q4 loop repeats its work for every row of x, so beyond
    Q4_FLOAT_FUSED_MAX_ROWS rows BLAS on decoded tiles is faster; the int8 loop is not."""
    from llama3_np import kernels_numba
    from llama3_np.formats.q4 import Q4_FLOAT_FUSED_MAX_ROWS

    w, _ = weight_in("gguf_q4_1", random_matrix((64, 256)))
    limit = Q4_FLOAT_FUSED_MAX_ROWS
    for kernels_set in (kernels_numba, kernels_numba.SERIAL):
        assert w.fused(kernels_set, limit) is not None
        assert w.fused(kernels_set, limit + 1) is None
    if kernels_numba._INT8_FORMS:
        kernels.set_int8_activations(True)
        assert w.fused(kernels_numba, 32) is not None
        kernels.set_int8_activations(False)
