"""Running a model on a board from the host: ``tinyhost infer`` (inputs from a .npy file, outputs to one) and
``tinyhost verify`` (the board's outputs against TensorFlow Lite Micro's, element by element).

Check first, connect second: the model is validated with the firmware's own reader and the inputs are checked
against its input tensor before any port is opened. Then the firmware files and the model go on the board (only
those that differ), the model is loaded, and each input runs as one ``dev.infer`` round trip. The functions here
return dataclasses; the CLI (tinyhost/commands/infer.py) only formats them.
"""

import contextlib
import io
import json
import logging
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .atomic import write_bytes_atomic
from .board import Provenance
from .errors import ModelError, UsageError, VerifyMismatch

log = logging.getLogger(__name__)

# numpy dtypes of the tensor types the engine reports (little-endian, as on every supported board).
NUMPY_DTYPES = {"int8": "i1", "uint8": "u1", "int16": "<i2", "int32": "<i4", "float32": "<f4"}
INPUT_DTYPES = ("int8", "uint8", "float32")
DEFAULT_SAMPLES = 10
DEFAULT_SEED = 0


# -- the model, checked on the host ---------------------------------------------------------------------------

@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple
    dtype: str             # "int8", "uint8", ... as the engine names it
    scale: float
    zero_point: int
    quantized_as: tuple = None   # float32 input: (scale, zero_point) of the int8 tensor its QUANTIZE writes

    @property
    def numpy_dtype(self):
        return np.dtype(NUMPY_DTYPES[self.dtype])

    @property
    def nbytes(self):
        return int(np.prod(self.shape, dtype=np.int64)) * self.numpy_dtype.itemsize


@dataclass(frozen=True)
class HostModel:
    path: Path
    sha256: str
    nbytes: int
    inputs: tuple          # TensorSpec
    outputs: tuple         # TensorSpec


def check_model(name_or_path):
    """Resolve ``--model`` (a file or a model name) and validate it as the firmware will; raises ModelError."""
    from .flash import sha256_file
    from .model import inspect
    from .zoo import resolve

    path = Path(resolve(name_or_path))
    report = inspect(path, tflm=False)
    by_index = {t.index: t for t in report.tensors}
    quantized_as = {op.inputs[0]: by_index[op.outputs[0]] for op in report.operators
                    if op.op == "QUANTIZE" and by_index[op.inputs[0]].dtype == "float32"}

    def spec(i):
        t = by_index[i]
        q = quantized_as.get(i)
        return TensorSpec(t.name, tuple(int(d) for d in t.shape), t.dtype, float(t.scale), int(t.zero_point),
                          None if q is None else (float(q.scale), int(q.zero_point)))

    model = HostModel(path=path, sha256=sha256_file(path), nbytes=report.model_bytes,
                      inputs=tuple(spec(i) for i in report.inputs), outputs=tuple(spec(i) for i in report.outputs))
    if len(model.inputs) != 1:
        raise ModelError(f"{path.name} has {len(model.inputs)} inputs; infer and verify run models with one input",
                         hint="use a model with a single input tensor")
    if model.inputs[0].dtype not in INPUT_DTYPES:
        raise ModelError(f"{path.name}'s input {model.inputs[0].name!r} is {model.inputs[0].dtype}, not "
                         "int8/uint8/float32",
                         hint="quantise the model to int8 (full-integer quantisation with int8, uint8 or float32 "
                              "input)")
    for t in model.outputs:
        if t.dtype not in NUMPY_DTYPES:
            raise ModelError(f"{path.name}'s output {t.name!r} has type {t.dtype}", hint="see docs/engine.md")
    return model


# -- inputs -------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class InputBatch:
    rows: np.ndarray       # (N,) + input tensor shape, the tensor's dtype
    layout: str            # how the file held them: "single" (the tensor's shape), "stacked" ((N,) + shape) or
                           # "rows" ((N,) + shape[1:], the tensor's batch axis of 1 replaced by N)

    def arrange(self, per_row, tensor):
        """Stack one output tensor's per-row arrays in the layout the inputs came in."""
        stacked = np.stack(per_row)
        if self.layout == "single":
            return stacked[0]
        if self.layout == "rows" and tensor.shape and tensor.shape[0] == 1:
            return stacked.reshape((len(per_row),) + tuple(tensor.shape[1:]))
        return stacked


def _shape_text(shape):
    return "(" + ", ".join(str(d) for d in shape) + ("," if len(shape) == 1 else "") + ")"


