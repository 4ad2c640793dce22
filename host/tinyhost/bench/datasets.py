"""Test sets for accuracy runs: the MLPerf Tiny layout, and folders of WAV files (KWS) or images (VWW, IC).

MLPerf Tiny layout: a folder with ``y_labels.csv`` (no header; rows ``file,n_classes,class[,window_bytes,stride]``)
and one binary file per sample: kws01 49x10 int8 MFCC, vww01 96x96x3 uint8 RGB, ic01 32x32x3 uint8 RGB, ad01
float32 little-endian frames cut into windows of ``window_bytes`` every ``stride`` bytes (each window is one
inference; a file's score is the mean over its windows). ``DIR`` may also be the parent holding ``kws01/`` etc.,
as the MLPerf Tiny runner's ``--dataset_path`` does.

Every inference is an :class:`Item` with a stable ``index``: the accuracy journal records items by that index.

A test set of precomputed features may say how they were made in ``features.json`` beside ``y_labels.csv``
(:class:`FeatureSettings`: the model they were made for, the MFCC front end, the scale and zero point they were
quantized with); :func:`feature_mismatches` compares that with what a model expects.
"""

import csv
import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UsageError

BENCHMARKS = ("kws01", "vww01", "ic01", "ad01")
# benchmark -> (raw sample dtype in the MLPerf Tiny files, element count of one model input)
SAMPLE_FORMAT = {"kws01": ("int8", 49 * 10), "vww01": ("uint8", 96 * 96 * 3), "ic01": ("uint8", 32 * 32 * 3),
                 "ad01": ("float32", 640)}
# Class names in the order of the reference models' outputs (mlcommons/tiny training scripts).
CLASS_NAMES = {
    "kws01": ("down", "go", "left", "no", "off", "on", "right", "stop", "up", "yes", "silence", "unknown"),
    "vww01": ("non_person", "person"),
    "ic01": ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
    "ad01": ("normal", "anomaly"),
}
_WAV = (".wav",)
FEATURES_FILE = "features.json"
# Quantisation scales this close count as the same: the samples' int8 codes differ by a rounding step at most.
_SCALE_TOLERANCE = 0.01
_IMAGES = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".gif")
# An image larger than this is refused before it is decoded (a 200-megapixel PNG would take GBs of RAM).
MAX_IMAGE_PIXELS = 50_000_000


@dataclass(frozen=True)
class Item:
    index: int            # position in the run; the journal's key
    file: str             # path relative to the dataset folder
    file_index: int       # which file (ad01 windows of one file share it)
    window: int           # window number inside the file (0 for whole-file samples)
    label: int
    offset: int = 0
    nbytes: int = -1      # -1: the whole file


@dataclass(frozen=True)
class FeatureSettings:
    """How a test set's precomputed samples were made (its ``features.json``)."""
    made_for: str = ""                 # the model they were made for (a name, e.g. "kws"), "" when not said
    mfcc: object = None                # tinyhost.features.MfccConfig of MFCC samples
    input_quant: tuple = None          # (scale, zero_point) the samples were quantized with

    def to_dict(self):
        d = {"made_for": self.made_for}
        if self.mfcc is not None:
            d["front_end"] = "mfcc"
            d["mfcc"] = dataclasses.asdict(self.mfcc)
        if self.input_quant is not None:
            d["input_scale"], d["input_zero_point"] = self.input_quant
        return d


def write_feature_settings(directory, settings):
    """Write ``settings`` as ``features.json`` into the test set folder ``directory``."""
    path = Path(directory) / FEATURES_FILE
    tmp = path.with_name(path.name + ".part")
    tmp.write_text(json.dumps(settings.to_dict(), indent=2) + "\n")
    tmp.replace(path)


