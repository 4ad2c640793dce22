"""Load plans (MODEL.plan beside MODEL.tflite, built on the host by tinyhost.model.plan): the engine loads a model
from its plan bit-exactly as from the full path and as TFLM computes it; a stale, truncated or corrupt plan is
never used; `tinyhost flash` puts the plan beside every model it sends."""

import hashlib

import numpy as np
import pytest

from engine_harness import helpers, synthetic
from tinyhost.model import engine_module
from tinyhost.model.plan import build_plan, plan_file, read_header

engine = engine_module()
MODELS = list(helpers.MLPERF_MODELS) + list(synthetic.SYNTHETIC)


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    return helpers.write_synthetic(tmp_path_factory.mktemp("synthetic"))


def _outputs(m, xs):
    return np.stack([helpers.engine_output(m, x) for x in xs])


def test_plan_sits_beside_the_model():
    assert engine.plan_path("/models/kws.tflite") == "/models/kws.plan"
    assert engine.plan_path("/models/model.bin") == "/models/model.bin.plan"


@pytest.mark.parametrize("name", MODELS)
def test_plan_path_is_bit_exact_with_full_path_and_tflm(name, sources, tmp_path):
    src = helpers.model_path(name, sources)
    planned = helpers.with_plan(src, tmp_path)
    full = tmp_path / "full" / planned.name
    full.parent.mkdir()
    full.write_bytes(planned.read_bytes())
    m_plan = engine.load(str(planned), backend="numpy")
    m_full = engine.load(str(full), backend="numpy")
    assert m_plan.stats()["plan"] == "file" and m_plan.stats()["plan_note"] == ""
    assert m_full.stats()["plan"] == "built" and m_full.stats()["plan_note"] == "absent"
    for key in ("arena_bytes", "macs", "ops", "model_bytes"):
        assert m_plan.stats()[key] == m_full.stats()[key], key
    for a, b in zip(m_plan.inputs + m_plan.outputs, m_full.inputs + m_full.outputs):
        assert (a.name, a.shape, a.dtype, a.scale, a.zero_point, a.nbytes) == \
               (b.name, b.shape, b.dtype, b.scale, b.zero_point, b.nbytes)
    xs = helpers.inputs_for(m_plan.inputs[0].shape, 30, seed=11)
    got = _outputs(m_plan, xs)
    np.testing.assert_array_equal(got, _outputs(m_full, xs))
    oracle = pytest.importorskip("tinyhost.model.oracle")
    if oracle.available():
        tflm = oracle.TflmOracle(src)
        want = np.stack([tflm.run(x).reshape(-1) for x in xs])
        assert not (got != want).any(), f"{int((got != want).sum())} elements differ from TFLM"
    # the reference kernels through the plan, with weights and per-channel data streamed from flash
    m_ref = engine.load(str(planned), backend="ref", weights="flash", scratch_bytes=600)
    for x, y in zip(xs[:2], got[:2]):
        np.testing.assert_array_equal(helpers.engine_output(m_ref, x), y)
    for m in (m_plan, m_full, m_ref):
        m.close()


def test_plan_header_describes_the_model(tmp_path):
    src = helpers.mlperf_path("kws_ref_model")
    plan = build_plan(src)
    assert build_plan(src) == plan                       # deterministic: flash skips an unchanged plan
    h = read_header(plan)
    data = src.read_bytes()
    assert h.model_sha256 == hashlib.sha256(data).hexdigest() and h.model_bytes == len(data)
    assert h.arena_bytes == 16000 and h.inputs == 1 and h.outputs == 1 and h.ops == 13
    assert hashlib.sha256(plan[:-32]).digest() == plan[-32:]


def test_streamed_channel_data_comes_from_the_plan_and_matches_ram(tmp_path):
    model = helpers.with_plan(helpers.mlperf_path("kws_ref_model"), tmp_path)
    in_ram = engine.load(str(model), backend="ref", weights="ram")
    streamed = engine.load(str(model), backend="ref", weights="flash", scratch_bytes=700)
    assert in_ram.stats()["channel_data"] == "ram"
    assert streamed.stats()["channel_data"] == "flash" and streamed.stats()["weights_mode"] == "flash"
    assert streamed.stats()["weights_ram_bytes"] < in_ram.stats()["weights_ram_bytes"] // 4
    for x in helpers.inputs_for(in_ram.inputs[0].shape, 3, seed=5):
        np.testing.assert_array_equal(helpers.engine_output(streamed, x), helpers.engine_output(in_ram, x))
    streamed.close()
    in_ram.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kws_ref_model.plan", "kws_ref_model.tflite"]