def as_rows(array, tensor, source="the input"):
    """Check ``array`` against the model's input ``tensor`` and return it as rows of the tensor's shape.

    Accepted: the tensor's shape itself (one input); ``(N,) + shape`` (N inputs); and, when the tensor's first
    dimension is a batch of 1, ``(N,) + shape[1:]``. The dtype must be the tensor's (no silent conversion).
    """
    array = np.asarray(array)
    shape = tuple(tensor.shape)
    expected_dtype = tensor.numpy_dtype
    if array.dtype != expected_dtype:
        hint = (f"save the array as {tensor.dtype}, e.g. np.save(path, x.astype(np.{tensor.dtype}))"
                if array.dtype.kind in "iub" or tensor.dtype == "float32" else
                f"quantise it first: q = round(x / {tensor.scale:g}) + {tensor.zero_point}, clipped to "
                f"{tensor.dtype}'s range, saved as np.{tensor.dtype}")
        raise UsageError(f"{source} has dtype {array.dtype}, but the model's input {tensor.name!r} expects "
                         f"{tensor.dtype} (shape {_shape_text(shape)})", hint=hint)
    if array.shape == shape:
        return InputBatch(array.reshape((1,) + shape), layout="single")
    if array.ndim == len(shape) + 1 and array.shape[1:] == shape:
        rows, layout = array, "stacked"
    elif shape and shape[0] == 1 and array.ndim == len(shape) and array.shape[1:] == shape[1:]:
        rows, layout = array.reshape((array.shape[0],) + shape), "rows"
    else:
        rows_form = _shape_text(("N",) + (shape[1:] if shape and shape[0] == 1 else shape))
        raise UsageError(f"{source} has shape {_shape_text(array.shape)}, but the model's input {tensor.name!r} "
                         f"expects {_shape_text(shape)} {tensor.dtype}",
                         hint=f"give one input of shape {_shape_text(shape)} or N inputs as {rows_form}")
    if rows.shape[0] == 0:
        raise UsageError(f"{source} holds no inputs (shape {_shape_text(array.shape)})",
                         hint="give at least one input")
    return InputBatch(np.ascontiguousarray(rows), layout=layout)


def read_inputs(path, tensor):
    """Load a .npy file and check it against the model's input tensor (see :func:`as_rows`)."""
    path = Path(path)
    try:
        array = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise UsageError(f"no input file at {path}", hint="give a .npy file saved with numpy.save") from None
    except (ValueError, OSError, EOFError) as e:
        raise UsageError(f"{path} is not a readable .npy array: {e}",
                         hint="give a .npy file saved with numpy.save (no pickled objects, not .npz)") from None
    if not isinstance(array, np.ndarray):
        raise UsageError(f"{path} holds several arrays (.npz)", hint="save one array with numpy.save")
    return as_rows(array, tensor, source=str(path))


def verify_inputs(tensor, samples=DEFAULT_SAMPLES, seed=DEFAULT_SEED):
    """``[(kind, array)]``: the extremes and the zero point of the input type, then ``samples`` seeded random
    inputs covering the whole range (float32: the real values of the int8 extremes the model quantizes into,
    zeros, then random values over that range and a tenth beyond each end, where QUANTIZE saturates)."""
    if samples < 0:
        raise UsageError(f"--samples must be >= 0, got {samples}")
    if tensor.dtype == "float32":
        return _float_verify_inputs(tensor, samples, seed)
    dtype = tensor.numpy_dtype
    lo, hi = int(np.iinfo(dtype).min), int(np.iinfo(dtype).max)
    zero = 0 if tensor.dtype == "int8" else min(max(tensor.zero_point, lo), hi)
    out = [(f"all {lo}", np.full(tensor.shape, lo, dtype)), (f"all {hi}", np.full(tensor.shape, hi, dtype)),
           ("zeros" if zero == 0 else f"all {zero} (zero point)", np.full(tensor.shape, zero, dtype))]
    rng = np.random.default_rng(seed)
    for i in range(samples):
        out.append((f"random {i}", rng.integers(lo, hi, size=tensor.shape, dtype=dtype, endpoint=True)))
    return out


def _float_verify_inputs(tensor, samples, seed):
    scale, zero_point = tensor.quantized_as or (1.0, 0)
    lo, hi = np.float32(scale * (-128 - zero_point)), np.float32(scale * (127 - zero_point))
    out = [(f"all {lo:g}", np.full(tensor.shape, lo, np.float32)),
           (f"all {hi:g}", np.full(tensor.shape, hi, np.float32)),
           ("zeros", np.zeros(tensor.shape, np.float32))]
    margin = (float(hi) - float(lo)) / 10
    rng = np.random.default_rng(seed)
    for i in range(samples):
        x = rng.uniform(float(lo) - margin, float(hi) + margin, size=tensor.shape)
        out.append((f"random {i}", x.astype(np.float32)))
    return out


