# tinyfw.offload: one predict() for local and offloaded inference (docs/offload.md).
#
#   from tinyfw.offload import Predictor
#   p = Predictor(model)                  # model: an engine Model; config from /offload.json
#   out, info = p.predict(input_bytes)    # local, remote or "auto", as the config says
#
# Modes: "off" (always local), "on" (always offload; local on timeout or error, counted as a fallback), "auto"
# (local first; offload only when the local top-1 confidence is below "threshold") and "split" (the board runs
# operators [0, k), the server the rest from the tensors alive at k; the rest locally on a failure).
#
# This module is all that stays on the heap while a board offloads over TCP without a key (about 6 KB on the
# 64-bit VM): the wire format (host/tinyhost/offload/wire.py is the spec), the TCP link and the Predictor. The
# config check (config.py) is imported by the Predictor's constructor and dropped again; HMAC (auth.py) is
# imported only with a key, the serial link (stream.py) only for transport "serial". Frame buffers are sized to
# the model's input and output and allocated once per Predictor; a request writes into them.
import struct
import time

try:
    from micropython import const
except ImportError:                     # CPython imports this package only for tinyfw.offload.config
    def const(x):
        return x

try:
    from binascii import crc32
except ImportError:                     # ports built without binascii.crc32
    from .softcrc import crc32

_HEADER = const("<2sBBHII")             # magic b"TO", version, kind, flags, seq, body length
_HEAD = const(14)
_MAC = const(32)
_HELLO = const(1)
_WELCOME = const(2)
_REQUEST = const(3)
_REPLY = const(4)
_SPLIT = const(5)
_AUTH_REQUIRED = const(5)               # wire status codes (wire.py)
_AUTH_FAILED = const(6)
_E_TIMEOUT = const(-1)                  # this side's failures (Info.error, counters()["errors"])
_E_LINK = const(-2)
_E_FRAME = const(-3)
_E_DOWN = const(-4)
_E_MEMORY = const(-6)
_DTYPES = const(("int8", "uint8", "int16", "int32", "float32"))     # wire dtype code = index + 1
_SOURCES = const(("local", "model", "reference"))
_MODES = const(("off", "on", "auto", "split"))


class OffloadError(Exception):
    # A remote prediction failed; args[0] is a wire status (> 0) or a negative code of this side.
    pass


def dtype_code(dtype):
    if dtype not in _DTYPES:
        raise ValueError("offload carries int8, uint8, int16, int32 or float32 tensors, not %s" % dtype)
    return _DTYPES.index(dtype) + 1


