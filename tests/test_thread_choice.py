"""The per-call choice of one thread or all for a fused matmul or a GEMM:
thread_choice.ParallelChoice on made-up timings, and kernels.linear giving the same bits
whichever it takes."""

import threading

import numpy as np
import pytest

from llama3_np import kernels
from llama3_np.thread_choice import FIRST_TRIAL_INTERVAL, MAX_TRIAL_INTERVAL, ParallelChoice
from llama3_np.formats import fused_matmul
from tests.test_kernels import (HAVE_NUMBA, INT8_FORMS, INT8_GEMM_ROUTES, NEEDS_NUMBA,
                                assert_matches_float64, random_matrix, weight_in)

KEY = (1536, 576, 1)


def run(choice: ParallelChoice, calls: int, serial: float, parallel: float) -> list:
    """`calls` picks, each recorded as taking `serial` or `parallel` seconds; the picks."""
    picks = []
    for _ in range(calls):
        picked = choice.pick(KEY)
        choice.record(KEY, picked, parallel if picked else serial)
        picks.append(picked)
    return picks


def test_times_each_way_once_then_takes_the_faster():
    choice = ParallelChoice()
    assert choice.favoured(KEY) is None
    assert run(choice, 2, serial=2.0, parallel=1.0) == [False, True]
    assert choice.favoured(KEY) is True
    picks = run(choice, FIRST_TRIAL_INTERVAL - 1, serial=2.0, parallel=1.0)
    assert picks == [True] * (FIRST_TRIAL_INTERVAL - 1)


@pytest.mark.parametrize("first", [FIRST_TRIAL_INTERVAL, 64])
def test_tries_the_slower_way_again_less_often_while_it_loses(first):
    choice = ParallelChoice() if first == FIRST_TRIAL_INTERVAL else ParallelChoice(first)
    run(choice, 2, serial=1.0, parallel=5.0)
    picks = run(choice, 16 * first, serial=1.0, parallel=5.0)
    trials = [i for i, parallel in enumerate(picks) if parallel]
    assert trials[0] == first - 1
    assert list(np.diff(trials)) == [2 * first, 4 * first, 8 * first]
    picks = run(choice, 20 * MAX_TRIAL_INTERVAL, serial=1.0, parallel=5.0)
    assert 0 < sum(picks) <= 20 + 1  # at most one trial per MAX_TRIAL_INTERVAL calls
    assert choice.favoured(KEY) is False


def test_follows_the_machine_when_the_faster_way_changes():
    """A core becomes busy (parallel slows down), then free again."""
    choice = ParallelChoice()
    run(choice, 100, serial=2.0, parallel=1.0)
    assert choice.favoured(KEY) is True
    picks = run(choice, 100, serial=2.0, parallel=8.0)  # the running mean reaches 2 soon
    assert choice.favoured(KEY) is False and sum(picks[-50:]) <= 2
    picks = run(choice, 8 * MAX_TRIAL_INTERVAL, serial=2.0, parallel=1.0)
    assert choice.favoured(KEY) is True and sum(picks[-100:]) >= 99


def test_one_slow_call_does_not_switch():
    """A call preempted once counts as at most twice the mean: the mean moves by 1/8."""
    choice = ParallelChoice()
    run(choice, 2, serial=2.0, parallel=1.0)
    choice.pick(KEY)
    choice.record(KEY, True, 1000.0)
    assert choice.favoured(KEY) is True


def test_shapes_are_chosen_apart():
    choice = ParallelChoice()
    for _ in range(10):
        for key, serial, parallel in [((1, 2, 1), 1.0, 2.0), ((3, 4, 1), 2.0, 1.0)]:
            picked = choice.pick(key)
            choice.record(key, picked, parallel if picked else serial)
    assert choice.favoured((1, 2, 1)) is False and choice.favoured((3, 4, 1)) is True


# --- kernels.linear ------------------------------------------------------------------

@pytest.fixture
def numba_backend():
    """The numba backend, and numba's thread count back to all started after the test."""
    import numba

    kernels.set_backend("numba")
    yield kernels._numba_kernels()
    kernels.set_threads(numba.config.NUMBA_NUM_THREADS)
    kernels.set_backend("auto")


@pytest.fixture
def forced(monkeypatch, numba_backend):
    """force(parallel): every fused call on all threads (True) or on one (False),
    whatever the matrix size."""
    monkeypatch.setattr(kernels, "_PARALLEL_MIN_WEIGHTS", 0)

    def force(parallel: bool):
        for choice in (kernels._parallel_choice, kernels._gemm_choice):
            monkeypatch.setattr(choice, "pick", lambda key: parallel)
            monkeypatch.setattr(choice, "record", lambda *args: None)
    return force


