"""A host-only engine backend: the kernels of ``tinyfw.engine.kernels_ref`` vectorised with numpy.

Same names, signatures and integer semantics (KERNELS.md); registered as backend ``"numpy"`` by
:func:`tinyhost.model.engine_module`. It lets the host run the device engine (reader, arena_layout, quantisation
parameters) at numpy speed, e.g. for 100-input bit-exactness sweeps against TFLM; every result is also checked
against the reference backend in tests.
"""

import numpy as np

INT32_MIN = -(1 << 31)
INT32_MAX = (1 << 31) - 1

# params.py slots (fixed numbers, see KERNELS.md)
(P_BATCHES, P_IN_H, P_IN_W, P_IN_C, P_OUT_H, P_OUT_W, P_OUT_C, P_K_H, P_K_W, P_STRIDE_H, P_STRIDE_W, P_DIL_H,
 P_DIL_W, P_PAD_H, P_PAD_W, P_IN_OFFSET, P_OUT_OFFSET, P_ACT_MIN, P_ACT_MAX, P_DEPTH_MULT, P_OC_BEGIN, P_OC_END,
 P_FILTER_OFFSET, P_OY_BEGIN, P_OY_END) = range(25)


def _i8(buf):
    return np.frombuffer(buf, dtype=np.int8)


def _i32(buf):
    return np.frombuffer(buf, dtype=np.int32).astype(np.int64)


def srdhm(a, b):
    a = np.asarray(a, dtype=np.int64)
    b = np.asarray(b, dtype=np.int64)
    ab = a * b
    pos = (ab + (1 << 30)) >> 31
    neg = -(((1 << 30) - 1 - ab) >> 31)
    out = np.where(ab >= 0, pos, neg)
    return np.where((a == INT32_MIN) & (b == INT32_MIN), INT32_MAX, out)


def rdbpot(x, exponent):
    x = np.asarray(x, dtype=np.int64)
    exponent = np.asarray(exponent, dtype=np.int64)
    mask = (np.int64(1) << exponent) - 1
    remainder = x & mask
    threshold = (mask >> 1) + (x < 0)
    return (x >> exponent) + (remainder > threshold)


def mbqm(x, mult, shift):
    shift = np.asarray(shift, dtype=np.int64)
    left = np.maximum(shift, 0)
    right = np.maximum(-shift, 0)
    return rdbpot(srdhm(np.asarray(x, dtype=np.int64) << left, mult), right)


def _finish(acc, bias, mult, shift, off, lo, hi):
    # the int32 accumulator wraps around past its range, as TFLM's C arithmetic does (kernels_ref.py)
    v = mbqm((acc + bias).astype(np.int32).astype(np.int64), mult, shift) + off
    return np.clip(v, lo, hi).astype(np.int8)


def _band_window(inp, p, oy0, oy1):
    """The input rows that output rows [oy0, oy1) read, plus zero padding (padding contributes 0, as TFLM skips
    those taps): array [b, rows, cols, c] whose row 0 is input row oy0 * S_H - PAD_H. Input rows outside the
    band's receptive field are never read (row bands, KERNELS.md)."""
    b, h, w, c = p[P_BATCHES], p[P_IN_H], p[P_IN_W], p[P_IN_C]
    ph, pw = p[P_PAD_H], p[P_PAD_W]
    eh = (p[P_K_H] - 1) * p[P_DIL_H] + 1
    ew = (p[P_K_W] - 1) * p[P_DIL_W] + 1
    rows = (oy1 - oy0 - 1) * p[P_STRIDE_H] + eh
    cols = max((p[P_OUT_W] - 1) * p[P_STRIDE_W] + ew, w + pw)
    top = oy0 * p[P_STRIDE_H] - ph
    y0, y1 = max(top, 0), min(top + rows, h)
    xp = np.zeros((b, rows, cols, c), dtype=np.int64)
    if y1 > y0:
        x = _i8(inp)[:b * h * w * c].reshape(b, h, w, c)[:, y0:y1].astype(np.int64) + p[P_IN_OFFSET]
        xp[:, y0 - top:y1 - top, pw:pw + w, :] = x
    return xp


def _taps(xp, p, oh):
    """Yield (ky, kx, window[b, oh, out_w, c]) for every filter tap."""
    ow, sh, sw = p[P_OUT_W], p[P_STRIDE_H], p[P_STRIDE_W]
    for ky in range(p[P_K_H]):
        y0 = ky * p[P_DIL_H]
        for kx in range(p[P_K_W]):
            x0 = kx * p[P_DIL_W]
            yield ky, kx, xp[:, y0:y0 + (oh - 1) * sh + 1:sh, x0:x0 + (ow - 1) * sw + 1:sw, :]


