"""The walk-through notebook runs from top to bottom on the demo model: every by-hand step
in it asserts that it equals the library's traced tensor, so a failing cell is a story
that no longer matches the code."""

import importlib.util
import time

import pytest

from tests.conftest import REPO

pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")


def load_refresh():
    spec = importlib.util.spec_from_file_location("refresh", REPO / "notebooks" / "refresh.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_walkthrough_runs_and_agrees_with_the_library(demo_model_path):
    refresh = load_refresh()
    start = time.perf_counter()
    notebook = refresh.execute(model=demo_model_path, timeout=120)
    seconds = time.perf_counter() - start
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code and all(cell.execution_count for cell in code)
    outputs = [o for cell in code for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert seconds < 60, f"the walk-through took {seconds:.0f} s; it should stay under a minute"
