"""The Python API: load a checkpoint, then complete text, step the model, or trace it.

    model = llama3_np.load("weights/Llama-3.2-1B-Instruct")
    print(model.generate("The capital of France is", max_tokens=20).text)
"""

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .checkpoint.detect import read_checkpoint
from .errors import InputError
from .generate import GenerationStats, check_max_tokens, generate_tokens
from .kv_cache import KVCache, check_kv_dtype
from .model import Transformer
from .sampling import Sampler
from .tokenizer import StreamDecoder, load_tokenizer
from .trace import Trace
from .wording import count


@dataclass
class Completion:
    text: str
    tokens: list
    stats: GenerationStats = field(default_factory=GenerationStats)


class Llama:
    """A loaded model: weights and tokenizer. It keeps no conversation state, so several
    generations, chats or perplexity runs (threads included) can share one."""

    precision = ""  # what load() made of the weights: "weights: Q4_1 kept (4-bit kernel); ..."

    def __init__(self, config, weights: dict, tokenizer, source: str = "",
                 kv_dtype: str = "f32"):
        check_kv_dtype(kv_dtype)
        self.config = config
        self.tokenizer = tokenizer
        self.model = Transformer(config, weights)
        self.source = source
        self.kv_dtype = kv_dtype  # what new_cache() keeps keys and values in

    @property
    def weights(self) -> dict:
        return self.model.weights

    def new_cache(self, capacity: int = 0) -> KVCache:
        """An empty KV cache for one sequence (room grows as it is used)."""
        return self.model.new_cache(self.kv_dtype, capacity)

    def forward(self, tokens, start_pos: int = None, last_only: bool = False,
                cache: KVCache = None) -> np.ndarray:
        """float32 logits (seq, vocab). Positions before start_pos (default: all the cache
        holds) come from `cache` (model.new_cache()), which also keeps this call's;
        without one, `tokens` is a whole sequence."""
        return self.model.forward(tokens, start_pos, last_only, cache)

    def trace(self, *patterns: str) -> Trace:
        """`with model.trace("layers.0.*") as t: model.forward(tokens)`, then t[name]."""
        return Trace(self.model, *patterns)

    def encode_prompt(self, prompt) -> list:
        if isinstance(prompt, str):
            tokens = self.tokenizer.encode(prompt, bos=self.tokenizer.add_bos)
        else:
            tokens = [int(t) for t in prompt]
        if not tokens:
            raise InputError("the prompt is empty (and this tokenizer adds no "
                             "beginning-of-text token to start from)")
        outside = [t for t in tokens if not 0 <= t < self.config.vocab_size]
        if outside:  # a negative id would silently index from the end of the embedding
            raise InputError(f"token id {outside[0]} is outside the vocabulary "
                             f"(size {self.config.vocab_size})")
        return tokens

    def context_room(self, n_prompt_tokens: int, start_pos: int = 0) -> int:
        """How many tokens can be generated after a prompt placed at start_pos (an
        InputError if not even one)."""
        room = self.config.max_seq_len - start_pos - n_prompt_tokens
        if room < 1:
            raise InputError(f"the prompt has {count(n_prompt_tokens, 'token')}; with "
                             f"{start_pos} already in context that fills the "
                             f"{self.config.max_seq_len}-token context window")
        return room

    def stream(self, prompt, max_tokens: int = 256, **options):
        """Yield the completion's text piece by piece as tokens are generated.

        `prompt` is text (encoded with the beginning-of-text token) or token ids;
        options: temperature, top_k, top_p, seed, stop_ids, stats, and cache with
        start_pos to continue a sequence (a new cache by default; start_pos defaults to
        where the cache ends)."""
        for _, text in self._generate(prompt, max_tokens, **options):
            if text:
                yield text

    def generate(self, prompt, max_tokens: int = 256, **options) -> Completion:
        """The whole completion at once: text, token ids and timing."""
        stats = options.pop("stats", None) or GenerationStats()
        tokens, pieces = [], []
        for token, text in self._generate(prompt, max_tokens, stats=stats, **options):
            tokens += [] if token is None else [token]
            pieces.append(text)
        return Completion("".join(pieces), tokens, stats)

    def _generate(self, prompt, max_tokens: int, temperature: float = 0.0, top_k: int = 0,
                  top_p: float = 1.0, seed=None, stop_ids=None, start_pos: int = None,
                  stats: GenerationStats = None, cache: KVCache = None):
        """(token, text) pairs; text holds only complete UTF-8 characters, and a final
        (None, rest) pair flushes whatever an unfinished character left over."""
        tokens = self.encode_prompt(prompt)
        check_max_tokens(max_tokens)
        cache = self.new_cache() if cache is None else cache
        start_pos = cache.length if start_pos is None else start_pos
        room = self.context_room(len(tokens), start_pos)
        sampler = Sampler(temperature, top_k, top_p, seed)
        stops = self.config.stop_ids if stop_ids is None else stop_ids
        decoder = StreamDecoder(self.tokenizer)
        for token in generate_tokens(self.model, tokens, sampler, min(max_tokens, room),
                                     stops, cache, start_pos, stats):
            yield token, decoder.push(token)
        yield None, decoder.flush()


