"""The MFCC front end of the keyword-spotting models: 1 s of 16 kHz audio -> 49 x 10 int8 features.

This module is the one implementation used by the training pipeline (models/pipeline), by
``tinyhost bench --dataset WAVDIR`` and by the tests. numpy only. Every step is written out so that the same
numbers can be computed on a device (docs/models.md has the step-by-step specification):

1. **Clip.** Audio as float in [-1, 1) (int16 PCM / 32768), mono, 16 kHz, exactly ``clip_samples`` (16000)
   samples: a longer clip is cut at the end, a shorter one padded with zeros at the end.
2. **Frames.** ``n_frames = 1 + (clip_samples - window_samples) // stride_samples`` frames (49 for a 640-sample
   window and a 320-sample stride); frame ``t`` is samples ``[t*stride, t*stride + window)``. No padding.
3. **Window.** Each frame is multiplied by a periodic Hann window ``w[n] = 0.5 - 0.5*cos(2*pi*n/window_samples)``.
4. **FFT.** The windowed frame is zero-padded to ``fft_size`` (1024) and transformed with a real FFT; the
   magnitude ``|X[k]|`` of bins ``k = 0 .. fft_size/2`` (513 bins) is kept (magnitude, not power).
5. **Mel filterbank.** ``mel_bins`` (40) triangular filters, HTK mel scale ``mel(f) = 1127*ln(1 + f/700)``,
   edges equally spaced in mel from ``mel_low_hz`` (20 Hz) to ``mel_high_hz`` (4000 Hz). Bin ``k`` sits at
   ``f_k = k * (sample_rate/2) / (fft_size/2)``; its weight in filter ``m`` (edges ``l < c < u`` in mel) is
   ``max(0, min((mel(f_k) - l)/(c - l), (u - mel(f_k))/(u - c)))``; the DC bin (k = 0) has weight 0.
   (The same matrix as ``tf.signal.linear_to_mel_weight_matrix``.)
6. **Log.** ``log_mel = ln(mel_energy + log_offset)`` with ``log_offset = 1e-6``.
7. **DCT.** ``mfcc[j] = sqrt(2/mel_bins) * sum_m log_mel[m] * cos(pi*j*(2m+1)/(2*mel_bins))`` for
   ``j = 0 .. mfcc_count-1`` (DCT-II scaled as ``tf.signal.mfccs_from_log_mel_spectrograms``; no extra
   scaling of coefficient 0, no liftering).
8. **Quantise** to the model's input tensor: ``q = clamp(round_half_away(x/scale) + zero_point, -128, 127)``,
   stored row-major as ``[frame][coefficient]`` (49 x 10 = 490 bytes for the 1x49x10x1 input).

Arithmetic is float64 internally and the float features are returned as float32.
"""

import wave
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from ..errors import UsageError


@dataclass(frozen=True)
class MfccConfig:
    """Parameters of the front end; the defaults are the shipped ``kws`` model's (see module docstring)."""

    sample_rate_hz: int = 16000
    clip_samples: int = 16000          # 1 s
    window_samples: int = 640          # 40 ms
    stride_samples: int = 320          # 20 ms
    fft_size: int = 1024
    mel_bins: int = 40
    mel_low_hz: float = 20.0
    mel_high_hz: float = 4000.0
    mfcc_count: int = 10
    log_offset: float = 1e-6

    @property
    def n_frames(self):
        return 1 + (self.clip_samples - self.window_samples) // self.stride_samples

    @property
    def shape(self):
        """(frames, coefficients) of one clip's features, e.g. (49, 10)."""
        return (self.n_frames, self.mfcc_count)

    def check(self):
        if self.window_samples > self.fft_size:
            raise UsageError(f"MFCC window of {self.window_samples} samples is longer than the FFT "
                             f"({self.fft_size})", hint="use an fft_size >= window_samples")
        if not 0 <= self.mel_low_hz < self.mel_high_hz <= self.sample_rate_hz / 2:
            raise UsageError(f"mel range {self.mel_low_hz}-{self.mel_high_hz} Hz is not within 0..Nyquist",
                             hint="choose 0 <= mel_low_hz < mel_high_hz <= sample_rate_hz/2")
        if self.mfcc_count > self.mel_bins:
            raise UsageError(f"{self.mfcc_count} MFCCs asked from {self.mel_bins} mel bins",
                             hint="mfcc_count must be <= mel_bins")
        if self.clip_samples < self.window_samples:
            raise UsageError("the clip is shorter than one window", hint="raise clip_samples")
        return self


