"""tinyhost infer / verify without a board: input checks, verify inputs, comparison, and the CLI refusing bad
models and bad inputs before it opens any port."""

import numpy as np
import pytest

from tinyhost import inference_host as ih
from tinyhost.cli import main
from tinyhost.errors import UsageError, VerifyMismatch

# A port that cannot be opened: a command that got as far as the board would fail with TransportError (exit 5).
NO_PORT = "/dev/tinyhost-test-no-such-port"
AD_INPUT = ih.TensorSpec("input_1", (1, 640), "int8", 0.39, 89)
IMAGE_INPUT = ih.TensorSpec("image", (1, 4, 4, 3), "uint8", 1 / 255, 0)


def run_cli(capsys, *argv):
    with pytest.raises(SystemExit) as exit_info:
        main(list(argv))
    out, err = capsys.readouterr()
    return exit_info.value.code, out, err


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    """A small valid int8 model: input 1x16, two fully connected layers."""
    from tinyhost.model import writer as W

    b, L = W.start(np.random.default_rng(5), (1, 16))
    L.fc(8, activation="RELU")
    L.fc(4)
    path = tmp_path_factory.mktemp("model") / "tiny_fc.tflite"
    path.write_bytes(W.finish(b, L))
    return path


# -- inputs ---------------------------------------------------------------------------------------------------

def test_one_input_in_the_tensor_shape_is_one_row():
    batch = ih.as_rows(np.zeros((1, 640), np.int8), AD_INPUT)
    assert batch.rows.shape == (1, 1, 640)
    assert batch.layout == "single"


def test_rows_replace_the_batch_axis_and_outputs_follow_the_layout():
    batch = ih.as_rows(np.arange(5 * 640).astype(np.int8).reshape(5, 640), AD_INPUT)
    assert batch.rows.shape == (5, 1, 640)
    assert batch.layout == "rows"
    out = ih.TensorSpec("out", (1, 10), "int8", 1.0, 0)
    arranged = batch.arrange([np.full((1, 10), i, np.int8) for i in range(5)], out)
    assert arranged.shape == (5, 10)
    assert arranged[3].tolist() == [3] * 10


def test_stacked_inputs_keep_the_full_tensor_shape():
    batch = ih.as_rows(np.zeros((3, 1, 640), np.int8), AD_INPUT)
    assert batch.rows.shape == (3, 1, 640)
    out = ih.TensorSpec("out", (1, 10), "int8", 1.0, 0)
    assert batch.arrange([np.zeros((1, 10), np.int8)] * 3, out).shape == (3, 1, 10)


def test_wrong_shape_names_expected_and_got():
    with pytest.raises(UsageError) as e:
        ih.as_rows(np.zeros((2, 639), np.int8), AD_INPUT, source="in.npy")
    assert "in.npy has shape (2, 639)" in e.value.message
    assert "expects (1, 640) int8" in e.value.message
    assert "(N, 640)" in e.value.hint


def test_wrong_integer_dtype_names_expected_and_got():
    with pytest.raises(UsageError) as e:
        ih.as_rows(np.zeros((1, 4, 4, 3), np.int8), IMAGE_INPUT)
    assert "dtype int8" in e.value.message and "expects uint8" in e.value.message
    assert "astype(np.uint8)" in e.value.hint


def test_float_input_gets_the_quantisation_to_apply():
    with pytest.raises(UsageError) as e:
        ih.as_rows(np.zeros((1, 640), np.float32), AD_INPUT)
    assert "float32" in e.value.message
    assert "round(x / 0.39) + 89" in e.value.hint


def test_empty_input_is_refused():
    with pytest.raises(UsageError, match="no inputs"):
        ih.as_rows(np.zeros((0, 640), np.int8), AD_INPUT)


def test_read_inputs_refuses_a_file_that_is_not_npy(tmp_path):
    bad = tmp_path / "in.npy"
    bad.write_bytes(b"not numpy at all")
    with pytest.raises(UsageError, match="not a readable .npy"):
        ih.read_inputs(bad, AD_INPUT)
    with pytest.raises(UsageError, match="no input file"):
        ih.read_inputs(tmp_path / "missing.npy", AD_INPUT)


# -- verify inputs and comparison -----------------------------------------------------------------------------

def test_verify_inputs_are_structured_then_seeded_random():
    first = ih.verify_inputs(AD_INPUT, samples=4, seed=9)
    kinds = [k for k, _ in first]
    assert kinds == ["all -128", "all 127", "zeros", "random 0", "random 1", "random 2", "random 3"]
    assert first[0][1].min() == first[0][1].max() == -128
    assert first[1][1].min() == 127 and first[2][1].max() == 0
    assert all(x.dtype == np.int8 and x.shape == (1, 640) for _, x in first)
    again = ih.verify_inputs(AD_INPUT, samples=4, seed=9)
    other = ih.verify_inputs(AD_INPUT, samples=4, seed=10)
    assert all(np.array_equal(a, b) for (_, a), (_, b) in zip(first, again))
    assert not np.array_equal(first[3][1], other[3][1])


def test_verify_inputs_for_uint8_use_its_range_and_zero_point():
    spec = ih.TensorSpec("image", (1, 2, 2, 3), "uint8", 0.5, 128)
    kinds = [k for k, _ in ih.verify_inputs(spec, samples=0)]
    assert kinds == ["all 0", "all 255", "all 128 (zero point)"]


