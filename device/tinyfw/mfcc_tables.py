# tinyfw.mfcc_tables: the tables of tinyfw.mfcc's front end (window, FFT twiddles, mel filterbank, log, DCT, int8
# thresholds) and its work buffers, made once with the port's float math. Mfcc() imports this module for its
# construction and drops it again on MicroPython, so that this code takes no heap while a stream runs beside a
# model (docs/frontend.md, "RAM and time on the board").

import math
from array import array

from .mfcc import backend_module

_LOG_OFFSET_ENTRIES = 48          # offset_table[k] = round(log_offset * 2**k), k < 48
_Q30 = 1 << 30


def _zeros(typecode, n):
    """An array of n zeros, allocated once at its size (array(typecode, bytes(...)) would first make a bytes object
    as large, and leave a hole of its size in the heap)."""
    a = array(typecode, range(n))
    for i in range(n):
        a[i] = 0
    return a


def _pieces(n):
    """Two arrays for n Q30 values in 15-bit pieces (_put30): high (signed 16-bit) and low."""
    return _zeros("h", n), _zeros("H", n)


def _put30(hi, lo, i, v):
    """Q30 value v at index i of (hi, lo): v = hi * 2**15 + lo, 0 <= lo < 2**15 (hi signed 16-bit: v in
    [-2**30, 2**30), see _q30)."""
    hi[i] = v >> 15
    lo[i] = v & 0x7FFF


def _q30(x):
    """x in [-1, 1] in Q30, 1.0 taken as 1 - 2**-30 so that the high 15-bit piece fits a signed 16-bit entry."""
    return min(_Q30 - 1, int(math.floor(x * _Q30 + 0.5)))


def _hz_to_mel(hz):
    return 1127.0 * math.log(1.0 + hz / 700.0)


