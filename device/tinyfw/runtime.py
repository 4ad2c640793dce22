# tinyfw runtime: the command loop that owns the serial stream (docs/protocol.md).
#
# Started by `import tinyfw.runtime as r; r.run()` (the host does it through the raw REPL, or main.py at boot).
# On a board without the firmware on its filesystem the host sends frame.py, cmd_files.py, cmd_session.py and this
# file through the raw REPL instead, one after the other into one namespace ("bootstrap"); that is why the tinyfw
# imports below are single lines the host can drop. The command handlers are the cmd_* modules: model commands
# in tinyfw/cmd_model.py, imported on first use, and LOAD in tinyfw/cmd_load.py, imported before and after the
# engine loads a model and dropped while it does (its code is not in the heap at the load's peak); session commands
# (tinyfw/cmd_session.py) and file commands (tinyfw/cmd_files.py) are imported on first use and dropped again
# before a model is loaded, as is tinyfw.cmd_model, so that the load has their heap (docs/engine.md, "Memory");
# text (EEMBC) commands go through tinyfw/cmd_text.py, imported at the first one.
#
# This module stays in the heap next to a model, so it is kept lean: protocol numbers are private copies
# (`_X = const(...)` is compiled away: no global, no qstr; tests/test_device_constants.py checks every copy
# against tinyhost.protocol), and code that runs once or rarely lives in the modules above.
import gc
import sys
import time

from tinyfw.frame import DevError, FrameIO, put16, put32

try:
    from micropython import const
except ImportError:
    def const(x):
        return x

VERSION = "0.1.0"              # tinyfw's version (HELLO, INFO, READY)

_HEADER_BYTES = const(10)
_TRAILER_BYTES = const(4)
_PAYLOAD_LIMIT = const(16384)
_PROTOCOL_VERSION = const(1)
_FLAG_SYNC = const(1)
_HELLO = const(0x01)
_INFO = const(0x02)
_STATS = const(0x03)
_TIMES = const(0x06)
_LIST = const(0x10)
_HASH = const(0x11)
_PUT_DATA = const(0x16)
_GET = const(0x19)
_LOAD = const(0x20)
_SET_INPUT = const(0x21)
_GET_OUTPUT = const(0x23)
_INFER = const(0x24)
_UNLOAD = const(0x25)
_STREAM_START = const(0x26)
_STREAM_STOP = const(0x28)
_OK = const(0x80)
_ERR = const(0x81)
_ACK = const(0x82)
_NAK = const(0x83)
_EVENT = const(0x84)
_READY = const(0x85)
_E_UNKNOWN_COMMAND = const(1)
_E_NOT_FOUND = const(3)
_E_EXISTS = const(4)
_E_NO_SPACE = const(5)
_E_IO = const(6)
_E_NO_MEMORY = const(10)
_E_NO_ENGINE = const(12)
_E_INTERNAL = const(14)
_NAK_BAD_HEADER = const(1)
_NAK_BAD_CRC = const(2)
_NAK_STALL = const(3)
_NAK_GAP = const(4)
_NAK_TOO_BIG = const(5)
_R_FRAME = const(0)            # tinyfw.frame's read_frame() results
_R_EOF = const(1)
_R_BAD_HEADER = const(2)
_R_TOO_BIG = const(3)
_R_BAD_CRC = const(4)
_R_INTERRUPT = const(6)
_R_REST = const(7)

_FRAMES_RX = const(0)          # Runtime.counts: the STATS counters, in STATS order
_FRAMES_BAD = const(1)
_FRAMES_RETRIED = const(2)
_FRAMES_DUP = const(3)
_FRAMES_OUT_OF_ORDER = const(4)
_NAKS_SENT = const(5)
_ERRORS = const(6)
_TEXT_COMMANDS = const(7)

_SMALL_PAYLOAD = const(240)    # replies that are cached for a retried request fit in this
_TEXT_MAX = const(512)         # longest text (EEMBC) command
_CACHE_ACK = const(-1)         # Runtime.cached: 0 nothing, _CACHE_ACK an ACK, else the length of the cached reply


