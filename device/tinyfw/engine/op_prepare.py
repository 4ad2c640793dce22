# Load-time preparation of each operator (TFLM's Prepare): check types and shapes, compute output sizes and
# padding, the integer multipliers/shifts and activation clamps, and pack the kernel parameter array.
# Nothing here runs during invoke; nothing here needs the tensor arena (the host's `model inspect` uses it too).

from array import array

from . import quant
try:
    from micropython import const
except ImportError:          # CPython (host tools)
    def const(x):
        return x
from .params import (P_BATCHES, P_IN_H, P_IN_W, P_IN_C, P_OUT_H, P_OUT_W, P_OUT_C, P_K_H, P_K_W, P_STRIDE_H,
                     P_STRIDE_W, P_DIL_H, P_DIL_W, P_PAD_H, P_PAD_W, P_IN_OFFSET, P_OUT_OFFSET, P_ACT_MIN,
                     P_ACT_MAX, P_DEPTH_MULT, P_OC_BEGIN, P_OC_END, P_FILTER_OFFSET, P_LEN, P_OY_BEGIN, P_OY_END,
                     A_SIZE, A_IN1_OFFSET, A_IN2_OFFSET, A_IN1_MULT, A_IN1_SHIFT, A_IN2_MULT, A_IN2_SHIFT,
                     A_OUT_MULT, A_OUT_SHIFT, A_OUT_OFFSET, A_LEFT_SHIFT, A_ACT_MIN, A_ACT_MAX, A_LEN,
                     S_OUTER, S_DEPTH, S_LEN, Q_SIZE, Q_IN_OFFSET, Q_MULT, Q_SHIFT, Q_OUT_OFFSET, Q_LEN)
from .reader import ModelError, ACTIVATIONS, PADDINGS, T_INT8, T_INT32, T_FLOAT32

# Operator kinds: one numbering for the prepared operator (OpSpec.kind), its record in a plan file and its step in
# Model.invoke. Private (`_K_CONV = const(1)` is compiled away: no global, no qstr on the board): the modules that
# need them keep copies, tied to these by tests/test_device_constants.py.
_K_CONV = const(1)       # CONV_2D
_K_DW = const(2)         # DEPTHWISE_CONV_2D
_K_FC = const(3)         # FULLY_CONNECTED; kinds up to _K_FC are convolution-like (weights, per-channel data)
_K_AVG = const(4)        # AVERAGE_POOL_2D
_K_MAX = const(5)        # MAX_POOL_2D
_K_ADD = const(6)
_K_SOFTMAX = const(7)
_K_RESHAPE = const(8)
_K_REQUANT = const(9)    # QUANTIZE int8 -> int8
_K_QUANT_F = const(10)   # QUANTIZE float32 -> int8
_K_DEQUANT = const(11)   # DEQUANTIZE int8 -> float32


class OpSpec:
    """Everything the engine needs to run one operator, computed at load."""

    def __init__(self, op, kind):
        self.op = op
        self.kind = kind
        self.ins = ()            # activation tensor indices read
        self.out = -1            # output tensor index
        self.weights = None      # filter Tensor (constant) or None
        self.bias = None         # bias Tensor or None
        self.row_bytes = 0       # weight bytes per output channel (conv/fc: streamable in channel blocks)
        self.channels = 0        # output channels
        self.p = None            # array('i') kernel parameters
        self.mult = None
        self.shift = None
        self.exp_q31 = None
        self.exp_q12 = None
        self.macs = 0
        self.info = {}           # human-readable parameters (model inspect)


def _exact(bits):
    _, m, e = quant.f32_parts(bits)
    return m, e


def _act_range(md, t, activation, what):
    zp = t.zero_point
    s = _exact(t.scale_bits)
    lo, hi = -128, 127
    if activation == 1:      # RELU
        lo = max(lo, quant.quantize_f32(0, s, zp))
    elif activation == 3:    # RELU6
        lo = max(lo, quant.quantize_f32(0, s, zp))
        hi = min(hi, quant.quantize_f32(6, s, zp))
    elif activation == 2:    # RELU_N1_TO_1
        lo = max(lo, quant.quantize_f32(-1, s, zp))
        hi = min(hi, quant.quantize_f32(1, s, zp))
    if lo > hi or lo < quant.INT32_MIN or hi > quant.INT32_MAX:
        raise ModelError("invalid model: %s output scale gives an unusable activation range" % what)
    return lo, hi


