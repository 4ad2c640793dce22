# The MFCC front end's kernels in MicroPython viper: the same functions, signatures and results as mfcc_ref.py (the
# specification), which gives the formats and the bounds. Every intermediate value stays within signed 32 bits, so
# the same source gives the same bytes on 64-bit ports (the unix VM) and 32-bit ones (ESP32, nRF52), where a
# viper int is a 32-bit machine word. Nothing allocates: loops run over ptr8/ptr16/ptr32 views of the buffers.
#
# Loads: a signed 16-bit entry (samples, the high 15-bit pieces of the Q30 tables) is read through ptr16 (unsigned)
# as (v ^ 0x8000) - 0x8000; a signed 32-bit one through ptr32 is sign-extended with `(v << ws) >> ws`, ws = bits
# above 32 in a viper int (0 on a 32-bit port, 32 on the unix VM: ptr32 loads are zero-extended there), which
# Mfcc passes in as the kernels' last argument where one is read. A value that is only added, subtracted and stored
# needs no extension: the low 32 bits stored are the same either way (the FFT's butterflies without a multiply).
# Speed: each kernel's first two parameters are the locals of its hottest loop (Mfcc passes 0 for them): the native
# emitters keep a function's first locals in registers (two in code from mpy-cross, as kernels_viper explains), and
# the rest on the stack. That took the xtensawin butterfly from 427 to 366 cycles and a spectrum bin's square-root
# step from 66 to 46 (python -m benchmarks.board_time_kernels).
import micropython


@micropython.viper
def word_shift() -> int:
    """Bits above 32 in a viper int on this port: 0 on 32-bit ports, 32 on 64-bit ones."""
    if (int(1) << 31) > 0:
        return 32
    return 0


@micropython.viper
def window_gain(s: int, i: int, samples, n_samples: int, start: int, win_h, width: int) -> int:
    x16 = ptr16(samples)
    wh = ptr16(win_h)
    s = 0
    i = start
    j = 0
    while j < width:
        x = (x16[i] ^ 0x8000) - 0x8000
        if x < 0:
            x = 0 - x
        m = j
        if j + j > width:
            m = width - j
        s += (x * (wh[m] + 1)) >> 10
        i += 1
        if i == n_samples:
            i = 0
        j += 1
    s += 2 * width
    g = 24
    while g > 5 and s >= (0x0FFFF000 >> (g - 5)):
        g -= 1
    while g > 0 and g <= 5 and (s >> (5 - g)) >= 0x0FFFF000:
        g -= 1
    return g


@micropython.viper
def window(i: int, j: int, samples, n_samples: int, start: int, win_h, win_l, re, im, rev, width: int, n_half: int,
           gain: int):
    x16 = ptr16(samples)
    wh = ptr16(win_h)
    wl = ptr16(win_l)
    pr = ptr32(re)
    pi = ptr32(im)
    rv = ptr16(rev)
    j = 0
    while j < n_half:
        pr[j] = 0
        pi[j] = 0
        j += 1
    if gain < 15:
        sh = 15 - gain
        up = 0
    else:
        sh = 30 - gain
        up = gain - 15
    half = (1 << sh) >> 1
    i = start
    j = 0
    while j < width:
        x = (x16[i] ^ 0x8000) - 0x8000
        m = j
        if j + j > width:
            m = width - j
        if gain >= 15:
            y = ((x * wh[m]) << up) + ((x * wl[m] + half) >> sh)
        else:
            y = (x * wh[m] + ((x * wl[m] + 0x4000) >> 15) + half) >> sh
        k = rv[j >> 1]
        if j & 1:
            pi[k] = y
        else:
            pr[k] = y
        i += 1
        if i == n_samples:
            i = 0
        j += 1