def build(fe, scale, zero_point, sample_rate_hz, clip_samples, window_samples, stride_samples, fft_size, mel_bins,
          mel_low_hz, mel_high_hz, mfcc_count, log_offset, backend):
    """Fill in the attributes of the front end ``fe`` (Mfcc.__init__'s arguments); ValueError for a configuration
    it cannot run."""
    if not scale > 0:
        raise ValueError("quantisation scale must be positive")
    if fft_size < 4 or fft_size & (fft_size - 1) or fft_size > 4096:
        raise ValueError("fft_size must be a power of two, 4..4096")
    if window_samples & 1 or not 0 < window_samples <= fft_size:
        raise ValueError("window_samples must be even and at most fft_size")
    if not 0 < mfcc_count <= mel_bins < 255:
        raise ValueError("need 0 < mfcc_count <= mel_bins < 255")
    if not 0 <= mel_low_hz < mel_high_hz <= sample_rate_hz / 2:
        raise ValueError("mel range must lie within 0..sample_rate_hz/2")
    if not 0 < log_offset < 0.125:
        raise ValueError("log_offset must be in (0, 0.125)")
    if clip_samples < window_samples:
        raise ValueError("clip_samples is shorter than one window")
    fe.backend, fe._k = backend_module(backend)
    fe._ws = fe._k.word_shift() if fe.backend == "viper" else 0
    fe.window_samples = window_samples
    fe.stride_samples = stride_samples
    fe.clip_samples = clip_samples
    fe.mfcc_count = mfcc_count
    fe.mel_bins = mel_bins
    fe.n_frames = 1 + (clip_samples - window_samples) // stride_samples
    fe.feature_bytes = fe.n_frames * mfcc_count
    n_half = fft_size // 2
    # FFT bins that may reach a mel filter: those below mel_high_hz (a bin at or above it lies at or past the
    # last filter's upper edge), and one more for the float rounding of the edges
    n_bins = min(n_half + 1, int(math.floor(mel_high_hz * n_half / (sample_rate_hz / 2.0))) + 2)
    # Every table is allocated first, at its final size, and filled in place one value at a time: building
    # them makes no list of values, so the heap it needs beyond the tables
    # themselves is a few floats at a time, and what it frees leaves no holes between them (docs/frontend.md).
    # Largest first, before any float is made: where the free heap is in pieces, the large arrays take the large
    # pieces and the small ones fill what is left. The spectrum's arrays cover the n_bins bins that may reach a
    # filter (those that do, k_lo..k_hi, are known once the filterbank is made).
    fe._re = _zeros("i", n_half)                        # work buffers: the FFT's
    fe._im = _zeros("i", n_half)
    win_h, win_l = _pieces(window_samples // 2 + 1)    # the window's first half: w[n] = w[window_samples - n]
    fe._mag = _zeros("i", n_bins)                       # work buffer: magnitudes
    cos_h, cos_l = _pieces(n_half // 2 + 1)             # cos(pi i / n_half): the FFT's twiddles and the split's
    fe._ln = _zeros("i", 258)
    fe._bounds = bounds(scale, zero_point)
    fe._dct_h, fe._dct_l = _pieces(mfcc_count * mel_bins)
    fe._rev = _zeros("H", window_samples // 2)
    w_a = _zeros("H", n_bins)
    w_b = _zeros("H", n_bins)
    band = bytearray(n_bins)
    fe._offset = _zeros("i", _LOG_OFFSET_ENTRIES)
    fe._energy = _zeros("i", mel_bins)                  # work buffers: mel energies, their logs
    fe._log_mel = _zeros("i", mel_bins)
    sums = _zeros("i", mel_bins)
    edges = _zeros("d", mel_bins + 2)                   # the filters' edges in mel
    # periodic Hann window in Q30, split: its first half and middle (the kernels read w[n] at min(n, N - n))
    for n in range(window_samples // 2 + 1):
        _put30(win_h, win_l, n, _q30(0.5 - 0.5 * math.cos(2.0 * math.pi * n / window_samples)))
    # complex input point j (samples 2j, 2j+1) goes to rev[j] (bit reversal over n_half points)
    bits = 0
    while (1 << bits) < n_half:
        bits += 1
    for j in range(window_samples // 2):
        r = 0
        for b in range(bits):
            if j >> b & 1:
                r |= 1 << (bits - 1 - b)
        fe._rev[j] = r
    # a quarter wave of cosine: the kernels take cos and sin of pi k / n_half, 0 <= k < n_half, from it (cos_sin)
    for i in range(n_half // 2 + 1):
        _put30(cos_h, cos_l, i, _q30(math.cos(math.pi * i / n_half)))
    # mel filterbank: the bins that have a weight, each in at most two adjacent filters (band[k], band[k] + 1)
    for i in range(mel_bins + 2):
        edges[i] = (_hz_to_mel(mel_low_hz) + (_hz_to_mel(mel_high_hz) - _hz_to_mel(mel_low_hz)) * i
                    / (mel_bins + 1))
    k_lo, k_hi = n_bins, 0
    for k in range(n_bins):
        band[k] = 0xFF
    for k in range(1, n_bins):                            # the DC bin never contributes
        m = _hz_to_mel(k * (sample_rate_hz / 2.0) / n_half)
        count = 0
        for f in range(mel_bins):
            lower, centre, upper = edges[f], edges[f + 1], edges[f + 2]
            w = min((m - lower) / (centre - lower), (upper - m) / (upper - centre))
            if not w > 0:
                continue
            w = int(math.floor(w * 32768 + 0.5))
            if not w:
                continue
            if count == 0:
                band[k] = f                               # its first filter, and the next one
                w_a[k] = w
            elif count == 1 and f == band[k] + 1:
                w_b[k] = w
            else:
                raise ValueError("mel filters overlap more than pairwise")
            count += 1
        if count:
            k_lo, k_hi = min(k_lo, k), k + 1
    if k_hi == 0:
        raise ValueError("no FFT bin falls inside the mel range")
    for k in range(k_lo, k_hi):
        sums[band[k]] += w_a[k]
        if band[k] + 1 < mel_bins:
            sums[band[k] + 1] += w_b[k]
    if max(sums) >= 16 << 15:                             # energies (mag <= 2**24) must stay below 2**28
        raise ValueError("mel filters span too many FFT bins for 32-bit sums: use fewer FFT points or more "
                         "mel bins")
    sums = edges = None
    fe.bins = k_hi - k_lo                               # FFT bins that reach a mel filter
    # ln(1 + i/256) in Q24, i = 0..256, then ln 2
    for i in range(257):
        fe._ln[i] = int(math.floor(math.log(1.0 + i / 256.0) * (1 << 24) + 0.5))
    fe._ln[257] = int(math.floor(math.log(2.0) * (1 << 24) + 0.5))
    k_max = 0
    for k in range(_LOG_OFFSET_ENTRIES):
        fe._offset[k] = min(1 << 30, int(math.floor(log_offset * (2.0 ** k) + 0.5)))
        if fe._offset[k] < 1 << 28:
            k_max = k
    c = math.sqrt(2.0 / mel_bins)
    for j in range(mfcc_count):
        for m in range(mel_bins):
            _put30(fe._dct_h, fe._dct_l, j * mel_bins + m,
                   _q30(c * math.cos(math.pi * j * (2 * m + 1) / (2.0 * mel_bins))))
    # bytes of the tables and work buffers (their contents; each array object adds a few dozen more)
    fe.ram_bytes = (4 * (len(fe._ln) + len(fe._offset) + len(fe._bounds) + 2 * n_half + len(fe._mag)
                           + 2 * mel_bins)
                      + 2 * (2 * len(win_h) + len(fe._rev) + 2 * len(cos_h) + 2 * n_bins
                             + 2 * len(fe._dct_h))
                      + n_bins)

    # The instance's attributes stay at 29 or fewer: MicroPython sizes an object's attribute table in steps (17, 29,
    # 53 slots of 16 bytes in the 64-bit VM); the 30th would cost 384 bytes more. Mfcc.frame() unpacks these.
    fe._win = (win_h, win_l)
    fe._cos = (cos_h, cos_l)
    fe._filt = (band, w_a, w_b)
    fe._dims = (n_half, k_lo, k_hi, k_max)


def bounds(scale, zero_point):
    """The 255 thresholds (Q20, ascending) of the int8 codes: code >= q exactly when value >= bounds[q + 127], for
    q = round_half_away(value / scale) + zero_point clamped to [-128, 127]. scale is taken as a float32 (as a
    .tflite stores it): mantissa * 2**(exp - 24), exactly, so every port makes the same thresholds."""
    fm, fe = math.frexp(scale)
    mant = int(fm * (1 << 24))
    bounds = _zeros("i", 255)
    for i in range(255):
        t = i - 127 - zero_point                              # value / scale rounds to t or more ...
        num = (2 * t - 1) * mant                              # ... from (t - 1/2) scale = num * 2**(fe - 5) in Q20
        sh = fe - 5
        if sh >= 0:
            b = num << sh
            if t <= 0:                                        # ties round away from zero: strictly above
                b += 1
        else:
            d = 1 << -sh
            if t > 0:
                b = -((-num) // d)                            # ceil
            else:
                b = num // d + 1
        bounds[i] = max(-(1 << 31), min((1 << 31) - 1, b))
    return bounds
