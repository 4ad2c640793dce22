# DEPTHWISE_CONV_2D in viper for kernels_viper.depthwise_conv2d (rules: see kernels_viper.py).
#
# dw_planes: per batch and input channel, the part of the input plane the band's windows cover (its rows only) is
# copied into the scratch buffer offset by 128 (x ^ 128), with padding cells set to the input zero point (they then
# contribute 0, as TFLM skips them); every output is then a full window:
#   acc = sum(xu * ws) + base,  base = bias + (io - 128) * sum(ws),  xu = x + 128, ws = the signed weight.
#   For windows of K_H x 1 (time convolutions of streaming audio models: kernels (k, 1) over a 1-wide input)
#   the plane is stored column by column, so that each window is K_H consecutive bytes, with the channel's
#   weights as int32 words: four taps per step, no sign handling per tap (~2.5x the general plane's speed there).
# dw_direct: no scratch, any size (used when the band's plane does not fit the scratch buffer).
# Both compute output rows [P_OY_BEGIN, P_OY_END) only and read only the input rows their windows cover (row
# bands, KERNELS.md): the engine may place the output over the input rows that no later band reads.
import micropython

_P_BATCHES = const(0)
_P_IN_H = const(1)
_P_IN_W = const(2)
_P_IN_C = const(3)
_P_OUT_H = const(4)
_P_OUT_W = const(5)
_P_OUT_C = const(6)
_P_K_H = const(7)
_P_K_W = const(8)
_P_STRIDE_H = const(9)
_P_STRIDE_W = const(10)
_P_DIL_H = const(11)
_P_DIL_W = const(12)
_P_PAD_H = const(13)
_P_PAD_W = const(14)
_P_IN_OFFSET = const(15)
_P_OUT_OFFSET = const(16)
_P_ACT_MIN = const(17)
_P_ACT_MAX = const(18)
_P_DEPTH_MULT = const(19)
_P_OY_BEGIN = const(23)
_P_OY_END = const(24)


