"""A Llama 3 checkpoint as the GGUF files llama.cpp runs, so both engines read one file.

    python benchmarks/to_gguf.py CHECKPOINT OUT.gguf [--type BF16|F32]
    python benchmarks/to_gguf.py CHECKPOINT OUT.gguf --type Q4_0 --llama-quantize PATH

The checkpoint is read by llama3_np's own readers (Meta, Hugging Face or GGUF; in Meta's
names and q/k row order, which is also GGUF's) and written with the gguf package's
writer: the hyper-parameters under llama.cpp's `llama.*` keys, Llama 3.1's rope scaling
as the `rope_freqs` divisors llama.cpp's converter writes, and Meta's tiktoken
vocabulary spelled as the byte-level BPE (`gpt2`) vocabulary llama.cpp reads: GPT-2's
byte alphabet and a merge list recovered from the ranks (below). Matrices are written
as F32 or BF16 (norms always F32, as llama.cpp's converter does); the block-quantised
types come from llama.cpp's own `llama-quantize --pure` (every matrix in that type, no
mixture) applied to the BF16 file, so llama.cpp's quantiser decides their bytes.
"""

import argparse
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from llama3_np.checkpoint.detect import read_checkpoint  # noqa: E402
from llama3_np.checkpoint.gguf import ROPE_FREQS, gguf_name  # noqa: E402
from llama3_np.formats import as_float32  # noqa: E402
from llama3_np.formats.bf16 import BF16  # noqa: E402
from llama3_np.rope import rope_frequencies  # noqa: E402
from llama3_np.tokenizer.files import find_tokenizer_file  # noqa: E402
from llama3_np.tokenizer.meta import describe_tiktoken_file  # noqa: E402
from llama3_np.tokenizer.vocabulary import _gpt2_unicode_to_byte  # noqa: E402

FLOAT_TYPES = ("F32", "BF16")
QUANTISED_TYPES = ("Q8_0", "Q4_0", "Q4_K")  # llama-quantize's names
# llama.cpp's token types: a normal (BPE) token, and a control token (Llama 3's specials).
NORMAL_TOKEN, CONTROL_TOKEN = 1, 3


def tiktoken_merges(ranks: dict) -> list:
    """The merge list of a byte-level BPE whose ranks are given (token bytes -> rank).

    tiktoken keeps ranks only. A token may come from several pairs of shorter tokens
    (BPE does not always reach every token through one fixed pair: '.:.:' is reached
    from '.:.' + ':' or '.:' + '.:' depending on the text), so every split of a token into
    two tokens is a merge, ranked by the token it makes, then by its parts' ranks: as
    transformers' TikTokenConverter builds Llama 3's tokenizer.json (280,147 merges)."""
    merges = []
    for token, rank in ranks.items():
        splits = [(ranks[token[:i]], ranks[token[i:]], token[:i], token[i:])
                  for i in range(1, len(token)) if token[:i] in ranks and token[i:] in ranks]
        merges += [(rank, left_rank, right_rank, left, right)
                   for left_rank, right_rank, left, right in splits]
    return [(left, right) for *_, left, right in sorted(merges)]


def gpt2_vocabulary(tokenizer_file: Path) -> dict:
    """Meta's tokenizer.model as GGUF's tokenizer.ggml.* lists (GPT-2 spelling)."""
    vocab = describe_tiktoken_file(tokenizer_file).vocab
    spell = {byte: char for char, byte in _gpt2_unicode_to_byte().items()}
    spelled = lambda token: "".join(spell[b] for b in token)  # noqa: E731
    specials = {token: name for name, token in vocab.special_tokens.items()}
    tokens = [specials[i] if i in specials else spelled(token)
              for i, token in enumerate(vocab.id_bytes)]
    return {"tokens": tokens,
            "types": [CONTROL_TOKEN if i in specials else NORMAL_TOKEN
                      for i in range(len(tokens))],
            "merges": [f"{spelled(a)} {spelled(b)}" for a, b in tiktoken_merges(vocab.ranks)]}