#: The shipped ``kws`` model's front end: 40 ms window, 20 ms stride, 1024-point FFT -> 49 x 10.
KWS = MfccConfig()
#: What MLPerf Tiny's reference kws01 training used (mlcommons/tiny kws_util.py defaults): 30 ms window,
#: 20 ms stride (so a 512-point FFT), otherwise the same steps -> also 49 x 10.
MLPERF_KWS01 = MfccConfig(window_samples=480, fft_size=512)
#: The front end each keyword-spotting model of the registry (tinyhost.zoo) was trained with, by model name.
MODEL_FRONT_ENDS = {"kws": KWS, "kws01": MLPERF_KWS01}


def _hz_to_mel(hz):
    return 1127.0 * np.log1p(np.asarray(hz, dtype=np.float64) / 700.0)


@lru_cache(maxsize=8)
def hann_window(n):
    """Periodic Hann window of length ``n`` (float64, read-only)."""
    w = 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n) / n)
    w.setflags(write=False)
    return w


@lru_cache(maxsize=8)
def mel_filterbank(config=KWS):
    """Weights ``(fft_size//2 + 1, mel_bins)`` mapping FFT magnitudes to mel energies (float64, read-only)."""
    config.check()
    n_bins = config.fft_size // 2 + 1
    bin_hz = np.linspace(0.0, config.sample_rate_hz / 2.0, n_bins)
    bin_mel = _hz_to_mel(bin_hz)[:, None]
    edges = np.linspace(_hz_to_mel(config.mel_low_hz), _hz_to_mel(config.mel_high_hz), config.mel_bins + 2)
    lower, centre, upper = edges[:-2][None, :], edges[1:-1][None, :], edges[2:][None, :]
    rising = (bin_mel - lower) / (centre - lower)
    falling = (upper - bin_mel) / (upper - centre)
    weights = np.maximum(0.0, np.minimum(rising, falling))
    weights[0, :] = 0.0                      # the DC bin never contributes
    weights.setflags(write=False)
    return weights


@lru_cache(maxsize=8)
def dct_matrix(mel_bins, mfcc_count):
    """``(mel_bins, mfcc_count)`` DCT-II matrix scaled by sqrt(2/mel_bins) (float64, read-only)."""
    m = np.arange(mel_bins)[:, None]
    j = np.arange(mfcc_count)[None, :]
    d = np.sqrt(2.0 / mel_bins) * np.cos(np.pi * j * (2 * m + 1) / (2.0 * mel_bins))
    d.setflags(write=False)
    return d


def fit_clip(audio, config=KWS):
    """Audio as float64 of exactly ``clip_samples``: cut at the end or zero-padded at the end."""
    audio = np.asarray(audio, dtype=np.float64).reshape(-1)
    if audio.size >= config.clip_samples:
        return audio[:config.clip_samples]
    return np.concatenate([audio, np.zeros(config.clip_samples - audio.size)])


def mfcc(audio, config=KWS):
    """MFCC features ``(n_frames, mfcc_count)`` float32 of one mono clip (float samples in [-1, 1))."""
    config.check()
    clip = fit_clip(audio, config)
    starts = np.arange(config.n_frames) * config.stride_samples
    frames = clip[starts[:, None] + np.arange(config.window_samples)[None, :]]
    spectrum = np.abs(np.fft.rfft(frames * hann_window(config.window_samples), n=config.fft_size, axis=1))
    log_mel = np.log(spectrum @ mel_filterbank(config) + config.log_offset)
    return (log_mel @ dct_matrix(config.mel_bins, config.mfcc_count)).astype(np.float32)


def quantize(features, scale, zero_point):
    """Float features -> int8 for a tensor with this ``scale`` and ``zero_point`` (round half away from zero)."""
    if not scale > 0:
        raise UsageError(f"quantisation scale must be positive, got {scale}",
                         hint="read scale and zero_point from the model's input tensor")
    x = np.asarray(features, dtype=np.float64) / scale
    q = np.sign(x) * np.floor(np.abs(x) + 0.5) + zero_point
    return np.clip(q, -128, 127).astype(np.int8)


