"""Test-set readers (MLPerf Tiny layout, class folders), input conversion, results JSON/CSV, energy, journal."""

import csv
import io
import json
import struct
from types import SimpleNamespace

import numpy as np
import pytest

from tinyhost import boards
from tinyhost.bench import datasets, energy, journal, results
from tinyhost.errors import UsageError


def write_set(root, rows, files):
    root.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (root / name).write_bytes(data)
    (root / "y_labels.csv").write_text("".join(",".join(map(str, r)) + "\n" for r in rows))
    return root


def test_mlperf_layout_one_item_per_file(tmp_path):
    root = write_set(tmp_path / "kws01", [("a.bin", 12, 3), ("b.bin", 12, 11)],
                     {"a.bin": bytes(490), "b.bin": bytes([1]) * 490})
    ds = datasets.load(tmp_path, "kws01")                      # the parent folder works, as for the runner
    assert (ds.root, ds.benchmark, ds.n_classes, ds.sample_dtype) == (root, "kws01", 12, "int8")
    assert [(it.index, it.file, it.label) for it in ds.items] == [(0, "a.bin", 3), (1, "b.bin", 11)]
    assert ds.read(ds.items[1]) == bytes([1]) * 490
    assert ds.class_names[11] == "unknown"


def test_ad01_windows_with_stride(tmp_path):
    frames = struct.pack("<10f", *range(10))                   # 40 bytes
    write_set(tmp_path / "ad01", [("n.bin", 2, 0, 16, 8), ("x.bin", 2, 1, 16, 8)], {"n.bin": frames, "x.bin": frames})
    ds = datasets.load(tmp_path / "ad01")
    assert ds.benchmark == "ad01" and ds.sample_dtype == "float32"
    assert [(it.file_index, it.window, it.offset) for it in ds.items] == [
        (0, 0, 0), (0, 1, 8), (0, 2, 16), (0, 3, 24), (1, 0, 0), (1, 1, 8), (1, 2, 16), (1, 3, 24)]
    assert struct.unpack("<4f", ds.read(ds.items[1])) == (2.0, 3.0, 4.0, 5.0)


@pytest.mark.parametrize("rows, files, message", [
    ([("a.bin", 12, 3)], {}, "names a.bin, which does not exist"),
    ([("a.bin", 12, "x")], {"a.bin": b"1"}, "column 'class' is 'x'"),
    ([("a.bin", 12, 12)], {"a.bin": b"1"}, "class 12 is outside 0..11"),
    ([("a.bin", 12)], {"a.bin": b"1"}, "has 2 columns"),
    ([("a.bin", 12, 1), ("b.bin", 10, 1)], {"a.bin": b"1", "b.bin": b"1"}, "n_classes 10 differs"),
])
def test_bad_label_files_say_what_is_wrong(tmp_path, rows, files, message):
    write_set(tmp_path, rows, files)
    with pytest.raises(UsageError, match=message):
        datasets.load(tmp_path)


def test_missing_folder_and_unknown_layout(tmp_path):
    with pytest.raises(UsageError, match="does not exist"):
        datasets.load(tmp_path / "nope")
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "f.txt").write_text("hi")
    with pytest.raises(UsageError, match="not a test set"):
        datasets.load(tmp_path)


def test_image_folders_for_vww(tmp_path):
    from PIL import Image

    for cls, color in (("person", (255, 0, 0)), ("non_person", (0, 0, 255))):
        (tmp_path / cls).mkdir()
        Image.new("RGB", (120, 80), color).save(tmp_path / cls / "img.png")
    ds = datasets.load(tmp_path, "vww01")
    assert ds.layout == "images" and ds.n_classes == 2
    assert [(it.file, it.label) for it in ds.items] == [("non_person/img.png", 0), ("person/img.png", 1)]
    pixels = ds.read(ds.items[1])
    assert len(pixels) == 96 * 96 * 3 and pixels[:3] == bytes([255, 0, 0])


