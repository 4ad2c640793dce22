# tinyfw session commands: HELLO, INFO, BYE, RESET, TIMES (docs/protocol.md; STATS stays in runtime.py).
# Functions take the Runtime.
# The runtime imports this module on the first of them and drops it again before a model is loaded.
# Bootstrap note: like cmd_files.py, sent into runtime.py's namespace when the host bootstraps; names must not
# clash.
# Protocol numbers are private copies (compiled away; tests/test_device_constants.py checks them).
import gc
import os
import sys

from hashlib import sha256
from tinyfw.frame import DevError, u16, u32

try:
    from micropython import const
except ImportError:
    def const(x):
        return x

_HEADER_BYTES = const(10)
_PROTOCOL_VERSION = const(1)
_HELLO = const(0x01)
_INFO = const(0x02)
_BYE = const(0x04)
_RESET = const(0x05)
_TIMES = const(0x06)
_E_BAD_ARGS = const(2)
_E_STATE = const(11)


def cmd_hello(rt):
    rt.reply_kv((("tinyfw", rt.version), ("protocol", _PROTOCOL_VERSION), ("max_payload", rt.max_payload),
                 ("window", rt.window), ("bootstrapped", int(rt.bootstrapped))))


def cmd_info(rt):
    impl = sys.implementation
    pairs = [("firmware_version", rt.version), ("firmware_hash", firmware_hash(rt)),
             ("protocol", _PROTOCOL_VERSION), ("micropython_version", ".".join(str(v) for v in impl.version[:3])),
             ("machine", getattr(impl, "_machine", sys.platform)), ("platform", sys.platform),
             ("max_payload", rt.max_payload), ("window", rt.window),
             ("bootstrapped", int(rt.bootstrapped)), ("mpy", getattr(impl, "_mpy", 0))]
    try:                            # imported before the heap is measured: it stays resident once imported
        from tinyfw import engine
        backends = ",".join(engine.BACKENDS)
    except Exception:               # no engine on the board (or bootstrapped): no backends
        backends = ""
    engine = None
    rt.collect()
    pairs.append(("heap_free_bytes", gc.mem_free()))
    pairs.append(("heap_total_bytes", gc.mem_free() + gc.mem_alloc()))
    try:
        st = os.statvfs("/")
        pairs.append(("fs_free_bytes", st[0] * st[4]))
        pairs.append(("fs_total_bytes", st[1] * st[2]))
    except (OSError, AttributeError):
        pass
    board = sys.platform
    try:
        import machine
        uid = machine.unique_id()
    except (ImportError, AttributeError):       # the unix port (the virtual board) has none
        uid = b""
    try:
        import _vboard
        pairs.append(("virtual", 1))
        pairs.append(("emulates", _vboard.board))
        board = "sim"
        uid = _vboard.unique_id
    except ImportError:
        pairs.append(("virtual", 0))
    pairs.append(("board", board))
    pairs.append(("unique_id", "".join("%02x" % b for b in uid)))
    pairs.append(("backends", backends))
    resident = "tinyfw.boot_model" in sys.modules
    try:
        from tinyfw import boot_model
        pairs.append(("boot_model", boot_model.path()))
    except (ImportError, MemoryError):  # bootstrapped (no tinyfw package), or no room next to a big model
        pass
    boot_model = None
    if not resident:                # imported for this line only: its code goes back to the heap (a model load
        sys.modules.pop("tinyfw.boot_model", None)   # may need every byte)
        pkg = sys.modules.get("tinyfw")
        if pkg is not None and "boot_model" in pkg.__dict__:
            delattr(pkg, "boot_model")
    rt.reply_kv(pairs)


def cmd_bye(rt):
    rt.reply_small(0)
    rt.exiting = True


def cmd_reset(rt):
    if rt.upload is not None:
        rt.upload.close(True)
        rt.upload = None
    if rt.model is not None:
        rt.model_module().unload(rt)
    rt.times = None
    rt.counts = [0] * len(rt.counts)
    rt.last_error = ""
    rt.heap_peak_bytes = 0
    rt.collect()
    rt.reply_small(0)


def cmd_times(rt):
    if rt.fio.n != 6:
        raise DevError(_E_BAD_ARGS, "TIMES wants offset u32, count u16")
    buf = rt.fio.buf
    start = u32(buf, _HEADER_BYTES)
    count = u16(buf, _HEADER_BYTES + 4)
    if rt.times is None:
        raise DevError(_E_STATE, "no timings: run INVOKE first")
    count = max(0, min(count, len(rt.times) // 4 - start, rt.max_payload // 4))
    rt.fio.payload[:4 * count] = rt.times[4 * start:4 * (start + count)]
    rt.reply_big(4 * count)


def _fw_hash_tree(h, root, rel, buf):
    # Files are read into one buffer: a chunk allocated per read would leave the hash's string, kept by the
    # runtime, high in a heap full of garbage, where it splits the block a model's arena needs.
    for name in sorted(e[0] for e in os.ilistdir(root)):
        p = root.rstrip("/") + "/" + name
        if os.stat(p)[0] & 0x4000:
            _fw_hash_tree(h, p, rel + name + "/", buf)
            continue
        if not (name.endswith(".py") or name.endswith(".mpy")):
            continue
        h.update((rel + name).encode())
        with open(p, "rb") as f:
            while True:
                n = f.readinto(buf)
                if not n:
                    break
                h.update(buf if n == len(buf) else memoryview(buf)[:n])


def firmware_hash(rt):
    """sha256 (first 16 hex digits) over the names and contents of the tinyfw files on the filesystem; "ram"
    when the runtime was sent through the REPL instead of imported."""
    if rt.bootstrapped:
        return "ram"
    if rt.firmware_hash is None:
        try:
            here = __file__.rsplit("/", 1)[0] or "."      # the tinyfw folder: runtime.py is beside this file
        except NameError:           # this code was sent through the REPL: no file behind it
            return "ram"
        h = sha256()
        _fw_hash_tree(h, here, "", bytearray(512))
        digest = h.digest()
        h = None
        gc.collect()
        rt.firmware_hash = "".join("%02x" % b for b in digest[:8])
    return rt.firmware_hash


SESSION_COMMANDS = {_HELLO: cmd_hello, _INFO: cmd_info, _BYE: cmd_bye, _RESET: cmd_reset,
                    _TIMES: cmd_times}
