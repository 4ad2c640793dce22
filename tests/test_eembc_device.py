"""The device side of the MLPerf Tiny / EEMBC protocol (device/tinyfw/eembc.py), run under the MicroPython VM
(and under CPython, which the firmware files also import under) with a stand-in model: commands in, lines out."""

import json
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DEVICE = REPO / "device"

# A stand-in for the engine's Model: the output picks class (input[0] % n_out) with probability ~1 (classifier),
# or copies the input (autoencoder); it counts invocations.
FAKE_MODEL = r'''
import time
FAKE_DELAY_US = 0

def _spin(us):
    if not us:
        return
    if hasattr(time, "ticks_us"):
        t0 = time.ticks_us()
        while time.ticks_diff(time.ticks_us(), t0) < us:
            pass
    else:
        time.sleep(us / 1e6)

class TI:
    def __init__(self, shape, dtype, scale, zp):
        self.shape = shape; self.dtype = dtype; self.scale = scale; self.zero_point = zp
        n = 1
        for d in shape:
            n *= d
        self.nbytes = n * (4 if dtype == "float32" else 1)

class FakeModel:
    def __init__(self, kind):
        self.kind = kind
        if kind == "kws":
            self.inputs = [TI((1, 49, 10, 1), "int8", 0.58, 83)]; self.outputs = [TI((1, 12), "int8", 1 / 256, -128)]
        elif kind == "vww":
            self.inputs = [TI((1, 96, 96, 3), "int8", 1.0, -128)]; self.outputs = [TI((1, 2), "int8", 1 / 256, -128)]
        else:
            self.inputs = [TI((1, 640), "int8", 0.5, 0)]; self.outputs = [TI((1, 640), "int8", 0.5, 0)]
        self._in = bytearray(self.inputs[0].nbytes)
        self._out = bytearray(self.outputs[0].nbytes)
        self.invocations = 0
    def input_buffer(self, i=0):
        return memoryview(self._in)
    def output_buffer(self, i=0):
        return memoryview(self._out)
    def invoke(self):
        self.invocations += 1
        _spin(FAKE_DELAY_US)
        if self.kind == "ad":
            self._out[:] = self._in
            return
        k = self._in[0] % len(self._out)
        for j in range(len(self._out)):
            self._out[j] = 0x7f if j == k else 0x80
'''

_HARNESS = r'''
import sys
sys.path.insert(0, DEVICE)
import tinyfw.eembc as eembc

'''+ FAKE_MODEL + r'''
class Rt:
    def __init__(self, model):
        self.model = model
        self.lines = []
        self._partial = ""
    def load_model(self, path, backend="auto"):
        raise OSError(2)
    def write_text(self, s):
        self._partial += s
        while "\r\n" in self._partial:
            line, self._partial = self._partial.split("\r\n", 1)
            self.lines.append(line)

rt = Rt(None if KIND == "none" else FakeModel(KIND))
for cmd in COMMANDS:
    rt.lines = []
    eembc.handle_command(cmd, rt)
    print("REPLY " + repr(rt.lines))
if rt.model is not None:
    print("INVOCATIONS %d" % rt.model.invocations)
    print("INPUT " + repr([b for b in rt.model._in[:4]]))
'''


def _interpreters():
    found = [pytest.param(sys.executable, id="cpython")]
    mp = shutil.which("micropython") or str(Path(sys.executable).with_name("micropython"))
    if Path(mp).exists():
        found.insert(0, pytest.param(mp, id="micropython"))
    return found


