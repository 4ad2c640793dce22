"""The MFCC front end (tinyhost.features.mfcc): shapes, each documented step, golden values, WAV I/O."""

import wave

import numpy as np
import pytest

from tinyhost.errors import UsageError
from tinyhost.features.mfcc import (KWS, MLPERF_KWS01, MfccConfig, dct_matrix, dequantize, hann_window,
                                    mel_filterbank, mfcc, quantize, read_wav, resample, wav_features, write_wav)

N = np.arange(16000)
#: 440 Hz all through, 1800 Hz added in the second half.
TONES = 0.3 * np.sin(2 * np.pi * 440 * N / 16000) + 0.2 * np.sin(2 * np.pi * 1800 * N / 16000) * (N > 8000)
# tf.signal (stft 640/320 Hann, linear_to_mel_weight_matrix(40, 513, 16000, 20, 4000), log(x+1e-6),
# mfccs_from_log_mel_spectrograms, first 10) on TONES as float32, TensorFlow 2.21: frames 0 and 40.
TF_FRAME0 = [-48.50219, 19.64343, -2.02209, -6.28264, -7.88446, -4.84672, -1.36423, 2.03584, 3.23444, 2.7666]
TF_FRAME40 = [-31.30986, 9.44237, -5.36238, 3.7577, -13.40226, -7.59943, 4.50277, -0.47852, 0.96705, 6.61022]


def test_kws_shape_is_49_by_10():
    assert KWS.n_frames == 49 and KWS.shape == (49, 10)
    assert MLPERF_KWS01.shape == (49, 10)
    assert mfcc(TONES).shape == (49, 10) and mfcc(TONES).dtype == np.float32


def test_matches_tensorflow_signal_golden_values():
    # TF works in float32 and the log magnifies its rounding in nearly empty mel bands of pure tones; 0.02 is
    # still about 30x finer than one step of the int8 input (scale ~0.58).
    out = mfcc(TONES.astype(np.float32))
    np.testing.assert_allclose(out[0], TF_FRAME0, atol=0.02)
    np.testing.assert_allclose(out[40], TF_FRAME40, atol=0.02)


