"""Typed operations on a board running the tinyfw runtime; results are dataclasses.

    with Device.open("/dev/ttyUSB0") as dev:
        print(dev.info().heap_free_bytes)
        dev.put_file("models/kws.tflite", "/models/kws.tflite")

:meth:`Device.open` gets the runtime going whatever state the board is in: it answers frames already (started by
main.py), or it is imported from the board's filesystem through the raw REPL, or -- on a board with stock
MicroPython only -- its source is sent through the raw REPL and run from RAM ("bootstrap").
"""

import contextlib
import hashlib
import logging
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import protocol as P
from .errors import BoardNotResponding, DeviceError, ProtocolError, TinyhostError, UsageError
from .link import DAMAGED, POLL_S, FramesDamaged, Link
from .paths import firmware_dir
from .rawrepl import DAMAGED_MARK, RUN_MARK, RawRepl, checked_code
from .transport import SerialTransport

log = logging.getLogger(__name__)

DEFAULT_BAUD = 115200
INVOKE_BATCH_RUNS = 256            # runs per INVOKE request: bounds the device's timing buffer to 1 KB
START_CODE = ("try:\n import tinyfw.runtime as _tinyfw_runtime\nexcept ImportError as e:\n"
              " print('TINYFW-ABSENT', e)\nelse:\n _tinyfw_runtime.run()\n")
ABSENT_MARK = b"TINYFW-ABSENT"
START_TRIES = 12                   # sends of the (checked) start code before the line is called unusable
_TINYFW_IMPORT = re.compile(r"^from tinyfw\.(frame|files|session) import .*$", re.M)


@dataclass(frozen=True)
class DeviceInfo:
    firmware_version: str
    firmware_hash: str
    board: str                      # "sim" for the virtual board, else the MicroPython platform (esp32, nrf52...)
    virtual: bool
    emulates: str                   # board profile the virtual board stands in for ("" on a real board)
    micropython_version: str
    machine: str
    heap_free_bytes: int
    heap_total_bytes: int
    fs_free_bytes: int
    fs_total_bytes: int
    backends: tuple
    platform: str = ""
    protocol: int = P.PROTOCOL_VERSION
    max_payload: int = 0
    window: int = 1
    bootstrapped: bool = False      # runtime sent through the REPL (not flashed yet)
    unique_id: str = ""             # the chip's unique id (machine.unique_id()) in hex; "" where the port has none
    boot_model: str = ""            # the model the firmware loads for a runner's text commands; "" when none
    raw: dict = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class FileEntry:
    name: str
    size: int
    is_dir: bool


@dataclass(frozen=True)
class TransferResult:
    nbytes: int
    seconds: float
    frames: int = 0                 # data frames sent, retries included
    frames_retried: int = 0

    @property
    def bytes_per_s(self):
        return self.nbytes / self.seconds if self.seconds > 0 else 0.0


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple
    dtype: str
    scale: float
    zero_point: int
    nbytes: int


@dataclass(frozen=True)
class ModelInfo:
    inputs: list
    outputs: list
    arena_bytes: int
    backend: str
    load_ms: int
    weights_ram_bytes: int = 0
    ops: int = 0
    macs: int = 0
    heap_free_bytes: int = 0
    raw: dict = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class InvokeResult:
    times_us: list                  # one per timed run, in order (device ticks_us)
    warmup: int = 0
    alloc_bytes: int = 0            # heap the engine allocated during the timed runs

    @property
    def mean_us(self):
        return sum(self.times_us) / len(self.times_us) if self.times_us else 0.0


@dataclass(frozen=True)
class InferResult:
    output: bytes
    time_us: int


def _int(v, default=0):
    try:
        return int(v)
    except (TypeError, ValueError):
        return default


def _number(v):
    try:
        return int(v)
    except ValueError:
        try:
            return float(v)
        except ValueError:
            return v


def _tensor(text):
    name, shape, dtype, scale, zp, nbytes = text.split("|")
    dims = tuple(int(d) for d in shape.split("x") if d)
    return TensorInfo(name, dims, dtype, float(scale), int(zp), int(nbytes))


BOOTSTRAP_MODULES = ("frame.py", "cmd_files.py", "cmd_session.py", "runtime.py")