def read_feature_settings(root):
    """The test set's :class:`FeatureSettings` from its ``features.json``, or None when it has none."""
    from ..features import MfccConfig

    path = Path(root) / FEATURES_FILE
    if not path.is_file():
        return None
    try:
        d = json.loads(path.read_text())
        mfcc = MfccConfig(**d["mfcc"]) if "mfcc" in d else None
        quant = ((float(d["input_scale"]), int(d["input_zero_point"])) if "input_scale" in d else None)
        return FeatureSettings(str(d.get("made_for", "")), mfcc, quant)
    except (ValueError, TypeError, KeyError) as e:
        raise UsageError(f"{path} is not a valid feature description: {e}",
                         hint=f"fix or delete {FEATURES_FILE} (it only describes how the samples were made)") \
            from None


def feature_mismatches(settings, model_mfcc=None, input_tensor=None):
    """Why a test set's samples do not fit a model (a list of sentences; empty when nothing known differs).

    ``model_mfcc``: the MFCC front end the model was trained with, when known; ``input_tensor`` (.dtype .scale
    .zero_point): the model's input, whose quantisation the samples' must match."""
    if settings is None:
        return []
    reasons = []
    if settings.mfcc is not None and model_mfcc is not None and settings.mfcc != model_mfcc:
        diff = ", ".join(f"{f.name} {getattr(settings.mfcc, f.name)} (model: {getattr(model_mfcc, f.name)})"
                         for f in dataclasses.fields(model_mfcc)
                         if getattr(settings.mfcc, f.name) != getattr(model_mfcc, f.name))
        reasons.append(f"its MFCCs were computed with another front end: {diff}")
    if settings.input_quant is not None and input_tensor is not None and input_tensor.dtype in ("int8", "uint8"):
        scale, zero_point = settings.input_quant
        if (zero_point != input_tensor.zero_point
                or abs(scale - input_tensor.scale) > _SCALE_TOLERANCE * abs(input_tensor.scale)):
            reasons.append(f"its samples were quantized with scale {scale:g}, zero point {zero_point} (model input: "
                           f"scale {input_tensor.scale:g}, zero point {input_tensor.zero_point})")
    return reasons


@dataclass
class Dataset:
    root: Path
    benchmark: str                     # kws01|vww01|ic01|ad01, or "" when unknown
    layout: str                        # "mlperf", "wav" or "images"
    n_classes: int
    sample_dtype: str                  # dtype of the bytes read(): int8, uint8 or float32 (WAV: float32 features)
    items: list
    files: list = field(default_factory=list)     # relative paths, file_index order
    class_names: tuple = ()
    input_quant: tuple = None          # (scale, zero_point) of an int8 model input: WAV features are quantized to it
    mfcc_config: object = None         # tinyhost.features.MfccConfig for WAV files (default: features.KWS)
    feature_settings: object = None    # FeatureSettings from features.json (precomputed samples), or None

    def __len__(self):
        return len(self.items)

    def read(self, item):
        """The sample's bytes in ``sample_dtype`` (features already computed for WAV and image folders)."""
        path = self.root / item.file
        if self.layout == "wav":
            return _wav_features(path, None if self.sample_dtype == "float32" else self.input_quant,
                                 self.mfcc_config, self.sample_dtype == "float32")
        if self.layout == "images":
            return _image_pixels(path, self.benchmark)
        try:
            with open(path, "rb") as f:
                f.seek(item.offset)
                data = f.read() if item.nbytes < 0 else f.read(item.nbytes)
        except OSError as e:
            raise UsageError(f"cannot read sample {path}: {e.strerror}",
                             hint="check the dataset folder (y_labels.csv names files next to it)") from None
        if item.nbytes >= 0 and len(data) != item.nbytes:
            raise UsageError(f"sample {path} is shorter than y_labels.csv says",
                             hint="re-create the dataset files")
        return data

    def check(self, output_elements=None):
        """Look at every sample before the first inference; raise UsageError naming the bad files (the first few,
        and how many in all): a sample that cannot be read, an empty one, a WAV that is not PCM or has no samples,
        an image that does not decode or is too large, and labels whose n_classes is not the model's number of
        outputs (``output_elements``, when given; anomaly detection's outputs are a reconstruction, not
        classes)."""
        if output_elements is not None and self.benchmark != "ad01" and self.n_classes != output_elements \
                and not any(it.nbytes >= 0 for it in self.items):
            where = "y_labels.csv says" if self.layout == "mlperf" else "the class folders give"
            raise UsageError(f"{where} {self.n_classes} classes in {self.root}, but the model has {output_elements} "
                             "outputs", hint="give the test set made for this model")
        bad = []
        for name in dict.fromkeys(it.file for it in self.items):
            reason = _sample_fault(self.root / name, self.layout)
            if reason:
                bad.append(f"{name} ({reason})")
        if bad:
            shown = "; ".join(bad[:5]) + (f"; and {len(bad) - 5} more" if len(bad) > 5 else "")
            raise UsageError(f"{len(bad)} bad sample file(s) in {self.root}: {shown}",
                             hint="remove or replace them (nothing was run)")

    def fingerprint(self):
        """sha256 over the list of items and their labels: identifies the set in the journal."""
        h = hashlib.sha256(f"{self.benchmark}|{self.layout}|{self.n_classes}\n".encode())
        for it in self.items:
            h.update(f"{it.index},{it.file},{it.window},{it.label},{it.offset},{it.nbytes}\n".encode())
        return h.hexdigest()


