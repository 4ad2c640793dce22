"""The board's streaming pipeline (device/tinyfw/stream.py) and its clock (device/tinyfw/clock.py), under the
MicroPython VM and CPython, with a stand-in front end and model: hops, the feature window, smoothing, threshold,
refractory time, board time, and what a board that cannot keep up does."""

import json
import subprocess
import sys

import pytest

from test_eembc_device import DEVICE, _interpreters

# A front end writing the hop's first sample (its loudness stands for a keyword) into the row, and a model whose
# posterior for class 1 is the mean of its window's rows: a keyword "heard" for a stretch of hops.
_HARNESS = r'''
import sys
sys.path.insert(0, DEVICE)
VIRTUAL_COSTS = VIRTUAL
if VIRTUAL_COSTS:
    sys.path.insert(0, VBOARD_DIR)      # a _vboard module: what the virtual board's boot code leaves
from tinyfw import clock, stream
if VIRTUAL_COSTS:
    clock.set_costs(INVOKE_NS, HOP_NS_COST, "bt-1")

class TI:
    def __init__(self, shape, dtype, scale, zp):
        self.shape = shape; self.dtype = dtype; self.scale = scale; self.zero_point = zp
        n = 1
        for d in shape:
            n *= d
        self.nbytes = n

class FE:
    mfcc_count = 10
    def frame(self, ring, start, out, offset):
        # the newest hop's last sample: the window's end
        v = ring[(start + 639) % len(ring)]
        for i in range(10):
            out[offset + i] = v & 0xFF

class Model:
    def __init__(self):
        self.inputs = [TI((1, 49, 10, 1), "int8", 1.0, 0)]
        self.outputs = [TI((1, 4), "int8", 1 / 256, -128)]
        self._in = bytearray(490)
        self._out = bytearray(4)
        self.invocations = 0
    def input_buffer(self, i=0):
        return self._in
    def output_buffer(self, i=0):
        return self._out
    def invoke(self):
        self.invocations += 1
        loud = 0
        for r in range(49):
            if self._in[r * 10]:
                loud += 1
        p = 255 * loud // 49
        self._out[0] = (255 - p - 128) & 0xFF
        self._out[1] = (p - 128) & 0xFF
        self._out[2] = 0x80
        self._out[3] = 0x80

m = Model()
li = stream.Listener(m, FE(), INFER_EVERY, SMOOTH, THRESHOLD, REFRACTORY_MS, 0b10, BACKLOG, baud=BAUD)
import array, gc
# audio: zeros, with "keyword" stretches (sample value 1) at the given hops
hops = HOPS
loud = set()
for a, b in LOUD:
    for h in range(a, b):
        loud.add(h)
buf = bytearray(CHUNK)
n_samples = hops * 320
pos = 0
events = []
ev = bytearray(10 * 32)
alloc = None
while pos < n_samples:
    take = min(CHUNK // 2, n_samples - pos)
    for i in range(take):
        v = 1 if (pos + i) // 320 in loud else 0
        buf[2 * i] = v
        buf[2 * i + 1] = 0
    if pos >= 100 * 320 and alloc is None and hasattr(gc, "mem_alloc"):
        gc.collect()
        a0 = gc.mem_alloc()
        li.feed(buf, 0, 2 * take)
        alloc = gc.mem_alloc() - a0
    else:
        li.feed(buf, 0, 2 * take)
    pos += take
    k = li.take_events(ev, 0, 32)
    for j in range(k):
        b = ev[10 * j:10 * j + 10]
        events.append([b[0] | b[1] << 8 | b[2] << 16 | b[3] << 24, b[4] | b[5] << 8 | b[6] << 16 | b[7] << 24,
                       b[8], b[9]])
print("EVENTS " + repr(events))
print("COUNTS " + repr(dict(zip(stream.COUNT_NAMES, li.counts))))
print("INVOCATIONS %d" % m.invocations)
print("ALLOC " + repr(alloc))
print("NOW %d" % clock.now_us())
'''


