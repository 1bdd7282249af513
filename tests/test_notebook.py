"""The walk-through notebook runs from top to bottom: every by-hand step in it asserts that
it equals the library's traced tensor, so a failing cell is a story that no longer matches
the code. On the demo model (what the committed outputs show), and on a tiny random Llama 3.1
in Hugging Face's format (Meta's tokenizer, GQA, rope scaling, bf16 weights), the paths the
demo model does not take."""

import importlib.util
import time

import pytest

from tests.conftest import REPO
from tests.tiny import random_weights, tiny_config

pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")


def execute(**options):
    """refresh.execute (notebooks/ is not a package): the executed notebook's code cells."""
    spec = importlib.util.spec_from_file_location("refresh", REPO / "notebooks" / "refresh.py")
    refresh = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(refresh)
    notebook = refresh.execute(timeout=120, **options)  # raises at the first failing cell
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code and all(cell.execution_count for cell in code)
    assert not [o for cell in code for o in cell.outputs if o.output_type == "error"]
    return code


def test_walkthrough_on_the_demo_model(demo_model_path):
    start = time.perf_counter()
    execute(model=demo_model_path)
    seconds = time.perf_counter() - start
    assert seconds < 60, f"the walk-through took {seconds:.0f} s; it should stay under a minute"


def test_walkthrough_on_a_llama31_shaped_checkpoint(tmp_path, llama3_tokenizer_path):
    pytest.importorskip("torch")
    from tests.checkpoints.hf import write_hf_checkpoint

    config = tiny_config()  # rope scaling with an original context of 64: it moves the angles
    assert config.rope_scaling is not None
    folder = write_hf_checkpoint(tmp_path / "tiny", random_weights(config), config)
    (folder / "tokenizer.model").symlink_to(llama3_tokenizer_path)
    code = execute(model=folder, dtype="bf16")
    printed = "".join(o.get("text", "") for o in code[0].outputs)
    assert "2 layers, width 64, 4 query heads / 2 key-value heads" in printed
