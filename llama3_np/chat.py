"""ChatSession: a multi-turn conversation with an Instruct model, in its own chat format.

    session = ChatSession(model, system="You are terse.")
    for piece in session.send("What is the capital of France?"):
        print(piece, end="", flush=True)
    print(session.ask("And of Italy?"))

The conversation's keys and values stay in the session's KV cache, so each turn
runs only its new tokens through the model: the previous reply's closing tokens
(its end-of-turn token, which the model sampled but never saw as input, plus
ChatML's newline) and the new user turn with the assistant header after it. The
chat format encodes a dialog message by message (tokenizer/chat_format.py), so a
turn is appended as encode_message(user) + encode_header(assistant); the history
is never encoded again, except after drop_oldest forgets part of it.

Invariant: `tokens` is the whole conversation as the model reads it, and the
cache holds its first `cached` tokens; the rest are fed at the start of the next
turn. A reply that ends early (max tokens, an interruption such as Ctrl-C, the
generator being closed) is KEPT as the assistant's message and closed with the
format's end-of-turn tokens, exactly as a finished reply is (and as one ended by
another stop id, e.g. <|end_of_text|>), so the conversation stays well-formed and
nothing needs to be recomputed.

The session owns its KV cache, so other uses of the model between turns (or other
sessions on the same model) do not disturb it. A turn that no longer fits the context
window is refused (InputError) unless drop_oldest asks to forget the oldest
exchanges, after which the kept history is re-encoded.
"""

from .errors import InputError, TokenizerError
from .generate import GenerationStats, check_max_tokens, generate_tokens
from .sampling import Sampler
from .tokenizer import StreamDecoder
from .tokenizer.chat_format import ASSISTANT
from .wording import count


