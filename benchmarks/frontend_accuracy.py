"""How far the board's MFCC front end (device/tinyfw/mfcc.py) is from the host's, and what that costs the model.

Clips: the shipped WAVs (models/kws/wav) and a fresh synthetic set made the way the model's held-out test set was
(models/pipeline/kws_data.py: espeak-ng + sox, the *test* voices of the model's speaker split, noise, silence
clips), N per class. The shipped test set (models/kws/testset) holds features only, no audio, so it cannot be fed
to a front end. Each clip goes to the board as int16 PCM; the host features are computed from the same samples.

For every clip: the int8 codes of the device front end in the MicroPython VM (viper kernels; the reference kernels
under CPython give the same bytes, checked) against ``tinyhost.features.mfcc``; the largest difference of the
features before quantisation (device fixed point vs host float64); and the shipped int8 model's top-1 accuracy
(TFLM's Python interpreter) on host features and on device features.

    python -m benchmarks.frontend_accuracy [--per-class 20] [--seed 2026] [--clips FILE.npz] [--json FILE]

Also: the same with the front end's tables made in float32 arithmetic, as an ESP32 or nRF build makes them
(MicroPython's single-precision float there), against the unix port's codes.

Needs Debian's espeak-ng and sox, tflite-micro, and the micropython VM.
"""

import argparse
import json
import math
import shutil
import subprocess
import sys
import tempfile
import wave
from array import array
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "device"))

from tinyfw import mfcc as device_mfcc  # noqa: E402
from tinyfw import mfcc_ref  # noqa: E402
from tinyfw import mfcc_tables  # noqa: E402 (kept under CPython: Mfcc() drops it on MicroPython only)

MODEL = ROOT / "models" / "kws" / "kws.tflite"
WAV_DIR = ROOT / "models" / "kws" / "wav"
MODEL_SPEAKER_SEED = 1          # models/pipeline/kws.py's default seed: its speaker split

VM_SCRIPT = r"""
import sys
from array import array
sys.path.insert(0, sys.argv[1])
from tinyfw import mfcc
fe = mfcc.Mfcc(float(sys.argv[2]), int(sys.argv[3]))
print("BACKEND", fe.backend)
out = bytearray(fe.feature_bytes)
for path in sys.argv[4:]:
    fe.clip(array("h", open(path, "rb").read()), out)
    print(out.hex())
"""


def shipped_clips():
    from models.pipeline.kws_data import LABELS

    clips, labels = [], []
    for path in sorted(WAV_DIR.glob("*/*.wav")):
        with wave.open(str(path)) as w:
            x = np.frombuffer(w.readframes(w.getnframes()), "<i2")
        clips.append(np.concatenate([x, np.zeros(max(0, 16000 - x.size), "<i2")])[:16000])
        labels.append(LABELS.index(path.parent.name))
    return clips, labels


def synthetic_clips(per_class, seed):
    """Fresh clips spoken by the model's test voices, placed and mixed as kws_data does; int16."""
    from models.pipeline import kws_data as K

    speakers = K.split_speakers(K.espeak_variants(), MODEL_SPEAKER_SEED)
    only_test = {"train": [], "val": [], "test": speakers["test"]}
    jobs = K._plan(seed, {"train": (0, 0), "val": (0, 0), "test": (per_class, per_class)}, only_test)
    audio = [K.synthesise(word, **params) for _, _, word, params in jobs]
    rng = np.random.default_rng(seed + 1)
    babble = [a for a, j in zip(audio, jobs) if j[1] == K.UNKNOWN]
    clips, labels = [], []
    for a, (_, label, _, _) in zip(audio, jobs):
        if a.size:
            clips.append(K.place(rng, a, babble))
            labels.append(label)
    for _ in range(per_class):
        clips.append(K.silence_clip(rng, babble))
        labels.append(K.SILENCE)
    pcm = [np.clip(np.round(c.astype(np.float64) * 32768.0), -32768, 32767).astype("<i2") for c in clips]
    return pcm, labels


def micropython():
    return shutil.which("micropython") or str(Path(sys.executable).with_name("micropython"))


def vm_features(clips, scale, zero_point):
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for i, c in enumerate(clips):
            p = Path(tmp) / f"{i}.pcm"
            p.write_bytes(c.tobytes())
            paths.append(str(p))
        script = Path(tmp) / "run.py"
        script.write_text(VM_SCRIPT)
        proc = subprocess.run([micropython(), str(script), str(ROOT / "device"), repr(scale), str(zero_point)]
                              + paths, capture_output=True, text=True, check=True, timeout=1800)
    lines = proc.stdout.split()
    assert lines[:2] == ["BACKEND", "viper"], lines[:2]
    return [np.frombuffer(bytes.fromhex(h), np.int8).reshape(49, 10) for h in lines[2:]]


