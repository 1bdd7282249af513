"""x86 row dot products for kernels_numba.py, written as LLVM vector IR; needs numba.
Most are integer ones; bf16_dot_float multiplies bf16 rows by float32 x (below).

The row dot products here multiply Q8 or Q4 weight rows (one, or four at once) by an
activation row that was quantised to int8 per 32-value block
(kernels_numba.quantize_rows), as llama.cpp does for its Q8_0 / Q4_0 dot products: one
block's 32 products are summed in int32 by one or two instructions, converted to float32
once, and scaled once per block (weight scale x activation scale) into a vector of eight
float32 partial sums that is reduced once per row. LLVM does not find this shape in a
scalar numba loop (it keeps converting every weight to float32), so the loop is written
out here.

The row dot products take a tuple of weight rows and multiply them at once, each in
accumulators of its own. Four rows far apart in memory are four streams for the hardware
prefetcher, which on the first machines measured kept more bytes in flight than one did
in 16-128-row tasks (8192 x 2048 matrices from DRAM: Q8_0 21-24 GB/s one row at a time,
25-29 four; one thread 12-13 and 14-15); on a Zen 5, with each thread's rows in a few long
runs, one stream read fastest (kernels_numba.streamed_task), and the loops now go one row
at a time. benchmarks/gemv_streams.py measures both.
Computing less per byte did not help Q8 one row at a time: without the scales'
arithmetic it ran as fast, and so did a 16-row interleaved copy of the weights
(llama.cpp's AMX layout, 512 bytes of 16 rows a step) one row group at a time; four
groups at once ran as four rows do here. AMX tile loads of 16 stored rows ran slower (12
GB/s).

Two instruction sets, chosen at run time by `available()`:

- "vnni": `vpdpbusd` (AVX512-VNNI with AVX512-VL, or AVX-VNNI), unsigned x signed
  bytes summed four at a time into int32, exact. Q4's nibbles are unsigned already;
  a Q8 block's signed weights are made unsigned by flipping their top bit (w + 128),
  and the extra 128 * sum(xq) is taken back by starting the block's sum at
  -128 * sum(xq) (precomputed once per activation row).
- "avx2": `vpmaddubsw` (unsigned x signed bytes, pairs summed in int16) then `vpmaddwd`
  with ones (int16 pairs to int32). The int16 sums saturate above 32767, so the
  unsigned operand must stay small: Q4's nibbles (15 * 127 * 2 = 3810) go as they are,
  a Q8 block goes as |w| (at most 128) against xq with w's sign (127 * 128 * 2 = 32512).

Vectors are 256 bits (one 32-value Q8 block, or two Q4 blocks, each): every AVX2 CPU
has them. Written as 512-bit types, LLVM does emit zmm code (vpdpbusd on zmm, four Q4
blocks a step), but that measured no faster (kernels_numba.py). A CPU with neither set
runs kernels_numba's float loops. Which form the code
holds is decided when numba compiles it, for the CPU it runs on (numba's on-disk cache
is keyed by the CPU too); numba re-compiles a cached kernel when kernels_numba.py
changes, not when only this file does: kernels_numba drops the cached kernels of every
module built from this file's IR when this file's hash changes.

Here too, what the GEMM modules (kernels_bf16.py, kernels_int8.py) share: the choice of
a route by CPU features (Routes), AMX's tile configuration and instructions, and the
IR helpers and zmm types their micro-kernels are built from.
"""

import ctypes
import os
import warnings

import llvmlite.binding as llvm
import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from .formats.q4 import SUPER_BLOCKS

I8X32 = ir.VectorType(ir.IntType(8), 32)
I8X16 = ir.VectorType(ir.IntType(8), 16)
_I16x16 = ir.VectorType(ir.IntType(16), 16)
_I16x32 = ir.VectorType(ir.IntType(16), 32)
I32X8 = ir.VectorType(ir.IntType(32), 8)
F32X8 = ir.VectorType(ir.FloatType(), 8)
_F32x32 = ir.VectorType(ir.FloatType(), 32)  # a 32-value block of x
_I32x32 = ir.VectorType(ir.IntType(32), 32)
# Independent accumulators (blocks in flight) per weight row, by instruction form: four
# rows of four fill all 16 ymm registers of an AVX2 CPU (AVX-512 has 32), and LLVM spilled
# them to the stack in every step; with two, the int8 GEMV on one Zen 3 core (1B's wq /
# w1, from the L3 cache, interleaved) read Q8_0 at 23-24 GB/s against 17.5-18, Q4_K 17-18
# against 16-17.5, Q4_0 15-16 against 15 (the float32 loop of one row keeps four; the
# bf16 one, four rows at once, two).
# Q4_K's super-block step ("two-level") is long already (four rows of five multiply-adds
# in a chain, 32 integer dot products): in more chains LLVM unrolls it into a body that
# ran 1.7x slower (1B Q4_K's matrices in model order from DRAM, 2 threads, Zen 5,
# interleaved: 17.7 against 30.3 ms with four; the AVX2 form built for Haswell there,
# 20-22 against 22-24 ms with two).
_CHAINS = {"vnni": 4, "avx2": 2, "float": 4, "bf16": 2, "two-level": 1}
# Each step of a row dot product asks for the weight bytes this far ahead (prefetch), on
# through the next rows: the hardware prefetcher starts each 4 KB page's stream late and
# stops at its end. Q8 int8 GEMV, 2 threads, matrices cycled from DRAM, GB/s for wq /
# w1 / w2 (2048x2048, 8192x2048, 2048x8192): 20-22 / 24-25 / 20-21 with no prefetch in
# the loop (a row's worth 2 KB ahead at each row's start, as before), 2048 ahead 23-26 /
# 26-29 / 24, 4096 22-26 / 26-28 / 24-25, 8192 24-25 / 26-28 / 24-25; Q4_0 (GB/s of its
# bytes) 20 / 23 / 19-21 before, 4096 ahead 23 / 25-26 / 22-24. 1B decode: Q8_0 67-69
# -> 60-61 ms a token, Q4_0 40 -> 34-39.
PREFETCH_DISTANCE = 4096
SUPER_SHIFT = SUPER_BLOCKS.bit_length() - 1  # Q4_K: block b's super-block is b >> 3
_SUPER_BYTES = 16 * SUPER_BLOCKS  # Q4 nibbles of a super-block
# Types of the GEMM micro-kernels' IR (kernels_bf16.py, kernels_int8.py): zmm registers.
I32, I64 = ir.IntType(32), ir.IntType(64)
F32X16 = ir.VectorType(ir.FloatType(), 16)
I32X16 = ir.VectorType(I32, 16)
BYTE_POINTER = ir.IntType(8).as_pointer()


