"""tinyhost bench end to end on the virtual board: our protocol (performance, memory, energy, accuracy with a
journal, resume, a board reset mid-run) and the MLPerf Tiny text protocol answered by the same firmware."""

import json

import numpy as np
import pytest

from tinyhost.bench import journal, runner, session

pytestmark = pytest.mark.sim
SIM_PROFILE = "esp32"         # the smallest ESP32 heap (112 KB): runtime + engine + KWS-sized models fit
N_SAMPLES = 8
SIM_BAUD = 1_000_000          # a fast emulated line keeps the firmware upload short (the link is not under test)


def tiny_kws_model(path):
    """A small random-weight model with the kws01 input (1x49x10x1 int8) and 12 classes: quick on the VM."""
    from tinyhost.model.writer import small_classifier

    return small_classifier(path, (1, 49, 10, 1), 12, seed=7, conv_channels=4, pool=5)

@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    return tiny_kws_model(tmp_path_factory.mktemp("model") / "tiny_kws.tflite")


@pytest.fixture(scope="module")
def flashed_board(tmp_path_factory, model_file):
    """A virtual board with the tinyfw files on its flash (so tinyfw.eembc is there too) and the model loadable.

    Skips (saying why) only while the runtime or the engine cannot start on the emulated heap: that is the
    firmware's to fix, and these tests then run for real."""
    from tinyhost import flash
    from tinyhost.client import Device
    from tinyhost.errors import DeviceError, DoesNotFit
    from tinyhost.sim import VirtualBoard

    vb = VirtualBoard(board=SIM_PROFILE, state_dir=tmp_path_factory.mktemp("bench-sim"), baud=SIM_BAUD)
    vb.start()
    try:
        with Device.open(vb.port, baud=SIM_BAUD) as dev:
            # the model with its load plan (the full path does not fit the esp32 heap), then a reset: the runtime
            # bootstrapped into RAM for flashing leaves its code on the heap
            flash.flash_items(dev, flash.firmware_items() + [flash.model_item(model_file)], vb.board)
            dev.soft_reset()
        with Device.open(vb.port, baud=SIM_BAUD) as dev:
            dev.load_model("/models/tiny_kws.tflite")
    except (DoesNotFit, DeviceError) as e:
        vb.stop()
        if "memory" not in str(e).lower():
            raise
        pytest.skip(f"tinyfw does not fit the virtual {SIM_PROFILE}'s heap yet (runtime + engine + model): {e}")
    except BaseException:
        vb.stop()
        raise
    yield vb
    vb.stop()


@pytest.fixture(scope="module")
def kws_dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("data") / "kws01"
    root.mkdir()
    rng = np.random.default_rng(3)
    for i in range(N_SAMPLES):
        (root / f"s{i:02d}.bin").write_bytes(rng.integers(-128, 128, 490, dtype=np.int8).tobytes())
    (root / "y_labels.csv").write_text("".join(f"s{i:02d}.bin,12,{i % 12}\n" for i in range(N_SAMPLES)))
    return root


def options(board, model, **kw):
    base = dict(model=str(model), port=board.port, board=SIM_PROFILE, baud=SIM_BAUD, window_s=0.2, inputs=2, min_inferences=10)
    base.update(kw)
    return session.BenchOptions(**base)


class Stopper(runner.Listener):
    """Raises KeyboardInterrupt (a Ctrl-C) after ``after`` samples; or calls ``action`` at that sample."""

    def __init__(self, after, action=None):
        self.after, self.action, self.seen, self.messages = after, action, 0, []

    def message(self, text):
        self.messages.append(text)

    def sample(self, s, done, total, running):
        self.seen += 1
        if self.seen == self.after:
            if self.action is None:
                raise KeyboardInterrupt
            self.action()


def test_performance_memory_energy_on_the_virtual_board(flashed_board, model_file, tmp_path):
    result = session.run(options(flashed_board, model_file, mode="all"))
    prov = result.provenance
    assert prov.virtual is True and prov.board == SIM_PROFILE and prov.label == f"{SIM_PROFILE} (virtual board)"
    assert prov.firmware_hash and prov.micropython_version and prov.backend
    assert prov.benchmark == "kws01" and len(prov.model_sha256) == 64
    perf = result.performance
    assert len(perf.windows) == 2
    for w in perf.windows:
        assert w.elapsed_us >= 200_000 and w.inferences >= 10 and w.elapsed_us == sum(w.times_us)
    assert perf.latency["p50_us"] > 0 and perf.median_inferences_per_s > 0
    mem = result.memory
    assert mem.arena_bytes > 0 and mem.heap_free_bytes > 0 and mem.model_bytes == model_file.stat().st_size
    assert mem.weights_ram_bytes is not None and mem.heap_total_bytes > mem.heap_peak_bytes > 0
    assert result.energy.kind == "estimate" and "virtual board" in result.energy.note
    assert result.accuracy is None


def test_float_io_model_benchmarks_with_float_inputs(flashed_board, tmp_path):
    """A model with float32 input and output: synthetic float32 inputs for performance, float32 MFCCs of WAV
    files for accuracy."""
    from tinyhost import features
    from tinyhost.model.writer import small_classifier

    model = small_classifier(tmp_path / "tiny_kws_float.tflite", (1, 49, 10, 1), 12, seed=7, conv_channels=4,
                             pool=5, float32_io=True)
    for word in ("yes", "no"):
        (tmp_path / "wav" / word).mkdir(parents=True)
        features.write_wav(tmp_path / "wav" / word / "a.wav",
                           np.random.default_rng(len(word)).uniform(-0.3, 0.3, 16000).astype(np.float32))
    listener = Recorder()
    result = session.run(options(flashed_board, model, mode="performance"), listener)
    assert "performance: 2 inputs (synthetic (pseudo-random float32 values))" in listener.lines
    assert result.performance.median_inferences_per_s > 0
    acc = session.run(options(flashed_board, model, mode="accuracy", dataset=str(tmp_path / "wav"),
                              journal=str(tmp_path / "j.jsonl"))).accuracy
    assert acc.n_items == 2 and len(acc.samples) == 2
    assert all(len(s.output) == 12 and abs(sum(s.output) - 1) < 0.05 for s in acc.samples)


