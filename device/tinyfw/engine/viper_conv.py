# CONV_2D in viper for kernels_viper.conv2d (rules and the offset algebra: see kernels_viper.py).
#
# conv_patched: output channels in blocks whose weights, offset by 128 (w ^ 128), sit in the scratch buffer; for
# every output pixel the receptive field is gathered once per block into a "patch" of K = K_H*K_W*IN_C bytes
# (x ^ 128), with padding taps set to the input zero point (they then contribute 0, as TFLM skips them), and both
# rows are zero-filled to a multiple of 16. The inner product is then pure byte loads:
#   acc = sum(patch * wrow) - 128*sum(patch) + base[oc],  base = bias + (io - 128)*sum(wrow) - 128*(io - 128)*K.
# conv_direct: no scratch, any size; reads the tensors in place (used when K does not fit the scratch buffer).
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
_P_OC_BEGIN = const(20)
_P_OC_END = const(21)
_P_OY_BEGIN = const(23)
_P_OY_END = const(24)


@micropython.viper
def conv_patched(acc: int, pa: int, pb: int, out: ptr8, inp: ptr8, filt: ptr8, bias: ptr32, mult: ptr32,
                 shift: ptr32, p: ptr32, scr: ptr8, scr_bytes: int) -> int:
    """Returns 0 (nothing written) when one output channel's weights and the patch do not fit scr_bytes."""
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
    io = (p[_P_IN_OFFSET] << WS) >> WS
    out_off = (p[_P_OUT_OFFSET] << WS) >> WS
    act_min = (p[_P_ACT_MIN] << WS) >> WS
    act_max = (p[_P_ACT_MAX] << WS) >> WS
    oc0 = p[_P_OC_BEGIN]
    oc1 = p[_P_OC_END]
    c = io - 128
    f_size = k_h * k_w * in_c
    k16 = (f_size + 15) & -16
    nb = oc1 - oc0
    while nb > 0 and 16 + k16 + nb * (k16 + 4) > scr_bytes:
        nb -= 1
    if nb < 1:
        return 0
    xpad = 128 - io                             # patch value of a padding tap: the input zero point, offset
    cn = (c * f_size) << 7
    patch = int(scr)
    bases = ptr32(patch + k16)
    wblk = patch + k16 + 4 * nb
    pa = patch + f_size
    while pa < patch + k16:
        ptr8(pa)[0] = 0
        pa += 1
    x_addr = int(inp)
    o_addr = int(out)
    row_c = k_w * in_c
    blk = oc0
    while blk < oc1:
        nbb = oc1 - blk
        if nbb > nb:
            nbb = nb
        # this block's weights (offset) and per-channel constants
        for j in range(nbb):
            pa = int(filt) + (blk - oc0 + j) * f_size
            pb = wblk + j * k16
            e = pa + f_size
            acc = 0
            while pa < e:
                v = ptr8(pa)[0] ^ 128
                ptr8(pb)[0] = v
                acc += v
                pa += 1
                pb += 1
            e = wblk + (j + 1) * k16
            while pb < e:
                ptr8(pb)[0] = 0
                pb += 1
            bases[j] = bias[blk + j] + c * acc - cn
        for bt in range(p[_P_BATCHES]):
            for oy in range(oy0, oy1):
                iy0 = oy * s_h - pad_h
                for ox in range(out_w):
                    ix0 = ox * s_w - pad_w
                    # gather the patch and its sum
                    sx = 0
                    pb = patch
                    for ky in range(k_h):
                        iy = iy0 + d_h * ky
                        if iy < 0 or iy >= in_h:
                            e = pb + row_c
                            while pb < e:
                                ptr8(pb)[0] = xpad
                                pb += 1
                            sx += xpad * row_c
                        else:
                            src = x_addr + (bt * in_h + iy) * in_w * in_c
                            for kx in range(k_w):
                                ix = ix0 + d_w * kx
                                e = pb + in_c
                                if ix < 0 or ix >= in_w:
                                    while pb < e:
                                        ptr8(pb)[0] = xpad
                                        pb += 1
                                    sx += xpad * in_c
                                else:
                                    pa = src + ix * in_c
                                    while pb < e:
                                        v = ptr8(pa)[0] ^ 128
                                        ptr8(pb)[0] = v
                                        sx += v
                                        pa += 1
                                        pb += 1
                    sx = sx << 7
                    ob = o_addr + ((bt * out_h + oy) * out_w + ox) * out_c + blk
                    for j in range(nbb):
                        pa = patch
                        pb = wblk + j * k16
                        e = pb + k16
                        acc = 0
                        while pb < e:
                            acc += ptr8(pa)[0] * ptr8(pb)[0]
                            acc += ptr8(pa)[1] * ptr8(pb)[1]
                            acc += ptr8(pa)[2] * ptr8(pb)[2]
                            acc += ptr8(pa)[3] * ptr8(pb)[3]
                            acc += ptr8(pa)[4] * ptr8(pb)[4]
                            acc += ptr8(pa)[5] * ptr8(pb)[5]
                            acc += ptr8(pa)[6] * ptr8(pb)[6]
                            acc += ptr8(pa)[7] * ptr8(pb)[7]
                            acc += ptr8(pa)[8] * ptr8(pb)[8]
                            acc += ptr8(pa)[9] * ptr8(pb)[9]
                            acc += ptr8(pa)[10] * ptr8(pb)[10]
                            acc += ptr8(pa)[11] * ptr8(pb)[11]
                            acc += ptr8(pa)[12] * ptr8(pb)[12]
                            acc += ptr8(pa)[13] * ptr8(pb)[13]
                            acc += ptr8(pa)[14] * ptr8(pb)[14]
                            acc += ptr8(pa)[15] * ptr8(pb)[15]
                            pa += 16
                            pb += 16
                        acc = ((acc + bases[j] - sx) << WS) >> WS
                        # ---- requantise: kernels_viper.requant, inlined ----
                        m = mult[blk + j]
                        sh = (shift[blk + j] << WS) >> WS
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
                        ptr8(ob)[j] = r
        blk += nbb
    return 1


