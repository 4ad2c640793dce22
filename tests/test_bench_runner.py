"""The bench runner against a stand-in Device (the tinyhost.client contract): windows, accuracy, resume, resets."""

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from tinyhost import client, errors
from tinyhost import protocol as P
from tinyhost.bench import datasets, journal, runner


REPLIES = Path(__file__).parent / "firmware_replies"


def firmware_reply(name):
    """A reply tinyfw sent on the virtual board (KWS loaded), as key=value pairs: what the fakes answer, so the host
    code under test reads the keys the firmware really sends (test_bench_sim.py checks they still are)."""
    return P.parse_kv((REPLIES / f"{name}.txt").read_bytes())


class FakeDevice:
    """Implements the parts of tinyhost.client.Device the runner uses. Inference takes ``latency_us`` on the
    'device clock'; the predicted class is input[0] % n_classes; ``fail_at`` makes chosen infer calls fail."""

    def __init__(self, latency_us=1000, n_classes=12, fail_at=(), log=None):
        self.latency_us = latency_us
        self.n_classes = n_classes
        self.input = b""
        self.calls = 0
        self.fail_at = set(fail_at)
        self.log = log if log is not None else []
        self.closed = False

    def set_input(self, data, index=0):
        self.input = bytes(data)

    def invoke(self, n=1, warmup=0, on_timing=None):
        self.log.append(("invoke", n, warmup))
        times = [self.latency_us + (i % 3) for i in range(n)]
        for i, t in enumerate(times):
            if on_timing:
                on_timing(i, t)
        return SimpleNamespace(times_us=times)

    def infer(self, data):
        self.calls += 1
        if self.calls in self.fail_at:
            raise errors.BoardNotResponding("no answer")
        self.log.append(("infer", bytes(data[:1])))
        out = np.full(self.n_classes, -128, dtype=np.int8)
        out[data[0] % self.n_classes] = 127
        return SimpleNamespace(output=out.tobytes(), time_us=self.latency_us)

    def info(self):
        return client.device_info_from_kv(firmware_reply("info"))

    def stats(self):
        return client.stats_from_kv(firmware_reply("stats"))

    def close(self):
        self.closed = True


def tensor(dtype, nbytes, scale, zp):
    return SimpleNamespace(dtype=dtype, nbytes=nbytes, scale=scale, zero_point=zp, shape=(1, nbytes))


MODEL = client.model_info_from_kv(firmware_reply("load_kws"))     # KWS: int8 1x49x10x1 -> int8 1x12


def connector(devices):
    """connect() for TinyhostTarget: hands out the next device each time (a reconnect gets a fresh one)."""
    queue = list(devices)

    def connect():
        if not queue:
            raise errors.BoardNotResponding("board gone")
        return queue.pop(0), MODEL
    return connect


def kws_set(tmp_path, labels):
    root = tmp_path / "kws01"
    root.mkdir(parents=True)
    rows = []
    for i, label in enumerate(labels):
        (root / f"s{i}.bin").write_bytes(bytes([i % 12]) + bytes(489))
        rows.append(f"s{i}.bin,12,{label}\n")
    (root / "y_labels.csv").write_text("".join(rows))
    return datasets.load(root)


class Recorder(runner.Listener):
    def __init__(self):
        self.events = []

    def message(self, text):
        self.events.append(("message", text))

    def timing(self, input_index, seq, time_us):
        self.events.append(("timing", input_index, seq, time_us))

    def window(self, window):
        self.events.append(("window", window.input_index))

    def sample(self, sample, done, total, running):
        self.events.append(("sample", sample.index, done, total, running["value"]))