def _sample_fault(path, layout):
    """Why the sample at ``path`` cannot be used, or "" when it can."""
    try:
        size = path.stat().st_size
    except OSError as e:
        return e.strerror or str(e)
    if size == 0:
        return "empty file"
    if layout == "wav":
        from ..features.mfcc import WavFault, read_pcm
        try:
            read_pcm(path)             # what the run reads: every fault it would stop on is found here
        except WavFault as e:
            return str(e)
        except OSError as e:
            return e.strerror or str(e)
        return ""
    if layout == "images":
        try:
            from PIL import Image
        except ImportError:
            raise UsageError("reading image folders needs Pillow", hint="pip install pillow") from None
        try:
            with Image.open(path) as img:
                if img.width * img.height > MAX_IMAGE_PIXELS:
                    return f"too large: {img.width}x{img.height} pixels, more than {MAX_IMAGE_PIXELS:,}"
                img.load()
        except Image.DecompressionBombError as e:      # Pillow's own bound, checked when the header is read
            return f"too large: {e}"
        except (OSError, SyntaxError, ValueError) as e:     # UnidentifiedImageError is an OSError
            return f"not a readable image: {e}"
        return ""
    try:
        with open(path, "rb"):
            return ""
    except OSError as e:
        return e.strerror or str(e)


def benchmark_for_input(shape, dtype=None):
    """The MLPerf Tiny benchmark a model input shape belongs to, or "" when none matches."""
    elements = 1
    for d in shape:
        elements *= d
    for name, (_, count) in SAMPLE_FORMAT.items():
        if elements == count:
            return name
    return ""


def _find_root(directory, benchmark):
    directory = Path(directory)
    if not directory.is_dir():
        raise UsageError(f"dataset folder {directory} does not exist", hint="pass --dataset DIR with the test set")
    if (directory / "y_labels.csv").is_file():
        return directory
    if benchmark and (directory / benchmark / "y_labels.csv").is_file():
        return directory / benchmark
    return directory


def load(directory, benchmark=""):
    """Read a test set. ``benchmark`` (kws01...) picks the sub-folder and the sample format when known."""
    root = _find_root(directory, benchmark)
    if not benchmark and root.name in BENCHMARKS:
        benchmark = root.name
    if (root / "y_labels.csv").is_file():
        return _load_mlperf(root, benchmark)
    subdirs = sorted(p for p in root.iterdir() if p.is_dir())
    files = [f for d in subdirs for f in d.iterdir() if f.is_file()]
    if any(f.suffix.lower() in _WAV for f in files):
        return _load_folders(root, benchmark or "kws01", "wav", _WAV)
    if any(f.suffix.lower() in _IMAGES for f in files):
        return _load_folders(root, benchmark or "vww01", "images", _IMAGES)
    raise UsageError(f"{root} is not a test set: no y_labels.csv and no class folders of .wav or image files",
                     hint="use the MLPerf Tiny layout (y_labels.csv + .bin files) or one folder per class")


