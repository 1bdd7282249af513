"""linear(x, w): the one place a matrix multiplication is chosen.

x is float32 (..., in_features); w is (out_features, in_features) in any in-memory
form of the formats package (float32 / float16 ndarray, BF16, Q8, Q4, a GGUF
QuantizedTensor). Each form brings its own kernels (its fused and tile_decoder hooks);
this module only chooses between them by the number of rows and the backend.

How, fastest first:
- float32 weights: NumPy's BLAS; one row of x (decoding a token), numba backend: the
  row dot products in long runs a thread (kernels_numba.gemv_f32), which read from
  memory faster than OpenBLAS's sgemv (its figures there).
- up to 32 rows of x (decoding a token, a chat turn, a short prompt; Q4 with float32 x:
  up to 6, formats/q4.py), bf16 / q8 / Q4 weights, numba backend: fused kernels that
  decode each weight in registers, so only the stored bytes cross the memory bus, once
  for all rows (kernels_numba.py).
  set_int8_activations(True) makes q8 and Q4 multiply x quantised to int8 per 32-value
  block, in integer dot products where the CPU has them (VNNI or AVX2, kernels_simd.py),
  as llama.cpp does: 1.6-2.9x the float32 loops' speed, at a measured error
  (kernels_numba.py). Off by default: all math stays float32, as the weights are stored.
- from 9 rows of x on (small matrices: from 33), q8 / Q4 weights, int8 activations on,
  a CPU with AVX2 or better: the same int8 arithmetic in GEMM micro-kernels
  (kernels_int8.py: AVX512-VNNI, AVX2; on AMX beyond 16 rows): a prompt gets the same
  quantised x as decoding, 1.5-2x faster than the row loops at 16 rows, 2-3.5x at 128,
  and 2.5-4x faster than float32 tiles for BLAS (AVX2: 1.8-2.4x the row loops at 16
  rows). (Without AVX2, more than 32 rows decode float32 tiles below, with float32 x.)
- more rows, bf16 weights, numba backend, set_bf16_activations(True), a CPU with AMX or
  AVX512-BF16: x rounded to bf16 and multiplied by the stored bf16 with the CPU's bf16
  dot product (kernels_bf16.py), as PyTorch's bf16 model does: ~2.9x the route below on
  an AMX Xeon, at a measured error. Off by default, for the same reason.
- the same rows with float32 x (the default), on AMX: x as it is, in three bf16 parts
  that add up to it exactly, each multiplied by the bf16 GEMM and the products added:
  float32 arithmetic (kernels_bf16.matmul_exact), 1.3-1.4x the route below.
- otherwise (prefill, or the numpy backend): decode a tile of weight rows to
  float32 in a reused buffer (a few MB, cache-sized) and let BLAS multiply every
  row of x by it. Prefill is compute bound, and BLAS sgemm beats any loop here;
  no float32 copy of a whole matrix is ever made.

Backends: "numpy" always works; "numba" needs numba; "auto" (default) is numba
when it imports. The backend picks the loops on each call, never a weight's form: a
loaded model's weights stay in the form load() made them (its dtype and keep_quantized),
whichever backend multiplies them later. Thread counts: threads.configure_threads
(before NumPy is imported) sets BLAS's; set_threads changes numba's at run time. A
fused call or a GEMM of numba's runs on all of numba's threads or on the calling thread
alone, whichever thread_choice.py measures faster for the matrix's shape and the rows of
x (fused calls: one thread for small matrices).
Thread-safe: each thread decodes tiles into a buffer of its own.
"""

import threading
import time

import numpy as np

from .errors import InputError
from .formats import bf16_matmul, fused_matmul, int8_matmul, tile_decoder
from .thread_choice import ParallelChoice

BACKENDS = ("numpy", "numba", "auto")

# Float32 values per decoded tile (4 MB): big enough for BLAS to run at full speed,
# small enough to stay in the 32 MB L3 cache between decoding and multiplying.
_TILE_VALUES = 1 << 20

