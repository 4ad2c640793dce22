"""device/tinyfw/offload under the real MicroPython VM: its frames against the host codec, and its Predictor
against the real server on 127.0.0.1 (real sockets). The engine is stood in for by KwsStandIn (the kws model's
tensors, output = first 12 input bytes), so local and remote answers can be told apart."""

import hashlib
import hmac
import json
import socket
import subprocess
import zlib

import pytest

from test_offload_support import DEVICE_DIR, MICROPYTHON, VM_PRELUDE, need_kws, run_vm, start_server, tflm_kws
from tinyhost.offload import auth, wire

pytestmark = pytest.mark.sim

KWS_SCALE = 0.5847029089927673


def _cfg(port, **kw):
    cfg = {"mode": "on", "server": f"127.0.0.1:{port}", "model_id": "kws", "device_id": "vm-1", "timeout_ms": 3000}
    cfg.update(kw)
    return cfg


def test_hmac_and_crc32_on_the_device_match_the_host():
    cases = [(b"k", b"message"), (bytes(range(64)), b"x" * 300), (bytes(100), b""), (b"key", bytes(range(256)))]
    script = "from tinyfw.offload.auth import Hmac\nfrom tinyfw.offload.softcrc import crc32 as soft\n" + "".join(
        f"emit('h{i}', Hmac({k!r}).digest({m!r}).hex())\n"
        f"emit('c{i}', [offload.crc32({m!r}), soft({m!r})])\n" for i, (k, m) in enumerate(cases))
    r = run_vm(script)
    for i, (k, m) in enumerate(cases):
        assert r[f"h{i}"] == hmac.new(k, m, hashlib.sha256).hexdigest()
        assert r[f"c{i}"] == [zlib.crc32(m), zlib.crc32(m)]


SCRIPTED_LINK = r'''
import binascii
class ScriptLink:
    # replays host-made frames and records what the device sends
    def __init__(s, replies):
        s.replies = [binascii.unhexlify(r) for r in replies]; s.sent = []; s.buf = b""; s.nodelay = False
        s.opened = False
    def open(s): s.opened = True
    def close(s): s.opened = False
    def send(s, mv): s.sent.append(binascii.hexlify(bytes(mv)).decode())
    def recv_into(s, mv):
        if not s.buf:
            if not s.replies: raise OSError(110)
            s.buf = s.replies.pop(0)
        n = len(mv); mv[:] = s.buf[:n]; s.buf = s.buf[n:]
offload._nonce = lambda: bytes(range(16))
'''


def _session(key):
    return auth.session_key(key, bytes(range(16)), b"S" * 16)


def test_device_frames_cross_check_with_the_host_codec():
    key = bytes(range(32))
    session = _session(key)
    welcome = wire.encode_welcome(1, wire.OK, True, b"S" * 16, auth.welcome_proof(session), 1 << 20)
    out = bytes([5, 250, 7, 128, 0, 1, 2, 3, 4, 5, 6, 200])
    out_t = wire.Tensor("int8", (1, 12), 0.00390625, -128, out)
    reply = wire.encode_reply(2, wire.Reply(wire.OK, wire.SOURCE_REFERENCE, 17, 4242, out_t), auth.frame_mac(session))
    bad_mac = bytearray(wire.encode_reply(3, wire.Reply(wire.OK, 0, 1, 2, out_t), auth.frame_mac(b"z" * 32)))
    x = bytes((i * 7) % 256 for i in range(490))
    script = SCRIPTED_LINK + f'''
link = ScriptLink([{welcome.hex()!r}, {reply.hex()!r}, {bytes(bad_mac).hex()!r}])
cfg = {json.dumps(_cfg(1, key=key.hex(), retries=0))}
p = offload.Predictor(KwsStandIn(), cfg, config_path="/nonexistent/offload.json", link=link)
out, info = p.predict({x!r})
emit("out", binascii.hexlify(bytes(out)).decode()); emit("info", info.as_dict())
out, info = p.predict({x!r})
emit("out2", binascii.hexlify(bytes(out)).decode()); emit("info2", info.as_dict())
emit("sent", link.sent); emit("counters", p.counters())
'''
    r = run_vm(script)
    sent = wire.FrameScanner().feed(bytes.fromhex("".join(r["sent"])))    # a frame goes out in pieces
    assert [kind for kind, _ in sent] == ["frame"] * 3
    hello_f, request_f, request2_f = (wire.decode_frame(f) for _, f in sent)
    assert wire.decode_hello(hello_f.body) == wire.Hello("vm-1", bytes(range(16)))
    assert request_f.kind == wire.KIND_REQUEST and request_f.seq == 2
    assert auth.macs_equal(request_f.mac, auth.frame_mac(session)(request_f.signed))
    req = wire.decode_request(request_f.body)
    assert (req.model_id, req.want) == ("kws", wire.WANT_DEFAULT)
    assert req.tensor == wire.Tensor("int8", (1, 49, 10, 1), pytest.approx(KWS_SCALE), 83, x)
    assert bytes.fromhex(r["out"]) == out
    info = r["info"]
    assert (info["source"], info["offloaded"], info["fallback"]) == ("reference", True, False)
    assert (info["server_queue_us"], info["server_compute_us"]) == (17, 4242)
    assert info["request_bytes"] == len(request_f.signed) + 32 + 4
    # the second answer is signed with the wrong key: refused, answered locally, counted
    assert request2_f.seq == 3
    assert bytes.fromhex(r["out2"]) == x[:12]
    assert r["info2"]["fallback"] and r["info2"]["source"] == "local" and r["info2"]["error"] == -3
    assert r["counters"]["fallbacks"] == 1 and r["counters"]["offloaded"] == 1


