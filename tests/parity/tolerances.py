"""How close llama3_np must come to the PyTorch references, and why.

Every comparison is max |ours - reference| over a whole tensor, divided by the tensor's
own scale (its largest magnitude): float32 rounding errors grow with the values, so one
relative number serves every step, from the embeddings to the logits.
"""

# float32 against float32, every step (bfloat16 snapshots included: both sides run the
# same bf16-rounded weights in float32). Both round each product and sum to float32
# (unit roundoff 6e-8) in different orders - BLAS blocking, complex vs rotate-half RoPE,
# softmax - so a length-K dot product differs by ~sqrt(K) roundoffs of its scale; with
# K up to 14336 that is ~1e-6, and the measured worst over all shapes is ~2e-6
# (PARITY.md). 1e-5 leaves headroom for other BLAS builds, yet is far below any real
# error: rounding the weights to bfloat16 moves the logits ~1e-2, a RoPE position off
# by one or an unscaled frequency ~1e-1.
FLOAT32 = 1e-5

# Greedy decoding is decided, not lucky, when the reference's top-1 logit leads the
# runner-up by more than the two sides may disagree: each logit may move FLOAT32 * scale,
# so a lead above twice that cannot be overturned.
MARGIN = 2 * FLOAT32

# Rope frequencies: every reference computes them in float32 with a correctly rounded
# power and one division; rope.py takes the power in float64 and rounds once, so the bits
# are the same on every CPU (measured: identical with NumPy's AVX-512 dispatch on and
# off). Any difference is a bug: one ulp at frequency f turns position p by p * f * 2^-24
# radians more, visible in q past position ~8000.
FREQUENCIES = 0.0