# Up to this many rows of x, the fused kernels beat decoding tiles for BLAS. Measured on
# Llama 3.2 1B's w1 (bf16, 2 threads): 6 rows 2.3 against 9.0 ms, 32 rows 9.1 against
# 10.0, 64 rows 18 against 16; q8 crosses over at about 32 rows too.
_FUSED_MAX_ROWS = 32

# With int8 activations, from this many rows of x on the GEMM of kernels_int8 beats the
# row loops (2 threads, q8 / Q4_0; AVX512-VNNI, 8192 x 2048: 8 rows 1.9 against 2.0 ms,
# 16 rows 2.1 against 4.1; 2048 x 2048: 0.6 both at 8 rows, 0.65 against 1.1 at 16; 1536
# x 576: 0.13 both at 8, 0.17 against 0.26 at 16. AVX2 (Zen 3), Q8 / Q4_0 8192 x 2048:
# 8 rows 3.1 against 2.9 / 1.9 against 2.4 ms, 12 rows 3.1 against 4.3 / 2.0 against
# 3.6; 1536 x 576 at 12 rows: 0.20 against 0.22 / 0.14 against 0.25). Matrices smaller than
# _PARALLEL_MIN_WEIGHTS keep the row loops, on one thread, up to _FUSED_MAX_ROWS rows.
_INT8_GEMM_MIN_ROWS = 9

# Matrices with fewer weights are multiplied on one thread even when more are allowed:
# starting a thread team and waiting at its barrier costs more than the halved loop
# saves. A 192x576 Q4 matrix (110K weights) took 10 us on one core and 37 us on two
# (medians; Xeon, 2 cores, the neighbours busy). From 576x576 (332K) up the choice is
# measured as the model runs (thread_choice.py): 28 against 54 us there, but on a quiet
# machine two threads may win.
_PARALLEL_MIN_WEIGHTS = 1 << 18

_backend = "auto"
_numba_threads = None  # set_threads' wish, applied when numba loads
_int8_wish = None  # set_int8_activations' wish, applied when numba loads
_numba_state = {}  # "module": kernels_numba, or None when numba is unavailable
_bf16_state = {"enabled": False}  # set_bf16_activations; "module": kernels_bf16 once loaded
_scratch = threading.local()  # .tile: this thread's tile buffer; .threads: numba's count here
_parallel_choice = ParallelChoice()  # per shape: fused kernels on all threads, or on one
# The same for GEMMs (prompts), whose trials of the slower way cost ms each: the first
# comes after 64 calls (on Llama 3.2 1B, the fifth prompt), not 16 (the second). A shape
# still leaves a way that has become slower as soon as its running mean says so.
_gemm_choice = ParallelChoice(first_trial_interval=64)


def set_backend(name: str) -> None:
    """Choose "numpy", "numba" or "auto" for every later linear() call."""
    global _backend
    if name not in BACKENDS:
        raise InputError(f"unknown kernel backend {name!r}; choose one of {', '.join(BACKENDS)}")
    if name == "numba" and _numba_kernels() is None:
        raise InputError("the numba backend needs the numba package, which is not installed "
                         "(pip install numba); the numpy backend needs nothing extra")
    _backend = name


def active_backend() -> str:
    """"numba" or "numpy": what linear() uses now ("auto" resolved)."""
    if _backend == "numpy" or _numba_kernels() is None:
        return "numpy"
    return "numba"


def set_threads(n: int) -> None:
    """Use n threads in numba's kernels (BLAS threads: see threads.configure_threads)."""
    global _numba_threads
    if n < 1:
        raise InputError(f"the thread count must be at least 1, got {n}")
    _numba_threads = n
    if _numba_state.get("module") is not None:  # else applied when numba loads
        _numba_state["threads"] = _numba_state["module"].set_threads(n)


def set_int8_activations(on: bool) -> None:
    """Multiply q8 / Q4 weights (numba backend) by x quantised to int8 per 32-value block,
    in integer dot products where the CPU has them (VNNI or AVX2: any number of rows of
    x), or by float32 x, exactly as the weights are stored (off: the default). See
    kernels_numba.py for the speed and the error of each."""
    global _int8_wish
    _int8_wish = bool(on)
    if _numba_state.get("module") is not None:  # else applied when numba loads
        _numba_state["module"].set_int8_activations(_int8_wish)


