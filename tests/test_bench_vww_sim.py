"""`tinyhost bench --board sim:esp32s3 --model vww`: the shipped VWW model (MobileNetV1 0.25, 312,752 bytes,
96x96x3 input) benchmarked on a virtual ESP32-S3 through the running firmware: performance, memory and accuracy,
the predictions equal to the host engine's on the same samples. (On the default virtual ESP32, 112,640-byte heap,
VWW's load through the running firmware has no heap to spare: whether it fits depends on the heap's layout.)"""

import numpy as np
import pytest

from tinyhost.bench import datasets, session

pytestmark = pytest.mark.sim
REPO_MODEL = "models/vww/vww.tflite"
SIM_BAUD = 1_000_000          # a fast emulated line keeps the upload of a 305 KB model short (the link is not under test)
N_SAMPLES = 4


@pytest.fixture(scope="module")
def vww_board(tmp_path_factory):
    from tinyhost import flash
    from tinyhost.client import Device
    from tinyhost.sim import VirtualBoard

    from engine_harness import helpers

    model = helpers.REPO / REPO_MODEL
    vb = VirtualBoard(board="esp32s3", state_dir=tmp_path_factory.mktemp("vww-sim"), baud=SIM_BAUD)
    vb.start()
    try:
        with Device.open(vb.port, baud=SIM_BAUD) as dev:
            flash.flash_items(dev, flash.firmware_items() + [flash.model_item(model)], vb.board)
            dev.soft_reset()             # the runtime bootstrapped for flashing goes: the flashed one starts
    except BaseException:
        vb.stop()
        raise
    yield vb, model
    vb.stop()


def test_vww_bench_on_the_virtual_esp32_matches_the_host_engine(vww_board, tmp_path):
    from tinyhost.model import engine_module

    vb, model = vww_board
    dataset = model.parent / "testset"
    opts = session.BenchOptions(model=str(model), port=vb.port, board="esp32s3", baud=SIM_BAUD, mode="all",
                                window_s=0.2, inputs=1, min_inferences=10, dataset=str(dataset),
                                limit=N_SAMPLES, journal=str(tmp_path / "j.jsonl"))
    result = session.run(opts)
    assert result.provenance.virtual is True and result.provenance.label == "esp32s3 (virtual board)"
    assert result.provenance.benchmark == "vww01"
    w = result.performance.windows[0]
    assert w.inferences >= 10 and w.elapsed_us >= 200_000
    mem = result.memory
    assert mem.model_bytes == model.stat().st_size and 0 < mem.arena_bytes < 64 * 1024 and mem.heap_free_bytes > 0

    # the board's predictions and outputs are the host engine's (numpy kernels) on the same converted inputs
    m = engine_module().load(str(model), backend="numpy")
    ds = datasets.load(dataset, "vww01")
    acc = result.accuracy
    assert [s.index for s in acc.samples] == list(range(N_SAMPLES))
    for s, item in zip(acc.samples, ds.items[:N_SAMPLES]):
        x = datasets.to_model_input(ds.read(item), ds.sample_dtype, m.inputs[0])
        m.input_buffer(0)[:] = np.frombuffer(x, dtype=np.int8)
        m.invoke()
        q = np.frombuffer(bytes(m.output_buffer(0)), dtype=np.int8)
        assert s.predicted == int(np.argmax(q)) and s.label == item.label
        out = m.outputs[0]
        assert s.output == pytest.approx([(int(v) - out.zero_point) * out.scale for v in q], abs=1e-6)


def test_accuracy_without_dataset_uses_the_shipped_test_set(vww_board, tmp_path, monkeypatch):
    from tinyhost.bench import runner

    class Recorder(runner.Listener):
        lines = []

        def message(self, text):
            self.lines.append(text)

    vb, model = vww_board
    monkeypatch.chdir(model.parents[2])
    opts = session.BenchOptions(model="vww", port=vb.port, board="esp32s3", baud=SIM_BAUD, mode="accuracy",
                                limit=2, journal=str(tmp_path / "j.jsonl"))
    result = session.run(opts, Recorder())
    testset = (model.parent / "testset").resolve()
    assert f"no --dataset: using the test set shipped with vww, {testset}" in Recorder.lines
    assert result.provenance.dataset_path == str(testset)
    assert result.accuracy.n_items == 2
