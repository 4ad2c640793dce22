"""Model registry: the models shipped with tinyhost and the official MLPerf Tiny models that can be pulled.

``resolve(name_or_path)`` is how every command turns ``--model`` into a file: a path to a ``.tflite`` file, the
name of a shipped model (``kws``, ``vww``), or an official one (``kws01``, ``vww01``, ``ic01``, ``ad01``) that
``tinyhost models pull`` has put in the cache (``$TINYHOST_CACHE/models``, else ``~/.cache/tinyhost/models``).

A pull writes to a temporary name in the cache folder, checks the size and SHA-256, and only then renames the
file to its real name: a partial download or a checksum mismatch leaves nothing behind.
"""

import hashlib
import http.client
import json
import logging
import os
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from .hashing import sha256_file  # noqa: F401  (part of this module's API)
from .errors import ChecksumMismatch, ModelDownloadError, ModelError, UsageError
from . import paths
from .paths import models_dir

log = logging.getLogger(__name__)

_MLPERF_RAW = "https://github.com/mlcommons/tiny/raw/master/benchmark/training"
CHUNK_BYTES = 64 * 1024
#: Output classes of kws/kws01 (MLPerf Tiny order), vww/vww01 and ic01 (CIFAR-10).
KWS_LABELS = ("down", "go", "left", "no", "off", "on", "right", "stop", "up", "yes", "silence", "unknown")
VWW_LABELS = ("non_person", "person")
IC_LABELS = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


@dataclass(frozen=True)
class ModelEntry:
    name: str
    kind: str                 # "shipped" or "official"
    task: str
    description: str
    filename: str
    input_shape: tuple
    classes: int
    url: str = ""             # official download address ("" for shipped models)
    sha256: str = ""          # published checksum (official models)
    size_bytes: int = 0       # published size (official models)
    labels: tuple = ()        # class names by output index (empty: not a classifier)


OFFICIAL = (
    ModelEntry("kws01", "official", "keyword spotting", "MLPerf Tiny reference DS-CNN (Speech Commands v2)",
               "kws_ref_model.tflite", (1, 49, 10, 1), 12,
               f"{_MLPERF_RAW}/keyword_spotting/trained_models/kws_ref_model.tflite",
               "aeea436800704fce17b17292e4412630ad856e9d777c044c64ef748a880bd0ae", 53936, KWS_LABELS),
    ModelEntry("vww01", "official", "visual wake words", "MLPerf Tiny reference MobileNetV1 0.25 (COCO VWW)",
               "vww_96_int8.tflite", (1, 96, 96, 3), 2,
               f"{_MLPERF_RAW}/visual_wake_words/trained_models/vww_96_int8.tflite",
               "597a384c8c2c8a1276f04702f25013b7838f2f814f1ca7c174d295b73e3d6b7b", 333288, VWW_LABELS),
    ModelEntry("ic01", "official", "image classification", "MLPerf Tiny reference ResNet-8 (CIFAR-10)",
               "pretrainedResnet_quant.tflite", (1, 32, 32, 3), 10,
               f"{_MLPERF_RAW}/image_classification/trained_models/pretrainedResnet_quant.tflite",
               "3c002613d1b2475eb51dd78dfb85a546c8ae658dee71cf6ade43b022fe205415", 98496, IC_LABELS),
    ModelEntry("ad01", "official", "anomaly detection", "MLPerf Tiny reference FC autoencoder (ToyADMOS)",
               "ad01_int8.tflite", (1, 640), 640,
               f"{_MLPERF_RAW}/anomaly_detection/trained_models/ad01_int8.tflite",
               "87cf24194ef93d1d9b11a591d805526b98008e351655d29883c825c9c106ba24", 276976),
)

SHIPPED = (
    ModelEntry("kws", "shipped", "keyword spotting",
               "DS-CNN trained on synthetic speech (espeak-ng, flite, festival), see models/kws/README.md",
               "kws/kws.tflite", (1, 49, 10, 1), 12, labels=KWS_LABELS),
    ModelEntry("vww", "shipped", "visual wake words",
               "MobileNetV1 0.25 trained on synthetic emoji scenes, see models/vww/README.md",
               "vww/vww.tflite", (1, 96, 96, 3), 2, labels=VWW_LABELS),
)