def cpu_features() -> set:
    """The x86 features numba compiles for: NUMBA_CPU_FEATURES when the user set it
    (e.g. to build for another CPU), else the host's as LLVM detects them."""
    if numba.config.CPU_FEATURES:
        return {f[1:] for f in numba.config.CPU_FEATURES.split(",") if f.startswith("+")}
    return {name for name, on in llvm.get_host_cpu_features().items() if on}


def available() -> tuple:
    """The integer dot products this CPU runs, best first: ("vnni", "avx2"), ("avx2",)
    or ()."""
    features = cpu_features()
    found = []
    if "avxvnni" in features or {"avx512vnni", "avx512vl"} <= features:
        found.append("vnni")
    if "avx2" in features:
        found.append("avx2")
    return tuple(found)


# --- GEMM routes (kernels_bf16.py, kernels_int8.py) ------------------------------------

class Routes:
    """The routes of a GEMM module that this CPU offers, best first, and the one in use:
    needs maps each route, best first, to the CPU features it needs ("amx" also Linux's
    permission for the tile state). The environment variable env_var may say "off", or
    name a route: then only it and the routes after it are offered."""

    def __init__(self, what: str, env_var: str, needs: dict):
        wish = os.environ.get(env_var, "auto").strip().lower()
        names = list(needs)
        if wish not in names + ["off", "auto"]:
            warnings.warn(f"{env_var}={wish!r} is not one of {', '.join(names)}, off, auto: "
                          f"using auto", stacklevel=2)
        names = names[names.index(wish):] if wish in names else [] if wish == "off" else names
        features = cpu_features()
        self.what = what
        self.offered = tuple(name for name in names if needs[name] <= features and (
            name != "amx" or request_amx_permission()))
        self.current = self.offered[0] if self.offered else None

    def route(self):
        """The route in use, or None when this CPU (or the environment) offers none."""
        return self.current

    def available_routes(self) -> tuple:
        return self.offered

    def set_route(self, name) -> None:
        """Use a route this CPU offers, or None for none (tests force fallbacks so)."""
        if name is not None and name not in self.offered:
            raise ValueError(f"{self.what} route {name!r} is not available on this CPU")
        self.current = name


# --- AMX (kernels_bf16.py, kernels_int8.py) -------------------------------------------

def request_amx_permission() -> bool:
    """Linux hands out AMX's 8 KB tile state only on request, once per process."""
    arch_prctl, req_xcomp_perm, xfeature_xtiledata = 158, 0x1023, 18  # x86-64 Linux ABI
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.syscall(arch_prctl, req_xcomp_perm, xfeature_xtiledata) == 0
    except (OSError, AttributeError):
        return False


def amx_config(tiles) -> np.ndarray:
    """ldtilecfg's 64 bytes, palette 1: tiles[t] = (rows, bytes per row) of tile t."""
    config = np.zeros(64, dtype=np.uint8)
    config[0] = 1
    for t, (rows, row_bytes) in enumerate(tiles):
        config[16 + 2 * t:18 + 2 * t].view(np.uint16)[0] = row_bytes
        config[48 + t] = rows
    return config


@intrinsic
def amx_configure(typingctx, config):
    """Load a tile configuration (amx_config) in this thread."""
    def codegen(context, builder, sig, args):
        (data, _), = array_parts(context, builder, sig, args)
        load_config = declare(builder, "llvm.x86.ldtilecfg", ir.VoidType(), BYTE_POINTER)
        builder.call(load_config, [builder.bitcast(data, BYTE_POINTER)])
        return context.get_dummy_value()

    return types.void(config), codegen


@intrinsic
def amx_release(typingctx):
    """Give this thread's tile state back (after the last tile instruction)."""
    def codegen(context, builder, sig, args):
        builder.call(declare(builder, "llvm.x86.tilerelease", ir.VoidType()), [])
        return context.get_dummy_value()

    return types.void(), codegen


def tile_op(builder, name, *arguments):
    """Call the AMX intrinsic llvm.x86.<name>: tile numbers as ints, addresses as any
    pointer, strides as i64."""
    values = [ir.Constant(ir.IntType(8), a) if isinstance(a, int) else
              builder.bitcast(a, BYTE_POINTER) if isinstance(a.type, ir.PointerType) else a
              for a in arguments]
    builder.call(declare(builder, "llvm.x86." + name, ir.VoidType(), *[v.type for v in values]),
                 values)


# --- IR helpers ------------------------------------------------------------------------

def declare(builder, name, return_type, *arg_types):
    """The LLVM function (an intrinsic) `name` of that signature, declared in the module."""
    return cgutils.get_or_insert_function(builder.module, ir.FunctionType(return_type, arg_types),
                                          name)


def counted_loop(builder, count, step, carried_types, body):
    """for i in range(0, count, step), count > 0, with values carried from pass to pass in
    registers (phi nodes) starting at zero: body(i, values) -> new values. Returns the
    values after the last pass."""
    entry = builder.block
    loop = builder.append_basic_block("loop")
    done = builder.append_basic_block("loop.done")
    builder.branch(loop)
    builder.position_at_end(loop)
    i = builder.phi(count.type)
    carried = [builder.phi(t) for t in carried_types]
    updated = body(i, carried)
    i_next = builder.add(i, ir.Constant(count.type, step))
    builder.cbranch(builder.icmp_signed("<", i_next, count), loop, done)
    end = builder.block  # body may have added blocks
    i.add_incoming(ir.Constant(count.type, 0), entry)
    i.add_incoming(i_next, end)
    for phi, value, value_type in zip(carried, updated, carried_types):
        phi.add_incoming(ir.Constant(value_type, None), entry)
        phi.add_incoming(value, end)
    builder.position_at_end(done)
    return updated


def clamped_rows(builder, first, count, n_rows):
    """Row indices first .. first + count - 1, each past the last row replaced by the last
    (a micro-kernel's rows beyond the matrix: read again, never stored)."""
    last = builder.sub(n_rows, ir.Constant(n_rows.type, 1))
    rows = [builder.add(first, ir.Constant(first.type, i)) for i in range(count)]
    return [builder.select(builder.icmp_signed("<", row, n_rows), row, last) for row in rows]


def store_vectors(builder, data, vectors):
    """vectors (of one float32 vector type) stored one after another at data (a float32
    array's data)."""
    base = builder.bitcast(data, vectors[0].type.as_pointer())
    for index, value in enumerate(vectors):
        builder.store(value, builder.gep(base, [ir.Constant(I64, index)]), align=4)


def array_parts(context, builder, sig, args):
    """(data pointer, shape values) of each array argument."""
    parts = []
    for array_type, value in zip(sig.args, args):
        if isinstance(array_type, types.Array):
            array = context.make_array(array_type)(context, builder, value)
            parts.append((array.data, cgutils.unpack_tuple(builder, array.shape)))
    return parts