@micropython.viper
def dw_planes(pa: int, acc: int, pb: int, out: ptr8, inp: ptr8, filt: ptr8, bias: ptr32, mult: ptr32,
              shift: ptr32, p: ptr32, scr: ptr8, scr_bytes: int) -> int:
    """Returns 0 (nothing written) when the padded input plane (the column path's: + its weights as words) does
    not fit scr_bytes."""
    WS = 0
    if (int(1) << 31) > 0:
        WS = 32
    in_h = p[_P_IN_H]
    in_w = p[_P_IN_W]
    in_c = p[_P_IN_C]
    out_h = p[_P_OUT_H]
    out_w = p[_P_OUT_W]
    out_c = p[_P_OUT_C]
    k_h = p[_P_K_H]
    k_w = p[_P_K_W]
    s_h = p[_P_STRIDE_H]
    s_w = p[_P_STRIDE_W]
    d_h = p[_P_DIL_H]
    d_w = p[_P_DIL_W]
    pad_h = (p[_P_PAD_H] << WS) >> WS
    pad_w = (p[_P_PAD_W] << WS) >> WS
    io = (p[_P_IN_OFFSET] << WS) >> WS
    out_off = (p[_P_OUT_OFFSET] << WS) >> WS
    act_min = (p[_P_ACT_MIN] << WS) >> WS
    act_max = (p[_P_ACT_MAX] << WS) >> WS
    dm = p[_P_DEPTH_MULT]
    oy0 = p[_P_OY_BEGIN]
    oy1 = p[_P_OY_END]
    if oy1 <= oy0:
        return 1
    rows = (oy1 - oy0 - 1) * s_h + (k_h - 1) * d_h + 1   # the band's window rows (plane rows)
    cols = (out_w - 1) * s_w + (k_w - 1) * d_w + 1
    # Windows of K_H x 1 (K_W 1, D_H 1): the plane column by column, so that each window is K_H consecutive
    # bytes, and the channel's weights as int32 words after it (zero-padded to a multiple of 4):
    # acc = sum(xu * ws) + base, four taps per step, no sign handling per tap. On a 64-bit port ptr32
    # zero-extends negative weights: that adds multiples of 2**32 only, which the int32 wrap removes.
    col_bytes = (rows * cols + 6) & -4          # + 3 readable bytes past the last window (times a zero weight)
    k4 = (k_h + 3) & -4
    if k_w == 1 and d_h == 1 and col_bytes + 4 * k4 <= scr_bytes:
        iy_top = oy0 * s_h - pad_h                  # input row of plane row 0
        r0 = 0 - iy_top                             # plane rows [r0, r1) are input rows, the others padding
        if r0 < 0:
            r0 = 0
        r1 = in_h - iy_top
        if r1 > rows:
            r1 = rows
        if r1 < r0:
            r1 = r0
        c = io - 128
        xpad = 128 - io
        plane = int(scr)
        wbuf = plane + col_bytes
        wend = wbuf + 4 * k4
        x_addr = int(inp)
        o_addr = int(out)
        w_addr = int(filt)
        x_step = in_w * in_c                        # input bytes from one row to the next
        col_step = s_w * rows                       # plane bytes from one output column's windows to the next
        pb = plane + rows * cols
        while pb < wbuf:                            # the bytes read past the last window: defined, times weight 0
            ptr8(pb)[0] = 0
            pb += 1
        pb = wbuf + 4 * k_h
        while pb < wend:
            ptr32(pb)[0] = 0
            pb += 4
        for bt in range(p[_P_BATCHES]):
            for ic in range(in_c):
                for cx in range(cols):
                    ix = cx - pad_w
                    pb = plane + cx * rows
                    e = pb + rows
                    if ix < 0 or ix >= in_w:
                        while pb < e:
                            ptr8(pb)[0] = xpad
                            pb += 1
                    else:
                        e1 = pb + r0
                        while pb < e1:
                            ptr8(pb)[0] = xpad
                            pb += 1
                        pa = x_addr + ((bt * in_h + iy_top + r0) * in_w + ix) * in_c + ic
                        e1 = plane + cx * rows + r1
                        while pb < e1:
                            ptr8(pb)[0] = ptr8(pa)[0] ^ 128
                            pa += x_step
                            pb += 1
                        while pb < e:
                            ptr8(pb)[0] = xpad
                            pb += 1
                for mm in range(dm):
                    oc = ic * dm + mm
                    pa = w_addr + oc
                    pb = wbuf
                    e = wbuf + 4 * k_h
                    acc = 0
                    while pb < e:
                        v = (ptr8(pa)[0] ^ 128) - 128
                        ptr32(pb)[0] = v
                        acc += v
                        pa += out_c
                        pb += 4
                    base = bias[oc] + c * acc
                    m = mult[oc]
                    b0 = m & 0xFFFF
                    b1 = m >> 16
                    sh = (shift[oc] << WS) >> WS
                    k = 0
                    if sh < 0:
                        k = 0 - sh
                    mask = ~(-1 << k)
                    half = 0
                    if k > 0:
                        half = 1 << (k - 1)
                    for oy in range(oy0, oy1):
                        row = plane + (oy - oy0) * s_h
                        ob = o_addr + ((bt * out_h + oy) * out_w) * out_c + oc
                        for ox in range(out_w):
                            pa = row + ox * col_step
                            pb = wbuf
                            acc = base
                            while pb < wend:
                                acc += (ptr8(pa)[0] * ptr32(pb)[0] + ptr8(pa)[1] * ptr32(pb)[1]
                                        + ptr8(pa)[2] * ptr32(pb)[2] + ptr8(pa)[3] * ptr32(pb)[3])
                                pa += 4
                                pb += 16
                            acc = (acc << WS) >> WS
                            # ---- requantise: kernels_viper.requant, inlined ----
                            if sh > 0:
                                t = (acc >> (31 - sh)) & 1
                                acc = (acc & ~(-1 << (31 - sh))) << sh
                                if t:
                                    acc += int(-1) << 31
                            a1 = acc >> 16
                            a0 = acc & 0xFFFF
                            t = (a0 >> 8) * b0
                            L = (a0 & 0xFF) * b0 + ((t & 0xFF) << 8)
                            u = a1 * b0
                            v = a0 * b1
                            s = (u & 0xFFFF) + (v & 0xFFFF) + (t >> 8) + (L >> 16) + 0x4000
                            r = a1 * b1 + (u >> 16) + (v >> 16)
                            r = r + (r + (s >> 15))
                            if k:
                                if k < 31:
                                    r = (r >> k) + (((r & mask) + half + (r >> 31)) >> k)
                                elif r >= int(1) << 30:
                                    r = 1
                                elif r <= int(-1) << 30:
                                    r = -1
                                else:
                                    r = 0
                            r += out_off
                            if r < act_min:
                                r = act_min
                            elif r > act_max:
                                r = act_max
                            ptr8(ob)[0] = r
                            ob += out_c
        return 1
    if rows * cols > scr_bytes:
        return 0
    iy_top = oy0 * s_h - pad_h                  # input row of plane row 0
    n_left = pad_w                              # plane columns: n_left padding cells, then n_valid input cells
    if n_left > cols:                           # from input column ix_first on, then padding to cols
        n_left = cols
    if n_left < 0:
        n_left = 0
    ix_first = n_left - pad_w
    n_valid = in_w - ix_first
    if n_valid > cols - n_left:
        n_valid = cols - n_left
    if n_valid < 0:
        n_valid = 0
    c = io - 128
    xpad = 128 - io
    k9 = k_h == 3 and k_w == 3 and d_w == 1
    rstep = d_h * cols                          # plane offset between window rows
    plane = int(scr)
    x_addr = int(inp)
    o_addr = int(out)
    w_addr = int(filt)
    w0 = 0
    w1 = 0
    w2 = 0
    w3 = 0
    w4 = 0
    w5 = 0
    w6 = 0
    w7 = 0
    w8 = 0
    for bt in range(p[_P_BATCHES]):
        for ic in range(in_c):
            # the covered input plane of channel ic, offset, padding cells = zero point
            pb = plane
            for r in range(rows):
                iy = iy_top + r
                e = pb + cols
                if iy < 0 or iy >= in_h:
                    while pb < e:
                        ptr8(pb)[0] = xpad
                        pb += 1
                else:                           # left padding, the row's input cells, right padding
                    pa = x_addr + ((bt * in_h + iy) * in_w + ix_first) * in_c + ic
                    e1 = pb + n_left
                    while pb < e1:
                        ptr8(pb)[0] = xpad
                        pb += 1
                    e1 = pb + n_valid
                    while pb < e1:
                        ptr8(pb)[0] = ptr8(pa)[0] ^ 128
                        pa += in_c
                        pb += 1
                    while pb < e:
                        ptr8(pb)[0] = xpad
                        pb += 1
            for mm in range(dm):
                oc = ic * dm + mm
                pb = w_addr + oc
                e = pb + k_h * k_w * out_c
                acc = 0
                while pb < e:
                    acc += (ptr8(pb)[0] ^ 128) - 128
                    pb += out_c
                base = bias[oc] + c * acc
                if k9:
                    pb = w_addr + oc
                    w0 = (ptr8(pb)[0] ^ 128) - 128
                    pb += out_c
                    w1 = (ptr8(pb)[0] ^ 128) - 128
                    pb += out_c
                    w2 = (ptr8(pb)[0] ^ 128) - 128
                    pb += out_c
                    w3 = (ptr8(pb)[0] ^ 128) - 128
                    pb += out_c
                    w4 = (ptr8(pb)[0] ^ 128) - 128
                    pb += out_c
                    w5 = (ptr8(pb)[0] ^ 128) - 128
                    pb += out_c
                    w6 = (ptr8(pb)[0] ^ 128) - 128
                    pb += out_c
                    w7 = (ptr8(pb)[0] ^ 128) - 128
                    pb += out_c
                    w8 = (ptr8(pb)[0] ^ 128) - 128
                m = mult[oc]
                b0 = m & 0xFFFF
                b1 = m >> 16
                sh = (shift[oc] << WS) >> WS
                k = 0
                if sh < 0:
                    k = 0 - sh
                mask = ~(-1 << k)
                half = 0
                if k > 0:
                    half = 1 << (k - 1)
                for oy in range(oy0, oy1):
                    row = plane + (oy - oy0) * s_h * cols
                    ob = o_addr + ((bt * out_h + oy) * out_w) * out_c + oc
                    for ox in range(out_w):
                        pa = row + ox * s_w
                        if k9:
                            acc = ptr8(pa)[0] * w0 + ptr8(pa)[1] * w1 + ptr8(pa)[2] * w2
                            pa += rstep
                            acc += ptr8(pa)[0] * w3 + ptr8(pa)[1] * w4 + ptr8(pa)[2] * w5
                            pa += rstep
                            acc += ptr8(pa)[0] * w6 + ptr8(pa)[1] * w7 + ptr8(pa)[2] * w8
                        else:
                            acc = 0
                            pb = w_addr + oc
                            for ky in range(k_h):
                                for kx in range(k_w):
                                    acc += ptr8(pa + kx * d_w)[0] * ((ptr8(pb)[0] ^ 128) - 128)
                                    pb += out_c
                                pa += rstep
                        acc = ((acc + base) << WS) >> WS
                        # ---- requantise: kernels_viper.requant, inlined ----
                        if sh > 0:
                            t = (acc >> (31 - sh)) & 1
                            acc = (acc & ~(-1 << (31 - sh))) << sh
                            if t:
                                acc += int(-1) << 31
                        a1 = acc >> 16
                        a0 = acc & 0xFFFF
                        t = (a0 >> 8) * b0
                        L = (a0 & 0xFF) * b0 + ((t & 0xFF) << 8)
                        u = a1 * b0
                        v = a0 * b1
                        s = (u & 0xFFFF) + (v & 0xFFFF) + (t >> 8) + (L >> 16) + 0x4000
                        r = a1 * b1 + (u >> 16) + (v >> 16)
                        r = r + (r + (s >> 15))
                        if k:
                            if k < 31:
                                r = (r >> k) + (((r & mask) + half + (r >> 31)) >> k)
                            elif r >= int(1) << 30:
                                r = 1
                            elif r <= int(-1) << 30:
                                r = -1
                            else:
                                r = 0
                        r += out_off
                        if r < act_min:
                            r = act_min
                        elif r > act_max:
                            r = act_max
                        ptr8(ob)[0] = r
                        ob += out_c
    return 1


