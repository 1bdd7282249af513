"""kernels_bf16: GEMMs by bf16 weights with x rounded to bf16 (AMX or AVX512-BF16) or
split exactly into three bf16 parts (float32 x, on AMX), and kernels.linear's choice of
them; the float32 path where the CPU (or a setting) says no.

The arithmetic: x is rounded to bf16 (to nearest, ties to even), every product of two
bf16 values is exact in float32, and the sums are float32. So against float64 math on
the *rounded* x, the float32 bound of test_kernels.py holds; against the float32 x the
error is that of the rounding (2^-9 of each |x_j w_j|, relative), measured on a model
below.
"""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from llama3_np import kernels
from llama3_np.formats.bf16 import BF16, bf16_bits_to_float32, float32_to_bf16_bits
from llama3_np.formats.convert import to_dtype

pytestmark = pytest.mark.skipif(importlib.util.find_spec("numba") is None,
                                reason="numba is not installed")
U32 = 2.0 ** -24  # float32 unit roundoff
BF16_HALF_STEP = 2.0 ** -9  # bf16's unit roundoff: 8 significant bits


@pytest.fixture
def kernels_bf16():
    """kernels_bf16, with x rounded to bf16 (asked for: the default keeps it float32)."""
    from llama3_np import kernels_bf16
    best = kernels_bf16.route()
    kernels.set_bf16_activations(True)
    yield kernels_bf16
    kernels_bf16.set_route(best)
    kernels.set_bf16_activations(False)
    kernels.set_backend("auto")


def routes():
    """The routes this CPU has, best first (amx also has avx512bf16)."""
    if importlib.util.find_spec("numba") is None:
        return []
    from llama3_np import kernels_bf16
    return list(kernels_bf16.available_routes())


ROUTES = pytest.mark.parametrize("route", routes() or [pytest.param(
    None, marks=pytest.mark.skip(reason="this CPU has neither AMX nor AVX512-BF16"))])


def random_matrix(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def rounded(x):
    return bf16_bits_to_float32(float32_to_bf16_bits(x))


def assert_matches_rounded_float64(y, x, w_float32):
    """Within float32 summation error (as test_kernels.assert_matches_float64) of the
    float64 product of x rounded to bf16 by the weight."""
    x = rounded(x)
    exact = x.astype(np.float64) @ w_float32.T.astype(np.float64)
    scale = np.abs(x).astype(np.float64) @ np.abs(w_float32).T.astype(np.float64)
    assert y.dtype == np.float32 and y.shape == exact.shape
    np.testing.assert_array_less(np.abs(y - exact), 4 * U32 * np.sqrt(x.shape[-1]) * scale
                                 + 1e-30)


def test_activations_round_as_float32_to_bf16_bits(kernels_bf16):
    """Tiles of 16 rows by 32 values (rounded and turned round in vectors) and the ragged
    edges (a value at a time) alike."""
    special = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 1e-40, -1e-40,
                        np.float32(3.4e38), 1 + 2.0 ** -8, 1 + 3 * 2.0 ** -8, 1 + 2.0 ** -9],
                       dtype=np.float32)  # ties (up and down), subnormals, overflow
    x = random_matrix((37, 100), seed=9) * 1e3  # 2 whole tiles of rows, 3 of pairs
    x[3, 20:31] = x[35, 89:100] = special  # within a tile; across a tile's edge
    ties = np.random.default_rng(9).integers(0, 2 ** 32, 100, dtype=np.uint32)
    x[10] = ((ties & 0xFFFF0000) | 0x8000).view(np.float32)  # exactly halfway: to even
    pairs = kernels_bf16.pack_activations(x)
    assert pairs.shape == (50, 64)  # K / 2 pairs; M padded to 64 rows
    low, high = (pairs & 0xFFFF).astype(np.uint16), (pairs >> 16).astype(np.uint16)
    expected = float32_to_bf16_bits(x)
    np.testing.assert_array_equal(low[:, :37].T, expected[:, 0::2])
    np.testing.assert_array_equal(high[:, :37].T, expected[:, 1::2])
    assert not pairs[:, 37:].any()  # padding rows are zero