def run_dut(interpreter, kind, commands):
    prelude = f"DEVICE = {str(DEVICE)!r}\nKIND = {kind!r}\nCOMMANDS = {json.dumps(commands)}\n"
    out = subprocess.run([interpreter, "-c", prelude + _HARNESS], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    replies, extra = [], {}
    for line in out.stdout.splitlines():
        tag, _, rest = line.partition(" ")
        if tag == "REPLY":
            replies.append(eval(rest))        # a list literal printed by the harness
        else:
            extra[tag] = eval(rest)
    return replies, extra


def hex_commands(data, per_command=31):
    return [f"db {data[i:i + per_command].hex()}%" for i in range(0, len(data), per_command)]


@pytest.fixture(params=_interpreters())
def interp(request):
    return request.param


def test_name_and_profile(interp):
    replies, _ = run_dut(interp, "kws", ["name%", "profile%"])
    assert replies[0] == ["m-name-dut-[tinyhost]", "m-ready"]
    assert replies[1][0].startswith("m-profile-[") and replies[1][0].endswith("]")
    assert replies[1][1:] == ["m-model-[kws01]", "m-ready"]


def test_load_then_infer_streams_the_protocol_lines(interp):
    data = bytes([5]) + bytes(range(1, 256)) + bytes(234)     # 490 bytes, first byte selects class 5
    commands = ["db load 490%"] + hex_commands(data) + ["db print 10 0%", "infer 3 1%", "results%"]
    replies, extra = run_dut(interp, "kws", commands)
    assert replies[0] == ["m-[Expecting 490 bytes]", "m-ready"]
    loads = replies[1:-3]
    assert len(loads) == 16                                  # ceil(490 / 31) commands, one reply each
    assert all(r == ["m-ready"] for r in loads[:-1])
    assert loads[-1] == ["m-load-done", "m-ready"]
    assert replies[-3] == ["m-buffer-05-01-02-03-04-05-06-07", "m-buffer-08-09", "m-ready"]
    infer = replies[-2]
    assert infer[:3] == ["m-warmup-start-1", "m-warmup-done", "m-infer-start-3"]
    assert infer[3].startswith("m-lap-us-") and infer[4].startswith("m-lap-us-")
    assert int(infer[4][9:]) >= int(infer[3][9:])
    assert infer[5] == "m-infer-done"
    scores = [float(x) for x in infer[6][len("m-results-["):-1].split(",")]
    assert len(scores) == 12 and max(range(12), key=scores.__getitem__) == 5
    assert scores[5] == pytest.approx(255 / 256, abs=1e-4) and scores[0] == 0.0
    assert infer[7] == "m-ready" and len(infer) == 8
    assert replies[-1] == [infer[6], "m-ready"]
    assert extra["INVOCATIONS"] == 4


def test_uint8_pixels_become_int8_for_vww(interp):
    data = bytes([200, 0, 128, 255]) + bytes(96 * 96 * 3 - 4)
    replies, extra = run_dut(interp, "vww", [f"db load {len(data)}%"] + hex_commands(data) + ["infer 1 0%"])
    assert replies[-1][-1] == "m-ready" and replies[-1][5] == "m-infer-done"
    assert extra["INPUT"] == [72, 128, 0, 127]                # 200-128, 0-128, 128-128, 255-128 as bytes


def test_float_frames_are_quantized_and_scored_by_reconstruction_error(interp):
    values = [0.5 * (i % 7) for i in range(640)]              # exactly representable with scale 0.5
    data = struct.pack("<640f", *values)
    replies, extra = run_dut(interp, "ad", [f"db load {len(data)}%"] + hex_commands(data) + ["profile%", "infer 1 0%"])
    assert replies[-2][1] == "m-model-[ad01]"
    result = replies[-1][6]
    assert result.startswith("m-results-[")
    assert float(result[len("m-results-["):-1]) == pytest.approx(0.0, abs=1e-9)   # identity reconstruction
    assert extra["INPUT"] == [0, 1, 2, 3]


@pytest.mark.parametrize("commands, error", [
    (["infer 1 0%"], "e-[Input incomplete"),
    (["frobnicate%"], "e-[Unknown command: frobnicate]"),
    (["db load 4%", "db abc%"], "e-[Insufficent number of hex digits]"),
    (["db load 4%", "db zz11%"], "e-[Invalid hex digits"),
    (["db 0011%"], "e-[db load N must come before db data]"),
    (["db load 0%"], "e-[Command 'db load' must be >0 bytes]"),
    (["db load 1%", "db 01%", "infer 0 0%"], "e-[Inference iterations must be >0]"),
    (["results%"], "e-[No results yet"),
])
def test_errors_are_e_lines_and_every_reply_ends_with_m_ready(interp, commands, error):
    replies, _ = run_dut(interp, "kws", commands)
    assert all(r[-1] == "m-ready" for r in replies)
    assert replies[-1][0].startswith(error)


def test_no_model_is_an_error_not_a_crash(interp):
    replies, _ = run_dut(interp, "none", ["profile%", "db load 1%", "db 01%", "infer 1 0%"])
    assert replies[0][1:] == ["m-model-[none]", "m-ready"]
    assert replies[-1][0].startswith("e-[No model loaded") and replies[-1][-1] == "m-ready"


def test_extra_hex_after_the_last_byte_is_ignored(interp):
    replies, _ = run_dut(interp, "kws", ["db load 2%", "db 0102030405%", "db print%"])
    assert replies[1] == ["m-load-done", "m-ready"]
    assert replies[2] == ["m-buffer-01-02", "m-ready"]
