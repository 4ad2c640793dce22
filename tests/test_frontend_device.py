"""The board's MFCC front end (device/tinyfw/mfcc.py) gives the host front end's int8 features (tinyhost.features).

The shipped WAVs (models/kws/wav, one per class) go through both: the device code under CPython (reference kernels)
and in the real MicroPython VM (every backend the VM offers, viper included), against
``tinyhost.features.mfcc.wav_features``. docs/frontend.md has the wider measurement (tolerance, accuracy).
"""

import subprocess
import sys
import wave
from array import array
from pathlib import Path

import numpy as np
import pytest

from tinyhost.features.mfcc import KWS, MLPERF_KWS01, mfcc, quantize

REPO = Path(__file__).resolve().parents[1]
DEVICE_DIR = REPO / "device"
WAVS = sorted((REPO / "models" / "kws" / "wav").glob("*/*.wav"))
sys.path.insert(0, str(DEVICE_DIR))

from tinyfw import mfcc as device_mfcc  # noqa: E402
from tinyfw import mfcc_tables as device_mfcc_tables  # noqa: E402
from engine_harness import helpers  # noqa: E402
from engine_harness.helpers import micropython  # noqa: E402

# The shipped kws model's input quantisation (models/kws/testset/features.json)
SCALE, ZERO_POINT = 0.5854228734970093, 83


def pcm(path, n=KWS.clip_samples):
    """The WAV's int16 samples, cut or zero-padded at the end to ``n`` (as the host's fit_clip does)."""
    with wave.open(str(path)) as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (1, 2, 16000)
        x = np.frombuffer(w.readframes(w.getnframes()), "<i2")
    return np.concatenate([x, np.zeros(max(0, n - x.size), "<i2")])[:n]


def host_features(samples, config=KWS):
    return quantize(mfcc(samples / 32768.0, config), SCALE, ZERO_POINT).tobytes()


def test_the_shipped_wavs_are_there():
    assert len(WAVS) == 12


@pytest.mark.parametrize("path", WAVS[::4], ids=lambda p: p.parent.name)
def test_clip_equals_host_features_under_cpython(path):
    x = pcm(path)
    fe = device_mfcc.Mfcc(SCALE, ZERO_POINT, backend="ref")
    out = bytearray(fe.feature_bytes)
    fe.clip(array("h", x.tobytes()), out)
    assert bytes(out) == host_features(x)


def test_frame_reads_a_ring_buffer_across_its_end():
    """A frame that starts near the ring's end wraps to its start: the same bytes as the frame read in a row."""
    x = pcm(WAVS[0])[4000:4000 + 2 * KWS.window_samples]
    fe = device_mfcc.Mfcc(SCALE, ZERO_POINT, backend="ref")
    straight = bytearray(12)
    fe.frame(array("h", x.tobytes()), 0, straight, 1)
    ring = np.roll(x, 1000)                                  # sample 0 now sits at index 1000
    wrapped = bytearray(12)
    fe.frame(array("h", ring.tobytes()), 1000, wrapped, 1)
    assert wrapped == straight
    assert straight[0] == 0 and straight[11] == 0            # only out[out_at:out_at + 10] is written
    assert bytes(straight[1:11]) == host_features(np.concatenate([x, np.zeros(16000, "<i2")]))[:10]


def test_codes_go_straight_into_a_signed_buffer():
    """The model's input buffer (a memoryview of an array('b')) takes the codes as a bytearray does."""
    x = pcm(WAVS[2])
    fe = device_mfcc.Mfcc(SCALE, ZERO_POINT, clip_samples=3 * KWS.stride_samples + KWS.window_samples,
                          backend="ref")
    signed = array("b", bytes(fe.feature_bytes))
    fe.clip(array("h", x.tobytes()), memoryview(signed))
    assert bytes(signed) == host_features(x)[:fe.feature_bytes]