def _tensor(md, idx, what, role):
    if idx < 0:
        raise ModelError("invalid model: %s lacks its %s tensor" % (what, role))
    return md.tensors[idx]


def _need_type(t, code, what, role):
    if t.type != code:
        names = {T_INT8: "int8", T_INT32: "int32", T_FLOAT32: "float32"}
        hint = ""
        if t.type == T_FLOAT32 and code == T_INT8:
            hint = " (this engine runs int8-quantised models: convert with full-integer quantisation)"
        raise ModelError("unsupported model: %s %s %s is %s, expected %s%s"
                         % (what, role, t.describe(), t.dtype, names.get(code, code), hint))


def _need_rank(t, rank, what, role):
    if len(t.shape) != rank:
        raise ModelError("invalid model: %s %s %s has shape %s, expected rank %d"
                         % (what, role, t.describe(), t.shape, rank))


def _out_size(padding, size, k, stride, dil):
    eff = (k - 1) * dil + 1
    if padding == 0:          # SAME
        return (size + stride - 1) // stride
    return (size + stride - eff) // stride


def _pad(stride, dil, size, k, out):
    eff = (k - 1) * dil + 1
    total = (out - 1) * stride + eff - size
    return total // 2 if total > 0 else 0


def _geometry(o, in_h, in_w, k_h, k_w, what):
    s_h, s_w = o.get("stride_h", 0), o.get("stride_w", 0)
    d_h, d_w = o.get("dilation_h", 1), o.get("dilation_w", 1)
    if s_h < 1 or s_w < 1 or d_h < 1 or d_w < 1 or k_h < 1 or k_w < 1:
        raise ModelError("invalid model: %s has stride %dx%d, dilation %dx%d, window %dx%d (all must be >= 1)"
                         % (what, s_h, s_w, d_h, d_w, k_h, k_w))
    out_h = _out_size(o["padding"], in_h, k_h, s_h, d_h)
    out_w = _out_size(o["padding"], in_w, k_w, s_w, d_w)
    if out_h < 1 or out_w < 1:
        raise ModelError("invalid model: %s window %dx%d does not fit its %dx%d input" % (what, k_h, k_w, in_h, in_w))
    return s_h, s_w, d_h, d_w, out_h, out_w, _pad(s_h, d_h, in_h, k_h, out_h), _pad(s_w, d_w, in_w, k_w, out_w)


def _check_out_shape(t, expected, what):
    if tuple(t.shape) != tuple(expected):
        raise ModelError("invalid model: %s output %s has shape %s, the operator produces %s"
                         % (what, t.describe(), t.shape, tuple(expected)))


def _channel_multipliers(md, inp, filt, out, n):
    """Per-output-channel (mult, shift) arrays like TFLM's PopulateConvolutionQuantizationParams:
    QuantizeMultiplier(double(s_in) * double(s_filter) / double(s_out)). TFLM's FULLY_CONNECTED uses the same
    double product (a float32 product, as in TFLite's GetQuantizedConvolutionMultipler, differs on ad01_int8)."""
    mult = array("i", [0] * n)
    shift = array("i", [0] * n)
    s_in = _exact(inp.scale_bits)
    s_out = _exact(out.scale_bits)
    scales = md.scales(filt) if filt.nq > 1 else [filt.scale_bits]
    if len(scales) not in (1, n):
        raise ModelError("invalid model: %s has %d scales for %d output channels" % (filt.describe(), len(scales), n))
    last = None
    for c in range(n):
        bits = scales[c] if len(scales) > 1 else scales[0]
        if bits != last:
            prod = quant.mul(s_in, _exact(bits))
            q, sh = quant.quantize_multiplier(quant.div_round(prod, s_out))
            last = bits
        mult[c] = q
        shift[c] = sh
    return mult, shift