def _damage(kind, plan):
    if kind == "truncated":
        return plan[:len(plan) // 2]
    if kind == "empty":
        return b""
    if kind == "bit flip":
        i = len(plan) // 2
        return plan[:i] + bytes([plan[i] ^ 0x10]) + plan[i + 1:]
    if kind == "version":
        return plan[:4] + b"\x63\x00" + plan[6:]
    if kind == "not a plan":
        return b"TFL3" + plan[4:]
    raise ValueError(kind)


@pytest.mark.parametrize("kind, note", [("truncated", "corrupt"), ("empty", "truncated"),
                                        ("bit flip", "corrupt"), ("version", "format version 99"),
                                        ("not a plan", "not a plan")])
def test_damaged_plan_is_not_used(kind, note, sources, tmp_path):
    model = helpers.with_plan(sources["pool_fc_softmax"], tmp_path)
    plan = model.with_suffix(".plan")
    plan.write_bytes(_damage(kind, plan.read_bytes()))
    m = engine.load(str(model), backend="numpy")
    assert m.stats()["plan"] == "built" and m.stats()["plan_note"].startswith(note), m.stats()["plan_note"]
    ref = engine.load(str(sources["pool_fc_softmax"]), backend="numpy")
    for x in helpers.inputs_for(m.inputs[0].shape, 4, seed=2):
        np.testing.assert_array_equal(helpers.engine_output(m, x), helpers.engine_output(ref, x))


def test_stale_plan_is_detected_and_the_changed_model_runs_correctly(sources, tmp_path):
    model = helpers.with_plan(sources["conv_variants"], tmp_path)
    data = bytearray(model.read_bytes())
    from tinyfw.engine import reader
    with open(model, "rb") as f:
        md = reader.read_model(f, len(data))
    pos = md.tensors[md.ops[0].inputs[1]].data_pos      # first filter byte of the first convolution
    data[pos] ^= 0x7F
    changed = tmp_path / "changed.tflite"
    changed.write_bytes(bytes(data))
    (tmp_path / "changed.plan").write_bytes(model.with_suffix(".plan").read_bytes())   # the old model's plan
    m = engine.load(str(changed), backend="numpy")
    assert m.stats()["plan"] == "built" and m.stats()["plan_note"].startswith("stale")
    fresh = tmp_path / "fresh" / "changed.tflite"
    fresh.parent.mkdir()
    fresh.write_bytes(bytes(data))
    want = engine.load(str(fresh), backend="numpy")
    old = engine.load(str(model), backend="numpy")
    xs = helpers.inputs_for(m.inputs[0].shape, 6, seed=3)
    got = _outputs(m, xs)
    np.testing.assert_array_equal(got, _outputs(want, xs))
    assert (got != _outputs(old, xs)).any()             # the plan of the old model would have answered wrongly


def test_bad_model_with_a_plan_is_still_refused(sources, tmp_path):
    model = helpers.with_plan(sources["residual_add"], tmp_path)
    model.write_bytes(model.read_bytes()[:200])           # truncated model; its plan no longer matches
    with pytest.raises(engine.ModelError):
        engine.load(str(model), backend="numpy")


def test_flash_puts_a_plan_beside_each_model(tmp_path, monkeypatch):
    from tinyhost import flash

    monkeypatch.setenv("TINYHOST_CACHE", str(tmp_path / "cache"))
    src = helpers.mlperf_path("ad01_int8")
    items = flash.with_plans(flash.firmware_items()[:1] + [flash.model_item(src)])
    plans = [i for i in items if i.remote.endswith(".plan")]
    assert [p.remote for p in plans] == ["/models/ad01_int8.plan"]
    assert plans[0].local.read_bytes() == build_plan(src)
    assert plans[0].sha256 == hashlib.sha256(build_plan(src)).hexdigest()
    assert flash.with_plans(items) == items              # already listed: not added twice
    assert plan_file(src) == plans[0].local              # cached


@pytest.mark.sim
@pytest.mark.parametrize("backend", helpers.VM_BACKENDS)
def test_vm_loads_from_plan_bit_exact(backend, tmp_path):
    model = helpers.with_plan(helpers.mlperf_path("kws_ref_model"), tmp_path)
    xs = helpers.inputs_for((1, 49, 10, 1), 2, seed=8)
    out, stats = helpers.run_on_vm(model, backend, xs, tmp_path, weights="flash")
    assert stats["plan"] == "file" and stats["invoke_allocation_free"]
    want = _outputs(engine.load(str(model), backend="numpy"), xs)
    np.testing.assert_array_equal(np.frombuffer(out, dtype=np.int8).reshape(want.shape), want)


def test_a_cached_plan_of_another_format_is_rebuilt(tmp_path):
    from tinyhost.model import plan as host_plan
    from tinyfw.engine import plan_check

    model = helpers.REPO / "models" / "kws" / "kws.tflite"
    cached = host_plan.plan_file(model, cache=tmp_path)
    good = cached.read_bytes()
    stale = bytearray(good)
    stale[4:6] = (plan_check.PLAN_VERSION - 1).to_bytes(2, "little")     # as an older engine would have written it
    cached.write_bytes(bytes(stale))
    assert host_plan.plan_file(model, cache=tmp_path) == cached
    assert cached.read_bytes() == good


def test_pointwise_convolutions_run_as_fully_connected_unless_banded(sources, tmp_path):
    """A 1x1 CONV_2D with stride 1 and no padding is a FULLY_CONNECTED over its pixels: the plan records it as one
    (viper then copies no filter per call); one that runs in row bands over its dying input stays a convolution."""
    planned = helpers.with_plan(sources["streaming_kws"], tmp_path)
    m = engine.load(str(planned), backend="ref")
    assert m.kernel_names() == ["depthwise_conv2d", "fully_connected"] * 4 + ["fully_connected", "softmax"]
    fc = m._steps[1]
    assert fc[8][0] == 28              # P_BATCHES: the 28 x 1 pixels of the first 1x1 convolution's output
    vww = engine.load(str(helpers.with_plan(helpers.REPO / "models" / "vww" / "vww.tflite", tmp_path)),
                      backend="ref")
    names = vww.kernel_names()
    assert vww.stats()["row_band_ops"] > 0 and "conv2d" in names and "fully_connected" in names[:-2]