def run_listener(interpreter, tmp_path, hops, loud, infer_every=1, smooth=1, threshold=128, refractory_ms=1000,
                 backlog=2, chunk=640, virtual=False, invoke_ns=0, hop_ns=0, baud=0):
    prelude = (f"DEVICE = {str(DEVICE)!r}\nHOPS = {hops}\nLOUD = {json.dumps(loud)}\nINFER_EVERY = {infer_every}\n"
               f"SMOOTH = {smooth}\nTHRESHOLD = {threshold}\nREFRACTORY_MS = {refractory_ms}\nBACKLOG = {backlog}\n"
               f"CHUNK = {chunk}\nVIRTUAL = {virtual!r}\nINVOKE_NS = {invoke_ns}\nHOP_NS_COST = {hop_ns}\n"
               f"BAUD = {baud}\nVBOARD_DIR = {str(tmp_path)!r}\n")
    (tmp_path / "_vboard.py").write_text(f"baud = {baud}\n")
    out = subprocess.run([interpreter, "-c", prelude + _HARNESS], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    result = {}
    for line in out.stdout.splitlines():
        tag, _, rest = line.partition(" ")
        result[tag] = eval(rest)
    return result


@pytest.fixture(params=_interpreters())
def interp(request):
    return request.param


def test_a_keyword_stretch_is_detected_once_at_its_time(interp, tmp_path):
    # hops 100..140 loud: the window (49 hops) is more than half loud from hop 125 on
    r = run_listener(interp, tmp_path, 250, [[100, 140]], threshold=128)
    assert r["COUNTS"]["hops"] == 250 and r["COUNTS"]["samples"] == 250 * 320
    assert r["INVOCATIONS"] == 250 - 48                        # one per hop once the window is full
    assert len(r["EVENTS"]) == 1
    board_ms, audio_ms, cls, score = r["EVENTS"][0]
    assert cls == 1
    assert audio_ms == 125 * 20                                # hop 124: 25 of the 49 rows are loud
    assert score >= 128


def test_refractory_time_and_smoothing(interp, tmp_path):
    # two stretches 1.2 s apart: both detected with refractory 1000 ms, one with 3000 ms (virtual clock: exact)
    loud = [[60, 100], [160, 200]]
    kw = dict(virtual=True, invoke_ns=1_000_000, hop_ns=1_000_000, baud=0)
    two = run_listener(interp, tmp_path, 300, loud, refractory_ms=1000, **kw)
    one = run_listener(interp, tmp_path, 300, loud, refractory_ms=3000, **kw)
    assert [e[1] for e in two["EVENTS"]] == [85 * 20, 185 * 20]
    assert [e[1] for e in one["EVENTS"]] == [85 * 20]
    # averaging over 4 inferences delays the detection by the hops it takes the mean to cross the threshold
    smooth = run_listener(interp, tmp_path, 300, loud, smooth=4, refractory_ms=1000, **kw)
    assert [e[1] for e in smooth["EVENTS"]] == [87 * 20, 187 * 20]


def test_virtual_board_time_is_the_audio_plus_the_modelled_work(interp, tmp_path):
    # board time: hop k arrives at (k+1) * 20 ms; the detection is made after its front end and inference
    r = run_listener(interp, tmp_path, 200, [[100, 140]], virtual=True, invoke_ns=3_000_000, hop_ns=2_000_000)
    board_ms, audio_ms, _, _ = r["EVENTS"][0]
    assert audio_ms == 125 * 20
    assert board_ms == audio_ms + 5                            # + 2 ms front end + 3 ms inference
    c = r["COUNTS"]
    assert c["inferences_skipped"] == 0 and c["hops_dropped"] == 0
    assert c["busy_us"] == 200 * 2000 + (200 - 48) * 3000
    assert c["elapsed_us"] == 200 * 20000 + 2000 + 3000


def test_a_board_that_cannot_keep_up_skips_inferences_and_drops_hops(interp, tmp_path):
    # 50 ms an inference every hop of 20 ms: behind after the first, so inferences are skipped (counted)
    slow = run_listener(interp, tmp_path, 200, [[100, 140]], virtual=True, invoke_ns=50_000_000, hop_ns=2_000_000,
                        backlog=4)
    c = slow["COUNTS"]
    assert c["inferences_skipped"] > 0 and c["hops_dropped"] == 0
    assert c["inferences"] + c["inferences_skipped"] == 200 - 48
    assert len(slow["EVENTS"]) == 1                            # still heard, a little later
    # a front end slower than the audio: the ring overflows, hops are dropped (counted), the lag stays bounded
    worse = run_listener(interp, tmp_path, 200, [], virtual=True, invoke_ns=0, hop_ns=30_000_000, backlog=3)
    c = worse["COUNTS"]
    assert c["hops_dropped"] > 0
    assert c["lag_max_us"] <= 3 * 20000 + 30000


def test_a_slow_line_delays_arrival_in_board_time(interp, tmp_path):
    # 115200 baud carries 640-byte frames at 11.5 kB/s: a hop takes ~57 ms to arrive, not 20
    r = run_listener(interp, tmp_path, 100, [], virtual=True, invoke_ns=1_000_000, hop_ns=1_000_000, baud=115200)
    hop_wire_us = (640 + 14) * 10 * (10**9 // 115200) // 1000
    assert r["COUNTS"]["elapsed_us"] >= 100 * hop_wire_us
    assert r["COUNTS"]["inferences_skipped"] == 0


def test_no_allocation_per_hop(tmp_path):
    mp = [p.values[0] for p in _interpreters() if p.id == "micropython"]
    if not mp:
        pytest.skip("the micropython command is not installed")
    r = run_listener(mp[0], tmp_path, 150, [[100, 140]], chunk=640 * 3)
    assert r["ALLOC"] == 0


def test_infer_every_for_the_board_costs():
    sys.path.insert(0, str(DEVICE))
    try:
        from tinyfw import stream
    finally:
        sys.path.remove(str(DEVICE))
    assert stream.infer_every_for(378_000_000, 5_000_000) == 26      # 378 ms / (20 - 5) ms
    assert stream.infer_every_for(10_000_000, 5_000_000) == 1
    assert stream.infer_every_for(10_000_000, 20_000_000) == 0       # even the front end cannot keep up


def test_a_stop_gives_the_streams_buffers_and_front_end_back_before_its_reply(interp, tmp_path):
    # STREAM_STOP's counters reply is built after the stop: the buffers and the front end are garbage by then, and
    # the start's code (tinyfw.stream_setup) went before the buffers were made
    script = _EEMBC.split("rt = Rt()")[0] + r'''
import gc
li = cmd_stream.start(Model())
setup_kept = "tinyfw.stream_setup" in sys.modules
li.feed(bytearray(640 * 60), 0, 640 * 60)
ram = li.fe.ram_bytes
mem_free = getattr(gc, "mem_free", None)
gc.collect()
before = mem_free() if mem_free else 0
li = cmd_stream.stop()
gc.collect()
freed = mem_free() - before if mem_free else -1
print("REPLY " + repr([setup_kept, li.ring is None, li.fe is None, li.model is None, li.counts[0], li.infer_every > 0,
                       cmd_stream.listener() is None, freed >= ram or freed == -1, sys.implementation.name]))
'''
    (tmp_path / "_vboard.py").write_text("baud = 921600\n")
    prelude = f"DEVICE = {str(DEVICE)!r}\nVBOARD_DIR = {str(tmp_path)!r}\nCOMMANDS = []\n"
    out = subprocess.run([interp, "-c", prelude + script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    reply = eval(out.stdout.split("REPLY ")[1])
    kept_on_the_host = reply[-1] != "micropython"          # tinyfw modules are dropped on MicroPython only
    assert reply[:-1] == [kept_on_the_host, True, True, True, 60, True, True, True]


# MLPerf Tiny v1.3's streaming DUT commands (tinyfw.eembc) over the same Listener, with the real front end
# (tinyfw.mfcc) and a stand-in model that hears keyword 0 in every window; audio as AUDIO frames would bring it.
_EEMBC = r'''
import sys
sys.path.insert(0, DEVICE)
sys.path.insert(0, VBOARD_DIR)
from tinyfw import clock, eembc, cmd_stream
clock.set_costs(50000000, 2000000, "bt-1")

class TI:
    def __init__(self, shape, dtype, scale, zp):
        self.shape = shape; self.dtype = dtype; self.scale = scale; self.zero_point = zp
        n = 1
        for d in shape:
            n *= d
        self.nbytes = n

class Model:
    def __init__(self):
        self.inputs = [TI((1, 49, 10, 1), "int8", 0.585, 83)]
        self.outputs = [TI((1, 12), "int8", 1 / 256, -128)]
        self._in = bytearray(490)
        self._out = bytearray(12)
    def input_buffer(self, i=0):
        return self._in
    def output_buffer(self, i=0):
        return self._out
    def invoke(self):
        for j in range(12):
            self._out[j] = 0x7f if j == 0 else 0x80

class Rt:
    def __init__(self):
        self.model = Model()
        self.lines = []
    def write_text(self, s):
        self.lines += [x for x in s.split("\r\n") if x]

rt = Rt()
for cmd in COMMANDS:
    rt.lines = []
    if cmd.startswith("!audio "):
        li = cmd_stream.listener()
        buf = bytearray(640)
        for _ in range(int(cmd[7:])):
            li.feed(buf, 0, 640)
        cmd_stream.take(li, bytearray(240), 0, 24)     # what an AUDIO reply takes
    else:
        eembc.handle_command(cmd, rt)
    print("REPLY " + repr(rt.lines))
'''


def run_eembc_stream(interpreter, tmp_path, commands):
    (tmp_path / "_vboard.py").write_text("baud = 921600\n")
    prelude = f"DEVICE = {str(DEVICE)!r}\nVBOARD_DIR = {str(tmp_path)!r}\nCOMMANDS = {json.dumps(commands)}\n"
    out = subprocess.run([interpreter, "-c", prelude + _EEMBC], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return [eval(line[6:]) for line in out.stdout.splitlines() if line.startswith("REPLY ")]


def test_streaming_dut_commands(interp, tmp_path):
    replies = run_eembc_stream(interp, tmp_path, ["state%", "start%", "state%", "start%", "!audio 150", "stop%",
                                                  "print_detections%", "stop%", "help%"])
    assert replies[0] == ["m-[state idle]", "m-ready"]
    assert replies[1][0].startswith("m-[Listening for audio") and "clock bt-1" in replies[1][0]
    assert replies[2] == ["m-[state streaming]", "m-ready"]
    assert replies[3] == ["m-[Already streaming; send stop first]", "m-ready"]
    assert replies[5][0] == "Streaming stopped."
    assert replies[5][1].startswith("m-[hops 150, ")
    # 50 ms an inference, 2 ms a hop: every 3rd hop from hop 48 on (the window full), posteriors averaged over the
    # last 4 (~250 ms, from zeros); keyword 0 in every window, so a detection once the average reaches the default
    # threshold of 128 (the 3rd inference, hop 54) and then once a refractory second has passed, in board time
    first = 55 * 20 + 2 + 50
    assert replies[6][0] == "Detection Timestamps (ms)" and replies[6][-1] == "m-ready"
    stamps = [int(x.rstrip(",")) for x in replies[6][1:-1]]
    assert stamps[0] == 0 and stamps[1] == first
    assert all(b - a >= 1000 for a, b in zip(stamps[1:], stamps[2:]))
    assert len(stamps) == 3                                   # 150 hops = 3 s: at 1.15 s and 2.23 s
    assert replies[7] == ["m-[Already idle; ignoring stop]", "m-ready"]
    assert "print_detections" in replies[8][1]


def test_eembc_laps_are_board_time_on_a_virtual_board(interp, tmp_path):
    # the model's board-time estimate is 50 ms an invoke: infer 7 reports exactly 350 ms between its laps
    data = bytes(490)
    commands = ["db load 490%"] + [f"db {data[i:i + 31].hex()}%" for i in range(0, 490, 31)] + ["infer 7 2%",
                                                                                               "timestamp%"]
    replies = run_eembc_stream(interp, tmp_path, commands)
    laps = [int(x[len("m-lap-us-"):]) for x in replies[-2] if x.startswith("m-lap-us-")]
    assert laps[1] - laps[0] == 7 * 50000
    [stamp] = [int(x[len("m-lap-us-"):]) for x in replies[-1] if x.startswith("m-lap-us-")]
    assert stamp == laps[1]                                   # nothing ran since: board time stands still


# The real thing, without a virtual board: the shipped kws model (engine), the front end (tinyfw.mfcc) and the
# pipeline under the MicroPython VM, on a short synthetic stream, in board time (bt-1 estimates of the ESP32:
# the model's inference and the front end's hop).
_REAL = r'''
import sys
sys.path.insert(0, DEVICE)
sys.path.insert(0, VBOARD_DIR)
from tinyfw import clock, engine, cmd_stream
clock.set_costs(INVOKE_NS, HOP_NS, "bt-1")
m = engine.load(MODEL)
li = cmd_stream.start(m, threshold=THRESHOLD)
buf = bytearray(1920)
ev = bytearray(10 * 24)
found = []
with open(PCM, "rb") as f:
    while True:
        n = f.readinto(buf)
        if not n:
            break
        li.feed(buf, 0, n)
        k = cmd_stream.take(li, ev, 0, 24)
        for j in range(k):
            b = ev[10 * j:10 * j + 10]
            found.append([b[0] | b[1] << 8 | b[2] << 16 | b[3] << 24, b[8], b[9]])
print("FOUND " + repr(found))
print("COUNTS " + repr(dict(zip(("hops", "inferences", "skipped", "dropped"), li.counts[:4]))))
print("EVERY %d" % li.infer_every)
'''


def test_the_shipped_model_finds_keywords_in_a_short_stream(tmp_path):
    import shutil

    mp = [p.values[0] for p in _interpreters() if p.id == "micropython"]
    if not mp:
        pytest.skip("the micropython command is not installed")
    from tinyhost import boards, stream as st
    from tinyhost.bench import sww
    from tinyhost.boardtime import for_board, frontend_hop_ns
    from tinyhost.features.mfcc import read_wav
    from tinyhost.model.plan import plan_file

    kws = DEVICE.parent / "models" / "kws" / "kws.tflite"
    shutil.copy(kws, tmp_path / "kws.tflite")
    shutil.copy(plan_file(kws), tmp_path / "kws.plan")
    f = sww.make_stream(tmp_path / "data", seconds=8, keywords=2, seed=3)
    (tmp_path / "a.pcm").write_bytes(st.to_int16(read_wav(f.wav_path)))
    (tmp_path / "_vboard.py").write_text("baud = 0\n")
    esp32 = boards.load("esp32")
    invoke_ns = for_board(kws, esp32, True, "viper").total_ns
    hop_ns = frontend_hop_ns(kws, esp32)
    prelude = (f"DEVICE = {str(DEVICE)!r}\nVBOARD_DIR = {str(tmp_path)!r}\nMODEL = {str(tmp_path / 'kws.tflite')!r}\n"
               f"PCM = {str(tmp_path / 'a.pcm')!r}\nINVOKE_NS = {invoke_ns}\nHOP_NS = {hop_ns}\n"
               f"THRESHOLD = {round(0.8 * 255)}\n")
    out = subprocess.run([mp[0], "-X", "heapsize=4000000", "-c", prelude + _REAL], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    r = {line.partition(" ")[0]: eval(line.partition(" ")[2]) for line in out.stdout.splitlines()}
    # ~377 ms an inference and ~9.2 ms a hop's front end: the fewest hops of 20 ms that hold an inference and their
    # front ends (36 today), and no inference skipped, no hop dropped
    every = -(-invoke_ns // (20_000_000 - hop_ns))
    assert 25 <= every <= 40 and r["EVERY"] == every
    assert r["COUNTS"] == {"hops": 400, "inferences": (400 - 49) // every + 1, "skipped": 0, "dropped": 0}
    score = sww.score([(ms / 1000, st.labels_for(kws)[c]) for ms, c, _ in r["FOUND"]], f.windows, 8.0, f.labels)
    assert score.true_positives == 2 and score.false_positives == 0, (r["FOUND"], f.windows)


def test_a_stream_with_mlperfs_kws01_front_end(interp, tmp_path):
    # kws01 was trained with a 30 ms window and a 512-point FFT: the stream's front end and ring follow STREAM_START
    script = _EEMBC.split("rt = Rt()")[0] + r'''
li = cmd_stream.start(Model(), window_samples=480, fft_size=512)
li.feed(bytearray(640 * 60), 0, 640 * 60)
print("REPLY " + repr([li.window, len(li.ring), li.fe.window_samples, li.counts[0], li.counts[1]]))
'''
    (tmp_path / "_vboard.py").write_text("baud = 921600\n")
    prelude = f"DEVICE = {str(DEVICE)!r}\nVBOARD_DIR = {str(tmp_path)!r}\nCOMMANDS = []\n"
    out = subprocess.run([interp, "-c", prelude + script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert eval(out.stdout.split("REPLY ")[1]) == [480, 480, 480, 60, 4]    # inferences every 3 hops from 48


# When the front end's tables cannot be built beside the loaded model, the model goes and is loaded again leaving the
# stream's heap free (keep_free_bytes: its weights then stream from flash), and the front end is built beside it. A
# stand-in front end that fails beside a model loaded without that room.
_RELOAD = r'''
import sys
sys.path.insert(0, DEVICE)
sys.path.insert(0, VBOARD_DIR)
from tinyfw import clock
import tinyfw
class _Fake:
    pass
fake = _Fake()
state = {"loaded": True, "room": 0, "built": 0}
class Mfcc:
    mfcc_count = 10
    def __init__(self, scale, zero_point, window_samples=640, fft_size=1024):
        if state["loaded"] and not state["room"]:
            raise MemoryError("memory allocation failed")
        state["built"] += 1
    def frame(self, ring, start, out, offset):
        pass
fake.Mfcc = Mfcc
sys.modules["tinyfw.mfcc"] = fake
tinyfw.mfcc = fake
from tinyfw import cmd_stream
clock.set_costs(50000000, 2000000, "bt-1", "/models/kws.tflite")
''' + _EEMBC.split("class Rt:")[0].split("clock.set_costs(50000000, 2000000, \"bt-1\")")[1] + r'''
def _close(self):
    state["loaded"] = False
Model.close = _close
class Rt:
    def __init__(self):
        self.model = Model()
        self.loads = []
        self.input_copies = None
    def drop_commands(self):
        pass
    def load_model(self, path, backend="auto", keep_free_bytes=0):
        self.loads.append((path, keep_free_bytes > 16384))
        self.model = Model()
        state["loaded"] = True
        state["room"] = keep_free_bytes
        return self.model
rt = Rt()
first = rt.model
li = cmd_stream.start(rt.model, rt=rt)
print("REPLY " + repr([rt.loads, state["built"], li.model is rt.model, li.model is not first]))
'''


def test_the_model_is_loaded_again_leaving_room_when_the_front_end_does_not_fit_beside_it(interp, tmp_path):
    (tmp_path / "_vboard.py").write_text("baud = 0\n")
    prelude = f"DEVICE = {str(DEVICE)!r}\nVBOARD_DIR = {str(tmp_path)!r}\n"
    out = subprocess.run([interp, "-c", prelude + _RELOAD], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert eval(out.stdout.split("REPLY ")[1]) == [[("/models/kws.tflite", True)], 1, True, True]
