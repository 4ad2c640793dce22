"""Streaming wakeword data and scoring, MLPerf Tiny style (v1.3's streaming wakeword benchmark, docs/streaming.md).

A data set is a folder of WAV files and JSON files listing them as the MLPerf Tiny runner's ``sww_*_test.json``
do: ``[{"wav_file", "sample_rate", "length_sec", "detection_windows": [[start_s, end_s], ...]}]`` (we add
``labels``: the keyword of each window). :func:`make_stream` builds one from the shipped keyword WAVs
(``python -m tinyhost.bench.sww OUT_DIR``): keywords at known, seeded times in noise, deterministic.

:func:`score` applies the benchmark's rule: a detection counts for a keyword when it falls between the keyword's
start and its end + 1 s (each keyword counted once); every other detection is a false positive, and false positives
less than 1 s after another one are one (debounced). (The runner's ``calc_detection_stats`` adds the 1 s twice
-- ``t_stop += delay`` and then ``<= t_stop + delay`` -- so it accepts up to 2 s after the end; this module
follows the rule as the benchmark states it.)
"""

import argparse
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..errors import UsageError

RATE_HZ = 16000
TRUE_POSITIVE_AFTER_S = 1.0        # a detection up to this long after a keyword's end counts for it
DEBOUNCE_S = 1.0                   # false positives closer than this to the previous one count once
KEYWORDS = ("down", "go", "left", "no", "off", "on", "right", "stop", "up", "yes")


@dataclass(frozen=True)
class StreamFile:
    wav_path: Path
    length_s: float
    windows: list                  # [(start_s, end_s), ...]
    labels: list                   # keyword of each window ("" when the file does not say)


@dataclass
class Score:
    true_positives: int
    false_negatives: int
    false_positives: int
    audio_s: float
    latencies_s: list = field(default_factory=list)      # detection time - keyword end, per true positive
    labels_right: int = 0          # true positives whose detected class is the keyword's
    missed: list = field(default_factory=list)           # start_s of each keyword not detected
    false_s: list = field(default_factory=list)          # time of each (debounced) false positive

    @property
    def false_accepts_per_hour(self):
        return self.false_positives * 3600.0 / self.audio_s if self.audio_s else 0.0

    @property
    def mean_latency_s(self):
        return float(np.mean(self.latencies_s)) if self.latencies_s else None

    def to_dict(self):
        d = asdict(self)
        d.update(false_accepts_per_hour=self.false_accepts_per_hour, mean_latency_s=self.mean_latency_s)
        return d


def score(detections, windows, audio_s, labels=(), after_s=TRUE_POSITIVE_AFTER_S, debounce_s=DEBOUNCE_S):
    """``detections``: [(time_s, label), ...] in stream time; ``windows``: [(start_s, end_s), ...]."""
    left = sorted(detections, key=lambda d: d[0])
    tp = fn = right = 0
    latencies, missed = [], []
    for i, (start, end) in enumerate(windows):
        hits = [d for d in left if start <= d[0] <= end + after_s]
        if hits:
            tp += 1
            latencies.append(hits[0][0] - end)
            if i < len(labels) and labels[i] and hits[0][1] == labels[i]:
                right += 1
            left = [d for d in left if d not in hits]
        else:
            fn += 1
            missed.append(start)
    false = []
    for t, _ in left:
        if not false or t > false[-1] + debounce_s:
            false.append(t)
    return Score(tp, fn, len(false), audio_s, latencies, right, missed, false)


def read(directory):
    """The :class:`StreamFile` entries of the JSON files in ``directory`` (MLPerf Tiny's sww_*_test.json form)."""
    root = Path(directory)
    if not root.is_dir():
        raise UsageError(f"no such data set folder: {root}", hint="make one with `python -m tinyhost.bench.sww DIR`")
    files = []
    for js in sorted(root.glob("*.json")):
        try:
            entries = json.loads(js.read_text())
            for e in entries if isinstance(entries, list) else [entries]:
                windows = [(float(a), float(b)) for a, b in e["detection_windows"]]
                labels = list(e.get("labels", [""] * len(windows)))
                files.append(StreamFile(root / e["wav_file"], float(e["length_sec"]), windows, labels))
        except (ValueError, KeyError, TypeError) as err:
            raise UsageError(f"{js} is not a streaming data set file ({err})",
                             hint="each entry needs wav_file, length_sec and detection_windows (docs/streaming.md)")
    if not files:
        raise UsageError(f"{root} holds no streaming data set (*.json with wav_file and detection_windows)",
                         hint="make one with `python -m tinyhost.bench.sww DIR`")
    return files