def _int(value, path, line, column):
    try:
        return int(value.strip())
    except ValueError:
        raise UsageError(f"{path} line {line}: column '{column}' is {value!r}, not a whole number",
                         hint="rows are file,n_classes,class[,window_bytes,stride]") from None


def _load_mlperf(root, benchmark):
    path = root / "y_labels.csv"
    rows = []
    with open(path, newline="") as f:
        for line, row in enumerate(csv.reader(f), start=1):
            if not row or not "".join(row).strip():
                continue
            if line == 1 and len(row) >= 2 and not row[1].strip().lstrip("-").isdigit():
                continue                                       # a header line
            if len(row) not in (3, 5):
                raise UsageError(f"{path} line {line} has {len(row)} columns",
                                 hint="rows are file,n_classes,class[,window_bytes,stride]")
            rows.append((line, row))
    if not rows:
        raise UsageError(f"{path} lists no samples", hint="add one row per sample file")
    items, files, n_classes = [], [], None
    for file_index, (line, row) in enumerate(rows):
        name = row[0].strip()
        normal = os.path.normpath(name)
        if os.path.isabs(name) or normal == ".." or normal.startswith(".." + os.sep):
            raise UsageError(f"{path} line {line} names {name!r}, outside the dataset folder {root}",
                             hint="sample files lie next to y_labels.csv (or in folders below it)")
        classes = _int(row[1], path, line, "n_classes")
        label = _int(row[2], path, line, "class")
        if n_classes is None:
            n_classes = classes
        elif classes != n_classes:
            raise UsageError(f"{path} line {line}: n_classes {classes} differs from {n_classes} on earlier lines",
                             hint="all rows of one test set have the same n_classes")
        if not 0 <= label < max(classes, 2):
            raise UsageError(f"{path} line {line}: class {label} is outside 0..{classes - 1}",
                             hint="fix the label column")
        sample = root / name
        if not sample.is_file():
            raise UsageError(f"{path} line {line} names {name}, which does not exist in {root}",
                             hint="copy the sample files next to y_labels.csv")
        files.append(name)
        if len(row) == 5:
            window = _int(row[3], path, line, "window_bytes")
            stride = _int(row[4], path, line, "stride")
            if window <= 0 or stride <= 0:
                raise UsageError(f"{path} line {line}: window_bytes and stride must be positive",
                                 hint="fix the row")
            size = sample.stat().st_size
            if size < window:
                raise UsageError(f"{sample} has {size} bytes, less than one window of {window}",
                                 hint="fix window_bytes or the file")
            for w, start in enumerate(range(0, size - window + 1, stride)):
                items.append(Item(len(items), name, file_index, w, label, start, window))
        else:
            items.append(Item(len(items), name, file_index, 0, label))
    if not benchmark and any(it.nbytes >= 0 for it in items):
        benchmark = "ad01"
    sample_dtype = SAMPLE_FORMAT[benchmark][0] if benchmark else ""
    return Dataset(root=root, benchmark=benchmark, layout="mlperf", n_classes=n_classes, sample_dtype=sample_dtype,
                   items=items, files=files, class_names=CLASS_NAMES.get(benchmark, ()),
                   feature_settings=read_feature_settings(root))


def _class_index(folder_name, benchmark, names):
    key = folder_name.lower().lstrip("_").rstrip("_")
    if benchmark == "kws01":
        if key in ("background_noise", "silence"):
            return names.index("silence")
        return names.index(key) if key in names else names.index("unknown")
    if key in names:
        return names.index(key)
    return None