def device_info_from_kv(kv):
    """An INFO reply's key=value pairs -> DeviceInfo."""
    return DeviceInfo(
        firmware_version=kv.get("firmware_version", ""), firmware_hash=kv.get("firmware_hash", ""),
        board=kv.get("board", ""), virtual=kv.get("virtual") == "1", emulates=kv.get("emulates", ""),
        micropython_version=kv.get("micropython_version", ""), machine=kv.get("machine", ""),
        heap_free_bytes=_int(kv.get("heap_free_bytes")), heap_total_bytes=_int(kv.get("heap_total_bytes")),
        fs_free_bytes=_int(kv.get("fs_free_bytes")), fs_total_bytes=_int(kv.get("fs_total_bytes")),
        backends=tuple(b for b in kv.get("backends", "").split(",") if b), platform=kv.get("platform", ""),
        protocol=_int(kv.get("protocol")), max_payload=_int(kv.get("max_payload")),
        window=_int(kv.get("window"), 1), bootstrapped=kv.get("bootstrapped") == "1",
        unique_id=kv.get("unique_id", ""), boot_model=kv.get("boot_model", ""), raw=kv)


def model_info_from_kv(kv):
    """A LOAD reply's key=value pairs -> ModelInfo."""
    inputs = [_tensor(kv[k]) for k in sorted((k for k in kv if re.fullmatch(r"input\d+", k)),
                                              key=lambda k: int(k[5:]))]
    outputs = [_tensor(kv[k]) for k in sorted((k for k in kv if re.fullmatch(r"output\d+", k)),
                                               key=lambda k: int(k[6:]))]
    return ModelInfo(inputs=inputs, outputs=outputs, arena_bytes=_int(kv.get("arena_bytes")),
                     backend=kv.get("backend", ""), load_ms=_int(kv.get("load_ms")),
                     weights_ram_bytes=_int(kv.get("weights_ram_bytes")), ops=_int(kv.get("ops")),
                     macs=_int(kv.get("macs")), heap_free_bytes=_int(kv.get("heap_free_bytes")), raw=kv)


def stats_from_kv(kv):
    """A STATS reply's key=value pairs -> dict (numbers as int/float; ``last_error`` text)."""
    return {k: (v if k == "last_error" else _number(v)) for k, v in kv.items()}


BOOTSTRAP_UNIT_BYTES = 4096         # the bootstrap compiles at most about this much source at a time


def bootstrap_sources(fw_dir=None):
    """The scripts that start the runtime from RAM: BOOTSTRAP_MODULES with their tinyfw imports dropped (they
    share the raw REPL's namespace) and comment lines removed, cut into units of about BOOTSTRAP_UNIT_BYTES
    (:func:`_bootstrap_units`), then the call of run()."""
    pkg = Path(fw_dir or firmware_dir()) / "tinyfw"
    scripts = []
    for name in BOOTSTRAP_MODULES:
        text = _TINYFW_IMPORT.sub("", (pkg / name).read_text())
        scripts += _bootstrap_units("\n".join(ln for ln in text.splitlines()
                                              if ln.strip() and not ln.lstrip().startswith("#")))
    scripts.append("_b=_c=None\nrun(bootstrapped=True)")
    return scripts


