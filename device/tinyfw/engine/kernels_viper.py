# Fast int8 kernels in MicroPython viper: the same functions, signatures and results as kernels_ref.py
# (KERNELS.md is the contract). Bit-exact with the reference on 64-bit ports (the unix VM) and on 32-bit ones
# (ESP32 Xtensa, nRF52 Arm), where a viper int is a 32-bit machine word that wraps.
#
# Rules every function here follows so that the same source gives the same bytes on both word sizes:
# - Values that TFLM keeps in int32 (accumulators) are wrapped to 32 bits with `(x << WS) >> WS`, WS = word bits
#   - 32 (0 on a 32-bit port, where the machine wraps by itself). Sums before that wrap may leave int32 on a
#   64-bit port; modular arithmetic makes the wrapped value the same as on a 32-bit port.
# - Requantisation (TFLM MultiplyByQuantizedMultiplier, double rounding) never has an intermediate outside
#   signed 32 bits: the 32x32->64 high product is built from 16-bit and 8-bit pieces (see `requant`).
# - ptr32 loads are zero-extended on a 64-bit port and are sign-extended with the same WS shift pair.
# - No integer literal reaches 2**30 (31-bit small ints on 32-bit ports); bigger constants are built with shifts.
# - Nothing allocates: loops run over addresses (int) read through ptr8/ptr32. The engine passes each call a
#   `scratch` view: the free part of the tensor arena above the operator's live tensors (arena_layout.tops). It holds
#   offset copies of operands (below) and the lookup tables of add (2 KB) and requantize (1 KB), which the plan
#   guarantees; conv/depthwise/fully-connected use it when their working set fits and read in place otherwise.
#
# Speed (the viper emitters compile each operation naively, so fewer operations per MAC is what counts):
# - int8 operands are used offset by 128 (xu = x ^ 128, unsigned) and the offsets are folded back with sums:
#   sum (xs + io) * ws = S(xu*wu) - 128*S(xu) + (io - 128)*S(wu) - 128*(io - 128)*n,  wu = ws + 128.
# - conv2d copies a block of output channels' weights (offset) and, per output pixel, the receptive field
#   (offset, padding taps = input zero point) into the scratch buffer, so the inner loop is two byte loads, a
#   multiply and an add, unrolled 16 times (viper_conv.py). depthwise_conv2d copies the band's rows of each padded
#   input plane (viper_dw.py; column by column when the window is one column, K_W 1); fully_connected stores each input row as int32 x + in_offset (viper_ops.py).
# - Row bands (KERNELS.md): conv2d and depthwise_conv2d compute output rows [P_OY_BEGIN, P_OY_END) only and read
#   only the input rows those rows' windows cover, so the engine may lay the output over dying input rows.
# - Hot loops keep their accumulator and one pointer in the viper function's first two arguments: the native
#   emitters hold a function's first locals in registers, three when the VM compiles the source but two in code
#   from mpy-cross (the third register holds the .mpy's constant table), and the firmware is flashed as .mpy. A
#   value loaded through the other pointer is spilled to the stack once per MAC; a loop-carried accumulator on
#   the stack cost KWS's 1x1 conv2d 619 us against 495 with it in a register (.mpy, `python -m
#   benchmarks.engine_latency --models kws --profile`). Requantisation is inlined (a call per output would cost
#   more than the MACs).
# Ops whose working set does not fit the scratch buffer take "direct" paths that read the tensors in place.
import micropython

from .viper_conv import conv_patched as _conv_patched, conv_direct as _conv_direct
from .viper_dw import dw_planes as _dw_planes, dw_direct as _dw_direct
from . import viper_ops as _ops

@micropython.viper
def word_shift() -> int:
    """Bits above 32 in a viper int on this port: 0 on 32-bit ports, 32 on 64-bit ones."""
    if (int(1) << 31) > 0:
        return 32
    return 0


