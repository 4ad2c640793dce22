"""A board's own board-time coefficients: micro-benchmark models timed on the board, a fit, a calibration file.

``calibrate(board)`` puts a set of small synthetic models on a connected :class:`~tinyhost.board.Board` (each
weighted towards one cost term: 1x1 and 3x3 convolutions, depthwise, fully connected, pooling, a chain of 1x1 max
pools, convolutions the planner runs in row bands), times their invokes on the board's clock (the interquartile mean
of the runtime's ticks_us around ``Model.invoke``), and fits the viper coefficients of :mod:`tinyhost.boardtime` to
them: non-negative least squares on the relative error, the work of every model counted exactly as the estimate
counts it. Coefficients the set does not exercise
(flash, mapped weights, the reference kernels) keep the profile's values and say so.

The calibration file is TOML: ``[calibration]`` (provenance: board, firmware, MicroPython, date, tinyhost, the
fit's error) and a ``[board_time]`` table in the profile's own format, checked by the same validator; a virtual
board uses it with ``tinyhost bench --calibration FILE`` in place of its profile's coefficients.
"""

import dataclasses
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import boardtime
from .errors import UsageError

SCHEMA = "tinyhost-calibration/1"
_WEIGHTS = {"ram": "ram", "flash": "streamed", "mapped": "mapped"}     # engine stats()["weights_mode"]
FITTED = ("mac_conv_cycles", "mac_dw_cycles", "mac_fc_cycles", "requant_cycles", "copy_byte_cycles",
          "elem_cycles", "call_cycles", "step_cycles", "invoke_cycles")
# fitted too when a calibration model exercised them (the board streamed or mapped its weights)
FITTED_WHEN_USED = ("flash_byte_cycles", "flash_read_cycles", "mapped_byte_cycles")


def micro_models():
    """``(name, tflite bytes)`` of the calibration models: small random-weight int8 models, each dominated by one
    or two cost terms, together enough to separate every fitted coefficient."""
    import numpy as np

    from .model import writer

    def build(name, shape, layers):
        b, L = writer.start(np.random.default_rng(len(name)), shape, description=f"tinyhost calibration: {name}")
        layers(L)
        return name, writer.finish(b, L)

    def pools(n):
        def chain(L):
            for _ in range(n):
                L.pool("MAX_POOL_2D", k=1, stride=1)
        return chain

    return [
        build("conv1x1-16", (1, 8, 8, 16), lambda L: L.conv(16, k=1)),
        build("conv1x1-32", (1, 8, 8, 32), lambda L: L.conv(32, k=1)),
        build("conv1x1-4x64", (1, 4, 4, 64), lambda L: L.conv(4, k=1)),
        build("conv3x3-8", (1, 8, 8, 8), lambda L: L.conv(8, k=3)),
        build("conv3x3s2-16", (1, 16, 16, 4), lambda L: L.conv(16, k=3, stride=2)),
        build("dw3x3-16", (1, 16, 16, 16), lambda L: L.conv(0, k=3, depthwise=True)),
        build("dw3x3-64", (1, 6, 6, 64), lambda L: L.conv(0, k=3, depthwise=True)),
        build("fc-256x32", (1, 256), lambda L: L.fc(32)),
        build("fc-32x64", (1, 32), lambda L: L.fc(64)),
        build("pool-16x16x16", (1, 16, 16, 16), lambda L: L.pool("AVERAGE_POOL_2D", k=2, stride=2)),
        build("pool-8x8x4", (1, 8, 8, 4), lambda L: L.pool("MAX_POOL_2D", k=2, stride=2)),
        build("pool-chain-8", (1, 4, 4, 4), pools(8)),
        build("conv1x1-banded", (1, 24, 24, 16), lambda L: L.conv(8, k=1)),
        build("dw3x3-banded", (1, 24, 24, 16), lambda L: L.conv(0, k=3, depthwise=True)),
        # filters larger than half an ESP32's free heap: streamed from flash there (and on its virtual board)
        build("fc-streamed", (1, 256), lambda L: L.fc(192)),
        build("conv1x1-streamed", (1, 4, 4, 256), lambda L: L.conv(160, k=1)),
        build("mixed", (1, 8, 8, 8), lambda L: (L.conv(0, k=3, depthwise=True), L.conv(16, k=1),
                                                 L.pool("AVERAGE_POOL_2D", k=8, stride=1), L.reshape((1, 16)),
                                                 L.fc(8), L.softmax())),
    ]


def work(report, weights, backend="viper"):
    """Count of every cost term in one invoke of the model in ``report`` (summed over its steps, + 1 invoke)."""
    total = {"invoke_cycles": 1}
    for op in report.operators:
        for name, count in boardtime.step_work(op, backend, weights, report.stream_block_bytes).items():
            total[name] = total.get(name, 0) + count
    return total


