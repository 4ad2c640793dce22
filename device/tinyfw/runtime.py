# tinyfw runtime: the command loop that owns the serial stream (docs/protocol.md).
#
# Started by `import tinyfw.runtime as r; r.run()` (the host does it through the raw REPL, or main.py at boot).
# On a board without the firmware on its filesystem the host sends frame.py, files.py, session.py and this file
# through the raw REPL instead, one after the other into one namespace ("bootstrap"); that is why the tinyfw
# imports below are single lines the host can drop. Model commands live in tinyfw/inference.py, imported on
# first use; session commands (tinyfw/session.py) and file commands (tinyfw/files.py) are imported on first use
# and dropped again before a model is loaded, so that the load has their heap (docs/engine.md, "Memory").
import gc
import sys
import time

from tinyfw.frame import BYE, DevError, ERR, EVENT, E_EXISTS, E_INTERNAL, E_IO, E_NO_ENGINE, E_NO_MEMORY, E_NO_SPACE
from tinyfw.frame import E_NOT_FOUND, E_UNKNOWN_COMMAND, FLAG_SYNC, FixedFrame, FrameIO, GET, GET_OUTPUT, HASH
from tinyfw.frame import HEADER_BYTES, HELLO, INFER, INFO, INVOKE, LIST, LOAD, NAK, NAK_BAD_CRC, NAK_BAD_HEADER
from tinyfw.frame import NAK_GAP, NAK_STALL, NAK_TOO_BIG, OK, PAYLOAD_LIMIT, PROTOCOL_VERSION, PUT_DATA, READY
from tinyfw.frame import R_BAD_CRC, R_BAD_HEADER, R_EOF, R_FRAME, R_INTERRUPT, R_TOO_BIG, SET_INPUT, STATS, TIMES
from tinyfw.frame import TRAILER_BYTES, UNLOAD, put16, put32, u32

VERSION = "0.1.0"              # tinyfw's version (HELLO, INFO, READY)

SMALL_PAYLOAD = 240            # replies that are cached for a retried request fit in this
TEXT_MAX = 512                 # longest text (EEMBC) command
_CACHE_NONE = 0
_CACHE_FRAME = 1
_CACHE_ACK = 2


def _default_max_payload():
    # The frame buffer is allocated for the runtime's whole life: 2 KB on heaps under 128 KB (an ESP32 with the
    # VM's 112 KB), where a model's arena needs every byte; uploads still run at > 80 % of the line rate there
    # (python -m benchmarks.upload_throughput).
    try:
        total = gc.mem_free() + gc.mem_alloc()
    except AttributeError:
        return 4096
    return 8192 if total >= 256 * 1024 else 4096 if total >= 128 * 1024 else 2048


def _default_window():
    # A sliding window needs an input buffer that holds `window` frames while the device writes flash. The unix
    # port (the virtual board) reads from a kernel tty/pipe buffer; microcontroller ports have a ~256-byte stdin
    # ring buffer, so they take one frame at a time (stop-and-wait).
    return 4 if sys.platform in ("linux", "darwin") else 1


def cmd_stats(rt):
    rt.collect()
    rt.reply_kv((("frames_rx", rt.frames_rx), ("frames_bad", rt.frames_bad),
                 ("frames_retried", rt.frames_retried), ("frames_dup", rt.frames_dup),
                 ("frames_out_of_order", rt.frames_out_of_order), ("naks_sent", rt.naks_sent),
                 ("errors", rt.errors), ("text_commands", rt.text_commands),
                 ("heap_free_bytes", gc.mem_free()), ("heap_peak_bytes", rt.heap_peak_bytes),
                 ("uptime_ms", time.ticks_diff(time.ticks_ms(), rt.t_start)),
                 ("model_loaded", int(rt.model is not None)), ("last_error", rt.last_error.replace("\n", " "))))


