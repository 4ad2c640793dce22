"""Keyword spotting from continuous audio on a board: audio over the serial link (or the board's microphone),
detections back with their time stamps (docs/streaming.md).

:func:`stream_audio` drives the firmware's stream commands (STREAM_START, AUDIO, STREAM_STOP; device side
``tinyfw.stream``) over an open :class:`~tinyhost.client.Device`; :func:`listen` does it for a WAV file on a
:class:`~tinyhost.board.Board`. Time stamps are the board's clock: on a virtual board, board time (the board-time
model's estimate, :data:`tinyhost.boardtime.BOARD_TIME_MODEL`), never the host's.
"""

import logging
from dataclasses import asdict, dataclass, field

import numpy as np

from . import protocol as P
from .errors import UsageError

log = logging.getLogger(__name__)

RATE_HZ = 16000
HOP_SAMPLES = 320
HOP_S = HOP_SAMPLES / RATE_HZ
BITS_PER_BYTE = 10                  # 8N1: a start and a stop bit around each byte
AUDIO_BITS_PER_S = RATE_HZ * 16     # 256 kbit/s of int16 samples
# Heap a model loaded for a stream leaves free (LOAD's keep_free_bytes; the engine then streams its weights from flash
# where they would not fit beside it): the stream's code, imported at STREAM_START (tinyfw.cmd_stream, tinyfw.stream,
# tinyfw.mfcc; tinyfw.stream_setup for the start only: python -m benchmarks.stream_heap), then the front end's tables
# and the stream's buffers (STREAM_HEAP_BYTES: tinyfw.stream_setup's _STREAM_HEAP_BYTES, tests/test_stream.py checks
# the copy). docs/streaming.md
STREAM_CODE_BYTES = 14336
STREAM_HEAP_BYTES = 28672
STREAM_KEEP_FREE_BYTES = STREAM_CODE_BYTES + STREAM_HEAP_BYTES


@dataclass(frozen=True)
class Detection:
    board_s: float                  # the board's clock since the stream started (board time on a virtual board)
    audio_s: float                  # end of the 1 s window that triggered it, in the audio
    class_index: int
    label: str
    score: float                    # smoothed posterior, 0..1


@dataclass
class StreamOptions:
    """What the board is asked for (0: the board chooses, docs/streaming.md)."""
    infer_every: int = 0            # hops between inferences
    smooth: int = 0                 # inferences averaged
    threshold: float = 0.5          # smoothed posterior a detection needs (docs/streaming.md: how it was chosen)
    refractory_ms: int = 1000       # no second detection sooner
    classes: tuple = ()             # class indices that may be detected (empty: every class but the last two)
    backlog_hops: int = 0
    window_samples: int = 0         # the model's MFCC front end (0: the shipped kws model's): front_end_for()
    fft_size: int = 0

    def classes_mask(self):
        mask = 0
        for c in self.classes:
            mask |= 1 << c
        return mask

    def check(self):
        if not 0 < self.threshold <= 1:
            raise UsageError(f"threshold {self.threshold} is not in (0, 1]", hint="pass --threshold 0.8, say")
        if self.infer_every < 0 or self.smooth < 0 or self.refractory_ms < 0:
            raise UsageError("--infer-every, --smooth and --refractory-ms take numbers >= 0")
        return self


@dataclass
class StreamResult:
    detections: list                # of Detection
    audio_s: float                  # length of the audio streamed
    counters: dict                  # STREAM_STOP's: hops, inferences, inferences_skipped, hops_dropped, busy_us, ...
    clock: str                      # "bt-2": board time (an estimate of that board-time model); "real"
    virtual: bool
    board: str
    baud: int
    frame_bytes: int                # audio bytes per AUDIO frame; 0: the audio did not cross the link (microphone)
    labels: list = field(default_factory=list)

    @property
    def board_time(self):
        return self.clock not in ("", "real")

    @property
    def clock_label(self):
        if self.board_time:
            return f"board time, ESTIMATE of board-time model {self.clock}"
        return "the board's clock (VM time on this host)" if self.virtual else "the board's clock"

    @property
    def duty_cycle(self):
        elapsed = self.counters.get("elapsed_us", 0)
        return self.counters.get("busy_us", 0) / elapsed if elapsed else 0.0

    @property
    def line_keeps_up(self):
        return line_keeps_up(self.baud, self.frame_bytes)

    @property
    def keeps_up(self):
        """Every inference due was run and no hop was dropped."""
        return not self.counters.get("inferences_skipped") and not self.counters.get("hops_dropped")

    def to_dict(self):
        d = asdict(self)
        d.update(duty_cycle=self.duty_cycle, keeps_up=self.keeps_up, line_keeps_up=self.line_keeps_up,
                 clock_label=self.clock_label)
        return d


def line_bits_per_s(frame_bytes):
    """Line rate (baud, 8N1) that carries 16 kHz int16 audio in AUDIO frames of ``frame_bytes`` audio bytes: the
    samples, the frames' 14 bytes of header and CRC, 10 bits a byte."""
    return RATE_HZ * 2 * (frame_bytes + P.OVERHEAD_BYTES) / frame_bytes * BITS_PER_BYTE


def line_keeps_up(baud, frame_bytes):
    return not frame_bytes or baud >= line_bits_per_s(frame_bytes)