@pytest.fixture(scope="module")
def server():
    need_kws()
    thread, srv, address = start_server()
    yield srv, address
    thread.stop()


def test_mode_on_answers_come_from_the_servers_model(server):
    _, (host, port) = server
    inputs = [bytes(((i + 1) * j * 13) % 256 for j in range(490)) for i in range(3)]
    script = f'''
p = offload.Predictor(KwsStandIn(), {json.dumps(_cfg(port))}, config_path="/nonexistent/offload.json")
outs = []
for x in {inputs!r}:
    out, info = p.predict(x)
    outs.append(bytes(out).hex())
emit("outs", outs); emit("info", info.as_dict()); emit("counters", p.counters())
'''
    r = run_vm(script)
    assert r["outs"] == [tflm_kws(x).hex() for x in inputs]
    info = r["info"]
    assert info["source"] == "model" and info["offloaded"] and not info["fallback"]
    assert info["server_compute_us"] > 0 and info["total_us"] >= info["server_compute_us"]
    c = r["counters"]
    assert (c["predictions"], c["offloaded"], c["fallbacks"], c["reconnects"], c["nodelay"]) == (3, 3, 0, 1, True)


def test_mode_auto_offloads_only_unsure_local_answers(server):
    _, (_, port) = server
    sure = bytes([0x7F]) + bytes([0x80]) * 489          # local top-1 confidence 255/256
    unsure = bytes([0x80]) * 490                         # local top-1 confidence 0
    script = f'''
p = offload.Predictor(KwsStandIn(), {json.dumps(_cfg(port, mode="auto", threshold=0.5))}, config_path="/x/o.json")
out, info = p.predict({sure!r}); emit("sure", [bytes(out).hex(), info.as_dict()])
out, info = p.predict({unsure!r}); emit("unsure", [bytes(out).hex(), info.as_dict()])
emit("counters", p.counters())
'''
    r = run_vm(script)
    out, info = r["sure"]
    assert out == sure[:12].hex() and info["source"] == "local" and not info["offloaded"]
    assert info["confidence"] == pytest.approx(255 / 256)
    out, info = r["unsure"]
    assert out == tflm_kws(unsure).hex() and info["offloaded"] and info["confidence"] == 0.0
    assert r["counters"]["offloaded"] == 1 and r["counters"]["predictions"] == 2


def test_server_down_falls_back_to_local_and_counts_it():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()                                            # nothing listens there now
    x = bytes(range(256)) + bytes(234)
    script = f'''
p = offload.Predictor(KwsStandIn(), {json.dumps(_cfg(port, retry_after_ms=60000))}, config_path="/x/o.json")
res = []
for i in range(3):
    out, info = p.predict({x!r})
    res.append([bytes(out).hex(), info.source, info.fallback, info.error])
emit("res", res); emit("counters", p.counters())
'''
    r = run_vm(script)
    local = x[:12].hex()
    assert r["res"][0] == [local, "local", True, -2]     # connection refused (E_LINK)
    assert r["res"][1] == [local, "local", True, -4]     # not tried again before retry_after_ms (E_DOWN)
    c = r["counters"]
    assert c["fallbacks"] == 3 and c["offloaded"] == 0 and c["errors"] == {"-2": 2, "-4": 2}
    assert c["retries"] == 1                             # one reconnect attempt on the broken link


def test_silent_server_times_out_and_falls_back():
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)                                 # the kernel accepts; nobody ever answers
        port = silent.getsockname()[1]
        script = f'''
p = offload.Predictor(KwsStandIn(), {json.dumps(_cfg(port, timeout_ms=300))}, config_path="/x/o.json")
out, info = p.predict(bytes(490))
emit("info", info.as_dict()); emit("counters", p.counters())
'''
        r = run_vm(script)
    assert r["info"]["fallback"] and r["info"]["error"] == -1 and r["info"]["source"] == "local"
    assert r["counters"]["retries"] == 0                 # a timeout has used the time budget: no retry