def load(path, dtype: str = None, backend: str = "auto", tokenizer_path=None,
         progress=None, kv_dtype: str = "f32", keep_quantized: bool = None) -> Llama:
    """Load a Meta, Hugging Face or GGUF checkpoint; weights kept in `dtype` in memory
    ("f32", "bf16", "q8"; None: float32, except a GGUF file's Q8_0 / Q4_0 / Q4_1 / Q4_K
    matrices when keep_quantized), the KV caches of its sequences in `kv_dtype`
    ("f32" or "bf16"). `path` is anything locate.locate takes: a path, a Hugging Face
    repo id in the local cache, "ollama:name:tag", a Meta download's name.

    keep_quantized: True keeps those GGUF matrices in their own quantisation (the fused
    kernels multiply it directly); False decodes them to float32; None (default): True
    where the numba kernels run, as NumPy alone would decode them for every product.
    It is decided here, once: a later kernels.set_backend changes which loops multiply
    the weights, never the form they are in.
    The Llama's `precision` line says what the weights became.

    progress(done, total) is called after each tensor is converted (a ProgressBar fits)."""
    from .allocator import keep_freed_memory
    from .formats import distinct
    from .formats.convert import to_dtype
    from .kernels import set_backend, warmup
    from .locate import locate
    from .memory import check_weights_fit
    from .precision import summary, weight_groups

    check_kv_dtype(kv_dtype)
    path = locate(path)
    checkpoint = read_checkpoint(path)
    set_backend(backend)
    keep_quantized = quantisation_kept(dtype, keep_quantized)
    check_weights_fit(distinct(checkpoint.tensors.values()), dtype, str(path), keep_quantized)
    warmup()  # compile the numba kernels now, not during the first token
    keep_freed_memory()  # a prompt's layers reuse their temporaries' pages
    weights, converted = {}, {}
    for done, (name, tensor) in enumerate(checkpoint.tensors.items(), start=1):
        # Tied embeddings: convert the shared tensor once and keep it shared.
        if id(tensor) not in converted:
            converted[id(tensor)] = to_dtype(tensor, dtype, name, keep_quantized)
        weights[name] = converted[id(tensor)]
        if progress is not None:
            progress(done, len(checkpoint.tensors))
    tokenizer = load_tokenizer(checkpoint, tokenizer_path)
    llama = Llama(checkpoint.config, weights, tokenizer, source=str(Path(path)),
                  kv_dtype=kv_dtype)
    llama.precision = summary(weight_groups(checkpoint.tensors, dtype, keep_quantized))
    return llama


def quantisation_kept(dtype, keep_quantized) -> bool:
    """load()'s keep_quantized decided, after set_backend: None means "where the numba
    kernels run". Keeping the file's quantisation and asking for a dtype contradict."""
    from .formats.convert import check_dtype
    from .kernels import active_backend

    check_dtype(dtype)
    if keep_quantized is None:
        return active_backend() == "numba"
    if keep_quantized and dtype is not None:
        raise InputError(f"keep_quantized keeps a GGUF file's own quantisation, which dtype "
                         f"{dtype!r} would replace: ask for one or the other")
    return bool(keep_quantized)