class ChatSession:
    def __init__(self, model, system: str = None, max_tokens: int = 512,
                 drop_oldest: bool = False, temperature: float = 0.0, top_k: int = 0,
                 top_p: float = 1.0, seed=None):
        """model: a Llama (llama3_np.load). max_tokens bounds each reply. drop_oldest:
        when a turn would not fit the context window, forget the oldest exchanges
        (the system prompt stays) and re-encode the rest, instead of refusing."""
        check_max_tokens(max_tokens)
        self.model = model
        self.tokenizer = model.tokenizer
        self.chat = self.tokenizer.require_chat()
        # A ChatML template may open every dialog with its own system prompt (SmolLM2's
        # does): the session holds it as its first message, as the model reads it.
        self.system = self.chat.default_system_prompt if system is None else system
        self.max_tokens = max_tokens
        self.drop_oldest = drop_oldest
        self.sampler = Sampler(temperature, top_k, top_p, seed)
        self.closing = reply_closing_tokens(self.tokenizer)
        self.cache = model.new_cache()
        self.last_stats = GenerationStats()
        self.dropped_exchanges = 0  # by the last turn, to make room (drop_oldest)
        self._replying = False  # a reply's generator has started and not yet finished
        self.reset()

    @property
    def cached(self) -> int:
        """How many of `tokens` the KV cache holds."""
        return self.cache.length

    @property
    def context_window(self) -> int:
        return self.model.config.max_seq_len

    def reset(self) -> None:
        """Forget the conversation (the system prompt stays)."""
        self._restart([] if self.system is None else [{"role": "system", "content": self.system}])

    def _restart(self, messages: list) -> None:
        """Encode `messages` afresh as the whole history; the cache starts over empty."""
        self.messages = list(messages)
        self.tokens = self.tokenizer.encode_dialog(self.messages, add_generation_prompt=False)
        self.cache.length = 0

    def ask(self, text: str) -> str:
        """The whole reply to one user message."""
        return "".join(self.send(text))

    def send(self, text: str):
        """The reply to `text`, as a generator of pieces (complete UTF-8 characters).

        The turn is planned at once: InputError here, before anything changes, when it
        does not fit the context window (and drop_oldest is off). The conversation takes
        the message when the generator starts; closing it early keeps the partial reply."""
        if self._replying:
            raise InputError("the previous reply is still being generated: read it to the "
                             "end or close() it before sending the next message")
        user = {"role": "user", "content": text}
        return self._reply(user, self._plan_turn(user))

    def _reply(self, user: dict, new_turn: list):
        self._replying = True
        self.messages.append(user)
        self.tokens += new_turn
        feed = self.tokens[self.cached:]  # the unfed tail of the history, then the new turn
        room = self.context_window - len(self.tokens)
        stats = self.last_stats = GenerationStats()
        decoder = StreamDecoder(self.tokenizer)
        reply = []
        try:
            for token in generate_tokens(self.model.model, feed, self.sampler,
                                         min(self.max_tokens, room), self.tokenizer.stop_ids,
                                         self.cache, self.cached, stats):
                reply.append(token)
                self.tokens.append(token)  # fed to the cache on the next step
                piece = decoder.push(token)
                if piece:
                    yield piece
            ran_out_of_room = stats.generated_tokens == room < self.max_tokens
            if stats.stopped_by == "max tokens" and ran_out_of_room:
                stats.stopped_by = "context full"  # the window ended it, not the reply budget
            rest = decoder.flush()
            if rest:
                yield rest
        finally:  # also on Ctrl-C or close(): keep what was said, closed properly
            self.messages.append({"role": "assistant", "content": self.tokenizer.decode(reply)})
            self.tokens += self.closing
            self._replying = False

    def _plan_turn(self, user: dict) -> list:
        """The tokens a new user message adds (the user turn, then the assistant header).

        A turn starts when at least one reply token fits. With drop_oldest, a turn that
        would leave less room than max_tokens first drops the oldest exchanges and starts
        the cache over from the re-encoded rest; without it, a turn that does not fit at
        all is refused, leaving the session as it was."""
        self.dropped_exchanges = 0
        new_turn = self._turn_tokens(user)
        length = len(self.tokens) + len(new_turn)
        fits_a_reply = length + self.max_tokens <= self.context_window
        if fits_a_reply or (length < self.context_window and not self.drop_oldest):
            return new_turn
        if not self.drop_oldest:
            raise InputError(
                f"the conversation fills the {self.context_window}-token context window "
                f"({count(len(self.tokens), 'token')} so far, this message needs "
                f"{len(new_turn)} more): "
                "/reset to start over, or chat with --drop-oldest to forget the oldest turns")
        kept = self._drop_until_fits(user)
        self.dropped_exchanges = (len(self.messages) - len(kept)) // 2
        self._restart(kept)
        return self._turn_tokens(user)

    def _drop_until_fits(self, user: dict) -> list:
        """The messages left after dropping the oldest exchanges until the history, the new
        message and a full reply fit (or only the system prompt is left)."""
        head = [m for m in self.messages[:1] if m["role"] == "system"]
        rest = self.messages[len(head):]
        while True:
            needed = len(self.tokenizer.encode_dialog(head + rest + [user]))
            if needed + self.max_tokens <= self.context_window or not rest:
                break
            rest = rest[2:]  # one exchange: a user message and its reply
        if needed >= self.context_window:
            raise InputError(f"this message alone ({count(needed, 'token')} with the system "
                             f"prompt) fills the {self.context_window}-token context window")
        return head + rest

    def _turn_tokens(self, user: dict) -> list:
        """The tokens a user message adds to the dialog: the message, then the assistant's
        header that its reply follows."""
        return self.chat.encode_message(user) + self.chat.encode_header(ASSISTANT)


def reply_closing_tokens(tokenizer) -> list:
    """The tokens the chat format puts after an assistant message's text: <|eot_id|> for
    Llama 3; <|im_end|> and a newline for ChatML. Their first is the stop token a reply
    normally ends with; a reply cut short or ended by another stop id gets the same close."""
    chat = tokenizer.require_chat()
    header, message = chat.encode_header(ASSISTANT), chat.encode_message(ASSISTANT)
    if message[:len(header)] != header or len(message) == len(header):
        raise TokenizerError(f"{tokenizer.source}: cannot tell how the "
                             f"{tokenizer.chat_format} chat format closes a reply")
    return message[len(header):]