def fit(rows, fixed, floor_cycles=0, names=FITTED):
    """Coefficients (cycles, two decimals) of ``names`` from ``rows`` of ``(work, measured cycles)``; ``fixed``:
    name -> cycles of the terms not fitted (their share is taken off each measurement first). Non-negative least
    squares (Lawson-Hanson active set) on the error relative to the measurement + ``floor_cycles`` (the clock's
    resolution: a model timed at one tick does not outweigh the others), columns scaled to unit norm."""
    import numpy as np

    a = np.array([[w.get(n, 0) for n in names] for w, _ in rows], dtype=float)
    y = np.array([c - sum(w.get(n, 0) * fixed[n] for n in fixed) for w, c in rows], dtype=float)
    if (y < 0).any():
        raise UsageError("a calibration model ran faster than the terms that are not fitted allow",
                         hint="check the board profile's flash coefficients, then calibrate again")
    weight = 1.0 / (np.maximum(y, 0) + floor_cycles + 1e-9)
    a, y = a * weight[:, None], y * weight
    norms = np.linalg.norm(a, axis=0)
    used = norms > 0
    a_scaled = np.where(used, a / np.where(used, norms, 1), 0)
    x = _nnls(a_scaled, y) / np.where(used, norms, 1)
    return {n: round(float(v), 2) for n, v in zip(names, x)}


def _nnls(a, y, max_iter=200):
    import numpy as np

    n = a.shape[1]
    passive = np.zeros(n, dtype=bool)
    x = np.zeros(n)
    for _ in range(max_iter):
        grad = a.T @ (y - a @ x)
        candidates = np.where(~passive & (grad > 1e-12))[0]
        if len(candidates) == 0:
            break
        passive[candidates[np.argmax(grad[candidates])]] = True
        while True:
            z = np.zeros(n)
            z[passive] = np.linalg.lstsq(a[:, passive], y, rcond=None)[0]
            if (z[passive] > 0).all():
                x = z
                break
            neg = passive & (z <= 0)
            alpha = np.min(x[neg] / (x[neg] - z[neg]))
            x = x + alpha * (z - x)
            passive &= x > 1e-12
    return x


def interquartile_mean(times_us):
    """Mean of the middle half: robust to the odd slow invoke (an interrupt, a busy host), and, unlike the
    median, it resolves times under one tick of ticks_us."""
    t = sorted(times_us)
    q = len(t) // 4
    return statistics.fmean(t[q:len(t) - q])


@dataclass
class Sample:
    model: str
    measured_us: float              # interquartile mean of the timed invokes, board clock
    invokes: int
    fitted_us: float = 0.0          # the estimate with the fitted coefficients


@dataclass
class Calibration:
    board: str
    virtual: bool
    core: str
    clock_mhz: int
    coefficients: dict              # name -> cycles (every coefficient of boardtime.COEFFICIENTS)
    sources: dict                   # name -> where the value comes from
    samples: list = field(default_factory=list)
    firmware_version: str = ""
    micropython_version: str = ""
    date: str = ""
    tinyhost_version: str = ""
    max_error_pct: float = 0.0      # largest |fitted - measured| / measured over the samples
    fitted: tuple = ()              # the coefficients fitted (the others are the profile's)

    def profile(self, profile):
        """``profile`` with these coefficients (and clock) in place of its own."""
        coeffs = {n: boardtime.Coefficient(boardtime.centicycles(v), self.sources[n])
                  for n, v in self.coefficients.items()}
        return dataclasses.replace(profile, board_time=coeffs, board_time_core=self.core,
                                   board_time_clock_mhz=self.clock_mhz,
                                   board_time_clock_source=f"calibration of {self.board} ({self.date})")


