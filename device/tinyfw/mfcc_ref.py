# Reference kernels of the MFCC front end (tinyfw.mfcc): the specification, in plain Python (any MicroPython,
# CPython). mfcc_viper.py has the same functions, signatures and results, bit for bit.
#
# Every value is an integer whose magnitude stays below 2**31 at every step (so the viper kernels compute the same
# numbers in a 32-bit machine word); the bounds are given where a value is made. Tables come from tinyfw.mfcc
# (Mfcc.__init__), which documents their formats. A value v "in Qn" stands for v / 2**n.
#
# A frame: window_gain, window (-> re, im in bit-reversed order), fft (in place), spectrum (-> mag), mel
# (-> energy), log_dct (-> int8 out). ``ws`` (bits above 32 in a viper int) is an argument for the viper kernels'
# sake, and so are every kernel's first two parameters (the registers of its hottest loop there; Mfcc passes 0).
# Loops have a fixed number of steps wherever the work allows (bit lengths, square roots), so that the
# board-time model (tinyhost.boardtime.front_end_work) can count the work from the configuration alone. On a 32-bit
# port the products here above 2**30 are long ints (they allocate); the viper kernels are the path that allocates
# nothing.


def mul30(a, th, tl):
    """a * t / 2**30 for |a| <= 2**29 and t = th * 2**15 + tl in [-2**30, 2**30) (th signed, 0 <= tl < 2**15),
    from 15-bit pieces: ah * th + (ah * tl + al * th + 3 * 2**13) >> 15 with a = ah * 2**15 + al. The al * tl term
    (below one unit) is not computed: the 2**13 stands in for its mean, so that the rounding has no bias. Every
    partial product and sum stays below 2**31."""
    ah = a >> 15
    al = a & 0x7FFF
    return ah * th + ((ah * tl + al * th + 0x6000) >> 15)


def bit_length(v):
    """Bits of 0 <= v < 2**31, in five fixed steps (the viper kernels inline the same steps)."""
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
    return n + v


def window_gain(s, i, samples, n_samples, start, win_h, width):
    """The frame's gain: the largest g <= 24 with S * 2**(g - 5) < 2**28 - 4096, S = 2 * width + the sum of
    (|x| * (win_h + 1)) >> 10 over the frame's ``width`` samples from ``start`` (wrapping at ``n_samples``).
    S * 2**(g - 5) + width / 2 bounds the L1 norm of the frame windowed and scaled by 2**g (``window``: |t| <=
    |x| (win_h + 1) + 2), which so stays below 2**28: loud frames get a small gain, quiet ones a large one."""
    s = 0
    i = start
    for j in range(width):
        x = samples[i]
        if x < 0:
            x = -x
        m = j if j + j <= width else width - j                # the window is symmetric: its first half is kept
        s += (x * (win_h[m] + 1)) >> 10
        i += 1
        if i == n_samples:
            i = 0
    s += 2 * width                                            # S <= 2**29.4 for 640 full-scale samples
    g = 24
    while g > 5 and s >= (0x0FFFF000 >> (g - 5)):
        g -= 1
    while 0 < g <= 5 and (s >> (5 - g)) >= 0x0FFFF000:
        g -= 1
    return g


def window(i, j, samples, n_samples, start, win_h, win_l, re, im, rev, width, n_half, gain):
    """The windowed frame, scaled by 2**gain (0 <= gain <= 24), as n_half complex points (even samples real, odd
    imaginary, zero-padded) in bit-reversed order: y = x * w * 2**gain, w = (win_h * 2**15 + win_l) / 2**30, rounded
    once (from gain 15 up only the low piece's product is rounded, so samples under the window's tails keep their
    precision in quiet frames); the sum of |y| stays below 2**28 (window_gain)."""
    for j in range(n_half):
        re[j] = 0
        im[j] = 0
    if gain < 15:                                             # y = round(t / 2**(15 - gain)), t = x * w * 2**15
        sh = 15 - gain
        up = 0
    else:                                                     # y = x * w_h * 2**(gain - 15) + round(x * w_l / ...)
        sh = 30 - gain
        up = gain - 15
    half = (1 << sh) >> 1
    i = start
    for j in range(width):
        x = samples[i]
        m = j if j + j <= width else width - j                # w[j] = w[width - j]: the table's first half
        if gain >= 15:
            y = ((x * win_h[m]) << up) + ((x * win_l[m] + half) >> sh)
        else:
            t = x * win_h[m] + ((x * win_l[m] + 0x4000) >> 15)  # |t| <= |x| (win_h + 1) + 2
            y = (t + half) >> sh
        k = rev[j >> 1]
        if j & 1:
            im[k] = y
        else:
            re[k] = y
        i += 1
        if i == n_samples:
            i = 0


