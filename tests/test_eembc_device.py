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
    # kind "vww!": an engine whose planner reuses the input's bytes once read (invoke overwrites the input)
    def __init__(self, kind):
        self.clobber = kind.endswith("!")
        kind = kind.rstrip("!")
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
        if self.clobber:
            self._in[:] = bytes([0x55]) * len(self._in)
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

import gc
rt = Rt(None if KIND == "none" else FakeModel(KIND))
if COPIES:
    rt.input_copies = [bytearray(rt.model.inputs[0].nbytes)]     # what tinyfw.cmd_model keeps when it fits
for cmd in COMMANDS:
    rt.lines = []
    if cmd == "!swap":                  # another model loaded (through the binary protocol)
        rt.model = FakeModel(KIND)
    elif cmd == "!heap":                # live heap bytes (MicroPython)
        gc.collect()
        rt.lines = [gc.mem_alloc()]
    elif cmd.startswith("!fill "):      # db load N and its data, bytes (7 i + 3) & 0xFF, made here: no huge script
        n = int(cmd[6:])
        eembc.handle_command("db load %d%%" % n, rt)
        for i in range(0, n, 31):
            rt.lines = []               # the reply to the last chunk only
            eembc.handle_command("db " + "".join("%02x" % ((7 * j + 3) & 0xFF) for j in range(i, min(i + 31, n))), rt)
    else:
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


def run_dut(interpreter, kind, commands, copies=False, heap_bytes=None):
    """Run ``commands`` through tinyfw.eembc.handle_command with a stand-in model (``kind``: kws, vww, ad, none;
    ``vww!`` overwrites its input when invoked); ``copies``: the runtime keeps a copy of input 0;
    ``heap_bytes``: MicroPython's heap cap. Returns (replies per command, extra values printed)."""
    prelude = (f"DEVICE = {str(DEVICE)!r}\nKIND = {kind!r}\nCOMMANDS = {json.dumps(commands)}\n"
               f"COPIES = {copies!r}\n")
    heap = ["-X", f"heapsize={heap_bytes}"] if heap_bytes and interpreter != sys.executable else []
    out = subprocess.run([interpreter, *heap, "-c", prelude + _HARNESS], capture_output=True, text=True,
                         timeout=60)
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


# -- db load straight into the model's input tensor (vww01: 27,648 bytes) ----------------------------------------

def _pattern(n):
    return bytes((7 * j + 3) & 0xFF for j in range(n))


def _micropython_only(interp):
    if interp == sys.executable:
        pytest.skip("heap figures come from MicroPython's gc.mem_alloc()")


def test_vww01_db_load_goes_into_the_input_tensor_without_a_buffer(interp):
    _micropython_only(interp)
    replies, _ = run_dut(interp, "vww", ["!heap", "!fill 27648", "!heap"], heap_bytes=256 * 1024)
    assert replies[1][-2:] == ["m-load-done", "m-ready"]
    assert replies[2][0] - replies[0][0] < 2048            # no 27 KB buffer beside the tensor
    # the same measurement sees the buffer when there is no model to write into
    replies, _ = run_dut(interp, "none", ["!heap", "!fill 27648", "!heap"], heap_bytes=256 * 1024)
    assert replies[1][-2:] == ["m-load-done", "m-ready"]
    assert replies[2][0] - replies[0][0] >= 27648


def test_direct_load_converts_pixels_and_db_print_shows_what_was_sent(interp):
    data = bytes([200, 0, 128, 255]) + _pattern(96 * 96 * 3 - 4)
    commands = [f"db load {len(data)}%"] + hex_commands(data) + ["db print 4 0%", "db print 9 27640%", "infer 1 0%"]
    replies, extra = run_dut(interp, "vww", commands)
    assert replies[-3] == ["m-buffer-c8-00-80-ff", "m-ready"]
    tail = data[27640:]
    assert replies[-2] == ["m-buffer-" + "-".join("%02x" % b for b in tail), "m-ready"]
    assert extra["INPUT"] == [72, 128, 0, 127]              # 200-128, 0-128, 128-128, 255-128 as int8 bytes
    assert replies[-1][6] == "m-results-[0.99609,0.00000]"  # class input[0] % 2 = 72 % 2


def test_each_infer_starts_from_the_loaded_input_when_the_runtime_keeps_a_copy(interp):
    data = bytes([129]) + bytes(96 * 96 * 3 - 1)            # tensor[0] = 1 -> class 1
    commands = [f"db load {len(data)}%"] + hex_commands(data) + ["infer 2 1%", "infer 1 0%", "db print 2%"]
    replies, _ = run_dut(interp, "vww!", commands, copies=True)
    assert replies[-3][6] == replies[-2][6] == "m-results-[0.00000,0.99609]"
    assert replies[-1] == ["m-buffer-81-00", "m-ready"]


def test_db_print_says_so_when_inference_overwrote_the_uncopied_input(interp):
    data = bytes([129]) + bytes(96 * 96 * 3 - 1)
    commands = [f"db load {len(data)}%"] + hex_commands(data) + ["db print 2%", "infer 1 0%", "db print 2%"]
    replies, _ = run_dut(interp, "vww!", commands)
    assert replies[-3] == ["m-buffer-81-00", "m-ready"]
    assert replies[-2][6] == "m-results-[0.00000,0.99609]"  # the first inference reads what was loaded
    assert replies[-1][0].startswith("e-[Inference overwrote the input tensor") and replies[-1][-1] == "m-ready"


def test_a_model_swapped_after_db_load_is_an_error_not_a_stale_tensor(interp):
    replies, _ = run_dut(interp, "kws", ["db load 490%", "!swap", "db 00%", "!fill 490", "!swap", "infer 1 0%"])
    stale = "e-[The model changed since db load; send db load N and the data again]"
    assert replies[2] == [stale, "m-ready"]
    assert replies[3][-2:] == ["m-load-done", "m-ready"]
    assert replies[5] == [stale, "m-ready"]


def test_other_sizes_use_a_buffer_and_keep_the_old_errors(interp):
    replies, _ = run_dut(interp, "kws", ["db load 4%", "db 01020304%", "db print%", "infer 1 0%"])
    assert replies[1] == ["m-load-done", "m-ready"]
    assert replies[2] == ["m-buffer-01-02-03-04", "m-ready"]
    assert replies[3][0] == "e-[input needs 490 bytes (int8), the buffer holds 4]"


@pytest.mark.parametrize("kind, advice", [
    ("none", "load a model first so the input goes straight into its tensor]"),
    ("kws", "the model's input takes 490 bytes, only that many go straight into its tensor]"),
])
def test_db_load_out_of_memory_says_how_much_is_free_and_what_to_do(interp, kind, advice):
    _micropython_only(interp)
    replies, _ = run_dut(interp, kind, ["db load 300000%", "name%"], heap_bytes=128 * 1024)
    error = replies[0][0]
    assert error.startswith("e-[db load 300000: out of memory, ") and error.endswith(advice)
    assert 0 < int(error.split(", ")[1].split()[0]) < 128 * 1024
    assert replies[1] == ["m-name-dut-[tinyhost]", "m-ready"]   # the DUT goes on answering
