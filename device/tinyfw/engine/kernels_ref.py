# Reference int8 kernels: the specification, in plain Python (runs on any MicroPython, CircuitPython, CPython).
#
# Semantics are TFLM's reference kernels (tensorflow/lite/kernels/internal/reference/integer_ops/*), element for
# element: NHWC layout, int32 accumulation, requantisation by MultiplyByQuantizedMultiplier (double rounding).
# Signatures and buffer conventions are in KERNELS.md; kernels_viper.py implements the same functions.
# Buffers: int8 tensors are memoryviews of array('b') (signed); bias, multipliers and shifts are array('i');
# `p` is an array('i') laid out as in params.py. Kernels write `out` in place and return None.
# No kernel allocates on a port with 63-bit small ints (unix, 64-bit); see KERNELS.md for 32-bit ports.
# The accumulator is int32 as in TFLM: a sum (bias included) past its range wraps around, as TFLM's C arithmetic
# does on every target it runs on (two's complement), before the requantisation.

from .params import (P_BATCHES, P_IN_H, P_IN_W, P_IN_C, P_OUT_H, P_OUT_W, P_OUT_C, P_K_H, P_K_W, P_STRIDE_H,
                     P_STRIDE_W, P_DIL_H, P_DIL_W, P_PAD_H, P_PAD_W, P_IN_OFFSET, P_OUT_OFFSET, P_ACT_MIN,
                     P_ACT_MAX, P_DEPTH_MULT, P_OC_BEGIN, P_OC_END, P_FILTER_OFFSET, P_OY_BEGIN, P_OY_END,
                     A_SIZE, A_IN1_OFFSET, A_IN2_OFFSET, A_IN1_MULT, A_IN1_SHIFT, A_IN2_MULT, A_IN2_SHIFT,
                     A_OUT_MULT, A_OUT_SHIFT, A_OUT_OFFSET, A_LEFT_SHIFT, A_ACT_MIN, A_ACT_MAX,
                     Q_SIZE, Q_IN_OFFSET, Q_MULT, Q_SHIFT, Q_OUT_OFFSET)
from struct import pack_into, unpack_from

from .fixedpoint import mbqm, _wrap32
from .ref_softmax import softmax  # noqa: F401 (part of this backend; its own module so it can run alone)


def conv2d(out, inp, filt, bias, mult, shift, p, scratch=None):
    """CONV_2D, per-channel int8 (TFLM ConvPerChannel). filt: [OC_END-OC_BEGIN, K_H, K_W, IN_C].

    Computes output rows [P_OY_BEGIN, P_OY_END) x channels [P_OC_BEGIN, P_OC_END) only (KERNELS.md, row bands)."""
    in_h = p[P_IN_H]
    in_w = p[P_IN_W]
    in_c = p[P_IN_C]
    out_h = p[P_OUT_H]
    out_w = p[P_OUT_W]
    out_c = p[P_OUT_C]
    k_h = p[P_K_H]
    k_w = p[P_K_W]
    s_h = p[P_STRIDE_H]
    s_w = p[P_STRIDE_W]
    d_h = p[P_DIL_H]
    d_w = p[P_DIL_W]
    pad_h = p[P_PAD_H]
    pad_w = p[P_PAD_W]
    in_off = p[P_IN_OFFSET]
    out_off = p[P_OUT_OFFSET]
    act_min = p[P_ACT_MIN]
    act_max = p[P_ACT_MAX]
    oc0 = p[P_OC_BEGIN]
    oc1 = p[P_OC_END]
    f_size = k_h * k_w * in_c
    for b in range(p[P_BATCHES]):
        for oy in range(p[P_OY_BEGIN], p[P_OY_END]):
            iy0 = oy * s_h - pad_h
            for ox in range(out_w):
                ix0 = ox * s_w - pad_w
                o = ((b * out_h + oy) * out_w + ox) * out_c
                for oc in range(oc0, oc1):
                    acc = 0
                    fo = (oc - oc0) * f_size
                    for ky in range(k_h):
                        iy = iy0 + d_h * ky
                        if iy < 0 or iy >= in_h:
                            continue
                        row = (b * in_h + iy) * in_w
                        for kx in range(k_w):
                            ix = ix0 + d_w * kx
                            if ix < 0 or ix >= in_w:
                                continue
                            i = (row + ix) * in_c
                            f = fo + (ky * k_w + kx) * in_c
                            for c in range(in_c):
                                acc += filt[f + c] * (inp[i + c] + in_off)
                    acc += bias[oc]
                    if acc > 0x7FFFFFFF or acc < -0x80000000:
                        acc = _wrap32(acc)
                    acc = mbqm(acc, mult[oc], shift[oc]) + out_off
                    if acc < act_min:
                        acc = act_min
                    elif acc > act_max:
                        acc = act_max
                    out[o + oc] = acc