def _data(context, builder, array_type, value):
    """The data pointer of a contiguous 1-D array argument."""
    return context.make_array(array_type)(context, builder, value).data


def _shape(context, builder, array_type, value):
    array = context.make_array(array_type)(context, builder, value)
    return cgutils.unpack_tuple(builder, array.shape, array_type.ndim)


def load_vector(builder, pointer, index, vector_type, element_bytes):
    """vector_type's worth of elements at pointer + index * (vector elements), unaligned."""
    start = builder.mul(index, ir.Constant(index.type, vector_type.count * element_bytes))
    raw = builder.bitcast(pointer, ir.IntType(8).as_pointer())
    address = builder.bitcast(builder.gep(raw, [start]), vector_type.as_pointer())
    return builder.load(address, align=1)


def splat(builder, value, count):
    vector = ir.VectorType(value.type, count)
    single = builder.insert_element(ir.Constant(vector, ir.Undefined), value,
                                    ir.Constant(ir.IntType(32), 0))
    return builder.shuffle_vector(single, ir.Constant(vector, ir.Undefined),
                                  ir.Constant(ir.VectorType(ir.IntType(32), count), [0] * count))


def _like(value, number):
    """A constant `number` of value's type (scalar or vector)."""
    if isinstance(value.type, ir.VectorType):
        return ir.Constant(value.type, [number] * value.type.count)
    return ir.Constant(value.type, number)


