"""Host-side view of a model, using the device engine's own reader, operator preparation and planner.

``inspect(path, board=None)`` validates a ``.tflite`` file exactly as the firmware will (same code) and returns a
:class:`ModelReport`: operators with parameters and MACs, tensors, model size, our arena and TFLM's, peak RAM
estimates and, per board profile, whether it fits and why not.
"""

import importlib
import sys
from dataclasses import dataclass, field, asdict
from pathlib import Path

from .. import boards as board_profiles
from ..errors import DoesNotFit, ModelError, UsageError
from ..paths import firmware_dir

# RAM the firmware itself needs besides the model (code of the runtime and engine, buffers); an estimate for
# MicroPython on a 32-bit board, used only for the fits-per-board verdict. `tinyhost info` reports real heap figures.
FIRMWARE_OVERHEAD_BYTES = 40 * 1024
# The same on the virtual board: MicroPython's 64-bit unix VM has objects and pointers twice an ESP32's. The running
# runtime with the engine imported uses ~49.5 KB before a LOAD, and the load-time code adds ~6 KB (the "HASH
# model" and "plan checked" stages of `micropython -X heapsize=112640 tests/engine_harness/runtime_heap.py
# MODEL DEVICE_DIR --trace`, the .mpy tree as flashed).
VIRTUAL_FIRMWARE_OVERHEAD_BYTES = 56 * 1024
# With the firmware package in a ROMFS partition its bytecode runs in place: importing tinyfw.runtime, the engine
# and the viper kernels takes 15.2 KB of the virtual esp32's heap instead of 25.9 KB (docs/engine.md, "Speed").
# Credited on virtual boards only, where it was measured; a real board's verdict keeps the full estimate.
VIRTUAL_ROMFS_CODE_SAVING_BYTES = 10 * 1024
# Per-channel and per-operator bookkeeping kept in RAM (multipliers, shifts, biases, parameter arrays, views).
_PER_CHANNEL_BYTES = 12
_PER_OP_BYTES = 200
# Softmax exp tables (2 x 256 int32): kept in RAM when everything else is streamed.
_SOFTMAX_TABLE_BYTES = 2048


def engine_module():
    """The device engine package (tinyfw.engine), imported from the firmware directory, with the numpy backend."""
    root = str(firmware_dir())
    if root not in sys.path:
        sys.path.insert(0, root)
    engine = importlib.import_module("tinyfw.engine")
    from . import kernels_numpy
    engine.register_backend("numpy", kernels_numpy)
    return engine


@dataclass
class TensorReport:
    index: int
    name: str
    shape: tuple
    dtype: str
    scale: float
    zero_point: int
    per_channel: bool
    constant: bool
    nbytes: int


@dataclass
class OpReport:
    index: int
    op: str
    inputs: list
    outputs: list
    params: dict
    macs: int
    weight_bytes: int
    filter_bytes: int = 0           # the filter alone (what weights streamed or mapped read at invoke)
    input_elements: int = 0         # elements of the operator's non-constant inputs
    output_elements: int = 0
    kernel_calls: int = 1           # calls per invoke: one per band of output rows (row_band), else one


@dataclass
class BoardFit:
    board: str
    fits: bool
    reasons: list
    heap_bytes: int
    fs_bytes: int
    peak_ram_bytes: int
    weights: str            # where the weights are read from: "ram", "streamed" (from flash) or "mapped" (ROMFS)
    board_time: object = None   # tinyhost.boardtime.BoardTime of one invoke with the viper backend (an estimate)
    energy_uj: float = None     # active current x supply voltage x board_time (an estimate)
    front_end_time: object = None   # tinyhost.boardtime.FrontEndTime of one hop of the board's MFCC front end


@dataclass
class ModelReport:
    path: str
    model_bytes: int
    description: str
    operators: list
    tensors: list
    inputs: list
    outputs: list
    macs: int
    weight_bytes: int
    arena_bytes: int
    tflm_arena_bytes: object        # TFLM's non-persistent (head) arena, None without tflite-micro
    tflm_persistent_bytes: object
    peak_ram_weights_in_ram_bytes: int
    peak_ram_weights_streamed_bytes: int
    fits: list = field(default_factory=list)
    stream_block_bytes: int = 32768     # streamed weights are read in blocks of at most this many bytes
    front_end: object = None        # the board's front end for this model when known: model name, mfcc, ram_bytes

    def to_dict(self):
        return asdict(self)


def _fail(e, path):
    return ModelError(f"{path}: {e}", hint="the model must be an int8 .tflite file using only the supported "
                                           "operators (see docs/engine.md)")