def set_bf16_activations(enabled: bool) -> None:
    """Whether GEMMs by bf16 weights (prefill: more than _FUSED_MAX_ROWS rows of x) round
    x to bf16 where the CPU multiplies bf16 (kernels_bf16.py), as PyTorch's bf16 models
    do; False (the default) keeps x in float32 everywhere."""
    _bf16_state["enabled"] = bool(enabled)


def warmup() -> None:
    """Compile or load the numba kernels now, so the first token is not slow."""
    if active_backend() == "numba":
        _numba_kernels().warmup()
        for extra in (_bf16_kernels(_numba_kernels()), _int8_kernels(_numba_kernels()),
                      compiled_steps()):
            if extra is not None:
                extra.warmup()


def compiled_steps():
    """The kernels_steps module (model.py's RMSNorm and one query's attention as compiled
    loops) with the numba backend, else None: model.py's NumPy steps."""
    if active_backend() != "numba":
        return None
    if "steps" not in _numba_state:
        from . import kernels_steps
        _numba_state["steps"] = kernels_steps
    return _numba_state["steps"]


def linear(x: np.ndarray, w) -> np.ndarray:
    """x @ w.T in float32: (..., in_features) -> (..., out_features)."""
    x = np.asarray(x, dtype=np.float32)
    n_out, n_in = w.shape
    if x.shape[-1] != n_in:
        raise ValueError(f"linear: x has {x.shape[-1]} features but the weight {w.shape} "
                         f"expects {n_in}")
    rows = x.reshape(-1, n_in)
    kernels = _numba_kernels() if _backend != "numpy" else None
    if isinstance(w, np.ndarray) and w.dtype == np.float32:
        # BLAS, except one row of x with numba: the row dot products (fused_matmul)
        out = None if kernels is None else _fused(w, (n_out, n_in), kernels,
                                                  np.ascontiguousarray(rows))
        return x @ w.T if out is None else out.reshape(x.shape[:-1] + (n_out,))
    out = None
    if kernels is not None and (len(rows) > _FUSED_MAX_ROWS or (
            len(rows) >= _INT8_GEMM_MIN_ROWS and n_out * n_in >= _PARALLEL_MIN_WEIGHTS)):
        gemm = int8_matmul(w, _int8_kernels(_in_parallel(kernels)))
        if gemm is not None:
            out = np.empty((len(rows), n_out), dtype=np.float32)
            _on_faster_threads(("int8", n_out, n_in), gemm, np.ascontiguousarray(rows), out)
    if out is None and kernels is not None and len(rows) <= _FUSED_MAX_ROWS:
        out = _fused(w, (n_out, n_in), kernels, np.ascontiguousarray(rows))
    if out is None:
        bf16_gemm = bf16_matmul(w, _bf16_kernels(_in_parallel(kernels)))
        if bf16_gemm is not None:
            out = _on_faster_threads(("bf16", n_out, n_in), bf16_gemm,
                                     np.ascontiguousarray(rows))
    if out is None:
        out = _tiled_matmul(rows, w.shape, tile_decoder(w, kernels))  # decoders run serially
    return out.reshape(x.shape[:-1] + (n_out,))


def _fused(w, shape: tuple, kernels, rows: np.ndarray):
    """rows @ w.T by w's fused kernel (None when w has none): on the calling thread
    alone (the serial twins, kernels_numba.SERIAL) when one thread is allowed or w is
    small, else on the threads _parallel_choice finds faster for w's shape, timed for it."""
    serial = fused_matmul(w, kernels.SERIAL, len(rows))
    if serial is None:
        return None
    n_out, n_in = shape
    out = np.empty((len(rows), n_out), dtype=np.float32)
    if _numba_state["threads"] == 1 or n_out * n_in < _PARALLEL_MIN_WEIGHTS:
        serial(rows, out)
        return out
    key = (n_out, n_in, len(rows))
    parallel = _parallel_choice.pick(key)
    fused = fused_matmul(w, _in_parallel(kernels), len(rows)) if parallel else serial
    start = time.perf_counter()
    fused(rows, out)
    _parallel_choice.record(key, parallel, time.perf_counter() - start)
    return out