@ROUTES
@pytest.mark.parametrize("n_x, n_out, n_in", [
    (128, 96, 256),  # whole blocks
    (1, 1, 32), (33, 31, 64), (70, 67, 544), (37, 100, 96),  # ragged rows of x and w
])
def test_matmul_matches_float64_on_rounded_x(kernels_bf16, route, n_x, n_out, n_in):
    kernels_bf16.set_route(route)
    w = float32_to_bf16_bits(random_matrix((n_out, n_in)) / np.float32(np.sqrt(n_in)))
    x = random_matrix((n_x, n_in), seed=1)
    assert_matches_rounded_float64(kernels_bf16.matmul(x, w), x, bf16_bits_to_float32(w))


@ROUTES
def test_sums_k_in_chunks(kernels_bf16, route, monkeypatch):
    """Long rows go through K in several chunks, each adding to the last."""
    kernels_bf16.set_route(route)
    monkeypatch.setattr(kernels_bf16, "_X_CHUNK_BYTES", 4 * 64 * 16)  # 16 pairs: 32 of K
    w = float32_to_bf16_bits(random_matrix((40, 160)))
    x = random_matrix((50, 160), seed=2)
    assert_matches_rounded_float64(kernels_bf16.matmul(x, w), x, bf16_bits_to_float32(w))


@ROUTES
def test_reads_weights_from_read_only_memory(kernels_bf16, route):
    kernels_bf16.set_route(route)
    w = float32_to_bf16_bits(random_matrix((35, 64)))
    w.flags.writeable = False  # as memory-mapped from a checkpoint
    x = random_matrix((40, 64), seed=3)
    assert_matches_rounded_float64(kernels_bf16.matmul(x, w), x, bf16_bits_to_float32(w))


@ROUTES
def test_linear_rounds_x_for_many_rows_of_bf16_weights(kernels_bf16, route, monkeypatch):
    def no_tiles(*args):
        raise AssertionError("decoded weight tiles for BLAS")
    kernels_bf16.set_route(route)
    kernels.set_backend("numba")
    w = to_dtype(random_matrix((67, 544)), "bf16")
    x = random_matrix((2, 20, 544), seed=4)  # 40 rows: more than the fused kernels take
    with monkeypatch.context() as patch:
        patch.setattr(kernels, "_tiled_matmul", no_tiles)
        y = kernels.linear(x, w)
    assert y.shape == (2, 20, 67)
    assert_matches_rounded_float64(y.reshape(40, 67), x.reshape(40, 544), w.to_float32())


def assert_float32_path(y, x, w):
    """x not rounded: test_kernels.py's float32 bound on the decoded weight."""
    w_float32 = w.to_float32()
    exact = x.astype(np.float64) @ w_float32.T.astype(np.float64)
    scale = np.abs(x).astype(np.float64) @ np.abs(w_float32).T.astype(np.float64)
    np.testing.assert_array_less(np.abs(y - exact), 4 * U32 * np.sqrt(x.shape[-1]) * scale)


def test_linear_keeps_x_float32_when_asked_or_when_the_cpu_cannot(kernels_bf16):
    kernels.set_backend("numba")
    w = to_dtype(random_matrix((20, 64)), "bf16")
    x = random_matrix((40, 64), seed=5)
    kernels.set_bf16_activations(False)
    assert_float32_path(kernels.linear(x, w), x, w)
    kernels.set_bf16_activations(True)
    kernels_bf16.set_route(None)  # as on a CPU without AMX or AVX512-BF16
    assert_float32_path(kernels.linear(x, w), x, w)
    kernels_bf16.set_route(next(iter(kernels_bf16.available_routes()), None))
    kernels.set_backend("numpy")  # NumPy alone never rounds x, whatever the route
    assert_float32_path(kernels.linear(x, w), x, w)


