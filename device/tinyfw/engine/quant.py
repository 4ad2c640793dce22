# Exact quantisation arithmetic for load-time preparation (the run-time primitives live in fixedpoint.py).
#
# TFLM derives its integer multipliers from float32 scales with C `float`/`double` arithmetic. MicroPython's float
# is single precision on most microcontroller ports, so we never use Python floats for that: a binary float is a
# pair (mantissa, exponent) of Python ints (value = m * 2**e, m >= 0) and every rounding step that C performs
# (float32 product, double division, std::round) is done exactly on integers. The result is the same on CPython,
# the unix VM and an ESP32.

from .fixedpoint import (INT32_MIN, INT32_MAX, srdhm, rdbpot, mbqm, _sat_shl, _wrap32,  # noqa: F401 (re-export)
                         one_over_one_plus_x, clz32, reciprocal)

_DOUBLE_BITS = 53
_FLOAT_BITS = 24


def f32_parts(bits):
    """float32 bit pattern (int) -> (sign, m, e) with value (-1)**sign * m * 2**e. Raises ValueError for inf/nan."""
    sign = (bits >> 31) & 1
    exp = (bits >> 23) & 0xFF
    frac = bits & 0x7FFFFF
    if exp == 0xFF:
        raise ValueError("not a finite number")
    if exp == 0:
        return sign, frac, -149
    return sign, frac | 0x800000, exp - 150


def f32_to_float(bits):
    sign, m, e = f32_parts(bits)
    v = m * (2.0 ** e)
    return -v if sign else v


def _bitlen(n):
    b = 0
    while n >= 65536:
        n >>= 16
        b += 16
    while n:
        n >>= 1
        b += 1
    return b


def round_bits(m, e, bits):
    """Round the exact value m*2**e (m >= 0) to `bits` significant bits, to nearest, ties to even."""
    n = _bitlen(m)
    if n <= bits:
        return m, e
    drop = n - bits
    q = m >> drop
    rem = m - (q << drop)
    half = 1 << (drop - 1)
    if rem > half or (rem == half and (q & 1)):
        q += 1
    return q, e + drop


def div_round(a, b, bits=_DOUBLE_BITS):
    """Correctly rounded quotient of two exact values a=(m, e), b=(m, e): IEEE division with `bits` of precision."""
    ma, ea = a
    mb, eb = b
    if ma == 0:
        return 0, 0
    # Scale the numerator so the integer quotient has at least bits + 2 significant bits, then round with the
    # remainder folded in as a sticky bit.
    shift = bits + 2 + _bitlen(mb) - _bitlen(ma)
    if shift < 0:
        shift = 0
    q, r = divmod(ma << shift, mb)
    q = (q << 1) | (1 if r else 0)
    return round_bits(q, ea - eb - shift - 1, bits)


def mul(a, b):
    return a[0] * b[0], a[1] + b[1]


def quantize_multiplier(d):
    """TFLM's QuantizeMultiplier (double-rounding build) for the exact positive double d=(m, e).

    Returns (multiplier, shift): d ~= multiplier * 2**(shift - 31), multiplier in [2**30, 2**31) or 0."""
    m, e = d
    if m == 0:
        return 0, 0
    n = _bitlen(m)
    shift = e + n                       # frexp: d = q * 2**shift, q in [0.5, 1)
    # q * 2**31 = m * 2**(31 - n), rounded half away from zero (TfLiteRound on a positive value)
    s = 31 - n
    if s >= 0:
        q_fixed = m << s
    else:
        q_fixed = (m + (1 << (-s - 1))) >> (-s)
    if q_fixed == (1 << 31):
        q_fixed >>= 1
        shift += 1
    if shift < -31:
        return 0, 0
    return q_fixed, shift


def round_away(a, negative=False):
    """std::round of the exact value a=(m, e) (with the given sign), as an int."""
    m, e = a
    if e >= 0:
        v = m << e
    else:
        v = (m + (1 << (-e - 1))) >> (-e)
    return -v if negative else v


def quantize_f32(value_int, scale, zero_point):
    """TFLM's Quantize(): zero_point + round(float32(f / scale)) for a small integer f (0, 6, -1, 1)."""
    if value_int == 0:
        return zero_point
    neg = value_int < 0
    q = div_round((-value_int if neg else value_int, 0), scale, _FLOAT_BITS)
    return zero_point + round_away(q, neg)


def _exp_quarter_interval(a):
    """gemmlowp exp_on_interval_between_negative_one_quarter_and_0_excl, Q0.31 in and out."""
    x = _wrap32(a + (1 << 28))
    x2 = srdhm(x, x)
    x3 = srdhm(x2, x)
    x4 = srdhm(x2, x2)
    x4_over_4 = rdbpot(x4, 2)
    poly = rdbpot(_wrap32(srdhm(_wrap32(x4_over_4 + x3), 715827883) + x2), 1)
    return _wrap32(1895147668 + srdhm(1895147668, _wrap32(x + poly)))


_EXP_BARREL = ((-2, 1672461947), (-1, 1302514674), (0, 790015084), (1, 290630308), (2, 39332535),
               (3, 720401), (4, 242))


def exp_on_negative_values_q5_26(a):
    """gemmlowp exp_on_negative_values for a Q5.26 input <= 0; returns Q0.31."""
    one_quarter = 1 << 24
    a_mod = _wrap32((a & (one_quarter - 1)) - one_quarter)
    result = _exp_quarter_interval(_sat_shl(a_mod, 5))
    remainder = _wrap32(a_mod - a)
    for exponent, multiplier in _EXP_BARREL:
        if remainder & (1 << (26 + exponent)):
            result = srdhm(result, multiplier)
    if a == 0:
        result = INT32_MAX
    return result
