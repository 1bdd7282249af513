"""bench.py's llama.cpp rows: llama-bench's JSON read into the same measurement as our
rows, and the interleaved run order; and which RESULTS.md section a run writes (the
benchmark itself is never run by the tests)."""

import json
import sys
from pathlib import Path
from types import SimpleNamespace

from tests.conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
import bench  # noqa: E402

# What llama-bench -o json prints for -p 128 -n 32 -r 2 (fields bench.py reads, and some).
RUNS = [{"build_commit": "c392e5094", "build_number": 4748, "model_size": 703204928,
         "n_threads": 2, "n_prompt": 128, "n_gen": 0, "avg_ts": 200.0,
         "samples_ns": [640_000_000, 600_000_000]},
        {"build_commit": "c392e5094", "build_number": 4748, "model_size": 703204928,
         "n_threads": 2, "n_prompt": 0, "n_gen": 32, "avg_ts": 40.0,
         "samples_ns": [800_000_000, 850_000_000]}]


def fake_llama_bench(tmp_path: Path) -> Path:
    """An executable that prints RUNS, and its arguments to args.json."""
    script = tmp_path / "build" / "bin" / "llama-bench"
    script.parent.mkdir(parents=True)
    script.write_text(f"#!{sys.executable}\nimport json, sys\n"
                      f"open({str(tmp_path / 'args.json')!r}, 'w').write(json.dumps(sys.argv))\n"
                      f"print(json.dumps({RUNS!r}))\n")
    script.chmod(0o755)
    return script


def test_llama_bench_json_becomes_a_row(tmp_path):
    binary = fake_llama_bench(tmp_path)
    case = bench.Case("llama.cpp", "Q4_0")
    measured = bench.run_llama_bench(binary, tmp_path / "model.gguf", 2, bench.FULL, case)
    args = json.loads((tmp_path / "args.json").read_text())
    assert args[1:] == ["-m", str(tmp_path / "model.gguf"), "-p", "128", "-n", "32",
                        "-r", "3", "-t", "2", "-o", "json"]
    row = bench.Row.from_measurement(case, measured)
    assert row.prefill_tps == 128 / 0.6  # the best run
    assert abs(row.decode_tps - 32 / 0.825) < 1e-9  # the median run, per token
    assert row.weight_bytes == 703204928
    assert row.peak_rss > 0  # the child's own, from wait4
    assert measured["build"] == "c392e5094 (4748)"
    assert bench.build_name(binary) == "build"


def test_llama_bench_failure_is_reported_not_raised(tmp_path):
    binary = tmp_path / "llama-bench"
    binary.write_text("#!/bin/sh\necho 'error: failed to load model' >&2\nexit 1\n")
    binary.chmod(0o755)
    measured = bench.run_llama_bench(binary, tmp_path / "x.gguf", 2, bench.FULL,
                                     bench.Case("llama.cpp", "F32"))
    assert measured == {"error": "exit code 1: error: failed to load model"}


def test_engines_interleave_for_each_weight_type():
    cases = bench.all_cases(2, ["", "build-noamx"], numpy_rows=False)
    q4 = [c.label for c in cases if c.weights == "Q4_0"]
    assert q4 == ["llama3_np Q4_0 (numba)", "llama3_np Q4_0 (numba-int8)", "llama.cpp Q4_0",
                  "llama.cpp Q4_0 (build-noamx)", "llama3_np Q4_0 (numba-int8)",
                  "llama3_np Q4_0 (numba)"]
    assert [c.label for c in cases if c.weights == "BF16"] == [
        "llama3_np BF16 (numba)", "llama3_np BF16 (numba-bf16)", "llama.cpp BF16",
        "llama.cpp BF16 (build-noamx)", "llama3_np BF16 (numba-bf16)", "llama3_np BF16 (numba)"]
    assert [c.label for c in cases if c.weights == "F32"] == [
        "llama3_np F32", "llama.cpp F32", "llama.cpp F32 (build-noamx)", "llama3_np F32"]
    demo = [(c.engine, c.threads) for c in cases if c.model == "demo"]
    assert demo == [("llama3_np", 1)] * 2 + [("llama.cpp", 1)] * 2 + [("llama3_np", 1)] * 2 \
        + [("llama3_np", 2)] * 2 + [("llama.cpp", 2)] * 2 + [("llama3_np", 2)] * 2
    assert [c.label for c in bench.all_cases(2, [], numpy_rows=False)
            if c.weights == "Q4_0"] == ["llama3_np Q4_0 (numba)", "llama3_np Q4_0 (numba-int8)"]