@micropython.viper
def conv_direct(acc: int, pa: int, pb: int, out: ptr8, inp: ptr8, filt: ptr8, bias: ptr32, mult: ptr32,
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
    oc0 = p[_P_OC_BEGIN]
    oc1 = p[_P_OC_END]
    f_size = k_h * k_w * in_c
    x_addr = int(inp)
    o_addr = int(out)
    for bt in range(p[_P_BATCHES]):
        for oy in range(oy0, oy1):
            iy0 = oy * s_h - pad_h
            for ox in range(out_w):
                ix0 = ox * s_w - pad_w
                ob = o_addr + ((bt * out_h + oy) * out_w + ox) * out_c
                for oc in range(oc0, oc1):
                    # sum over valid taps of (xu + c) * ws = xu*wu - 128*xu + c*wu - 128*c
                    acc = 0
                    sx = 0
                    sw = 0
                    n = 0
                    for ky in range(k_h):
                        iy = iy0 + d_h * ky
                        if iy < 0 or iy >= in_h:
                            continue
                        for kx in range(k_w):
                            ix = ix0 + d_w * kx
                            if ix < 0 or ix >= in_w:
                                continue
                            pa = x_addr + ((bt * in_h + iy) * in_w + ix) * in_c
                            pb = int(filt) + (oc - oc0) * f_size + (ky * k_w + kx) * in_c
                            e = pa + in_c
                            n += in_c
                            while pa < e:
                                u = ptr8(pb)[0] ^ 128
                                v = ptr8(pa)[0] ^ 128
                                acc += v * u
                                sx += v
                                sw += u
                                pa += 1
                                pb += 1
                    acc = ((acc - (sx << 7) + c * sw - ((c * n) << 7) + bias[oc]) << WS) >> WS
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
