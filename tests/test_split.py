"""Split inference: split points, the plan's arithmetic, and head + tail == the whole model, bit for bit.

The head runs [0, k) with the engine (Model.invoke(stop=...)) and leaves the live tensors in the arena; the tail
(tinyhost.split.Tail, what the server runs) writes them into its own arena and runs [k, n). Every split point of
the shipped models and the official MLPerf Tiny ones (when ../shared has them) is checked with the host's numpy
kernels; the board's own head runs under the MicroPython VM with the heap locked, at every split point of the same models.
"""

import json
from types import SimpleNamespace

import numpy as np
import pytest

from engine_harness import helpers
from tinyhost import split
from tinyhost.boardtime import Coefficient
from tinyhost.linkmodel import Link, transfer_us
from tinyhost.model import engine_module

REPO = helpers.REPO
SHIPPED = {"kws": REPO / "models" / "kws" / "kws.tflite", "vww": REPO / "models" / "vww" / "vww.tflite"}


def _model(name):
    return SHIPPED[name] if name in SHIPPED else helpers.mlperf_path(name)


def _whole(m, x):
    return helpers.engine_output(m, x).tobytes()


@pytest.mark.parametrize("name", list(SHIPPED) + list(helpers.MLPERF_MODELS))
def test_head_plus_tail_is_the_whole_model_at_every_split_point(name):
    path = _model(name)
    engine = engine_module()
    splits = split.split_points(path)
    head = engine.load(str(path), backend="numpy", weights="ram")
    tail = split.Tail(path, splits)
    x = helpers.inputs_for(head.inputs[0].shape, 7, seed=3)[-1]      # a random input
    want = _whole(head, x)
    n = len(splits.operators)
    assert [p.k for p in splits.points] == list(range(n + 1)), "every operator boundary is a split point"
    for p in splits.points[1:-1]:
        assert p.tensors, f"split point {p.k} sends nothing"
        head.input_buffer(0).cast("B")[:] = x.astype(np.int8).tobytes()
        head.invoke(stop=p.step)
        sent = [bytes(head.arena_view(t.offset, t.nbytes)) for t in p.tensors]
        assert tail.run(p.k, sent) == want, f"{name}: head [0, {p.k}) + tail differs from the whole model"
    tail.close()
    head.close()


def test_a_wrong_tensor_changes_the_answer():
    # the check above can fail: the tail really reads what it is given
    path = SHIPPED["kws"]
    splits = split.split_points(path)
    tail = split.Tail(path, splits)
    p = splits.point(10)                # the pooled features before FULLY_CONNECTED
    rng = np.random.default_rng(1)
    outs = {tail.run(10, [rng.integers(-128, 128, t.nbytes, dtype=np.int8).tobytes() for t in p.tensors])
            for _ in range(4)}
    assert len(outs) > 1


def test_split_points_of_vww_name_the_live_tensors():
    s = split.split_points(SHIPPED["vww"])
    assert len(s.operators) == 30 and s.steps == 30
    p = s.point(1)
    assert p.after == "CONV_2D" and [t.shape for t in p.tensors] == [(1, 48, 48, 8)] and p.nbytes == 18432
    assert s.point(29).nbytes == 2 and s.point(30).tensors == () and s.point(0).tensors == ()


def test_a_residual_model_sends_both_branches():
    s = split.split_points(helpers.mlperf_path("pretrainedResnet_quant"))
    p = s.point(2)          # inside the first residual block: the block's input is alive beside the branch
    assert len(p.tensors) == 2 and p.nbytes == 2 * 16384
    assert s.point(14).step == 13, "the aliased RESHAPE is no engine step"


def _vm_heads(path, points, x, tmp_path, backend):
    (tmp_path / "in.bin").write_bytes(x.astype(np.int8).tobytes())
    (tmp_path / "points.json").write_text(json.dumps([[p.step, [[t.offset, t.nbytes] for t in p.tensors]]
                                                      for p in points]))
    import subprocess
    proc = subprocess.run([helpers.micropython(), str(helpers.RUN_MODEL.parent / "run_split_head.py"),
                           str(helpers.DEVICE_DIR), str(path), backend, str(tmp_path / "in.bin"),
                           str(tmp_path / "points.json"), str(tmp_path / "out.bin")],
                          capture_output=True, text=True, timeout=300)
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert line, proc.stdout[-2000:] + proc.stderr[-2000:]
    return (tmp_path / "out.bin").read_bytes(), json.loads(line[0][7:])


@pytest.mark.parametrize("name", list(SHIPPED) + list(helpers.MLPERF_MODELS))
def test_board_head_on_the_vm_plus_host_tail_is_the_whole_model(name, tmp_path):
    path = _model(name)
    splits = split.split_points(path)
    points = list(splits.points[1:-1])
    engine = engine_module()
    whole = engine.load(str(path), backend="numpy", weights="ram")
    x = helpers.inputs_for(whole.inputs[0].shape, 7, seed=5)[-1]
    want = _whole(whole, x)
    backend = helpers.VM_BACKENDS[-1]
    out, stats = _vm_heads(path, points, x, tmp_path, backend)
    assert stats["invoke_allocation_free"] and stats["steps"] == splits.steps
    tail = split.Tail(path, splits)
    at = 0
    for p in points:
        sent = []
        for t in p.tensors:
            sent.append(out[at:at + t.nbytes])
            at += t.nbytes
        assert tail.run(p.k, sent) == want, f"{name} ({backend} on the VM): split at {p.k} differs"
    assert at == len(out)


