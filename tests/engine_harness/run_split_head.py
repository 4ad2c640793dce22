# Device-side test script: runs under the MicroPython unix VM.
#
#   run_split_head.py DEVICE_DIR MODEL BACKEND INPUT POINTS OUTPUTS
#
# Loads MODEL with the engine from DEVICE_DIR; for every split point in the JSON file POINTS ([[step, [[offset,
# nbytes], ...]], ...]) reads INPUT into the input tensor, runs the head (invoke(stop=step)) with the heap locked,
# and appends the live tensors (arena_view, in the order given) to OUTPUTS. Prints "RESULT {json}".
import sys
import json

import micropython

device_dir, model_path, backend, input_path, points_path, outputs_path = sys.argv[1:7]
sys.path.insert(0, device_dir)

from tinyfw import engine   # noqa: E402

m = engine.load(model_path, backend=backend)
with open(points_path) as f:
    points = json.load(f)
with open(input_path, "rb") as f:
    data = f.read()
views = [[m.arena_view(o, n) for o, n in tensors] for _, tensors in points]
locked_ok = True
with open(outputs_path, "wb") as fo:
    for (step, _), vs in zip(points, views):
        m.input_buffer(0)[:] = data
        micropython.heap_lock()
        try:
            m.invoke(None, 0, step)
        except MemoryError:
            locked_ok = False
            micropython.heap_unlock()
            m.invoke(None, 0, step)
        else:
            micropython.heap_unlock()
        for v in vs:
            fo.write(v)
print("RESULT", json.dumps({"steps": m.step_count(), "invoke_allocation_free": locked_ok}))
m.close()
