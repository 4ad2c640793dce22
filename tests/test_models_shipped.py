"""The shipped models (models/kws, models/vww): files, operators, test sets, accuracy, fit on an esp32."""

import csv
import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from tinyhost import boards, zoo
from tinyhost.features.mfcc import wav_features

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from models.pipeline import tflite_ops  # noqa: E402

ALLOWED_OPS = {"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "AVERAGE_POOL_2D", "MAX_POOL_2D", "ADD",
               "RESHAPE", "SOFTMAX"}
SPEC = {   # name: (input shape, classes, bytes per test sample, quality target of the MLPerf Tiny task)
    "kws": ((1, 49, 10, 1), 12, 490, 0.90),
    "vww": ((1, 96, 96, 3), 2, 96 * 96 * 3, 0.80),
}


def _folder(name):
    return REPO / "models" / name


def _metrics(name):
    return json.loads((_folder(name) / "metrics.json").read_text())


def _testset(name):
    folder = _folder(name) / "testset"
    with open(folder / "y_labels.csv", newline="") as f:
        rows = list(csv.reader(f))
    return folder, rows


@pytest.fixture(scope="module", params=sorted(SPEC))
def shipped(request):
    name = request.param
    blob = zoo.resolve(name).read_bytes()
    return name, blob


def test_files_are_small_and_named_in_the_registry(shipped):
    name, blob = shipped
    assert zoo.resolve(name) == _folder(name) / f"{name}.tflite"
    for path in _folder(name).rglob("*"):
        assert path.stat().st_size < 1_000_000, path
    total = sum(p.stat().st_size for p in _folder(name).rglob("*") if p.is_file())
    assert total < (1_000_000 if name == "kws" else 6_500_000)      # vww: 200 raw 27,648-byte images


def test_int8_io_and_only_engine_operators(shipped):
    name, blob = shipped
    shape, classes, _, _ = SPEC[name]
    assert set(tflite_ops.operators(blob)) <= ALLOWED_OPS
    io = tflite_ops.io_tensors(blob)
    (inp,), (out,) = io["inputs"], io["outputs"]
    assert inp["shape"] == shape and inp["dtype"] == "int8"
    assert out["shape"] == (1, classes) and out["dtype"] == "int8"


def test_card_and_metrics_describe_this_file(shipped):
    name, blob = shipped
    m = _metrics(name)
    assert tuple(m["labels"]) == zoo.find(name).labels
    digest = hashlib.sha256(blob).hexdigest()
    assert m["sha256"] == digest and m["tflite_bytes"] == len(blob)
    card = (_folder(name) / "README.md").read_text()
    assert digest in card
    assert f"{100 * m['accuracy_int8']:.1f} %" in card and f"{100 * m['accuracy_float']:.1f} %" in card
    assert m["accuracy_float"] - m["accuracy_int8"] <= 0.02       # int8 within 2 points of float


def test_quality_target_met_or_the_card_says_so(shipped):
    name, _ = shipped
    m = _metrics(name)
    target = SPEC[name][3]
    if m["accuracy_int8"] < target:
        card = (_folder(name) / "README.md").read_text()
        assert "below the MLPerf Tiny target" in card


def test_testset_layout(shipped):
    name, _ = shipped
    _, classes, nbytes, _ = SPEC[name]
    folder, rows = _testset(name)
    assert 190 <= len(rows) <= 210
    labels = []
    for file, n_classes, label in rows:
        assert int(n_classes) == classes and 0 <= int(label) < classes
        assert (folder / file).stat().st_size == nbytes
        labels.append(int(label))
    assert set(labels) == set(range(classes))                 # every class present
    assert len(list(folder.glob("*.bin"))) == len(rows)


def test_fits_the_esp32_profile(shipped):
    name, blob = shipped
    esp32 = boards.load("esp32")
    arena = tflite_ops.tflm_min_arena_bytes(blob)
    assert arena == _metrics(name)["tflm_arena_bytes"]
    assert arena < esp32.heap_bytes and len(blob) < esp32.fs_bytes


def _tflm_predictions(blob, inputs):
    pytest.importorskip("tflite_micro")
    from tflite_micro.python.tflite_micro import runtime
    interp = runtime.Interpreter.from_bytes(blob, arena_size=tflite_ops.tflm_min_arena_bytes(blob))
    shape = interp.get_input_details(0)["shape"]
    out = []
    for x in inputs:
        interp.set_input(np.frombuffer(x, np.int8).reshape(shape), 0)
        interp.invoke()
        out.append(int(np.argmax(interp.get_output(0))))
    return out


@pytest.mark.oracle
def test_testset_accuracy_in_tflm_matches_the_card(shipped):
    name, blob = shipped
    folder, rows = _testset(name)
    inputs = []
    for file, _, _ in rows:
        data = (folder / file).read_bytes()
        if name == "vww":                                      # uint8 RGB -> int8 input (pixel - 128)
            data = (np.frombuffer(data, np.uint8).astype(np.int16) - 128).astype(np.int8).tobytes()
        inputs.append(data)
    predicted = _tflm_predictions(blob, inputs)
    accuracy = np.mean([p == int(r[2]) for p, r in zip(predicted, rows)])
    assert accuracy == pytest.approx(_metrics(name)["accuracy_int8_shipped_testset"], abs=1e-9)


@pytest.mark.oracle
def test_kws_wav_examples_through_the_shared_front_end():
    blob = zoo.resolve("kws").read_bytes()
    inp = tflite_ops.io_tensors(blob)["inputs"][0]
    folder = _folder("kws") / "wav"
    with open(folder / "labels.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 12
    inputs = [wav_features(folder / r["file"], inp["scale"], inp["zero_point"]) for r in rows]
    labels = _metrics("kws")["labels"]
    predicted = [labels[i] for i in _tflm_predictions(blob, inputs)]
    recorded = [r["int8_prediction"] for r in rows]
    # WAV files hold 16-bit samples of the float clips the pipeline scored: at most one borderline flip.
    assert sum(p != r for p, r in zip(predicted, recorded)) <= 1
    assert sum(p == r["label"] for p, r in zip(predicted, rows)) >= 8