def _active(clip, frame=320, below_db=20.0):
    """(first, last+1) sample of the part of a clip within ``below_db`` dB of its loudest 20 ms."""
    n = len(clip) // frame
    energy = np.array([np.mean(clip[i * frame:(i + 1) * frame] ** 2) for i in range(n)]) + 1e-12
    db = 10 * np.log10(energy)
    on = np.nonzero(db >= db.max() - below_db)[0]
    return int(on[0] * frame), int((on[-1] + 1) * frame)


def make_stream(out_dir, seconds=60.0, keywords=10, seed=1, wav_dir=None, noise_rms=0.003, name="stream"):
    """Write ``name``.wav (``seconds`` of noise with ``keywords`` of the shipped keyword clips at seeded times, one
    per slot of seconds/keywords) and ``name``.json (MLPerf Tiny's form, plus ``labels``) to ``out_dir``; returns
    the :class:`StreamFile`. The same arguments give the same bytes."""
    from ..features.mfcc import read_wav, write_wav
    from ..paths import models_dir

    wav_dir = Path(wav_dir) if wav_dir else models_dir() / "kws" / "wav"
    if keywords < 1 or seconds < 2.0 * keywords:
        raise UsageError(f"{keywords} keywords do not fit {seconds:g} s (2 s each at least)",
                         hint="give more --seconds or fewer --keywords")
    rng = np.random.default_rng(seed)
    n = int(round(seconds * RATE_HZ))
    audio = rng.normal(0.0, noise_rms, n)
    silence = sorted((wav_dir / "silence").glob("*.wav"))
    if silence:
        bg = read_wav(silence[0], RATE_HZ)
        audio += np.resize(bg, n)
    names = [KEYWORDS[i % len(KEYWORDS)] for i in rng.permutation(max(keywords, len(KEYWORDS)))][:keywords]
    slot = seconds / keywords
    windows, labels = [], []
    for i, word in enumerate(names):
        clips = sorted((wav_dir / word).glob("*.wav"))
        if not clips:
            raise UsageError(f"no WAV for keyword {word!r} in {wav_dir / word}", hint="pass the shipped models/kws/wav")
        clip = read_wav(clips[int(rng.integers(len(clips)))], RATE_HZ)
        a, b = _active(clip)
        # the clip's word starts 0.3 s into its slot at the earliest and ends 0.7 s before the slot's end at latest
        lo = i * slot + 0.3 - a / RATE_HZ
        hi = (i + 1) * slot - 0.7 - b / RATE_HZ
        at = lo + (hi - lo) * float(rng.random()) if hi > lo else lo
        start = int(round(at * RATE_HZ))
        end = min(n, start + len(clip))
        audio[start:end] += clip[:end - start]
        windows.append((round((start + a) / RATE_HZ, 4), round((start + b) / RATE_HZ, 4)))
        labels.append(word)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    wav = out / f"{name}.wav"
    write_wav(wav, np.clip(audio, -1.0, 1.0 - 1 / 32768))
    entry = {"wav_file": wav.name, "sample_rate": RATE_HZ, "length_sec": seconds,
             "detection_windows": [list(w) for w in windows], "labels": labels, "seed": seed}
    (out / f"{name}.json").write_text(json.dumps([entry], indent=2) + "\n")
    return StreamFile(wav, seconds, windows, labels)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m tinyhost.bench.sww",
                                     description="Build a streaming wakeword test file from the shipped keyword WAVs.")
    parser.add_argument("out_dir")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--keywords", type=int, default=10)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--wav-dir", default=None, help="keyword folders of WAVs (default: models/kws/wav)")
    args = parser.parse_args(argv)
    f = make_stream(args.out_dir, args.seconds, args.keywords, args.seed, args.wav_dir)
    print(f"wrote {f.wav_path} ({f.length_s:g} s) and its detection windows:")
    for (a, b), label in zip(f.windows, f.labels):
        print(f"  {a:7.2f} - {b:7.2f} s  {label}")


if __name__ == "__main__":
    main()