def test_other_configurations_match_too():
    """MLPerf Tiny's kws01 front end (30 ms window, 512-point FFT), on a loud clip."""
    x = pcm(WAVS[1])
    c = MLPERF_KWS01
    fe = device_mfcc.Mfcc(SCALE, ZERO_POINT, window_samples=c.window_samples, fft_size=c.fft_size,
                          backend="ref")
    out = bytearray(fe.feature_bytes)
    fe.clip(array("h", x.tobytes()), out)
    assert bytes(out) == host_features(x, c)


def device_values(fe, x):
    """The int8 codes and the features before quantisation (Q20 -> float) of every frame of int16 ``x``."""
    from tinyfw import mfcc_ref

    out = bytearray(fe.feature_bytes)
    values = np.zeros((fe.n_frames, fe.mfcc_count))
    for t in range(fe.n_frames):
        fe.frame(array("h", x.tobytes()), t * fe.stride_samples, out, t * fe.mfcc_count)
        for j in range(fe.mfcc_count):
            row = j * fe.mel_bins
            values[t, j] = sum(mfcc_ref.mul30(fe._log_mel[m], fe._dct_h[row + m], fe._dct_l[row + m])
                               for m in range(fe.mel_bins)) / 2.0 ** 20
    return np.frombuffer(bytes(out), np.int8).reshape(values.shape), values


def test_silence_is_exact():
    """Digital silence: every energy 0, ln(log_offset) in every band, as on the host."""
    fe = device_mfcc.Mfcc(SCALE, ZERO_POINT, clip_samples=2 * KWS.window_samples, backend="ref")
    x = np.zeros(fe.clip_samples, "<i2")
    codes, values = device_values(fe, x)
    assert np.abs(values - mfcc(x / 32768.0, KWS)[:fe.n_frames]).max() < 1e-4
    assert codes.tobytes() == quantize(mfcc(x / 32768.0, KWS)[:fe.n_frames], SCALE, ZERO_POINT).tobytes()


def test_a_full_scale_square_wave_stays_within_the_stated_tolerance():
    """The hardest input for 32-bit fixed point: the largest sums, and mel bands between its harmonics 100 dB
    below the peak, where the FFT's rounding shows (docs/frontend.md): within 0.02 before quantisation, so no
    code is more than one step off."""
    fe = device_mfcc.Mfcc(SCALE, ZERO_POINT, clip_samples=2 * KWS.window_samples, backend="ref")
    x = np.where(np.arange(fe.clip_samples) % 16 < 8, 32767, -32768).astype("<i2")
    codes, values = device_values(fe, x)
    host = mfcc(x / 32768.0, KWS)[:fe.n_frames]
    assert np.abs(values - host).max() < 0.02
    assert np.abs(codes.astype(int) - quantize(host, SCALE, ZERO_POINT).astype(int)).max() <= 1


@pytest.mark.parametrize("name", ["tail impulse", "one LSB noise", "quiet noise"])
def test_quiet_frames_keep_their_precision(name):
    """Frames a few LSB loud (near-silence in the data set's silence clips): the gain scales them up to the 32-bit
    range, and a sample under the window's tail keeps its precision (its product is rounded once)."""
    n = KWS.window_samples
    rng = np.random.default_rng(3)
    x = {"tail impulse": np.where(np.arange(n) == 1, 34, 0), "one LSB noise": rng.integers(-1, 2, n),
         "quiet noise": rng.integers(-3, 4, n)}[name]
    x = np.concatenate([x, np.zeros(n)]).astype("<i2")
    fe = device_mfcc.Mfcc(SCALE, ZERO_POINT, clip_samples=n, backend="ref")
    _, values = device_values(fe, x[:n])
    assert np.abs(values - mfcc(x / 32768.0, KWS)[:1]).max() < 1e-3


@pytest.mark.parametrize("scale,zero_point", [(SCALE, ZERO_POINT), (0.0123, -128), (3.0, 0), (1 / 256, 127)])
def test_quantisation_thresholds_round_as_the_host(scale, zero_point):
    """bounds[] gives quantize()'s code for every Q20 value around each threshold."""
    bounds = device_mfcc_tables.bounds(scale, zero_point)
    probes = np.unique(np.concatenate([np.asarray(bounds, np.int64) + d for d in (-2, -1, 0, 1, 2)]))
    codes = np.searchsorted(np.asarray(bounds, np.int64), probes, side="right") - 128
    f32 = float(np.float32(scale))
    assert (codes == quantize(probes / 2.0 ** 20, f32, zero_point).astype(int)).all()


