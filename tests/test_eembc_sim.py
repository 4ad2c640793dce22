"""The MLPerf Tiny text protocol with a vww01-sized input (27,648 bytes) on the virtual board, real firmware and
engine: `db load` writes straight into the model's input tensor (no second 27 KB buffer next to the model), and
`db load` + `infer 1 0` answers what the binary protocol's inference of the same bytes answers."""

import numpy as np
import pytest

from tinyhost.bench import datasets, journal, runner

pytestmark = pytest.mark.sim
SIM_PROFILE = "esp32s3"       # the VWW-sized input fits here next to the runtime; see docs/bench.md for esp32
SIM_BAUD = 1_000_000          # a fast emulated line keeps the firmware upload short (the link is not under test)
VWW_SHAPE = (1, 96, 96, 3)
VWW_BYTES = 96 * 96 * 3


def tiny_vww_model(path):
    """A random-weight classifier with the vww01 input (1x96x96x3 int8) and 2 classes: quick on the VM."""
    from tinyhost.model.writer import small_classifier

    return small_classifier(path, VWW_SHAPE, 2, seed=1, pool=8)


@pytest.fixture(scope="module")
def board(tmp_path_factory):
    """A virtual ESP32-S3 with the tinyfw files and the vww-shaped model (with its load plan) on its flash."""
    from tinyhost import flash
    from tinyhost.client import Device
    from tinyhost.sim import VirtualBoard

    model = tiny_vww_model(tmp_path_factory.mktemp("model") / "tiny_vww.tflite")
    with VirtualBoard(board=SIM_PROFILE, state_dir=tmp_path_factory.mktemp("eembc-sim"), baud=SIM_BAUD) as vb:
        with Device.open(vb.port, baud=SIM_BAUD) as dev:
            flash.flash_items(dev, flash.firmware_items() + [flash.model_item(model)], vb.board)
        yield vb


@pytest.fixture
def dev_and_dut(board):
    """(Device, EembcDut) on one port, the model freshly loaded; yields them with the ModelInfo."""
    from tinyhost.bench.eembc_host import EembcDut
    from tinyhost.client import Device

    with Device.open(board.port, baud=SIM_BAUD) as dev:
        info = dev.load_model("/models/tiny_vww.tflite")
        dut = EembcDut(dev.t, baud=SIM_BAUD, timeout_s=30.0)
        assert dut.sync() == "tinyhost"
        yield dev, dut, info


def dequantized(output, tensor):
    """What the firmware prints in m-results for an int8 output: (q - zero point) * scale, 5 decimals."""
    q = np.frombuffer(output, dtype=np.int8).astype(np.int64)
    return [float("%.5f" % ((v - tensor.zero_point) * tensor.scale)) for v in q]


def test_vww01_db_load_goes_into_the_tensor_and_matches_binary_inference(dev_and_dut):
    dev, dut, info = dev_and_dut
    assert dut.profile()[1] == "vww01"
    pixels = np.random.default_rng(5).integers(0, 256, VWW_BYTES, dtype=np.uint8)
    # the binary protocol takes the tensor's int8 values: pixel - 128, as the reference firmware converts them
    expected = dev.infer((pixels.astype(np.int16) - 128).astype(np.int8).tobytes())

    free_before = dev.stats()["heap_free_bytes"]
    dut.load(pixels.tobytes())
    free_after = dev.stats()["heap_free_bytes"]
    assert free_before - free_after < 4096, "db load allocated a buffer of the input's size"

    run = dut.infer(1, 0)
    assert run.results == dequantized(expected.output, info.outputs[0])
    printed = dut.command("db print 16 27632")          # the last 16 bytes, as the runner sent them
    assert printed[:2] == ["m-buffer-" + "-".join("%02x" % b for b in pixels[i:i + 8]) for i in (27632, 27640)]

    # more runs on the same load: every `infer` starts from what db loaded
    dut.infer(3, 1)
    assert dut.infer(1, 0).results == run.results
    assert dut.command("db print 8")[0] == "m-buffer-" + "-".join("%02x" % b for b in pixels[:8])


def test_vww01_accuracy_and_performance_flows(dev_and_dut, tmp_path):
    from tinyhost.bench.eembc_host import EembcTarget

    dev, dut, info = dev_and_dut
    rng = np.random.default_rng(9)
    root = tmp_path / "vww01"
    root.mkdir()
    samples = [rng.integers(0, 256, VWW_BYTES, dtype=np.uint8) for _ in range(2)]
    expected = [dequantized(dev.infer((s.astype(np.int16) - 128).astype(np.int8).tobytes()).output,
                            info.outputs[0]) for s in samples]
    for i, s in enumerate(samples):
        (root / f"s{i}.bin").write_bytes(s.tobytes())
    labels = [int(np.argmax(e)) for e in expected]
    (root / "y_labels.csv").write_text("".join(f"s{i}.bin,2,{y}\n" for i, y in enumerate(labels)))
    ds = datasets.load(root)
    target = EembcTarget(dut, "vww01", latency_samples=2)
    with journal.Journal.open(tmp_path / "j.jsonl", {"model_sha256": "vww"}) as j:
        acc = runner.run_accuracy(target, ds, j)
    assert [s.output for s in acc.samples] == expected and acc.value == 1.0
    perf = runner.run_performance(target, [samples[0].tobytes()], window_s=0.1, min_inferences=3, warmups=1)
    assert perf.windows[0].elapsed_us >= 100_000 and len(perf.windows[0].times_us) == 2


def test_failed_default_model_load_keeps_nothing_a_later_load_needs(tmp_path):
    """A text command whose default model does not fit (IC on the esp32 heap) leaves the engine's code imported
    (the next load needs it) and nothing else: a later binary LOAD gets the heap it gets after a text command with
    no default model at all."""
    from pathlib import Path

    from tinyhost import flash
    from tinyhost.bench.eembc_host import EembcDut
    from tinyhost.client import Device
    from tinyhost.sim import VirtualBoard

    ic = Path(__file__).parents[2] / "shared" / "mlperf-tiny" / "pretrainedResnet_quant.tflite"
    if not ic.is_file():
        pytest.skip(f"{ic} is not there (MLPerf Tiny reference models, see ../shared/mlperf-tiny)")
    default = tmp_path / "model.tflite"
    default.write_bytes(ic.read_bytes())
    kws = Path(__file__).parents[1] / "models" / "kws" / "kws.tflite"
    with VirtualBoard(board="esp32", state_dir=tmp_path / "sim", baud=SIM_BAUD) as vb:
        with Device.open(vb.port, baud=SIM_BAUD) as dev:
            flash.flash_items(dev, flash.firmware_items() + [flash.model_item(default), flash.model_item(kws)],
                              vb.board)
            free = {}
            for case in ("no default model", "default model does not fit"):
                if case == "no default model":
                    dev.rename("/models/model.tflite", "/models/ic.tflite")
                else:
                    dev.rename("/models/ic.tflite", "/models/model.tflite")
                dev.soft_reset()
                dut = EembcDut(dev.t, baud=SIM_BAUD, timeout_s=60.0)
                assert dut.sync() == "tinyhost"
                error = dev.stats()["last_error"]
                assert ("loading the default model: DevError(10" in error) == (case != "no default model"), error
                dev.load_model("/models/kws.tflite")
                free[case] = dev.stats()["heap_free_bytes"]
    assert abs(free["no default model"] - free["default model does not fit"]) < 512, free