def eight_lane_parts(builder, vector):
    """A vector of 8k lanes as its k vectors of eight, in order."""
    return [builder.shuffle_vector(vector, ir.Constant(vector.type, ir.Undefined),
                                   ir.Constant(ir.VectorType(ir.IntType(32), 8),
                                               list(range(8 * k, 8 * k + 8))))
            for k in range(vector.type.count // 8)]


def bf16_bits_to_float(builder, bits):
    """bf16 bits in an integer (or <n x integer>) of 16 or 32 bits -> float (or <n x
    float>): bfloat16 is the top half of a float32, so shift the bits up and reinterpret."""
    is_vector = isinstance(bits.type, ir.VectorType)
    wide = ir.VectorType(I32, bits.type.count) if is_vector else I32
    if bits.type != wide:
        bits = builder.zext(bits, wide)
    floats = ir.VectorType(ir.FloatType(), bits.type.count) if is_vector else ir.FloatType()
    return builder.bitcast(builder.shl(bits, _like(bits, 16)), floats)


def half_bits_to_float(builder, bits):
    """i16 (or <n x i16>) float16 bits -> float (or <n x float>), exactly: F16C's
    vcvtph2ps where the CPU has it (LLVM's fpext; it quiets a signalling NaN), else
    integer operations that every CPU has (the Q4_0 int8 GEMV ran 1.7x slower with
    them): a normal number moves its exponent and mantissa into place; a subnormal one
    is its mantissa times 2^-24 (exact); inf and NaN keep all-ones exponents. The sign
    is copied last."""
    vector = isinstance(bits.type, ir.VectorType)
    wide_type = ir.VectorType(ir.IntType(32), bits.type.count) if vector else ir.IntType(32)
    float_type = ir.VectorType(ir.FloatType(), bits.type.count) if vector else ir.FloatType()
    if "f16c" in cpu_features():
        half_type = ir.VectorType(ir.HalfType(), bits.type.count) if vector else ir.HalfType()
        return builder.fpext(builder.bitcast(bits, half_type), float_type)
    h = builder.zext(bits, wide_type)
    exponent = builder.and_(builder.lshr(h, _like(h, 10)), _like(h, 31))
    mantissa = builder.and_(h, _like(h, 1023))
    normal = builder.or_(builder.shl(builder.add(exponent, _like(h, 112)), _like(h, 23)),
                         builder.shl(mantissa, _like(h, 13)))
    special = builder.or_(_like(h, 0x7F800000), builder.shl(mantissa, _like(h, 13)))
    mantissa_value = builder.uitofp(mantissa, float_type)
    tiny = builder.bitcast(builder.fmul(mantissa_value, _like(mantissa_value, 2.0 ** -24)),
                           wide_type)
    magnitude = builder.select(builder.icmp_unsigned("==", exponent, _like(h, 0)), tiny,
                               builder.select(builder.icmp_unsigned("==", exponent, _like(h, 31)),
                                              special, normal))
    sign = builder.shl(builder.and_(h, _like(h, 0x8000)), _like(h, 16))
    return builder.bitcast(builder.or_(magnitude, sign), float_type)


@intrinsic
def half_to_float32(typingctx, bits):
    """uint16 holding float16 bits -> float32, exactly (half_bits_to_float)."""
    def codegen(context, builder, sig, args):
        return half_bits_to_float(builder, args[0])

    return types.float32(types.uint16), codegen


def prefetch(builder, address):
    """Ask the CPU to start loading the cache line at address (a byte pointer): a hint
    that never faults, even past an array's end; read, keep in every cache level, data."""
    hint = declare(builder, "llvm.prefetch.p0i8", ir.VoidType(), BYTE_POINTER, I32, I32, I32)
    builder.call(hint, [address, ir.Constant(I32, 0), ir.Constant(I32, 3), ir.Constant(I32, 1)])


def fetch_row_ahead(builder, row, step, step_bytes):
    """Ask for the bytes PREFETCH_DISTANCE past where step `step` of a row dot product
    starts reading `row` (step_bytes a step), on through the next rows."""
    offset = builder.add(builder.mul(step, ir.Constant(step.type, step_bytes)),
                         ir.Constant(step.type, PREFETCH_DISTANCE))
    prefetch(builder, builder.gep(builder.bitcast(row, BYTE_POINTER), [offset]))


def load_scale(builder, array_type, pointer, index):
    """array[index] as float: float32 as it is, uint16 as float16 bits."""
    value = builder.load(builder.gep(pointer, [index]))
    return half_bits_to_float(builder, value) if array_type.dtype == types.uint16 else value


class WeightScales:
    """A Q8 / Q4 matrix's scales (or mins) in generated code, in the forms
    kernels_numba._scale reads: an (N, blocks) array of float32 or float16 bits, or Q4_K's
    two levels, a tuple (codes (N, blocks) uint8, supers (N, blocks / 8) float16 bits)."""

    def __init__(self, context, builder, scales_type, value):
        self._context, self._builder = context, builder
        if isinstance(scales_type, types.BaseTuple):
            self._arrays = list(zip(scales_type.types, cgutils.unpack_tuple(builder, value)))
        else:
            self._arrays = [(scales_type, value)]
        self.n_rows, self.n_blocks = _shape(context, builder, *self._arrays[0])

    def row(self, r) -> "_ScaleRow":
        return _ScaleRow(self._builder, [(t, _row_pointer(self._context, self._builder, t, v, r))
                                         for t, v in self._arrays])


class _ScaleRow:
    """One weight row's scales (WeightScales.row)."""

    def __init__(self, builder, pointers):
        self._builder, self._pointers = builder, pointers
        self.two_level = len(pointers) == 2

    def at(self, b):
        """Block b's scale, as float."""
        if not self.two_level:
            return load_scale(self._builder, *self._pointers[0], b)
        code = self._builder.uitofp(self._builder.load(self._builder.gep(self._pointers[0][1],
                                                                         [b])), ir.FloatType())
        return self._builder.fmul(self.super_scale(self._builder.lshr(
            b, ir.Constant(b.type, SUPER_SHIFT))), code)

    def pair(self, pair):
        """Blocks 2 pair and 2 pair + 1's scales as float, each over four lanes (one
        level)."""
        return _load_pair(self._builder, *self._pointers[0], pair)

    def codes(self, s):
        """Two levels: super-block s's 8 codes, <8 x i8>."""
        return load_vector(self._builder, self._pointers[0][1], s,
                           ir.VectorType(ir.IntType(8), 8), 1)

    def fetch_ahead(self, s):
        """Two levels: ask for the codes and supers of super-block s + PREFETCH_DISTANCE /
        128 (as far ahead as the weights' prefetch: 128 bytes of nibbles a super-block).
        Narrow streams beside the weights', which the hardware prefetcher served late: the
        matrices of 1B's layers, 2 threads, from DRAM, medians of 15 passes, ms a token:
        37-47 with the codes prefetched (7 runs), 45-58 without (4; interleaved); the
        supers' prefetch on top measured within the noise."""
        builder = self._builder
        for (_, pointer), bytes_per_super in zip(self._pointers, (SUPER_BLOCKS, 2)):
            ahead = builder.add(s, ir.Constant(s.type, PREFETCH_DISTANCE // _SUPER_BYTES))
            start = builder.gep(builder.bitcast(pointer, BYTE_POINTER),
                                [builder.mul(ahead, ir.Constant(s.type, bytes_per_super))])
            prefetch(builder, start)

    def super_scale(self, s):
        """Two levels: super-block s's scale, as float."""
        return load_scale(self._builder, *self._pointers[1], s)


def nibbles(builder, packed):
    """Q4 bytes -> (low nibbles, high nibbles), as unsigned bytes."""
    low = builder.and_(packed, ir.Constant(packed.type, [15] * packed.type.count))
    return low, builder.lshr(packed, ir.Constant(packed.type, [4] * packed.type.count))


def _load_pair(builder, array_type, pointer, pair):
    """Two consecutive scales at pointer + 2 * pair as float, each over four lanes."""
    element = ir.IntType(16) if array_type.dtype == types.uint16 else ir.FloatType()
    raw = builder.bitcast(builder.gep(pointer, [builder.mul(pair, ir.Constant(pair.type, 2))]),
                          ir.VectorType(element, 2).as_pointer())
    two = builder.load(raw, align=2)
    if array_type.dtype == types.uint16:
        two = half_bits_to_float(builder, two)
    return builder.shuffle_vector(two, ir.Constant(two.type, ir.Undefined),
                                  ir.Constant(ir.VectorType(ir.IntType(32), 8), [0] * 4 + [1] * 4))


def dot_u8_s8(builder, isa, operands, start, pair_weights=None):
    """start + the sums of four adjacent unsigned x signed byte products (int32 lanes, as
    start) of each (unsigned, signed) pair of vectors in operands. "vnni": start 256 or
    512 bits wide (vpdpbusd on ymm or zmm). "avx2": 256 bits, and the products of
    adjacent bytes are added in int16 over all the operands before widening them (one
    vpmaddwd for them all, not one each): their unsigned bytes must keep those sums
    within int16 (see the docstring: Q4's nibbles, up to 8 operands; Q8's magnitudes,
    one); pair_weights (<16 x i16>, "avx2" only), if given, multiply those int16 sums
    in the widening instead of ones."""
    if isa == "vnni":
        vector = start.type
        dpbusd = declare(builder, f"llvm.x86.avx512.vpdpbusd.{32 * vector.count}", vector,
                         vector, vector, vector)
        for unsigned, signed in operands:
            start = builder.call(dpbusd, [start, builder.bitcast(unsigned, vector),
                                          builder.bitcast(signed, vector)])
        return start
    maddubs = declare(builder, "llvm.x86.avx2.pmadd.ub.sw", _I16x16, I8X32, I8X32)
    madd = declare(builder, "llvm.x86.avx2.pmadd.wd", I32X8, _I16x16, _I16x16)
    pairs = [builder.call(maddubs, [builder.bitcast(v, I8X32) for v in pair])
             for pair in operands]
    total = pairs[0]
    for more in pairs[1:]:
        total = builder.add(total, more)
    weights = ir.Constant(_I16x16, [1] * 16) if pair_weights is None else pair_weights
    return builder.add(start, builder.call(madd, [total, weights]))


def q8_block(builder, isa, weights, xq, start):
    """start + a Q8 block's int32 partial sums of weights * xq (see the module
    docstring); for "vnni", start must hold -128 * sum(xq) besides."""
    if isa == "vnni":  # (w + 128) . xq, started at -128 * sum(xq)
        flipped = builder.xor(weights, ir.Constant(I8X32, [-128] * 32))
        return dot_u8_s8(builder, isa, [(flipped, xq)], start)
    absolute = declare(builder, "llvm.abs.v32i8", I8X32, I8X32, ir.IntType(1))
    sign = declare(builder, "llvm.x86.avx2.psign.b", I8X32, I8X32, I8X32)
    magnitude = builder.call(absolute, [weights, ir.Constant(ir.IntType(1), 0)])
    return dot_u8_s8(builder, isa, [(magnitude, builder.call(sign, [xq, weights]))], start)


def _reduce(builder, vector):
    total = builder.extract_element(vector, ir.Constant(ir.IntType(32), 0))
    for lane in range(1, vector.type.count):
        total = builder.fadd(total, builder.extract_element(vector, ir.Constant(ir.IntType(32),
                                                                                lane)))
    return total


def _chained(builder, n_steps, add_step, form, n_rows=1):
    """add_step(step, accs) -> accs (a vector per weight row) for step = 0 .. n_steps - 1,
    in _CHAINS[form] accumulators per row: with one, each step's multiply-add waits for
    the last one's (4 cycles), and that, not memory, was the limit (Q8, one row at a time:
    22.8 GB/s on one core, 28 with four). Their sums, one per row."""
    n_chains = _CHAINS[form]
    zero = ir.Constant(n_steps.type, 0)
    accs = [[cgutils.alloca_once_value(builder, ir.Constant(F32X8, None))
             for _ in range(n_chains)] for _ in range(n_rows)]

    def step_into(step, chain):
        updated = add_step(step, [builder.load(row[chain]) for row in accs])
        for row, value in zip(accs, updated):
            builder.store(value, row[chain])

    chains = ir.Constant(n_steps.type, n_chains)
    n_grouped = builder.mul(builder.udiv(n_steps, chains), chains)
    with cgutils.for_range_slice(builder, zero, n_grouped, chains) as (group, _):
        for k in range(n_chains):
            step_into(builder.add(group, ir.Constant(group.type, k)), k)
    with cgutils.for_range_slice(builder, n_grouped, n_steps,
                                 ir.Constant(n_steps.type, 1)) as (step, _):
        step_into(step, 0)
    totals = []
    for row in accs:
        total = builder.load(row[0])
        for acc in row[1:]:
            total = builder.fadd(total, builder.load(acc))
        totals.append(total)
    return totals


def _row_pointer(context, builder, array_type, value, row):
    """The first element of row `row` of an array (each row contiguous, at the array's
    first stride)."""
    array = context.make_array(array_type)(context, builder, value)
    stride = cgutils.unpack_tuple(builder, array.strides, array_type.ndim)[0]
    start = builder.gep(builder.bitcast(array.data, BYTE_POINTER), [builder.mul(row, stride)])
    return builder.bitcast(start, array.data.type)


def _rows_dot(context, builder, sig, args, isa):
    """sum over blocks b of w_scales[r, b] * x_scales[b] * (w_rb . xq_b) for each weight
    row r in `rows` (plus w_mins[r, b] * x_sums[b] for Q4 with mins): every step loads x's
    part once for all the rows.

    Q8: one block (32 bytes) a step. Q4: two blocks a step, 32 bytes of nibbles whose
    low halves multiply one 32-byte run of xq and high halves the next (quantize_rows
    lays xq out so for Q4): no shuffle, and one conversion and multiply-add per two
    blocks (and one more for the mins); an odd last block goes alone (its xq in plain
    order). Each row's sums are those of the row alone: its own accumulators, the same
    operations in the same order."""
    parts = dict(zip(_ROW_DOT_ARGUMENTS[len(sig.args)], zip(sig.args, args)))
    rows = cgutils.unpack_tuple(builder, parts.pop("rows")[1])
    x_row = parts.pop("x_row")[1]
    q4 = "w_mins" in parts
    present = {name: typed for name, typed in parts.items()
               if not isinstance(typed[0], types.NoneType)}
    w = [_row_pointer(context, builder, *present["weights"], r) for r in rows]
    matrices = {name: WeightScales(context, builder, *present[name])
                for name in ("w_scales", "w_mins") if name in present}
    w_scales = [matrices["w_scales"].row(r) for r in rows]
    w_mins = [matrices["w_mins"].row(r) for r in rows] if "w_mins" in matrices else None
    xq, x_scales, x_start = (_row_pointer(context, builder, *parts[name], x_row)
                             for name in ("xq", "x_scales", "x_start"))
    n_blocks = _shape(context, builder, *parts["x_scales"])[1]
    x_scales_type = parts["x_scales"][0]
    fma = declare(builder, "llvm.fma.v8f32", F32X8, F32X8, F32X8, F32X8)

    def block_scale(row, b, x_scale):
        return splat(builder, builder.fmul(w_scales[row].at(b), x_scale), 8)

    def fetch_ahead(row, step):  # a step reads 32 weight bytes
        fetch_row_ahead(builder, w[row], step, 32)

    def add_q8_block(b, accs):
        start = load_vector(builder, x_start, b, I32X8, 4) if isa == "vnni" else \
            ir.Constant(I32X8, None)
        x_block = load_vector(builder, xq, b, I8X32, 1)
        x_scale = load_scale(builder, x_scales_type, x_scales, b)
        updated = []
        for row, acc in enumerate(accs):
            fetch_ahead(row, b)
            sums = q8_block(builder, isa, load_vector(builder, w[row], b, I8X32, 1), x_block,
                            start)
            updated.append(builder.call(fma, [builder.sitofp(sums, F32X8),
                                              block_scale(row, b, x_scale), acc]))
        return updated

    if not q4:
        return [_reduce(builder, total)
                for total in _chained(builder, n_blocks, add_q8_block, isa, len(rows))]

    # Q4_0 (no mins): -8 * sum(xq) of each block starts its sums (x_start); else they
    # start at 0 and the mins times x's block sums (in lanes 0 and 4 of x_sums) are added.
    has_mins = "w_mins" in present
    x_sums = _row_pointer(context, builder, *parts["x_sums"], x_row) if has_mins else None

    def q4_start(step):
        if has_mins:
            return ir.Constant(I32X8, None)
        return load_vector(builder, x_start, step, I32X8, 4)

    def add_q4_pair(pair, accs):
        first = builder.mul(pair, ir.Constant(pair.type, 2))
        x_low = load_vector(builder, xq, first, I8X32, 1)
        x_high = load_vector(builder, xq, builder.add(first, ir.Constant(first.type, 1)),
                             I8X32, 1)
        start = q4_start(pair)
        x_scale = _load_pair(builder, x_scales_type, x_scales, pair)
        pair_sums = load_vector(builder, x_sums, pair, F32X8, 4) if has_mins else None
        updated = []
        for row, acc in enumerate(accs):
            fetch_ahead(row, pair)
            low, high = nibbles(builder, load_vector(builder, w[row], pair, I8X32, 1))
            sums = dot_u8_s8(builder, isa, [(low, x_low), (high, x_high)], start)
            scale = builder.fmul(w_scales[row].pair(pair), x_scale)
            acc = builder.call(fma, [builder.sitofp(sums, F32X8), scale, acc])
            if has_mins:
                acc = builder.call(fma, [w_mins[row].pair(pair), pair_sums, acc])
            updated.append(acc)
        return updated

    if w_scales[0].two_level:  # Q4_K
        return _two_level_rows_dot(builder, w, w_scales, w_mins, xq, x_scales_type, x_scales,
                                   x_sums, n_blocks, fetch_ahead)

    two = ir.Constant(n_blocks.type, 2)
    n_pairs = builder.udiv(n_blocks, two)
    totals = [cgutils.alloca_once_value(builder, total)
              for total in _chained(builder, n_pairs, add_q4_pair, isa, len(rows))]
    with builder.if_then(builder.icmp_unsigned("!=", builder.urem(n_blocks, two),
                                               ir.Constant(n_blocks.type, 0))):
        last = builder.sub(n_blocks, ir.Constant(n_blocks.type, 1))
        x_last = load_vector(builder, xq, last, I8X32, 1)
        x_scale = load_scale(builder, x_scales_type, x_scales, last)
        start = q4_start(n_pairs)
        last_sums = load_vector(builder, x_sums, n_pairs, F32X8, 4) if has_mins else None
        for row, total in enumerate(totals):
            low, high = nibbles(builder, load_vector(builder, w[row], last, I8X16, 1))
            q = builder.shuffle_vector(low, high, ir.Constant(
                ir.VectorType(ir.IntType(32), 32), list(range(32))))
            sums = dot_u8_s8(builder, isa, [(q, x_last)], start)
            acc = builder.call(fma, [builder.sitofp(sums, F32X8),
                                     block_scale(row, last, x_scale), builder.load(total)])
            if has_mins:
                acc = builder.call(fma, [splat(builder, w_mins[row].at(last), 8), last_sums,
                                         acc])
            builder.store(acc, total)
    return [_reduce(builder, builder.load(total)) for total in totals]


def _two_level_rows_dot(builder, w, w_scales, w_mins, xq, x_scales_type, x_scales, x_sums,
                        n_blocks, fetch_ahead):
    """_rows_dot for Q4 rows with two-level scales and mins (Q4_K: WeightScales), a
    super-block of 8 blocks (4 pairs) a step, in the spirit of llama.cpp's Q4_K dot
    product: each block's 6-bit scale code multiplies its int16 pair sums in the
    vpmaddwd that widens them (dot_u8_s8's pair_weights, instead of ones), so a pair
    costs one float32 multiply-add, by super * x's block scale; the mins go once per
    super-block, 8 codes times super times x's 8 block sums. One Zen 3 core, from L3,
    19-19.5 G weights a second, as fast as with float32 scales per block, which take
    3.2x the bytes for scales and mins. The sums stay exact (a block's int16 pair sums
    at most 2 x 2 x 15 x 127 = 7620, times 63 twice in int32): the same products as with
    float32 scales, rounded at other places. Both forms run this AVX2 arithmetic."""
    fma = declare(builder, "llvm.fma.v8f32", F32X8, F32X8, F32X8, F32X8)
    i8x8 = ir.VectorType(ir.IntType(8), 8)
    zero_bytes = ir.Constant(i8x8, [0] * 8)

    def codes_of_pair(codes, k):
        """<16 x i16>: pair k's two block codes, each over 8 lanes (bytes 8..: zeros)."""
        mask = [index for lane in range(16) for index in ((2 * k + lane // 8), 8)]
        return builder.bitcast(builder.shuffle_vector(codes, zero_bytes, ir.Constant(
            ir.VectorType(ir.IntType(32), 32), mask)), _I16x16)

    def block_sums_of_super(s):
        """<8 x float>: x's 8 block sums (scaled) of super-block s, from x_sums' pair lanes."""
        pairs = [load_vector(builder, x_sums, builder.add(builder.mul(
            s, ir.Constant(s.type, 4)), ir.Constant(s.type, k)), F32X8, 4) for k in range(4)]
        lanes04 = ir.Constant(ir.VectorType(ir.IntType(32), 4), [0, 4, 8, 12])
        halves = [builder.shuffle_vector(pairs[k], pairs[k + 1], lanes04) for k in (0, 2)]
        return builder.shuffle_vector(halves[0], halves[1], ir.Constant(
            ir.VectorType(ir.IntType(32), 8), list(range(8))))

    def add_super(s, accs):
        x_block_sums = block_sums_of_super(s)
        codes, supers, updated = [], [], []
        for row, acc in enumerate(accs):
            w_scales[row].fetch_ahead(s)
            w_mins[row].fetch_ahead(s)
            codes.append(w_scales[row].codes(s))
            supers.append(splat(builder, w_scales[row].super_scale(s), 8))
            mins = builder.fmul(splat(builder, w_mins[row].super_scale(s), 8),
                                builder.uitofp(w_mins[row].codes(s), F32X8))
            updated.append(builder.call(fma, [mins, x_block_sums, acc]))
        for k in range(4):
            pair = builder.add(builder.mul(s, ir.Constant(s.type, 4)), ir.Constant(s.type, k))
            first = builder.mul(pair, ir.Constant(pair.type, 2))
            x_low = load_vector(builder, xq, first, I8X32, 1)
            x_high = load_vector(builder, xq, builder.add(first, ir.Constant(first.type, 1)),
                                 I8X32, 1)
            x_scale = _load_pair(builder, x_scales_type, x_scales, pair)
            for row in range(len(accs)):
                fetch_ahead(row, pair)
                low, high = nibbles(builder, load_vector(builder, w[row], pair, I8X32, 1))
                sums = dot_u8_s8(builder, "avx2", [(low, x_low), (high, x_high)],
                                 ir.Constant(I32X8, None), codes_of_pair(codes[row], k))
                updated[row] = builder.call(fma, [builder.sitofp(sums, F32X8),
                                                  builder.fmul(supers[row], x_scale),
                                                  updated[row]])
        return updated

    n_supers = builder.lshr(n_blocks, ir.Constant(n_blocks.type, SUPER_SHIFT))
    return [_reduce(builder, total)
            for total in _chained(builder, n_supers, add_super, "two-level", len(w))]


# The arguments of the row dot products after use_vnni, by their count (Q8: 7, Q4: 9).
_ROW_DOT_ARGUMENTS = {7: ("weights", "w_scales", "xq", "x_scales", "x_start", "x_row",
                          "rows"),
                      9: ("weights", "w_scales", "w_mins", "xq", "x_scales", "x_start",
                          "x_sums", "x_row", "rows")}


def _row_dot_codegen(context, builder, sig, args):
    """Both instruction forms, the first argument (use_vnni) choosing at run time; on a
    CPU without VNNI both are the "avx2" form (an unavailable instruction cannot even
    be compiled)."""
    result = cgutils.alloca_once(builder, context.get_value_type(sig.return_type))
    inner_sig = sig.return_type(*sig.args[1:])

    def emit(form):
        dots = _rows_dot(context, builder, inner_sig, args[1:], form)
        builder.store(context.make_tuple(builder, sig.return_type, dots), result)

    both_forms(builder, args[0], "vnni" in available(), emit)
    return builder.load(result)


def both_forms(builder, use_vnni, has_vnni: bool, emit):
    """emit(form) twice, `use_vnni` choosing between them at run time: "vnni" (as "avx2"
    on a CPU without it: an unavailable instruction cannot even be compiled) and "avx2"."""
    with builder.if_else(use_vnni) as (vnni, avx2):
        for block, form in ((vnni, "vnni" if has_vnni else "avx2"), (avx2, "avx2")):
            with block:
                emit(form)


def _dots_type(rows):
    """One float32 a weight row: rows is a tuple of row indices."""
    if not isinstance(rows, types.UniTuple) or not isinstance(rows.dtype, types.Integer):
        raise TypeError(f"row dot products: rows must be a tuple of row indices, got {rows}")
    return types.UniTuple(types.float32, rows.count)


@intrinsic
def q8_dot(typingctx, use_vnni, values, scales, xq, x_scales, x_start, x_row, rows):
    """float32s: the Q8 weight rows `rows` (values int8, scales float32 or float16 bits
    in uint16; (N, K) and (N, K/32), each row contiguous) each dotted with row x_row of
    the activations quantised by kernels_numba.quantize_rows (xq, x_scales; x_start:
    (M, blocks, 8) int32, the sums' starting values, read by the "vnni" form). Whole
    arrays and a row index, not views of a row: a view in compiled code costs atomic
    reference counts (kernels_numba._row_dots)."""
    return (_dots_type(rows)(use_vnni, values, scales, xq, x_scales, x_start, x_row, rows),
            _row_dot_codegen)


@intrinsic
def q4_dot(typingctx, use_vnni, packed, scales, mins, xq, x_scales, x_start, x_sums, x_row,
           rows):
    """float32s: the Q4 weight rows `rows` (packed bytes; scales and mins float32 or
    float16 bits in uint16; mins None: Q4_0, whose offset of 8 x_start carries) each
    dotted with row x_row of the activations quantised by kernels_numba.quantize_rows
    for Q4 (as q8_dot's)."""
    return (_dots_type(rows)(use_vnni, packed, scales, mins, xq, x_scales, x_start, x_sums,
                             x_row, rows),
            _row_dot_codegen)


def _q8_float_row_dot(context, builder, sig, args):
    """sum over blocks b of scales[b] * (w_b . x_b), w_b converted to float32 and x float32:
    per block, products summed by multiply-adds in two vectors (two chains), then one
    multiply-add by the block's scale, instead of a multiply by the scale per value:
    a third fewer arithmetic instructions (the scalar loop's limit, with the conversions)."""
    (w_type, scales_type, _, x_type), (weights, scales, row, x) = sig.args, args
    w, scales = (_row_pointer(context, builder, t, a, row)
                 for t, a in ((w_type, weights), (scales_type, scales)))
    x = _data(context, builder, x_type, x)
    n_blocks = _shape(context, builder, scales_type, args[1])[1]
    fma = declare(builder, "llvm.fma.v8f32", F32X8, F32X8, F32X8, F32X8)
    x_block_type = ir.VectorType(ir.FloatType(), 32)

    def add_block(b, accs):
        weights = builder.sitofp(load_vector(builder, w, b, I8X32, 1), x_block_type)
        values = load_vector(builder, x, b, x_block_type, 4)
        (w0, w1, w2, w3), (x0, x1, x2, x3) = (eight_lane_parts(builder, v)
                                              for v in (weights, values))
        even = builder.call(fma, [w2, x2, builder.fmul(w0, x0)])
        odd = builder.call(fma, [w3, x3, builder.fmul(w1, x1)])
        scale = splat(builder, load_scale(builder, scales_type, scales, b), 8)
        return [builder.call(fma, [builder.fadd(even, odd), scale, accs[0]])]

    return _reduce(builder, _chained(builder, n_blocks, add_block, "float")[0])


@intrinsic
def q8_dot_float(typingctx, weights, scales, row, x):
    """float32: row `row` of a Q8 matrix (int8 values, scales per 32 as q8_dot's) dotted
    with float32 x, all in float32 (no integer instructions: any CPU). The matrices and a
    row index, not views of the row, as q8_dot."""
    def codegen(context, builder, sig, args):
        return _q8_float_row_dot(context, builder, sig, args)

    return types.float32(weights, scales, row, x), codegen


def _q8_decode_row(context, builder, sig, args):
    """Row `row` of a Q8 matrix as float32 into row out_row of out: each block's 32 int8
    values converted and multiplied by the block's scale as one vector (the scalar loop,
    scale looked up per value, was not vectorised: 3.8 against 15 G values/s for bf16)."""
    (w_type, scales_type, _, out_type, _), (weights, scales, row, out, out_row) = sig.args, args
    w, block_scales = (_row_pointer(context, builder, t, a, row)
                       for t, a in ((w_type, weights), (scales_type, scales)))
    block_type = ir.VectorType(ir.FloatType(), 32)
    blocks_out = builder.bitcast(_row_pointer(context, builder, out_type, out, out_row),
                                 block_type.as_pointer())
    with cgutils.for_range(builder, _shape(context, builder, scales_type, scales)[1]) as loop:
        values = builder.sitofp(load_vector(builder, w, loop.index, I8X32, 1), block_type)
        scale = splat(builder, load_scale(builder, scales_type, block_scales, loop.index), 32)
        builder.store(builder.fmul(values, scale), builder.gep(blocks_out, [loop.index]),
                      align=4)
    return context.get_dummy_value()


@intrinsic
def q8_decode_row(typingctx, weights, scales, row, out, out_row):
    """out[out_row] = row `row` of a Q8 matrix (int8 values, scales per 32 as q8_dot's) as
    float32: each value times its block's scale, one rounding, as the scalar loop."""
    def codegen(context, builder, sig, args):
        return _q8_decode_row(context, builder, sig, args)

    return types.void(weights, scales, row, out, out_row), codegen


@intrinsic
def q4_decode_block(typingctx, packed, row, b, scale, minimum, out, out_row):
    """Block b of row `row` of a Q4 matrix (16 bytes: the low nibbles are values 0-15, the
    high ones 16-31) as float32 into row out_row of out: nibble * scale + minimum, in one
    vector of 32 (each product is exact, so fused or not, the sum is rounded once)."""
    def codegen(context, builder, sig, args):
        packed_type, out_type = sig.args[0], sig.args[5]
        packed_array, row, b, scale, minimum, out_array, out_row = args
        low, high = nibbles(builder, load_vector(
            builder, _row_pointer(context, builder, packed_type, packed_array, row), b, I8X16,
            1))
        both = builder.shuffle_vector(low, high, ir.Constant(ir.VectorType(ir.IntType(32), 32),
                                                             list(range(32))))
        values = builder.uitofp(both, ir.VectorType(ir.FloatType(), 32))
        decoded = builder.fadd(builder.fmul(values, splat(builder, scale, 32)),
                               splat(builder, minimum, 32))
        blocks_out = builder.bitcast(_row_pointer(context, builder, out_type, out_array,
                                                  out_row), decoded.type.as_pointer())
        builder.store(decoded, builder.gep(blocks_out, [b]), align=4)
        return context.get_dummy_value()

    return types.void(packed, row, b, types.float32, types.float32, out, out_row), codegen


def _float_rows_dot(context, builder, sig, args):
    """x[x_row] . w[r] in float32 for each weight row r in `rows`, w bf16 bits (uint16)
    or float32: 32 values (64 bytes of bf16, 128 of float32) a step, bf16 widened to
    float32 in registers (shifted up 16 bits), multiply-added into vectors of eight
    partial sums, two chains a row; the K mod 32 values left, one at a time. Each step
    asks for its rows' bytes PREFETCH_DISTANCE ahead, as the int8 row dots do. The same
    operations in the same order on every CPU (no reassociation left to LLVM)."""
    (w_type, x_type, _, _), (w, x, x_row, rows) = sig.args, args
    rows = cgutils.unpack_tuple(builder, rows)
    w_rows = [_row_pointer(context, builder, w_type, w, r) for r in rows]
    x = _row_pointer(context, builder, x_type, x, x_row)
    n_in = _shape(context, builder, w_type, w)[1]
    n_steps = builder.udiv(n_in, ir.Constant(n_in.type, 32))
    fma = declare(builder, "llvm.fmuladd.v8f32", F32X8, F32X8, F32X8, F32X8)
    bf16 = w_type.dtype == types.uint16

    def widened(value):
        return bf16_bits_to_float(builder, value) if bf16 else value

    step_bytes = 64 if bf16 else 128  # 32 values; a cache line is 64 bytes

    def add_step(step, accs):
        xs = eight_lane_parts(builder, load_vector(builder, x, step, _F32x32, 4))
        updated = []
        for row, acc in zip(w_rows, accs):
            for line in range(0, step_bytes, 64):
                line_start = builder.gep(builder.bitcast(row, BYTE_POINTER),
                                         [ir.Constant(step.type, line)])
                fetch_row_ahead(builder, line_start, step, step_bytes)
            values = widened(load_vector(builder, row, step, _I16x32 if bf16 else _F32x32,
                                         2 if bf16 else 4))
            for w_part, x_part in zip(eight_lane_parts(builder, values), xs):
                acc = builder.call(fma, [w_part, x_part, acc])
            updated.append(acc)
        return updated

    totals = [_reduce(builder, total) for total in _chained(builder, n_steps, add_step, "bf16",
                                                            len(w_rows))]
    slots = [cgutils.alloca_once_value(builder, total) for total in totals]
    start = builder.mul(n_steps, ir.Constant(n_in.type, 32))
    with cgutils.for_range_slice(builder, start, n_in, ir.Constant(n_in.type, 1)) as (j, _):
        x_j = builder.load(builder.gep(x, [j]))
        for row, slot in zip(w_rows, slots):
            value = widened(builder.load(builder.gep(row, [j])))
            builder.store(builder.fadd(builder.load(slot), builder.fmul(x_j, value)), slot)
    return [builder.load(slot) for slot in slots]


def _float_dot_codegen(context, builder, sig, args):
    return context.make_tuple(builder, sig.return_type,
                              _float_rows_dot(context, builder, sig, args))


@intrinsic
def bf16_dot_float(typingctx, bits, x, x_row, rows):
    """float32s: the bf16 weight rows `rows` (bits: (N, K) uint16, each row contiguous)
    each dotted with the float32 row x_row of x (M, K), in float32: fused multiply-adds
    where the CPU has them (every AVX2 CPU), else a multiply and an add. Whole arrays
    and indices, as q8_dot."""
    return _dots_type(rows)(bits, x, x_row, rows), _float_dot_codegen


@intrinsic
def f32_dot_float(typingctx, w, x, x_row, rows):
    """float32s: the float32 weight rows `rows` (w: (N, K), each row contiguous) each
    dotted with the float32 row x_row of x (M, K), as bf16_dot_float."""
    return _dots_type(rows)(w, x, x_row, rows), _float_dot_codegen


# --- quantising x (kernels_numba.quantize_block) ---------------------------------------
# A 32-value block in one vector each way. Written as a scalar numba loop (np.rint, an
# int8 cast, an integer sum) it stayed scalar: ~100 ns a block against ~15 here, and
# 1B Q4_0 int8 prefill of 128 tokens took 10-15% longer (2 threads, interleaved).


def _block_at(context, builder, array_type, array, row, start):
    """The 32 float32 of x[row, start:start + 32] (rows contiguous) as one vector."""
    first = builder.gep(_row_pointer(context, builder, array_type, array, row), [start])
    return builder.load(builder.bitcast(first, _F32x32.as_pointer()), align=4)


def _check_rows(x):
    if not (isinstance(x, types.Array) and x.ndim == 2 and x.dtype == types.float32
            and x.layout == "C"):
        raise TypeError(f"quantising x: want a C-contiguous 2-D float32 array, got {x}")


@intrinsic
def block_magnitude_bits(typingctx, x, row, start):
    """uint32: the largest of the bits of |x[row, start + k]|, k < 32, sign bit cleared
    (x: 2-D float32, rows contiguous). Their integer order is the float order of the
    magnitudes, with inf above every finite value and NaN above inf."""
    def codegen(context, builder, sig, args):
        bits = builder.bitcast(_block_at(context, builder, sig.args[0], *args), _I32x32)
        magnitudes = builder.and_(bits, ir.Constant(_I32x32, [0x7FFFFFFF] * 32))
        largest = declare(builder, "llvm.vector.reduce.umax.v32i32", I32, _I32x32)
        return builder.call(largest, [magnitudes])

    _check_rows(x)
    return types.uint32(x, row, start), codegen


@intrinsic
def round_block(typingctx, x, row, start, inverse, q, q_row, first, second):
    """int32: the sum of q_k = int8(rint(x[row, start + k] * inverse)), k < 32, which it
    stores in row q_row of q (2-D int8): q_0 .. q_15 from column `first` on, q_16 .. q_31
    from `second` on. Each product is one IEEE float32 multiply and rint rounds half to
    even, as np.rint; inverse must keep every product within int8."""
    def codegen(context, builder, sig, args):
        block = _block_at(context, builder, sig.args[0], *args[:3])
        scaled = builder.fmul(block, splat(builder, args[3], 32))
        rint = declare(builder, "llvm.rint.v32f32", _F32x32, _F32x32)
        values = builder.fptosi(builder.call(rint, [scaled]), _I32x32)
        q_values = builder.trunc(values, I8X32)
        q_start = _row_pointer(context, builder, sig.args[4], args[4], args[5])
        for half, column in enumerate(args[6:8]):
            part = builder.shuffle_vector(q_values, q_values, ir.Constant(
                ir.VectorType(I32, 16), list(range(16 * half, 16 * half + 16))))
            builder.store(part, builder.bitcast(builder.gep(q_start, [column]),
                                                I8X16.as_pointer()), align=1)
        total = declare(builder, "llvm.vector.reduce.add.v32i32", I32, _I32x32)
        return builder.call(total, [values])

    _check_rows(x)
    if not (isinstance(q, types.Array) and q.ndim == 2 and q.dtype == types.int8
            and q.layout == "C"):
        raise TypeError(f"round_block: q must be a C-contiguous 2-D int8 array, got {q}")
    return types.int32(x, row, start, types.float32, q, q_row, first, second), codegen
