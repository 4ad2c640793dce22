# A failed LOAD through the RUNNING tinyfw runtime, then a good one (runs in the VM, not CPython):
#
#   micropython -X heapsize=112640 tests/engine_harness/load_after_failure.py DEVICE_DIR GOOD BAD...
#
# Builds the Runtime as runtime_heap.py does and sends real LOAD requests through its dispatcher: for each BAD
# model a LOAD of it, then a LOAD of GOOD and an UNLOAD. Prints one "RESULT {json}" line: for each BAD its error
# text (None when it loaded) and whether GOOD loaded after it, with the free heap after each step.
import gc
import json
import sys

sys.path.insert(0, sys.argv[1])
good = sys.argv[2]


class _Empty:
    def readinto(self, buf, n=None):
        return 0


class _Sink:
    def __init__(self):
        self.last = bytearray(4096)
        self.last_n = 0

    def write(self, b):
        n = min(len(b), 4096)
        self.last[:n] = b[:n]
        self.last_n = n
        return len(b)


import tinyfw.runtime as runtime  # noqa: E402

sink = _Sink()
rt = runtime.Runtime(_Empty(), sink)
seq = [0]


def request(ftype, payload=b""):
    """Execute one request; its error text, or None when it succeeded."""
    fio = rt.fio
    n = len(payload)
    fio.buf[10:10 + n] = payload
    fio.n = n
    fio.ftype = ftype
    fio.flags = 0
    fio.seq = seq[0]
    rt._execute(ftype, seq[0])
    seq[0] += 1
    if sink.last[2] == 0x81:       # ERR: the text, printable bytes only, no trailer
        return bytes(c for c in sink.last[12:sink.last_n - 4] if 32 <= c < 127).decode()
    return None


def free():
    gc.collect()
    return gc.mem_free()


request(0x01)                      # HELLO
results = []
for bad in sys.argv[3:]:
    error = request(0x20, b"\0" + bad.encode())
    if error is None:
        request(0x25)
    free_after = free()
    good_error = request(0x20, b"\0" + good.encode())
    request(0x25)
    results.append({"model": bad, "error": error, "free_after": free_after, "good_error": good_error})
    print(bad, error, "| then", good, good_error or "loaded")
print("RESULT", json.dumps(results))