def _conv_like(md, op, kind):
    what = op.describe()
    o = op.options
    ins = op.inputs
    if len(ins) < 2 or len(op.outputs) != 1:
        raise ModelError("invalid model: %s needs input, filter (and bias) and one output" % what)
    inp = _tensor(md, ins[0], what, "input")
    filt = _tensor(md, ins[1], what, "filter")
    bias = md.tensors[ins[2]] if len(ins) > 2 and ins[2] >= 0 else None
    out = _tensor(md, op.outputs[0], what, "output")
    for t, role in ((inp, "input"), (filt, "filter"), (out, "output")):
        _need_type(t, T_INT8, what, role)
    if not filt.is_const:
        raise ModelError("unsupported model: %s filter %s is not a constant" % (what, filt.describe()))
    if bias is not None:
        _need_type(bias, T_INT32, what, "bias")
        if not bias.is_const:
            raise ModelError("unsupported model: %s bias %s is not a constant" % (what, bias.describe()))
    spec = OpSpec(op, kind)
    spec.ins = (inp.index,)
    spec.out = out.index
    spec.weights = filt
    spec.bias = bias
    p = array("i", [0] * P_LEN)
    p[P_IN_OFFSET] = -inp.zero_point
    p[P_OUT_OFFSET] = out.zero_point
    p[P_ACT_MIN], p[P_ACT_MAX] = _act_range(md, out, o.get("activation", 0), what)
    act = ACTIVATIONS[o.get("activation", 0)]

    if kind == _K_FC:
        _need_rank(filt, 2, what, "filter")
        n_out, depth = filt.shape
        if inp.elements % depth:
            raise ModelError("invalid model: %s input %s has %d elements, not a multiple of the filter depth %d"
                             % (what, inp.describe(), inp.elements, depth))
        batches = inp.elements // depth
        if out.elements != batches * n_out:
            raise ModelError("invalid model: %s output %s has %d elements, expected %d"
                             % (what, out.describe(), out.elements, batches * n_out))
        if o.get("weights_format", 0):
            raise ModelError("unsupported model: %s uses shuffled weights" % what)
        per_channel = filt.nq > 1
        spec.mult, spec.shift = _channel_multipliers(md, inp, filt, out, n_out)
        p[P_BATCHES] = batches
        p[P_IN_C] = depth
        p[P_OUT_C] = n_out
        p[P_FILTER_OFFSET] = 0 if per_channel else -filt.zero_point
        spec.row_bytes = depth
        spec.channels = n_out
        spec.macs = batches * n_out * depth
        spec.info = {"activation": act, "units": n_out, "depth": depth, "batches": batches,
                     "per_channel": per_channel}
    else:
        _need_rank(inp, 4, what, "input")
        _need_rank(filt, 4, what, "filter")
        _need_rank(out, 4, what, "output")
        batches, in_h, in_w, in_c = inp.shape
        if kind == _K_CONV:
            oc, k_h, k_w, f_c = filt.shape
            if f_c != in_c:
                raise ModelError("unsupported model: %s filter depth %d differs from input depth %d (grouped "
                                 "convolution)" % (what, f_c, in_c))
            dm = 1
        else:
            one, k_h, k_w, oc = filt.shape
            if one != 1 or oc % in_c:
                raise ModelError("invalid model: %s filter shape %s does not fit input depth %d"
                                 % (what, filt.shape, in_c))
            dm = oc // in_c
            if o.get("depth_multiplier", 0) not in (0, dm):
                raise ModelError("invalid model: %s depth_multiplier %d but the filter gives %d"
                                 % (what, o["depth_multiplier"], dm))
        s_h, s_w, d_h, d_w, out_h, out_w, pad_h, pad_w = _geometry(o, in_h, in_w, k_h, k_w, what)
        _check_out_shape(out, (batches, out_h, out_w, oc), what)
        if filt.nq > 1 and filt.qdim != (0 if kind == _K_CONV else 3):
            raise ModelError("unsupported model: %s filter is quantised along dimension %d" % (what, filt.qdim))
        spec.mult, spec.shift = _channel_multipliers(md, inp, filt, out, oc)
        for slot, v in ((P_BATCHES, batches), (P_IN_H, in_h), (P_IN_W, in_w), (P_IN_C, in_c), (P_OUT_H, out_h),
                        (P_OUT_W, out_w), (P_OUT_C, oc), (P_K_H, k_h), (P_K_W, k_w), (P_STRIDE_H, s_h),
                        (P_STRIDE_W, s_w), (P_DIL_H, d_h), (P_DIL_W, d_w), (P_PAD_H, pad_h), (P_PAD_W, pad_w),
                        (P_DEPTH_MULT, dm)):
            p[slot] = v
        spec.row_bytes = k_h * k_w * in_c if kind == _K_CONV else 0
        spec.channels = oc
        spec.macs = batches * out_h * out_w * oc * k_h * k_w * (in_c if kind == _K_CONV else 1)
        spec.info = {"activation": act, "padding": PADDINGS[o["padding"]], "stride": (s_h, s_w),
                     "dilation": (d_h, d_w), "kernel": (k_h, k_w), "filters": oc,
                     "per_channel": filt.nq > 1}
        if kind == _K_DW:
            spec.info["depth_multiplier"] = dm
    if bias is not None and bias.elements != spec.channels:
        raise ModelError("invalid model: %s bias has %d values for %d output channels"
                         % (what, bias.elements, spec.channels))
    p[P_OC_BEGIN] = 0
    p[P_OC_END] = spec.channels
    if kind != _K_FC:
        p[P_OY_BEGIN] = 0
        p[P_OY_END] = p[P_OUT_H]
    spec.p = p
    return spec


