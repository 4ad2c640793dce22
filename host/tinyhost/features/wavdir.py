"""Folders of WAV files as keyword-spotting inputs: ``ROOT/<label>/*.wav`` (the Speech Commands layout)."""

from pathlib import Path

from ..errors import UsageError
from .mfcc import KWS, wav_features


def wav_dataset(root, labels):
    """[(wav path, class index)] for ``root/<label>/*.wav``, sorted; folders that are no label count as
    ``unknown`` when that is a label and are skipped otherwise (``_background_noise_`` always is)."""
    root = Path(root)
    if not root.is_dir():
        raise UsageError(f"no such folder: {root}", hint="give a folder with one sub-folder of WAV files per label")
    labels = list(labels)
    samples = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("_")):
        if folder.name in labels:
            index = labels.index(folder.name)
        elif "unknown" in labels:
            index = labels.index("unknown")
        else:
            continue
        samples.extend((wav, index) for wav in sorted(folder.glob("*.wav")))
    if not samples:
        raise UsageError(f"{root} has no <label>/*.wav files for the labels {', '.join(labels)}",
                         hint="lay the folder out like Speech Commands: ROOT/yes/a.wav, ROOT/no/b.wav, ...")
    return samples


def wav_inputs(root, labels, scale, zero_point, config=KWS):
    """[(input bytes, class index, wav path)]: every WAV through the shared MFCC front end, quantised."""
    return [(wav_features(path, scale, zero_point, config), index, path)
            for path, index in wav_dataset(root, labels)]