def _profile():
    # a board profile with round numbers: 100 MHz, a byte copy 2.5 cycles, 3.3 V, 50/120/90 mA
    currents = {"active": 50, "radio_tx": 120, "radio_rx": 90}
    return SimpleNamespace(board_time_clock_mhz=100, board_time={"copy_byte_cycles": Coefficient(250, "test")},
                           power_mw=lambda state: currents[state] * 3.3)


LINK = Link("test", 1_000_000, 100, 10, 500, 20, 0, "test")


def test_plan_arithmetic_on_a_fixed_table():
    rows_in = [split.PlanInput(0, "", 0, 1000, 50, 2000),          # full offload
               split.PlanInput(1, "CONV_2D", 4_000_000, 300, 50, 1000),
               split.PlanInput(2, "SOFTMAX", 12_000_000, 0, 0, 0)]   # local
    rows, best = split.plan(rows_in, _profile(), LINK, "latency")
    # k=0: serialise (1050 B x 2.5 cycles at 100 MHz = 26.25 us -> 26), send 1000 B: 10 packets of 110 B =
    # 8800 bits = 8800 us + 500 + 10 x 20 = 9500 us; reply 50 B: 1 packet, 480 bits: 480 + 500 + 20 = 1000 us
    assert transfer_us(LINK, 1000) == 9500 and transfer_us(LINK, 50) == 1000
    r0 = rows[0]
    assert (r0.board_ms, r0.serialise_ms, r0.link_ms, r0.server_ms) == (0, 0.026, 10.5, 2.0)
    assert r0.total_ms == pytest.approx(12.526)
    # energy: CPU 26 us x 165 mW, TX 9500 us x 396 mW, RX (2000 + 1000) us x 297 mW, in uJ / 1000
    assert r0.energy_mj == pytest.approx((165 * 26 + 396 * 9500 + 297 * 3000) / 1e6)
    # k=1: head 4000 us, serialise 350 B -> 8.75 -> 9 us, send 300 B: 3 packets of 110 B, 2640 bits -> 2640 + 500
    # + 60 = 3200 us
    r1 = rows[1]
    assert (r1.board_ms, r1.serialise_ms, r1.link_ms, r1.server_ms) == (4.0, 0.009, 4.2, 1.0)
    assert r1.total_ms == pytest.approx(4.0 + 0.009 + 3.2 + 1.0 + 1.0)
    assert r1.energy_mj == pytest.approx((165 * 4009 + 396 * 3200 + 297 * 2000) / 1e6)
    r2 = rows[2]
    assert (r2.total_ms, r2.link_ms, r2.server_ms) == (12.0, 0, 0)
    assert r2.energy_mj == pytest.approx(165 * 12000 / 1e6)
    assert best == 1 and [r.best for r in rows] == [False, True, False]
    _, best_energy = split.plan(rows_in, _profile(), LINK, "energy")
    assert best_energy == 2         # the radio costs more than the head saves


def test_plan_refuses_an_unknown_objective():
    from tinyhost.errors import UsageError
    with pytest.raises(UsageError):
        split.plan([], _profile(), LINK, "throughput")


def test_split_plan_cli_prints_every_point_and_writes_json(tmp_path):
    from click.testing import CliRunner
    from tinyhost.cli import cli

    out = CliRunner().invoke(cli, ["split", "plan", str(SHIPPED["kws"]), "--board", "sim:esp32", "--link", "ble",
                                   "--objective", "energy", "--json", str(tmp_path / "plan.json")],
                             catch_exceptions=False)
    assert out.exit_code == 0, out.output
    plan = json.loads((tmp_path / "plan.json").read_text())
    assert [r["k"] for r in plan["rows"]] == list(range(13)) and plan["link"] == "ble"
    best = [r for r in plan["rows"] if r["best"]]
    assert len(best) == 1 and best[0]["k"] == plan["best_k"]
    assert best[0]["energy_mj"] == min(r["energy_mj"] for r in plan["rows"])
    assert "best for energy: k = %d" % plan["best_k"] in out.output and "<- best" in out.output
    assert plan["rows"][-1]["request_bytes"] == 0 and plan["rows"][1]["request_bytes"] == \
        split.request_bytes(split.split_points(SHIPPED["kws"]), split.split_points(SHIPPED["kws"]).point(1), "kws")


@pytest.mark.parametrize("args,words", [(["offload", "split", "--port", "/dev/null", "--at", "seven"], "--at must be"),
                                        (["bench", "--port", "/dev/null", "--model", "kws", "--offload", "--split",
                                          "x"], "--split must be"),
                                        (["split", "plan", "nosuch.tflite"], "no model file")])
def test_split_options_refuse_bad_values_with_exit_2(args, words, capsys):
    from tinyhost.cli import main

    with pytest.raises(SystemExit) as e:
        main(args)
    assert e.value.code == 2 and words in capsys.readouterr().err