def depthwise_conv2d(out, inp, filt, bias, mult, shift, p, scratch=None):
    """DEPTHWISE_CONV_2D, per-channel int8 (TFLM DepthwiseConvPerChannel). filt: [1, K_H, K_W, OUT_C].

    Computes output rows [P_OY_BEGIN, P_OY_END) only (KERNELS.md, row bands)."""
    in_h = p[P_IN_H]
    in_w = p[P_IN_W]
    in_c = p[P_IN_C]
    out_h = p[P_OUT_H]
    out_w = p[P_OUT_W]
    out_c = p[P_OUT_C]
    k_h = p[P_K_H]
    k_w = p[P_K_W]
    s_h = p[P_STRIDE_H]
    s_w = p[P_STRIDE_W]
    d_h = p[P_DIL_H]
    d_w = p[P_DIL_W]
    pad_h = p[P_PAD_H]
    pad_w = p[P_PAD_W]
    in_off = p[P_IN_OFFSET]
    out_off = p[P_OUT_OFFSET]
    act_min = p[P_ACT_MIN]
    act_max = p[P_ACT_MAX]
    dm = p[P_DEPTH_MULT]
    for b in range(p[P_BATCHES]):
        for oy in range(p[P_OY_BEGIN], p[P_OY_END]):
            iy0 = oy * s_h - pad_h
            for ox in range(out_w):
                ix0 = ox * s_w - pad_w
                o = ((b * out_h + oy) * out_w + ox) * out_c
                for ic in range(in_c):
                    for m in range(dm):
                        oc = ic * dm + m
                        acc = 0
                        for ky in range(k_h):
                            iy = iy0 + d_h * ky
                            if iy < 0 or iy >= in_h:
                                continue
                            row = (b * in_h + iy) * in_w
                            for kx in range(k_w):
                                ix = ix0 + d_w * kx
                                if ix < 0 or ix >= in_w:
                                    continue
                                acc += filt[(ky * k_w + kx) * out_c + oc] * (inp[(row + ix) * in_c + ic] + in_off)
                        acc += bias[oc]
                        if acc > 0x7FFFFFFF or acc < -0x80000000:
                            acc = _wrap32(acc)
                        acc = mbqm(acc, mult[oc], shift[oc]) + out_off
                        if acc < act_min:
                            acc = act_min
                        elif acc > act_max:
                            acc = act_max
                        out[o + oc] = acc


def fully_connected(out, inp, filt, bias, mult, shift, p, scratch=None):
    """FULLY_CONNECTED int8 (TFLM reference_integer_ops::FullyConnected). filt: [OC_END-OC_BEGIN, IN_C]."""
    depth = p[P_IN_C]
    n_out = p[P_OUT_C]
    in_off = p[P_IN_OFFSET]
    f_off = p[P_FILTER_OFFSET]
    out_off = p[P_OUT_OFFSET]
    act_min = p[P_ACT_MIN]
    act_max = p[P_ACT_MAX]
    oc0 = p[P_OC_BEGIN]
    oc1 = p[P_OC_END]
    for b in range(p[P_BATCHES]):
        i = b * depth
        for oc in range(oc0, oc1):
            f = (oc - oc0) * depth
            acc = 0
            for d in range(depth):
                acc += (filt[f + d] + f_off) * (inp[i + d] + in_off)
            acc += bias[oc]
            if acc > 0x7FFFFFFF or acc < -0x80000000:
                acc = _wrap32(acc)
            acc = mbqm(acc, mult[oc], shift[oc]) + out_off
            if acc < act_min:
                acc = act_min
            elif acc > act_max:
                acc = act_max
            out[b * n_out + oc] = acc