STANDARD_BAUDS = (115200, 230400, 460800, 921600, 1000000, 1500000, 2000000)


def fast_enough_baud(frame_bytes):
    """The slowest standard line rate that carries the audio in frames of ``frame_bytes``."""
    need = line_bits_per_s(frame_bytes)
    return next((b for b in STANDARD_BAUDS if b >= need), STANDARD_BAUDS[-1])


# The smallest frame buffer the firmware takes (tinyfw.runtime: 2 KB on heaps under 128 KB): AUDIO frames are
# smallest there, so the line needs the most bits per sample of audio.
SMALLEST_MAX_PAYLOAD = 2048


def virtual_board_baud():
    """The line rate a virtual board streams audio at when none is given: the slowest standard one that carries
    16 kHz int16 audio in real time with any frame buffer the firmware takes (the board profiles' 115200 carries
    it at 0.36x, docs/streaming.md)."""
    return fast_enough_baud(audio_frame_bytes(SMALLEST_MAX_PAYLOAD))


def audio_frame_bytes(max_payload):
    """Audio bytes per AUDIO frame: whole hops, as many as a frame holds."""
    hop_bytes = 2 * HOP_SAMPLES
    return max(2, (max_payload // hop_bytes) * hop_bytes or (max_payload // 2) * 2)


def to_int16(audio):
    """Float samples in [-1, 1) -> int16 little-endian bytes (as the host front end reads a WAV)."""
    pcm = np.clip(np.round(np.asarray(audio, dtype=np.float64) * 32768.0), -32768, 32767).astype("<i2")
    return pcm.tobytes()


def front_end_for(model_path, options):
    """``options`` with the window and FFT of the model's MFCC front end (tinyhost.features.mfcc's
    MODEL_FRONT_ENDS, by the model file's name; the board's default otherwise)."""
    import dataclasses
    from pathlib import Path

    from .features.mfcc import MODEL_FRONT_ENDS

    config = MODEL_FRONT_ENDS.get(Path(model_path).stem)
    if config is None:
        return options
    return dataclasses.replace(options, window_samples=config.window_samples, fft_size=config.fft_size)


def start(dev, options):
    f = dev.link.request(P.T.STREAM_START, P.pack_stream_start(
        options.infer_every, options.smooth, round(options.threshold * 255), options.refractory_ms,
        P.STREAM_SOURCE_SERIAL, options.classes_mask(), options.backlog_hops, window_samples=options.window_samples,
        fft_size=options.fft_size), what="stream start", timeout_s=30.0)
    return P.parse_kv(f.payload)


def stop(dev):
    f = dev.link.request(P.T.STREAM_STOP, what="stream stop", expect_bytes=1024)
    return {k: (int(v) if v.lstrip("-").isdigit() else v) for k, v in P.parse_kv(f.payload).items()}


def stream_audio(dev, pcm, options, labels=(), on_detection=None, on_progress=None, virtual=False, board="",
                 baud=0):
    """Stream int16 little-endian ``pcm`` to the board's loaded model; returns a :class:`StreamResult`.
    ``on_detection(Detection)`` as each arrives, ``on_progress(audio_s_sent)`` after each frame."""
    options.check()
    pcm = bytes(pcm)
    if len(pcm) & 1:
        raise UsageError("audio must be whole int16 samples")
    settings = start(dev, options)
    frame = audio_frame_bytes(dev.link.max_payload)
    detections = []

    def take(events):
        for board_ms, audio_ms, cls, score in events:
            d = Detection(board_ms / 1000, audio_ms / 1000, cls, labels[cls] if cls < len(labels) else str(cls),
                          score / 255)
            detections.append(d)
            if on_detection:
                on_detection(d)

    for off in range(0, len(pcm), frame):
        f = dev.link.request(P.T.AUDIO, pcm[off:off + frame], what="audio", timeout_s=30.0)
        take(P.parse_audio(f.payload)[1])
        if on_progress:
            on_progress((off + frame) / 2 / RATE_HZ)
    while True:                      # detections the replies had no room for
        f = dev.link.request(P.T.AUDIO, b"", what="audio")
        events = P.parse_audio(f.payload)[1]
        if not events:
            break
        take(events)
    counters = stop(dev)
    log.info("stream settings %s, counters %s", settings, counters)
    return StreamResult(detections, len(pcm) / 2 / RATE_HZ, counters, str(counters.get("clock", "real")), virtual,
                        board, baud, frame, list(labels))


def labels_for(model_path):
    """Class names of a model from the registry (tinyhost.zoo), else class numbers."""
    from .zoo import KWS_LABELS

    return list(KWS_LABELS)


def listen(board, model_path, wav_path, options, on_detection=None, on_progress=None):
    """Put the firmware and ``model_path`` on ``board`` (a :class:`~tinyhost.board.Board`) where they differ, load
    the model and stream ``wav_path`` to it."""
    from .features.mfcc import read_wav

    audio = read_wav(wav_path, RATE_HZ)
    board.flash([model_path])                   # the firmware and the model, only what differs
    board.load(model_path, keep_free_bytes=STREAM_KEEP_FREE_BYTES)
    labels = labels_for(model_path)
    return stream_audio(board.dev, to_int16(audio), front_end_for(model_path, options), labels, on_detection,
                        on_progress,
                        virtual=board.virtual, board=board.provenance.board, baud=board.baud)