def test_verify_inputs_for_float32_span_the_range_the_model_quantizes_into():
    spec = ih.TensorSpec("x", (1, 64), "float32", 0.0, 0, quantized_as=(0.5, 3))
    samples = ih.verify_inputs(spec, samples=3, seed=1)
    assert [k for k, _ in samples] == ["all -65.5", "all 62", "zeros", "random 0", "random 1", "random 2"]
    assert all(x.dtype == np.float32 and x.shape == (1, 64) for _, x in samples)
    randoms = np.concatenate([x.ravel() for _, x in samples[3:]])
    assert randoms.min() < -65.5 and randoms.max() > 62 and -78.3 < randoms.min() and randoms.max() < 74.8


def test_a_float_input_model_is_accepted_with_its_quantisation(tmp_path):
    from tinyhost.model.writer import small_classifier

    path = small_classifier(tmp_path / "f.tflite", (1, 8, 8, 1), 3, conv_channels=2, float32_io=True)
    model = ih.check_model(path)
    (x,), (y,) = model.inputs, model.outputs
    assert (x.dtype, y.dtype) == ("float32", "float32") and x.nbytes == 4 * 64
    assert x.quantized_as == (pytest.approx(0.05), -3)
    batch = ih.as_rows(np.zeros((2, 8, 8, 1), np.float32), x)
    assert batch.rows.shape == (2, 1, 8, 8, 1)
    with pytest.raises(UsageError, match="dtype float64.*expects float32") as e:
        ih.as_rows(np.zeros((1, 8, 8, 1)), x)
    assert "astype(np.float32)" in e.value.hint


def test_compare_counts_mismatching_elements_and_the_largest_difference():
    expected = [np.array([[1, 2, 3, 4]], np.int8)]
    got = [np.array([[1, 5, 3, -4]], np.int8)]
    check = ih.compare(7, "random 4", got, expected, time_us=120)
    assert (check.index, check.elements, check.mismatches, check.max_abs_diff) == (7, 4, 2, 8.0)
    assert not check.ok
    assert ih.compare(0, "zeros", expected, expected).ok


def test_a_mismatch_raises_verify_mismatch_with_exit_code_12():
    prov = ih.Provenance(board="esp32", virtual=False, port="p", model_path="m", model_sha256="0" * 64,
                         model_bytes=1)
    samples = [ih.SampleCheck(0, "zeros", 4, 0, 0.0, 10), ih.SampleCheck(1, "random 0", 4, 3, 2.0, 11)]
    result = ih.VerifyResult(prov, samples, seed=0, latency=ih.Latency.of([10, 11]))
    with pytest.raises(VerifyMismatch) as e:
        ih.raise_on_mismatch(result)
    assert e.value.exit_code == 12
    assert "3 elements" in e.value.message and "1 of 2 inputs" in e.value.message
    assert result.to_dict()["samples"][1]["ok"] is False
    ih.raise_on_mismatch(ih.VerifyResult(prov, samples[:1], seed=0, latency=ih.Latency.of([10])))


def test_latency_summary():
    lat = ih.Latency.of([30, 10, 20, 40])
    assert (lat.count, lat.min_us, lat.median_us, lat.max_us) == (4, 10, 25.0, 40)


def test_outputs_are_written_atomically_as_npy_or_npz(tmp_path):
    one = tmp_path / "out.npy"
    ih.write_outputs([np.arange(6, dtype=np.int8).reshape(2, 3)], one)
    assert np.load(one).tolist() == [[0, 1, 2], [3, 4, 5]]
    two = tmp_path / "out.npz"
    ih.write_outputs([np.zeros(2, np.int8), np.ones(3, np.int32)], two)
    with np.load(two) as z:
        assert sorted(z.files) == ["output0", "output1"] and z["output1"].dtype == np.int32
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.npy", "out.npz"]     # no .part left behind


# -- the CLI refuses before it touches a port -------------------------------------------------------------------

def test_corrupt_model_is_refused_before_any_port_is_opened(tmp_path, capsys, model_file):
    bad = tmp_path / "corrupt.tflite"
    data = bytearray(model_file.read_bytes())
    bad.write_bytes(bytes(data[: len(data) // 3]))
    inputs = tmp_path / "in.npy"
    np.save(inputs, np.zeros((1, 16), np.int8))
    code, out, err = run_cli(capsys, "infer", "--port", NO_PORT, "--model", str(bad), "--input", str(inputs),
                             "--output", str(tmp_path / "out.npy"))
    assert code == 10, err
    assert "corrupt.tflite" in err and err.startswith("tinyhost: ")
    code, _, err = run_cli(capsys, "verify", "--port", NO_PORT, "--model", str(bad))
    assert code == 10, err
    assert not (tmp_path / "out.npy").exists()


def test_bad_input_shape_is_refused_before_any_port_is_opened(tmp_path, capsys, model_file):
    inputs = tmp_path / "in.npy"
    np.save(inputs, np.zeros((3, 15), np.int8))
    code, _, err = run_cli(capsys, "infer", "--port", NO_PORT, "--model", str(model_file), "--input",
                           str(inputs), "--output", str(tmp_path / "out.npy"))
    assert code == 2, err
    assert "has shape (3, 15)" in err and "expects (1, 16) int8" in err
    assert not (tmp_path / "out.npy").exists()


def test_bad_input_dtype_is_refused_with_exit_2(tmp_path, capsys, model_file):
    inputs = tmp_path / "in.npy"
    np.save(inputs, np.zeros((1, 16), np.float64))
    code, _, err = run_cli(capsys, "infer", "--port", NO_PORT, "--model", str(model_file), "--input",
                           str(inputs), "--output", str(tmp_path / "out.npy"))
    assert code == 2, err
    assert "dtype float64" in err and "expects int8" in err


def test_negative_samples_is_a_usage_error(capsys, model_file):
    code, _, err = run_cli(capsys, "verify", "--port", NO_PORT, "--model", str(model_file), "--samples", "-1")
    assert code == 2, err
