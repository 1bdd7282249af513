"""Generation: prefill the prompt (in chunks, see model.py), then decode one token per step."""

import time
from dataclasses import dataclass

from .errors import InputError
from .kv_cache import KVCache
from .model import Transformer
from .numerics import checked_forward
from .sampling import Sampler


def check_max_tokens(max_tokens) -> int:
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise InputError(f"max-tokens must be a positive integer, got {max_tokens!r}")
    return max_tokens


@dataclass
class GenerationStats:
    prompt_tokens: int = 0
    generated_tokens: int = 0
    prefill_seconds: float = 0.0
    decode_seconds: float = 0.0
    stopped_by: str = ""  # "stop token", "max tokens" or "context full"
    stop_token: int = None  # the stop token sampled, not yet in the KV cache

    @staticmethod
    def _rate(tokens: int, seconds: float) -> float:
        return tokens / seconds if seconds > 0 else 0.0

    @property
    def prefill_tps(self) -> float:
        return self._rate(self.prompt_tokens, self.prefill_seconds)

    @property
    def decode_tps(self) -> float:
        # The first generated token comes out of the prefill; decode makes the rest.
        return self._rate(max(self.generated_tokens - 1, 0), self.decode_seconds)

    def summary(self) -> str:
        return (f"prompt {self.prompt_tokens} tokens, generated {self.generated_tokens} "
                f"tokens ({self.stopped_by}) | prefill {self.prefill_tps:.1f} tok/s, "
                f"decode {self.decode_tps:.1f} tok/s")


def reserve_room(cache: KVCache, start_pos: int, n_prompt: int, max_tokens: int) -> None:
    """Reserve `cache` for every position a generation may fill: the prompt and every
    generated token but the last, which is sampled and never fed."""
    cache.reserve(min(start_pos + n_prompt + max_tokens - 1, cache.config.max_seq_len))


def generate_tokens(model: Transformer, prompt: list, sampler: Sampler, max_tokens: int,
                    stop_ids, cache: KVCache, start_pos: int = 0,
                    stats: GenerationStats = None):
    """Yield generated token ids until a stop token, max_tokens or the context's end.

    The prompt is placed at start_pos of `cache` (a chat continues its cache there),
    whose room for every position this may fill is reserved first. A stop token ends
    generation; it is neither yielded nor run through the model, but kept in
    stats.stop_token for a chat's next turn to feed first."""
    stats = stats if stats is not None else GenerationStats()
    stats.prompt_tokens = len(prompt)
    stop_ids = set(stop_ids)
    reserve_room(cache, start_pos, len(prompt), max_tokens)
    t0 = time.perf_counter()
    logits = checked_forward(model, prompt, start_pos, last_only=True, cache=cache)
    stats.prefill_seconds = time.perf_counter() - t0
    position = start_pos + len(prompt)
    t0 = time.perf_counter()
    while True:
        token = sampler(logits[-1])
        if token in stop_ids:
            stats.stopped_by, stats.stop_token = "stop token", token
            break
        stats.generated_tokens += 1
        yield token
        if stats.generated_tokens >= max_tokens:
            stats.stopped_by = "max tokens"
            break
        if position >= model.config.max_seq_len:
            stats.stopped_by = "context full"
            break
        logits = checked_forward(model, [token], position, last_only=True, cache=cache)
        position += 1
        stats.decode_seconds = time.perf_counter() - t0
