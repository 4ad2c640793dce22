# Device-side test script: runs under the MicroPython unix VM (`micropython -X heapsize=N run_model.py ...`).
#
#   run_model.py DEVICE_DIR MODEL BACKEND INPUTS OUTPUTS [WEIGHTS [ROMFS_IMAGE]]
#
# Loads MODEL with the engine from DEVICE_DIR, runs every input record of INPUTS (concatenated raw input
# tensors) with the heap locked around invoke(), appends each output tensor to OUTPUTS, and prints one line
# "RESULT {json}" with the engine's stats, the free heap and the invoke times. With ROMFS_IMAGE, the image is read
# into the heap first (the flash partition a board maps into its address space), mounted at /rom, and MODEL is
# loaded from there by its file name.
import sys
import gc
import json
import time

import micropython

device_dir, model_path, backend, inputs_path, outputs_path = sys.argv[1:6]
weights = sys.argv[6] if len(sys.argv) > 6 else "auto"
if len(sys.argv) > 7:
    import vfs
    _rom = open(sys.argv[7], "rb").read()
    vfs.mount(vfs.VfsRom(_rom), "/rom")
    model_path = "/rom/" + model_path.split("/")[-1]
sys.path.insert(0, device_dir)

from tinyfw import engine   # noqa: E402

gc.collect()
heap_before = gc.mem_free()
try:
    m = engine.load(model_path, backend=backend, weights=weights)
except Exception as e:
    print("LOAD_ERROR", type(e).__name__, e)
    raise SystemExit(3)
gc.collect()
heap_after_load = gc.mem_free()
inp = m.input_buffer(0)
out = m.output_buffer(0)
n_in = m.inputs[0].nbytes
times_us = []
locked_ok = True
with open(inputs_path, "rb") as fi, open(outputs_path, "wb") as fo:
    while True:                     # each record straight into the input tensor: no input-sized buffer here
        got = fi.readinto(inp)
        if not got:
            break
        t0 = time.ticks_us()
        micropython.heap_lock()
        try:
            m.invoke()
        except MemoryError:
            locked_ok = False
            micropython.heap_unlock()
            m.invoke()
        else:
            micropython.heap_unlock()
        times_us.append(time.ticks_diff(time.ticks_us(), t0))
        fo.write(out)
stats = m.stats()
stats["heap_before"] = heap_before
stats["heap_after_load"] = heap_after_load
stats["invoke_allocation_free"] = locked_ok
stats["times_us"] = times_us
stats["backends"] = list(engine.BACKENDS)
print("RESULT", json.dumps(stats))

m.close()