@micropython.viper
def fft(a: int, b: int, re, im, cos_h, cos_l, n_half: int, ws: int):
    pr = ptr32(re)
    pi = ptr32(im)
    th = ptr16(cos_h)
    tl = ptr16(cos_l)
    hq = n_half >> 1
    size = 2
    step = n_half >> 1
    while size <= n_half:
        half = size >> 1
        a = 0                                                 # twiddle 1: no multiply
        while a < n_half:
            b = a + half
            br = pr[b]
            bi = pi[b]
            ar = pr[a]
            ai = pi[a]
            pr[b] = ar - br
            pi[b] = ai - bi
            pr[a] = ar + br
            pi[a] = ai + bi
            a += size
        if half >= 2:                                         # twiddle -i: no multiply
            a = half >> 1
            while a < n_half:
                b = a + half
                br = (pr[b] << ws) >> ws
                bi = (pi[b] << ws) >> ws
                ar = pr[a]
                ai = pi[a]
                pr[b] = ar - bi
                pi[b] = ai + br
                pr[a] = ar + bi
                pi[a] = ai - br
                a += size
        j = 1
        while j < half:
            if 2 * j == half:
                j += 1
                continue
            t = 2 * j * step                                 # mfcc_ref.cos_sin
            if t <= hq:
                ch = (th[t] ^ 0x8000) - 0x8000
                cl = tl[t]
                sh = (th[hq - t] ^ 0x8000) - 0x8000
                sl = tl[hq - t]
            else:
                ch = 0 - ((((th[n_half - t] ^ 0x8000) - 0x8000) << 15) + tl[n_half - t])
                cl = ch & 0x7FFF
                ch = ch >> 15
                sh = (th[t - hq] ^ 0x8000) - 0x8000
                sl = tl[t - hq]
            a = j
            while a < n_half:
                b = a + half
                br = (pr[b] << ws) >> ws
                bi = (pi[b] << ws) >> ws
                rh = br >> 15
                rl = br & 0x7FFF
                ih = bi >> 15
                il = bi & 0x7FFF
                tr = (rh * ch + ((rh * cl + rl * ch + 0x6000) >> 15)
                      + ih * sh + ((ih * sl + il * sh + 0x6000) >> 15))
                ti = (ih * ch + ((ih * cl + il * ch + 0x6000) >> 15)
                      - rh * sh - ((rh * sl + rl * sh + 0x6000) >> 15))
                ar = pr[a]
                ai = pi[a]
                pr[b] = ar - tr
                pi[b] = ai - ti
                pr[a] = ar + tr
                pi[a] = ai + ti
                a += size
            j += 1
        size <<= 1
        step >>= 1


@micropython.viper
def spectrum(v: int, r: int, re, im, cos_h, cos_l, mag, k_lo: int, k_hi: int, n_half: int, ws: int) -> int:
    pr = ptr32(re)
    pi = ptr32(im)
    th = ptr16(cos_h)
    tl = ptr16(cos_l)
    hq = n_half >> 1
    pm = ptr32(mag)
    top = 0
    k = k_lo
    while k < k_hi:
        m = (n_half - k) & (n_half - 1)
        rk = (pr[k] << ws) >> ws
        ik = (pi[k] << ws) >> ws
        rm = (pr[m] << ws) >> ws
        imm = (pi[m] << ws) >> ws
        p = rk - rm
        q = ik + imm
        if k <= hq:                                           # mfcc_ref.cos_sin
            ch = (th[k] ^ 0x8000) - 0x8000
            cl = tl[k]
            sh = (th[hq - k] ^ 0x8000) - 0x8000
            sl = tl[hq - k]
        else:
            ch = 0 - ((((th[n_half - k] ^ 0x8000) - 0x8000) << 15) + tl[n_half - k])
            cl = ch & 0x7FFF
            ch = ch >> 15
            sh = (th[k - hq] ^ 0x8000) - 0x8000
            sl = tl[k - hq]
        ph = p >> 15
        pl = p & 0x7FFF
        qh = q >> 15
        ql = q & 0x7FFF
        qc = qh * ch + ((qh * cl + ql * ch + 0x6000) >> 15)
        ps = ph * sh + ((ph * sl + pl * sh + 0x6000) >> 15)
        pc = ph * ch + ((ph * cl + pl * ch + 0x6000) >> 15)
        qs = qh * sh + ((qh * sl + ql * sh + 0x6000) >> 15)
        xr = rk + rm + qc - ps
        xi = ik - imm - pc - qs
        if xr < 0:
            xr = 0 - xr
        if xi < 0:
            xi = 0 - xi
        v = xr if xr > xi else xi                             # shift = bits of the larger part - 14
        shift = 0
        if v >> 16:
            v >>= 16
            shift += 16
        if v >> 8:
            v >>= 8
            shift += 8
        if v >> 4:
            v >>= 4
            shift += 4
        if v >> 2:
            v >>= 2
            shift += 2
        if v >> 1:
            v >>= 1
            shift += 1
        shift = shift + v - 14
        if shift > 0:
            rnd = 1 << (shift - 1)
            xr = (xr + rnd) >> shift
            xi = (xi + rnd) >> shift
        else:
            shift = 0
        v = xr * xr + xi * xi                                 # round(sqrt(v)), v < 2**30
        r = 0
        bit = 1 << 28
        while bit:
            if v >= r + bit:
                v -= r + bit
                r = (r >> 1) + bit
            else:
                r >>= 1
            bit >>= 2
        if v > r:
            r += 1
        r <<= shift
        pm[k] = r
        if r > top:
            top = r
        k += 1
    down = 0
    while (top >> down) > 0x1000000:
        down += 1
    return down