def packed_values(kernels_bf16, x, part):
    """x as pack_activations lays out its part `part` (ROUNDED_X: rounded), back in x's
    shape as float64."""
    pairs = kernels_bf16.pack_activations(x, part)[:, :len(x)]  # (K / 2, M)
    bits = np.empty(x.shape, dtype=np.uint16)
    bits[:, 0::2], bits[:, 1::2] = (pairs & 0xFFFF).T, (pairs >> 16).T
    return bf16_bits_to_float32(bits).astype(np.float64)


def test_x_packs_as_three_bf16_parts_that_add_up_to_it_exactly(kernels_bf16):
    """hi + mid + lo == x from 2^-100 (the parts' smallest normal range) up to float32's
    largest value (hi is x cut, not rounded, so nothing overflows); NaN and inf go whole
    into hi."""
    rng = np.random.default_rng(10)
    x = (random_matrix((4, 256), seed=10) * 10.0 ** rng.uniform(-25, 30, (4, 256))
         ).astype(np.float32)
    x[0, :6] = [0.0, -0.0, np.finfo(np.float32).max, -np.finfo(np.float32).max,
                1 + 2.0 ** -23, -(2.0 ** -100) * (1 + 2.0 ** -23)]
    hi, mid, lo = (packed_values(kernels_bf16, x, part) for part in range(3))
    np.testing.assert_array_equal(hi + mid + lo, x.astype(np.float64))
    np.testing.assert_array_equal(hi, (x.view(np.uint32) & 0xFFFF0000).view(np.float32))
    special = np.array([[np.nan, np.inf, -np.inf, 1.5]], dtype=np.float32)
    hi, mid, lo = (packed_values(kernels_bf16, special, part) for part in range(3))
    np.testing.assert_array_equal(hi, special)
    assert not mid.any() and not lo.any()


@ROUTES
@pytest.mark.parametrize("n_x, n_out, n_in", [(1, 1, 32), (70, 67, 544), (37, 100, 96)])
def test_matmul_exact_is_float32_arithmetic(kernels_bf16, route, n_x, n_out, n_in):
    """x unrounded: the float32 bound against float64 math on x itself; a NaN and an inf
    in x make their rows NaN or inf, as in float32, and leave the others finite."""
    kernels_bf16.set_route(route)
    w = BF16(float32_to_bf16_bits(random_matrix((n_out, n_in)) / np.float32(np.sqrt(n_in))))
    x = random_matrix((n_x, n_in), seed=11) * np.float32(1e3)
    assert_float32_path(kernels_bf16.matmul_exact(x, w.bits), x, w)
    if n_x > 2:
        x[1, 3], x[2, 5] = np.nan, np.inf
        y = kernels_bf16.matmul_exact(x, w.bits)
        assert np.isnan(y[1]).all() and not np.isfinite(y[2]).any()
        assert np.isfinite(np.delete(y, [1, 2], axis=0)).all()


@ROUTES
def test_linear_multiplies_float32_x_in_bf16_parts_on_amx_only(kernels_bf16, route,
                                                                monkeypatch):
    """x float32 (the default): on AMX, three bf16 passes, not tiles for BLAS; on
    vdpbf16ps (no faster than float32 FMAs on a Xeon), tiles."""
    tiles = []
    tiled_matmul = kernels._tiled_matmul
    monkeypatch.setattr(kernels, "_tiled_matmul", lambda *args: tiles.append(1) or
                        tiled_matmul(*args))
    kernels_bf16.set_route(route)
    kernels.set_backend("numba")
    kernels.set_bf16_activations(False)
    w = to_dtype(random_matrix((67, 544)), "bf16")
    x = random_matrix((40, 544), seed=12)
    assert_float32_path(kernels.linear(x, w), x, w)
    assert bool(tiles) == (route != "amx")