def test_performance_windows_follow_mlperf_rules_and_stream_timings():
    dev = FakeDevice(latency_us=1000)
    target = runner.TinyhostTarget(connector([dev]))
    rec = Recorder()
    inputs = runner.synthetic_inputs(490)
    assert len(inputs) == 5 and len(set(inputs)) == 5
    perf = runner.run_performance(target, inputs, window_s=0.05, min_inferences=10, warmups=2, listener=rec)
    assert len(perf.windows) == 5
    for w in perf.windows:
        assert w.elapsed_us >= 50_000 and w.inferences >= 10
        assert w.elapsed_us == sum(w.times_us) and len(w.times_us) == w.inferences
    assert perf.median_inferences_per_s == pytest.approx(1e6 / 1001, rel=0.01)
    assert perf.latency["p50_us"] == 1001 and perf.latency["max_us"] == 1002
    timings = [e for e in rec.events if e[0] == "timing"]
    assert len(timings) == sum(w.inferences for w in perf.windows)
    assert [e for e in rec.events if e[0] == "window"] == [("window", i) for i in range(5)]
    assert ("invoke", 1, 2) in dev.log                                     # the warm-ups


def test_short_window_at_least_min_inferences():
    target = runner.TinyhostTarget(connector([FakeDevice(latency_us=100_000)]))
    perf = runner.run_performance(target, [bytes(490)], window_s=0.001, min_inferences=10, warmups=0)
    assert perf.windows[0].inferences == 10


def test_bad_window_is_a_usage_error():
    target = runner.TinyhostTarget(connector([FakeDevice()]))
    with pytest.raises(errors.UsageError):
        runner.run_performance(target, [bytes(490)], window_s=0)


def test_accuracy_run_metrics_and_live_progress(tmp_path):
    labels = [0, 1, 2, 3, 0, 0]          # predictions are 0,1,2,3,4,5 -> 4 of 6 right
    ds = kws_set(tmp_path, labels)
    target = runner.TinyhostTarget(connector([FakeDevice()]))
    rec = Recorder()
    with journal.Journal.open(tmp_path / "j.jsonl", {"model_sha256": "m", "dataset_sha256": ds.fingerprint()}) as j:
        acc = runner.run_accuracy(target, ds, j, listener=rec)
    assert acc.n_items == 6 and acc.value == pytest.approx(4 / 6) and acc.metric == "top1"
    assert acc.target == 0.90 and acc.meets_target is False
    assert acc.confusion[0][4] == 1 and acc.confusion[0][5] == 1 and acc.confusion[3][3] == 1
    assert acc.per_class[0]["recall"] == pytest.approx(1 / 3) and acc.per_class[0]["name"] == "down"
    assert acc.top_k["5"] == 1.0                   # ties at the lowest score: classes 0-3 fill the top 5
    samples = [e for e in rec.events if e[0] == "sample"]
    assert [s[2] for s in samples] == [1, 2, 3, 4, 5, 6]
    assert samples[3][4] == 1.0 and samples[-1][4] == pytest.approx(4 / 6)    # running accuracy
    assert acc.device_time_s == pytest.approx(6 * 1000 / 1e6) and acc.input_bytes == 6 * 490


def test_interrupted_run_resumes_without_double_counting(tmp_path):
    ds = kws_set(tmp_path, [0, 1, 2, 3, 4, 5, 6, 7])
    ident = {"model_sha256": "m", "dataset_sha256": ds.fingerprint()}
    path = tmp_path / "j.jsonl"

    class CtrlC(FakeDevice):
        def infer(self, data):
            if self.calls == 3:
                raise KeyboardInterrupt
            return super().infer(data)

    first = CtrlC()
    with journal.Journal.open(path, ident) as j:
        with pytest.raises(KeyboardInterrupt):
            runner.run_accuracy(runner.TinyhostTarget(connector([first])), ds, j)
    assert first.calls == 3 and len(journal._read(path)[1]) == 3

    second = FakeDevice()
    with journal.Journal.open(path, ident, resume=True) as j:
        acc = runner.run_accuracy(runner.TinyhostTarget(connector([second])), ds, j)
    assert second.calls == 5                                   # items 3..7 only
    assert [x[1] for x in second.log] == [bytes([i]) for i in range(3, 8)]
    assert acc.n_items == 8 and acc.value == 1.0 and acc.resumed_items == 3
    assert sorted(s.index for s in acc.samples) == list(range(8))


