# Runs in the MicroPython VM: a model and its plan from a ROMFS image mounted at /rom (weights read in place).
#   micropython -X heapsize=N romfs_run.py IMAGE MODEL_NAME DEVICE_DIR N_INPUTS
# The image is read into one bytes object first thing, like the flash partition it stands for: the rest of the heap
# is what the board has. Prints "OUT <hex>" for each of N_INPUTS inputs (input i: byte j = (j * 7 + i * 13) % 256),
# run with the heap locked, then "RESULT {json}": stats, free heap before/after load.
import sys
import gc
import json
import micropython
import vfs

image = open(sys.argv[1], "rb").read()
vfs.mount(vfs.VfsRom(image), "/rom")
sys.path.insert(0, sys.argv[3])
import tinyfw.runtime  # noqa: F401,E402  (resident beside the engine, as on the board)
from tinyfw import engine  # noqa: E402

gc.collect()
free_before = gc.mem_free()
m = engine.load("/rom/" + sys.argv[2])
gc.collect()
free_after = gc.mem_free()
buf = m.input_buffer(0)
locked_ok = True
for i in range(int(sys.argv[4])):
    for j in range(len(buf)):
        buf[j] = (j * 7 + i * 13) % 256 - 128
    micropython.heap_lock()
    try:
        m.invoke()
    except MemoryError:
        locked_ok = False
    micropython.heap_unlock()
    print("OUT", bytes(m.output_buffer(0)).hex())
print("RESULT", json.dumps({"stats": m.stats(), "free_before": free_before, "free_after": free_after,
                            "invoke_allocation_free": locked_ok}))