def _q30_pieces(x):
    """x in Q30 as mfcc_tables stores it: (high signed 15-bit piece, low 15 bits)."""
    v = device_mfcc_tables._q30(x)
    return v >> 15, v & 0x7FFF


@pytest.mark.parametrize("fft_size,mel_bins", [(256, 16), (512, 40), (1024, 40)])
def test_the_quarter_wave_gives_every_cos_and_sin_as_computed_directly(fft_size, mel_bins):
    """The kernels' cos and sin of pi k / n_half come from a quarter wave of cosine (mfcc_ref.cos_sin): the same
    Q30 pieces, for every k the FFT and the spectrum use, as computing each one from math.cos and math.sin."""
    from tinyfw import mfcc_ref
    fe = device_mfcc.Mfcc(SCALE, ZERO_POINT, window_samples=min(640, fft_size), fft_size=fft_size,
                          mel_bins=mel_bins, backend="ref")
    cos_h, cos_l = fe._cos
    n_half = fft_size // 2
    assert len(cos_h) == n_half // 2 + 1
    for k in range(n_half):
        a = np.pi * k / n_half
        assert mfcc_ref.cos_sin(cos_h, cos_l, k, n_half) == _q30_pieces(np.cos(a)) + _q30_pieces(np.sin(a)), k


@pytest.mark.parametrize("window_samples", [480, 640])
def test_the_half_window_is_the_periodic_hann_window(window_samples):
    """The window's table keeps w[0..N/2]; the kernels read w[n] at min(n, N - n): the values of every n."""
    fe = device_mfcc.Mfcc(SCALE, ZERO_POINT, window_samples=window_samples, fft_size=1024, backend="ref")
    win_h, win_l = fe._win
    assert len(win_h) == window_samples // 2 + 1
    for n in range(window_samples):
        m = min(n, window_samples - n)
        assert (win_h[m], win_l[m]) == _q30_pieces(0.5 - 0.5 * np.cos(2.0 * np.pi * n / window_samples)), n


@pytest.mark.parametrize("bad", [dict(scale=0.0), dict(fft_size=1000), dict(window_samples=641),
                                 dict(window_samples=2048), dict(mfcc_count=41), dict(mel_high_hz=9000.0),
                                 dict(log_offset=0.5), dict(fft_size=4096, mel_bins=2, mfcc_count=2),
                                 dict(backend="numpy")])
def test_bad_parameters_are_refused(bad):
    args = dict(scale=SCALE, zero_point=ZERO_POINT)
    args.update(bad)
    with pytest.raises(ValueError):
        device_mfcc.Mfcc(**args)


@pytest.mark.parametrize("start,out_at", [(1280, 0), (-1, 0), (0, 3), (0, -1)])
def test_frame_refuses_a_start_outside_the_ring_or_codes_past_the_output(start, out_at):
    fe = device_mfcc.Mfcc(SCALE, ZERO_POINT, backend="ref")
    with pytest.raises(ValueError):
        fe.frame(array("h", bytes(2560)), start, bytearray(12), out_at)


def test_clip_refuses_a_short_clip():
    fe = device_mfcc.Mfcc(SCALE, ZERO_POINT, backend="ref")
    with pytest.raises(ValueError):
        fe.clip(array("h", bytes(2000)), bytearray(490))


VM_SCRIPT = r"""
import sys
from array import array
sys.path.insert(0, sys.argv[1])
from tinyfw import mfcc
print("BACKENDS", " ".join(mfcc.BACKENDS))
for backend in mfcc.BACKENDS:
    fe = mfcc.Mfcc(%r, %d, backend=backend)
    out = bytearray(fe.feature_bytes)
    for path in sys.argv[2:]:
        if backend == "ref" and path != sys.argv[2]:
            continue                                  # the bytecode kernels are slow: one clip
        fe.clip(array("h", open(path, "rb").read()), out)
        print("FEATURES", backend, path, out.hex())
"""