def _load_folders(root, benchmark, layout, suffixes):
    names = CLASS_NAMES.get(benchmark, ())
    subdirs = sorted(p for p in root.iterdir() if p.is_dir())
    labels = {}
    for d in subdirs:
        index = _class_index(d.name, benchmark, names) if names else None
        if index is None:
            if names:
                raise UsageError(f"class folder {d.name!r} in {root} is not a {benchmark} class",
                                 hint=f"name the folders after the classes: {', '.join(names)}")
            index = len(labels)
        labels[d.name] = index
    n_classes = len(names) if names else len(labels)
    items, files = [], []
    for d in subdirs:
        for f in sorted(os.listdir(d)):
            if Path(f).suffix.lower() in suffixes:
                rel = f"{d.name}/{f}"
                items.append(Item(len(items), rel, len(files), 0, labels[d.name]))
                files.append(rel)
    sample_dtype = SAMPLE_FORMAT[benchmark][0] if benchmark in SAMPLE_FORMAT else "uint8"
    return Dataset(root=root, benchmark=benchmark, layout=layout, n_classes=n_classes, sample_dtype=sample_dtype,
                   items=items, files=files, class_names=names or tuple(labels))


def _wav_features(path, input_quant, config, as_float=False):
    """MFCC features of a WAV file, computed by the front end the KWS models were trained with
    (tinyhost.features): int8, quantized to the model input's scale and zero point, or float32 (``as_float``,
    a model with float input)."""
    from .. import features

    config = config or features.KWS
    if as_float:
        return features.mfcc.mfcc(features.read_wav(path, config.sample_rate_hz), config).astype("<f4").tobytes()
    if input_quant is None:
        raise ValueError("set Dataset.input_quant to the model input's (scale, zero_point) before reading WAV files")
    return features.wav_features(path, input_quant[0], input_quant[1], config)


def _image_pixels(path, benchmark):
    """RGB uint8 pixels of an image resized to the benchmark's input (96x96 for vww01, 32x32 for ic01)."""
    try:
        from PIL import Image
    except ImportError:
        raise UsageError("reading image folders needs Pillow", hint="pip install pillow") from None
    side = 32 if benchmark == "ic01" else 96
    with Image.open(path) as img:
        return img.convert("RGB").resize((side, side), Image.BILINEAR).tobytes()


def to_model_input(raw, sample_dtype, tensor):
    """Bytes for the model's input tensor from a sample, converted as the MLPerf Tiny reference firmware does.

    uint8 pixels into an int8 input: subtract 128; float32 frames: quantize with the tensor's scale and zero point;
    same dtype (float32 frames into a float32 input too): as is. ``tensor`` has .dtype .nbytes .scale .zero_point
    (the engine's TensorInfo).
    """
    import numpy as np

    if sample_dtype in ("", tensor.dtype) and len(raw) == tensor.nbytes:
        return bytes(raw)
    if sample_dtype == "uint8" and tensor.dtype == "int8" and len(raw) == tensor.nbytes:
        return (np.frombuffer(raw, dtype=np.uint8).astype(np.int16) - 128).astype(np.int8).tobytes()
    if sample_dtype == "float32" and tensor.dtype in ("int8", "uint8") and len(raw) == 4 * tensor.nbytes:
        real = np.frombuffer(raw, dtype="<f4").astype(np.float64)
        q = np.round(real / tensor.scale) + tensor.zero_point
        lo, hi = (-128, 127) if tensor.dtype == "int8" else (0, 255)
        return np.clip(q, lo, hi).astype(tensor.dtype).tobytes()
    hint = "check that the dataset belongs to this model"
    if tensor.dtype == "float32" and sample_dtype in ("int8", "uint8"):
        hint = ("the model takes float32 input and this test set holds quantized samples: give one with float32 "
                "samples, or class folders of .wav files (features are then computed as float32)")
    raise UsageError(f"a {len(raw)}-byte {sample_dtype or 'raw'} sample does not fit the model input "
                     f"({tensor.nbytes} bytes {tensor.dtype})", hint=hint)