def cos_sin(cos_h, cos_l, k, n_half):
    """cos and sin of pi k / n_half (0 <= k < n_half) in Q30 pieces, (ch, cl, sh, sl), from the quarter wave
    cos_h/cos_l, cos(pi i / n_half) for i = 0..n_half / 2: sin x = cos(pi / 2 - x), and cos x = -cos(pi - x) past
    pi / 2 (the same values as computed directly, tests/test_frontend_device.py)."""
    h = n_half >> 1
    if k <= h:
        return cos_h[k], cos_l[k], cos_h[h - k], cos_l[h - k]
    v = -(cos_h[n_half - k] * 32768 + cos_l[n_half - k])
    return v >> 15, v & 0x7FFF, cos_h[k - h], cos_l[k - h]


def fft(a, b, re, im, cos_h, cos_l, n_half, ws):
    """In-place radix-2 decimation-in-time FFT of n_half complex points given in bit-reversed order.
    Twiddle j: cos and sin of 2 pi j / n_half = pi (2 j) / n_half (cos_sin, in Q30 split into 15-bit pieces);
    the twiddles 1 (j = 0) and -i (j = n_half / 4) are applied exactly, without multiplying.
    Every intermediate value is a partial DFT of the input: its parts stay below the input's L1 norm (2**28)."""
    size = 2
    step = n_half >> 1
    while size <= n_half:
        half = size >> 1
        for j in range(half):
            ch, cl, sh, sl = cos_sin(cos_h, cos_l, 2 * j * step, n_half)
            for a in range(j, n_half, size):
                b = a + half
                br = re[b]
                bi = im[b]
                if j == 0:
                    tr = br
                    ti = bi
                elif 2 * j == half:
                    tr = bi
                    ti = -br
                else:
                    tr = mul30(br, ch, cl) + mul30(bi, sh, sl)        # (br + i bi) * (cos - i sin)
                    ti = mul30(bi, ch, cl) - mul30(br, sh, sl)
                ar = re[a]
                ai = im[a]
                re[b] = ar - tr
                im[b] = ai - ti
                re[a] = ar + tr
                im[a] = ai + ti
        size <<= 1
        step >>= 1


def isqrt_round(v):
    """round(sqrt(v)) for 0 <= v < 2**30: fifteen steps of the bit-by-bit method."""
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
    return r


def spectrum(v, r, re, im, cos_h, cos_l, mag, k_lo, k_hi, n_half, ws):
    """|2 X[k]| for bins k_lo <= k < k_hi of the real FFT of the 2 n_half samples, from the n_half-point complex
    FFT Z (X[k] = (Z[k] + conj Z[-k]) / 2 + e^(-i pi k / n_half) (Z[k] - conj Z[-k]) / 2i); the
    cos and sin of pi k / n_half from cos_sin. The parts are rounded to 14 bits before the square root.
    Returns ``down``, the smallest shift with (the largest magnitude >> down) <= 2**24 (for ``mel``)."""
    top = 0
    for k in range(k_lo, k_hi):
        m = (n_half - k) & (n_half - 1)
        rk = re[k]
        ik = im[k]
        rm = re[m]
        im_m = im[m]
        p = rk - rm
        q = ik + im_m
        ch, cl, sh, sl = cos_sin(cos_h, cos_l, k, n_half)
        xr = rk + rm + mul30(q, ch, cl) - mul30(p, sh, sl)
        xi = ik - im_m - mul30(p, ch, cl) - mul30(q, sh, sl)
        if xr < 0:
            xr = -xr
        if xi < 0:
            xi = -xi
        shift = bit_length(xr if xr > xi else xi) - 14        # both parts below 2**14: the sum of squares < 2**29
        if shift > 0:
            rnd = 1 << (shift - 1)
            xr = (xr + rnd) >> shift
            xi = (xi + rnd) >> shift
        else:
            shift = 0
        v = isqrt_round(xr * xr + xi * xi) << shift
        mag[k] = v
        if v > top:
            top = v
    down = 0
    while (top >> down) > 0x1000000:
        down += 1
    return down