def test_wav_folders_for_kws_use_the_mfcc_front_end(tmp_path):
    from tinyhost import features

    for word in ("yes", "_background_noise_", "marvin"):
        (tmp_path / word).mkdir()
        features.write_wav(tmp_path / word / "a.wav", np.zeros(16000, dtype=np.float32))
    ds = datasets.load(tmp_path, "kws01")
    labels = {it.file.split("/")[0]: it.label for it in ds.items}
    assert labels == {"yes": 9, "_background_noise_": 10, "marvin": 11}
    ds.input_quant = (0.5847029, 83)
    assert len(ds.read(ds.items[0])) == 490


def test_wav_folders_give_float32_features_to_a_float_input_model(tmp_path):
    from tinyhost import features

    (tmp_path / "yes").mkdir()
    audio = np.sin(np.arange(16000) / 7.0).astype(np.float32) * 0.3
    features.write_wav(tmp_path / "yes" / "a.wav", audio)
    ds = datasets.load(tmp_path, "kws01")
    ds.sample_dtype = "float32"
    raw = ds.read(ds.items[0])
    expected = features.mfcc.mfcc(features.read_wav(tmp_path / "yes" / "a.wav"), features.KWS)
    np.testing.assert_array_equal(np.frombuffer(raw, "<f4").reshape(49, 10), expected)
    float_input = SimpleNamespace(dtype="float32", nbytes=4 * 490, scale=0.0, zero_point=0)
    assert datasets.to_model_input(raw, "float32", float_input) == raw


def test_quantized_samples_for_a_float_input_model_say_what_to_give():
    float_input = SimpleNamespace(dtype="float32", nbytes=4 * 490, scale=0.0, zero_point=0)
    with pytest.raises(UsageError, match="490-byte int8 sample does not fit") as e:
        datasets.to_model_input(bytes(490), "int8", float_input)
    assert "float32 samples" in e.value.hint and ".wav" in e.value.hint


def test_to_model_input_conversions():
    int8 = SimpleNamespace(dtype="int8", nbytes=4, scale=0.5, zero_point=10)
    assert datasets.to_model_input(bytes([1, 2, 3, 4]), "int8", int8) == bytes([1, 2, 3, 4])
    assert datasets.to_model_input(bytes([0, 128, 255, 200]), "uint8", int8) == bytes([0x80, 0, 0x7F, 72])
    floats = struct.pack("<4f", 0.0, 1.0, -100.0, 100.0)
    q = np.frombuffer(datasets.to_model_input(floats, "float32", int8), dtype=np.int8)
    assert list(q) == [10, 12, -128, 127]
    with pytest.raises(UsageError, match="does not fit the model input"):
        datasets.to_model_input(bytes(5), "int8", int8)


def test_benchmark_for_input_shape():
    assert datasets.benchmark_for_input((1, 49, 10, 1)) == "kws01"
    assert datasets.benchmark_for_input((1, 96, 96, 3)) == "vww01"
    assert datasets.benchmark_for_input((1, 640)) == "ad01"
    assert datasets.benchmark_for_input((1, 7)) == ""


def _result():
    prov = results.Provenance(board="esp32", virtual=True, firmware_hash="f" * 8, model_sha256="a" * 64,
                              tinyhost_version="0.1.0", date="2026-01-01T00:00:00Z")
    perf = results.PerformanceResult(
        window_s=1.0, min_inferences=10,
        windows=[results.Window(0, 1, 3, 3000, 1000.0, [900, 1000, 1100])],
        median_inferences_per_s=1000.0, median_latency_us=1000.0, min_inferences_per_s=1000.0,
        max_inferences_per_s=1000.0, spread_pct=0.0, latency={"p50_us": 1000.0}, latency_source="device")
    acc = results.AccuracyResult(benchmark="kws01", n_items=2, n_files=2, metric="top1", value=0.5,
                                 samples=[results.SampleResult(0, "a.bin", 0, 1, 1, 0.9, 1000, [0.1, 0.9]),
                                          results.SampleResult(1, "b.bin", 0, 0, 1, 0.8, 1100, [0.2, 0.8])])
    return results.BenchResult(provenance=prov, performance=perf, accuracy=acc,
                               memory=results.MemoryResult(model_bytes=100, arena_bytes=50),
                               energy=results.EnergyResult("estimate", 1.5))