@NEEDS_NUMBA
@pytest.mark.parametrize("dtype", ["bf16", "q8", "gguf_q4_1", "gguf_q4_0"])
@pytest.mark.parametrize("n_rows", [1, 2, 3])
@pytest.mark.parametrize("shape", [(67, 544), (193, 96), (5, 64)])
def test_one_thread_and_all_give_the_same_bits(dtype, n_rows, shape, forced):
    """Each weight row is summed by the same loop over the same row blocks, on whichever
    thread: the bits cannot depend on the thread count, or on the choice."""
    w, w_float32 = weight_in(dtype, random_matrix(shape))
    x = random_matrix((n_rows, shape[1]), seed=11)
    kernels.set_threads(2)
    forced(True)
    parallel = kernels.linear(x, w)
    forced(False)
    serial = kernels.linear(x, w)
    np.testing.assert_array_equal(parallel, serial)
    assert_matches_float64(serial, x, w_float32)


@NEEDS_NUMBA
@pytest.mark.parametrize("dtype, int8_form", [
    *[(dtype, None) for dtype in ("bf16", "q8", "gguf_q4_0", "gguf_q4_1")],
    *[(dtype, form) for dtype in ("q8", "gguf_q4_0", "gguf_q4_1") for form in INT8_FORMS]])
@pytest.mark.parametrize("n_out", [1000, 5])
def test_the_threads_claim_every_block_of_rows_once(dtype, int8_form, n_out, numba_backend):
    """A parallel kernel's threads claim blocks of weight rows in turn: every row of out is
    written (it starts as NaN), by the same loop as on one thread, whether the threads
    share 63 blocks or one (and the other claims none)."""
    w, _ = weight_in(dtype, random_matrix((n_out, 96)))
    x = random_matrix((3, 96), seed=13)
    kernels.set_threads(2)
    numba_backend.set_int8_activations(int8_form is not None, int8_form)
    try:
        outs = [np.full((3, n_out), np.nan, dtype=np.float32) for _ in range(2)]
        for kernel_set, out in zip((numba_backend, numba_backend.SERIAL), outs):
            fused_matmul(w, kernel_set, len(x))(x, out)
    finally:
        numba_backend.set_int8_activations(False)
    assert not np.isnan(outs[0]).any()
    np.testing.assert_array_equal(*outs)


def gemm_routes():
    """(weights, x's form) for each GEMM route this CPU has: int8 x by Q8 / Q4 weights
    (AVX2 or better), bf16 x by bf16 weights (AMX or AVX512-BF16), float32 x in exact bf16
    parts by bf16 weights (AMX)."""
    if not HAVE_NUMBA:
        return []
    from llama3_np import kernels_bf16
    bf16_routes = kernels_bf16.available_routes()
    return [*[(dtype, "int8") for dtype in ("q8", "gguf_q4_0", "gguf_q4_1")
              if INT8_GEMM_ROUTES],
            *[("bf16", "bf16") for _ in bf16_routes[:1]],
            *[("bf16", "exact") for route in bf16_routes[:1] if route == "amx"]]


@NEEDS_NUMBA
@pytest.mark.parametrize("dtype, x_form", gemm_routes() or [pytest.param(
    None, None, marks=pytest.mark.skip(reason="this CPU has no int8 or bf16 GEMM route"))])
def test_a_prompts_gemms_run_on_the_threads_the_choice_picks(dtype, x_form, forced,
                                                             monkeypatch, numba_backend,
                                                             float_activations):
    """More rows than the fused kernels take (a prompt) go to a GEMM, and its threads are
    chosen per shape as decoding's are (a busy core slows every parallel call): on one
    thread, numba's count is 1 during the call and back to 2 after it; the bits are the
    same either way."""
    import numba

    w, _ = weight_in(dtype, random_matrix((67, 544)))
    x = random_matrix((kernels._FUSED_MAX_ROWS + 8, 544), seed=14)
    counts = []

    def counting(find_gemm):
        def find(w, gemm_kernels):
            gemm = find_gemm(w, gemm_kernels)
            assert gemm is not None, "the GEMM route was not taken"

            def gemm_counted(*args):
                counts.append(numba.get_num_threads())
                return gemm(*args)
            return gemm_counted
        return find

    target = "int8_matmul" if x_form == "int8" else "bf16_matmul"
    monkeypatch.setattr(kernels, target, counting(getattr(kernels, target)))
    numba_backend.set_int8_activations(x_form == "int8")  # float_activations resets both
    kernels.set_bf16_activations(x_form == "bf16")
    kernels.set_threads(2)
    forced(True)
    parallel = kernels.linear(x, w)
    forced(False)
    serial = kernels.linear(x, w)
    after = numba.get_num_threads()
    expected = min(2, numba.config.NUMBA_NUM_THREADS)
    assert counts == [expected, 1] and after == expected
    np.testing.assert_array_equal(parallel, serial)