def inspect(path, board=None, tflm=True):
    """Validate and describe the model at `path`. Raises tinyhost.errors.ModelError for a bad model."""
    engine = engine_module()
    from tinyfw.engine import reader, model_prepare, op_prepare as engine_ops
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"no model file at {path}", hint="give the path of a .tflite file")
    size = path.stat().st_size
    try:
        with open(path, "rb") as f:
            md = reader.read_model(f, size)
            specs = engine_ops.prepare(md)
            _, arena, bands = model_prepare.arena_layout_of(md, specs)
            tensors = [TensorReport(t.index, t.name, tuple(t.shape), t.dtype, t.scale, t.zero_point, t.nq > 1,
                                    t.is_const, t.nbytes) for t in md.tensors]
    except engine.ModelError as e:
        raise _fail(e, path) from None
    operators = []
    channels = 0
    weights = 0
    for s, band in zip(specs, bands):
        if band:
            s.info["row_band"] = band       # output rows per kernel call, writing over its dying input
        if model_prepare.pointwise(s.kind, s.p, band):
            s.info["runs_as"] = "FULLY_CONNECTED"   # over its pixels: the plan records it as one
        wb = (s.weights.nbytes if s.weights is not None else 0) + (s.bias.nbytes if s.bias is not None else 0)
        weights += wb
        channels += s.channels
        operators.append(OpReport(
            s.op.index, s.op.name, list(s.op.inputs), list(s.op.outputs), dict(s.info), s.macs, wb,
            filter_bytes=s.weights.nbytes if s.weights is not None else 0,
            input_elements=sum(_elements(md.tensors[i]) for i in s.op.inputs if i >= 0 and not md.tensors[i].is_const),
            output_elements=sum(_elements(md.tensors[i]) for i in s.op.outputs),
            kernel_calls=-(-_rows(md.tensors[s.op.outputs[0]]) // band) if band else 1))
    # float32 graph inputs and outputs are buffers of their own, outside the arena (plan_read._view)
    float_io = sum(t.nbytes for t in tensors if t.index in md.inputs + md.outputs and t.dtype == "float32")
    bookkeeping = channels * _PER_CHANNEL_BYTES + len(specs) * _PER_OP_BYTES + float_io
    # Weights streamed (tinyfw.engine.plan_read): the weight block and the kernel scratch lie in each operator's
    # work area inside the arena (the plan's arena_streamed_bytes), per-channel data and the convolutions'
    # parameters are read from the plan at invoke; RAM keeps the steps, one operator's channel data at most and
    # the softmax tables.
    from .plan import build_plan, read_header
    h = read_header(build_plan(path))
    streamed = (h.arena_streamed_bytes + len(specs) * _PER_OP_BYTES + h.max_channels * _PER_CHANNEL_BYTES
                + (_SOFTMAX_TABLE_BYTES if any(s.op.name == "SOFTMAX" for s in specs) else 0) + float_io)
    tflm_head = tflm_tail = None
    if tflm:
        from . import oracle
        if oracle.available():
            try:
                a = oracle.tflm_arena(path)
                tflm_head, tflm_tail = a.head_bytes, a.tail_bytes
            except Exception:       # TFLM refuses models we accept only in corner cases; report None
                tflm_head = tflm_tail = None
    report = ModelReport(
        path=str(path), model_bytes=size, description=md.description, operators=operators, tensors=tensors,
        inputs=list(md.inputs), outputs=list(md.outputs), macs=sum(s.macs for s in specs), weight_bytes=weights,
        arena_bytes=arena, tflm_arena_bytes=tflm_head, tflm_persistent_bytes=tflm_tail,
        peak_ram_weights_in_ram_bytes=h.arena_ram_bytes + weights + bookkeeping,
        peak_ram_weights_streamed_bytes=streamed, stream_block_bytes=engine.STREAM_SCRATCH_BYTES)
    report.front_end = _front_end(path, md.tensors[md.inputs[0]] if md.inputs else None)
    for spec in [board] if board else _every_board():
        profile, virtual = board_profiles.from_spec(spec)
        report.fits.append(board_fit(report, profile, virtual, label=spec))
    return report


def _front_end(path, input_tensor):
    """The board's MFCC front end (tinyfw.mfcc) of a registry model trained with a known one whose int8 input it
    fills (tinyhost.features.MODEL_FRONT_ENDS): ``{"model", "mfcc", "ram_bytes"}``, else None."""
    from .. import boardtime, zoo
    from ..features import MODEL_FRONT_ENDS
    from ..hashing import sha256_file

    known = zoo.entry_with_sha256(sha256_file(path))
    config = MODEL_FRONT_ENDS.get(known.name) if known is not None else None
    if config is None or input_tensor is None or input_tensor.dtype != "int8" \
            or _elements(input_tensor) != config.n_frames * config.mfcc_count:
        return None
    fe = boardtime.device_front_end(config, input_tensor.scale, input_tensor.zero_point)
    return {"model": known.name, "mfcc": asdict(config), "ram_bytes": fe.ram_bytes}


def _elements(tensor):
    n = 1
    for d in tensor.shape:
        n *= d
    return n


def _rows(tensor):
    """Output rows of an NHWC tensor (what a row band divides)."""
    return tensor.shape[1] if len(tensor.shape) == 4 else 1


def _every_board():
    """Every real board profile, then every virtual board: `sim` (the esp32 stand-in, tinyhost.ports) and
    `sim:NAME` for the other real profiles."""
    names = board_profiles.available()
    real = [n for n in names if not board_profiles.load(n).virtual]
    return real + [n for n in names if n not in real] + [f"sim:{n}" for n in real if n != "esp32"]


def board_fit(report, b, virtual=None, label=None):
    """Whether the model described by `report` fits board profile `b` (run as the virtual board when `virtual`;
    default: as the profile says), and why not. `label`: the board's name in the verdict (default: `b`'s)."""
    virtual = b.virtual if virtual is None else virtual
    reasons = []
    if b.romfs_bytes:       # the model goes to the ROMFS partition, its weights are read in place (mapped)
        if report.model_bytes > b.romfs_bytes:
            reasons.append(f"model file ({report.model_bytes} B) is larger than the board's ROMFS partition "
                           f"({b.romfs_bytes} B)")
    elif report.model_bytes > b.fs_bytes:
        reasons.append(f"model file ({report.model_bytes} B) is larger than the board's filesystem ({b.fs_bytes} B)")
    if not virtual:
        budget = b.heap_bytes - FIRMWARE_OVERHEAD_BYTES
    else:
        budget = b.heap_bytes - VIRTUAL_FIRMWARE_OVERHEAD_BYTES + (VIRTUAL_ROMFS_CODE_SAVING_BYTES
                                                                   if b.romfs_bytes else 0)
    # mapped weights take no RAM; the streamed figure (weight blocks in the arena) bounds what they need
    in_ram = not b.romfs_bytes and report.peak_ram_weights_in_ram_bytes <= budget // 2 + report.arena_bytes
    peak = report.peak_ram_weights_in_ram_bytes if in_ram else report.peak_ram_weights_streamed_bytes
    if peak > budget:
        reasons.append(f"needs about {peak} B of RAM (arena {report.arena_bytes} B + weights/bookkeeping), the "
                       f"board has about {budget} B free for models ({b.heap_bytes} B heap)")
    fit = BoardFit(label or b.name, not reasons, reasons, b.heap_bytes, b.fs_bytes, peak,
                   "ram" if in_ram else "mapped" if b.romfs_bytes else "streamed")
    if b.board_time:
        from .. import boardtime
        fit.board_time = boardtime.estimate(report, b, "viper", fit.weights)
        fit.energy_uj = boardtime.energy_uj(b, fit.board_time)
        if report.front_end:
            from ..features import MfccConfig
            fit.front_end_time = boardtime.front_end_estimate(MfccConfig(**report.front_end["mfcc"]), b)
    return fit


def board_label(profile, virtual):
    """How commands name a board: its profile, or ``sim`` / ``sim:NAME`` for a virtual one (tinyhost.ports)."""
    if not virtual or profile.virtual:
        return profile.name
    return "sim" if profile.name == "esp32" else f"sim:{profile.name}"


def require_fit(path, profile, virtual):
    """``model inspect``'s verdict for this board, checked before anything is sent: DoesNotFit when it says the
    model does not fit, naming the boards of the same kind (virtual or real) where it does."""
    report = inspect(path, tflm=False)
    fit = board_fit(report, profile, virtual)
    if fit.fits:
        return fit
    label = board_label(profile, virtual)
    elsewhere = [f.board for f in report.fits if f.fits and f.board.startswith("sim") == bool(virtual)]
    where = f"the virtual {profile.name} ({label})" if virtual else f"the {label}"
    raise DoesNotFit(
        f"{Path(path).name} does not fit {where}: {'; '.join(fit.reasons)}",
        hint=(f"it fits {', '.join(elsewhere)}: use --board {elsewhere[0]}" if elsewhere
              else "no board profile has room for it; `tinyhost model inspect` shows why")
        + f" (`tinyhost model inspect {path}` gives every board's verdict)")
