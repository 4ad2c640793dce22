"""Keyword-spotting data: synthetic speech from espeak-ng + sox, or Google Speech Commands v2 when present.

Synthetic set (the default, needs Debian's ``espeak-ng`` and ``sox``): every utterance is one word spoken by
espeak-ng with one English accent (en-us, en-gb, Scottish, RP, Lancaster, West Midlands, Caribbean) and one of
its voice variants (``+m1``.., ``+f1``.., ``+croak``, ``+whisper`` ... about 100), at a random speed (words per
minute) and pitch, then passed through sox (resampled to 16 kHz, random high-pass/low-pass "microphone" colour,
reverb on some, a pitch shift of up to +-400 cents on 60 %). A *speaker* is a voice variant: variants are
split between train, validation and test, so the held-out test set is spoken by voices the model never heard.
The word is placed at a random offset in 1 s, scaled to a random level and mixed with noise (white, pink,
brown, mains hum, fan, babble of other synthetic words) at a random SNR. ``silence`` clips are noise alone;
``unknown`` clips are other words.

Real data: ``--speech-commands DIR`` reads a Speech Commands v2 folder (``DIR/<word>/*.wav``,
``DIR/_background_noise_/*.wav``, ``validation_list.txt``, ``testing_list.txt``) with its own split.
"""

import hashlib
import logging
import re
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from tinyhost.features.mfcc import KWS, mfcc, read_wav

log = logging.getLogger("pipeline.kws")

SAMPLE_RATE_HZ = 16000
CLIP_SAMPLES = 16000
KEYWORDS = ("down", "go", "left", "no", "off", "on", "right", "stop", "up", "yes")
#: Class order of MLPerf Tiny's kws01 (so class indices mean the same for the official and the shipped model).
LABELS = KEYWORDS + ("silence", "unknown")
SILENCE, UNKNOWN = LABELS.index("silence"), LABELS.index("unknown")
#: Non-keywords for the ``unknown`` class: the 25 other words of Speech Commands v2 (no homophones of keywords
#: such as "know" or "write", no words containing a keyword, as in the real data set).
UNKNOWN_WORDS = ("backward", "bed", "bird", "cat", "dog", "eight", "five", "follow", "forward", "four", "happy",
                 "house", "learn", "marvin", "nine", "one", "seven", "sheila", "six", "three", "tree", "two",
                 "visual", "wow", "zero")
ACCENTS = ("en-us", "en", "en-gb-scotland", "en-gb-x-rp", "en-gb-x-gbclan", "en-gb-x-gbcwmd", "en-029")
SPLITS = ("train", "val", "test")