class Recorder(runner.Listener):
    def __init__(self):
        self.lines = []

    def message(self, text):
        self.lines.append(text)


def test_the_recorded_firmware_replies_have_the_keys_the_firmware_sends(flashed_board):
    """tests/firmware_replies/ (what the bench runner's stand-in Device answers) against this firmware's INFO, LOAD
    and STATS: the same keys, so host code that reads a key the firmware does not send fails with the fakes too."""
    from pathlib import Path

    from tinyhost import protocol as P
    from tinyhost.client import Device

    def recorded(name):
        return set(P.parse_kv((Path(__file__).parent / "firmware_replies" / f"{name}.txt").read_bytes()))

    with Device.open(flashed_board.port, baud=SIM_BAUD) as dev:
        info = P.parse_kv(dev.link.request(P.T.INFO, expect_bytes=600).payload)
        load = P.parse_kv(dev.link.request(P.T.LOAD, P.pack_load("/models/tiny_kws.tflite", "auto"),
                                           timeout_s=60.0, expect_bytes=1024).payload)
        stats = P.parse_kv(dev.link.request(P.T.STATS, expect_bytes=600).payload)
    assert set(info) == recorded("info")
    assert set(load) == recorded("load_kws")
    assert set(stats) == recorded("stats")


def test_accuracy_ctrl_c_then_resume_counts_every_sample_once(flashed_board, model_file, kws_dataset, tmp_path):
    path = tmp_path / "j.jsonl"
    ref = session.run(options(flashed_board, model_file, mode="accuracy", dataset=str(kws_dataset),
                              journal=str(tmp_path / "ref.jsonl")))
    with pytest.raises(KeyboardInterrupt):
        session.run(options(flashed_board, model_file, mode="accuracy", dataset=str(kws_dataset),
                            journal=str(path)), Stopper(after=5))
    header, done, _, _ = journal._read(path)
    assert sorted(done) == [0, 1, 2, 3, 4]
    resumed = session.run(options(flashed_board, model_file, mode="accuracy", dataset=str(kws_dataset),
                                  journal=str(path), resume=True))
    acc = resumed.accuracy
    assert acc.resumed_items == 5 and acc.n_items == N_SAMPLES
    assert [s.index for s in acc.samples] == list(range(N_SAMPLES))
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert sorted(r["i"] for r in lines if "i" in r) == list(range(N_SAMPLES))          # each sample once
    assert [s.predicted for s in acc.samples] == [s.predicted for s in ref.accuracy.samples]
    assert acc.value == ref.accuracy.value


def test_board_reset_mid_run_is_detected_and_the_run_continues(flashed_board, model_file, kws_dataset, tmp_path):
    holder = {}

    class Capture(runner.Listener):
        pass

    def reset_board():
        holder["target"].dev.soft_reset()          # the board restarts: the model is gone

    original = runner.TinyhostTarget.__init__

    def capture_init(self, *a, **kw):
        original(self, *a, **kw)
        holder["target"] = self

    listener = Stopper(after=4, action=reset_board)
    runner.TinyhostTarget.__init__ = capture_init
    try:
        result = session.run(options(flashed_board, model_file, mode="accuracy", dataset=str(kws_dataset),
                                     journal=str(tmp_path / "j.jsonl")), listener)
    finally:
        runner.TinyhostTarget.__init__ = original
    acc = result.accuracy
    assert acc.board_resets == 1 and acc.n_items == N_SAMPLES
    assert [s.index for s in acc.samples] == list(range(N_SAMPLES))
    assert any("stopped answering at sample 4" in m for m in listener.messages)


def test_mlperf_text_protocol_on_the_same_port(flashed_board, model_file):
    """The firmware answers the EEMBC runner's commands between binary frames; --dut eembc drives it."""
    from tinyhost.bench.eembc_host import EembcDut, EembcTarget
    from tinyhost.client import Device

    with Device.open(flashed_board.port, baud=SIM_BAUD) as dev:
        dev.put_file(model_file, "/models/tiny_kws.tflite")
        dev.load_model("/models/tiny_kws.tflite")
        expected = dev.infer(bytes([5]) * 490)
        dut = EembcDut(dev.t, baud=SIM_BAUD)
        assert dut.sync() == "tinyhost"
        assert dut.profile()[1] == "kws01"
        target = EembcTarget(dut, "kws01", latency_samples=3)
        outcome = target.infer_item(bytes([5]) * 490, "int8")
        perf = runner.run_performance(target, [bytes(490)], window_s=0.2, min_inferences=10, warmups=1)
    assert outcome.time_us > 0 and len(outcome.output) == 12
    out_scale, out_zp = 1 / 256, -128
    reference = [(b - 256 if b > 127 else b) for b in expected.output]
    assert outcome.output == pytest.approx([(q - out_zp) * out_scale for q in reference], abs=1e-4)
    assert perf.windows[0].elapsed_us >= 200_000 and len(perf.windows[0].times_us) == 3