@dataclass(frozen=True)
class ModelStatus:
    entry: ModelEntry
    path: Path                # where the file is (or would be, once pulled)
    state: str                # "shipped", "installed", "not pulled", "corrupt", "missing"
    size_bytes: int           # of the file present, else the published size


@dataclass(frozen=True)
class PullResult:
    name: str
    path: Path
    size_bytes: int
    sha256: str
    source: str
    skipped: bool             # already in the cache with the right checksum


def entries():
    return SHIPPED + OFFICIAL


def names():
    return [e.name for e in entries()]


def find(name):
    """The registry entry called ``name`` (case-insensitive; the official file name works too), or None."""
    key = name.strip().lower()
    for e in entries():
        if key in (e.name, Path(e.filename).name.lower(), Path(e.filename).stem.lower()):
            return e
    return None


def cache_dir():
    """Where pulled models live: ``$TINYHOST_CACHE/models``, else ``$XDG_CACHE_HOME/tinyhost/models``."""
    return paths.cache_dir("models")


def path_of(entry):
    """Where ``entry``'s file is or will be (shipped: the package's models/; official: the cache)."""
    if entry.kind == "shipped":
        root = models_dir()
        return (root / entry.filename) if root else Path("models") / entry.filename
    return cache_dir() / entry.filename


def shipped_metrics(entry):
    """The shipped model's metrics.json (accuracy, arena, sha256) as a dict, or {} when absent."""
    root = models_dir()
    path = root / entry.name / "metrics.json" if root else None
    if path is None or not path.is_file():
        return {}
    return json.loads(path.read_text())


def entry_with_sha256(sha256):
    """The registry entry whose model file has this SHA-256 (an official model's published checksum, a shipped
    one's in its metrics.json), or None: how a renamed or copied file is still recognised."""
    if not sha256:
        return None
    for e in entries():
        if (e.sha256 if e.kind == "official" else shipped_metrics(e).get("sha256")) == sha256:
            return e
    return None


def shipped_testset(entry):
    """The test set folder shipped with ``entry`` (MLPerf Tiny layout, beside its model), or None."""
    if entry is None or entry.kind != "shipped":
        return None
    folder = path_of(entry).parent / "testset"
    return folder if (folder / "y_labels.csv").is_file() else None


def status(entry):
    path = path_of(entry)
    if not path.is_file():
        return ModelStatus(entry, path, "missing" if entry.kind == "shipped" else "not pulled", entry.size_bytes)
    size = path.stat().st_size
    if entry.kind == "shipped":
        return ModelStatus(entry, path, "shipped", size)
    ok = size == entry.size_bytes and sha256_file(path) == entry.sha256
    return ModelStatus(entry, path, "installed" if ok else "corrupt", size)


def list_models():
    """Status of every shipped and official model."""
    return [status(e) for e in entries()]


def _unknown(name):
    return UsageError(f"unknown model {name!r}",
                      hint=f"use a .tflite path or one of: {', '.join(names())} (`tinyhost models list`)")


def resolve(name_or_path):
    """The .tflite file for ``--model``: an existing path, a shipped model's name, or a pulled official one."""
    text = str(name_or_path).strip()
    if not text:
        raise _unknown(text)
    candidate = Path(text).expanduser()
    if candidate.is_file():
        return candidate
    entry = find(text)
    if entry is None:
        if candidate.suffix == ".tflite" or os.sep in text or "/" in text:
            raise UsageError(f"no such model file: {candidate}",
                             hint=f"check the path, or use a model name: {', '.join(names())}")
        raise _unknown(text)
    st = status(entry)
    if st.state == "shipped" or st.state == "installed":
        return st.path
    if st.state == "missing":
        raise ModelError(f"the shipped model {entry.name!r} is missing ({st.path})",
                         hint="reinstall tinyhost, or rebuild it with `make models` in a source checkout")
    if st.state == "corrupt":
        raise ModelError(f"the cached {entry.name} ({st.path}) does not match its published SHA-256",
                         hint=f"pull it again: `tinyhost models pull --force {entry.name}`")
    raise UsageError(f"the official model {entry.name!r} is not downloaded yet",
                     hint=f"run `tinyhost models pull {entry.name}` (or `--from DIR` for a local copy)")