def dequantize(q, scale, zero_point):
    return (np.asarray(q, dtype=np.float32) - zero_point) * np.float32(scale)


def resample(audio, from_hz, to_hz):
    """Band-limited resampling by FFT (for WAV files not at 16 kHz); float64 out."""
    audio = np.asarray(audio, dtype=np.float64)
    if from_hz == to_hz or audio.size == 0:
        return audio
    n_out = int(round(audio.size * to_hz / from_hz))
    spectrum = np.fft.rfft(audio)
    n_keep = min(spectrum.size, n_out // 2 + 1)
    out_spectrum = np.zeros(n_out // 2 + 1, dtype=complex)
    out_spectrum[:n_keep] = spectrum[:n_keep]
    return np.fft.irfft(out_spectrum, n=n_out) * (n_out / audio.size)


class WavFault(ValueError):
    """Why a file cannot be read as PCM audio (the message, without the file's name)."""


def read_pcm(path):
    """A PCM WAV file as (mono float64 samples in [-1, 1), its sample rate in Hz). Raises WavFault naming what is
    wrong (not a WAV file, no samples, cut short, a sample width or rate that cannot be), OSError for the file."""
    try:
        with wave.open(str(path), "rb") as w:
            channels, width, rate, n = w.getnchannels(), w.getsampwidth(), w.getframerate(), w.getnframes()
            raw = w.readframes(n)
    except (wave.Error, EOFError) as e:
        raise WavFault(f"not a PCM WAV file: {e or 'too short'}") from None
    if n == 0:
        raise WavFault("a WAV file with no samples")
    if width not in (1, 2, 3, 4):
        raise WavFault(f"{8 * width}-bit samples are not supported")
    if rate <= 0:
        raise WavFault(f"a sample rate of {rate} Hz")
    if len(raw) < n * channels * width:
        raise WavFault(f"cut short: its header says {n} samples, it holds {len(raw) // (channels * width)}")
    if width == 1:
        samples = (np.frombuffer(raw, np.uint8).astype(np.float64) - 128.0) / 128.0
    elif width == 2:
        samples = np.frombuffer(raw, "<i2").astype(np.float64) / 32768.0
    elif width == 3:
        b = np.frombuffer(raw, np.uint8).reshape(-1, 3).astype(np.int32)
        v = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
        samples = np.where(v >= 1 << 23, v - (1 << 24), v).astype(np.float64) / float(1 << 23)
    else:
        samples = np.frombuffer(raw, "<i4").astype(np.float64) / float(1 << 31)
    return samples.reshape(-1, channels).mean(axis=1), rate


def read_wav(path, rate_hz=16000):
    """A PCM WAV file as mono float64 samples in [-1, 1) at ``rate_hz`` (resampled when it differs); UsageError
    naming the file and what is wrong with it."""
    path = Path(path)
    try:
        samples, rate = read_pcm(path)
    except FileNotFoundError:
        raise UsageError(f"no such WAV file: {path}", hint="check the path") from None
    except WavFault as e:
        raise UsageError(f"{path}: {e}", hint="convert it, e.g. `sox IN -r 16000 -c 1 -b 16 OUT.wav`") from None
    return resample(samples, rate, rate_hz)


def write_wav(path, audio, rate_hz=16000):
    """Write mono float samples as 16-bit PCM (clipped to [-1, 1)); to a temp name, then renamed."""
    path = Path(path)
    pcm = np.clip(np.round(np.asarray(audio, dtype=np.float64) * 32768.0), -32768, 32767).astype("<i2")
    tmp = path.with_name(path.name + ".part")
    with wave.open(str(tmp), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate_hz)
        w.writeframes(pcm.tobytes())
    tmp.replace(path)


def wav_features(path, scale, zero_point, config=KWS):
    """The model input bytes (int8, row-major frames x coefficients) for one WAV file."""
    audio = read_wav(path, config.sample_rate_hz)
    return quantize(mfcc(audio, config), scale, zero_point).tobytes()