def test_targets_compare_with_the_reference_build_only():
    def row(engine, backend, decode, prefill):
        return bench.Row(bench.Case(engine, "Q8_0", backend), prefill_tps=prefill,
                         decode_tps=decode, weight_bytes=10**9, peak_rss=0,
                         load_seconds=0.0, threads_in_use={})

    rows = [row("llama3_np", "numba", 19.0, 90.0), row("llama.cpp", "", 20.0, 100.0),
            row("llama.cpp", "build-noamx", 10.0, 50.0), row("llama3_np", "numba", 21.0, 70.0)]
    results = {name: result for name, _, result, _ in bench.targets(rows, 30.0, 128)}
    assert results == {"decode Q8_0 (numba) >= 0.95x llama.cpp": "PASS",  # 20 >= 19
                       "prefill 128 Q8_0 (numba) >= 0.8x llama.cpp": "PASS"}  # 80 >= 80
    rows[3] = row("llama3_np", "numba", 18.0, 60.0)
    results = {name: result for name, _, result, _ in bench.targets(rows, 30.0, 128)}
    assert set(results.values()) == {"MISS"}
    assert "build-noamx" in bench.comparison_table(rows, 128)


def test_a_float32_x_prefill_miss_shows_what_float32_weights_reached():
    def row(engine, weights, backend, prefill):
        return bench.Row(bench.Case(engine, weights, backend), prefill_tps=prefill,
                         decode_tps=20.0, weight_bytes=10**9, peak_rss=0,
                         load_seconds=0.0, threads_in_use={})

    rows = [row("llama3_np", "BF16", "numba", 120.0), row("llama.cpp", "BF16", "", 250.0),
            row("llama3_np", "BF16", "numba", 130.0),
            row("llama3_np", "BF16", "numba-bf16", 300.0), row("llama.cpp", "F32", "", 130.0),
            row("llama3_np", "F32", "numba", 140.0)]
    evidence = {name: (result, why) for name, _, result, why in bench.targets(rows, 30.0, 128)}
    result, why = evidence["prefill 128 BF16 (numba) >= 0.8x llama.cpp"]
    assert result == "MISS" and why.startswith("float32 arithmetic") and "140.00 tok/s" in why
    assert why.endswith("takes x in bf16 for these weights, as the (numba-bf16) row does")
    assert evidence["prefill 128 BF16 (numba-bf16) >= 0.8x llama.cpp"] == ("PASS", "")
    rows[-1] = row("llama3_np", "F32", "numba", 210.0)  # float32 reached it: no excuse
    evidence = {name: why for name, _, _, why in bench.targets(rows, 30.0, 128)}
    assert evidence["prefill 128 BF16 (numba) >= 0.8x llama.cpp"] == ""


def test_partial_runs_keep_their_own_results_section():
    """A --quick or --only run must not replace the full table in RESULTS.md."""
    def section(quick: bool, only: str) -> str:
        return bench.section_name(SimpleNamespace(quick=quick, only=only))

    assert section(False, "") == "bench.py"
    assert section(False, "q8_0,demo") == "bench.py --only q8_0,demo"
    assert section(True, "") == "bench.py --quick"
    assert section(True, "demo") == "bench.py --quick --only demo"


def test_an_engine_faster_than_the_bandwidth_probes_raises_the_bound(monkeypatch):
    """When an engine read its weights from memory faster than the probes measured, the
    bound is that engine's rate: a target it beat must not be called impossible. Weights
    that fit in the L3 cache say nothing about memory."""
    import machine

    monkeypatch.setattr(machine, "l3_cache_bytes", lambda: 32 << 20)

    def row(engine, decode, weight_bytes):
        return bench.Row(bench.Case(engine, "F32"), prefill_tps=1.0, decode_tps=decode,
                         weight_bytes=weight_bytes, peak_rss=0, load_seconds=0.0,
                         threads_in_use={})

    rows = [row("llama3_np", 10.0, 4 * 10**9), row("llama.cpp", 12.0, 4 * 10**9),
            row("llama3_np", 400.0, 10**7)]  # 4 GB/s, but from the cache
    gbps, source = bench.decode_bound(42.0, rows)
    assert gbps == 48.0 and "llama.cpp F32 read its weights" in source  # 12 tok/s x 4 GB
    assert bench.decode_bound(50.0, rows) == (50.0, "the best read rate above")
    [(_, _, result, evidence)] = [t for t in bench.targets(rows[:2], 48.0, 128)
                                  if t[0].startswith("decode F32 >= 0.95x")]
    assert result == "MISS" and "impossible" not in evidence  # 10 < 0.95 x 12, bound 12
