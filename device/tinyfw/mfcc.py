# tinyfw.mfcc: the keyword-spotting MFCC front end on the board: 16 kHz int16 audio -> int8 model input.
#
#   fe = Mfcc(scale, zero_point)                        # the model input's quantisation; KWS's front end by default
#   fe.frame(ring, start, out, out_at)                  # one frame: ring[start:start+640] (wrapping) -> 10 bytes
#   fe.clip(samples, out)                               # 16000 samples -> 49 x 10 = 490 bytes
#
# The same steps as the host's tinyhost.features.mfcc (docs/models.md): periodic Hann window, real FFT magnitude,
# HTK mel filterbank, ln(energy + log_offset), DCT-II scaled by sqrt(2/mel_bins), int8 quantisation (round half
# away from zero). Here in 32-bit integer arithmetic with per-frame scaling (block floating point), so that viper
# runs it in machine words and nothing allocates per frame: docs/frontend.md gives the number formats and the
# measured difference from the host's float64 features. Tables and work buffers are made once, in __init__, with the
# port's float math (float32 on ESP32 and nRF builds: the Q30 tables then carry 24 significant bits, and a few codes
# in 100,000 differ from the unix port's, docs/frontend.md); `ram_bytes` is their size.
#
# Kernels come from a backend module, as the engine's do: mfcc_ref (the specification) or mfcc_viper (same bytes).

import math
from array import array

_LOG_OFFSET_ENTRIES = 48          # offset_table[k] = round(log_offset * 2**k), k < 48
_Q30 = 1 << 30


def _probe_viper():
    try:
        from . import mfcc_viper
    except Exception:
        return None
    try:
        if not mfcc_viper.usable():
            return None
    except Exception:
        return None
    return mfcc_viper


_VIPER = _probe_viper()
BACKENDS = ("viper", "ref") if _VIPER is not None else ("ref",)


def backend_module(name):
    """The kernel module of backend ``name`` ("auto": the fastest here); ValueError for one this port lacks."""
    if name == "auto":
        name = BACKENDS[0]
    if name == "viper" and _VIPER is not None:
        return name, _VIPER
    if name == "ref":
        from . import mfcc_ref
        return name, mfcc_ref
    raise ValueError("unknown front-end backend %r: this port offers %s" % (name, ", ".join(BACKENDS)))


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