def device_floats(fe, clip, out):
    """The reference kernels under CPython: the int8 codes and the features before quantisation (Q20 -> float)."""
    x = array("h", clip.tobytes())
    values = np.zeros((fe.n_frames, fe.mfcc_count))
    for t in range(fe.n_frames):
        fe.frame(x, t * fe.stride_samples, out, t * fe.mfcc_count)
        for j in range(fe.mfcc_count):
            row = j * fe.mel_bins
            values[t, j] = sum(mfcc_ref.mul30(fe._log_mel[m], fe._dct_h[row + m], fe._dct_l[row + m])
                               for m in range(fe.mel_bins)) / 2.0 ** 20
    return np.frombuffer(bytes(out), np.int8).reshape(fe.n_frames, fe.mfcc_count), values


class _Float32Math:
    """``math`` as a float32 port has it (ESP32 and nRF builds): every result rounded to float32; with NumPy's
    float32 scalars the arithmetic on them stays float32 too."""

    pi = np.float32(math.pi)
    floor = staticmethod(math.floor)
    frexp = staticmethod(math.frexp)

    @staticmethod
    def _f32(fn):
        return staticmethod(lambda x: np.float32(fn(float(np.float32(x)))))


for _name in ("cos", "sin", "log", "sqrt"):
    setattr(_Float32Math, _name, _Float32Math._f32(getattr(math, _name)))


def float32_port_front_end(scale, zero_point):
    """The reference front end with its tables made in float32 arithmetic, as a float32 port makes them."""
    saved = mfcc_tables.math                  # the tables are made in tinyfw.mfcc_tables
    mfcc_tables.math = _Float32Math
    try:
        return device_mfcc.Mfcc(scale, zero_point, backend="ref")
    finally:
        mfcc_tables.math = saved


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-class", type=int, default=20, help="synthetic clips per class (default 20)")
    parser.add_argument("--seed", type=int, default=2026, help="draws of words, voices, placement and noise")
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    parser.add_argument("--clips", metavar="NPZ", help="keep the synthetic clips in this file (made when absent)")
    args = parser.parse_args(argv)
    from models.pipeline import common
    from tinyhost.features.mfcc import mfcc, quantize

    blob = MODEL.read_bytes()
    (scale, zero_point), _ = common.io_quant(blob)
    if args.clips and Path(args.clips).is_file():
        saved = np.load(args.clips)
        synthetic = (list(saved["clips"]), list(saved["labels"]))
    else:
        synthetic = synthetic_clips(args.per_class, args.seed)
        if args.clips:
            np.savez(args.clips, clips=np.stack(synthetic[0]), labels=np.array(synthetic[1]))
    sets = {"shipped WAVs": shipped_clips(), "synthetic, test voices": synthetic}
    interp, _ = common.tflm_interpreter(blob)
    fe = device_mfcc.Mfcc(scale, zero_point, backend="ref")
    fe32 = float32_port_front_end(scale, zero_point)
    out = bytearray(fe.feature_bytes)
    report = {"scale": scale, "zero_point": zero_point, "sets": {}}
    for name, (clips, labels) in sets.items():
        host_f = [mfcc(c / 32768.0) for c in clips]
        host_q = [quantize(f, scale, zero_point) for f in host_f]
        dev_q = vm_features(clips, scale, zero_point)
        float_err = float32_err = 0.0
        float32_q = []
        for c, hf, dq in zip(clips, host_f, dev_q):
            ref_q, values = device_floats(fe, c, out)
            assert (ref_q == dq).all(), "the viper kernels in the VM and the reference kernels differ"
            float_err = max(float_err, float(np.abs(values - hf).max()))
            q32, values32 = device_floats(fe32, c, out)
            float32_q.append(q32.copy())
            float32_err = max(float32_err, float(np.abs(values32 - hf).max()))
        d32 = np.abs(np.stack(float32_q).astype(int) - np.stack(dev_q).astype(int))
        d = np.abs(np.stack(dev_q).astype(int) - np.stack(host_q).astype(int))
        y = np.array(labels)
        pred_host = common.tflm_predict(interp, [q[..., None] for q in host_q]).argmax(axis=1)
        pred_dev = common.tflm_predict(interp, [q[..., None] for q in dev_q]).argmax(axis=1)
        r = {"clips": len(clips), "values": int(d.size), "values_differing": int((d > 0).sum()),
             "largest_difference": int(d.max()), "clips_differing": int((d.reshape(len(clips), -1) > 0).any(1).sum()),
             "largest_float_difference": float_err,
             "top1_host_features": float(np.mean(pred_host == y)),
             "top1_device_features": float(np.mean(pred_dev == y)),
             "predictions_differing": int((pred_host != pred_dev).sum()),
             "float32_tables_values_differing_from_unix": int((d32 > 0).sum()),
             "float32_tables_largest_float_difference": float32_err}
        report["sets"][name] = r
        print(f"{name}: {r['clips']} clips, {r['values']} int8 values: {r['values_differing']} differ "
              f"(largest difference {r['largest_difference']}; {r['clips_differing']} clips); features before "
              f"quantisation within {float_err:.2e} (step {scale:.4f}); top-1 {r['top1_host_features']:.1%} with host "
              f"features, {r['top1_device_features']:.1%} with device features; {r['predictions_differing']} "
              f"predictions differ; with float32 tables (an ESP32's or nRF's) "
              f"{r['float32_tables_values_differing_from_unix']} values differ from the unix port's, features within "
              f"{float32_err:.2e} of the host's")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
