"""``tinyhost bench --mode streaming``: MLPerf Tiny's streaming wakeword figures for a model on a board.

Each WAV of the data set (:mod:`tinyhost.bench.sww`) is streamed to the board over the serial link
(:func:`tinyhost.stream.stream_audio`); its detections are scored with the benchmark's rule: true positives, false
negatives, false positives (debounced) and false accepts per hour, detection latency (detection time - keyword end),
and the duty cycle with its energy: the profile's active power while the board works, its idle power otherwise
(an estimate; on a virtual board from board time, itself an estimate of the board-time model).
"""

import json
from dataclasses import asdict, dataclass, field

from ..errors import UsageError
from . import sww


@dataclass
class FileResult:
    wav_file: str
    score: object                   # sww.Score
    stream: object                  # tinyhost.stream.StreamResult


@dataclass
class StreamingResult:
    files: list                     # of FileResult
    board: str
    virtual: bool
    clock: str
    active_mw: float
    idle_mw: float
    provenance: object = None
    threshold: float = 0.0
    extra: dict = field(default_factory=dict)

    def _sum(self, name):
        return sum(getattr(f.score, name) for f in self.files)

    @property
    def true_positives(self):
        return self._sum("true_positives")

    @property
    def false_negatives(self):
        return self._sum("false_negatives")

    @property
    def false_positives(self):
        return self._sum("false_positives")

    @property
    def audio_s(self):
        return sum(f.score.audio_s for f in self.files)

    @property
    def false_accepts_per_hour(self):
        return self.false_positives * 3600.0 / self.audio_s if self.audio_s else 0.0

    @property
    def latencies_s(self):
        return [x for f in self.files for x in f.score.latencies_s]

    @property
    def busy_s(self):
        return sum(f.stream.counters.get("busy_us", 0) for f in self.files) / 1e6

    @property
    def elapsed_s(self):
        return sum(f.stream.counters.get("elapsed_us", 0) for f in self.files) / 1e6

    @property
    def duty_cycle(self):
        return self.busy_s / self.elapsed_s if self.elapsed_s else 0.0

    @property
    def energy_mj(self):
        """Active power while busy + idle power the rest of the time (mW x s = mJ): an estimate."""
        return self.active_mw * self.busy_s + self.idle_mw * max(0.0, self.elapsed_s - self.busy_s)

    @property
    def mean_power_mw(self):
        return self.energy_mj / self.elapsed_s if self.elapsed_s else 0.0

    @property
    def keeps_up(self):
        return all(f.stream.keeps_up for f in self.files)

    def figures(self):
        lat = self.latencies_s
        return {"true_positives": self.true_positives, "false_negatives": self.false_negatives,
                "false_positives": self.false_positives, "audio_s": self.audio_s,
                "false_accepts_per_hour": self.false_accepts_per_hour,
                "latency_mean_s": sum(lat) / len(lat) if lat else None,
                "latency_max_s": max(lat) if lat else None,
                "duty_cycle": self.duty_cycle, "energy_mj": self.energy_mj, "mean_power_mw": self.mean_power_mw,
                "keeps_up": self.keeps_up, "clock": self.clock,
                "labels_right": self._sum("labels_right")}

    def to_json(self):
        doc = {"streaming": self.figures(), "board": self.board, "virtual": self.virtual,
               "active_mw": self.active_mw, "idle_mw": self.idle_mw, "threshold": self.threshold,
               "files": [{"wav_file": f.wav_file, "score": f.score.to_dict(), "stream": f.stream.to_dict()}
                         for f in self.files],
               "provenance": asdict(self.provenance) if self.provenance is not None else None}
        return json.dumps(doc, indent=2, default=str)


def run(board, model_path, dataset, options, on_file=None, on_detection=None):
    """Stream every file of ``dataset`` (a folder, :func:`tinyhost.bench.sww.read`) to ``model_path`` on
    ``board`` (a :class:`~tinyhost.board.Board`); returns a :class:`StreamingResult`."""
    from .. import stream as st
    from ..features.mfcc import read_wav

    files = sww.read(dataset)
    board.flash([model_path])
    board.load(model_path, keep_free_bytes=st.STREAM_KEEP_FREE_BYTES)     # the stream's heap left free
    labels = st.labels_for(model_path)
    profile = board.profile
    if not profile.power or "active" not in profile.power or "idle" not in profile.power:
        raise UsageError(f"board profile {profile.name} has no [power.active] and [power.idle]",
                         hint="add them to its boards/*.toml (docs/boards.md)")
    frame = st.audio_frame_bytes(board.dev.link.max_payload)
    if not st.line_keeps_up(board.baud, frame):
        raise UsageError(f"the line ({board.baud} baud) carries the audio at "
                         f"{board.baud / st.line_bits_per_s(frame):.2f}x real time: the board's time stamps would "
                         "not be the audio's", hint=f"pass --baud {st.fast_enough_baud(frame)} (a virtual board "
                                                    "emulates it; a real board's UART must be set to it)")
    options = st.front_end_for(model_path, options)
    results = []
    clock = "real"
    for f in files:
        if on_file:
            on_file(f)
        audio = read_wav(f.wav_path, st.RATE_HZ)
        r = st.stream_audio(board.dev, st.to_int16(audio), options, labels, on_detection=on_detection,
                            virtual=board.virtual, board=board.provenance.board, baud=board.baud)
        clock = r.clock
        score = sww.score([(d.board_s, d.label) for d in r.detections], f.windows, r.audio_s, f.labels)
        results.append(FileResult(f.wav_path.name, score, r))
    return StreamingResult(results, board.provenance.board, board.virtual, clock, profile.power_mw("active"),
                           profile.power_mw("idle"), board.provenance, options.threshold)
