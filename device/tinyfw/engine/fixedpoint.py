# Run-time fixed-point primitives of TFLM / gemmlowp (common.h, fixedpoint.h), shared by the reference kernels
# and by load-time preparation (quant.py re-exports them). Ints only; no allocation on 64-bit ports. Kept apart
# from quant.py so that a model running reference kernels does not keep the load-time arithmetic in RAM.

INT32_MIN = -2147483648
INT32_MAX = 2147483647


def srdhm(a, b):
    """SaturatingRoundingDoublingHighMul for int32 a, b."""
    if a == b and a == INT32_MIN:
        return INT32_MAX
    ab = a * b
    if ab >= 0:
        return (ab + 1073741824) >> 31
    return -((1073741823 - ab) >> 31)


def rdbpot(x, exponent):
    """RoundingDivideByPOT: x / 2**exponent rounded to nearest, ties away from zero."""
    if exponent == 0:
        return x
    mask = (1 << exponent) - 1
    remainder = x & mask
    threshold = mask >> 1
    if x < 0:
        threshold += 1
    if remainder > threshold:
        return (x >> exponent) + 1
    return x >> exponent


def mbqm(x, multiplier, shift):
    """MultiplyByQuantizedMultiplier (TFLM default, double rounding)."""
    if shift > 0:
        return rdbpot(srdhm(x << shift, multiplier), 0)
    return rdbpot(srdhm(x, multiplier), -shift)


def _sat_shl(x, exponent):
    """gemmlowp SaturatingRoundingMultiplyByPOT with a positive exponent on int32."""
    threshold = (1 << (31 - exponent)) - 1
    if x > threshold:
        return INT32_MAX
    if x < -threshold:
        return INT32_MIN
    return x << exponent


def _wrap32(x):
    x &= 0xFFFFFFFF
    return x - 0x100000000 if x & 0x80000000 else x


def one_over_one_plus_x(a):
    """gemmlowp one_over_one_plus_x_for_x_in_0_1, Q0.31 in and out."""
    s = a + INT32_MAX
    half_denominator = (s + 1) // 2 if s >= 0 else -((-s + 1) // 2)
    x = _wrap32(1515870810 + srdhm(half_denominator, -1010580540))
    for _ in range(3):
        hdx = srdhm(half_denominator, x)
        one_minus = _wrap32((1 << 29) - hdx)
        x = _wrap32(x + _sat_shl(srdhm(x, one_minus), 2))
    return _sat_shl(x, 1)


def clz32(x):
    """Count leading zeros of a uint32."""
    x &= 0xFFFFFFFF
    n = 32
    while x:
        x >>= 1
        n -= 1
    return n


def reciprocal(x, integer_digits):
    """TFLM GetReciprocal: returns (Q0.31 reciprocal scale, num_bits_over_unit)."""
    headroom_plus_one = clz32(x)
    num_bits_over_unit = integer_digits - headroom_plus_one
    shifted_minus_one = _wrap32(((x << headroom_plus_one) & 0xFFFFFFFF) - (1 << 31))
    return one_over_one_plus_x(shifted_minus_one), num_bits_over_unit