def avg_pool2d(out, inp, p):
    """AVERAGE_POOL_2D int8: mean of the valid (unpadded) window, rounded half away from zero."""
    in_h = p[P_IN_H]
    in_w = p[P_IN_W]
    ch = p[P_IN_C]
    out_h = p[P_OUT_H]
    out_w = p[P_OUT_W]
    k_h = p[P_K_H]
    k_w = p[P_K_W]
    s_h = p[P_STRIDE_H]
    s_w = p[P_STRIDE_W]
    pad_h = p[P_PAD_H]
    pad_w = p[P_PAD_W]
    act_min = p[P_ACT_MIN]
    act_max = p[P_ACT_MAX]
    for b in range(p[P_BATCHES]):
        for oy in range(out_h):
            iy0 = oy * s_h - pad_h
            fy0 = -iy0 if iy0 < 0 else 0
            fy1 = in_h - iy0 if in_h - iy0 < k_h else k_h
            for ox in range(out_w):
                ix0 = ox * s_w - pad_w
                fx0 = -ix0 if ix0 < 0 else 0
                fx1 = in_w - ix0 if in_w - ix0 < k_w else k_w
                count = (fy1 - fy0) * (fx1 - fx0)
                o = ((b * out_h + oy) * out_w + ox) * ch
                for c in range(ch):
                    acc = 0
                    for fy in range(fy0, fy1):
                        i = ((b * in_h + iy0 + fy) * in_w + ix0) * ch + c
                        for fx in range(fx0, fx1):
                            acc += inp[i + fx * ch]
                    if count <= 0:
                        acc = 0
                    elif acc > 0:
                        acc = (acc + count // 2) // count
                    else:
                        acc = -((count // 2 - acc) // count)
                    if acc < act_min:
                        acc = act_min
                    elif acc > act_max:
                        acc = act_max
                    out[o + c] = acc


def max_pool2d(out, inp, p):
    """MAX_POOL_2D int8: maximum of the valid window, then the activation clamp."""
    in_h = p[P_IN_H]
    in_w = p[P_IN_W]
    ch = p[P_IN_C]
    out_h = p[P_OUT_H]
    out_w = p[P_OUT_W]
    k_h = p[P_K_H]
    k_w = p[P_K_W]
    s_h = p[P_STRIDE_H]
    s_w = p[P_STRIDE_W]
    pad_h = p[P_PAD_H]
    pad_w = p[P_PAD_W]
    act_min = p[P_ACT_MIN]
    act_max = p[P_ACT_MAX]
    for b in range(p[P_BATCHES]):
        for oy in range(out_h):
            iy0 = oy * s_h - pad_h
            fy0 = -iy0 if iy0 < 0 else 0
            fy1 = in_h - iy0 if in_h - iy0 < k_h else k_h
            for ox in range(out_w):
                ix0 = ox * s_w - pad_w
                fx0 = -ix0 if ix0 < 0 else 0
                fx1 = in_w - ix0 if in_w - ix0 < k_w else k_w
                o = ((b * out_h + oy) * out_w + ox) * ch
                for c in range(ch):
                    v = -128
                    for fy in range(fy0, fy1):
                        i = ((b * in_h + iy0 + fy) * in_w + ix0) * ch + c
                        for fx in range(fx0, fx1):
                            x = inp[i + fx * ch]
                            if x > v:
                                v = x
                    if v < act_min:
                        v = act_min
                    elif v > act_max:
                        v = act_max
                    out[o + c] = v


def add(out, in1, in2, p, scratch=None):
    """ADD int8, same shapes (TFLM AddElementwise: inputs shifted left by A_LEFT_SHIFT, rescaled, summed)."""
    in1_off = p[A_IN1_OFFSET]
    in2_off = p[A_IN2_OFFSET]
    m1 = p[A_IN1_MULT]
    s1 = p[A_IN1_SHIFT]
    m2 = p[A_IN2_MULT]
    s2 = p[A_IN2_SHIFT]
    mo = p[A_OUT_MULT]
    so = p[A_OUT_SHIFT]
    out_off = p[A_OUT_OFFSET]
    ls = p[A_LEFT_SHIFT]
    act_min = p[A_ACT_MIN]
    act_max = p[A_ACT_MAX]
    for i in range(p[A_SIZE]):
        a = mbqm((in1[i] + in1_off) << ls, m1, s1)
        b = mbqm((in2[i] + in2_off) << ls, m2, s2)
        v = mbqm(a + b, mo, so) + out_off
        if v < act_min:
            v = act_min
        elif v > act_max:
            v = act_max
        out[i] = v


def requantize(out, inp, p, scratch=None):
    """QUANTIZE int8 -> int8: rescale to the output's scale and zero point (TFLM Requantize)."""
    in_off = p[Q_IN_OFFSET]
    m = p[Q_MULT]
    s = p[Q_SHIFT]
    out_off = p[Q_OUT_OFFSET]
    for i in range(p[Q_SIZE]):
        v = mbqm(inp[i] + in_off, m, s) + out_off
        if v < -128:
            v = -128
        elif v > 127:
            v = 127
        out[i] = v


def copy(out, inp, n):
    """RESHAPE when input and output do not share memory: copy n elements."""
    for i in range(n):
        out[i] = inp[i]


# ---- float boundary ops: always run from this module (floats are boxed objects: they allocate) ----
# A float32 tensor is raw little-endian bytes (4 an element). TFLM computes these ops in float32; MicroPython's
# float is a double on 64-bit ports (the unix VM) and a float32 on an ESP32. Both give TFLM's bits here: a
# float32 quotient or product computed in double and then rounded to float32 is the float32 result (double has
# more than twice float32's precision), and rounding half away from zero is done on the exact fraction, never by
# adding 0.5 (which rounds in float32: 0.49999997 + 0.5 is 1.0 there).

def quantize_float(out, inp, n, scale, zero_point, f32_scratch):
    """QUANTIZE float32 -> int8: clamp(zero_point + round(float32(x / scale))), round half away from zero (TFLM's
    AffineQuantize with TfLiteRound). Beyond +-2**31 steps TFLM's float-to-int32 cast is undefined C++; here
    the result saturates (NaN gives the zero point).

    f32_scratch: array('f', [0.0]) used to round to float32."""
    for i in range(n):
        f32_scratch[0] = unpack_from("<f", inp, 4 * i)[0] / scale
        q = f32_scratch[0]
        if q > 512.0:                   # saturates whatever the zero point (-128..127): no big ints below
            q = 512.0
        elif q < -512.0:
            q = -512.0
        elif q != q:                    # NaN
            q = 0.0
        v = int(q)                      # toward zero; q - v is exact in float32 and in double
        frac = q - v
        if frac >= 0.5:
            v += 1
        elif frac <= -0.5:
            v -= 1
        v += zero_point
        if v < -128:
            v = -128
        elif v > 127:
            v = 127
        out[i] = v


def dequantize(out, inp, n, scale, zero_point):
    """DEQUANTIZE int8 -> float32: float32(scale * (x - zero_point)) (TFLM's Dequantize: one float32 product)."""
    for i in range(n):
        pack_into("<f", out, 4 * i, scale * (inp[i] - zero_point))