def _pool(md, op, kind):
    what = op.describe()
    o = op.options
    inp = _tensor(md, op.inputs[0] if op.inputs else -1, what, "input")
    out = _tensor(md, op.outputs[0] if op.outputs else -1, what, "output")
    _need_type(inp, T_INT8, what, "input")
    _need_type(out, T_INT8, what, "output")
    _need_rank(inp, 4, what, "input")
    batches, in_h, in_w, ch = inp.shape
    k_h, k_w = o.get("filter_h", 0), o.get("filter_w", 0)
    s_h, s_w, _, _, out_h, out_w, pad_h, pad_w = _geometry(o, in_h, in_w, k_h, k_w, what)
    _check_out_shape(out, (batches, out_h, out_w, ch), what)
    spec = OpSpec(op, kind)
    spec.ins = (inp.index,)
    spec.out = out.index
    p = array("i", [0] * P_LEN)
    for slot, v in ((P_BATCHES, batches), (P_IN_H, in_h), (P_IN_W, in_w), (P_IN_C, ch), (P_OUT_H, out_h),
                    (P_OUT_W, out_w), (P_OUT_C, ch), (P_K_H, k_h), (P_K_W, k_w), (P_STRIDE_H, s_h),
                    (P_STRIDE_W, s_w), (P_DIL_H, 1), (P_DIL_W, 1), (P_PAD_H, pad_h), (P_PAD_W, pad_w)):
        p[slot] = v
    p[P_ACT_MIN], p[P_ACT_MAX] = _act_range(md, out, o.get("activation", 0), what)
    spec.p = p
    spec.macs = batches * out_h * out_w * ch * k_h * k_w
    spec.info = {"activation": ACTIVATIONS[o.get("activation", 0)], "padding": PADDINGS[o["padding"]],
                 "stride": (s_h, s_w), "window": (k_h, k_w)}
    return spec