@ROUTES
def test_weights_that_are_not_contiguous_go_to_tiles(kernels_bf16, route):
    """Rows are read at the row stride: a column slice (stride != row length) is not."""
    kernels_bf16.set_route(route)
    kernels.set_backend("numba")
    wide = float32_to_bf16_bits(random_matrix((8, 128)))
    assert kernels_bf16.supports(wide) and not kernels_bf16.supports(wide[:, 64:])
    w = BF16(wide[:, 64:])
    x = random_matrix((40, 64), seed=6)
    assert_float32_path(kernels.linear(x, w), x, w)  # decoded tiles, x float32


def test_amx_leaves_rows_not_a_multiple_of_32_long_to_tiles(kernels_bf16):
    if "amx" not in routes():
        pytest.skip("this CPU has no AMX")
    kernels_bf16.set_route("amx")
    w = BF16(float32_to_bf16_bits(random_matrix((8, 48))))
    assert not kernels_bf16.supports(w.bits)
    kernels.set_backend("numba")
    x = random_matrix((40, 48), seed=6)
    assert_float32_path(kernels.linear(x, w), x, w)


def test_route_is_off_when_the_environment_says_so():
    """LLAMA3_NP_BF16_GEMM=off, and a route the CPU lacks is refused. A fresh process:
    the route is chosen when the module is imported."""
    code = ("from llama3_np import kernels_bf16\n"
            "print(kernels_bf16.route())\n"
            "try:\n"
            "    kernels_bf16.set_route('tpu')\n"
            "except ValueError:\n"
            "    print('refused')\n")
    env = dict(os.environ, LLAMA3_NP_BF16_GEMM="off")
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                            text=True, cwd=Path(__file__).resolve().parents[1])
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["None", "refused"]


# Logits of a prefill with x rounded to bf16 in every GEMM by bf16 weights, against the
# same bf16 weights with x float32: max |difference| over all positions and the
# vocabulary, divided by the logits' standard deviation. Measured (AMX, 64 tokens): 0.021
# to 0.023 on the model below (4 seeds, median 0.0026); 0.031 on the Llama 3.2 1B shape
# with random weights and 128 tokens (median 0.0039), where PyTorch's bf16 model differs
# from its float32 one on the same weights by 0.086 (median 0.010): it rounds every
# activation, not only the GEMMs' inputs.
BF16_ACTIVATIONS_LOGITS = 0.05


@ROUTES
def test_prefill_with_rounded_x_stays_within_its_tolerance(kernels_bf16, route):
    from llama3_np.model import Transformer
    from tests.tiny import random_weights, tiny_config

    kernels_bf16.set_route(route)
    kernels.set_backend("numba")
    config = tiny_config(dim=256, ffn_dim=512, n_layers=4)
    weights = {name: to_dtype(w, "bf16") if w.ndim == 2 else w
               for name, w in random_weights(config).items()}
    model = Transformer(config, weights)
    tokens = list(np.random.default_rng(0).integers(0, 128000, 64))
    kernels.set_bf16_activations(False)
    exact = model.forward(tokens).astype(np.float64)
    kernels.set_bf16_activations(True)
    error = np.abs(model.forward(tokens) - exact) / exact.std(axis=-1, keepdims=True)
    assert 1e-4 < error.max() < BF16_ACTIVATIONS_LOGITS  # rounded, and no more than that


@ROUTES
def test_warmup_compiles_the_route_for_both_kinds_of_weights(route):
    """In a fresh process, where nothing else has compiled the loops yet."""
    code = ("from llama3_np import kernels, kernels_bf16\n"
            f"kernels_bf16.set_route({route!r})\n"
            "kernels.set_backend('numba')\n"
            "kernels.set_bf16_activations(True)\n"
            "kernels.warmup()\n"
            "loop = kernels_bf16._amx_pass if kernels_bf16.route() == 'amx' "
            "else kernels_bf16._matmul_vdp\n"
            "print(sorted({signature[1].mutable for signature in loop.signatures}))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=Path(__file__).resolve().parents[1])
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["[False,", "True]"]  # read-only and writable weights