def test_results_json_round_trip_keeps_every_raw_figure(tmp_path):
    r = _result()
    results.write_json(r, tmp_path / "out.json")
    back = results.BenchResult.from_json((tmp_path / "out.json").read_text())
    assert back == r
    assert back.performance.windows[0].times_us == [900, 1000, 1100]
    assert json.loads((tmp_path / "out.json").read_text())["provenance"]["virtual"] is True


def test_results_csv_has_provenance_on_every_row_and_all_raw_rows(tmp_path):
    results.write_csv(_result(), tmp_path / "out.csv")
    rows = list(csv.DictReader(io.StringIO((tmp_path / "out.csv").read_text())))
    assert all(r["board"] == "esp32" and r["virtual"] == "True" and r["model_sha256"] == "a" * 64 for r in rows)
    kinds = [r["record"] for r in rows]
    assert kinds.count("inference") == 3 and kinds.count("window") == 1 and kinds.count("sample") == 2
    assert [r["time_us"] for r in rows if r["record"] == "inference"] == ["900", "1000", "1100"]
    assert any(r["metric"] == "energy.uj_per_inference.estimate" for r in rows)


def test_write_atomic_leaves_no_partial_file(tmp_path):
    target = tmp_path / "r.json"
    target.write_text("old")
    with pytest.raises(TypeError):
        results.write_atomic(target, object())                 # cannot be written
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]


def test_energy_estimate_labelled_with_inputs_and_sources():
    board = boards.load("esp32")
    e = energy.estimate(board, latency_us=10_000)
    assert e.kind == "estimate"
    assert e.uj_per_inference == pytest.approx(50.0 * 3.3 * 10_000 / 1000)     # 1650 uJ
    assert e.inputs["active_current_ma"] == 50.0 and e.inputs["supply_v"] == 3.3
    assert any("Datasheet" in s for s in e.sources) and "estimate" in e.note
    assert "virtual board" in energy.estimate(board, 10_000, virtual=True).note


def test_joulescope_plan_and_parsing():
    plan = energy.joulescope_capture_plan(latency_us=20_000, min_duration_s=1.0, min_inferences=100)
    assert plan == {"duration_s": 2.0, "inferences": 101, "config": "auto"}
    samples = np.array([[0.010, 3.3], [0.030, 3.3], [np.nan, np.nan]])      # 20 mA mean at 3.3 V
    e = energy.energy_from_samples(samples, latency_us=1000, device="JS220")
    assert e.kind == "measured"
    assert e.uj_per_inference == pytest.approx(0.020 * 3.3 * 1000)           # 66 uJ
    assert e.inputs["samples"] == 2 and e.inputs["samples_dropped"] == 1
    with pytest.raises(ValueError):
        energy.energy_from_samples(np.zeros((3, 3)), 1000)


def test_journal_appends_resumes_and_drops_a_torn_line(tmp_path):
    path = tmp_path / "j.jsonl"
    ident = {"model_sha256": "m", "dataset_sha256": "d", "benchmark": "kws01", "n_items": 3, "board": "esp32"}
    with journal.Journal.open(path, ident) as j:
        j.record(0, pred=1)
        j.record(1, pred=2)
        with pytest.raises(ValueError):
            j.record(1, pred=2)
    with open(path, "ab") as f:
        f.write(b'{"i": 2, "pre')                               # cut short by a crash
    with pytest.raises(UsageError, match="--resume"):
        journal.Journal.open(path, ident)                       # an unfinished journal is never overwritten
    with pytest.raises(UsageError, match="belongs to another run"):
        journal.Journal.open(path, dict(ident, model_sha256="other"), resume=True)
    with journal.Journal.open(path, ident, resume=True) as j:
        assert sorted(j.done) == [0, 1]
        j.record(2, pred=0)
        j.finish()
    lines = path.read_text().splitlines()
    assert all(json.loads(line) for line in lines)              # the torn line is gone
    assert [json.loads(line).get("i") for line in lines].count(2) == 1
    with journal.Journal.open(path, ident) as j:                 # a finished journal may be started over
        assert j.done == {}