def _on_faster_threads(matrix: tuple, gemm, rows: np.ndarray, *args):
    """gemm(rows, *args), a GEMM of numba's parallel kernels, on all of numba's threads or
    on the calling thread alone, whichever _gemm_choice finds faster for this matrix
    (route, shape) and about as many rows (a busy core holds up every parallel call:
    thread_choice.py). Timed per row, so that prompts whose lengths lie in the same
    power-of-two range (33-63 rows, 64-127, ...) share what is known (a chat's turns
    differ in length, and each way must be timed once before the choice is made). One
    thread is numba's count set to 1 for the call (~2 us each way, nothing next to a GEMM;
    the fused calls, shorter, have serial twins instead): the same loops, so the same
    bits."""
    if _numba_state["threads"] == 1:
        return gemm(rows, *args)
    key = matrix + (len(rows).bit_length(),)
    parallel = _gemm_choice.pick(key)
    if not parallel:
        _numba_kernels().set_threads(1)
    start = time.perf_counter()
    try:
        result = gemm(rows, *args)
    finally:
        if not parallel:
            _numba_kernels().set_threads(_numba_threads)
    _gemm_choice.record(key, parallel, (time.perf_counter() - start) / len(rows))
    return result


def _in_parallel(kernels):
    """kernels (kernels_numba or None), after giving numba set_threads' count in this
    thread: numba counts threads per calling thread, and setting it costs ~2 us, so
    each thread sets it once (and again after set_threads)."""
    if kernels is not None and getattr(_scratch, "threads", None) != _numba_threads:
        kernels.set_threads(_numba_threads)
        _scratch.threads = _numba_threads
    return kernels


def _tiled_matmul(rows: np.ndarray, shape: tuple, decode) -> np.ndarray:
    """rows @ w.T, decoding w one tile of rows at a time into a reused buffer."""
    n_out, n_in = shape
    out = np.empty((len(rows), n_out), dtype=np.float32)
    tile_rows = max(1, min(n_out, _TILE_VALUES // max(1, n_in)))
    buffer = getattr(_scratch, "tile", None)
    if buffer is None or buffer.size < tile_rows * n_in:
        buffer = _scratch.tile = np.empty(tile_rows * n_in, dtype=np.float32)
    for start in range(0, n_out, tile_rows):
        stop = min(n_out, start + tile_rows)
        tile = buffer[:(stop - start) * n_in].reshape(stop - start, n_in)
        decode(start, tile)
        np.matmul(rows, tile.T, out=out[:, start:stop])
    return out


def _bf16_kernels(kernels):
    """How rows of x are multiplied by bf16 weights in the CPU's bf16 dot products
    (a kernels_bf16.Multiply) when `kernels` (the numba backend) is in use: x rounded to
    bf16 where set_bf16_activations asks for it; else x as it is, in three bf16 parts, on
    the AMX route, where that beats decoding tiles for sgemm. None: tiles."""
    if kernels is None:
        return None
    if "module" not in _bf16_state:
        from . import kernels_bf16
        _bf16_state["module"] = kernels_bf16
    module = _bf16_state["module"]
    if _bf16_state["enabled"]:
        return module.ROUNDED
    return module.EXACT if module.route() == "amx" else None


def _int8_kernels(kernels):
    """The kernels_int8 module when x is quantised to int8 (set_int8_activations), the
    numba backend is in use and the module has a route (the CPU has AVX2 or better),
    else None."""
    if kernels is None or kernels.int8_activations() is None:
        return None
    if "int8" not in _numba_state:
        from . import kernels_int8
        _numba_state["int8"] = kernels_int8
    return _numba_state["int8"] if _numba_state["int8"].route() is not None else None


def _numba_kernels():
    """The kernels_numba module, or None when numba cannot be imported."""
    if "module" not in _numba_state:
        try:
            from . import kernels_numba
        except ImportError:
            kernels_numba = None
        if kernels_numba is not None:
            _numba_state["threads"] = kernels_numba.set_threads(_numba_threads)
            if _int8_wish is not None:
                kernels_numba.set_int8_activations(_int8_wish)
        _numba_state["module"] = kernels_numba
    return _numba_state["module"]
