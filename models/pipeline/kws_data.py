"""Keyword-spotting data: synthetic speech from espeak-ng, flite and festival + sox, or Google Speech Commands v2.

Synthetic set (the default, needs the Debian packages in :data:`PACKAGES`): every utterance is one word said by
one of three synthesisers. espeak-ng (half of them): one English accent (en-us, en-gb, Scottish, RP, Lancaster,
West Midlands, Caribbean), one of its voice variants (``+m1``.., ``+f1``.., ``+croak``, ``+whisper`` ... about
100), a random speed (words per minute) and pitch. flite (a quarter): one of its voices (awb, kal, kal16, rms,
slt), a random duration stretch and mean pitch. festival (a quarter): one of kal_diphone, ked_diphone (diphone)
and cmu_us_slt_arctic_hts (HMM), a random duration stretch. Then sox: resampled to 16 kHz, random
high-pass/low-pass "microphone" colour, reverb on some, a pitch shift of up to +-400 cents on 60 %.
A *speaker* is a voice: espeak-ng's variants are split between train, validation and test; flite's and
festival's voices are recordings of five people, split by person (:data:`TEST_PEOPLE` only in the test set), so
the held-out test set is spoken by voices the model never heard, in every engine.
The word is placed at a random offset in 1 s, scaled to a random level and mixed with noise (white, pink,
brown, mains hum, fan, babble of other synthetic words) at a random SNR. ``silence`` clips are noise alone;
``unknown`` clips are other words.

Real data: ``--speech-commands DIR`` reads a Speech Commands v2 folder (``DIR/<word>/*.wav``,
``DIR/_background_noise_/*.wav``, ``validation_list.txt``, ``testing_list.txt``) with its own split.
"""

import hashlib
import logging
import re
import shutil
import subprocess
import tempfile
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


ENGINES = ("espeak-ng", "flite", "festival")
#: Share of the spoken utterances each engine says (espeak-ng has by far the most voices).
ENGINE_SHARE = {"espeak-ng": 0.5, "flite": 0.25, "festival": 0.25}
#: flite's English voices (``awb_time`` is left out: a limited-domain voice that only says clock times).
FLITE_VOICES = ("awb", "kal", "kal16", "rms", "slt")
#: festival's voices from festvox-kallpc16k, festvox-kdlpc16k and festvox-us-slt-hts.
FESTIVAL_VOICES = ("kal_diphone", "ked_diphone", "cmu_us_slt_arctic_hts")
#: flite's and festival's voices are recordings of a few people; voices of one person stay in one split
#: (flite's kal and kal16 and festival's kal_diphone are all Kevin's, both slt voices are the same woman's).
PERSON = {"flite:awb": "awb", "flite:kal": "kal", "flite:kal16": "kal", "festival:kal_diphone": "kal",
          "flite:rms": "rms", "festival:ked_diphone": "ked", "flite:slt": "slt",
          "festival:cmu_us_slt_arctic_hts": "slt"}
#: The people whose voices are held out for the test split (each engine keeps a voice never heard in training).
TEST_PEOPLE = ("rms", "ked")
#: Debian packages the synthetic set needs.
PACKAGES = ("espeak-ng", "sox", "flite", "festival", "festvox-kallpc16k", "festvox-kdlpc16k", "festvox-us-slt-hts")
#: Extra training utterances (per keyword, unknown) said by the training people's voices (flite's and festival's
#: training voices), rendered with wider ranges than the others (:func:`_people_plan`): the held-out people are
#: heard through those engines, and three people are all the training set has of them.
PEOPLE_EXTRA = (250, 500)