@micropython.viper
def mel(k: int, v: int, mag, band, w_a, w_b, energy, k_lo: int, k_hi: int, mel_bins: int, down: int):
    pm = ptr32(mag)
    pb = ptr8(band)
    wa = ptr16(w_a)
    wb = ptr16(w_b)
    pe = ptr32(energy)
    j = 0
    while j < mel_bins:
        pe[j] = 0
        j += 1
    rnd = (1 << down) >> 1
    k = k_lo
    while k < k_hi:
        v = (pm[k] + rnd) >> down                             # mag >= 0 and < 2**31: no sign to extend
        vh = v >> 15
        vl = v & 0x7FFF
        b = pb[k]
        w = wa[k]
        if b < mel_bins and w:
            pe[b] = pe[b] + vh * w + ((vl * w + 0x4000) >> 15)
        w = wb[k]
        if b + 1 < mel_bins and w:
            pe[b + 1] = pe[b + 1] + vh * w + ((vl * w + 0x4000) >> 15)
        k += 1


@micropython.viper
def log_dct(acc: int, m: int, energy, ln_table, offset_table, exponent: int, dct_h, dct_l, bounds, log_mel,
            mel_bins: int, mfcc_count: int, out, out_at: int, k_max: int, ws: int):
    pe = ptr32(energy)
    lt = ptr32(ln_table)
    ot = ptr32(offset_table)
    dh = ptr16(dct_h)
    dl = ptr16(dct_l)
    bd = ptr32(bounds)
    lm = ptr32(log_mel)
    po = ptr8(out)
    ln2 = lt[257]
    j = 0
    while j < mel_bins:
        e = pe[j]                                             # >= 0 and < 2**28
        f = k_max - exponent
        if e:
            v = e                                             # f = min(f, 28 - bits of e), at least 0
            n = 0
            if v >> 16:
                v >>= 16
                n += 16
            if v >> 8:
                v >>= 8
                n += 8
            if v >> 4:
                v >>= 4
                n += 4
            if v >> 2:
                v >>= 2
                n += 2
            if v >> 1:
                v >>= 1
                n += 1
            n = 28 - n - v
            if n < f:
                f = n
            if f < 0:
                f = 0
            v = (e << f) + ot[exponent + f]
        else:
            v = ot[exponent + f]
        if v < 1:
            v = 1
        u = v                                                 # b = bits of v - 1
        b = 0
        if u >> 16:
            u >>= 16
            b += 16
        if u >> 8:
            u >>= 8
            b += 8
        if u >> 4:
            u >>= 4
            b += 4
        if u >> 2:
            u >>= 2
            b += 2
        if u >> 1:
            b += 1
        m = v << (29 - b)
        i = (m >> 21) - 256
        fr = (m >> 7) & 0x3FFF
        t0 = lt[i]
        y = t0 + (((lt[i + 1] - t0) * fr + 0x2000) >> 14) + (b - exponent - f) * ln2
        lm[j] = (y + 8) >> 4
        j += 1
    j = 0
    while j < mfcc_count:
        acc = 0
        row = j * mel_bins
        m = 0
        while m < mel_bins:
            a = (lm[m] << ws) >> ws
            ch = (dh[row + m] ^ 0x8000) - 0x8000
            cl = dl[row + m]
            ah = a >> 15
            al = a & 0x7FFF
            acc += ah * ch + ((ah * cl + al * ch + 0x6000) >> 15)
            m += 1
        lo = 0
        hi = 255
        while lo < hi:
            mid = (lo + hi) >> 1
            if ((bd[mid] << ws) >> ws) <= acc:
                lo = mid + 1
            else:
                hi = mid
        po[out_at + j] = lo - 128
        j += 1


def usable():
    """True when the viper emitter on this port computes what these kernels assume (Mfcc checks once)."""
    return word_shift() in (0, 32)