def loader_source(fw_dir=None):
    """tinyfw/loader.py as sent through the raw REPL: without comment lines and blank lines, indented by one
    space a level (it is written with four)."""
    text = (Path(fw_dir or firmware_dir()) / "tinyfw" / "loader.py").read_text()
    lines = (ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#"))
    return "\n".join(" " * ((len(ln) - len(ln.lstrip(" "))) // 4) + ln.lstrip(" ") for ln in lines)


_CONST_LINE = re.compile(r"^_[A-Za-z0-9_]+ = const\([^#\n]*\)[ \t]*(?:#.*)?$", re.M)


def _bootstrap_units(source):
    """``source`` as scripts that, run one after the other in one namespace, define what it defines; each holds
    whole top-level statements (a large class's methods are attached to it in later scripts) of about
    BOOTSTRAP_UNIT_BYTES, so that the board holds one unit's source and compiles it at a time. Every unit
    starts with the module's private constants (``_X = const(...)`` is compiled away, no global: a unit
    without them would not know them)."""
    import ast
    lines = source.splitlines()
    consts = "\n".join(m.group(0) for m in _CONST_LINE.finditer(source))

    def text(node, dedent=0):
        first = node.lineno - 1 - len(getattr(node, "decorator_list", []))
        return "\n".join(ln[dedent:] for ln in lines[first:node.end_lineno])

    pieces = []                      # top-level source pieces in order
    for node in ast.parse(source).body:
        whole = text(node)
        if _CONST_LINE.fullmatch(whole):
            continue                 # in every unit's prefix (a const assigned twice is an error)
        if not isinstance(node, ast.ClassDef) or len(whole) <= BOOTSTRAP_UNIT_BYTES:
            pieces.append(whole)
            continue
        head_end = node.body[0].lineno - 1
        head = "\n".join(lines[node.lineno - 1:head_end])
        body, later = [], []
        for item in node.body:
            item_text = text(item)
            if isinstance(item, ast.FunctionDef) and len(head) + sum(map(len, body)) + len(item_text) > \
                    BOOTSTRAP_UNIT_BYTES and body:
                method = text(item, dedent=item.col_offset).replace(f"def {item.name}(", "def _bootstrap_method(", 1)
                later.append(f"{method}\n{node.name}.{item.name} = _bootstrap_method\ndel _bootstrap_method")
            else:
                body.append(item_text)
        pieces.append(head + "\n" + "\n".join(body))
        pieces += later
    units, unit = [], []
    for piece in pieces:
        if unit and sum(map(len, unit)) + len(piece) > BOOTSTRAP_UNIT_BYTES:
            units.append(unit)
            unit = []
        unit.append(piece)
    if unit:
        units.append(unit)
    return [consts + "\n" + "\n".join(u) for u in units]


# INFER's retry budget: its request is as large as the model's input (490 bytes for KWS), so at 1e-3 faults per
# byte each way most sends are damaged and NAKed at once; those retries are cheap and many are allowed. Silence
# (a try that times out) is given up on after INFER_TIMEOUTS tries.
INFER_TIMEOUTS = 5
INFER_DAMAGE_TRIES = 32
# INFO's and LIST's replies are hundreds of bytes: at 2e-3 damage per byte most arrive damaged, and each is asked
# for again at once (a damaged reply is answered by a copy); silence still ends them after MAX_TRIES.
REPLY_DAMAGE_TRIES = 32
# Sending a model's input in pieces: SET_INPUT frames, then INVOKE and GET_OUTPUT. On a line that damages some
# bytes, a frame arrives whole with probability exp(-rate * its bytes), so a damaged piece is sent again, not the
# whole input. The host chooses between one INFER and pieces by the expected line time of each (ROUND_TRIP_BYTES:
# what a request's turnaround costs beyond its bytes, in byte times) at the damage rate it has seen.
ROUND_TRIP_BYTES = 16
DAMAGE_MEMORY = 0.9                # weight of the past in the damage-rate estimate, per request
WHOLE_DAMAGE_TRIES = 8             # damaged sends of one INFER frame before its input goes in pieces
MIN_PIECES_INPUT = 64              # inputs smaller than this always go in one INFER
_PIECE_BYTES = 5 + P.OVERHEAD_BYTES + 2     # a SET_INPUT frame's bytes beside its data (header, pad)
_INVOKE_BYTES = 8 + 24 + 2 * P.OVERHEAD_BYTES + 2
_GET_OUTPUT_BYTES = 7 + 4 + 2 * P.OVERHEAD_BYTES + 2


def input_pieces(input_bytes, reply_bytes, damage_per_byte):
    """How many pieces to send an INFER's input in at ``damage_per_byte`` (1: one INFER frame), with the
    expected line time of each choice in byte times: exp(rate * frame bytes) sends per frame."""
    def cost(frame_bytes):
        return math.exp(damage_per_byte * frame_bytes) * (frame_bytes + ROUND_TRIP_BYTES)

    best = (cost(input_bytes + P.OVERHEAD_BYTES + 2 + reply_bytes), 1)
    for k in range(2, max(2, input_bytes // 32) + 1):
        piece = -(-input_bytes // k)
        total = k * cost(piece + _PIECE_BYTES + P.OVERHEAD_BYTES) + cost(_INVOKE_BYTES) + cost(
            _GET_OUTPUT_BYTES + reply_bytes - P.OVERHEAD_BYTES)
        best = min(best, (total, k))
    return best[1]


class _Damaged(Exception):
    """Checked code sent through the raw REPL arrived altered."""


class Device:
    """A board running the tinyfw runtime. Use :meth:`open`; a context manager."""

    def __init__(self, transport, timeout_s=5.0):
        self.t = transport
        self.timeout_s = timeout_s
        self.link = Link(transport, timeout_s)
        self.repl = RawRepl(transport, timeout_s)
        self.hello = {}
        self.running = False
        self.started_via = None          # "running" (answered at once), "import", "bootstrap"
        self.slowest_infer_s = None      # the longest INFER the board has reported (its own time)
        self.infer_reply_bytes = 1024    # an INFER reply's size: the loaded model's output 0, once LOAD said
        self.infer_sends = 0.0           # INFER's sends and those that failed, weighed by DAMAGE_MEMORY ...
        self.infer_failures = 0.0
        self.infer_bytes = 0.0           # ... and the bytes each send put on the line, both ways

    @classmethod
    def open(cls, port, baud=None, timeout_s=5.0, start=True):
        """Open ``port`` exclusively and get the runtime answering (unless ``start=False``)."""
        transport = SerialTransport.open(port, baud or DEFAULT_BAUD)
        dev = cls(transport, timeout_s)
        if start:
            try:
                dev.start()
            except BaseException:
                transport.close()
                raise
        return dev

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- session --------------------------------------------------------------------------------------------
    def start(self):
        """Make sure the runtime answers: probe it, else import it through the raw REPL, else bootstrap it."""
        if self._probe():
            self.started_via = "running"
            return
        self.repl.enter()
        self._start_from_repl()

    def _start_from_repl(self):
        if self._import_runtime():
            self.started_via = "import"
        else:
            log.info("tinyfw is not on the board's filesystem: sending the runtime through the raw REPL")
            self._bootstrap()
            self.started_via = "bootstrap"
        self._hello()

    def _bootstrap(self):
        """Start the runtime from RAM on a board with stock MicroPython only: the loader (tinyfw/loader.py)
        through the raw REPL, checked in pieces; the runtime's source to it in frames, unit by unit, each run once
        its sha256 matches; then run()."""
        *units, start = bootstrap_sources()
        self.repl.exec_checked(loader_source(), tries=START_TRIES)
        self._run_checked(f"load(globals(),{max(len(u.encode()) for u in units)})", allow_absent=False)
        self._hello(loader=True)
        for i, unit in enumerate(units):
            self.put_file(unit.encode(), f"bootstrap/{i + 1}-of-{len(units)}")
        self.running = False
        self.link.take_text()
        try:
            self.link.request(P.T.BYE, tries=3)
        except TinyhostError as e:            # its OK lost: the loader has returned, or the start code finds out
            log.info("ending the bootstrap loader: %s", e)
        deadline = time.monotonic() + 2.0          # the raw REPL's end marker after load() returned
        while self.link.text_tail.count(b"\x04") < 2 and time.monotonic() < deadline:
            self.link.next_frame(min(deadline, time.monotonic() + 0.05))
        self._run_checked(start, allow_absent=False)

    def _probe(self):
        """True when a runtime already answers frames (e.g. started by main.py)."""
        self.t.drain(quiet_s=0.02, limit_s=0.5)
        try:
            self._hello(tries=1, timeout_s=0.3 + self.t.wire_time_s(64))
        except TinyhostError:
            return False
        return True

    def _hello(self, tries=4, timeout_s=None, loader=False):
        """HELLO: the runtime (``loader`` True: the bootstrap loader; None: either) answers; the link takes its
        frame size and window."""
        f = self.link.request(P.T.HELLO, flags=P.FLAG_SYNC, tries=tries, timeout_s=timeout_s, expect_bytes=160)
        kv = P.parse_kv(f.payload)
        if loader is not None and ("loader" in kv) != loader:
            raise ProtocolError("the bootstrap loader answers, not the runtime" if not loader else
                                "the runtime answers, not the bootstrap loader",
                                hint="run the command again: tinyhost interrupts it and starts the runtime")
        if _int(kv.get("protocol")) != P.PROTOCOL_VERSION:
            raise ProtocolError(f"the board speaks tinyfw protocol {kv.get('protocol')}, this host "
                                f"{P.PROTOCOL_VERSION}", hint="run `tinyhost flash` to update the firmware")
        self.hello = kv
        self.link.max_payload = min(_int(kv.get("max_payload"), 1024), P.PAYLOAD_LIMIT)
        self.link.window = max(1, _int(kv.get("window"), 1))
        self.link.take_text()
        self.running = True

    def _import_runtime(self):
        """Start tinyfw from the board's filesystem through the raw REPL, the code checked on arrival (a damaged
        line must not make the board look empty). True when it runs, False when tinyfw is not there."""
        return self._run_checked(START_CODE, allow_absent=True)

    def _run_checked(self, code, allow_absent):
        """Send ``code`` that starts the runtime through the raw REPL, checked on arrival, up to START_TRIES
        times; True once the runtime answers, False when ``allow_absent`` and tinyfw is not on the board."""
        for attempt in range(START_TRIES):
            if attempt:
                log.info("the start code arrived damaged: sending it again (try %d)", attempt + 1)
                self.repl.enter()
            self.link.take_text()
            try:
                self.repl.exec_start(checked_code(code))
            except (DeviceError, BoardNotResponding) as e:    # the raw-paste exchange was damaged on the line
                log.info("%s", e)
                continue
            try:
                return self._await_ready(allow_absent=allow_absent, checked=True)
            except _Damaged:
                continue
        raise BoardNotResponding(f"the start code did not reach the board on {self.t.port} intact in "
                                 f"{START_TRIES} tries", hint="check the cable or lower the baud rate (--baud)")

    def _ready_lost(self):
        """The runtime started but its READY frame did not come through (damaged on the line): ask it with HELLO."""
        try:
            self._hello(tries=3, loader=None)
        except TinyhostError:
            return False
        return True

    def _await_ready(self, allow_absent, checked=False):
        deadline = time.monotonic() + max(self.timeout_s, 10.0)
        bad = self.link.stats.frames_bad
        damaged = False
        while True:
            # a frame damaged on the line: one failing its checks, stopping halfway, or without its magic (a wait
            # shorter than the link's STALL_S would never see a frame stop halfway)
            f = self.link.next_frame(min(deadline, time.monotonic() + POLL_S), report_damage=True)
            if f is DAMAGED:
                damaged, f = True, None
            text = bytes(self.link.text_tail)
            if f is not None and f.ftype == P.T.READY:
                return True
            if checked and RUN_MARK in text and (damaged or self.link.stats.frames_bad > bad or (
                    f is None and time.monotonic() >= deadline)):
                if self._ready_lost():
                    return True
                damaged, bad = False, self.link.stats.frames_bad
            # the import failed: its output has ended (\x04; the prompt after it may be lost on the line)
            if allow_absent and ABSENT_MARK in text and b"\x04" in text.split(ABSENT_MARK, 1)[1]:
                self.link.take_text()
                return False
            # the code did not run as sent, or its wrapper was hit (its output's end may be damaged too): send it
            # again
            if checked and (DAMAGED_MARK in text or (RUN_MARK not in text and (
                    text.rstrip().endswith(b"\x04>") or (b"Error" in text and text.rstrip().endswith(b">")) or (
                    text and f is None and time.monotonic() >= deadline)))):
                raise _Damaged()
            if b"Traceback" in text and text.rstrip().endswith(b"\x04>"):
                detail = text.replace(b"\x04", b" ").decode(errors="replace").strip()
                raise DeviceError(f"the tinyfw runtime failed to start: {detail[-500:]}",
                                  hint="run `tinyhost flash` to reinstall the firmware")
            if f is None and time.monotonic() >= deadline:
                raise BoardNotResponding(f"the tinyfw runtime did not start on {self.t.port} "
                                         f"(board printed {text[-80:]!r})")

    def stop(self):
        """End the runtime (BYE): the board is back in the REPL it was started from."""
        if not self.running:
            return
        self.running = False
        self.link.request(P.T.BYE, tries=3)
        if self.started_via in ("import", "bootstrap"):
            self.t.read_until(b"\x04>", 2.0)

    def close(self, leave_running=False):
        """Stop the runtime (unless ``leave_running``), return the board to its friendly REPL, close the port."""
        try:
            if self.running and not leave_running:
                self.stop()
                if self.started_via in ("import", "bootstrap"):
                    self.repl.leave()
        except TinyhostError as e:
            log.info("closing %s: %s", self.t.port, e)
        finally:
            self.t.close()

    def soft_reset(self):
        """Soft-reset the board (MicroPython restarts, flashed files are loaded afresh) and start the runtime."""
        self._to_raw_repl()
        self.repl.soft_reset()
        self._start_from_repl()

    def run_script(self, code, timeout_s=None, fresh=False):
        """Run MicroPython ``code`` in the board's raw REPL, the runtime stopped (``fresh``: after a soft reset,
        nothing imported); returns what it printed (bytes) and starts the runtime again. DeviceError with the
        board's traceback when the code fails."""
        with self.raw_repl(fresh=fresh) as repl:
            return repl.exec(code, timeout_s=timeout_s or max(self.timeout_s, 10.0))

    @contextlib.contextmanager
    def raw_repl(self, fresh=False):
        """The board's :class:`RawRepl` for several ``exec`` calls in one session, the runtime stopped
        (``fresh``: after a soft reset, nothing imported); the runtime is started again afterwards."""
        self._to_raw_repl()
        try:
            if fresh:
                self.repl.soft_reset()
            yield self.repl
        finally:
            self._start_from_repl()

    def _to_raw_repl(self):
        if self.running:
            try:
                self.stop()
            except TinyhostError as e:
                log.info("stopping the runtime: %s", e)
                self.running = False
        self.repl.enter()

    # -- information ----------------------------------------------------------------------------------------
    def info(self):
        return device_info_from_kv(P.parse_kv(self.link.request(P.T.INFO, expect_bytes=600,
                                                                damage_tries=REPLY_DAMAGE_TRIES).payload))

    def stats(self):
        """Device counters (frames_rx, frames_bad, frames_retried, heap_free_bytes, heap_peak_bytes, last_error,
        ...) plus this host's link counters as ``host_*``."""
        out = stats_from_kv(P.parse_kv(self.link.request(P.T.STATS, expect_bytes=600).payload))
        for k, v in vars(self.link.stats).items():
            out[f"host_{k}"] = v
        return out

    # -- files ----------------------------------------------------------------------------------------------
    def list_files(self, path="/"):
        entries = []
        start = 0
        while True:
            more, page = P.parse_list(self.link.request(P.T.LIST, P.pack_list(path, start),
                                                        expect_bytes=self.link.max_payload,
                                                        damage_tries=REPLY_DAMAGE_TRIES).payload)
            entries += [FileEntry(n, s, d) for n, s, d in page]
            start += len(page)
            if not more or not page:
                return entries

    def file_hash(self, path):
        """sha256 hex of the file on the board, or None when there is none."""
        try:
            f = self.link.request(P.T.HASH, str(path).encode(), timeout_s=max(self.timeout_s, 10.0))
        except DeviceError as e:
            if getattr(e, "code", None) == P.ErrorCode.NOT_FOUND:
                return None
            raise
        return P.parse_hash(f.payload)[0]

    def put_file(self, data_or_path, remote_path, progress=None):
        """Write a file atomically: to ``remote_path + '.part'``, sha256 checked on the board, then renamed.

        ``progress(sent_bytes, total_bytes)`` is called as data is acknowledged.
        """
        if isinstance(data_or_path, (str, Path)):
            try:
                data = Path(data_or_path).read_bytes()
            except OSError as e:
                raise UsageError(f"cannot read {data_or_path}: {e.strerror}") from None
        else:
            data = bytes(data_or_path)
        digest = hashlib.sha256(data).digest()
        retried_before = self.link.stats.frames_retried
        t0 = time.monotonic()
        self.link.request(P.T.PUT_BEGIN, P.pack_put_begin(len(data), digest, remote_path),
                          timeout_s=max(self.timeout_s, 5.0), what=f"put {remote_path}")
        sent_before = self.link.stats.frames_sent
        try:
            self.link.send_data(P.T.PUT_DATA, data, P.pack_put_data, what=f"put {remote_path}",
                                progress=(lambda done: progress(done, len(data))) if progress else None)
            self.link.request(P.T.PUT_END, timeout_s=max(self.timeout_s, 2.0 + len(data) / 50_000),
                              what=f"put {remote_path}")
        except BaseException:
            self._abort_put()
            raise
        return TransferResult(len(data), time.monotonic() - t0, self.link.stats.frames_sent - sent_before - 1,
                              self.link.stats.frames_retried - retried_before)

    def _abort_put(self):
        try:
            self.link.request(P.T.PUT_ABORT, tries=2)
        except (TinyhostError, KeyboardInterrupt):
            pass

    def get_file(self, remote_path):
        """The file's bytes. Reads in frame-sized pieces, smaller ones while the line damages large replies."""
        chunk = min(self.link.max_payload - 4, 0xFFFF)
        out = bytearray()
        while True:
            try:
                f = self.link.request(P.T.GET, P.pack_get(remote_path, len(out), chunk),
                                      tries=4 if chunk > 128 else 8,
                                      expect_bytes=chunk + P.OVERHEAD_BYTES + 4, what=f"get {remote_path}")
            except ProtocolError:
                if chunk <= 128:
                    raise
                chunk //= 2
                continue
            size, data = P.parse_get(f.payload)
            out += data
            if len(out) >= size or not data:
                if len(out) != size:
                    raise ProtocolError(f"get {remote_path}: got {len(out)} of {size} bytes")
                return bytes(out)

    def remove(self, path):
        self.link.request(P.T.REMOVE, str(path).encode(), what=f"remove {path}")

    def rename(self, src, dst):
        self.link.request(P.T.RENAME, P.pack_rename(src, dst), what=f"rename {src}")

    def mkdir(self, path):
        """Make ``path`` and its parents; an existing directory is fine."""
        self.link.request(P.T.MKDIR, str(path).encode(), what=f"mkdir {path}")

    # -- models ---------------------------------------------------------------------------------------------
    def load_model(self, remote_path, backend="auto", timeout_s=120.0, keep_free_bytes=0):
        """LOAD; ``keep_free_bytes``: heap the model is to leave free for what comes after it (a stream)."""
        self.slowest_infer_s = None              # another model: its time is not known yet
        f = self.link.request(P.T.LOAD, P.pack_load(remote_path, backend, keep_free_bytes), timeout_s=timeout_s,
                              tries=2,
                              expect_bytes=1024, what=f"load {remote_path}", damage_tries=8)
        info = model_info_from_kv(P.parse_kv(f.payload))
        if info.outputs:
            self.infer_reply_bytes = P.OVERHEAD_BYTES + 4 + info.outputs[0].nbytes
        return info

    def set_input(self, data, index=0):
        data = bytes(data)
        chunk = self.link.max_payload - 5
        for off in range(0, max(len(data), 1), chunk):
            self.link.request(P.T.SET_INPUT, P.pack_set_input(index, off, data[off:off + chunk]),
                              what="set input")

    def invoke(self, n=1, warmup=0, on_timing=None, timeout_s=120.0):
        """Run the model ``n`` times after ``warmup`` untimed runs; ``on_timing(i, us)`` is called as each
        timing arrives from the board."""
        if n < 0 or warmup < 0:
            raise UsageError("invoke: runs and warmup must be >= 0")
        times = []
        alloc = 0
        done = 0
        first = True
        while done < n or first:
            runs = min(INVOKE_BATCH_RUNS, n - done)
            got = {}

            def on_event(i, us, base=done):
                got[i] = us
                if on_timing:
                    on_timing(base + i, us)

            f = self.link.request(P.T.INVOKE, P.pack_invoke(runs, warmup if first else 0), flags=P.FLAG_STREAM,
                                  on_event=on_event, timeout_s=timeout_s, tries=3, what="invoke")
            summary = P.parse_invoke(f.payload)
            missing = [i for i in range(runs) if i not in got]
            if missing:
                log.info("invoke: %d timings lost on the line, asking for them", len(missing))
                lo, hi = min(missing), max(missing) + 1
                for off in range(lo, hi, 256):
                    rep = self.link.request(P.T.TIMES, P.pack_times(off, min(256, hi - off)), expect_bytes=1100)
                    for k, us in enumerate(P.parse_times(rep.payload)):
                        got.setdefault(off + k, us)
            times += [got[i] for i in range(runs)]
            alloc += summary.alloc_bytes
            done += runs
            first = False
        return InvokeResult(times_us=times, warmup=warmup, alloc_bytes=alloc)

    def get_output(self, index=0):
        chunk = min(self.link.max_payload - 4, 0xFFFF)
        out = bytearray()
        while True:
            f = self.link.request(P.T.GET_OUTPUT, P.pack_get_output(index, len(out), chunk),
                                  expect_bytes=self.link.max_payload, what="get output")
            total, data = P.parse_get_output(f.payload)
            out += data
            if len(out) >= total or not data:
                return bytes(out)

    def infer_wait_s(self, nbytes, timeout_s=120.0, info=False):
        """``(first, longest)``: how long INFER's first try waits for its reply, and the most a later try waits
        (each try that times out doubles the wait, :meth:`Link.request`).

        Until the board has answered one INFER since the model was loaded: 10 s, doubling up to ``timeout_s``.
        Then twice the slowest inference it reported plus the wire time of request and expected reply (the
        model's output 0, known from LOAD) and a margin, doubling up to four times the slowest inference (at least
        2 s). So a request or reply lost on a noisy line costs about half a second for KWS, not ``timeout_s``.
        """
        reply_bytes = self.infer_reply_bytes + (P.INFO_BYTES + 1 if info else 0)
        wire = self.link.reply_timeout_s(nbytes + P.OVERHEAD_BYTES, reply_bytes)
        if self.slowest_infer_s is None:
            return min(timeout_s, 10.0), timeout_s
        longest = min(timeout_s, max(2.0, 4 * self.slowest_infer_s) + wire)
        return min(longest, 2 * self.slowest_infer_s + wire), longest

    def _took(self, us):
        s = us / 1e6
        if self.slowest_infer_s is None or s > self.slowest_infer_s:
            self.slowest_infer_s = s

    def infer(self, data, timeout_s=120.0):
        """Set input 0, run once, return output 0 -- in one round trip when both fit in a frame. Each try waits
        :meth:`infer_wait_s`; a board that was reset or whose runtime ended says so on the line and is recognised
        at once (DeviceError)."""
        data = bytes(data)
        if len(data) > self.link.max_payload:
            self.set_input(data)
            r = self.invoke(1, timeout_s=timeout_s)
            return InferResult(self.get_output(0), r.times_us[0])
        first_s, longest_s = self.infer_wait_s(len(data), timeout_s)
        whole_bytes = len(data) + P.OVERHEAD_BYTES + 2 + self.infer_reply_bytes
        splittable = len(data) >= MIN_PIECES_INPUT
        if splittable:
            pieces = input_pieces(len(data), self.infer_reply_bytes, self.damage_per_byte())
            if pieces > 1:
                return self._infer_in_pieces(data, pieces, first_s, longest_s)
        try:
            f = self.link.request(P.T.INFER, data, timeout_s=first_s, max_timeout_s=longest_s, what="infer",
                                  tries=INFER_TIMEOUTS,
                                  damage_tries=WHOLE_DAMAGE_TRIES if splittable else INFER_DAMAGE_TRIES)
        except FramesDamaged:
            if not splittable:
                raise
            self._count_sends(self.link.last_sends + 1, whole_bytes)      # as if the next send got through
            pieces = max(2, input_pieces(len(data), self.infer_reply_bytes, self.damage_per_byte()))
            log.info("infer: %d damaged sends of the whole input: sending it in %d pieces", self.link.last_sends,
                     pieces)
            return self._infer_in_pieces(data, pieces, first_s, longest_s)
        except DeviceError as e:
            if getattr(e, "code", None) != P.ErrorCode.TOO_BIG:
                raise
            self.set_input(data)
            r = self.invoke(1, timeout_s=timeout_s)
            return InferResult(self.get_output(0), r.times_us[0])
        self._count_sends(self.link.last_sends, whole_bytes)
        us, out = P.parse_infer(f.payload)
        self._took(us)
        return InferResult(out, us)

    def _infer_in_pieces(self, data, pieces, first_s, longest_s):
        """INFER as SET_INPUT pieces, one INVOKE and GET_OUTPUT: on a damaging line each piece is resent alone."""
        piece = -(-len(data) // pieces)
        for off in range(0, len(data), piece):
            chunk = data[off:off + piece]
            self.link.request(P.T.SET_INPUT, P.pack_set_input(0, off, chunk), what="set input",
                              tries=INFER_TIMEOUTS, damage_tries=INFER_DAMAGE_TRIES)
            self._count_sends(self.link.last_sends, len(chunk) + _PIECE_BYTES + P.OVERHEAD_BYTES)
        f = self.link.request(P.T.INVOKE, P.pack_invoke(1, 0), timeout_s=first_s, max_timeout_s=longest_s,
                              what="invoke", tries=INFER_TIMEOUTS, damage_tries=INFER_DAMAGE_TRIES)
        self._count_sends(self.link.last_sends, _INVOKE_BYTES)
        us = P.parse_invoke(f.payload).total_us
        self._took(us)
        f = self.link.request(P.T.GET_OUTPUT, P.pack_get_output(0, 0, self.infer_reply_bytes),
                              what="get output", tries=INFER_TIMEOUTS, damage_tries=INFER_DAMAGE_TRIES)
        self._count_sends(self.link.last_sends, _GET_OUTPUT_BYTES + self.infer_reply_bytes)
        total, out = P.parse_get_output(f.payload)
        if len(out) != total:
            raise ProtocolError(f"get output: {len(out)} of {total} bytes in one reply")
        return InferResult(out, us)

    def _count_sends(self, sends, frame_bytes):
        self.infer_sends = self.infer_sends * DAMAGE_MEMORY + sends
        self.infer_failures = self.infer_failures * DAMAGE_MEMORY + sends - 1
        self.infer_bytes = self.infer_bytes * DAMAGE_MEMORY + sends * frame_bytes

    def damage_per_byte(self):
        """The line's damage rate per byte as INFER's sends have seen it (0 until one failed): from the share of
        sends that failed and the bytes a send puts on the line, p = 1 - exp(-rate * bytes)."""
        if self.infer_failures <= 0 or self.infer_sends <= 0:
            return 0.0
        failed = min(0.95, self.infer_failures / self.infer_sends)
        return -math.log1p(-failed) / (self.infer_bytes / self.infer_sends)

    def infer_with_info(self, data, timeout_s=120.0):
        """INFER with FLAG_INFO: the runtime answers locally or through the board's offload Predictor, as its
        /offload.json says, and adds the info block. Returns ``(time_us, info block fields, output 0)``
        (:func:`tinyhost.protocol.parse_infer_info`); the input must fit one frame."""
        data = bytes(data)
        if len(data) > self.link.max_payload:
            raise UsageError(f"the input ({len(data)} bytes) does not fit one frame of this board "
                             f"({self.link.max_payload} bytes); offloaded runs need INFER")
        first_s, longest_s = self.infer_wait_s(len(data), timeout_s, info=True)
        f = self.link.request(P.T.INFER, data, flags=P.FLAG_INFO, timeout_s=first_s, max_timeout_s=longest_s,
                              what="infer", tries=INFER_TIMEOUTS, damage_tries=INFER_DAMAGE_TRIES)
        try:
            result = P.parse_infer_info(f.payload)
            self._took(result[0])
            return result
        except ValueError:
            raise ProtocolError("INFER reply carries no offload info: the board's tinyfw is older than this "
                                "tinyhost", hint="run `tinyhost flash` to update the firmware") from None

    def unload_model(self):
        self.link.request(P.T.UNLOAD)