def conv2d(out, inp, filt, bias, mult, shift, p, scratch=None):
    oc0, oc1, ic = p[P_OC_BEGIN], p[P_OC_END], p[P_IN_C]
    oy0, oy1 = p[P_OY_BEGIN], p[P_OY_END]
    if oy1 <= oy0:
        return
    kh, kw = p[P_K_H], p[P_K_W]
    w = _i8(filt)[:(oc1 - oc0) * kh * kw * ic].reshape(oc1 - oc0, kh, kw, ic).astype(np.int64)
    xp = _band_window(inp, p, oy0, oy1)
    acc = 0
    for ky, kx, win in _taps(xp, p, oy1 - oy0):
        acc = acc + win @ w[:, ky, kx, :].T
    sl = slice(oc0, oc1)
    res = _finish(acc, _i32(bias)[sl], _i32(mult)[sl], _i32(shift)[sl], p[P_OUT_OFFSET], p[P_ACT_MIN], p[P_ACT_MAX])
    o = _i8(out)[:p[P_BATCHES] * p[P_OUT_H] * p[P_OUT_W] * p[P_OUT_C]]
    o.reshape(p[P_BATCHES], p[P_OUT_H], p[P_OUT_W], p[P_OUT_C])[:, oy0:oy1, :, sl] = res


def depthwise_conv2d(out, inp, filt, bias, mult, shift, p, scratch=None):
    kh, kw, oc, dm = p[P_K_H], p[P_K_W], p[P_OUT_C], p[P_DEPTH_MULT]
    oy0, oy1 = p[P_OY_BEGIN], p[P_OY_END]
    if oy1 <= oy0:
        return
    w = _i8(filt)[:kh * kw * oc].reshape(kh, kw, oc).astype(np.int64)
    xp = _band_window(inp, p, oy0, oy1)
    acc = 0
    for ky, kx, win in _taps(xp, p, oy1 - oy0):
        acc = acc + np.repeat(win, dm, axis=3) * w[ky, kx]
    res = _finish(acc, _i32(bias), _i32(mult), _i32(shift), p[P_OUT_OFFSET], p[P_ACT_MIN], p[P_ACT_MAX])
    o = _i8(out)[:p[P_BATCHES] * p[P_OUT_H] * p[P_OUT_W] * oc]
    o.reshape(p[P_BATCHES], p[P_OUT_H], p[P_OUT_W], oc)[:, oy0:oy1] = res


def fully_connected(out, inp, filt, bias, mult, shift, p, scratch=None):
    b, depth, n_out, oc0, oc1 = p[P_BATCHES], p[P_IN_C], p[P_OUT_C], p[P_OC_BEGIN], p[P_OC_END]
    x = _i8(inp)[:b * depth].reshape(b, depth).astype(np.int64) + p[P_IN_OFFSET]
    w = _i8(filt)[:(oc1 - oc0) * depth].reshape(oc1 - oc0, depth).astype(np.int64) + p[P_FILTER_OFFSET]
    sl = slice(oc0, oc1)
    res = _finish(x @ w.T, _i32(bias)[sl], _i32(mult)[sl], _i32(shift)[sl], p[P_OUT_OFFSET], p[P_ACT_MIN],
                  p[P_ACT_MAX])
    _i8(out)[:b * n_out].reshape(b, n_out)[:, sl] = res


def _pool(out, inp, p, average):
    b, h, w, c = p[P_BATCHES], p[P_IN_H], p[P_IN_W], p[P_IN_C]
    oh, ow, sh, sw, ph, pw = p[P_OUT_H], p[P_OUT_W], p[P_STRIDE_H], p[P_STRIDE_W], p[P_PAD_H], p[P_PAD_W]
    x = _i8(inp)[:b * h * w * c].reshape(b, h, w, c).astype(np.int64)
    res = np.empty((b, oh, ow, c), dtype=np.int64)
    for oy in range(oh):
        y0 = oy * sh - ph
        ya, yb = max(0, y0), min(h, y0 + p[P_K_H])
        for ox in range(ow):
            x0 = ox * sw - pw
            xa, xb = max(0, x0), min(w, x0 + p[P_K_W])
            win = x[:, ya:yb, xa:xb, :]
            if average:
                n = (yb - ya) * (xb - xa)
                s = win.sum(axis=(1, 2))
                res[:, oy, ox, :] = np.where(s > 0, (s + n // 2) // n, -((n // 2 - s) // n)) if n > 0 else 0
            else:
                res[:, oy, ox, :] = win.max(axis=(1, 2)) if win.size else -128
    _i8(out)[:res.size] = np.clip(res, p[P_ACT_MIN], p[P_ACT_MAX]).astype(np.int8).reshape(-1)


def avg_pool2d(out, inp, p):
    _pool(out, inp, p, True)


def max_pool2d(out, inp, p):
    _pool(out, inp, p, False)


def add(out, in1, in2, p, scratch=None):
    n = p[0]
    a = mbqm((_i8(in1)[:n].astype(np.int64) + p[1]) << p[10], p[3], p[4])
    b = mbqm((_i8(in2)[:n].astype(np.int64) + p[2]) << p[10], p[5], p[6])
    v = mbqm(a + b, p[7], p[8]) + p[9]
    _i8(out)[:n] = np.clip(v, p[11], p[12]).astype(np.int8)


def requantize(out, inp, p, scratch=None):
    n = p[0]
    v = mbqm(_i8(inp)[:n].astype(np.int64) + p[1], p[2], p[3]) + p[4]
    _i8(out)[:n] = np.clip(v, -128, 127).astype(np.int8)


def copy(out, inp, n):
    _i8(out)[:n] = _i8(inp)[:n]