# -- results ------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Latency:
    """On-device time of single inferences (the board's ticks_us around invoke)."""
    count: int
    min_us: int
    median_us: float
    max_us: int

    @classmethod
    def of(cls, times_us):
        if not times_us:
            return cls(0, 0, 0.0, 0)
        return cls(len(times_us), min(times_us), float(statistics.median(times_us)), max(times_us))


@dataclass
class InferenceRun:
    provenance: Provenance
    outputs: list                  # one array per model output, in the layout of the inputs (InputBatch.arrange)
    times_us: list                 # one per input row
    latency: Latency
    input_path: str = ""
    output_path: str = ""
    board_time: object = None      # a virtual board: tinyhost.boardtime.BoardTime of one inference (an estimate)

    def to_dict(self):
        return {"provenance": asdict(self.provenance), "input_path": self.input_path,
                "output_path": self.output_path, "inferences": len(self.times_us),
                "latency": asdict(self.latency), "times_us": list(self.times_us),
                "board_time": self.board_time.to_dict() if self.board_time else None,
                "outputs": [{"shape": list(o.shape), "dtype": str(o.dtype)} for o in self.outputs]}


@dataclass(frozen=True)
class SampleCheck:
    index: int
    kind: str                      # "all -128", "zeros", "random 3", ...
    elements: int                  # output elements compared (all outputs)
    mismatches: int                # elements where the board and TFLM differ
    max_abs_diff: float
    time_us: int                   # on-device time of this inference

    @property
    def ok(self):
        return self.mismatches == 0


@dataclass
class VerifyResult:
    provenance: Provenance
    samples: list                  # SampleCheck
    seed: int
    latency: Latency
    oracle: str = "tflite-micro"

    @property
    def mismatches(self):
        return sum(s.mismatches for s in self.samples)

    @property
    def max_abs_diff(self):
        return max((s.max_abs_diff for s in self.samples), default=0.0)

    @property
    def ok(self):
        return self.mismatches == 0

    def to_dict(self):
        return {"provenance": asdict(self.provenance), "oracle": self.oracle, "seed": self.seed, "ok": self.ok,
                "mismatches": self.mismatches, "max_abs_diff": self.max_abs_diff,
                "latency": asdict(self.latency),
                "samples": [dict(asdict(s), ok=s.ok) for s in self.samples]}


def to_json(result):
    return json.dumps(result.to_dict(), indent=2)


def write_outputs(outputs, path):
    """One output: a .npy file; several: a .npz with output0, output1, ... (written atomically either way)."""
    path = Path(path)
    buffer = io.BytesIO()
    if len(outputs) == 1:
        np.save(buffer, outputs[0], allow_pickle=False)
    else:
        np.savez(buffer, **{f"output{i}": o for i, o in enumerate(outputs)})
    write_bytes_atomic(path, buffer.getvalue())


def check_output_path(path, model):
    path = Path(path)
    if len(model.outputs) > 1 and path.suffix != ".npz":
        raise UsageError(f"{model.path.name} has {len(model.outputs)} outputs; they go into one .npz file",
                         hint="give --output a name ending in .npz")
    if path.is_dir():
        raise UsageError(f"--output {path} is a directory", hint="give a file name, e.g. out.npy")


# -- the board ----------------------------------------------------------------------------------------------

@contextlib.contextmanager
def open_board(model, board_name=None, port=None, baud=None, state_dir=None, backend="auto", timeout_s=5.0,
               progress=None):
    """Yield a :class:`~tinyhost.board.Board` with ``model`` loaded: the firmware files and the model are put on
    the board first (only those that differ), then the board's one load policy (:meth:`Board.load`)."""
    from . import board

    with board.connect(board_name, port, baud, state_dir=state_dir, timeout_s=timeout_s) as b:
        b.sync_firmware(progress=progress)
        _check_loaded(model, b.load(model.path, backend=backend, progress=progress))
        yield b


def _check_loaded(model, model_info):
    """The board's view of the tensors must be the host's (same file, same reader): anything else is a bug."""
    for kind, host, board in (("input", model.inputs, model_info.inputs), ("output", model.outputs,
                                                                             model_info.outputs)):
        mine = [(tuple(t.shape), t.dtype) for t in host]
        theirs = [(tuple(t.shape), t.dtype) for t in board]
        if mine != theirs:
            raise ModelError(f"the board reads the model's {kind}s as {theirs}, the host as {mine}",
                             hint="update the firmware with `tinyhost flash` and retry")


def _decode_outputs(dev, first_output, model):
    """The board's outputs of the last inference as arrays of the output tensors' shapes and types."""
    arrays = []
    for i, t in enumerate(model.outputs):
        raw = first_output if i == 0 else dev.get_output(i)
        if len(raw) != t.nbytes:
            raise ModelError(f"the board returned {len(raw)} bytes for output {t.name!r}, expected {t.nbytes}",
                             hint="update the firmware with `tinyhost flash` and retry")
        arrays.append(np.frombuffer(raw, dtype=t.numpy_dtype).reshape(t.shape))
    return arrays


