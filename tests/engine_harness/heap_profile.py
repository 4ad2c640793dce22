# Heap breakdown of the engine on the MicroPython VM, stage by stage (runs in the VM, not under CPython):
#
#   micropython -X heapsize=112640 tests/engine_harness/heap_profile.py MODEL [DEVICE_DIR] [--runtime]
#
# DEVICE_DIR: the firmware tree to import (default: device/ of this checkout; a tree of .mpy files works too).
# --runtime: import tinyfw.runtime first, as on a board where the runtime loads the model.
# Prints one line per stage: live heap after gc.collect() relative to the start ("used"), the change from the
# previous stage ("delta") and the free heap, then the model's stats and "RESULT {json}" for tests.
# The load stages come from the engine's load hook (engine.trace). With a usable MODEL.plan beside the model:
# plan checked, arena allocated, steps built (plan loader code, views, scratch, per-channel buffers), load-time
# code dropped. Without one (full path) first: loader imported, model parsed, operators prepared, arena planned.
import sys
import gc
import json

import micropython

args = [a for a in sys.argv[1:] if not a.startswith("--")]
with_runtime = "--runtime" in sys.argv
model_path = args[0]
device_dir = args[1] if len(args) > 1 else sys.argv[0].rsplit("/", 3)[0] + "/device"
sys.path.insert(0, device_dir)

gc.collect()
_base = gc.mem_alloc()
_last = [0]
stages = []


def stage(name):
    gc.collect()
    used = gc.mem_alloc() - _base
    stages.append((name, used))
    print("%-26s used %7d  delta %+7d  free %7d" % (name, used, used - _last[0], gc.mem_free()))
    _last[0] = used


stage("start")
if with_runtime:
    import tinyfw.runtime  # noqa: F401
    stage("runtime imported")
from tinyfw import engine  # noqa: E402

stage("engine imported")
engine.trace = stage
try:
    m = engine.load(model_path)
except MemoryError as e:
    engine.trace = None
    print("LOAD_MEMORY_ERROR", e)
    print("RESULT", json.dumps({"ok": False, "stages": stages, "error": str(e)}))
    raise SystemExit(3)
engine.trace = None
stage("loaded")
buf = m.input_buffer(0)
for i in range(len(buf)):
    buf[i] = (i * 7) % 256 - 128
micropython.heap_lock()
try:
    m.invoke()
    locked_ok = True
except MemoryError:
    locked_ok = False
micropython.heap_unlock()
stage("invoked")
s = m.stats()
print("stats", s)
peak = max(u for _, u in stages)
print("peak live heap %d bytes (heap total %d)" % (peak, gc.mem_alloc() + gc.mem_free()))
print("RESULT", json.dumps({"ok": True, "stages": stages, "peak": peak, "invoke_allocation_free": locked_ok,
                            "free_after": gc.mem_free(),
                            "output": list(bytes(m.output_buffer(0))), "stats": s}))
