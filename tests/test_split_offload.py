"""Split inference end to end: the board's Predictor in mode "split" under the MicroPython VM with the real
engine, against the real offload server on 127.0.0.1; and its fallback to the local tail when the server fails."""

import json
import socket

import pytest

from test_offload_support import need_kws, run_vm, start_server, tflm_kws
from tinyhost import split
from tinyhost.offload import wire

pytestmark = pytest.mark.sim


def _cfg(port, split_cfg, **kw):
    cfg = {"mode": "split", "server": f"127.0.0.1:{port}", "model_id": "kws", "device_id": "vm-1",
           "timeout_ms": 5000, "split": split_cfg}
    cfg.update(kw)
    return cfg


@pytest.fixture(scope="module")
def server():
    need_kws()
    thread, srv, address = start_server()
    yield srv, address
    thread.stop()


def _predict(port, ks, xs, configs=None, **kw):
    # the board's predictions in mode split at each k (or with each split field in configs: {name: field})
    lines = []
    configs = configs or {k: split.split_config(need_kws(), k, "wifi", "sim:esp32")[0] for k in ks}
    for k, cfg in configs.items():
        lines.append(f'''
p = offload.Predictor(m, {json.dumps(_cfg(port, cfg, **kw))}, config_path="/x/o.json")
res = []
for x in {xs!r}:
    out, info = p.predict(x)
    res.append([bytes(out).hex(), info.source, info.offloaded, info.fallback, info.error, info.request_bytes])
emit("k{k}", res); emit("c{k}", p.counters())
p.close()''')
    script = f"from tinyfw import engine\nm = engine.load({str(need_kws())!r})\n" + "".join(lines)
    return run_vm(script, timeout_s=120, heap="4M")


def test_split_predictions_are_bit_exact_with_the_whole_model(server):
    srv, (_, port) = server
    xs = [bytes((j * (7 + i) + 3 * i) % 256 for j in range(490)) for i in range(2)]
    splits = split.split_points(need_kws())
    ks = [1, 6, 11]
    r = _predict(port, ks, xs)
    for k in ks:
        for x, (out, source, offloaded, fallback, error, nbytes) in zip(xs, r[f"k{k}"]):
            assert out == tflm_kws(x).hex(), f"split at {k} differs from the whole model"
            assert (source, offloaded, fallback, error) == ("model", True, False, 0)
            assert nbytes == wire.split_frame_bytes("kws", splits.point(k).tensors)
    assert srv.stats.split_requests_ok >= len(ks) * len(xs)


def test_server_down_runs_the_tail_locally():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()                                   # nothing listens there now
    x = bytes((j * 11 + 5) % 256 for j in range(490))
    r = _predict(port, [5], [x, x], retry_after_ms=60000)
    (out1, source1, off1, fb1, err1, _), (out2, _, _, fb2, err2, _) = r["k5"]
    assert out1 == out2 == tflm_kws(x).hex()
    assert (source1, off1, fb1, err1) == ("local", False, True, -2)     # connection refused
    assert fb2 and err2 == -4                                           # not tried again for retry_after_ms
    assert r["c5"]["fallbacks"] == 2


def test_the_server_refuses_a_split_point_the_model_does_not_have(server):
    from tinyhost.offload.client import OffloadClient
    _, (host, port) = server
    t = wire.Tensor("int8", (1, 25, 5, 64), 1.0, 0, bytes(8000))
    with OffloadClient(host, port, "dev-1") as c:
        assert c.infer_split(wire.SplitRequest("kws", 40, (t,)), check=False).reply.status == wire.BAD_SPLIT
        assert c.infer_split(wire.SplitRequest("kws", 3, (t,)), check=False).reply.status == wire.BAD_QUANT
        small = wire.Tensor("int8", (1, 64), 1.0, 0, bytes(64))
        assert c.infer_split(wire.SplitRequest("kws", 3, (small, small)), check=False).reply.status == wire.BAD_SPLIT


@pytest.mark.parametrize("bad,field", [({"at": 3, "points": {}}, "split.at"),
                                       ({"at": "auto", "link": "ble", "best": {"wifi": 3}, "points": {}}, "split.best"),
                                       ({"at": 3, "points": {"3": [0, []]}}, "split point 3"),
                                       ({"at": 3, "points": {"3": [3, [[0, 8000]]]}}, "a tensor of split point 3")])
def test_a_bad_split_config_is_refused_naming_the_field(bad, field):
    from tinyhost.errors import UsageError
    from tinyhost.offload.board import check_config
    with pytest.raises(UsageError, match=field):
        check_config(_cfg(1, bad))


def test_auto_picks_the_plans_best_point_for_the_link():
    cfg, plans = split.split_config(need_kws(), "auto", "ble", "sim:esp32",
                                    server_us={k: 100 for k in range(13)})
    assert set(plans) == {"wifi", "ble", "uart"}
    for name, p in plans.items():
        if 0 < p.best_k < 12:
            assert cfg["best"][name] == p.best_k
    assert set(cfg["points"]) == {str(k) for k in cfg["best"].values()}


def test_an_authenticated_board_splits_at_the_best_point_for_its_link(tmp_path):
    from tinyhost.offload import auth
    token_file = tmp_path / "keys.json"
    key = auth.ensure_device_key(token_file, "vm-1")
    thread, srv, (_, port) = start_server(keys=auth.KeyStore(token_file))
    times = {k: 100 for k in range(13)}
    fields = {link: split.split_config(need_kws(), "auto", link, "sim:esp32", server_us=times)[0]
              for link in ("wifi", "uart")}
    try:
        x = bytes((j * 3 + 1) % 256 for j in range(490))
        r = _predict(port, [], [x], configs=fields, key=key.hex())
    finally:
        thread.stop()
    splits = split.split_points(need_kws())
    for link, cfg in fields.items():
        k = cfg["best"][link]
        out, source, offloaded, fallback, error, nbytes = r[f"k{link}"][0]
        assert (out, source, offloaded, error) == (tflm_kws(x).hex(), "model", True, 0)
        assert nbytes == wire.split_frame_bytes("kws", splits.point(k).tensors) + wire.MAC_BYTES
    assert fields["wifi"]["best"]["wifi"] != fields["uart"]["best"]["uart"], "the links favour different points"
    assert srv.stats.auth_failures == 0 and srv.stats.split_requests_ok == 2


def test_a_split_point_past_the_models_steps_is_refused_by_the_board():
    cfg = _cfg(1, {"at": 40, "points": {"40": [40, [[0, 64, 1.0, 0, 1, 64]]]}})
    script = f'''
from tinyfw import engine
m = engine.load({str(need_kws())!r})
try:
    offload.Predictor(m, {json.dumps(cfg)}, config_path="/x/o.json")
except ValueError as e:
    emit("error", str(e))
'''
    assert "past the model's last step" in run_vm(script, heap="4M")["error"]
