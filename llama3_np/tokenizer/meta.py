"""Meta's tokenizer.model: "<base64 token> <rank>" per line, 128000 lines; Llama 3's 256
special tokens follow at ids 128000..128255. The ranks are the ids."""

import base64
import binascii
from pathlib import Path

from ..errors import TokenizerError
from .files import read_tokenizer_file
from .vocabulary import LLAMA3_PATTERN, Description, Vocabulary

LLAMA3_N_RANKS = 128000
LLAMA3_NAMED_SPECIALS = {0: "<|begin_of_text|>", 1: "<|end_of_text|>",
                         4: "<|finetune_right_pad_id|>", 6: "<|start_header_id|>",
                         7: "<|end_header_id|>", 8: "<|eom_id|>", 9: "<|eot_id|>",
                         10: "<|python_tag|>"}


def llama3_special_tokens() -> list:
    """The 256 special token names after Meta's ranks, in id order, as Llama 3.1+ snapshots
    name them: the unnamed slots are <|reserved_special_token_0|> .. _247|>."""
    reserved = iter(range(256))
    return [LLAMA3_NAMED_SPECIALS.get(i) or f"<|reserved_special_token_{next(reserved)}|>"
            for i in range(256)]


def describe_tiktoken_file(path) -> Description:
    """Meta's tokenizer.model: 128000 ranks, then Llama 3's 256 special tokens."""
    path = Path(path)
    ranks = _read_tiktoken_ranks(path)
    names = llama3_special_tokens()
    specials = {name: LLAMA3_N_RANKS + i for i, name in enumerate(names)}
    id_bytes = list(ranks) + [name.encode() for name in names]
    vocab = Vocabulary(ranks=ranks, id_bytes=id_bytes, special_tokens=specials)
    return Description(vocab, LLAMA3_PATTERN, str(path), bos_id=specials["<|begin_of_text|>"],
                       eos_id=specials["<|end_of_text|>"])


def _read_tiktoken_ranks(path: Path) -> dict:
    """Meta's ranks: every line "<base64 token> <rank>", ranks 0, 1, 2, ... in order."""
    lines = read_tokenizer_file(path).splitlines()
    ranks = {}
    for number, line in enumerate(lines, start=1):
        fields = line.split()
        try:
            token, rank = base64.b64decode(fields[0], validate=True), int(fields[1])
            if len(fields) != 2 or not token:
                raise ValueError
        except (IndexError, ValueError, binascii.Error):
            raise TokenizerError(f"{path} line {number}: expected '<base64 token> <rank>', "
                                 f"got {line[:60]!r}") from None
        if rank != number - 1 or token in ranks:
            raise TokenizerError(f"{path} line {number}: rank {rank} for {token!r} breaks the "
                                 f"sequence of distinct tokens ranked 0, 1, 2, ...")
        ranks[token] = rank
    if len(ranks) != LLAMA3_N_RANKS:
        raise TokenizerError(f"{path} holds {len(ranks)} ranks; a Llama 3 tokenizer.model has "
                             f"exactly {LLAMA3_N_RANKS}")
    return ranks
