"""Which test set an accuracy run uses and whether it suits the model: a shipped model's own test set when no
--dataset is given, and a warning when a test set's recorded feature settings (features.json) differ from what the
model expects (the official kws01 scored on the shipped kws test set, made with another MFCC front end)."""

from types import SimpleNamespace

import pytest

from engine_harness import helpers
from tinyhost import features, zoo
from tinyhost.bench import datasets, runner, session
from tinyhost.errors import UsageError

KWS_TESTSET = helpers.REPO / "models" / "kws" / "testset"
KWS01 = helpers.MLPERF_DIR / "kws_ref_model.tflite"


class Recorder(runner.Listener):
    def __init__(self):
        self.lines = []

    def message(self, text):
        self.lines.append(text)


def _input_tensor(path):
    from tinyhost.model import inspect

    r = inspect(path, tflm=False)
    t = r.tensors[r.inputs[0]]
    return SimpleNamespace(dtype=t.dtype, scale=t.scale, zero_point=t.zero_point, nbytes=t.nbytes)


def _warnings(model_path, dataset=KWS_TESTSET):
    listener = Recorder()
    opts = session.BenchOptions(model=str(model_path), dataset=str(dataset))
    session._load_dataset(opts, "kws01", _input_tensor(model_path), zoo.sha256_file(model_path), listener)
    return [line for line in listener.lines if line.startswith("warning:")]


def test_the_shipped_kws_test_set_says_how_it_was_made():
    ds = datasets.load(KWS_TESTSET, "kws01")
    s = ds.feature_settings
    assert s.made_for == "kws" and s.mfcc == features.KWS
    kws = _input_tensor(helpers.REPO / "models" / "kws" / "kws.tflite")
    assert s.input_quant == (pytest.approx(kws.scale), kws.zero_point)


def test_kws01_on_the_kws_test_set_is_warned_about():
    if not KWS01.is_file():
        pytest.skip(f"{KWS01} is absent (shared MLPerf Tiny models are not in a fresh clone)")
    (warning,) = _warnings(KWS01)
    assert f"the test set {KWS_TESTSET} (made for kws) does not fit kws01" in warning
    assert "window_samples 640 (model: 480), fft_size 1024 (model: 512)" in warning
    assert "says little about the model" in warning


def test_kws_on_its_own_test_set_gets_no_warning():
    assert _warnings(helpers.REPO / "models" / "kws" / "kws.tflite") == []


def test_a_test_set_quantized_for_another_input_is_warned_about_for_any_model(tmp_path):
    from tinyhost.model.writer import small_classifier

    model = small_classifier(tmp_path / "m.tflite", (1, 49, 10, 1), 12, conv_channels=2, pool=5)
    folder = tmp_path / "set"
    folder.mkdir()
    (folder / "a.bin").write_bytes(bytes(490))
    (folder / "y_labels.csv").write_text("a.bin,12,3\n")
    datasets.write_feature_settings(folder, datasets.FeatureSettings("other", features.KWS, (0.25, 10)))
    (warning,) = _warnings(model, folder)
    assert "does not fit this model" in warning and "scale 0.25, zero point 10 (model input: scale 0.05" in warning
    datasets.write_feature_settings(folder, datasets.FeatureSettings("", None, (0.0502, -3)))   # within 1 %
    assert _warnings(model, folder) == []


def test_a_test_set_without_features_json_is_not_judged(tmp_path):
    folder = tmp_path / "set"
    folder.mkdir()
    (folder / "a.bin").write_bytes(bytes(490))
    (folder / "y_labels.csv").write_text("a.bin,12,3\n")
    assert datasets.load(folder, "kws01").feature_settings is None
    assert datasets.feature_mismatches(None, features.KWS, SimpleNamespace(dtype="int8", scale=1, zero_point=0)) == []


def test_a_broken_features_json_is_a_usage_error(tmp_path):
    (tmp_path / "a.bin").write_bytes(bytes(490))
    (tmp_path / "y_labels.csv").write_text("a.bin,12,3\n")
    (tmp_path / "features.json").write_text('{"mfcc": {"window_ms": 30}}')
    with pytest.raises(UsageError, match="features.json is not a valid feature description"):
        datasets.load(tmp_path, "kws01")


def test_feature_settings_round_trip(tmp_path):
    s = datasets.FeatureSettings("kws01", features.MLPERF_KWS01, (0.5847029089927673, 83))
    datasets.write_feature_settings(tmp_path, s)
    assert datasets.read_feature_settings(tmp_path) == s


@pytest.mark.parametrize("name", ["kws", "models/kws/kws.tflite", "vww"])
def test_a_shipped_model_brings_its_test_set(name, monkeypatch):
    monkeypatch.chdir(helpers.REPO)
    folder = "kws" if "kws" in name else "vww"
    assert session._shipped_testset(name) == (helpers.REPO / "models" / folder / "testset").resolve()


def test_other_models_bring_none(tmp_path):
    from tinyhost.model.writer import small_classifier

    assert session._shipped_testset(str(small_classifier(tmp_path / "m.tflite", (1, 8, 8, 1), 2))) is None
    assert session._shipped_testset("kws01") is None            # official: no test set ships with it
    assert session._shipped_testset(str(tmp_path / "absent.tflite")) is None


def test_accuracy_without_dataset_for_another_model_still_asks_for_one(tmp_path):
    from tinyhost.model.writer import small_classifier

    opts = session.BenchOptions(model=str(small_classifier(tmp_path / "m.tflite", (1, 8, 8, 1), 2)),
                                mode="accuracy", port="/dev/tinyhost-test-no-such-port")
    with pytest.raises(UsageError, match="accuracy mode needs a test set"):
        session.run(opts)
