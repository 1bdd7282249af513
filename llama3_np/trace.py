"""Recording the forward pass's named intermediate tensors, for inspection.

The model hands every step to `model.trace(name, tensor)`; normally that is a
function that does nothing. A Trace, while active, records copies of the
tensors whose names match its patterns, one dict per forward call.
"""

from fnmatch import fnmatchcase

import numpy as np


class Trace:
    def __init__(self, model, *patterns: str):
        self.model = model
        self.patterns = patterns or ("*",)
        self.steps = []  # one {name: tensor} per forward call

    def record(self, name: str, tensor: np.ndarray) -> None:
        if name == "tokens":  # every forward call starts here
            self.steps.append({})
        if any(fnmatchcase(name, p) for p in self.patterns):
            self.steps[-1][name] = np.array(tensor, copy=True)

    def __enter__(self) -> "Trace":
        self._previous = self.model.trace
        self.model.trace = self.record
        return self

    def __exit__(self, *exc) -> None:
        self.model.trace = self._previous

    def __getitem__(self, name: str) -> np.ndarray:
        """The tensor from the latest forward call that recorded `name`."""
        for step in reversed(self.steps):
            if name in step:
                return step[name]
        raise KeyError(f"no tensor named '{name}' was recorded (patterns {self.patterns})")

    def names(self) -> list:
        seen = {}
        for step in self.steps:
            seen.update(dict.fromkeys(step))
        return list(seen)
