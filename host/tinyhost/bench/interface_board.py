"""A stand-in for MLPerf Tiny's interface board, so that the official runner's streaming wakeword test can drive
tinyfw with the audio played over the DUT's own serial link (docs/streaming.md).

In the benchmark's setup (mlcommons/tiny ``benchmark/runner``: ``io_manager_enhanced.py``, ``script.py``'s stream
step) a second board, the interface board, plays a WAV from its SD card into the DUT (I2S) and timestamps two of the
DUT's GPIO pins: one pulsed per detection, one high while the DUT works on a frame (the duty cycle). The runner
talks to it over its own serial port with ``%``-terminated commands answered by lines ending in ``m-ready``:
``setbaud``, ``record_detections``, ``play FILE``, ``print_detections``, ``print_dutycycle``.

Here two pseudo-terminals take the place of the two USB ports:

* :class:`DutLineTap`, the DUT's port: what the runner writes goes to the board (a virtual board or a real one) and
  the board's text comes back, unchanged; the tap holds the board's link, so between the runner's commands it can
  put the audio on the same line, in tinyfw's AUDIO frames.
* :class:`InterfaceBoard`, the interface board's port: it answers the runner's interface commands; ``play`` streams
  the WAV (from a folder standing in for the SD card) to the DUT in AUDIO frames at the audio's rate, and the
  detections and busy intervals the AUDIO replies carry stand in for the two pins: ``print_detections`` and
  ``print_dutycycle`` report them in the board's clock (board time on a virtual board, an estimate) since the
  stream started, where the interface board reports its own timer's.

The runner's code and its scoring are the official ones; this module is the part that is not.
"""

import contextlib
import logging
import os
import select
import threading
import time
import tty
from dataclasses import dataclass, field
from pathlib import Path

from .. import protocol as P
from .. import stream as st
from ..errors import DeviceError, TinyhostError

log = logging.getLogger(__name__)

NAME = "tinyhost interface-board stand-in"
END = "m-ready"
PROGRESS_EVERY_S = 5.0          # a `play` reply line this often: the runner waits length + 10 s for each line
POLL_S = 0.05


def _pty():
    """(master fd, slave fd, slave path) of a new raw pseudo-terminal; the slave stays open here, so the other side
    may open and close it freely."""
    master, slave = os.openpty()
    tty.setraw(slave)
    return master, slave, os.ttyname(slave)


