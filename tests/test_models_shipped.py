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


# -- the KWS quantisation variants (models/kws/variants/) -------------------------------------------------------

VARIANTS = {"float32": "float32", "int8_ptq": "int8", "int8_qat": "int8"}     # key: tensor type of I/O


def _variants():
    return json.loads((_folder("kws") / "variants" / "metrics.json").read_text())


@pytest.mark.parametrize("key", sorted(VARIANTS))
def test_kws_variant_files_are_the_ones_the_metrics_describe(key):
    m = _variants()["variants"][key]
    path = _folder("kws") / "variants" / f"kws_{key}.tflite"
    blob = path.read_bytes()
    assert m["file"] == path.name
    assert m["sha256"] == hashlib.sha256(blob).hexdigest() and m["tflite_bytes"] == len(blob)
    assert set(tflite_ops.operators(blob)) <= ALLOWED_OPS
    io = tflite_ops.io_tensors(blob)
    (inp,), (out,) = io["inputs"], io["outputs"]
    assert inp["shape"] == SPEC["kws"][0] and out["shape"] == (1, 12)
    assert inp["dtype"] == out["dtype"] == VARIANTS[key]
    assert tflite_ops.parameter_count(blob) == _metrics("kws")["parameters"]      # one architecture
    if key == "int8_ptq":                                     # the shipped int8 model itself
        assert blob == zoo.resolve("kws").read_bytes()
    card = (_folder("kws") / "README.md").read_text()
    assert f"`{path.name}`" in card and f"{m['tflite_bytes']:,} bytes" in card
    assert f"{100 * m['accuracy']:.1f} %" in card


def test_kws_variants_int8_within_two_points_of_float32():
    v = _variants()["variants"]
    for key in ("int8_ptq", "int8_qat"):
        assert v["float32"]["accuracy"] - v[key]["accuracy"] <= 0.02, key
    assert v["float32"]["tflite_bytes"] > 1.8 * v["int8_ptq"]["tflite_bytes"]      # float32 weights: 4 bytes each


@pytest.mark.oracle
@pytest.mark.parametrize("key", sorted(VARIANTS))
def test_kws_variant_rescored_on_the_shipped_testset_in_tflm(key):
    """Each variant on the 200 shipped samples, through TFLM: the int8 bytes are dequantised with the test set's
    quantisation, then fed as float32 or requantised with the variant's own input quantisation."""
    pytest.importorskip("tflite_micro")
    from tflite_micro.python.tflite_micro import runtime
    from tinyhost.features.mfcc import quantize
    v = _variants()
    blob = (_folder("kws") / "variants" / f"kws_{key}.tflite").read_bytes()
    settings = json.loads((_folder("kws") / "testset" / "features.json").read_text())
    q = v["shipped_testset_quantization"]
    assert [q["scale"], q["zero_point"]] == [pytest.approx(settings["input_scale"]), settings["input_zero_point"]]
    folder, rows = _testset("kws")
    inp = tflite_ops.io_tensors(blob)["inputs"][0]
    interp = runtime.Interpreter.from_bytes(blob, arena_size=tflite_ops.tflm_min_arena_bytes(blob))
    correct = 0
    for file, _, label in rows:
        x = (np.frombuffer((folder / file).read_bytes(), np.int8).astype(np.float32) - np.float32(q["zero_point"])) \
            * np.float32(q["scale"])
        x = x if inp["dtype"] == "float32" else quantize(x, inp["scale"], inp["zero_point"])
        interp.set_input(x.reshape(inp["shape"]).astype(np.float32 if inp["dtype"] == "float32" else np.int8), 0)
        interp.invoke()
        correct += int(np.argmax(interp.get_output(0))) == int(label)
        interp.reset()
    assert correct / len(rows) == pytest.approx(v["variants"][key]["accuracy_shipped_testset"], abs=1e-9)


# -- KWS by source: per-synthesiser accuracy on held-out voices, and leave-one-engine-out -----------------------

ENGINES = ("espeak-ng", "festival", "flite")


def test_kws_held_out_accuracy_per_source_is_in_the_card():
    m = _metrics("kws")
    per_source = m["accuracy_int8_per_source"]
    assert set(ENGINES) <= set(per_source)
    test_voices = m["data"]["test_voices"]
    train_voices = set(m["data"]["split_voices"]["train"])
    for engine in ENGINES:
        held = [v for v in test_voices if v.startswith(engine + ":")]
        assert held and not set(held) & train_voices, engine          # voices never heard in training
        assert per_source[engine]["samples"] > 0
    assert sum(r["samples"] for r in per_source.values()) == m["counts"]["test"]
    card = (_folder("kws") / "README.md").read_text()
    for engine in ENGINES:
        assert f"| {engine} |" in card and f"{100 * per_source[engine]['accuracy']:.1f} %" in card


def test_kws_leave_one_engine_out_table_is_in_the_card():
    card = (_folder("kws") / "README.md").read_text()
    results = [json.loads((_folder("kws") / "loeo" / f"{e}.json").read_text()) for e in ENGINES]
    for r, engine in zip(results, ENGINES):
        assert r["engine"] == engine and r["samples"] > 0
        assert f"| {engine} | {len(r['voices'])} | {r['samples']} |" in card
        assert f"{100 * r['accuracy_int8']:.1f} %" in card
    mean = sum(r["accuracy_int8"] for r in results) / len(results)
    assert f"int8: {100 * mean:.1f} %" in card
    if mean < 0.85:
        assert "is **below** the 85.0 %" in card


# -- VWW by emoji design source --------------------------------------------------------------------------------

VWW_SOURCES = ("noto", "twemoji", "openmoji")


def test_vww_held_out_accuracy_per_design_source_is_in_the_card():
    m = _metrics("vww")
    per_source = m["accuracy_int8_per_source"]
    assert set(per_source) == set(VWW_SOURCES)
    assert sum(r["samples"] for r in per_source.values()) == m["counts"]["test"]
    card = (_folder("vww") / "README.md").read_text()
    for source, r in per_source.items():
        assert f"| {source} |" in card and f"{100 * r['accuracy']:.1f} %" in card


def test_vww_testset_readme_gives_each_file_its_source_and_the_licences():
    text = (_folder("vww") / "testset" / "README.md").read_text()
    with open(_folder("vww") / "testset" / "y_labels.csv", newline="") as f:
        files = [int(row[0].split("_")[1]) for row in csv.reader(f)]
    listed = []
    for source in VWW_SOURCES:
        entry = text.split(f"\n- {source}: ", 1)[1].split("\n- ", 1)[0].split("\n\n", 1)[0]
        listed += [int(n) for n in entry.replace("\n", " ").split(",")]
    assert sorted(listed) == sorted(files)
    assert "CC BY 4.0" in text and "CC BY-SA 4.0" in text