def _add(md, op):
    what = op.describe()
    if len(op.inputs) != 2 or len(op.outputs) != 1:
        raise ModelError("invalid model: %s needs two inputs and one output" % what)
    a = _tensor(md, op.inputs[0], what, "first input")
    b = _tensor(md, op.inputs[1], what, "second input")
    out = _tensor(md, op.outputs[0], what, "output")
    for t, role in ((a, "first input"), (b, "second input"), (out, "output")):
        _need_type(t, T_INT8, what, role)
    if tuple(a.shape) != tuple(b.shape) or a.elements != out.elements:
        raise ModelError("unsupported model: %s adds shapes %s and %s into %s (broadcasting is not supported)"
                         % (what, a.shape, b.shape, out.shape))
    if a.is_const or b.is_const:
        raise ModelError("unsupported model: %s adds a constant tensor" % what)
    s1, s2, so = _exact(a.scale_bits), _exact(b.scale_bits), _exact(out.scale_bits)
    left_shift = 20
    # twice_max_input_scale = 2 * max(s1, s2), exactly
    bigger = s1 if s1[0] * (1 << max(s1[1] - s2[1], 0)) >= s2[0] * (1 << max(s2[1] - s1[1], 0)) else s2
    twice_max = (bigger[0], bigger[1] + 1)
    m1, sh1 = quant.quantize_multiplier(quant.div_round(s1, twice_max))
    m2, sh2 = quant.quantize_multiplier(quant.div_round(s2, twice_max))
    mo, sho = quant.quantize_multiplier(quant.div_round(twice_max, (so[0], so[1] + left_shift)))
    p = array("i", [0] * A_LEN)
    for slot, v in ((A_SIZE, out.elements), (A_IN1_OFFSET, -a.zero_point), (A_IN2_OFFSET, -b.zero_point),
                    (A_IN1_MULT, m1), (A_IN1_SHIFT, sh1), (A_IN2_MULT, m2), (A_IN2_SHIFT, sh2), (A_OUT_MULT, mo),
                    (A_OUT_SHIFT, sho), (A_OUT_OFFSET, out.zero_point), (A_LEFT_SHIFT, left_shift)):
        p[slot] = v
    p[A_ACT_MIN], p[A_ACT_MAX] = _act_range(md, out, op.options.get("activation", 0), what)
    spec = OpSpec(op, _K_ADD)
    spec.ins = (a.index, b.index)
    spec.out = out.index
    spec.p = p
    spec.info = {"activation": ACTIVATIONS[op.options.get("activation", 0)]}
    return spec


def softmax_tables(beta_bits, scale_bits):
    """TFLM softmax Prepare for int8: the exp tables indexed by max - x (see kernels_ref.softmax)."""
    try:
        b_sign, bm, be = quant.f32_parts(beta_bits)
    except ValueError:
        raise ModelError("invalid model: SOFTMAX beta is not a finite number")
    if b_sign or bm == 0:
        raise ModelError("invalid model: SOFTMAX beta must be positive")
    s = _exact(scale_bits)
    real = (bm * s[0], be + s[1] + 26)               # beta * input_scale * 2**(31 - 5), exact
    cap = (1 << 31) - 1
    if real[0] * (1 << max(real[1], 0)) >= cap * (1 << max(-real[1], 0)):
        real = (cap, 0)
    multiplier, left_shift = quant.quantize_multiplier(real)
    if left_shift < 0:
        raise ModelError("unsupported model: SOFTMAX beta * input scale is too small for TFLM's int8 softmax")
    # CalculateInputRadius(5, left_shift): floor(31 * 2**26 / 2**left_shift)
    diff_min = -((31 << 26) >> left_shift)
    exp_q31 = array("i", [0] * 256)
    exp_q12 = array("i", [0] * 256)
    for d in range(256):
        diff = -d
        if diff < diff_min:
            continue
        rescaled = quant.srdhm(diff * (1 << left_shift), multiplier)
        e = quant.exp_on_negative_values_q5_26(rescaled)
        exp_q31[d] = e
        exp_q12[d] = quant.rdbpot(e, 12)
    return exp_q31, exp_q12


def _softmax(md, op):
    what = op.describe()
    inp = _tensor(md, op.inputs[0] if op.inputs else -1, what, "input")
    out = _tensor(md, op.outputs[0] if op.outputs else -1, what, "output")
    _need_type(inp, T_INT8, what, "input")
    _need_type(out, T_INT8, what, "output")
    if inp.elements != out.elements or not inp.shape:
        raise ModelError("invalid model: %s input %s and output %s differ" % (what, inp.shape, out.shape))
    # TFLM requires the int8 output to be scale 1/256, zero point -128.
    if out.zero_point != -128 or out.scale_bits != 0x3B800000:
        raise ModelError("unsupported model: %s output must have scale 1/256 and zero point -128 (has %r, %d)"
                         % (what, out.scale, out.zero_point))
    spec = OpSpec(op, _K_SOFTMAX)
    spec.ins = (inp.index,)
    spec.out = out.index
    depth = inp.shape[-1]
    if depth >= 4096:        # a row's sum of Q19 exponentials must fit int32 (TFLM's int32 sum overflows too)
        raise ModelError("unsupported model: %s over %d values a row; at most 4095 (the sum of exponentials "
                         "overflows int32 beyond, in TFLM too)" % (what, depth))
    p = array("i", [0] * S_LEN)
    p[S_OUTER] = inp.elements // depth
    p[S_DEPTH] = depth
    spec.p = p
    spec.exp_q31, spec.exp_q12 = softmax_tables(op.options.get("beta_bits", 0x3F800000) or 0, inp.scale_bits)
    spec.info = {"beta": quant.f32_to_float(op.options.get("beta_bits", 0))}
    return spec