def cmd_stats(rt):
    rt.collect()
    c = rt.counts
    rt.reply_kv((("frames_rx", c[_FRAMES_RX]), ("frames_bad", c[_FRAMES_BAD]),
                 ("frames_retried", c[_FRAMES_RETRIED]), ("frames_dup", c[_FRAMES_DUP]),
                 ("frames_out_of_order", c[_FRAMES_OUT_OF_ORDER]), ("naks_sent", c[_NAKS_SENT]),
                 ("errors", c[_ERRORS]), ("text_commands", c[_TEXT_COMMANDS]),
                 ("heap_free_bytes", gc.mem_free()), ("heap_peak_bytes", rt.heap_peak_bytes),
                 ("uptime_ms", time.ticks_diff(time.ticks_ms(), rt.t_start)),
                 ("model_loaded", int(rt.model is not None)), ("last_error", rt.last_error.replace("\n", " "))))


class Runtime:
    def __init__(self, stream_in=None, stream_out=None, max_payload=None, window=None, bootstrapped=False):
        gc.collect()
        if not max_payload:
            # The frame buffer is allocated for the runtime's whole life: 2 KB on heaps under 128 KB (an ESP32
            # with the VM's 112 KB), where a model's arena needs every byte; uploads still run at > 80 % of the
            # line rate there (python -m benchmarks.upload_throughput).
            try:
                total = gc.mem_free() + gc.mem_alloc()
            except AttributeError:
                total = 131072
            max_payload = 8192 if total >= 262144 else 4096 if total >= 131072 else 2048
        self.max_payload = min(max_payload, _PAYLOAD_LIMIT)
        # A sliding window needs an input buffer that holds `window` frames while the device writes flash. The
        # unix port (the virtual board) reads from a kernel tty/pipe buffer; microcontroller ports have a ~256-byte
        # stdin ring buffer, so they take one frame at a time (stop-and-wait).
        self.window = window or (4 if sys.platform in ("linux", "darwin") else 1)
        self.bootstrapped = bootstrapped
        self.fio = FrameIO(stream_in or sys.stdin.buffer, stream_out or sys.stdout.buffer, self.max_payload)
        self.reply = bytearray(_HEADER_BYTES + _SMALL_PAYLOAD + _TRAILER_BYTES)
        self.small = memoryview(self.reply)[_HEADER_BYTES:_HEADER_BYTES + _SMALL_PAYLOAD]
        # The instance's attributes stay at 29 or fewer: MicroPython sizes an object's attribute table in steps
        # (17, 29, 53 slots of 16 bytes on the 64-bit VM); the 30th attribute would cost 384 bytes more.
        self.text = None               # bytearray(_TEXT_MAX), made when the first text command byte comes
        self.text_len = 0              # > _TEXT_MAX: the command overflowed and will be refused at its '%'
        self.burst_n = 0
        self.prev_text = 0
        self.garbage = False
        self.expected = 0
        self.last_seq = -1
        self.cached = 0                # the reply a retried copy of the last request gets (_CACHE_ACK or a length)
        self.nak_sent = False
        self.nak_seen = 0              # distance past `expected` of the last out-of-order frame since the NAK
        self.seq = 0                   # seq of the request being executed (replies and events carry it)
        self.exiting = False
        self.model = None
        self.input_copies = None       # what the host set as model inputs (tinyfw.cmd_model)
        self.times = None              # timings of the last INVOKE, u32 little-endian each
        self.upload = None             # cmd_files.Upload while a PUT is in progress
        self.counts = [0] * 8          # frames_rx, frames_bad, ... (_FRAMES_RX ...): one list, not 8 attributes
        self.last_error = ""
        self.heap_peak_bytes = 0
        self.t_start = time.ticks_ms()
        # frame type -> function(runtime) for the session and file commands, filled from their modules as they
        # are imported (an import statement allocates, even for a module already loaded: the upload hot path
        # must not)
        self.handlers = {}
        self.version = VERSION
        self.firmware_hash = None      # tinyfw.cmd_session computes it once

    # -- the interface tinyfw.eembc and tinyfw.cmd_model use ------------------------------------------------
    def write_text(self, s):
        out = self.fio.out
        out.write(s.encode() if isinstance(s, str) else s)
        flush = getattr(out, "flush", None)
        if flush:
            flush()

    def load_model(self, path, backend="auto", keep_free_bytes=0):
        """Load the model at ``path``, replacing the loaded one, leaving ``keep_free_bytes`` of heap for what comes
        after it (engine.load); returns the engine Model."""
        return self._modelload(path, backend, keep_free_bytes)

    def collect(self):
        """gc.collect(), then note the live heap: ``heap_peak_bytes`` is the most seen after a collection."""
        gc.collect()
        used = gc.mem_alloc()
        if used > self.heap_peak_bytes:
            self.heap_peak_bytes = used

    def drop_commands(self):
        """Give the session, file and model commands' code back to the heap (before a model load, with no model
        loaded, and at a stream's start when offload has no Predictor); the next such command imports it again.
        tinyfw.cmd_files stays while an upload is in progress. Nothing to drop when bootstrapped (the modules' code
        is part of the runtime's then)."""
        uploading = self.upload is not None
        for name in ("cmd_session", "cmd_model") if uploading else ("cmd_session", "cmd_model", "cmd_files"):
            _forget(name)
        self.handlers = {k: v for k, v in self.handlers.items() if k >= _LIST} if uploading else {}
        gc.collect()

    def payload_view(self, start=0, end=None):
        """The request payload (bytes start..end) as a memoryview; valid until the reply is built."""
        return self.fio.mv[_HEADER_BYTES + start:_HEADER_BYTES + (self.fio.n if end is None else end)]

    def reply_small(self, n, ftype=_OK):
        """Send the reply whose n bytes were written into ``self.small``; a retried request gets it again."""
        self.cached = self.fio.send_buffer(self.reply, ftype, 0, self.seq, n)

    def reply_ack(self):
        """Acknowledge a data frame; a retried copy of it is acknowledged again without being executed."""
        self.fio.send_small(_ACK, self.seq, 0)
        self.cached = _CACHE_ACK

    def reply_big(self, n):
        """Send the n payload bytes written into the frame buffer (``self.fio.payload``); not cached."""
        self.fio.send_buffer(self.fio.buf, _OK, 0, self.seq, n)

    def reply_kv(self, pairs):
        text = "\n".join("%s=%s" % kv for kv in pairs).encode()
        n = min(len(text), self.max_payload)
        self.fio.payload[:n] = text[:n]
        self.reply_big(n)

    def send_event(self, index, value):
        """Stream one (index, value) pair, e.g. a timing, to the host; allocates nothing on a 64-bit port."""
        fio = self.fio
        put32(fio.small, _HEADER_BYTES, index)
        put32(fio.small, _HEADER_BYTES + 4, value)
        fio.send_small(_EVENT, self.seq, 8)

    def model_module(self):
        """tinyfw.cmd_model, imported when it is not loaded."""
        cmd_model = sys.modules.get("tinyfw.cmd_model")
        if cmd_model is None:
            try:
                from tinyfw import cmd_model
            except ImportError:
                raise DevError(_E_NO_ENGINE, "model commands need the flashed firmware (tinyfw/cmd_model.py); "
                               "run `tinyhost flash` first")
        return cmd_model

    def _modelload(self, path, backend, keep_free_bytes=0):
        """Load a model. tinyfw.cmd_load makes room first and is dropped while the engine loads, so that its code
        is not in the heap at the load's peak; it is imported again to finish the load or tell why it failed.
        ``path`` None executes a LOAD request and returns the length of the reply begun in the frame buffer;
        else returns the engine Model."""
        t0 = time.ticks_ms()
        request = path is None
        cmd_load = _load_module()
        try:
            if request:
                backend, path, keep_free_bytes = cmd_load.request_args(self)
            engine = cmd_load.begin(self)
        finally:
            cmd_load = None
            _forget("cmd_load")
        gc.collect()
        error = None
        try:
            self.model = engine.load(path, backend=backend, keep_free_bytes=keep_free_bytes)
        except Exception as e:      # told by tinyfw.cmd_load once its code is back
            error = e
        engine = None
        free = 0
        if error is not None:
            gc.collect()
            free = gc.mem_free()    # what the failed load left (its error tells it)
        cmd_load = _load_module()
        try:
            if error is not None:
                raise cmd_load.load_error(path, error, free)
            m = cmd_load.finish(self, path, keep_free_bytes)
            return cmd_load.reply(self, m, time.ticks_diff(time.ticks_ms(), t0)) if request else m
        finally:
            cmd_load = error = None
            _forget("cmd_load")
            _forget("load_reply")

    # -- the loop --------------------------------------------------------------------------------------------
    def serve(self, announce=True):
        fio = self.fio
        if announce:
            text = ("tinyfw=%s\nprotocol=%d\nmax_payload=%d\nwindow=%d"
                    % (VERSION, _PROTOCOL_VERSION, self.max_payload, self.window)).encode()
            self.small[:len(text)] = text
            fio.send_buffer(self.reply, _READY, 0, 0, len(text))
        while not self.exiting:
            r = fio.read_frame(self._on_text)
            if r == _R_FRAME:
                self._on_frame()
            elif r == _R_EOF or r == _R_INTERRUPT:
                break
            elif r == _R_REST:      # the line rests after damage no NAK answered: the host waits for a reply
                self._nak(_NAK_STALL)
            else:                   # a damaged frame
                self.counts[_FRAMES_BAD] += 1
                self.garbage = True
                self.text_len = 0
                reason = (_NAK_BAD_HEADER if r == _R_BAD_HEADER else _NAK_BAD_CRC if r == _R_BAD_CRC
                          else _NAK_TOO_BIG if r == _R_TOO_BIG else _NAK_STALL)
                if fio.header_ok:
                    d = (fio.seq - self.expected) & 0xFFFF
                    if d >= 0x8000:     # a damaged copy of a frame already executed: its reply went out; if
                        fio.rest_wanted = True      # the line rests, the NAK makes the host send it again
                        continue
                    if d == 0:          # this very send of the expected frame failed: ask for it again at once
                        self._nak(reason)
                        continue
                if not self.nak_sent:   # otherwise once per expected frame, until it arrives or the line rests
                    self._nak(reason)
                else:
                    fio.rest_wanted = True
        if self.upload is not None:     # an upload in progress is abandoned: its partial file goes
            self.upload.close(True)
            self.upload = None

    def _on_text(self, c, burst_start):
        if burst_start:
            self.burst_n = 0
            self.garbage = False
            self.nak_sent = False
        self.burst_n += 1
        if self.garbage:
            return False
        if c >= 0x80:     # not text: a frame whose magic was hit; NAK the expected frame if the line rests
            self.fio.rest_wanted = True
        if c == 3:    # Ctrl-C typed at a console (or sent by mpremote) ends the runtime; garbage does not
            if self.burst_n == 1 or (self.burst_n == 2 and self.prev_text in (10, 13)):
                return True
            if self.fio.poll is None and self.text_len == 0:
                return True
        self.prev_text = c
        if c == 0x25:     # '%' ends an EEMBC text command: tinyfw.cmd_text runs it
            n = self.text_len
            self.text_len = 0
            self.counts[_TEXT_COMMANDS] += 1
            try:
                from tinyfw import cmd_text
            except ImportError:   # bootstrapped: no tinyfw package on the filesystem
                cmd_text = None
            if cmd_text is None or not cmd_text.run(self, n, n > _TEXT_MAX):
                self.write_text("e-[no text commands: tinyfw.eembc is not installed]\r\n")
            return False
        if (c < 0x20 and c != 9) or c >= 0x7F:     # text commands are printable ASCII: anything else ends one
            self.text_len = 0
            return False
        n = self.text_len
        if n < _TEXT_MAX:
            if self.text is None:
                self.text = bytearray(_TEXT_MAX)
            self.text[n] = c
        self.text_len = n + 1 if n <= _TEXT_MAX else n
        return False

    def _nak(self, reason):
        fio = self.fio
        fio.rest_wanted = False
        self.nak_seen = 0
        put16(fio.small, _HEADER_BYTES, self.expected)
        fio.small[_HEADER_BYTES + 2] = reason
        fio.send_small(_NAK, self.expected, 3)
        self.nak_sent = True
        self.counts[_NAKS_SENT] += 1

    def _on_frame(self):
        fio = self.fio
        seq = fio.seq
        self.garbage = False
        fio.rest_wanted = False
        self.counts[_FRAMES_RX] += 1
        if fio.flags & _FLAG_SYNC:
            self.expected = seq
            self.last_seq = -1
            self.cached = 0
        d = (seq - self.expected) & 0xFFFF
        if d == 0:
            if self.nak_sent:
                self.counts[_FRAMES_RETRIED] += 1
            self.nak_sent = False
            self.expected = (seq + 1) & 0xFFFF
            self.last_seq = seq
            self._execute(fio.ftype, seq)
        elif d < 0x8000:      # a frame before this one was lost: ask for it once, drop what follows it
            self.counts[_FRAMES_OUT_OF_ORDER] += 1
            if not self.nak_sent or d <= self.nak_seen:
                self._nak(_NAK_GAP)           # first gap, or the host's resent frames also miss the expected one
            self.nak_seen = d
        else:                 # a retried copy of a frame already executed
            self.counts[_FRAMES_DUP] += 1
            self.counts[_FRAMES_RETRIED] += 1
            if fio.ftype == _PUT_DATA:
                if self.upload is not None:       # idempotent by offset: writes only bytes not yet written
                    try:
                        self.upload.apply(self)
                    except (DevError, OSError):
                        pass                      # a stale copy; the reply cache is left alone
                fio.send_small(_ACK, seq, 0)
            elif seq != self.last_seq:
                fio.send_small(_ACK, seq, 0)
            elif self.cached > 0:
                fio.write(memoryview(self.reply)[:self.cached])
            elif self.cached == _CACHE_ACK:
                fio.send_small(_ACK, seq, 0)
            elif fio.ftype in (_HELLO, _INFO, _STATS, _TIMES, _LIST, _HASH, _GET, _LOAD, _SET_INPUT, _GET_OUTPUT,
                               _INFER):
                self._execute(fio.ftype, seq)     # its reply does not depend on state it changes: run it again
            else:
                fio.send_small(_ACK, seq, 0)

    def _execute(self, ftype, seq):
        self.seq = seq
        self.cached = 0
        try:
            # STATS is resident: it is what a host asks while a model fills the heap (memory figures, reset
            # detection), when importing a command module may not fit.
            if ftype == _STATS:
                cmd_stats(self)
            elif ftype == _LOAD:
                # tinyfw.cmd_load wrote the reply but the heap line, measured once its code is gone
                n = self._modelload(None, None)
                self.collect()
                line = ("\nheap_free_bytes=%d" % gc.mem_free()).encode()
                end = min(n + len(line), self.max_payload)
                self.fio.payload[n:end] = line[:end - n]
                self.reply_big(end)
            elif _LOAD < ftype <= _UNLOAD:
                self.model_module().handle(self, ftype)
            else:
                handler = self.handlers.get(ftype)
                if handler is None:         # a session or file command: import its module on first use
                    g = globals()           # bootstrapped: cmd_session.py and cmd_files.py ran here
                    if _HELLO <= ftype <= _TIMES:
                        commands = g.get("SESSION_COMMANDS")
                        if commands is None:
                            gc.collect()
                            from tinyfw import cmd_session
                            commands = cmd_session.SESSION_COMMANDS
                    elif _LIST <= ftype <= _GET:
                        commands = g.get("FILE_COMMANDS")
                        if commands is None:
                            gc.collect()
                            from tinyfw import cmd_files
                            commands = cmd_files.FILE_COMMANDS
                    elif _STREAM_START <= ftype <= _STREAM_STOP:
                        gc.collect()
                        from tinyfw import cmd_stream
                        commands = cmd_stream.STREAM_COMMANDS
                    else:
                        commands = {}
                    self.handlers.update(commands)
                    handler = commands.get(ftype)
                if handler is None:
                    raise DevError(_E_UNKNOWN_COMMAND, "unknown command 0x%02x" % ftype)
                handler(self)
            return
        except DevError as e:
            code, msg = e.args
        except MemoryError:
            gc.collect()
            code, msg = _E_NO_MEMORY, "out of memory (heap free %d bytes)" % gc.mem_free()
        except OSError as e:
            errno = e.args[0] if e.args else 0
            code, msg = ((_E_NOT_FOUND, "no such file or directory") if errno == 2 else
                         (_E_EXISTS, "already exists") if errno == 17 else
                         (_E_NO_SPACE, "the filesystem is full") if errno == 28 else
                         (_E_IO, "OSError %s" % (errno,)))
        except Exception as e:
            code, msg = _E_INTERNAL, "%s: %s" % (type(e).__name__, e)
        self.last_error = msg          # an ERR reply
        self.counts[_ERRORS] += 1
        raw = msg.encode()[:_SMALL_PAYLOAD - 2]
        put16(self.small, 0, code)
        self.small[2:2 + len(raw)] = raw
        self.reply_small(2 + len(raw), _ERR)