def mel(k, v, mag, band, w_a, w_b, energy, k_lo, k_hi, mel_bins, down):
    """Mel energies: bin k adds (mag[k] >> down) * w_a[k] to band[k] and * w_b[k] to band[k] + 1 (weights in Q15;
    band 255 = none, mel_bins = past the last). With ``down`` from ``spectrum`` (mag >> down <= 2**24) an energy
    stays below 2**24 * (the largest sum of a filter's weights, < 16: Mfcc checks) = 2**28."""
    for j in range(mel_bins):
        energy[j] = 0
    rnd = (1 << down) >> 1
    for k in range(k_lo, k_hi):
        v = (mag[k] + rnd) >> down
        vh = v >> 15
        vl = v & 0x7FFF
        b = band[k]
        w = w_a[k]
        if b < mel_bins and w:
            energy[b] += vh * w + ((vl * w + 0x4000) >> 15)
        w = w_b[k]
        if b + 1 < mel_bins and w:
            energy[b + 1] += vh * w + ((vl * w + 0x4000) >> 15)


def log_dct(acc, m, energy, ln_table, offset_table, exponent, dct_h, dct_l, bounds, log_mel, mel_bins, mfcc_count, out,
            out_at, k_max, ws):
    """ln(energy / 2**exponent + log_offset) per band (Q20, into log_mel), the DCT-II (Q20) and the int8 codes into
    out[out_at:out_at + mfcc_count].

    ln: v = (energy << f) + offset_table[exponent + f], f = min(28 - bits of energy, k_max - exponent) (at least 0;
    k_max - exponent for energy 0): the largest shift that keeps energy << f below 2**28 and the offset within
    offset_table's entries below 2**28 (k_max: the last one); ln(v) = b ln 2 + ln(m), m = v / 2**b in [1, 2):
    ln_table[i] = ln(1 + i/256) in Q24 (257 entries) for m's top 8 bits, linear between two entries on the next 14
    bits; ln_table[257] = ln 2 in Q24.
    DCT: dct_h/dct_l[j * mel_bins + m] = sqrt(2/mel_bins) cos(pi j (2m+1) / (2 mel_bins)) in Q30.
    Quantisation: the code is -128 + the number of ``bounds`` (255 ascending Q20 thresholds) at or below the value."""
    ln2 = ln_table[257]
    for j in range(mel_bins):
        e = energy[j]
        f = k_max - exponent
        if e:
            fe = 28 - bit_length(e)
            if fe < f:
                f = fe
            if f < 0:
                f = 0
            v = (e << f) + offset_table[exponent + f]
        else:
            v = offset_table[exponent + f]
        if v < 1:
            v = 1
        b = bit_length(v) - 1                                 # v in [2**b, 2**(b+1))
        m = v << (29 - b)                                     # [2**29, 2**30)
        i = (m >> 21) - 256
        fr = (m >> 7) & 0x3FFF
        t0 = ln_table[i]
        y = t0 + (((ln_table[i + 1] - t0) * fr + 0x2000) >> 14) + (b - exponent - f) * ln2
        log_mel[j] = (y + 8) >> 4
    for j in range(mfcc_count):
        acc = 0
        row = j * mel_bins
        for m in range(mel_bins):
            acc += mul30(log_mel[m], dct_h[row + m], dct_l[row + m])
        lo = 0
        hi = 255
        while lo < hi:                                        # the number of bounds <= acc
            mid = (lo + hi) >> 1
            if bounds[mid] <= acc:
                lo = mid + 1
            else:
                hi = mid
        try:
            out[out_at + j] = lo - 128                        # a signed buffer (the model's input, array('b'))
        except (ValueError, OverflowError):
            out[out_at + j] = (lo - 128) & 0xFF               # a bytearray under CPython