def _reshape(md, op):
    what = op.describe()
    inp = _tensor(md, op.inputs[0] if op.inputs else -1, what, "input")
    out = _tensor(md, op.outputs[0] if op.outputs else -1, what, "output")
    if inp.type != out.type or inp.elements != out.elements:
        raise ModelError("invalid model: %s turns %s %s into %s %s" % (what, inp.dtype, inp.shape, out.dtype, out.shape))
    if inp.type != T_INT8:
        _need_type(inp, T_INT8, what, "input")
    spec = OpSpec(op, _K_RESHAPE)
    spec.ins = (inp.index,)
    spec.out = out.index
    spec.info = {"shape": tuple(out.shape)}
    return spec


def _quantize(md, op, kind):
    what = op.describe()
    inp = _tensor(md, op.inputs[0] if op.inputs else -1, what, "input")
    out = _tensor(md, op.outputs[0] if op.outputs else -1, what, "output")
    if inp.elements != out.elements:
        raise ModelError("invalid model: %s changes the element count" % what)
    spec = OpSpec(op, kind)
    spec.ins = (inp.index,)
    spec.out = out.index
    if kind == _K_DEQUANT:
        _need_type(inp, T_INT8, what, "input")
        _need_type(out, T_FLOAT32, what, "output")
        return spec
    _need_type(out, T_INT8, what, "output")
    if inp.type == T_FLOAT32:
        spec.kind = _K_QUANT_F
        return spec
    _need_type(inp, T_INT8, what, "input")
    q, sh = quant.quantize_multiplier(quant.div_round(_exact(inp.scale_bits), _exact(out.scale_bits)))
    p = array("i", [0] * Q_LEN)
    p[Q_SIZE] = out.elements
    p[Q_IN_OFFSET] = -inp.zero_point
    p[Q_MULT] = q
    p[Q_SHIFT] = sh
    p[Q_OUT_OFFSET] = out.zero_point
    spec.p = p
    return spec


def prepare_op(md, op):
    """OpSpec of one operator of the parsed model. Raises ModelError."""
    c = op.code
    if c == 3:
        s = _conv_like(md, op, _K_CONV)
    elif c == 4:
        s = _conv_like(md, op, _K_DW)
    elif c == 9:
        s = _conv_like(md, op, _K_FC)
    elif c == 1:
        s = _pool(md, op, _K_AVG)
    elif c == 17:
        s = _pool(md, op, _K_MAX)
    elif c == 0:
        s = _add(md, op)
    elif c == 25:
        s = _softmax(md, op)
    elif c == 22:
        s = _reshape(md, op)
    elif c == 114:
        s = _quantize(md, op, _K_REQUANT)
    elif c == 6:
        s = _quantize(md, op, _K_DEQUANT)
    else:
        raise ModelError("unsupported model: %s" % op.describe())
    for i in s.ins:
        if md.tensors[i].is_const:
            raise ModelError("unsupported model: %s reads constant %s as an activation"
                             % (op.describe(), md.tensors[i].describe()))
    if md.tensors[s.out].is_const:
        raise ModelError("invalid model: %s writes into constant %s" % (op.describe(), md.tensors[s.out].describe()))
    return s


def prepare(md):
    """OpSpec for every operator of the parsed model, in execution order. Raises ModelError."""
    return [prepare_op(md, op) for op in md.ops]
