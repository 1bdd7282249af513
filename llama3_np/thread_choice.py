"""Whether a fused matmul or a GEMM (kernels.linear) runs on every allowed thread or on
the calling thread alone, decided per matrix shape and rows of x by timing both ways while
the model runs.

Splitting a decode GEMV over the threads pays only when the halved loop saves more than
starting the thread team and waiting at its closing barrier for the slowest member. On
a quiet machine that holds for the bigger matrices. When another process keeps a core
busy, the sibling thread shares that core and the call waits until the scheduler runs
it: on a shared 2-core Xeon (Q4 weights, numba on OpenMP, the other core busy with
another process), 1536x576 took 75 us on one thread and 100 us on two (medians, the
worst of 600 calls 1.2 ms); 576x576 28 against 54 us. A prompt's GEMMs wait so too:
Llama 3.2 1B Q4_0, 128 tokens, int8 activations, a core busy: 1.8-2.0 s on one thread,
2.2-3.1 s on two always, 1.5-2.3 s on two with this choice. So no fixed rule is right
everywhere: each shape keeps a running mean of its time each way and takes the faster,
now and then timing the other way again (that one time replaces its old mean: the
machine may have changed since; if it wins, the running mean takes over from there).
After a trial loses, the next comes after twice as many calls (up to
MAX_TRIAL_INTERVAL): a busy core costs one slow call in hundreds, not in every few.

What a call's own time cannot see: on a machine with more runnable threads than cores
(load ~5 on the 2 cores), always splitting once decoded 41 against 53 ms a token while
the per-call times favoured one thread (the scheduler favours a process whose threads
wait often); in other rounds under that load it lost (92 against 88 ms). The per-call
rule is kept: it is right in the case it is for, one core kept busy by another process.

The choice never changes a result: each weight row is summed by the same loop, on
whichever thread, over the same row blocks (kernels_numba.py, kernels_int8.py,
kernels_bf16.py; tests/test_thread_choice.py checks the bits).
"""

import threading

FIRST_TRIAL_INTERVAL = 16  # calls of a shape between trials of the slower way, at first
MAX_TRIAL_INTERVAL = 1024  # ... and at most, after trials kept losing
_MEAN_WEIGHT = 0.125  # of each new time in the running mean (about the last 8 calls)
_OUTLIER_CAP = 2.0  # a time counts at most this many times the mean: one preempted call
                    # moves the mean by an eighth, a lasting slow-down doubles it in 6


class _Shape:
    """What is known of one shape: mean seconds [serial, parallel] (None: not timed yet),
    calls left until the next trial, the interval after it, and whether a trial runs."""

    __slots__ = ("means", "countdown", "interval", "trial")

    def __init__(self, first_interval: int):
        self.means = [None, None]
        self.countdown = self.interval = first_interval
        self.trial = False

    def favours_parallel(self) -> bool:
        serial, parallel = self.means
        return parallel < serial


class ParallelChoice:
    """pick(key) -> run this call in parallel?; record(key, parallel, seconds) after it.

    Thread-safe enough: calls from several threads at once may lose an update to a
    mean or a countdown, never fail. first_trial_interval: calls between the first
    trials (a trial of a long call costs more)."""

    def __init__(self, first_trial_interval: int = FIRST_TRIAL_INTERVAL):
        self._shapes = {}
        self._lock = threading.Lock()  # only to add a shape
        self._first_interval = first_trial_interval

    def pick(self, key) -> bool:
        shape = self._shapes.get(key)
        if shape is None:
            with self._lock:
                shape = self._shapes.setdefault(key, _Shape(self._first_interval))
        if shape.means[0] is None:  # time each way once, serial first
            return False
        if shape.means[1] is None:
            return True
        favoured = shape.favours_parallel()
        shape.countdown -= 1
        if shape.countdown > 0:
            return favoured
        shape.trial, shape.countdown = True, shape.interval
        return not favoured

    def record(self, key, parallel: bool, seconds: float) -> None:
        shape = self._shapes[key]
        mean = shape.means[parallel]
        if mean is None or shape.trial:  # a first time, or a new look at the slower way
            shape.means[parallel] = seconds  # (its mean is old: the machine may have changed)
        else:
            shape.means[parallel] = mean + _MEAN_WEIGHT * (min(seconds, _OUTLIER_CAP * mean) -
                                                           mean)
        if shape.trial:
            shape.trial = False
            won = shape.favours_parallel() == parallel
            shape.interval = self._first_interval if won else \
                min(2 * shape.interval, MAX_TRIAL_INTERVAL)
            shape.countdown = shape.interval

    def favoured(self, key):
        """True (parallel), False (serial), or None while the shape is not timed both ways."""
        shape = self._shapes.get(key)
        if shape is None or None in shape.means:
            return None
        return shape.favours_parallel()
