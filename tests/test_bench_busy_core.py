"""busy_core.py's table: each engine's --threads against 1 thread, per condition, from the
medians over the rounds (the benchmark itself is never run by the tests)."""

import sys
from types import SimpleNamespace

from tests.conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
import busy_core  # noqa: E402


def test_the_table_compares_threads_within_each_condition():
    runs = {("quiet", "llama3_np", 1): [(100.0, 10.0), (120.0, 30.0), (110.0, 20.0)],
            ("quiet", "llama3_np", 4): [(200.0, 30.0), (260.0, 50.0), (220.0, 40.0)],
            ("a core busy", "llama3_np", 1): [(100.0, 20.0)] * 3,
            ("a core busy", "llama3_np", 4): [(50.0, 25.0)] * 3}
    lines = busy_core.table(runs, SimpleNamespace(threads=4), ["llama3_np"]).splitlines()
    assert lines[0].split(" | ")[-2:] == ["4 threads / 1: prefill", "4 threads / 1: decode |"]
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[2:]]
    assert rows == [
        ["quiet", "llama3_np", "1", "100, 120, 110", "10.0, 30.0, 20.0", "", ""],
        ["quiet", "llama3_np", "4", "200, 260, 220", "30.0, 50.0, 40.0", "2.00x", "2.00x"],
        ["a core busy", "llama3_np", "1", "100, 100, 100", "20.0, 20.0, 20.0", "", ""],
        ["a core busy", "llama3_np", "4", "50, 50, 50", "25.0, 25.0, 25.0", "0.50x", "1.25x"]]