def espeak_variants():
    """The voice variants installed with espeak-ng, sorted (e.g. ``["Alex", ..., "f1", ..., "m1", ...]``)."""
    out = subprocess.run(["espeak-ng", "--version"], capture_output=True, text=True, check=True).stdout
    match = re.search(r"Data at:\s*(\S+)", out)
    folder = Path(match.group(1)) / "voices" / "!v" if match else None
    if folder is None or not folder.is_dir():
        return ["m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "croak", "whisper"]
    return sorted(p.name for p in folder.iterdir() if p.is_file())


def split_speakers(variants, seed, fractions=(0.7, 0.1, 0.2)):
    """Variants shuffled with ``seed`` and cut into train / val / test groups."""
    rng = np.random.default_rng(seed)
    order = list(rng.permutation(sorted(variants)))
    n_train = int(round(fractions[0] * len(order)))
    n_val = int(round(fractions[1] * len(order)))
    return {"train": order[:n_train], "val": order[n_train:n_train + n_val], "test": order[n_train + n_val:]}


def synthesise(word, accent, variant, speed_wpm, pitch, highpass_hz, lowpass_hz, reverb, shift_cents=0):
    """One word from espeak-ng through sox: float32 samples at 16 kHz (leading/trailing silence trimmed)."""
    speech = subprocess.run(["espeak-ng", "-v", f"{accent}+{variant}", "-s", str(speed_wpm), "-p", str(pitch),
                             "--stdout", word], capture_output=True, check=True).stdout
    effects = ["pitch", str(shift_cents)] if shift_cents else []
    effects += ["highpass", str(highpass_hz), "lowpass", str(lowpass_hz)]
    if reverb:
        effects += ["reverb", str(reverb), "50", "60"]
    raw = subprocess.run(["sox", "-V1", "-R", "-t", "wav", "-", "-t", "raw", "-e", "floating-point", "-b", "32",
                          "-c", "1", "-r", str(SAMPLE_RATE_HZ), "-", *effects],
                         input=speech, capture_output=True, check=True).stdout
    audio = np.frombuffer(raw, "<f4").astype(np.float32)
    return trim(audio)


def trim(audio, threshold=0.02):
    loud = np.flatnonzero(np.abs(audio) > threshold * (np.abs(audio).max() + 1e-9))
    if loud.size == 0:
        return audio[:0]
    return audio[max(0, loud[0] - 160):loud[-1] + 160]


# -- noise ------------------------------------------------------------------------------------------------------

def _coloured(rng, exponent, n=CLIP_SAMPLES):
    spectrum = np.fft.rfft(rng.standard_normal(n))
    f = np.arange(spectrum.size, dtype=np.float64)
    f[0] = 1.0
    x = np.fft.irfft(spectrum / f ** (exponent / 2.0), n=n)
    return x / (np.std(x) + 1e-12)


def noise(rng, kind, babble_pool=()):
    """1 s of unit-RMS noise of ``kind``: white, pink, brown, hum, fan or babble."""
    n = CLIP_SAMPLES
    if kind == "white":
        x = rng.standard_normal(n)
    elif kind == "pink":
        x = _coloured(rng, 1.0)
    elif kind == "brown":
        x = _coloured(rng, 2.0)
    elif kind == "hum":
        t = np.arange(n) / SAMPLE_RATE_HZ
        mains = rng.choice([50.0, 60.0])
        x = sum(rng.uniform(0.2, 1.0) / h * np.sin(2 * np.pi * mains * h * t + rng.uniform(0, 6.3))
                for h in range(1, 8)) + 0.05 * rng.standard_normal(n)
    elif kind == "fan":
        x = _coloured(rng, 1.5) * (1.0 + 0.3 * np.sin(2 * np.pi * rng.uniform(2, 20) * np.arange(n) / n))
    elif kind == "babble" and len(babble_pool):
        x = np.zeros(n)
        for _ in range(rng.integers(3, 7)):
            clip = babble_pool[rng.integers(len(babble_pool))][:n]
            start = rng.integers(0, n - clip.size + 1)
            x[start:start + clip.size] += clip * rng.uniform(0.3, 1.0)
    else:
        x = rng.standard_normal(n)
    return (x / (np.sqrt(np.mean(x ** 2)) + 1e-12)).astype(np.float32)


NOISE_KINDS = ("white", "pink", "brown", "hum", "fan", "babble")


def place(rng, speech, babble_pool, noise_probability=0.85, snr_db=(5.0, 30.0)):
    """Speech at a random offset in 1 s, random level, noise mixed at a random SNR; float32 in [-1, 1]."""
    if speech.size > CLIP_SAMPLES:
        start = (speech.size - CLIP_SAMPLES) // 2
        speech = speech[start:start + CLIP_SAMPLES]
    clip = np.zeros(CLIP_SAMPLES, dtype=np.float32)
    offset = rng.integers(0, CLIP_SAMPLES - speech.size + 1)
    clip[offset:offset + speech.size] = speech
    clip *= rng.uniform(0.1, 0.9) / (np.abs(clip).max() + 1e-9)
    if rng.random() < noise_probability:
        rms = np.sqrt(np.mean(speech_part(clip) ** 2)) + 1e-9
        level = rms / 10 ** (rng.uniform(*snr_db) / 20.0)
        clip = clip + level * noise(rng, rng.choice(NOISE_KINDS), babble_pool)
    return np.clip(clip, -1.0, 1.0).astype(np.float32)


def speech_part(clip):
    loud = np.abs(clip) > 0.02 * (np.abs(clip).max() + 1e-9)
    return clip[loud] if loud.any() else clip


def silence_clip(rng, babble_pool):
    """A ``silence`` sample: noise alone at a random level from near-digital silence to loud background."""
    if rng.random() < 0.05:
        return np.zeros(CLIP_SAMPLES, dtype=np.float32)
    level = 10 ** rng.uniform(-4.0, -1.0)
    return np.clip(level * noise(rng, rng.choice(NOISE_KINDS), babble_pool), -1, 1).astype(np.float32)


# -- the synthetic data set ----------------------------------------------------------------------------------

def _plan(seed, counts, speakers):
    """Deterministic list of (split, label, word, synthesis parameters) for every utterance to synthesise."""
    rng = np.random.default_rng(seed)
    jobs = []
    for split in SPLITS:
        per_keyword, n_unknown = counts[split]
        for label in range(len(LABELS)):
            if label == SILENCE:
                continue
            n = n_unknown if label == UNKNOWN else per_keyword
            for _ in range(n):
                word = UNKNOWN_WORDS[rng.integers(len(UNKNOWN_WORDS))] if label == UNKNOWN else LABELS[label]
                params = dict(accent=ACCENTS[rng.integers(len(ACCENTS))],
                              variant=speakers[split][rng.integers(len(speakers[split]))],
                              speed_wpm=int(rng.integers(110, 230)), pitch=int(rng.integers(15, 85)),
                              highpass_hz=int(rng.integers(40, 300)), lowpass_hz=int(rng.integers(3500, 7900)),
                              reverb=int(rng.choice([0, 0, 0, 20, 40, 60])),
                              shift_cents=int(rng.integers(-400, 401)) if rng.random() < 0.6 else 0)
                jobs.append((split, label, word, params))
    return jobs


def synthetic(seed, counts, silence_counts, augment_copies=2, workers=2):
    """Synthetic clips per split: ``{"train": (clips float32 (n, 16000), labels), ...}``.

    ``counts[split] = (utterances per keyword, unknown utterances)``; ``silence_counts[split]`` noise-only clips;
    each training utterance is placed ``augment_copies`` times (different offsets, levels, noise).
    """
    speakers = split_speakers(espeak_variants(), seed)
    jobs = _plan(seed, counts, speakers)
    log.info("synthesising %d utterances with espeak-ng + sox (%d train / %d val / %d test voices)",
             len(jobs), *(len(speakers[s]) for s in SPLITS))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        audio = list(pool.map(lambda j: synthesise(j[2], **j[3]), jobs))
    rng = np.random.default_rng(seed + 1)
    data = {}
    for split in SPLITS:
        pool_idx = [i for i, j in enumerate(jobs) if j[0] == split and j[1] == UNKNOWN]
        babble_pool = [audio[i] for i in pool_idx]
        clips, labels = [], []
        copies = augment_copies if split == "train" else 1
        for i, (s, label, _, _) in enumerate(jobs):
            if s != split or audio[i].size == 0:
                continue
            for _ in range(copies):
                clips.append(place(rng, audio[i], babble_pool))
                labels.append(label)
        for _ in range(silence_counts[split] * copies):
            clips.append(silence_clip(rng, babble_pool))
            labels.append(SILENCE)
        data[split] = (np.stack(clips), np.array(labels, dtype=np.int64))
    return data, speakers


# -- Speech Commands v2 ------------------------------------------------------------------------------------

def _which_split(relative, val_set, test_set):
    if relative in test_set:
        return "test"
    if relative in val_set:
        return "val"
    return "train"


def speech_commands(root, seed, max_per_class=None, silence_fraction=0.1, unknown_fraction=0.1):
    """Clips from a Google Speech Commands v2 folder, split by its own validation/testing lists."""
    root = Path(root)
    if not (root / "testing_list.txt").is_file():
        raise SystemExit(f"pipeline: {root} does not look like Speech Commands v2 (no testing_list.txt)")
    val_set = set((root / "validation_list.txt").read_text().split())
    test_set = set((root / "testing_list.txt").read_text().split())
    rng = np.random.default_rng(seed)
    files = {s: {label: [] for label in range(len(LABELS))} for s in SPLITS}
    for wav in sorted(root.glob("*/*.wav")):
        word = wav.parent.name
        if word.startswith("_"):
            continue
        label = LABELS.index(word) if word in KEYWORDS else UNKNOWN
        rel = f"{word}/{wav.name}"
        files[_which_split(rel, val_set, test_set)][label].append(wav)
    backgrounds = [read_wav(p) for p in sorted((root / "_background_noise_").glob("*.wav"))]
    data = {}
    for split in SPLITS:
        clips, labels = [], []
        n_keywords = sum(len(files[split][k]) for k in range(len(KEYWORDS)))
        for label, paths in files[split].items():
            if label == UNKNOWN:
                limit = max(1, int(unknown_fraction * n_keywords / (1 - unknown_fraction - silence_fraction)))
                paths = [paths[i] for i in rng.permutation(len(paths))[:limit]]
            if max_per_class:
                paths = paths[:max_per_class]
            for p in paths:
                clip = np.zeros(CLIP_SAMPLES, np.float32)
                audio = read_wav(p)[:CLIP_SAMPLES]
                clip[:audio.size] = audio
                clips.append(clip)
                labels.append(label)
        n_silence = int(silence_fraction * len(clips))
        for _ in range(n_silence):
            bg = backgrounds[rng.integers(len(backgrounds))] if backgrounds else np.zeros(CLIP_SAMPLES)
            start = rng.integers(0, max(1, bg.size - CLIP_SAMPLES))
            clip = np.zeros(CLIP_SAMPLES, np.float32)
            seg = bg[start:start + CLIP_SAMPLES] * rng.uniform(0.0, 1.0)
            clip[:seg.size] = seg
            clips.append(clip)
            labels.append(SILENCE)
        data[split] = (np.stack(clips), np.array(labels, dtype=np.int64))
    return data


def features(clips, config=KWS):
    """MFCCs of clips: ``(n, 49, 10)`` float32, with the shared front end."""
    return np.stack([mfcc(c, config) for c in clips]).astype(np.float32)


def fingerprint(arrays):
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:16]