@NEEDS_NUMBA
@pytest.mark.skipif(not gemm_routes(), reason="this CPU has no int8 or bf16 GEMM route")
def test_prompts_of_about_the_same_length_share_the_gemm_choice(monkeypatch, numba_backend,
                                                                float_activations):
    """Each way is timed once before the choice is made: a chat whose turns differ in
    length must not time one thread again for every new length (times go per row)."""
    import numba

    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("numba has one thread here: there is nothing to choose")
    dtype, x_form = gemm_routes()[0]
    w, _ = weight_in(dtype, random_matrix((67, 544)))
    monkeypatch.setattr(kernels, "_gemm_choice", ParallelChoice())
    picks = []
    real_pick = kernels._gemm_choice.pick
    monkeypatch.setattr(kernels._gemm_choice, "pick",
                        lambda key: picks.append(real_pick(key)) or picks[-1])
    numba_backend.set_int8_activations(x_form == "int8")  # float_activations resets both
    kernels.set_bf16_activations(x_form == "bf16")
    kernels.set_threads(2)
    for n_rows in (40, 50, 63, 70):
        kernels.linear(random_matrix((n_rows, 544), seed=n_rows), w)
    assert picks[:2] == [False, True]  # 40 and 50 rows: one thread, then all
    assert len(picks) == 4 and picks[3] is False  # 70 rows: a new range, timed again


@NEEDS_NUMBA
def test_small_matrices_and_one_thread_never_start_a_thread_team(monkeypatch, numba_backend):
    def no_team(*args):
        raise AssertionError("started the parallel kernel")
    monkeypatch.setattr(numba_backend, "matmul_q4", no_team)
    w, w_float32 = weight_in("gguf_q4_1", random_matrix((64, 256)))
    x = random_matrix((1, 256), seed=12)
    assert 64 * 256 < kernels._PARALLEL_MIN_WEIGHTS
    assert_matches_float64(kernels.linear(x, w), x, w_float32)
    monkeypatch.setattr(kernels, "_PARALLEL_MIN_WEIGHTS", 0)
    kernels.set_threads(1)  # big enough now, but one thread is allowed
    assert_matches_float64(kernels.linear(x, w), x, w_float32)


@NEEDS_NUMBA
def test_each_calling_thread_gets_the_thread_count(numba_backend):
    """numba keeps its thread count per calling thread: a thread that never called
    set_threads must still get its count, and a later set_threads must reach it."""
    import numba

    seen = []

    def in_a_new_thread():
        kernels._in_parallel(numba_backend)
        seen.append(numba.get_num_threads())

    for n in (1, 2):
        kernels.set_threads(n)
        worker = threading.Thread(target=in_a_new_thread)
        worker.start()
        worker.join()
        kernels._in_parallel(numba_backend)
        seen.append(numba.get_num_threads())
    expected = [min(n, numba.config.NUMBA_NUM_THREADS) for n in (1, 1, 2, 2)]
    assert seen == expected


@NEEDS_NUMBA
def test_serial_twins_are_cached_apart_from_the_parallel_kernels():
    """numba's on-disk cache tells functions apart by name only: a twin named as its
    original would load the parallel machine code from the cache, or the other way round."""
    from llama3_np import kernels_numba

    assert len(kernels_numba._SERIAL_KERNELS) == len(kernels_numba._PARALLEL_KERNELS) == 5
    for parallel, serial in zip(kernels_numba._PARALLEL_KERNELS, kernels_numba._SERIAL_KERNELS):
        assert parallel.targetoptions.get("parallel") is True
        assert not serial.targetoptions.get("parallel")
        assert serial.py_func.__qualname__ == parallel.py_func.__qualname__ + "_serial"


@NEEDS_NUMBA
def test_the_demo_model_decodes_the_same_bits_on_one_thread_or_all(demo_model_path, forced):
    import llama3_np

    llm = llama3_np.load(demo_model_path)
    kernels.set_threads(2)
    logits = {}
    for parallel in (True, False):
        forced(parallel)
        cache = llm.new_cache()
        steps = [llm.forward([1, 9690, 28, 2], 0, cache=cache)]
        steps += [llm.forward([token], cache=cache) for token in (5248, 314)]
        logits[parallel] = np.concatenate(steps)
    np.testing.assert_array_equal(logits[True], logits[False])