@pytest.mark.sim
def test_the_vm_gives_the_host_features_with_every_backend(tmp_path):
    paths = []
    for i, w in enumerate(WAVS):
        p = tmp_path / f"{i}.pcm"
        p.write_bytes(pcm(w).tobytes())
        paths.append(p)
    script = tmp_path / "run_mfcc.py"
    script.write_text(VM_SCRIPT % (SCALE, ZERO_POINT))
    proc = subprocess.run([micropython(), str(script), str(DEVICE_DIR)] + [str(p) for p in paths],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    backends = lines[0].split()[1:]
    assert "ref" in backends
    want = {str(p): host_features(pcm(w)) for p, w in zip(paths, WAVS)}
    seen = {b: 0 for b in backends}
    for line in lines[1:]:
        _, backend, path, hexed = line.split()
        assert bytes.fromhex(hexed) == want[path], (backend, path)
        seen[backend] += 1
    assert seen["ref"] == 1 and all(n == len(WAVS) for b, n in seen.items() if b != "ref")


HEAP_SCRIPT = r"""
import sys, micropython
from array import array
sys.path.insert(0, sys.argv[1])
from tinyfw import mfcc
fe = mfcc.Mfcc(%r, %d)
ring = array("h", open(sys.argv[2], "rb").read())
signed = array("b", bytes(fe.feature_bytes))
out = memoryview(signed)                      # as the model's input buffer
fe.frame(ring, 0, out, 0)


def frames(fe, ring, out):                    # locals: a global's first store may grow the globals dict
    micropython.heap_lock()                   # any allocation now raises MemoryError
    for t in range(fe.n_frames):
        fe.frame(ring, (15000 + 320 * t) %% len(ring), out, 10 * t)
    micropython.heap_unlock()


frames(fe, ring, out)
print("BACKEND", fe.backend, bytes(signed).hex())
"""


@pytest.mark.sim
def test_a_frame_allocates_nothing_in_the_vm(tmp_path):
    """With the heap locked (micropython.heap_lock: an allocation raises), every frame of a ring buffer, across its
    end, runs with the default backend, into a signed buffer as the model's input; the codes are the host's for
    the rotated clip."""
    x = pcm(WAVS[3])
    ring = np.roll(x, 15000)                                 # the clip starts at index 15000 and wraps
    data = tmp_path / "ring.pcm"
    data.write_bytes(ring.tobytes())
    script = tmp_path / "run_heap.py"
    script.write_text(HEAP_SCRIPT % (SCALE, ZERO_POINT))
    proc = subprocess.run([micropython(), str(script), str(DEVICE_DIR), str(data)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    _, backend, hexed = proc.stdout.split()
    assert backend == "viper"
    assert bytes.fromhex(hexed) == host_features(x)


FRAMES_SCRIPT = r"""
import sys
from array import array
sys.path.insert(0, sys.argv[1])
from tinyfw import mfcc
frames = open(sys.argv[2], "rb").read()
width, fft_size = int(sys.argv[3]), int(sys.argv[4])
print("BACKENDS", " ".join(mfcc.BACKENDS))
for backend in mfcc.BACKENDS:
    fe = mfcc.Mfcc(%r, %d, window_samples=width, fft_size=fft_size, backend=backend)
    out = bytearray(10)
    for i in range(len(frames) // (2 * width)):
        fe.frame(array("h", frames[2 * width * i:2 * width * (i + 1)]), 0, out, 0)
        state = b"".join(bytes(a) for a in (fe._re, fe._im, fe._mag, fe._energy, fe._log_mel, out))
        print("FRAME", backend, i, state.hex())
"""


def edge_frames():
    """Frames that push the bounds and the special cases, then frames of every shipped WAV."""
    n = KWS.window_samples
    i = np.arange(n)
    frames = [np.zeros(n), np.where(i == n // 2, -32768, 0), np.where(i % 6 < 3, 32767, -32768),
              np.where(i % 7 < 2, 1, -1), np.where(i == 3, 1, 0), np.full(n, -32768)]
    for w in WAVS:
        x = pcm(w)
        frames += [x[3200:3200 + n], x[8000:8000 + n]]
    return [np.asarray(f, "<i2") for f in frames]


@pytest.mark.sim
@pytest.mark.parametrize("form,config", [("source", KWS), ("mpy", KWS), ("source", MLPERF_KWS01)],
                         ids=["kws", "kws-mpy", "kws01"])
def test_viper_and_reference_kernels_agree_on_every_intermediate_buffer(tmp_path, form, config):
    """Windowed FFT input and output, magnitudes, mel energies, log-mel and codes: the same bytes with both
    backends in the VM, frame by frame (a mismatch that the int8 codes round away is caught here); from source
    and precompiled by mpy-cross as `tinyhost flash` sends it (native code with two locals in registers); for
    kws's front end and MLPerf Tiny kws01's (30 ms window, 512-point FFT)."""
    device_dir = DEVICE_DIR
    if form == "mpy":
        device_dir = helpers.mpy_tree(tmp_path / "device")
    frames = [f[:config.window_samples] for f in edge_frames()]
    data = tmp_path / "frames.pcm"
    data.write_bytes(b"".join(f.tobytes() for f in frames))
    script = tmp_path / "run_frames.py"
    script.write_text(FRAMES_SCRIPT % (SCALE, ZERO_POINT))
    proc = subprocess.run([micropython(), str(script), str(device_dir), str(data), str(config.window_samples),
                           str(config.fft_size)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    if "viper" not in lines[0].split():
        pytest.skip("this VM has no viper emitter")
    state = {}
    for line in lines[1:]:
        _, backend, i, hexed = line.split()
        state[backend, int(i)] = hexed
    for i in range(len(frames)):
        assert state["viper", i] == state["ref", i], f"frame {i}"


def viper_on_a_32_bit_port():
    """mfcc_viper's functions executed under CPython on the model of a 32-bit core of test_kernels_viper_32bit:
    every int a 32-bit word that raises when a result leaves int32, ptr32 loads sign-extended."""
    import types

    from test_kernels_viper_32bit import ptr8, ptr16, ptr32, viper, viper_int

    fake = types.SimpleNamespace(viper=viper, const=lambda x: x)
    ns = {"__name__": "mfcc_viper", "ptr8": ptr8, "ptr16": ptr16, "ptr32": ptr32, "int": viper_int}
    src = (DEVICE_DIR / "tinyfw" / "mfcc_viper.py").read_text().replace("import micropython\n", "")
    exec(compile(src, "mfcc_viper.py", "exec"), dict(ns, micropython=fake), ns)
    return types.SimpleNamespace(**{k: v for k, v in ns.items() if callable(v)})


@pytest.mark.parametrize("name", ["impulse", "full-scale square", "silence", "one LSB", "speech"])
def test_viper_kernels_on_a_32_bit_port_give_the_reference_bytes(name):
    """The frames that push each bound: a full-scale impulse (flat spectrum at the L1 bound), a full-scale square
    wave, digital silence (every energy 0), a frame of +-1 LSB (the largest gain), and speech."""
    n = KWS.window_samples
    frames = {"impulse": np.where(np.arange(n) == n // 2, -32768, 0),
              "full-scale square": np.where(np.arange(n) % 6 < 3, 32767, -32768),
              "silence": np.zeros(n), "one LSB": np.where(np.arange(n) % 7 < 2, 1, -1),
              "speech": pcm(WAVS[-1])[8000:8000 + n]}
    x = array("h", np.asarray(frames[name], "<i2").tobytes())
    fe = device_mfcc.Mfcc(SCALE, ZERO_POINT, backend="ref")

    def state():
        out = bytearray(10)
        fe.frame(x, 0, out, 0)
        return [bytes(a) for a in (fe._re, fe._im, fe._mag, fe._energy, fe._log_mel, out)]
    want = state()
    fe._k, fe._ws = viper_on_a_32_bit_port(), 0
    assert fe._k.word_shift() == 0
    assert state() == want