def test_board_reset_mid_run_reconnects_and_continues(tmp_path):
    ds = kws_set(tmp_path, [0, 1, 2, 3])
    flaky, fresh = FakeDevice(fail_at={3}), FakeDevice()
    rec = Recorder()
    with journal.Journal.open(tmp_path / "j.jsonl", {"model_sha256": "m"}) as j:
        acc = runner.run_accuracy(runner.TinyhostTarget(connector([flaky, fresh])), ds, j, listener=rec)
        assert [e["event"] for e in j.events] == ["reset", "end"]
    assert flaky.closed and acc.board_resets == 1 and acc.value == 1.0
    assert [x[1] for x in flaky.log + fresh.log] == [bytes([i]) for i in range(4)]   # item 2 run once, on `fresh`
    assert any("stopped answering at sample 2" in e[1] for e in rec.events if e[0] == "message")


def test_board_that_does_not_come_back_stops_with_resume_hint(tmp_path):
    ds = kws_set(tmp_path, [0, 1, 2])
    with journal.Journal.open(tmp_path / "j.jsonl", {"model_sha256": "m"}) as j:
        with pytest.raises(runner.BenchInterrupted) as info:
            runner.run_accuracy(runner.TinyhostTarget(connector([FakeDevice(fail_at={2})])), ds, j)
    assert "did not come back after sample 1" in info.value.message
    assert "1 of 3 samples are safe" in info.value.hint and "--resume" in info.value.hint


def test_anomaly_detection_scores_files_and_computes_auc(tmp_path):
    import struct

    root = tmp_path / "ad01"
    root.mkdir()
    rows = []
    for i, level in enumerate([0.0, 0.1, 3.0, 5.0]):
        (root / f"f{i}.bin").write_bytes(struct.pack("<1280f", *([level] * 1280)))
        rows.append(f"f{i}.bin,2,{int(level > 1)},2560,2560\n")
    (root / "y_labels.csv").write_text("".join(rows))
    ds = datasets.load(root)
    model = SimpleNamespace(inputs=[tensor("int8", 640, 0.1, 0)], outputs=[tensor("int8", 640, 0.1, 0)])

    class ZeroAutoencoder(FakeDevice):
        def infer(self, data):                                 # reconstructs everything as 0
            return SimpleNamespace(output=bytes(640), time_us=500)

    target = runner.TinyhostTarget(lambda: (ZeroAutoencoder(), model), anomaly=True)
    with journal.Journal.open(tmp_path / "j.jsonl", {"model_sha256": "m"}) as j:
        acc = runner.run_accuracy(target, ds, j)
    assert acc.metric == "auc" and acc.auc == 1.0 and acc.meets_target is True
    assert acc.n_items == 8 and acc.n_files == 4
    scores = {fs["file"]: fs["score"] for fs in acc.file_scores}
    assert scores["f2.bin"] == pytest.approx(9.0, rel=1e-6) and scores["f0.bin"] == 0.0


def test_memory_from_the_firmwares_load_stats_and_info_replies():
    """Every row of the report's memory table comes from a key the firmware sends (none is left n/a)."""
    target = runner.TinyhostTarget(connector([FakeDevice()]))
    mem = target.memory(model_bytes=50160)
    assert (mem.model_bytes, mem.arena_bytes, mem.weights_ram_bytes, mem.heap_total_bytes, mem.heap_free_bytes,
            mem.heap_peak_bytes) == (50160, 25248, 2048, 111232, 27648, 83648)


def test_pick_inputs_spreads_over_the_set(tmp_path):
    ds = kws_set(tmp_path, [0] * 10)
    assert [it.index for it in runner.pick_inputs(ds)] == [0, 2, 4, 6, 8]
    with pytest.raises(errors.UsageError, match="needs 5 different inputs"):
        runner.pick_inputs(kws_set(tmp_path / "small", [0, 1]))


def test_synthetic_inputs_for_a_float32_input_are_finite_floats():
    inputs = runner.synthetic_inputs(4 * 490, count=3, dtype="float32")
    values = [np.frombuffer(x, "<f4") for x in inputs]
    assert all(v.size == 490 and np.isfinite(v).all() and v.std() > 0.5 for v in values)
    assert not np.array_equal(values[0], values[1])