@micropython.viper
def requant(acc: int, mult: int, shift: int) -> int:
    """TFLM MultiplyByQuantizedMultiplier(acc, mult, shift): int32 acc, mult in [0, 2**31), shift in [-31, 30].

    The kernels inline this sequence for every output. No intermediate leaves signed 32 bits:
    - acc << shift (shift > 0) is wrapped to int32 as C does, from its low 31 - shift bits and one sign bit;
    - SaturatingRoundingDoublingHighMul = floor((acc*mult + 2**30) / 2**31) (TFLM's sign-dependent nudge with
      truncation is exactly this floor; mult >= 0 rules out the saturating case), computed from
      acc = a1*2**16 + a0 (a1 signed) and mult = b1*2**16 + b0, with a0*b0 split once more at 8 bits;
    - RoundingDivideByPOT(r, e) = (r >> e) + ((r & mask) + 2**(e-1) + (r >> 31)) >> e, with e = 31 by cases."""
    if shift > 0:
        k = 31 - shift
        t = (acc >> k) & 1
        acc = (acc & ~(-1 << k)) << shift
        if t:
            acc += int(-1) << 31
    b0 = mult & 0xFFFF
    b1 = mult >> 16
    a1 = acc >> 16
    a0 = acc & 0xFFFF
    t = (a0 >> 8) * b0
    L = (a0 & 0xFF) * b0 + ((t & 0xFF) << 8)
    u = a1 * b0
    v = a0 * b1
    s = (u & 0xFFFF) + (v & 0xFFFF) + (t >> 8) + (L >> 16) + 0x4000
    r = a1 * b1 + (u >> 16) + (v >> 16)
    r = r + (r + (s >> 15))
    if shift < 0:
        k = 0 - shift
        if k < 31:
            r = (r >> k) + (((r & ~(-1 << k)) + (1 << (k - 1)) + (r >> 31)) >> k)
        elif r >= int(1) << 30:
            r = 1
        elif r <= int(-1) << 30:
            r = -1
        else:
            r = 0
    return r


def conv2d(out, inp, filt, bias, mult, shift, p, scratch):
    """CONV_2D int8 per-channel (KERNELS.md); output rows [p[P_OY_BEGIN], p[P_OY_END]) x channels
    [p[P_OC_BEGIN], p[P_OC_END])."""
    if not _conv_patched(0, 0, 0, out, inp, filt, bias, mult, shift, p, scratch, len(scratch)):
        _conv_direct(0, 0, 0, out, inp, filt, bias, mult, shift, p)


def depthwise_conv2d(out, inp, filt, bias, mult, shift, p, scratch):
    """DEPTHWISE_CONV_2D int8 per-channel (KERNELS.md); output rows [p[P_OY_BEGIN], p[P_OY_END])."""
    if not _dw_planes(0, 0, 0, out, inp, filt, bias, mult, shift, p, scratch, len(scratch)):
        _dw_direct(0, 0, 0, out, inp, filt, bias, mult, shift, p)


def fully_connected(out, inp, filt, bias, mult, shift, p, scratch):
    """FULLY_CONNECTED int8 (KERNELS.md); output channels [p[P_OC_BEGIN], p[P_OC_END])."""
    if 4 * p[3] <= len(scratch):                 # p[P_IN_C]: the accumulation depth
        _ops.fc_rows(0, 0, 0, out, inp, filt, bias, mult, shift, p, scratch)
    else:
        _ops.fc(0, 0, 0, out, inp, filt, bias, mult, shift, p)


def avg_pool2d(out, inp, p):
    """AVERAGE_POOL_2D int8 (KERNELS.md)."""
    _ops.pool(out, inp, p, 0)


def max_pool2d(out, inp, p):
    """MAX_POOL_2D int8 (KERNELS.md)."""
    _ops.pool(out, inp, p, 1)


def add(out, in1, in2, p, scratch):
    """ADD int8, same shapes (KERNELS.md); scratch >= 2048 bytes (two lookup tables)."""
    _ops.add(out, in1, in2, p, scratch)


def requantize(out, inp, p, scratch):
    """QUANTIZE int8 -> int8 (KERNELS.md); scratch >= 1024 bytes (a lookup table)."""
    _ops.requantize(out, inp, p, scratch)


copy = _ops.copy
softmax = _ops.softmax      # softmax(out, inp, exp_q31, exp_q12, p): SOFTMAX int8 -> int8 (KERNELS.md)


# bias, mult and shift are read through ptr32 (raw little-endian int32): the engine may pass int8 views of the
# tensor arena holding them (channel data streamed into the arena's end, plan_read.build).
CHANNELS_AS_BYTES = True
# Filters are read through ptr8 as raw bytes too: the engine may pass views of a memory-mapped model file (ROMFS,
# weights="mapped"), whose memoryview is of unsigned bytes.
FILTERS_AS_BYTES = True


def usable():
    """True when the viper emitter on this port computes what these kernels assume (the engine checks once)."""
    ws = word_shift()
    return (ws in (0, 32) and requant(-2147483648, 1073741824, -1) == -536870912
            and requant(2147483647, 2147483647, 0) == 2147483646 and requant(-7, 1518500250, 2) == -20
            and requant(1 << 30, 1 << 30, -31) == 0 and requant(-3, 1 << 30, -1) == -1)