def write_gguf(checkpoint_path: Path, out: Path, file_type: str = "BF16",
               tokenizer_file: Path = None) -> Path:
    """Write the checkpoint as an F32 or BF16 GGUF file llama.cpp loads."""
    import gguf

    checkpoint = read_checkpoint(checkpoint_path)
    config = checkpoint.config
    tokenizer_file = tokenizer_file or checkpoint.tokenizer_file or \
        find_tokenizer_file(Path(checkpoint_path))
    if tokenizer_file is None or Path(tokenizer_file).suffix != ".model":
        raise SystemExit(f"to_gguf: no Meta tokenizer.model found for {checkpoint_path} "
                         "(give --tokenizer)")
    vocabulary = gpt2_vocabulary(Path(tokenizer_file))
    writer = gguf.GGUFWriter(str(out), "llama")
    writer.add_name(Path(checkpoint_path).name)
    writer.add_file_type({"F32": gguf.LlamaFileType.ALL_F32,
                          "BF16": gguf.LlamaFileType.MOSTLY_BF16}[file_type])
    writer.add_context_length(config.max_seq_len)
    writer.add_embedding_length(config.dim)
    writer.add_block_count(config.n_layers)
    writer.add_feed_forward_length(config.ffn_dim)
    writer.add_head_count(config.n_heads)
    writer.add_head_count_kv(config.n_kv_heads)
    writer.add_rope_dimension_count(config.head_dim)
    if config.head_dim != config.dim // config.n_heads:
        writer.add_key_length(config.head_dim)
        writer.add_value_length(config.head_dim)
    writer.add_rope_freq_base(config.rope_theta)
    writer.add_layer_norm_rms_eps(config.norm_eps)
    writer.add_vocab_size(config.vocab_size)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("llama-bpe")
    writer.add_token_list(vocabulary["tokens"])
    writer.add_token_types(vocabulary["types"])
    writer.add_token_merges(vocabulary["merges"])
    if config.bos_id is not None:
        writer.add_bos_token_id(config.bos_id)
    # llama.cpp's three stop tokens; config.from_gguf_metadata reads them back in this order.
    for add, token in zip((writer.add_eos_token_id, writer.add_eot_token_id,
                           writer.add_eom_token_id), config.stop_ids):
        add(token)
    if config.rope_scaling is not None:
        divisors = rope_frequencies(config.head_dim, config.rope_theta) / \
            rope_frequencies(config.head_dim, config.rope_theta, config.rope_scaling)
        writer.add_rope_scaling_orig_ctx_len(config.rope_scaling.original_context)
        writer.add_tensor(ROPE_FREQS, divisors.astype(np.float32))
    for name, tensor in checkpoint.tensors.items():
        if name == "output.weight" and tensor is checkpoint.tensors["tok_embeddings.weight"]:
            continue  # tied: llama.cpp multiplies by token_embd when output is absent
        if file_type == "BF16" and len(tensor.shape) == 2 and isinstance(tensor, BF16):
            writer.add_tensor(gguf_name(name), np.asarray(tensor.bits),
                              raw_dtype=gguf.GGMLQuantizationType.BF16)
        else:
            writer.add_tensor(gguf_name(name), as_float32(tensor))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out


def quantize(llama_quantize: Path, source: Path, out: Path, ggml_type: str) -> Path:
    """llama.cpp's quantiser, every matrix in ggml_type (--pure), 2 threads."""
    done = subprocess.run([str(llama_quantize), "--pure", str(source), str(out), ggml_type, "2"],
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"to_gguf: {llama_quantize} failed ({done.returncode}): "
                         + " / ".join(done.stderr.strip().splitlines()[-3:]))
    return out


def gguf_file(checkpoint: Path, folder: Path, ggml_type: str,
              llama_quantize: Path = None) -> Path:
    """folder/model-{type}.gguf, written (or quantised from the BF16 one) unless present."""
    out = folder / f"model-{ggml_type}.gguf"
    if out.exists():
        return out
    folder.mkdir(parents=True, exist_ok=True)
    partial = out.with_suffix(".partial")
    if ggml_type in FLOAT_TYPES:
        write_gguf(checkpoint, partial, ggml_type)
    else:
        if llama_quantize is None:
            raise SystemExit(f"to_gguf: {ggml_type} needs llama.cpp's llama-quantize")
        quantize(llama_quantize, gguf_file(checkpoint, folder, "BF16"), partial, ggml_type)
    partial.rename(out)
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--type", choices=FLOAT_TYPES + QUANTISED_TYPES, default="BF16")
    parser.add_argument("--tokenizer", type=Path, help="Meta's tokenizer.model, if not beside "
                                                        "the checkpoint")
    parser.add_argument("--llama-quantize", type=Path,
                        help="llama.cpp's llama-quantize (for the Q types)")
    args = parser.parse_args()
    if args.type in FLOAT_TYPES:
        write_gguf(args.checkpoint, args.out, args.type, args.tokenizer)
    else:
        if args.llama_quantize is None:
            parser.error(f"--type {args.type} needs --llama-quantize")
        bf16 = args.out.with_name(args.out.stem + "-BF16.gguf")
        write_gguf(args.checkpoint, bf16, "BF16", args.tokenizer)
        quantize(args.llama_quantize, bf16, args.out, args.type)
    print(args.out)


if __name__ == "__main__":
    main()