def test_resume_without_journal_is_an_error(tmp_path):
    with pytest.raises(UsageError, match="nothing to resume"):
        journal.Journal.open(tmp_path / "none.jsonl", {"model_sha256": "m"}, resume=True)


# -- a test set is checked before the first inference --------------------------------------------------------
def test_bad_wav_files_are_named_before_the_run(tmp_path):
    import wave

    from tinyhost import features

    (tmp_path / "yes").mkdir()
    features.write_wav(tmp_path / "yes" / "good.wav", np.zeros(16000, dtype=np.float32))
    (tmp_path / "yes" / "empty.wav").write_bytes(b"")
    (tmp_path / "yes" / "short.wav").write_bytes(bytes(range(30)))
    with wave.open(str(tmp_path / "yes" / "none.wav"), "wb") as w:       # a valid header, 0 samples
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(16000)
    whole = (tmp_path / "yes" / "good.wav").read_bytes()
    (tmp_path / "yes" / "cut.wav").write_bytes(whole[:1001])              # cut inside a sample
    (tmp_path / "yes" / "zero_rate.wav").write_bytes(whole[:24] + bytes(4) + whole[28:])
    ds = datasets.load(tmp_path, "kws01")
    with pytest.raises(UsageError) as e:
        ds.check(12)
    msg = str(e.value)
    assert msg.startswith("5 bad sample file(s)")
    assert "yes/empty.wav (empty file)" in msg and "yes/short.wav (not a PCM WAV file" in msg
    assert "yes/none.wav (a WAV file with no samples)" in msg and "good.wav" not in msg
    assert "yes/cut.wav (cut short: its header says 16000 samples, it holds 478)" in msg
    assert "yes/zero_rate.wav (a sample rate of 0 Hz)" in msg


def test_every_wav_the_check_passes_is_read_by_the_run(tmp_path):
    """The check and the run read WAV files the same way: what passes the check is scored, what does not is named
    (a file cut inside a sample or with a zero sample rate stopped the run with a traceback)."""
    from tinyhost import features

    (tmp_path / "yes").mkdir()
    features.write_wav(tmp_path / "yes" / "good.wav", np.zeros(16000, dtype=np.float32))
    whole = (tmp_path / "yes" / "good.wav").read_bytes()
    for cut in (45, 1000, 1001, len(whole) - 1):
        (tmp_path / "yes" / f"cut{cut}.wav").write_bytes(whole[:cut])
    ds = datasets.load(tmp_path, "kws01")
    ds.input_quant = (0.5, 0)
    with pytest.raises(UsageError, match="4 bad sample file"):
        ds.check(12)
    for cut in (45, 1000, 1001, len(whole) - 1):
        with pytest.raises(UsageError, match=f"cut{cut}.wav: cut short"):
            ds.read(next(it for it in ds.items if it.file == f"yes/cut{cut}.wav"))
    assert len(ds.read(next(it for it in ds.items if it.file == "yes/good.wav"))) == 490


