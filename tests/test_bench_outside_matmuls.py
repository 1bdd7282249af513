"""bench.py's time outside the matmuls: bench_case.replayed_matmuls, and what a missed
decode target says with it (the benchmark itself is never run by the tests)."""

import sys

import numpy as np

from tests.conftest import REPO
from tests.tiny import random_weights, tiny_config

sys.path.insert(0, str(REPO / "benchmarks"))
import bench  # noqa: E402
from bench_case import StreamedReads, replayed_matmuls  # noqa: E402


def rows_around_llama_cpp(outside_ms: float, model: str = "demo") -> list:
    """Two rows of ours (100 MB of weights a token, 50 tok/s: 20 ms, outside_ms of it
    outside the matmuls) around llama.cpp's (100 tok/s: 10 ms a token), one thread."""
    def row(engine, backend, decode, outside=None):
        return bench.Row(bench.Case(engine, "Q4_1", backend, model=model, threads=1),
                         prefill_tps=1.0, decode_tps=decode, weight_bytes=10**8, peak_rss=0,
                         load_seconds=0.0, threads_in_use={}, outside_matmuls_seconds=outside)

    ours = row("llama3_np", "numba-int8", 50.0, outside_ms / 1e3)
    return [ours, row("llama.cpp", "", 100.0), ours]


def decode_target(rows: list) -> tuple:
    return next(t for t in bench.targets(rows, 30.0, 128) if t[0].startswith("decode"))


def test_a_decode_miss_says_what_the_matmuls_would_need():
    name, _, result, evidence = decode_target(rows_around_llama_cpp(outside_ms=6.0))
    assert (name, result) == ("decode Q4_1 demo model, 1 thread (numba-int8) >= 1x llama.cpp",
                              "MISS")
    # The target allows 10 ms a token; 6 outside the matmuls leaves them 4 ms for 100 MB:
    # 25 GB/s. Now they take 20 - 6 = 14 ms.
    assert evidence == ("a token spends 6.00 ms outside the matmuls, so in the 10.00 ms the "
                        "target allows they would have to read its 100 MB of weights in 4.00 "
                        "ms (25.0 GB/s; now 14.00 ms, 7.1 GB/s)")
    _, _, _, evidence = decode_target(rows_around_llama_cpp(outside_ms=12.0))
    assert evidence == ("out of reach of this design: a token spends 12.00 ms outside the "
                        "matmuls, at least the whole token the target allows (10.00 ms)")


def test_the_1b_target_allows_its_own_share_of_llama_cpps_token():
    # 0.95x llama.cpp's 100 tok/s: 95 tok/s, 10.53 ms a token.
    _, _, result, evidence = decode_target(rows_around_llama_cpp(6.0, model="1b"))
    assert result == "MISS" and "in the 10.53 ms the target allows" in evidence


def test_a_met_target_carries_no_evidence():
    rows = rows_around_llama_cpp(outside_ms=9.0)
    rows[1] = bench.Row(**{**vars(rows[1]), "decode_tps": 40.0})  # llama.cpp slower
    assert decode_target(rows)[2:] == ("PASS", "")


def test_replayed_matmuls_compute_each_product_once():
    from llama3_np import model
    from llama3_np.model import Transformer

    config = tiny_config()
    llm = Transformer(config, random_weights(config))
    real_linear, computed = model.linear, []

    def counted(x, w):
        computed.append(w)
        return real_linear(x, w)

    expected = llm.forward([7], 0, last_only=True, cache=llm.new_cache())
    model.linear = counted
    try:
        with replayed_matmuls():
            cache = llm.new_cache()
            first = llm.forward([7], 0, last_only=True, cache=cache)
            llm.forward([7], 1, last_only=True, cache=cache)  # every product looked up
            assert len(computed) == 7 * config.n_layers + 1  # q k v o w1 w3 w2; logits
            llm.forward([7, 8], 2, cache=cache)  # two rows of x: products of their own
        assert model.linear is counted  # put back
    finally:
        model.linear = real_linear
    np.testing.assert_array_equal(first, expected)
    assert len(computed) == 2 * (7 * config.n_layers + 1)


def test_streamed_reads_go_on_around_the_buffer():
    reads = StreamedReads(megabytes=1)  # 2^18 float32
    reads.read(3 << 18)  # three quarters of it
    assert reads.position == 3 << 16 and reads.seconds > 0
    reads.read(2 << 18)  # on past its end
    assert reads.position == 1 << 16


def test_replayed_matmuls_read_each_weights_bytes_when_asked():
    from llama3_np.model import Transformer

    class Counted(StreamedReads):
        def read(self, n_bytes):
            asked.append(n_bytes)

    config = tiny_config()
    llm = Transformer(config, random_weights(config))
    asked = []
    with replayed_matmuls(Counted(megabytes=1)):
        llm.forward([7], 0, last_only=True, cache=llm.new_cache())
    names = [f"layers.{i}.{m}.weight" for i in range(config.n_layers)
             for m in ("attention.wq", "attention.wk", "attention.wv", "attention.wo",
                       "feed_forward.w1", "feed_forward.w3", "feed_forward.w2")]
    output = llm.weights.get("output.weight", llm.weights["tok_embeddings.weight"])
    assert asked == [llm.weights[n].nbytes for n in names] + [output.nbytes]