def espeak_variants():
    """The voice variants installed with espeak-ng, sorted (e.g. ``["Alex", ..., "f1", ..., "m1", ...]``)."""
    out = subprocess.run(["espeak-ng", "--version"], capture_output=True, text=True, check=True).stdout
    match = re.search(r"Data at:\s*(\S+)", out)
    folder = Path(match.group(1)) / "voices" / "!v" if match else None
    if folder is None or not folder.is_dir():
        return ["m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "croak", "whisper"]
    return sorted(p.name for p in folder.iterdir() if p.is_file())


def check_engines():
    """Refuse to start when a synthesiser or one of its voices is missing, naming the Debian packages."""
    missing = [cmd for cmd in ("espeak-ng", "sox", "flite", "festival") if shutil.which(cmd) is None]
    if not missing:
        flite = subprocess.run(["flite", "-lv"], capture_output=True, text=True).stdout.split()
        missing += [f"flite voice {v}" for v in FLITE_VOICES if v not in flite]
        probe = "".join(f'(print (member (quote {v}) (voice.list)))' for v in FESTIVAL_VOICES)
        out = subprocess.run(["festival", "--batch", f"(begin {probe})"], capture_output=True, text=True).stdout
        missing += [f"festival voice {v}" for v, line in zip(FESTIVAL_VOICES, out.splitlines() + [""] * 3)
                    if line.strip() in ("", "nil")]
    if missing:
        raise SystemExit(f"pipeline: missing {', '.join(missing)} — apt-get install {' '.join(PACKAGES)}")


def split_speakers(variants, seed, fractions=(0.7, 0.1, 0.2)):
    """Voices per split, as ``engine:voice``: espeak-ng's variants shuffled with ``seed`` and cut into train /
    val / test groups; flite's and festival's voices by person (:data:`TEST_PEOPLE` to test, the others train
    and validation: too few people to keep a third group apart)."""
    rng = np.random.default_rng(seed)
    order = [f"espeak-ng:{v}" for v in rng.permutation(sorted(variants))]
    n_train = int(round(fractions[0] * len(order)))
    n_val = int(round(fractions[1] * len(order)))
    split = {"train": order[:n_train], "val": order[n_train:n_train + n_val], "test": order[n_train + n_val:]}
    for voice, person in PERSON.items():
        if person in TEST_PEOPLE:
            split["test"].append(voice)
        else:
            split["train"].append(voice)
            split["val"].append(voice)
    return split


def engine_of(voice):
    return voice.split(":", 1)[0]


def _sox(wav_bytes, highpass_hz, lowpass_hz, reverb, shift_cents):
    # Resampled first, so the filters work on 16 kHz whatever the voice's rate (kal is 8 kHz); the pitch shift
    # after them (sox would resample again before a filter that follows it).
    effects = ["rate", str(SAMPLE_RATE_HZ), "highpass", str(highpass_hz), "lowpass", str(lowpass_hz)]
    effects += ["pitch", str(shift_cents)] if shift_cents else []
    if reverb:
        effects += ["reverb", str(reverb), "50", "60"]
    raw = subprocess.run(["sox", "-V1", "-R", "-t", "wav", "-", "-t", "raw", "-e", "floating-point", "-b", "32",
                          "-c", "1", "-r", str(SAMPLE_RATE_HZ), "-", *effects],
                         input=wav_bytes, capture_output=True, check=True).stdout
    return trim(np.frombuffer(raw, "<f4").astype(np.float32))


def synthesise(word, voice, highpass_hz, lowpass_hz, reverb, shift_cents=0, accent="en-us", speed_wpm=175,
               pitch=50, stretch=1.0, f0_hz=None, f0_std_hz=None, wav=None):
    """One word from its engine through sox: float32 samples at 16 kHz (leading/trailing silence trimmed).

    espeak-ng takes ``accent``, ``speed_wpm`` and ``pitch``; flite ``stretch`` (duration) and ``f0_hz`` (mean
    pitch); festival's words come pre-rendered in ``wav`` (:func:`_festival_batch`, one process per voice, which
    takes ``stretch`` and, for the diphone voices, ``f0_hz`` and ``f0_std_hz``).
    """
    engine, name = voice.split(":", 1)
    if engine == "espeak-ng":
        wav = subprocess.run(["espeak-ng", "-v", f"{accent}+{name}", "-s", str(speed_wpm), "-p", str(pitch),
                              "--stdout", word], capture_output=True, check=True).stdout
    elif engine == "flite":
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "w.wav"
            subprocess.run(["flite", "-voice", name, "--setf", f"duration_stretch={stretch}",
                            "--setf", f"int_f0_target_mean={f0_hz}", "-t", word, "-o", str(out)],
                           capture_output=True, check=True)
            wav = out.read_bytes()
    return _sox(wav, highpass_hz, lowpass_hz, reverb, shift_cents)


def _festival_batch(jobs, folder):
    """Render festival's utterances of ``jobs`` [(index, word, params)] with one festival process per voice into
    ``folder/<index>.wav``; returns {index: wav bytes}."""
    by_voice = {}
    for i, word, p in jobs:
        by_voice.setdefault(p["voice"].split(":", 1)[1], []).append((i, word, p))
    out = {}

    def run(voice, items):
        lines = [f"(voice_{voice})"]
        for i, word, p in items:
            lines.append(f"(Parameter.set 'Duration_Stretch {p['stretch']})")
            if p.get("f0_hz"):
                # diphone voices' intonation targets (the HMM voice makes its own F0 and ignores them)
                lines.append(f"(set! int_lr_params '((target_f0_mean {p['f0_hz']}) (target_f0_std "
                             f"{p['f0_std_hz']}) (model_f0_mean 170) (model_f0_std 34)))")
            lines.append(f'(utt.save.wave (utt.synth (Utterance Text "{word}")) "{folder}/{i}.wav" \'riff)')
        script = Path(folder) / f"{voice}.scm"
        script.write_text("\n".join(lines) + "\n")
        subprocess.run(["festival", "--batch", str(script)], capture_output=True, check=True)

    with ThreadPoolExecutor(max_workers=2) as pool:
        list(pool.map(lambda kv: run(*kv), by_voice.items()))
    for i, _, _ in jobs:
        out[i] = (Path(folder) / f"{i}.wav").read_bytes()
    return out


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

def _plan(seed, counts, speakers, engines=ENGINES):
    """Deterministic list of (split, label, word, synthesis parameters) for every utterance to synthesise."""
    rng = np.random.default_rng(seed)
    share = np.array([ENGINE_SHARE[e] for e in engines])
    share = share / share.sum()
    jobs = []
    for split in SPLITS:
        per_keyword, n_unknown = counts[split]
        voices = {e: [v for v in speakers[split] if engine_of(v) == e] for e in engines}
        for label in range(len(LABELS)):
            if label == SILENCE:
                continue
            n = n_unknown if label == UNKNOWN else per_keyword
            for _ in range(n):
                word = UNKNOWN_WORDS[rng.integers(len(UNKNOWN_WORDS))] if label == UNKNOWN else LABELS[label]
                engine = engines[rng.choice(len(engines), p=share)]
                params = dict(voice=voices[engine][rng.integers(len(voices[engine]))],
                              highpass_hz=int(rng.integers(40, 300)), lowpass_hz=int(rng.integers(3500, 7900)),
                              reverb=int(rng.choice([0, 0, 0, 20, 40, 60])),
                              shift_cents=int(rng.integers(-400, 401)) if rng.random() < 0.6 else 0)
                if engine == "espeak-ng":
                    params.update(accent=ACCENTS[rng.integers(len(ACCENTS))], speed_wpm=int(rng.integers(110, 230)),
                                  pitch=int(rng.integers(15, 85)))
                else:
                    params.update(stretch=round(float(rng.uniform(0.75, 1.4)), 2))
                    if engine == "flite":
                        params.update(f0_hz=int(rng.integers(80, 200)))
                jobs.append((split, label, word, params))
    return jobs


def _people_plan(seed, counts, speakers):
    """Extra training utterances ``(per keyword, unknown)`` by the training split's flite and festival voices
    (the people of :data:`PERSON` not held out), the engines picked by :data:`ENGINE_SHARE`: wider stretch,
    pitch, pitch-shift (it moves the formants too: a stand-in for other vocal tracts) and band limits than
    :func:`_plan`. Its own random stream, so the other utterances and every test clip stay what they are."""
    rng = np.random.default_rng([seed, 2])
    engines = [e for e in ENGINES if e != "espeak-ng"]
    share = np.array([ENGINE_SHARE[e] for e in engines])
    share = share / share.sum()
    voices = {e: [v for v in speakers["train"] if engine_of(v) == e] for e in engines}
    per_keyword, n_unknown = counts
    jobs = []
    for label in range(len(LABELS)):
        if label == SILENCE:
            continue
        for _ in range(n_unknown if label == UNKNOWN else per_keyword):
            word = UNKNOWN_WORDS[rng.integers(len(UNKNOWN_WORDS))] if label == UNKNOWN else LABELS[label]
            engine = engines[rng.choice(len(engines), p=share)]
            jobs.append(("train", label, word, dict(
                voice=voices[engine][rng.integers(len(voices[engine]))],
                highpass_hz=int(rng.integers(40, 400)), lowpass_hz=int(rng.integers(3200, 7900)),
                reverb=int(rng.choice([0, 0, 20, 40, 60, 80])),
                shift_cents=int(rng.integers(-600, 601)) if rng.random() < 0.8 else 0,
                stretch=round(float(rng.uniform(0.65, 1.5)), 2), f0_hz=int(rng.integers(70, 240)),
                **({"f0_std_hz": int(rng.integers(5, 40))} if engine == "festival" else {}))))
    return jobs


def synthetic(seed, counts, silence_counts, augment_copies=2, workers=2, people_extra=PEOPLE_EXTRA):
    """Synthetic clips per split: ``{"train": (clips float32 (n, 16000), labels, sources), ...}``.

    ``counts[split] = (utterances per keyword, unknown utterances)``; ``silence_counts[split]`` noise-only clips;
    each training utterance is placed ``augment_copies`` times (different offsets, levels, noise);
    ``people_extra`` adds training utterances by the training people's voices (:func:`_people_plan`, placed
    after all the others with their own random stream). ``sources`` names each clip's engine (``noise`` for
    silence). Also returns the voices of each split.
    """
    check_engines()
    speakers = split_speakers(espeak_variants(), seed)
    jobs = _plan(seed, counts, speakers)
    extra = _people_plan(seed, people_extra, speakers) if people_extra and any(people_extra) else []
    log.info("synthesising %d + %d utterances with %s + sox (%d train / %d val / %d test voices)", len(jobs),
             len(extra), ", ".join(ENGINES), *(len(speakers[s]) for s in SPLITS))
    with tempfile.TemporaryDirectory() as tmp:
        # festival in two batches: the extra utterances set intonation targets that would carry over
        festival = _festival_batch([(i, j[2], j[3]) for i, j in enumerate(jobs)
                                    if engine_of(j[3]["voice"]) == "festival"], tmp)
        festival.update(_festival_batch([(len(jobs) + i, j[2], j[3]) for i, j in enumerate(extra)
                                         if engine_of(j[3]["voice"]) == "festival"], tmp))
        with ThreadPoolExecutor(max_workers=workers) as pool:
            audio = list(pool.map(lambda ij: synthesise(ij[1][2], **ij[1][3], wav=festival.get(ij[0])),
                                  enumerate(jobs + extra)))
    rng = np.random.default_rng(seed + 1)
    data = {}
    for split in SPLITS:
        pool_idx = [i for i, j in enumerate(jobs) if j[0] == split and j[1] == UNKNOWN]
        babble_pool = [audio[i] for i in pool_idx]
        clips, labels, sources = [], [], []
        copies = augment_copies if split == "train" else 1
        for i, (s, label, _, params) in enumerate(jobs):
            if s != split or audio[i].size == 0:
                continue
            for _ in range(copies):
                clips.append(place(rng, audio[i], babble_pool))
                labels.append(label)
                sources.append(engine_of(params["voice"]))
        for _ in range(silence_counts[split] * copies):
            clips.append(silence_clip(rng, babble_pool))
            labels.append(SILENCE)
            sources.append("noise")
        if split == "train" and extra:
            extra_rng = np.random.default_rng([seed, 3])
            for i, (_, label, _, params) in enumerate(extra, start=len(jobs)):
                for _ in range(copies if audio[i].size else 0):
                    clips.append(place(extra_rng, audio[i], babble_pool))
                    labels.append(label)
                    sources.append(engine_of(params["voice"]))
        data[split] = (np.stack(clips), np.array(labels, dtype=np.int64), np.array(sources))
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
        labels = np.array(labels, dtype=np.int64)
        data[split] = (np.stack(clips), labels, np.where(labels == SILENCE, "noise", "speech-commands"))
    return data


def features(clips, config=KWS):
    """MFCCs of clips: ``(n, 49, 10)`` float32, with the shared front end."""
    return np.stack([mfcc(c, config) for c in clips]).astype(np.float32)


def fingerprint(arrays):
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:16]