# -- pulling ------------------------------------------------------------------------------------------------

def _is_url(text):
    return urllib.parse.urlparse(str(text)).scheme in ("http", "https", "file")


def _source_for(entry, source):
    """(kind, location) to fetch ``entry`` from: the official URL, a mirror base URL, or a local file."""
    if source is None:
        return "url", entry.url
    if _is_url(source):
        return "url", str(source).rstrip("/") + "/" + Path(entry.filename).name
    folder = Path(source).expanduser()
    if not folder.is_dir():
        raise UsageError(f"--from {source}: not a folder or an http(s)/file URL",
                         hint="give a folder holding the .tflite files, or a mirror's base URL")
    direct = folder / Path(entry.filename).name
    if direct.is_file():
        return "file", str(direct)
    found = sorted(folder.rglob(Path(entry.filename).name))     # e.g. a clone of mlcommons/tiny
    if found:
        return "file", str(found[0])
    raise ModelDownloadError(f"{Path(entry.filename).name} (for {entry.name}) is not in {folder}",
                             hint="put the official file there, or pull from the official address")


def _copy_stream(reader, writer, expected_total, progress):
    h = hashlib.sha256()
    done = 0
    while True:
        chunk = reader.read(CHUNK_BYTES)
        if not chunk:
            break
        writer.write(chunk)
        h.update(chunk)
        done += len(chunk)
        if progress:
            progress(done, expected_total)
    return done, h.hexdigest()


def _fetch_to(tmp, kind, location, entry, timeout_s, progress):
    if kind == "file":
        with open(location, "rb") as src:
            return _copy_stream(src, tmp, entry.size_bytes, progress)
    request = urllib.request.Request(location, headers={"User-Agent": "tinyhost"})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            length = response.headers.get("Content-Length")
            done, digest = _copy_stream(response, tmp, int(length) if length else entry.size_bytes, progress)
    except urllib.error.HTTPError as e:
        raise ModelDownloadError(f"{location}: HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as e:
        reason = getattr(e, "reason", e)
        raise ModelDownloadError(f"cannot download {location}: {reason}") from None
    if length is not None and done != int(length):
        raise ModelDownloadError(f"{location}: download ended after {done} of {length} bytes")
    return done, digest


def pull(name, source=None, force=False, timeout_s=60.0, progress=None):
    """Fetch the official model ``name`` into the cache, verified; returns a :class:`PullResult`.

    ``source``: None for the official address, a folder (searched recursively), or a mirror base URL. Raises
    :class:`ChecksumMismatch` or :class:`ModelDownloadError` and leaves no file behind when it fails.
    """
    entry = find(name)
    if entry is None:
        raise _unknown(name)
    if entry.kind != "official":
        raise UsageError(f"{entry.name!r} is shipped with tinyhost; there is nothing to pull",
                         hint=f"use it directly: --model {entry.name}")
    final = path_of(entry)
    if not force and final.is_file() and status(entry).state == "installed":
        return PullResult(entry.name, final, final.stat().st_size, entry.sha256, str(final), True)
    kind, location = _source_for(entry, source)
    final.parent.mkdir(parents=True, exist_ok=True)
    log.info("pulling %s from %s", entry.name, location)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".part", dir=final.parent)
    try:
        with os.fdopen(fd, "wb") as tmp:
            size, digest = _fetch_to(tmp, kind, location, entry, timeout_s, progress)
            tmp.flush()
            os.fsync(tmp.fileno())
        if size != entry.size_bytes:
            raise ModelDownloadError(
                f"{entry.name} from {location} has {size} bytes, the published file has {entry.size_bytes}",
                hint="the download was cut short or the source holds another file; retry or use another --from")
        if digest != entry.sha256:
            raise ChecksumMismatch(f"{entry.name} from {location} has SHA-256 {digest}, "
                                   f"expected {entry.sha256}")
        os.chmod(tmp_name, 0o644)
        os.replace(tmp_name, final)
    except BaseException:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
        raise
    return PullResult(entry.name, final, size, digest, location, False)
