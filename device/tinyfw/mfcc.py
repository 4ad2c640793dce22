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

import sys


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


class Mfcc:
    """The front end for one model input. Defaults: the shipped ``kws`` model's (tinyhost.features.mfcc.KWS)."""

    def __init__(self, scale, zero_point, sample_rate_hz=16000, clip_samples=16000, window_samples=640,
                 stride_samples=320, fft_size=1024, mel_bins=40, mel_low_hz=20.0, mel_high_hz=4000.0,
                 mfcc_count=10, log_offset=1e-6, backend="auto"):
        from . import mfcc_tables           # the code that makes the tables: dropped again once they are made
        try:
            mfcc_tables.build(self, scale, zero_point, sample_rate_hz, clip_samples, window_samples, stride_samples,
                              fft_size, mel_bins, mel_low_hz, mel_high_hz, mfcc_count, log_offset, backend)
        finally:
            mfcc_tables = None
            _drop("mfcc_tables")

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
        win_h, win_l = self._win
        cos_h, cos_l = self._cos
        band, w_a, w_b = self._filt
        n_half, k_lo, k_hi, k_max = self._dims
        gain = k.window_gain(0, 0, samples, n, start, win_h, width)
        k.window(0, 0, samples, n, start, win_h, win_l, self._re, self._im, self._rev, width, n_half, gain)
        k.fft(0, 0, self._re, self._im, cos_h, cos_l, n_half, self._ws)
        down = k.spectrum(0, 0, self._re, self._im, cos_h, cos_l, self._mag, k_lo, k_hi, n_half, self._ws)
        k.mel(0, 0, self._mag, band, w_a, w_b, self._energy, k_lo, k_hi, self.mel_bins, down)
        # energy = E * 2**(16 + gain - down): samples are x / 2**15, y carries 2**gain, the split gives 2 X
        k.log_dct(0, 0, self._energy, self._ln, self._offset, 16 + gain - down, self._dct_h, self._dct_l,
                  self._bounds, self._log_mel, self.mel_bins, self.mfcc_count, out, out_at, k_max, self._ws)

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


def _drop(name):
    """Forget the module tinyfw.<name> so that its code is garbage (MicroPython only: the host keeps it)."""
    if sys.implementation.name != "micropython":
        return
    sys.modules.pop("tinyfw." + name, None)
    pkg = sys.modules.get("tinyfw")
    if pkg is not None and name in pkg.__dict__:
        delattr(pkg, name)
