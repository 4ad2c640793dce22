# Layout of the int32 parameter arrays (array('i')) passed to the kernels; see KERNELS.md.
# Every backend (kernels_ref, kernels_viper) reads the same slots. Numbers are fixed: kernels may hard-code them.
try:
    from micropython import const
except ImportError:          # CPython (host tools)
    def const(x):
        return x

# Convolution, depthwise convolution, fully connected, pooling: one array of P_LEN ints.
P_BATCHES = const(0)
P_IN_H = const(1)
P_IN_W = const(2)
P_IN_C = const(3)        # input channels; for FULLY_CONNECTED the accumulation depth
P_OUT_H = const(4)
P_OUT_W = const(5)
P_OUT_C = const(6)       # output channels; for FULLY_CONNECTED the number of outputs per batch
P_K_H = const(7)
P_K_W = const(8)
P_STRIDE_H = const(9)
P_STRIDE_W = const(10)
P_DIL_H = const(11)
P_DIL_W = const(12)
P_PAD_H = const(13)
P_PAD_W = const(14)
P_IN_OFFSET = const(15)  # -input zero point
P_OUT_OFFSET = const(16)  # output zero point
P_ACT_MIN = const(17)
P_ACT_MAX = const(18)
P_DEPTH_MULT = const(19)
P_OC_BEGIN = const(20)   # conv2d / fully_connected compute output channels [P_OC_BEGIN, P_OC_END) only;
P_OC_END = const(21)     # `filt` then holds just those channels' weights (streamed from flash in blocks)
P_FILTER_OFFSET = const(22)  # -filter zero point (fully_connected only; 0 elsewhere)
P_OY_BEGIN = const(23)  # conv2d / depthwise_conv2d compute output rows [P_OY_BEGIN, P_OY_END) only, reading
P_OY_END = const(24)    # only the input rows those rows need (row bands: the input may be overwritten below)
P_LEN = const(25)

# ADD (elementwise, same shapes)
A_SIZE = const(0)
A_IN1_OFFSET = const(1)
A_IN2_OFFSET = const(2)
A_IN1_MULT = const(3)
A_IN1_SHIFT = const(4)
A_IN2_MULT = const(5)
A_IN2_SHIFT = const(6)
A_OUT_MULT = const(7)
A_OUT_SHIFT = const(8)
A_OUT_OFFSET = const(9)
A_LEFT_SHIFT = const(10)
A_ACT_MIN = const(11)
A_ACT_MAX = const(12)
A_LEN = const(13)

# SOFTMAX (int8 -> int8)
S_OUTER = const(0)
S_DEPTH = const(1)
S_LEN = const(2)

# QUANTIZE int8 -> int8 (requantize)
Q_SIZE = const(0)
Q_IN_OFFSET = const(1)   # -input zero point
Q_MULT = const(2)
Q_SHIFT = const(3)
Q_OUT_OFFSET = const(4)
Q_LEN = const(5)