def calibrate(board, repeats=50, progress=None):
    """Time every calibration model on ``board`` (a connected tinyhost.board.Board) and fit; a Calibration."""
    from . import __version__
    from .model import board_fit, inspect

    profile = board.profile
    if not profile.board_time:
        raise UsageError(f"board profile {profile.name} has no [board_time] table to start from",
                         hint="add one to its boards/*.toml file (see docs/board-time.md)")
    clock = profile.board_time_clock_mhz
    rows, samples = [], []
    with tempfile.TemporaryDirectory(prefix="tinyhost-calibrate-") as tmp:
        models = micro_models()
        for i, (name, data) in enumerate(models):
            path = Path(tmp) / f"cal_{name.replace('-', '_')}.tflite"
            path.write_bytes(data)
            report = inspect(path, board=profile.name, tflm=False)
            weights = board_fit(report, profile, board.virtual).weights
            if progress:
                progress(f"{i + 1}/{len(models)} {name}")
            if board.model_info is not None:
                board.dev.unload_model()    # the next model's files go on while the heap is free
            info = board.load(path, backend="viper")
            if str(info.backend) != "viper":
                raise UsageError(f"the board ran {name} with the {info.backend} backend, not viper",
                                 hint="calibrate needs a firmware whose port has the viper emitter")
            weights = _WEIGHTS.get(str(info.raw.get("weights_mode", "")), weights)   # what the board did
            result = board.dev.invoke(n=repeats, warmup=2)
            measured = interquartile_mean(result.times_us)
            rows.append((work(report, weights), measured * clock))
            samples.append((Sample(name, measured, len(result.times_us)), report, weights))
    names = FITTED + tuple(n for n in FITTED_WHEN_USED if any(w.get(n) for w, _ in rows))
    fixed = {n: profile.board_time[n].cycles for n in boardtime.COEFFICIENTS if n not in names}
    fitted = fit(rows, fixed, floor_cycles=2 * clock, names=names)
    date = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    where = f"{'the virtual ' if board.virtual else ''}{profile.name}"
    sources = {n: (f"tinyhost calibrate on {where}, {date}: fit of {len(rows)} micro-benchmark models"
                   if n in names else f"not exercised by tinyhost calibrate; the profile's: "
                                       f"{profile.board_time[n].source}") for n in boardtime.COEFFICIENTS}
    coefficients = {**{n: fixed[n] for n in fixed}, **fitted}
    prov = board.provenance
    cal = Calibration(profile.name, board.virtual, profile.board_time_core, clock, coefficients, sources,
                      firmware_version=prov.firmware_version, micropython_version=prov.micropython_version,
                      date=date, tinyhost_version=__version__, fitted=names)
    calibrated = cal.profile(profile)
    for sample, report, weights in samples:
        sample.fitted_us = boardtime.estimate(report, calibrated, "viper", weights).total_ns / 1000
        cal.samples.append(sample)
    cal.max_error_pct = max(abs(s.fitted_us - s.measured_us) / s.measured_us * 100 for s in cal.samples)
    return cal


# --- the calibration file -------------------------------------------------------------------------------------

def _toml_str(s):
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def to_toml(cal):
    lines = ["# tinyhost calibration: board-time coefficients measured on a board (tinyhost calibrate).",
             "[calibration]", f"schema = {_toml_str(SCHEMA)}", f"board = {_toml_str(cal.board)}",
             f"virtual = {'true' if cal.virtual else 'false'}",
             f"firmware_version = {_toml_str(cal.firmware_version)}",
             f"micropython_version = {_toml_str(cal.micropython_version)}", f"date = {_toml_str(cal.date)}",
             f"tinyhost_version = {_toml_str(cal.tinyhost_version)}",
             f"board_time_model = {_toml_str(boardtime.BOARD_TIME_MODEL)}",
             f"max_error_pct = {cal.max_error_pct:.2f}", "",
             "[board_time]", f"core = {_toml_str(cal.core)}", f"clock_mhz = {cal.clock_mhz}",
             f"clock_source = {_toml_str('the clock of the board profile the calibration ran with')}"]
    for name in boardtime.COEFFICIENTS:
        lines += ["", f"[board_time.{name}]", f"cycles = {cal.coefficients[name]:.2f}",
                  f"source = {_toml_str(cal.sources[name])}"]
    for s in cal.samples:
        lines += ["", "[[sample]]", f"model = {_toml_str(s.model)}", f"measured_us = {s.measured_us:.1f}",
                  f"fitted_us = {s.fitted_us:.1f}", f"invokes = {s.invokes}"]
    return "\n".join(lines) + "\n"


def write(cal, path):
    from .atomic import write_bytes_atomic

    write_bytes_atomic(path, to_toml(cal).encode())


def load(path, profile):
    """``profile`` with the coefficients of the calibration file at ``path`` (checked as a profile's
    ``[board_time]`` is), and the file's ``[calibration]`` table."""
    import tomllib

    from .boards import _board_time
    from .errors import BoardProfileError

    path = Path(path)
    try:
        with open(path, "rb") as f:
            raw = tomllib.load(f)
    except FileNotFoundError:
        raise UsageError(f"no calibration file at {path}", hint="write one with tinyhost calibrate") from None
    except tomllib.TOMLDecodeError as e:
        raise BoardProfileError(f"calibration file {path} is not valid TOML: {e}",
                                hint="write it again with tinyhost calibrate") from None
    meta = raw.get("calibration", {})
    if meta.get("schema") != SCHEMA:
        raise BoardProfileError(f"calibration file {path} is not a {SCHEMA} file",
                                hint="write it again with tinyhost calibrate")
    coeffs, core, (clock, clock_source) = _board_time(raw.get("board_time"), path, required=True)
    return dataclasses.replace(profile, board_time=coeffs, board_time_core=core, board_time_clock_mhz=clock,
                               board_time_clock_source=clock_source), meta
