# Checks under the MicroPython VM that the runtime's file-upload path allocates nothing per frame: full-size
# PUT_DATA frames are read, CRC-checked, written to a file, hashed and acknowledged under micropython.heap_lock().
#   micropython hotpath_check.py DEVICE_DIR FRAMES_FILE WORK_DIR    (prints "ok N" or the failure)
import io
import micropython
import os
import sys

sys.path.insert(0, sys.argv[1])
from tinyfw import frame  # noqa: E402
from tinyfw.runtime import Runtime  # noqa: E402


class Sink:
    def __init__(self):
        self.n = 0

    def write(self, mv):
        self.n += len(mv)
        return len(mv)


with open(sys.argv[2], "rb") as f:
    stream = io.BytesIO(f.read())
os.chdir(sys.argv[3])
rt = Runtime(stream, Sink(), max_payload=4096, window=4)


def ignore_text(c, burst):
    return False


# first frame (PUT_BEGIN) and the first data frame outside the lock: files opened, memoryviews made
for _ in range(2):
    assert rt.fio.read_frame(ignore_text) == frame.R_FRAME
    rt._on_frame()
count = 0
micropython.heap_lock()
try:
    while True:
        r = rt.fio.read_frame(ignore_text)
        if r != frame.R_FRAME or rt.fio.ftype != frame.PUT_DATA or rt.fio.n != 4096:
            break
        rt._on_frame()
        count += 1
finally:
    micropython.heap_unlock()
assert rt.upload is not None and rt.upload.offset == (count + 1) * 4092, (count, rt.upload and rt.upload.offset)
print("ok", count)