def top1(buf, dtype, scale, zero_point):
    # (index, real value) of the largest element of an output tensor; int8/uint8 without allocating.
    code = dtype_code(dtype)
    size = b"\x00\x01\x01\x02\x04\x04"[code]
    best_i = 0
    best = None
    for i in range(len(buf) // size):
        if code < 3:
            v = buf[i]
            if code == 1 and v > 127:
                v -= 256
        else:
            v = struct.unpack_from("<" + "xxxhif"[code], buf, size * i)[0]
        if best is None or v > best:
            best, best_i = v, i
    return best_i, best if code == 5 else (best - zero_point) * scale if scale else float(best)


class Info:
    # What one predict() did; the same object is reused (read it before the next predict()).
    def reset(self):
        self.source = "local"           # local | model | reference  (model/reference: answered by the server)
        self.offloaded = False          # a remote answer was used
        self.fallback = False           # wanted remote, answered locally
        self.error = 0                  # last remote error (wire status or a negative code), 0 = none
        self.retries = 0
        self.confidence = None          # local top-1 confidence (auto mode)
        # times in microseconds; wait_us: request sent -> reply header in (network + server)
        self.local_us = self.serialise_us = self.send_us = self.wait_us = self.receive_us = self.parse_us = 0
        self.server_queue_us = self.server_compute_us = self.total_us = self.request_bytes = self.reply_bytes = 0

    def as_dict(self):
        return {k: getattr(self, k) for k in (
            "source", "offloaded", "fallback", "error", "retries", "confidence", "local_us", "serialise_us",
            "send_us", "wait_us", "receive_us", "parse_us", "server_queue_us", "server_compute_us", "total_us",
            "request_bytes", "reply_bytes")}


class TcpLink:
    # A persistent TCP connection with TCP_NODELAY (where the port has it) and a timeout on every operation.
    def __init__(self, server, timeout_ms):
        self.server = server
        self.timeout_ms = timeout_ms
        self.sock = None
        self.nodelay = False

    def open(self):
        import socket
        host, port = self.server.rsplit(":", 1)
        addr = socket.getaddrinfo(host.strip("[]"), int(port), 0, socket.SOCK_STREAM)[0][-1]
        s = self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.settimeout(self.timeout_ms / 1000)
        s.connect(addr)
        try:
            s.setsockopt(getattr(socket, "IPPROTO_TCP", 6), getattr(socket, "TCP_NODELAY", 1), 1)
            self.nodelay = True
        except (OSError, AttributeError):
            pass

    def send(self, mv):
        if self.sock.write(mv) != len(mv):      # a stream write returns short only on timeout
            raise OSError(110)

    def recv_into(self, mv):
        k = self.sock.readinto(mv)              # reads all of mv unless the peer closes or the timeout passes
        if k != len(mv):
            raise OSError(110 if k is None else 104)

    def close(self):
        if self.sock is not None:
            self.sock.close()
            self.sock = None


class Predictor:
    # The one predict API: local, remote or auto, as config (a dict; None: read config_path) says. link: an object
    # with open(), send(mv), recv_into(mv), close() and nodelay (default: TcpLink, or the serial link).
    def __init__(self, model, config=None, config_path="/offload.json", link=None):
        import sys
        from . import config as c       # checked once; its code goes back to the heap
        try:
            cfg = c.load_config(config_path) if config is None else c.check_config(config)
            split = c.split_point(cfg["split"]) if cfg["mode"] == "split" else None
        finally:
            del sys.modules[c.__name__]
            globals().pop("config", None)
            c = None
        self.cfg = cfg
        self.mode = cfg["mode"]
        self.model = model
        self.info = Info()
        self.info.reset()
        self.predictions = self.offloaded = self.fallbacks = self.retries = self.reconnects = self.seq = 0
        self.errors = {}
        self.down_until = self.key = self.link = None
        self.session = None             # after HELLO/WELCOME on the open link: True, or the session's Hmac
        if self.mode == "off":
            return
        if cfg["key"]:
            from binascii import unhexlify
            from .auth import Hmac
            self.key = Hmac(unhexlify(cfg["key"]))
        if link is None:
            if cfg["transport"] == "serial":
                from .stream import StreamLink
                link = StreamLink(cfg["timeout_ms"])
            else:
                link = TcpLink(cfg["server"], cfg["timeout_ms"])
        self.link = link
        # REQUEST: header and request head (model id u8 length + text, want u8, tensor head: dtype u8, ndim u8, dims
        # u16 each, scale f32, zero point i32, data length u32) from tx, then the input straight from the caller's
        # buffer, then [mac] and crc from tail: no copy of the input, and no buffer of its size.
        i, o = model.inputs[0], model.outputs[0]
        mid = cfg["model_id"].encode()
        self.step = 0                   # split: engine steps the board runs before sending
        self.pieces = None              # split: what follows tx, fixed (tensor heads, views of the arena)
        if split is None:
            kind = _REQUEST
            head = bytes((len(mid),)) + mid + struct.pack(
                "<BBB%dHfiI" % len(i.shape), ("default", "model", "reference").index(cfg["want"]),
                dtype_code(i.dtype), len(i.shape), *(tuple(i.shape) + (i.scale, i.zero_point, i.nbytes)))
            body = len(head) + i.nbytes
        else:
            # SPLIT: model id, k, tensor count, then each live tensor's head and its bytes straight from the arena
            # (Model.arena_view: no copy); the first head goes into tx
            kind = _SPLIT
            self.split_at, self.step, tensors = split
            if self.step >= model.step_count():
                raise ValueError("split point %d is past the model's last step" % self.split_at)
            head = bytes((len(mid),)) + mid + struct.pack("<HB", self.split_at, len(tensors))
            pieces = []
            body = len(head)
            for t in tensors:
                dims = t[4:]
                th = struct.pack("<BB%dHfiI" % len(dims), 1, len(dims), *(tuple(dims) + (t[2], t[3], t[1])))
                if pieces:
                    pieces.append(th)
                else:
                    head += th
                pieces.append(model.arena_view(t[0], t[1]))
                body += len(th) + t[1]
            self.pieces = tuple(pieces)
        self.tx = bytearray(struct.pack(_HEADER, b"TO", 1, kind, 1 if self.key else 0, 0, body) + head)
        self.tail = memoryview(bytearray((_MAC if self.key else 0) + 4))
        dtype_code(o.dtype)             # refused here, not at the first answer
        # REPLY: header, status/source/queue/compute (10), tensor head (2 + 2*ndim + 12), data, [mac], crc; at
        # least a WELCOME with a short message. A longer frame is a refusal: its status is all that is read.
        self.rx = memoryview(bytearray(max(_HEAD + 24 + 2 * len(o.shape) + o.nbytes, 138) + len(self.tail)))

    def close(self):
        self.session = None
        if self.link is not None:
            self.link.close()

    def _read(self):
        # Read one frame into rx: (kind, seq, body, frame bytes, signed, ticks_us when its header was in).
        # Checks its CRC and, in a session with a key, its MAC.
        rx, link = self.rx, self.link
        link.recv_into(rx[:_HEAD])
        t = time.ticks_us()
        magic, version, kind, flags, seq, n = struct.unpack_from(_HEADER, rx, 0)
        if magic != b"TO" or version != 1:
            raise OffloadError(_E_FRAME)
        end = _HEAD + n
        total = end + (_MAC if flags & 1 else 0) + 4
        if total > len(rx):             # not an answer this model can get; the link is closed after it
            link.recv_into(rx[_HEAD:_HEAD + 1])
            raise OffloadError(rx[_HEAD] or _E_FRAME)
        link.recv_into(rx[_HEAD:total])
        if crc32(rx[:total - 4]) != struct.unpack_from("<I", rx, total - 4)[0]:
            raise OffloadError(_E_FRAME)
        if flags & 1 and self.key and self.session and bytes(rx[end:end + _MAC]) != self.session.digest(rx[:end]):
            raise OffloadError(_E_FRAME)
        return kind, seq, rx[_HEAD:end], total, flags & 1, t

    def _connect(self):
        # Open the link and run HELLO/WELCOME; with a key, check the server's proof and derive the session key.
        self.close()
        self.link.open()
        dev = self.cfg["device_id"].encode()
        nonce = _nonce()
        self.seq += 1
        hello = bytearray(struct.pack(_HEADER, b"TO", 1, _HELLO, 0, self.seq, 17 + len(dev)) + bytes((len(dev),))
                          + dev + nonce + bytes(4))
        struct.pack_into("<I", hello, len(hello) - 4, crc32(memoryview(hello)[:-4]))
        self.link.send(hello)
        kind, _, body, _, _, _ = self._read()
        if body[0]:                     # a WELCOME or REPLY that refuses the session
            raise OffloadError(body[0])
        if kind != _WELCOME:
            raise OffloadError(_E_FRAME)
        session = True
        if self.key:
            # the server must authenticate too, and prove that it knows this board's key
            session = body[1] & 1 and self.key.session(nonce, body[2:18], body[18:50])
            if not session:
                raise OffloadError(_AUTH_FAILED)
        self.session = session
        self.reconnects += 1

    def _request(self, pieces, info):
        # One request/reply on the open session: memoryview of the answer; raises OffloadError or OSError.
        # pieces: what follows tx (a tuple of buffers: the input, or a split request's tensors).
        if self.session is None:
            self._connect()
        ticks_us, ticks_diff = time.ticks_us, time.ticks_diff
        t0 = ticks_us()
        self.seq += 1
        tx, tail, send = self.tx, self.tail, self.link.send
        struct.pack_into("<I", tx, 6, self.seq)
        crc = crc32(tx)
        n = len(tx) + len(tail)
        for d in pieces:
            crc = crc32(d, crc)
            n += len(d)
        if self.key:
            tail[:_MAC] = self.session.digest(tx, pieces)
            crc = crc32(tail[:_MAC], crc)
        struct.pack_into("<I", tail, len(tail) - 4, crc)
        t1 = ticks_us()
        send(tx)
        for d in pieces:
            send(d)
        send(tail)
        t2 = ticks_us()
        kind, seq, body, info.reply_bytes, signed, t3 = self._read()
        info.request_bytes = n
        t4 = ticks_us()
        if kind != _REPLY or (seq != self.seq and seq != 0) or (self.key and not signed):
            raise OffloadError(_E_FRAME)
        status, source, info.server_queue_us, info.server_compute_us = struct.unpack_from("<BBII", body, 0)
        if status:
            raise OffloadError(status)
        o = self.model.outputs[0]
        at = 24 + 2 * body[11]          # the data, after the tensor head
        if (body[10] != dtype_code(o.dtype) or len(body) - at != o.nbytes
                or struct.unpack_from("<I", body, at - 4)[0] != o.nbytes):
            raise OffloadError(_E_FRAME)
        info.source = "reference" if source == 1 else "model"
        info.serialise_us = ticks_diff(t1, t0)
        info.send_us = ticks_diff(t2, t1)
        info.wait_us = ticks_diff(t3, t2)
        info.receive_us = ticks_diff(t4, t3)
        info.parse_us = ticks_diff(ticks_us(), t4)
        return body[at:]

    def _remote(self, pieces, info):
        # memoryview of the remote answer, or None after a failure (counted; info.error says which).
        if self.down_until is not None and time.ticks_diff(self.down_until, time.ticks_ms()) > 0:
            code = _E_DOWN
        else:
            for attempt in range(1 + self.cfg["retries"]):
                try:
                    out = self._request(pieces, info)
                    self.down_until = None
                    return out
                except OffloadError as e:
                    code = e.args[0]
                except OSError as e:
                    code = _E_TIMEOUT if e.args and e.args[0] in (11, 110, 116) else _E_LINK
                except MemoryError:
                    code = _E_MEMORY
                self.close()
                # A timeout has used up the time budget; a broken link or lost session gets a fresh connection.
                if code not in (_E_LINK, _E_FRAME, _AUTH_REQUIRED) or attempt == self.cfg["retries"]:
                    break
                self.errors[code] = self.errors.get(code, 0) + 1
                info.retries += 1
                self.retries += 1
            self.down_until = time.ticks_add(time.ticks_ms(), self.cfg["retry_after_ms"])
        self.errors[code] = self.errors.get(code, 0) + 1
        info.error = code

    def _local(self, data, info):
        t = time.ticks_us()
        m = self.model
        m.input_buffer(0)[:] = data
        m.invoke()
        info.local_us = time.ticks_diff(time.ticks_us(), t)
        return m.output_buffer(0)

    def predict(self, data):
        # (output memoryview, Info). The output is valid until the next predict().
        if len(data) != self.model.inputs[0].nbytes:
            raise ValueError("input is %d bytes, the model takes %d" % (len(data), self.model.inputs[0].nbytes))
        info = self.info
        info.reset()
        t0 = time.ticks_us()
        self.predictions += 1
        out = None
        if self.mode == "split":
            return self._split(data, info, t0), info
        if self.mode == "auto":
            out = self._local(data, info)
            o = self.model.outputs[0]
            info.confidence = top1(out, o.dtype, o.scale, o.zero_point)[1]
        if self.mode == "on" or (out is not None and info.confidence < self.cfg["threshold"]):
            remote = self._remote((data,), info)
            if remote is None:
                info.fallback = True
                self.fallbacks += 1
            else:
                out = remote
                info.offloaded = True
                self.offloaded += 1
        if out is None:
            out = self._local(data, info)
        info.total_us = time.ticks_diff(time.ticks_us(), t0)
        return out, info

    def _split(self, data, info, t0):
        # The head [0, step) here, the tail on the server; on a failure the tail here, from the same arena.
        m = self.model
        m.input_buffer(0)[:] = data
        m.invoke(None, 0, self.step)
        info.local_us = time.ticks_diff(time.ticks_us(), t0)
        out = self._remote(self.pieces, info)
        if out is None:
            info.fallback = True
            self.fallbacks += 1
            t = time.ticks_us()
            m.invoke(None, self.step)
            info.local_us += time.ticks_diff(time.ticks_us(), t)
            out = m.output_buffer(0)
        else:
            info.offloaded = True
            self.offloaded += 1
        info.total_us = time.ticks_diff(time.ticks_us(), t0)
        return out

    def pack_info(self, buf, at):
        # The last predict()'s record for an INFER reply with FLAG_INFO (docs/offload.md; 56 bytes at buf[at:]).
        i = self.info
        struct.pack_into("<BBhBBxxf11I", buf, at, _SOURCES.index(i.source), i.offloaded | i.fallback << 1 | 4,
                         i.error, min(i.retries, 255), _MODES.index(self.mode),
                         float("nan") if i.confidence is None else i.confidence, i.local_us, i.serialise_us,
                         i.send_us, i.wait_us, i.receive_us, i.parse_us, i.server_queue_us, i.server_compute_us,
                         i.total_us, i.request_bytes, i.reply_bytes)

    def counters(self):
        return {"mode": self.mode, "predictions": self.predictions, "offloaded": self.offloaded,
                "fallbacks": self.fallbacks, "retries": self.retries, "errors": dict(self.errors),
                "reconnects": self.reconnects, "nodelay": bool(self.link and self.link.nodelay)}


def _nonce():
    # The client nonce of a session (a function, so that tests can fix it).
    from os import urandom
    return urandom(16)