def run_rows(b, model, rows, on_row=None):
    """Run each row on the board ``b`` (a :class:`~tinyhost.board.Board` with ``model`` loaded); returns ``(outputs per row, times_us)``. ``on_row(i, n, time_us)`` per row."""
    outputs, times = [], []
    for i, row in enumerate(rows):
        result = b.infer(np.ascontiguousarray(row).tobytes())
        outputs.append(_decode_outputs(b.dev, result.output, model))
        times.append(int(result.time_us))
        if on_row:
            on_row(i, len(rows), int(result.time_us))
    return outputs, times


# -- the two operations -------------------------------------------------------------------------------------

def infer(model, input_path, output_path, board_name=None, port=None, baud=None, state_dir=None, backend="auto",
          timeout_s=5.0, on_row=None, progress=None):
    """``tinyhost infer``: every input row of ``input_path`` through the model on the board; the outputs are
    written to ``output_path``. ``model`` is a name or path, or a HostModel from :func:`check_model`."""
    model = model if isinstance(model, HostModel) else check_model(model)
    batch = read_inputs(input_path, model.inputs[0])
    check_output_path(output_path, model)
    with open_board(model, board_name, port, baud, state_dir, backend, timeout_s, progress) as b:
        per_row, times = run_rows(b, model, batch.rows, on_row)
    outputs = [batch.arrange([row[k] for row in per_row], t) for k, t in enumerate(model.outputs)]
    write_outputs(outputs, output_path)
    board_time = None
    if b.provenance.virtual:       # the board's own time, estimated (the times above are the host's)
        from .boardtime import for_board

        board_time = for_board(model.path, b.profile, True, b.provenance.backend)
    return InferenceRun(provenance=b.provenance, outputs=outputs, times_us=times, latency=Latency.of(times),
                        input_path=str(input_path), output_path=str(output_path), board_time=board_time)


def verify(model, samples=DEFAULT_SAMPLES, seed=DEFAULT_SEED, board_name=None, port=None, baud=None,
           state_dir=None, backend="auto", timeout_s=5.0, on_sample=None, progress=None):
    """``tinyhost verify``: structured and seeded random inputs on the board and on TFLM, compared element by
    element. Returns a VerifyResult (``.ok`` is False on any mismatch; :func:`raise_on_mismatch` turns that into
    the error the CLI exits with)."""
    from .model.oracle import TflmOracle

    model = model if isinstance(model, HostModel) else check_model(model)
    inputs = verify_inputs(model.inputs[0], samples, seed)
    oracle = TflmOracle(model.path)          # before the board: no tflite-micro, or TFLM refuses -> stop here
    expected = [[np.asarray(oracle.run(x, index=k)).reshape(t.shape) for k, t in enumerate(model.outputs)]
                for _, x in inputs]
    checks = []
    with open_board(model, board_name, port, baud, state_dir, backend, timeout_s, progress) as b:
        for i, (kind, x) in enumerate(inputs):
            got, times = run_rows(b, model, x[None])
            check = compare(i, kind, got[0], expected[i], times[0])
            checks.append(check)
            if on_sample:
                on_sample(check, len(inputs))
    return VerifyResult(provenance=b.provenance, samples=checks, seed=seed,
                        latency=Latency.of([c.time_us for c in checks]))


def compare(index, kind, got, expected, time_us=0):
    """A :class:`SampleCheck` of the board's output arrays ``got`` against TFLM's ``expected``."""
    elements = mismatches = 0
    worst = 0.0
    for g, e in zip(got, expected):
        g64, e64 = np.asarray(g, np.float64).ravel(), np.asarray(e, np.float64).ravel()
        if g64.shape != e64.shape:
            raise ModelError(f"the board's output has {g64.size} elements, TFLM's {e64.size}",
                             hint="update the firmware with `tinyhost flash` and retry")
        diff = np.abs(g64 - e64)
        elements += diff.size
        mismatches += int(np.count_nonzero(diff))
        worst = max(worst, float(diff.max()) if diff.size else 0.0)
    return SampleCheck(index, kind, elements, mismatches, worst, int(time_us))


def raise_on_mismatch(result):
    if result.ok:
        return
    bad = [s for s in result.samples if not s.ok]
    raise VerifyMismatch(
        f"the board's outputs differ from TFLM's in {result.mismatches} elements over {len(bad)} of "
        f"{len(result.samples)} inputs (largest difference {result.max_abs_diff:g}, first on input "
        f"{bad[0].index} '{bad[0].kind}')")
