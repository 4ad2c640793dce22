"""Per-step timing inside the engine (Model.invoke(times_us=...), used by benchmarks/engine_latency.py --profile):
on the MicroPython VM it allocates nothing, fills one time per step and leaves the output unchanged."""

import json
import subprocess

import pytest

from engine_harness import helpers

_SCRIPT = r"""
import sys, json, micropython
from array import array
sys.path.insert(0, sys.argv[1])
from tinyfw import engine
m = engine.load(sys.argv[2])
buf = m.input_buffer(0)
for i in range(len(buf)):
    buf[i] = (i * 5) % 256 - 128
m.invoke()
plain = bytes(m.output_buffer(0))
for i in range(len(buf)):
    buf[i] = (i * 5) % 256 - 128
names = m.kernel_names()
times = array("i", [-1] * len(names))
micropython.heap_lock()
try:
    m.invoke(times)
finally:
    micropython.heap_unlock()
print("RESULT " + json.dumps({"names": names, "times": list(times), "same": bytes(m.output_buffer(0)) == plain,
                              "steps": len(m._steps)}))
"""


@pytest.mark.sim
def test_invoke_times_each_step_without_allocating(tmp_path):
    model = helpers.with_plan(helpers.REPO / "models" / "kws" / "kws.tflite", tmp_path)
    script = tmp_path / "profile.py"
    script.write_text(_SCRIPT)
    proc = subprocess.run([helpers.micropython(), str(script), str(helpers.DEVICE_DIR), str(model)],
                          capture_output=True, text=True, timeout=120)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
    assert line is not None, proc.stdout[-1500:] + proc.stderr[-1500:]
    r = json.loads(line[len("RESULT "):])
    assert r["same"]
    assert len(r["times"]) == len(r["names"]) == r["steps"] > 0
    assert all(t >= 0 for t in r["times"]) and sum(r["times"]) > 0
    assert "conv2d" in r["names"] and "depthwise_conv2d" in r["names"]