def _load_module():
    """tinyfw.cmd_load, imported (it is dropped while a model loads)."""
    try:
        from tinyfw import cmd_load
    except ImportError:
        raise DevError(_E_NO_ENGINE, "model commands need the flashed firmware (tinyfw/cmd_load.py); "
                       "run `tinyhost flash` first")
    return cmd_load


def _forget(name):
    """Drop the module tinyfw.<name>, so that its code goes back to the heap once nothing else refers to it."""
    sys.modules.pop("tinyfw." + name, None)
    pkg = sys.modules.get("tinyfw")
    if pkg is not None and name in pkg.__dict__:
        delattr(pkg, name)


def run(stream_in=None, stream_out=None, max_payload=None, window=None, bootstrapped=False, autostart=False):
    """Serve frames on the console until BYE, Ctrl-C at a console, or end of input.

    ``autostart`` (main.py): no READY frame at start, so a text-only host (an EEMBC runner) sees no binary bytes.
    """
    try:
        import micropython
        micropython.kbd_intr(-1)
    except (ImportError, AttributeError):
        micropython = None
    modules_before = tuple(sys.modules)
    rt = None
    try:
        rt = Runtime(stream_in, stream_out, max_payload, window, bootstrapped)
        rt.serve(announce=not autostart)
    finally:
        if micropython is not None:
            micropython.kbd_intr(3)
        _release(rt, modules_before)


def _release(rt, modules_before):
    """Give back what the runtime took once it ends, so that the REPL it returns to (and the next runtime) has the
    heap it had: the model and offload's Predictor (which refers to the model and lives in tinyfw.cmd_model, not
    in the runtime), then the tinyfw modules imported while it ran. The engine stays once imported: dropping and
    importing it again costs ~450 B each time (its viper code is not all given back), and INFO reports the heap
    with it resident."""
    if rt is not None:
        cmd_model = sys.modules.get("tinyfw.cmd_model")
        if cmd_model is not None:
            cmd_model.unload(rt)
        elif rt.model is not None:
            rt.model.close()
            rt.model = None
    for name in [n for n in sys.modules if n.startswith("tinyfw.") and not n.startswith("tinyfw.engine")
                 and n not in modules_before]:
        _forget(name[len("tinyfw."):])
    gc.collect()
