# Device-side frame codec under the MicroPython VM, driven by tests/test_protocol_device.py.
#   micropython codec_check.py DEVICE_DIR read   -- decode frames from stdin with FrameIO; print one line each:
#                                                   "F type flags seq n crc32(payload)" or "B code", "T byte"
#   micropython codec_check.py DEVICE_DIR write  -- stdin lines "type seq hexpayload": write sealed frames
import sys
from binascii import crc32, unhexlify

sys.path.insert(0, sys.argv[1])
from tinyfw import frame  # noqa: E402

mode = sys.argv[2]
out = sys.stdout
if mode == "read":
    fio = frame.FrameIO(sys.stdin.buffer, sys.stdout.buffer, 4096, byte_timeout_ms=200)
    texts = []

    def on_text(c, burst_start):
        texts.append(c)

    while True:
        r = fio.read_frame(on_text)
        if texts:
            out.write("T %s\n" % bytes(texts).hex())
            del texts[:]
        if r == frame.R_EOF:
            break
        if r == frame.R_FRAME:
            out.write("F %d %d %d %d %d\n" % (fio.ftype, fio.flags, fio.seq, fio.n,
                                              crc32(fio.mv[10:10 + fio.n])))
        else:
            out.write("B %d\n" % r)
else:
    buf = bytearray(frame.HEADER_BYTES + 4096 + frame.TRAILER_BYTES)
    for line in sys.stdin:
        parts = line.split()
        if not parts:
            continue
        payload = unhexlify(parts[2]) if len(parts) > 2 else b""
        buf[10:10 + len(payload)] = payload
        n = frame.seal(buf, int(parts[0]), 0, int(parts[1]), len(payload))
        sys.stdout.buffer.write(memoryview(buf)[:n])