def _naive_mfcc_frame(clip, t, cfg):
    """Frame t straight from the documented formulas, with loops (slow, obviously right)."""
    frame = clip[t * cfg.stride_samples:t * cfg.stride_samples + cfg.window_samples]
    w = [0.5 - 0.5 * np.cos(2 * np.pi * n / cfg.window_samples) for n in range(cfg.window_samples)]
    x = np.zeros(cfg.fft_size)
    x[:cfg.window_samples] = frame * w
    k = np.arange(cfg.fft_size // 2 + 1)
    n = np.arange(cfg.fft_size)
    mags = np.abs(np.exp(-2j * np.pi * np.outer(k, n) / cfg.fft_size) @ x)

    def mel(f):
        return 1127.0 * np.log(1 + f / 700.0)
    edges = np.linspace(mel(cfg.mel_low_hz), mel(cfg.mel_high_hz), cfg.mel_bins + 2)
    energies = []
    for m in range(cfg.mel_bins):
        lo, c, hi = edges[m], edges[m + 1], edges[m + 2]
        total = 0.0
        for kk in range(1, cfg.fft_size // 2 + 1):
            b = mel(kk * cfg.sample_rate_hz / cfg.fft_size)
            total += mags[kk] * max(0.0, min((b - lo) / (c - lo), (hi - b) / (hi - c)))
        energies.append(np.log(total + cfg.log_offset))
    return [np.sqrt(2 / cfg.mel_bins) * sum(energies[m] * np.cos(np.pi * j * (2 * m + 1) / (2 * cfg.mel_bins))
                                            for m in range(cfg.mel_bins)) for j in range(cfg.mfcc_count)]


@pytest.mark.parametrize("cfg", [KWS, MLPERF_KWS01])
def test_vectorised_equals_the_written_specification(cfg):
    rng = np.random.default_rng(3)
    clip = rng.standard_normal(16000) * 0.05 + TONES
    fast = mfcc(clip, cfg)
    for t in (0, 17, 48):
        np.testing.assert_allclose(fast[t], _naive_mfcc_frame(clip, t, cfg), rtol=1e-4, atol=1e-3)


def test_filterbank_shape_and_band_limits():
    fb = mel_filterbank(KWS)
    assert fb.shape == (513, 40)
    assert np.all(fb >= 0) and fb.max() <= 1.0
    assert np.all(fb[0] == 0)                                  # DC never contributes
    hz = np.arange(513) * 8000 / 512
    assert np.all(fb[hz > 4000] == 0) and np.all(fb[hz < 20] == 0)
    assert np.all(fb.sum(axis=0) > 0)                          # every filter sees at least one bin


def test_dct_columns_are_orthogonal():
    d = dct_matrix(40, 10)
    gram = d.T @ d
    np.testing.assert_allclose(np.diag(gram), [2.0] + [1.0] * 9, atol=1e-12)
    np.testing.assert_allclose(gram - np.diag(np.diag(gram)), 0, atol=1e-12)


def test_window_is_periodic_hann():
    w = hann_window(640)
    assert w[0] == 0 and abs(w[320] - 1) < 1e-12 and abs(w[160] - 0.5) < 1e-12


def test_silence_gives_the_log_floor():
    out = mfcc(np.zeros(16000))
    assert out[:, 0] == pytest.approx(np.sqrt(2 / 40) * 40 * np.log(1e-6), rel=1e-5)
    np.testing.assert_allclose(out[:, 1:], 0, atol=1e-4)


def test_short_clips_are_zero_padded_and_long_ones_cut():
    short = TONES[:8000]
    np.testing.assert_array_equal(mfcc(short), mfcc(np.concatenate([short, np.zeros(8000)])))
    np.testing.assert_array_equal(mfcc(np.concatenate([TONES, TONES])), mfcc(TONES))


def test_quantize_rounds_half_away_from_zero_and_saturates():
    q = quantize([0.25, -0.25, 0.75, 100.0, -100.0, 0.0], scale=0.5, zero_point=3)
    assert q.tolist() == [4, 2, 5, 127, -128, 3] and q.dtype == np.int8
    np.testing.assert_allclose(dequantize(q[:3], 0.5, 3), [0.5, -0.5, 1.0])
    with pytest.raises(UsageError):
        quantize([1.0], scale=0.0, zero_point=0)


def test_bad_configurations_are_refused():
    with pytest.raises(UsageError, match="longer than the FFT"):
        mfcc(TONES, MfccConfig(window_samples=2048))
    with pytest.raises(UsageError, match="Nyquist"):
        mfcc(TONES, MfccConfig(mel_high_hz=9000.0))
    with pytest.raises(UsageError, match="mfcc_count"):
        mfcc(TONES, MfccConfig(mfcc_count=50))


def test_wav_roundtrip_and_features(tmp_path):
    path = tmp_path / "tone.wav"
    write_wav(path, TONES)
    assert not list(tmp_path.glob("*.part"))
    back = read_wav(path)
    assert back.shape == (16000,) and np.max(np.abs(back - TONES)) < 1 / 32768 + 1e-9
    data = wav_features(path, scale=0.5847, zero_point=83)
    assert len(data) == 490
    expected = quantize(mfcc(back), 0.5847, 83).tobytes()
    assert data == expected


def test_stereo_8bit_and_other_rates(tmp_path):
    stereo = tmp_path / "stereo8k.wav"
    t = np.arange(8000) / 8000
    left = (np.sin(2 * np.pi * 500 * t) * 100 + 128).astype(np.uint8)
    with wave.open(str(stereo), "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(1)
        w.setframerate(8000)
        w.writeframes(np.stack([left, np.full_like(left, 128)], axis=1).tobytes())
    audio = read_wav(stereo)
    assert audio.shape == (16000,)
    spectrum = np.abs(np.fft.rfft(audio))
    assert abs(np.argmax(spectrum) * 16000 / 16000 - 500) <= 1      # still a 500 Hz tone after 2x resampling
    assert abs(np.max(np.abs(audio)) - 100 / 128 / 2) < 0.02           # mono mix of the two channels


def test_resample_keeps_length_ratio():
    assert resample(np.ones(441), 44100, 16000).shape == (160,)


def test_unreadable_wav_files_raise_usage_errors(tmp_path):
    with pytest.raises(UsageError, match="no such WAV"):
        read_wav(tmp_path / "absent.wav")
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF0000WAVEjunk")
    with pytest.raises(UsageError, match="not a PCM WAV"):
        read_wav(bad)


def test_wav_folder_dataset(tmp_path):
    from tinyhost.features.wavdir import wav_dataset, wav_inputs
    labels = ("yes", "no", "silence", "unknown")
    for folder, count in (("yes", 2), ("no", 1), ("cat", 1), ("_background_noise_", 1)):
        (tmp_path / folder).mkdir()
        for i in range(count):
            write_wav(tmp_path / folder / f"{i}.wav", TONES * (i + 1) / 4)
    samples = wav_dataset(tmp_path, labels)
    assert [(p.parent.name, i) for p, i in samples] == [("cat", 3), ("no", 1), ("yes", 0), ("yes", 0)]
    inputs = wav_inputs(tmp_path, labels, scale=0.58, zero_point=83)
    assert len(inputs) == 4 and all(len(x) == 490 for x, _, _ in inputs)
    assert [p.parent.name for _, _, p in wav_inputs(tmp_path, ("yes", "no"), 0.58, 83)] == ["no", "yes", "yes"]
    with pytest.raises(UsageError, match="no <label>"):
        wav_dataset(tmp_path / "no", labels)
    with pytest.raises(UsageError, match="no such folder"):
        wav_dataset(tmp_path / "absent", labels)