def test_bad_images_are_named_before_the_run(tmp_path):
    import zlib

    from PIL import Image

    for cls in ("person", "non_person"):
        (tmp_path / cls).mkdir()
    Image.new("RGB", (120, 80), (1, 2, 3)).save(tmp_path / "person" / "good.png")
    (tmp_path / "person" / "text.jpg").write_text("not a picture\n")
    png = (tmp_path / "person" / "good.png").read_bytes()
    (tmp_path / "non_person" / "cut.png").write_bytes(png[:len(png) // 2])
    ihdr = struct.pack(">II", 20000, 10000) + png[24:29]                 # 200 megapixels, never decoded
    huge = png[:8] + struct.pack(">I", 13) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    (tmp_path / "non_person" / "huge.png").write_bytes(huge + png[33:])
    ds = datasets.load(tmp_path, "vww01")
    with pytest.raises(UsageError) as e:
        ds.check(2)
    msg = str(e.value)
    assert msg.startswith("3 bad sample file(s)")
    assert "person/text.jpg (not a readable image" in msg and "non_person/cut.png (not a readable image" in msg
    assert "non_person/huge.png (too large" in msg, msg


@pytest.mark.parametrize("n_classes", [20, 2])
def test_labels_whose_classes_are_not_the_models_outputs_are_refused(tmp_path, n_classes):
    from tinyhost.bench import session

    write_set(tmp_path, [("a.bin", n_classes, 1)], {"a.bin": bytes(490)})
    ds = datasets.load(tmp_path, "kws01")
    ds.check()                                          # without a model nothing to compare
    with pytest.raises(UsageError, match=f"y_labels.csv says {n_classes} classes .* the model has 12 outputs"):
        ds.check(12)
    opts = SimpleNamespace(dataset=str(tmp_path), limit=0)
    with pytest.raises(UsageError, match="model has 12 outputs"):
        session._load_dataset(opts, "kws01", output_tensor=SimpleNamespace(shape=(1, 12)))


@pytest.mark.parametrize("name", ["../outside.bin", "../../etc/hostname", "/etc/hostname", "sub/../../outside.bin"])
def test_sample_paths_outside_the_dataset_folder_are_refused(tmp_path, name):
    (tmp_path / "outside.bin").write_bytes(bytes(490))
    root = write_set(tmp_path / "set" / "kws01", [(name, 12, 3)], {})
    with pytest.raises(UsageError, match="outside the dataset folder"):
        datasets.load(root, "kws01")


def test_csv_cells_that_a_spreadsheet_would_run_are_neutralised(tmp_path):
    r = _result()
    r.accuracy.samples[0] = results.SampleResult(0, '=HYPERLINK("http://x","y")', 0, 1, 1, 0.9, 1000, [0.1, 0.9])
    r.accuracy.samples[1] = results.SampleResult(1, "@SUM(A1)", 0, 0, 1, 0.8, 1100, [0.2, 0.8])
    rows = list(csv.DictReader(io.StringIO(results.to_csv(r))))
    files = [row["file"] for row in rows if row["record"] == "sample"]
    assert files == ['\'=HYPERLINK("http://x","y")', "'@SUM(A1)"]
    assert all(not v.startswith(("=", "+", "@")) for row in rows for v in row.values())
    assert [row["time_us"] for row in rows if row["record"] == "inference"] == ["900", "1000", "1100"]


def test_names_printed_to_the_terminal_lose_their_control_characters():
    from tinyhost import console

    assert console.printable("a\x1b[31mred\x07\nline\x9b") == "a\\x1b[31mred\\x07\\x0aline\\x9b"
    assert console.printable("ünïcode ok.wav") == "ünïcode ok.wav"


def test_live_printer_shows_a_hostile_sample_name_inert(capsys):
    from tinyhost.commands.bench import LivePrinter

    s = results.SampleResult(0, "x\x1b[2J\nfake line.wav", 0, 1, 1, 0.9, 1000, [0.1, 0.9])
    with LivePrinter(1, 1.0, verbose=True) as p:
        p.sample(s, 1, 1, {"metric": "top1", "value": 1.0})
    err = capsys.readouterr()
    text = err.out + err.err
    assert "\x1b[2J" not in text and "x\\x1b[2J\\x0afake line.wav" in text


def test_hostile_model_file_names_are_refused_before_flashing(tmp_path):
    from tinyhost import flash

    for name in ("a\nf 1 b.tflite", "tab\there.tflite", "esc\x1b.tflite"):
        with pytest.raises(UsageError, match="control characters"):
            flash.model_item(tmp_path / name)
    with pytest.raises(UsageError, match="247 bytes long"):
        flash.model_item(tmp_path / ("a" * 240 + ".tflite"))


def test_plan_cache_takes_a_long_model_name(tmp_path):
    from pathlib import Path

    from tinyhost.model import plan

    kws = Path(__file__).resolve().parents[1] / "models" / "kws" / "kws.tflite"
    long_name = tmp_path / ("k" * 240 + ".tflite")
    long_name.write_bytes(kws.read_bytes())
    target = plan.plan_file(long_name, cache=tmp_path / "cache")
    assert target.is_file() and len(target.name) < 120