class Mfcc:
    """The front end for one model input. Defaults: the shipped ``kws`` model's (tinyhost.features.mfcc.KWS)."""

    def __init__(self, scale, zero_point, sample_rate_hz=16000, clip_samples=16000, window_samples=640,
                 stride_samples=320, fft_size=1024, mel_bins=40, mel_low_hz=20.0, mel_high_hz=4000.0,
                 mfcc_count=10, log_offset=1e-6, backend="auto"):
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
        self.backend, self._k = backend_module(backend)
        self._ws = _VIPER.word_shift() if self.backend == "viper" else 0
        self.window_samples = window_samples
        self.stride_samples = stride_samples
        self.clip_samples = clip_samples
        self.mfcc_count = mfcc_count
        self.mel_bins = mel_bins
        self.n_frames = 1 + (clip_samples - window_samples) // stride_samples
        self.fft_size = fft_size
        self.feature_bytes = self.n_frames * mfcc_count
        n_half = fft_size // 2
        self._n_half = n_half
        # FFT bins that may reach a mel filter: those below mel_high_hz (a bin at or above it lies at or past the
        # last filter's upper edge), and one more for the float rounding of the edges
        n_bins = min(n_half + 1, int(math.floor(mel_high_hz * n_half / (sample_rate_hz / 2.0))) + 2)
        n_tw = max(1, n_half // 2)
        # Every table is allocated first, at its final size, and filled in place one value at a time: building
        # them makes no list of values (only the mel_bins + 2 filter edges), so the heap it needs beyond the tables
        # themselves is a few floats at a time, and what it frees leaves no holes between them (docs/frontend.md).
        self._win_h, self._win_l = _pieces(window_samples)
        self._rev = _zeros("H", window_samples // 2)
        self._tw_h, self._tw_l = _pieces(2 * n_tw)
        band = bytearray(n_bins)
        w_a = _zeros("H", n_bins)
        w_b = _zeros("H", n_bins)
        self._ln = _zeros("i", 258)
        self._offset = _zeros("i", _LOG_OFFSET_ENTRIES)
        self._dct_h, self._dct_l = _pieces(mfcc_count * mel_bins)
        self._bounds = _bounds(scale, zero_point)
        # work buffers
        self._re = _zeros("i", n_half)
        self._im = _zeros("i", n_half)
        self._energy = _zeros("i", mel_bins)
        self._log_mel = _zeros("i", mel_bins)
        sums = _zeros("i", mel_bins)
        # periodic Hann window in Q30, split
        for n in range(window_samples):
            _put30(self._win_h, self._win_l, n, _q30(0.5 - 0.5 * math.cos(2.0 * math.pi * n / window_samples)))
        # complex input point j (samples 2j, 2j+1) goes to rev[j] (bit reversal over n_half points)
        bits = 0
        while (1 << bits) < n_half:
            bits += 1
        for j in range(window_samples // 2):
            r = 0
            for b in range(bits):
                if j >> b & 1:
                    r |= 1 << (bits - 1 - b)
            self._rev[j] = r
        for j in range(n_tw):
            a = 2.0 * math.pi * j / n_half
            _put30(self._tw_h, self._tw_l, 2 * j, _q30(math.cos(a)))
            _put30(self._tw_h, self._tw_l, 2 * j + 1, _q30(math.sin(a)))
        # mel filterbank: the bins that have a weight, each in at most two adjacent filters (band[k], band[k] + 1)
        edges = [0.0] * (mel_bins + 2)                        # the one list (mel_bins + 2 floats), freed below
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
        self._band, self._w_a, self._w_b = band, w_a, w_b
        self._k_lo, self._k_hi = k_lo, k_hi
        self.bins = k_hi - k_lo                               # FFT bins that reach a mel filter
        self._sp_h, self._sp_l = _pieces(2 * k_hi)
        self._mag = _zeros("i", k_hi)
        for k in range(k_hi):
            _put30(self._sp_h, self._sp_l, 2 * k, _q30(math.cos(math.pi * k / n_half)))
            _put30(self._sp_h, self._sp_l, 2 * k + 1, _q30(math.sin(math.pi * k / n_half)))
        # ln(1 + i/256) in Q24, i = 0..256, then ln 2
        for i in range(257):
            self._ln[i] = int(math.floor(math.log(1.0 + i / 256.0) * (1 << 24) + 0.5))
        self._ln[257] = int(math.floor(math.log(2.0) * (1 << 24) + 0.5))
        self._k_max = 0
        for k in range(_LOG_OFFSET_ENTRIES):
            self._offset[k] = min(1 << 30, int(math.floor(log_offset * (2.0 ** k) + 0.5)))
            if self._offset[k] < 1 << 28:
                self._k_max = k
        c = math.sqrt(2.0 / mel_bins)
        for j in range(mfcc_count):
            for m in range(mel_bins):
                _put30(self._dct_h, self._dct_l, j * mel_bins + m,
                       _q30(c * math.cos(math.pi * j * (2 * m + 1) / (2.0 * mel_bins))))
        # bytes of the tables and work buffers (their contents; each array object adds a few dozen more)
        self.ram_bytes = (4 * (len(self._ln) + len(self._offset) + len(self._bounds) + 2 * n_half + k_hi
                               + 2 * mel_bins)
                          + 2 * (2 * len(self._win_h) + len(self._rev) + 2 * len(self._tw_h) + 2 * n_bins
                                 + 2 * len(self._sp_h) + 2 * len(self._dct_h))
                          + n_bins)


    def frame(self, samples, start, out, out_at):
        """The features of one frame: ``window_samples`` int16 samples of ``samples`` (array('h') or a memoryview
        of one) from index ``start``, wrapping around at its end (a ring buffer), -> ``mfcc_count`` int8 codes
        written into ``out`` at ``out_at``: a bytearray, or the model's input buffer itself (a memoryview of an
        array('b')). Allocates nothing with the viper backend. A ``start`` outside
        the buffer, or codes that would not fit ``out``, are a ValueError (the viper kernels do not check)."""
        k = self._k
        n = len(samples)
        if not 0 <= start < n or not 0 <= out_at <= len(out) - self.mfcc_count:
            raise ValueError("frame start %d of %d samples, or %d codes at %d of %d bytes"
                             % (start, n, self.mfcc_count, out_at, len(out)))
        width = self.window_samples
        gain = k.window_gain(0, 0, samples, n, start, self._win_h, width)
        k.window(0, 0, samples, n, start, self._win_h, self._win_l, self._re, self._im, self._rev, width,
                 self._n_half, gain)
        k.fft(0, 0, self._re, self._im, self._tw_h, self._tw_l, self._n_half, self._ws)
        down = k.spectrum(0, 0, self._re, self._im, self._sp_h, self._sp_l, self._mag, self._k_lo, self._k_hi,
                          self._n_half, self._ws)
        k.mel(0, 0, self._mag, self._band, self._w_a, self._w_b, self._energy, self._k_lo, self._k_hi, self.mel_bins,
              down)
        # energy = E * 2**(16 + gain - down): samples are x / 2**15, y carries 2**gain, the split gives 2 X
        k.log_dct(0, 0, self._energy, self._ln, self._offset, 16 + gain - down, self._dct_h, self._dct_l,
                  self._bounds, self._log_mel, self.mel_bins, self.mfcc_count, out, out_at, self._k_max, self._ws)

    def clip(self, samples, out):
        """The model input of one clip: ``clip_samples`` int16 samples -> n_frames x mfcc_count int8 codes in
        ``out`` (frame by frame, as the host's wav_features); ``samples`` shorter than a clip: ValueError."""
        if len(samples) < self.clip_samples:
            raise ValueError("a clip is %d samples, got %d" % (self.clip_samples, len(samples)))
        if len(out) < self.feature_bytes:
            raise ValueError("the output holds %d bytes, a clip's features are %d" % (len(out), self.feature_bytes))
        for t in range(self.n_frames):
            self.frame(samples, t * self.stride_samples, out, t * self.mfcc_count)
        return out


def _bounds(scale, zero_point):
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
