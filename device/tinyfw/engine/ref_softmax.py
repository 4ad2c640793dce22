# The reference SOFTMAX kernel (part of kernels_ref, the specification), in a module of its own: a fast backend
# without a softmax kernel falls back to this one alone instead of keeping all reference kernels in RAM.

from .fixedpoint import srdhm, rdbpot, clz32, one_over_one_plus_x

# params.S_OUTER, params.S_DEPTH (fixed slot numbers, KERNELS.md): not imported, so that a model that needs only
# this reference kernel does not pull params.py into RAM while it loads.
_S_OUTER = 0
_S_DEPTH = 1


def softmax(out, inp, exp_q31, exp_q12, p):
    """SOFTMAX int8 -> int8 (TFLM reference_ops::Softmax, gemmlowp fixed point).

    exp_q31[d] / exp_q12[d] hold exp(-d * beta * scale) for the input difference d = max - x (0..255) in Q0.31 and
    rescaled to Q12.19; 0 where d is below TFLM's diff_min (those outputs are -128, as in TFLM)."""
    depth = p[_S_DEPTH]
    for r in range(p[_S_OUTER]):
        base = r * depth
        mx = -128
        for c in range(depth):
            x = inp[base + c]
            if x > mx:
                mx = x
        total = 0
        for c in range(depth):
            total += exp_q12[mx - inp[base + c]]
        # GetReciprocal(total, 12): Q0.31 scale and bits over unit, without building a tuple
        headroom = clz32(total)
        x = ((total << headroom) & 0xFFFFFFFF) - 0x80000000
        scale = one_over_one_plus_x(x)
        exponent = 12 - headroom + 23
        for c in range(depth):
            v = rdbpot(srdhm(scale, exp_q31[mx - inp[base + c]]), exponent) - 128
            if v > 127:
                v = 127
            elif v < -128:
                v = -128
            out[base + c] = v