@micropython.viper
def dw_direct(pa: int, acc: int, pb: int, out: ptr8, inp: ptr8, filt: ptr8, bias: ptr32, mult: ptr32,
              shift: ptr32, p: ptr32):
    WS = 0
    if (int(1) << 31) > 0:
        WS = 32
    in_h = p[_P_IN_H]
    in_w = p[_P_IN_W]
    in_c = p[_P_IN_C]
    out_h = p[_P_OUT_H]
    oy0 = p[_P_OY_BEGIN]
    oy1 = p[_P_OY_END]
    out_w = p[_P_OUT_W]
    out_c = p[_P_OUT_C]
    k_h = p[_P_K_H]
    k_w = p[_P_K_W]
    s_h = p[_P_STRIDE_H]
    s_w = p[_P_STRIDE_W]
    d_h = p[_P_DIL_H]
    d_w = p[_P_DIL_W]
    pad_h = (p[_P_PAD_H] << WS) >> WS
    pad_w = (p[_P_PAD_W] << WS) >> WS
    c = ((p[_P_IN_OFFSET] << WS) >> WS) - 128
    out_off = (p[_P_OUT_OFFSET] << WS) >> WS
    act_min = (p[_P_ACT_MIN] << WS) >> WS
    act_max = (p[_P_ACT_MAX] << WS) >> WS
    dm = p[_P_DEPTH_MULT]
    x_addr = int(inp)
    o_addr = int(out)
    for bt in range(p[_P_BATCHES]):
        for oy in range(oy0, oy1):
            iy0 = oy * s_h - pad_h
            for ox in range(out_w):
                ix0 = ox * s_w - pad_w
                ob = o_addr + ((bt * out_h + oy) * out_w + ox) * out_c
                for oc in range(out_c):
                    ic = 0
                    q = oc
                    while q >= dm:                  # ic = oc // dm without a division
                        q -= dm
                        ic += 1
                    acc = 0
                    sw = 0
                    for ky in range(k_h):
                        iy = iy0 + d_h * ky
                        if iy < 0 or iy >= in_h:
                            continue
                        for kx in range(k_w):
                            ix = ix0 + d_w * kx
                            if ix < 0 or ix >= in_w:
                                continue
                            pa = x_addr + ((bt * in_h + iy) * in_w + ix) * in_c + ic
                            pb = int(filt) + (ky * k_w + kx) * out_c + oc
                            u = (ptr8(pb)[0] ^ 128) - 128
                            acc += (ptr8(pa)[0] ^ 128) * u
                            sw += u
                    acc = ((acc + c * sw + bias[oc]) << WS) >> WS
                    # ---- requantise: kernels_viper.requant, inlined ----
                    m = mult[oc]
                    sh = (shift[oc] << WS) >> WS
                    if sh > 0:
                        k = 31 - sh
                        t = (acc >> k) & 1
                        acc = (acc & ~(-1 << k)) << sh
                        if t:
                            acc += int(-1) << 31
                    b0 = m & 0xFFFF
                    a1 = acc >> 16
                    a0 = acc & 0xFFFF
                    t = (a0 >> 8) * b0
                    L = (a0 & 0xFF) * b0 + ((t & 0xFF) << 8)
                    u = a1 * b0
                    v = a0 * (m >> 16)
                    s = (u & 0xFFFF) + (v & 0xFFFF) + (t >> 8) + (L >> 16) + 0x4000
                    r = a1 * (m >> 16) + (u >> 16) + (v >> 16)
                    r = r + (r + (s >> 15))
                    if sh < 0:
                        k = 0 - sh
                        if k < 31:
                            r = (r >> k) + (((r & ~(-1 << k)) + (1 << (k - 1)) + (r >> 31)) >> k)
                        elif r >= int(1) << 30:
                            r = 1
                        elif r <= int(-1) << 30:
                            r = -1
                        else:
                            r = 0
                    r += out_off
                    if r < act_min:
                        r = act_min
                    elif r > act_max:
                        r = act_max
                    ptr8(ob)[oc] = r
