"""The board's MFCC front end (device/tinyfw/mfcc.py) builds its tables in little more heap than they keep: on the
virtual ESP32 (112 KB heap) it has to fit next to the kws model, whose tensor arena needs one free block of 17 KB.
Run in the MicroPython VM with the ESP32's heap, the modules precompiled as `tinyhost flash` sends them."""

import subprocess

import pytest

from engine_harness import helpers
from engine_harness.helpers import micropython
from test_frontend_device import SCALE, ZERO_POINT

# Only ``free`` bytes of heap left (a ballast takes the rest), then the front end built: what it keeps, or "NO ROOM".
HEAP_SCRIPT = r"""
import gc, sys
sys.path.insert(0, sys.argv[1])
from tinyfw import mfcc
free = int(sys.argv[2])
gc.collect()
before = gc.mem_alloc()
ballast = bytearray(gc.mem_free() - free)
gc.collect()
try:
    fe = mfcc.Mfcc(%r, %d)
except MemoryError:
    print("NO ROOM")
else:
    ballast = None
    gc.collect()
    print("KEPT", gc.mem_alloc() - before, fe.ram_bytes)
"""

# Heap beyond the tables' own that building them may take (a few floats and the instance's attributes at a time)
SLACK = 10240


@pytest.mark.sim
def test_the_front_end_builds_in_little_more_heap_than_its_tables_keep(tmp_path):
    from tinyhost import boards
    device_dir = helpers.mpy_tree(tmp_path / "device")
    script = tmp_path / "heap.py"
    script.write_text(HEAP_SCRIPT % (SCALE, ZERO_POINT))
    heap = boards.load("esp32").heap_bytes

    def build(free):
        proc = subprocess.run([micropython(), "-X", f"heapsize={heap}", str(script), str(device_dir), str(free)],
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc.stdout.split()

    kept = build(60000)
    assert kept[0] == "KEPT"
    kept_bytes, ram_bytes = int(kept[1]), int(kept[2])
    assert ram_bytes <= kept_bytes < ram_bytes + 2048          # the tables and buffers, and their objects' headers
    # Building them needs no more than that and some slack: the kws model's arena (17 KB) stays free beside them
    assert build(kept_bytes + SLACK)[0] == "KEPT"