def _write_all(fd, data, timeout_s=5.0):
    """Write ``data`` to a pty's master; what its reader leaves unread for ``timeout_s`` is dropped (and logged)
    rather than holding the thread that writes it."""
    deadline = time.monotonic() + timeout_s
    while data:
        _, ready, _ = select.select([], [fd], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            log.warning("nobody reads the pty: %d bytes dropped", len(data))
            return
        data = data[os.write(fd, data[:256]):]         # no more than a pty takes at once: the write does not block


class DutLineTap:
    """An open :class:`~tinyhost.client.Device`'s link behind a pty at :attr:`port`: bytes written there go to the
    board; the board's text comes back there; frames go only to :meth:`exchange`'s caller."""

    def __init__(self, dev):
        self.dev = dev
        self._master, self._slave, self.port = _pty()
        self._lock = threading.Lock()
        self._running = True
        self.dev.link.take_text()
        self.dev.link.on_text = lambda text: _write_all(self._master, text)
        self._threads = [threading.Thread(target=self._to_board, daemon=True),
                         threading.Thread(target=self._from_board, daemon=True)]
        for t in self._threads:
            t.start()

    def _to_board(self):
        while self._running:
            ready, _, _ = select.select([self._master], [], [], POLL_S)
            if not ready:
                continue
            try:
                data = os.read(self._master, 4096)
            except OSError:
                continue
            with self._lock:              # never inside an AUDIO frame on the line
                self.dev.t.write(data)

    def _from_board(self):
        while self._running:
            with self._lock:
                try:
                    frame = self.dev.link.next_frame(time.monotonic() + POLL_S)
                except TinyhostError as e:
                    log.warning("DUT link: %s", e)
                    frame = None
            if frame is not None:
                log.info("DUT link: a frame nobody asked for (type 0x%02x), dropped", frame.ftype)
            time.sleep(0.001)            # let the other side take the lock

    @contextlib.contextmanager
    def exchange(self):
        """The board's link, for requests between the runner's commands: ``with tap.exchange() as link:``."""
        with self._lock:
            yield self.dev.link

    def close(self):
        self._running = False
        for t in self._threads:
            t.join(timeout=2.0)
        self.dev.link.on_text = None
        os.close(self._master)
        os.close(self._slave)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


@dataclass
class Playback:
    """One ``play``: what was streamed and what the DUT reported back in its AUDIO replies."""
    wav_file: str
    audio_s: float = 0.0
    frames: int = 0
    hops: int = 0
    detections: list = field(default_factory=list)   # (board_ms, audio_ms, class, score) as the AUDIO replies carry
    busy_s: list = field(default_factory=list)       # (start_s, end_s) of each hop's work, board clock
    wall_s: float = 0.0
    error: str = ""


class InterfaceBoard:
    """Answers the runner's interface-board commands on the pty at :attr:`port`; ``play`` streams to ``tap``'s
    board. ``sd_dir``: the folder standing in for the interface board's SD card."""

    def __init__(self, tap, sd_dir, on_playback=None):
        self.tap = tap
        self.sd_dir = Path(sd_dir)
        self.on_playback = on_playback
        self.playbacks = []
        self.baud = 115200
        self._detections = []           # board ms since the stream started
        self._busy = []
        self._master, self._slave, self.port = _pty()
        self._running = True
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def close(self):
        self._running = False
        self._thread.join(timeout=2.0)
        os.close(self._master)
        os.close(self._slave)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- the command line ---------------------------------------------------------------------------------------
    def _serve(self):
        pending = b""
        while self._running:
            ready, _, _ = select.select([self._master], [], [], POLL_S)
            if not ready:
                continue
            try:
                pending += os.read(self._master, 4096)
            except OSError:
                continue
            while b"%" in pending:
                command, pending = pending.split(b"%", 1)
                command = command.decode(errors="replace").strip()
                if command:
                    self._say_all(self.handle(command))

    def _say(self, line):
        _write_all(self._master, (line + "\r\n").encode("ascii", errors="replace"))   # the runner reads ASCII

    def _say_all(self, lines):
        for line in lines:
            self._say(line)

    def handle(self, command):
        """The reply lines to one command, ending with m-ready (``play`` says its first lines as it goes)."""
        cmd, _, args = command.partition(" ")
        args = args.strip()
        if cmd == "name":
            lines = [NAME]
        elif cmd == "ls":
            lines = sorted(p.name for p in self.sd_dir.iterdir() if p.is_file())
        elif cmd == "setbaud":
            if not args.isdigit():
                lines = ["e-[setbaud takes a number: setbaud 115200]"]
            else:
                self.baud = int(args)      # a pty has no line rate: remembered and reported, nothing else
                lines = [f"set baud to: {self.baud}"]
        elif cmd == "checkbaud":
            lines = [f"baud is: {self.baud}"]
        elif cmd == "record_detections":
            self._detections, self._busy = [], []
            lines = ["Now recording detections"]
        elif cmd == "play":
            lines = self._play(args)
        elif cmd == "print_detections":
            # 0 marks the start (the stream's, which is the audio's in the board's clock), as tinyfw's own
            # print_detections; then each detection, in ms
            lines = ["Detection Timestamps (ms)", "0,"] + [f"{ms}," for ms in self._detections]
        elif cmd == "print_dutycycle":
            lines = (["Duty cycle start times (s)"] + _tick_lines(s for s, _ in self._busy)
                     + ["Duty cycle stop times (s)"] + _tick_lines(e for _, e in self._busy))
        elif cmd == "dut":
            lines = ["e-[this stand-in does not pass DUT commands through: connect the DUT's own port]"]
        else:
            lines = [f"e-[unknown command {cmd[:32]!r}: name, ls, setbaud, checkbaud, record_detections, play, "
                     "print_detections, print_dutycycle]"]
        return lines + [END]

    # -- play ---------------------------------------------------------------------------------------------------
    def _play(self, name):
        from ..features.mfcc import read_wav

        path = self.sd_dir / name
        if not name or not path.is_file():
            return [f"e-[no file {name!r} in {self.sd_dir}: play one of `ls`]"]
        if path.stat().st_size == 0:
            return [f"e-[{path} is empty]"]
        self._say(f"Playing {name}")
        record = Playback(name)
        t0 = time.monotonic()
        try:
            pcm = st.to_int16(read_wav(path, st.RATE_HZ))
            self._stream(pcm, record, t0)
        except (TinyhostError, ValueError, OSError) as e:
            record.error = str(e)
        record.wall_s = time.monotonic() - t0
        self.playbacks.append(record)
        self._detections += [board_ms for board_ms, _, _, _ in record.detections]
        self._busy += record.busy_s
        if self.on_playback:
            self.on_playback(record)
        if record.error:
            return [f"e-[play {name}: {record.error}]"]
        return []

    def _stream(self, pcm, record, t0):
        """``pcm`` to the DUT in AUDIO frames, each once its samples have played (the audio's rate); the replies'
        detections and busy intervals into ``record``."""
        record.audio_s = len(pcm) / 2 / st.RATE_HZ
        next_progress = t0 + PROGRESS_EVERY_S

        def take(payload):
            hops, events = P.parse_audio(payload)
            record.hops = hops
            record.detections += events
            record.busy_s += P.parse_audio_busy(payload)

        with self.tap.exchange() as link:
            frame = st.audio_frame_bytes(link.max_payload)
            for off in range(0, len(pcm), frame):
                # at the audio's rate: a frame's samples go once they have been played
                played_s = min(len(pcm), off + frame) / 2 / st.RATE_HZ
                time.sleep(max(0.0, t0 + played_s - time.monotonic()))
                try:
                    take(link.request(P.T.AUDIO, pcm[off:off + frame], what="audio", timeout_s=30.0).payload)
                except DeviceError as e:
                    if getattr(e, "code", None) != P.ErrorCode.STATE:
                        raise
                    raise DeviceError(f"the DUT took no audio ({e.device_message}): send it `start` first") from None
                record.frames += 1
                if time.monotonic() >= next_progress:
                    next_progress += PROGRESS_EVERY_S
                    self._say(f"played {played_s:.1f} s of {record.audio_s:.1f} s")
            while True:                 # the detections the replies had no room for
                payload = link.request(P.T.AUDIO, b"", what="audio").payload
                take(payload)
                if not P.parse_audio(payload)[1]:
                    break


def _tick_lines(seconds, per_line=8):
    """Times in the interface board's timer ticks (10 us, as the runner's process_dutycycle reads them), 8 a line."""
    ticks = [round(s / P.BUSY_TICK_S) for s in seconds]
    return [", ".join(str(t) for t in ticks[i:i + per_line]) + "," for i in range(0, len(ticks), per_line)]