def test_authenticated_board_is_served_and_a_wrong_key_is_refused(tmp_path, caplog):
    token_file = tmp_path / "keys.json"
    key = auth.ensure_device_key(token_file, "vm-1")
    thread, srv, (_, port) = start_server(keys=auth.KeyStore(token_file))
    try:
        x = bytes((j * 5) % 256 for j in range(490))
        script = f'''
good = offload.Predictor(KwsStandIn(), {json.dumps(_cfg(port, key=key.hex()))}, config_path="/x/o.json")
out, info = good.predict({x!r}); emit("good", [bytes(out).hex(), info.as_dict()])
bad = offload.Predictor(KwsStandIn(), {json.dumps(_cfg(port, key="00" * 32))}, config_path="/x/o.json")
out, info = bad.predict({x!r}); emit("bad", [bytes(out).hex(), info.as_dict()])
'''
        r = run_vm(script)
    finally:
        thread.stop()
    out, info = r["good"]
    assert out == tflm_kws(x).hex() and info["offloaded"]
    out, info = r["bad"]
    assert out == x[:12].hex() and info["fallback"] and info["error"] == wire.AUTH_FAILED


def test_config_file_survives_reset_and_is_written_atomically(server, tmp_path):
    _, (_, port) = server
    path = str(tmp_path / "offload.json")
    x = bytes([0x80]) * 490
    script = f'''
import os
from tinyfw.offload import config
config.save_config({json.dumps(_cfg(port))}, {path!r})
p = offload.Predictor(KwsStandIn(), config_path={path!r})       # a fresh start reads the board's file
out, info = p.predict({x!r}); emit("first", [p.mode, info.source])
emit("files", sorted(os.listdir({str(tmp_path)!r})))
cfg = config.load_config({path!r}); cfg["mode"] = "off"
config.save_config(cfg, {path!r})
p = offload.Predictor(KwsStandIn(), config_path={path!r})
out, info = p.predict({x!r}); emit("off", [p.mode, info.source])
emit("gone", "tinyfw.offload.config" in sys.modules)            # checked, then dropped from the heap
with open({path!r}, "w") as f: f.write("{{not json")
try:
    offload.Predictor(KwsStandIn(), config_path={path!r}); emit("broken", None)
except ValueError as e:
    emit("broken", str(e))
'''
    r = run_vm(script)
    assert r["first"] == ["on", "model"]
    assert r["files"] == ["offload.json"]                # written atomically: no .part left behind
    assert r["off"] == ["off", "local"]
    assert r["gone"] is False
    assert r["broken"]


@pytest.mark.parametrize("bad, field", [({"mode": "sometimes"}, "mode"), ({"threshold": 2}, "threshold"),
                                        ({"server": "nohostport"}, "server"), ({"colour": 1}, "unknown"),
                                        ({"timeout_ms": -5}, "timeout_ms"), ({"key": "xyz"}, "key"),
                                        ({"model_id": 5}, "model_id")])
def test_bad_config_is_refused_naming_the_field(bad, field):
    cfg = _cfg(7373)
    cfg.update(bad)
    script = f'''
from tinyfw.offload import config
try:
    config.check_config({json.dumps(cfg)}); emit("err", None)
except ValueError as e:
    emit("err", str(e))
'''
    assert field in run_vm(script)["err"]


def test_broken_persistent_connection_is_retried_on_a_fresh_one():
    need_kws()
    thread, _, (_, port) = start_server()
    script = VM_PRELUDE % {"device": str(DEVICE_DIR)} + f'''
p = offload.Predictor(KwsStandIn(), {json.dumps(_cfg(port))}, config_path="/x/o.json")
out, info = p.predict(bytes(490)); emit("before", info.source)
sys.stdin.readline()                                     # the host restarts the server meanwhile
out, info = p.predict(bytes(490)); emit("after", [info.source, info.retries, info.error])
emit("counters", p.counters())
'''
    proc = subprocess.Popen([str(MICROPYTHON), "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        first = proc.stdout.readline()
        assert b'"before", "model"' in first
        thread.stop()
        thread, _, _ = start_server(port=port)
        out, _ = proc.communicate(b"go\n", timeout=30)
    finally:
        thread.stop()
        if proc.poll() is None:
            proc.kill()
    lines = {json.loads(l[7:])[0]: json.loads(l[7:])[1] for l in out.decode().splitlines() if l.startswith("RESULT")}
    assert lines["after"][0] == "model" and lines["after"][1] == 1
    assert lines["counters"]["reconnects"] == 2 and lines["counters"]["fallbacks"] == 0


def test_with_the_real_engine_local_and_offloaded_answers_come_from_the_same_predict(server):
    _, (_, port) = server
    x = bytes((j * 29 + 3) % 256 for j in range(490))
    script = f'''
from tinyfw import engine
m = engine.load({str(need_kws())!r})
p = offload.Predictor(m, {json.dumps(_cfg(port, mode="auto", threshold=1.0))}, config_path="/x/o.json")
out, info = p.predict({x!r}); emit("auto", [bytes(out).hex(), info.source, info.local_us > 0, info.confidence])
p = offload.Predictor(m, {json.dumps(_cfg(port, mode="off"))}, config_path="/x/o.json")
out, info = p.predict({x!r}); emit("off", [bytes(out).hex(), info.source])
'''
    r = run_vm(script, timeout_s=60, heap="4M")
    auto_out, source, ran_locally, confidence = r["auto"]
    assert source == "model" and ran_locally and confidence < 1.0
    assert auto_out == tflm_kws(x).hex()
    off_out, source = r["off"]
    assert source == "local" and len(off_out) == 24