class Runtime:
    def __init__(self, stream_in=None, stream_out=None, max_payload=None, window=None, bootstrapped=False):
        gc.collect()
        self.stream_in = stream_in or sys.stdin.buffer
        self.stream_out = stream_out or sys.stdout.buffer
        self.max_payload = min(max_payload or _default_max_payload(), PAYLOAD_LIMIT)
        self.window = window or _default_window()
        self.bootstrapped = bootstrapped
        self.fio = FrameIO(self.stream_in, self.stream_out, self.max_payload)
        self.reply = bytearray(HEADER_BYTES + SMALL_PAYLOAD + TRAILER_BYTES)
        self.small = memoryview(self.reply)[HEADER_BYTES:HEADER_BYTES + SMALL_PAYLOAD]
        self.event = FixedFrame(EVENT, 8)
        self.nak = FixedFrame(NAK, 3)
        self.text = None               # bytearray(TEXT_MAX), made when the first text command byte comes
        self.text_len = 0
        self.text_overflow = False
        self.burst_n = 0
        self.prev_text = 0
        self.garbage = False
        self.expected = 0
        self.last_seq = -1
        self.cached = _CACHE_NONE
        self.cached_len = 0
        self.nak_sent = False
        self.nak_seen = 0              # distance past `expected` of the last out-of-order frame since the NAK
        self.seq = 0                   # seq of the request being executed (replies and events carry it)
        self.exiting = False
        self.model = None
        self.input_copies = None       # what the host set as model inputs (tinyfw.inference)
        self.times = None              # timings of the last INVOKE, u32 little-endian each
        self.times_n = 0
        self._inference = None
        self._eembc = None
        self.upload = None             # files.Upload while a PUT is in progress
        self.put_data_full = self.fio.mv[HEADER_BYTES + 4:HEADER_BYTES + self.max_payload]
        self.frames_rx = 0
        self.frames_bad = 0
        self.frames_retried = 0
        self.frames_dup = 0
        self.frames_out_of_order = 0
        self.naks_sent = 0
        self.text_commands = 0
        self.errors = 0
        self.last_error = ""
        self.heap_peak_bytes = 0
        self.t_start = time.ticks_ms()
        # frame type -> function(runtime); model commands are looked up in tinyfw.inference
        # Filled from the command modules as they are imported. STATS is resident: it is what a host asks while a
        # model fills the heap (memory figures, reset detection), when importing a command module may not fit.
        self.handlers = {STATS: cmd_stats}
        self.version = VERSION
        self.firmware_hash = None      # tinyfw.session computes it once
        self._modules = []             # names of the command modules imported (tinyfw.session, tinyfw.files)
        try:
            self.firmware_dir = __file__.rsplit("/", 1)[0] or "."
        except NameError:           # bootstrapped: no file behind this code
            self.firmware_dir = None
        # Requests whose replies do not depend on state they change: a retried copy is simply executed again.
        self.repeatable = (HELLO, INFO, STATS, TIMES, LIST, HASH, GET, LOAD, SET_INPUT, GET_OUTPUT, INFER)

    # -- the interface tinyfw.eembc and tinyfw.inference use ------------------------------------------------
    def write_text(self, s):
        self.stream_out.write(s.encode() if isinstance(s, str) else s)
        flush = getattr(self.stream_out, "flush", None)
        if flush:
            flush()

    def load_model(self, path, backend="auto"):
        return self.model_module().load_model(self, path, backend)

    def collect(self):
        """gc.collect(), then note the live heap: ``heap_peak_bytes`` is the most seen after a collection."""
        gc.collect()
        used = gc.mem_alloc()
        if used > self.heap_peak_bytes:
            self.heap_peak_bytes = used

    def put_cancel(self):
        """End an upload in progress, removing its partial file."""
        if self.upload is not None:
            self.upload.close(True)
            self.upload = None

    def drop_commands(self):
        """Give the session and file commands' code back to the heap (before a model load); the next such command
        imports it again. tinyfw.files stays while an upload is in progress. Nothing to drop when bootstrapped
        (the modules' code is part of the runtime's then)."""
        pkg = sys.modules.get("tinyfw")
        for name in tuple(self._modules):
            if name == "files" and self.upload is not None:
                continue
            mod = sys.modules.pop("tinyfw." + name, None)
            self._modules.remove(name)
            if mod is not None:
                for ftype in (mod.FILE_COMMANDS if name == "files" else mod.SESSION_COMMANDS):
                    self.handlers.pop(ftype, None)
            if pkg is not None and name in pkg.__dict__:
                delattr(pkg, name)
        gc.collect()

    def _command(self, ftype):
        """The handler of a session or file command, importing its module on first use."""
        g = globals()
        if HELLO <= ftype <= TIMES:
            if "SESSION_COMMANDS" in g:      # bootstrapped: session.py ran in this namespace
                commands = g["SESSION_COMMANDS"]
            else:
                gc.collect()
                from tinyfw import session
                commands = session.SESSION_COMMANDS
                self._modules.append("session")
        elif LIST <= ftype <= GET:
            if "FILE_COMMANDS" in g:
                commands = g["FILE_COMMANDS"]
            else:
                gc.collect()
                from tinyfw import files
                commands = files.FILE_COMMANDS
                self._modules.append("files")
        else:
            return None
        self.handlers.update(commands)
        return self.handlers.get(ftype)

    def fail(self, code, msg):
        raise DevError(code, msg)

    def payload_view(self, start=0, end=None):
        """The request payload (bytes start..end) as a memoryview; valid until the reply is built."""
        return self.fio.mv[HEADER_BYTES + start:HEADER_BYTES + (self.fio.n if end is None else end)]

    def payload_str(self, start=0):
        return bytes(self.payload_view(start)).decode()

    def reply_small(self, n, ftype=OK):
        """Send the reply whose n bytes were written into ``self.small``; a retried request gets it again."""
        self.cached_len = self.fio.send_buffer(self.reply, ftype, 0, self.seq, n)
        self.cached = _CACHE_FRAME

    def reply_ack(self):
        """Acknowledge a data frame; a retried copy of it is acknowledged again without being executed."""
        self.fio.send_ack(self.seq)
        self.cached = _CACHE_ACK

    def reply_big(self, n):
        """Send the n payload bytes written into the frame buffer (``self.fio.payload``); not cached."""
        self.fio.send_buffer(self.fio.buf, OK, 0, self.seq, n)

    def reply_kv(self, pairs):
        text = "\n".join("%s=%s" % kv for kv in pairs).encode()
        n = min(len(text), self.max_payload)
        self.fio.payload[:n] = text[:n]
        self.reply_big(n)

    def send_event(self, index, value):
        """Stream one (index, value) pair, e.g. a timing, to the host; allocates nothing on a 64-bit port."""
        p = self.event.payload
        put32(p, 0, index)
        put32(p, 4, value)
        self.fio.write(self.event.sealed(self.seq))

    # -- the loop --------------------------------------------------------------------------------------------
    def serve(self, announce=True):
        fio = self.fio
        if announce:
            self.reply_kv_ready()
        while not self.exiting:
            r = fio.read_frame(self._on_text)
            if r == R_FRAME:
                self._on_frame()
            elif r == R_EOF or r == R_INTERRUPT:
                break
            else:
                self._on_bad(r)
        self.put_cancel()

    def reply_kv_ready(self):
        text = ("tinyfw=%s\nprotocol=%d\nmax_payload=%d\nwindow=%d"
                % (VERSION, PROTOCOL_VERSION, self.max_payload, self.window)).encode()
        self.small[:len(text)] = text
        self.fio.send_buffer(self.reply, READY, 0, 0, len(text))

    def _on_text(self, c, burst_start):
        if burst_start:
            self.burst_n = 0
            self.garbage = False
            self.nak_sent = False
        self.burst_n += 1
        if self.garbage:
            return False
        if c == 3:    # Ctrl-C typed at a console (or sent by mpremote) ends the runtime; garbage does not
            if self.burst_n == 1 or (self.burst_n == 2 and self.prev_text in (10, 13)):
                return True
            if self.fio.poll is None and self.text_len == 0:
                return True
        self.prev_text = c
        if c == 0x25:     # '%' ends an EEMBC text command
            self._text_command()
            return False
        if (c < 0x20 and c != 9) or c >= 0x7F:     # text commands are printable ASCII: anything else ends one
            self.text_len = 0
            self.text_overflow = False
            return False
        if self.text_len < TEXT_MAX:
            if self.text is None:
                self.text = bytearray(TEXT_MAX)
            self.text[self.text_len] = c
            self.text_len += 1
        else:
            self.text_overflow = True
        return False

    def _text_command(self):
        n = self.text_len
        overflow = self.text_overflow
        self.text_len = 0
        self.text_overflow = False
        self.text_commands += 1
        if overflow:
            self._note_error("text command longer than %d bytes ignored" % TEXT_MAX)
            self.write_text("e-[text command longer than %d bytes ignored]\r\n" % TEXT_MAX)
            return
        try:
            text = bytes(self.text[:n]).decode().strip() if n else ""
        except UnicodeError:
            self.write_text("e-[text command is not UTF-8]\r\n")
            return
        if self._eembc is None:
            try:
                from tinyfw import eembc
                self._eembc = eembc
            except ImportError:
                self._eembc = False
        if not self._eembc:
            self.write_text("e-[no text commands: tinyfw.eembc is not installed]\r\n")
            return
        try:
            self._eembc.handle_command(text, self)
        except Exception as e:  # a text command never ends the runtime
            self._note_error("text command %r: %r" % (text[:32], e))
            self.write_text("e-[%r]\r\n" % (e,))

    def _on_bad(self, r):
        fio = self.fio
        self.frames_bad += 1
        self.garbage = True
        self.text_len = 0
        reason = (NAK_BAD_HEADER if r == R_BAD_HEADER else NAK_BAD_CRC if r == R_BAD_CRC
                  else NAK_TOO_BIG if r == R_TOO_BIG else NAK_STALL)
        if fio.header_ok:
            d = (fio.seq - self.expected) & 0xFFFF
            if d >= 0x8000:
                return    # a damaged copy of a frame already executed: its reply went out or will be asked for
            if d == 0:
                self._nak(reason)     # this very send of the expected frame failed: ask for it again at once
                return
        if not self.nak_sent:         # otherwise once per expected frame, until it arrives or the line rests
            self._nak(reason)

    def _nak(self, reason):
        self.nak_seen = 0
        p = self.nak.payload
        put16(p, 0, self.expected)
        p[2] = reason
        self.fio.write(self.nak.sealed(self.expected))
        self.nak_sent = True
        self.naks_sent += 1

    def _on_frame(self):
        fio = self.fio
        seq = fio.seq
        self.garbage = False
        self.frames_rx += 1
        if fio.flags & FLAG_SYNC:
            self.expected = seq
            self.last_seq = -1
            self.cached = _CACHE_NONE
        d = (seq - self.expected) & 0xFFFF
        if d == 0:
            if self.nak_sent:
                self.frames_retried += 1
            self.nak_sent = False
            self.expected = (seq + 1) & 0xFFFF
            self.last_seq = seq
            self._execute(fio.ftype, seq)
        elif d < 0x8000:      # a frame before this one was lost: ask for it once, drop what follows it
            self.frames_out_of_order += 1
            if not self.nak_sent or d <= self.nak_seen:
                self._nak(NAK_GAP)            # first gap, or the host's resent frames also miss the expected one
            self.nak_seen = d
        else:                 # a retried copy of a frame already executed
            self.frames_dup += 1
            self.frames_retried += 1
            if fio.ftype == PUT_DATA:
                if self.upload is not None:       # idempotent by offset: writes only bytes not yet written
                    try:
                        self.upload.apply(self)
                    except (DevError, OSError):
                        pass                      # a stale copy; the reply cache is left alone
                fio.send_ack(seq)
            elif seq != self.last_seq:
                fio.send_ack(seq)
            elif self.cached == _CACHE_FRAME:
                fio.write(memoryview(self.reply)[:self.cached_len])
            elif self.cached == _CACHE_ACK:
                fio.send_ack(seq)
            elif fio.ftype in self.repeatable:
                self._execute(fio.ftype, seq)
            else:
                fio.send_ack(seq)

    def _execute(self, ftype, seq):
        self.seq = seq
        self.cached = _CACHE_NONE
        try:
            handler = self.handlers.get(ftype)
            if handler is None:
                handler = self._command(ftype)
            if handler is None:
                if LOAD <= ftype <= UNLOAD:
                    self.model_module().handle(self, ftype)
                    return
                raise DevError(E_UNKNOWN_COMMAND, "unknown command 0x%02x" % ftype)
            handler(self)
        except DevError as e:
            self._error(e.code, e.msg)
        except MemoryError:
            gc.collect()
            self._error(E_NO_MEMORY, "out of memory (heap free %d bytes)" % gc.mem_free())
        except OSError as e:
            self._error(*os_error(e))
        except Exception as e:
            self._error(E_INTERNAL, "%s: %s" % (type(e).__name__, e))

    def _error(self, code, msg):
        self._note_error(msg)
        self.errors += 1
        raw = msg.encode()[:SMALL_PAYLOAD - 2]
        put16(self.small, 0, code)
        self.small[2:2 + len(raw)] = raw
        self.reply_small(2 + len(raw), ERR)

    def _note_error(self, msg):
        self.last_error = msg

    def model_module(self):
        if self._inference is None:
            try:
                from tinyfw import inference
            except ImportError:
                raise DevError(E_NO_ENGINE, "model commands need the flashed firmware (tinyfw/inference.py); "
                               "run `tinyhost flash` first")
            self._inference = inference
        return self._inference


def os_error(e):
    """(code, message) for an OSError from a command."""
    errno = e.args[0] if e.args else 0
    if errno == 2:
        return E_NOT_FOUND, "no such file or directory"
    if errno == 17:
        return E_EXISTS, "already exists"
    if errno == 28:
        return E_NO_SPACE, "the filesystem is full"
    return E_IO, "OSError %s" % (errno,)


def run(stream_in=None, stream_out=None, max_payload=None, window=None, bootstrapped=False, autostart=False):
    """Serve frames on the console until BYE, Ctrl-C at a console, or end of input.

    ``autostart`` (main.py): no READY frame at start, so a text-only host (an EEMBC runner) sees no binary bytes.
    """
    try:
        import micropython
        micropython.kbd_intr(-1)
    except (ImportError, AttributeError):
        micropython = None
    try:
        rt = Runtime(stream_in, stream_out, max_payload, window, bootstrapped)
        rt.serve(announce=not autostart)
    finally:
        if micropython is not None:
            micropython.kbd_intr(3)
