# Heap of the RUNNING tinyfw runtime on the MicroPython VM, command by command (runs in the VM, not CPython):
#
#   micropython -X heapsize=112640 tests/engine_harness/runtime_heap.py MODEL [DEVICE_DIR]
#
# DEVICE_DIR: the firmware tree to import (default: device/ of this checkout; use a tree of .mpy files as
# `tinyhost flash` sends it: tests/engine_harness/helpers.mpy_tree). It builds the Runtime the way run() does
# (streams: an input that is empty, an output that swallows) and executes real requests through its dispatcher:
# HELLO, INFO, STATS, LIST, HASH, LOAD MODEL, SET_INPUT, INVOKE 2 (heap locked inside invoke), GET_OUTPUT, INFER,
# UNLOAD, LOAD again. After each one: live heap after gc.collect() ("used", including what the VM had before the
# runtime was imported), its change, and the free heap. Then "RESULT {json}" for tests.
import gc
import json
import sys

import micropython

args = [a for a in sys.argv[1:] if not a.startswith("--")]
model_path = args[0]
device_dir = args[1] if len(args) > 1 else sys.argv[0].rsplit("/", 3)[0] + "/device"
sys.path.insert(0, device_dir)

stages = []
_last = [0]
errors = []


def stage(name):
    gc.collect()
    used = gc.mem_alloc()
    stages.append((name, used, gc.mem_free()))
    print("%-28s used %7d  delta %+7d  free %7d" % (name, used, used - _last[0], gc.mem_free()))
    _last[0] = used


class _Empty:
    def readinto(self, buf, n=None):
        return 0


class _Sink:
    def __init__(self):
        self.last = bytearray(256)
        self.last_n = 0

    def write(self, b):
        n = min(len(b), 256)
        self.last[:n] = b[:n]
        self.last_n = n
        return len(b)


stage("start")
import tinyfw.runtime as runtime  # noqa: E402

stage("runtime imported")
sink = _Sink()
rt = runtime.Runtime(_Empty(), sink)
stage("runtime built")
seq = [0]


def request(ftype, payload=b"", flags=0, pattern_from=-1, pattern_n=0):
    """Execute one request; pattern_n bytes of the test pattern ((i * 7) % 256 from input byte pattern_from)
    follow the payload, written straight into the frame buffer as the link would (no bytes object here)."""
    fio = rt.fio
    n = len(payload)
    buf = fio.buf
    buf[10:10 + n] = payload
    for i in range(pattern_n):
        buf[10 + n + i] = ((pattern_from + i) * 7) % 256
    n += pattern_n
    fio.n = n
    fio.ftype = ftype
    fio.flags = flags
    fio.seq = seq[0]
    rt._execute(ftype, seq[0])
    seq[0] += 1
    if sink.last[2] == 0x81:       # ERR
        msg = bytes(c for c in sink.last[12:sink.last_n - 4] if 32 <= c < 127).decode()    # the text, no trailer
        errors.append(msg)
        print("  ERR", msg)


def u32(v):
    return bytes((v & 255, (v >> 8) & 255, (v >> 16) & 255, (v >> 24) & 255))


request(0x01)
stage("HELLO")
request(0x02)
stage("INFO")
request(0x03)
stage("STATS")
request(0x10, b"\0\0/")
stage("LIST /")
request(0x11, model_path.encode())
stage("HASH model")
if "--trace" in sys.argv:         # the engine's load stages too (live heap, largest free block)
    from tinyfw import engine as _engine

    def _trace(name):
        gc.collect()
        print("    load: %-24s used %7d  free %7d" % (name, gc.mem_alloc(), gc.mem_free()))
    _engine.trace = _trace
request(0x20, b"\0" + model_path.encode())
stage("LOAD")
ok = rt.model is not None
out = b""
locked_ok = False
if ok:
    n_in = rt.model.inputs[0].nbytes
    at = 0
    while at < n_in:                 # the whole input, in frames, as the host sends it
        chunk = min(n_in - at, rt.max_payload - 5)
        request(0x21, b"\0" + u32(at), pattern_from=at, pattern_n=chunk)
        at += chunk
    stage("SET_INPUT")
    # without a kept copy of the input (LOAD's input_kept=0: it does not fit) a second run would start from what
    # the first left in the input tensor (docs/bench.md): one run then
    runs = 2 if rt.input_copies is not None else 1
    m = rt.model
    inv = m.invoke

    def locked():
        micropython.heap_lock()
        try:
            inv()
        finally:
            micropython.heap_unlock()
    m.invoke = locked
    request(0x22, u32(runs) + u32(0))
    locked_ok = not errors or "MemoryError" not in errors[-1]
    del m.invoke
    m = inv = locked = None
    stage("INVOKE %d (heap locked)" % runs)
    request(0x23, b"\0" + u32(0) + b"\xff\xff")
    stage("GET_OUTPUT")
    out = bytes(rt.model.output_buffer(0))
    if n_in + 64 <= rt.max_payload:
        request(0x24, pattern_from=0, pattern_n=n_in)
        stage("INFER")
    request(0x25)
    stage("UNLOAD")
    request(0x20, b"\0" + model_path.encode())
    stage("LOAD again")
peak = max(s[1] for s in stages)
print("peak live heap %d bytes (heap total %d), max_payload %d" % (peak, gc.mem_alloc() + gc.mem_free(),
                                                                   rt.max_payload))
print("RESULT", json.dumps({"ok": ok and not errors, "stages": stages, "peak": peak, "errors": errors,
                            "invoke_allocation_free": locked_ok, "output": list(out),
                            "max_payload": rt.max_payload}))
