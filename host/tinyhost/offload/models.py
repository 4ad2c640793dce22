"""The models ``tinyhost serve`` runs: one TFLM interpreter per worker thread, plus the optional reference model.

A request's tensor must match the device model's input exactly (dtype, shape, scale, zero point, size). The
device model's answer goes back as is. A reference model (a larger or float32 model with the same input and output
element counts) gets the request dequantised to real values and requantised to its own input type; its output is
quantised back to the device model's output type, so the board gets the same bytes layout whichever model answered.
"""

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ModelError, UsageError
from . import wire

log = logging.getLogger(__name__)

_NP_DTYPES = {"int8": np.int8, "uint8": np.uint8, "int16": np.int16, "int32": np.int32, "float32": np.float32}


@dataclass(frozen=True)
class TensorSpec:
    dtype: str
    shape: tuple
    scale: float
    zero_point: int

    @property
    def nbytes(self):
        return int(np.prod(self.shape, dtype=np.int64)) * np.dtype(_NP_DTYPES[self.dtype]).itemsize

    @property
    def quantised(self):
        return self.dtype != "float32" and self.scale != 0.0


@dataclass(frozen=True)
class ModelEntry:
    """One served model: ``model_id`` is what devices put in their requests."""

    model_id: str
    path: Path
    reference_path: Path = None


def _extra_dirs():
    dirs = [Path(p) for p in os.environ.get("TINYHOST_MODELS", "").split(os.pathsep) if p]
    dirs.append(Path(__file__).resolve().parents[3].parent / "shared" / "mlperf-tiny")
    return dirs


def resolve_model(spec):
    """``--model`` -> (model id, Path): a name from the model registry (tinyhost.zoo: kws, vww, kws01, ic01, ...),
    a .tflite path, or ``ID=NAME_OR_PATH``. An official model that is not pulled is also looked for under
    $TINYHOST_MODELS and ../shared/mlperf-tiny. Raises UsageError / ModelError from the registry."""
    from .. import zoo
    model_id, _, rest = spec.partition("=") if "=" in spec else ("", "", spec)
    try:
        path = zoo.resolve(rest)
    except (UsageError, ModelError):
        entry = zoo.find(rest)
        found = [d / Path(entry.filename).name for d in _extra_dirs()] if entry else []
        found = [f for f in found if f.is_file()]
        if not found:
            raise
        path = found[0]
    path = Path(path)
    return model_id or (rest if zoo.find(rest) else path.stem), path


def _spec(details):
    q = details.get("quantization_parameters") or {}
    scales = np.asarray(q.get("scales", []), dtype=np.float32)
    zps = np.asarray(q.get("zero_points", []), dtype=np.int64)
    dtype = np.dtype(details["dtype"]).name
    if dtype not in _NP_DTYPES:
        raise ModelError(f"tensor type {dtype} is not supported by offload",
                         hint="offload int8, uint8, int16, int32 or float32 models")
    if len(scales) > 1:
        raise ModelError("per-channel quantised input/output tensors are not supported by offload")
    return TensorSpec(dtype, tuple(int(d) for d in details["shape"]),
                      float(scales[0]) if len(scales) else 0.0, int(zps[0]) if len(zps) else 0)


class _TflmBackend:
    name = "tflm"

    def __init__(self, path):
        from tflite_micro.python.tflite_micro import runtime
        try:
            self.interp = runtime.Interpreter.from_file(str(path))
        except (RuntimeError, ValueError) as e:
            raise ModelError(f"TFLM cannot load {path}: {e}") from None
        self.input = _spec(self.interp.get_input_details(0))
        self.output = _spec(self.interp.get_output_details(0))

    def run(self, x):
        self.interp.set_input(x, 0)
        self.interp.invoke()
        return self.interp.get_output(0)


class _LiteRtBackend:
    name = "litert"

    def __init__(self, path):
        from ai_edge_litert.interpreter import Interpreter
        self.interp = Interpreter(model_path=str(path), num_threads=1)
        self.interp.allocate_tensors()
        self.in_index = self.interp.get_input_details()[0]["index"]
        self.out_index = self.interp.get_output_details()[0]["index"]
        self.input = _spec(self.interp.get_input_details()[0])
        self.output = _spec(self.interp.get_output_details()[0])

    def run(self, x):
        self.interp.set_tensor(self.in_index, x)
        self.interp.invoke()
        return self.interp.get_tensor(self.out_index)


def open_backend(path, backend="auto"):
    """A loaded interpreter for ``path``: TFLM (``tflm``), LiteRT (``litert``) or the first that loads (``auto``)."""
    if backend not in ("auto", "tflm", "litert"):
        raise UsageError(f"unknown backend {backend!r}", hint="use auto, tflm or litert")
    errors = []
    for name, cls in (("tflm", _TflmBackend), ("litert", _LiteRtBackend)):
        if backend not in ("auto", name):
            continue
        try:
            return cls(path)
        except ImportError:
            errors.append(f"{name}: not installed")
        except ModelError as e:
            errors.append(f"{name}: {e.message}")
    raise ModelError(f"no interpreter can run {path} ({'; '.join(errors)})",
                     hint="pip install 'tinyhost[serve]' (TFLM) or 'tinyhost[litert]' (LiteRT, float models)")


def _dequantise(x, spec):
    if not spec.quantised:
        return x.astype(np.float32)
    return (x.astype(np.float32) - spec.zero_point) * spec.scale


def _quantise(real, spec):
    np_dtype = _NP_DTYPES[spec.dtype]
    if not spec.quantised:
        return real.astype(np_dtype)
    info = np.iinfo(np_dtype)
    q = np.round(real / spec.scale) + spec.zero_point
    return np.clip(q, info.min, info.max).astype(np_dtype)


class RequestRejected(Exception):
    """A request does not fit the model; ``status`` is the wire status to answer with."""

    def __init__(self, status, message):
        super().__init__(message)
        self.status = status
        self.message = message


def check_model_file(path, reference=False):
    """Check a model with the project's reader before an interpreter sees it: TFLM trusts the flatbuffer and can
    crash the whole server on a damaged one (an index out of range, a buffer past the end). The device model must
    pass what the board checks (tinyhost.model.inspect); a reference model (often float32, which the board's
    engine does not run) must be a well-formed flatbuffer (the reader's structural checks). Raises ModelError
    naming the fault."""
    from ..model import engine_module, inspect
    path = Path(path)
    if not reference:
        inspect(path, tflm=False)
        return
    engine = engine_module()
    from tinyfw.engine import reader
    if not path.is_file():
        raise UsageError(f"no model file at {path}", hint="give the path of a .tflite file")
    try:
        with open(path, "rb") as f:
            reader.read_model(f, path.stat().st_size)
    except engine.ModelError as e:
        raise ModelError(f"reference model {path}: {e}", hint="give a .tflite file that TFLite can read") from None


def _check_tensor(tensor, spec, what):
    """Raise RequestRejected when ``tensor`` (wire.Tensor) does not match ``spec`` (TensorSpec) exactly."""
    if tensor.dtype != spec.dtype:
        raise RequestRejected(wire.BAD_DTYPE, f"{what}: dtype {tensor.dtype}, expected {spec.dtype}")
    if tuple(tensor.shape) != spec.shape:
        raise RequestRejected(wire.BAD_SHAPE, f"{what}: shape {tuple(tensor.shape)}, expected {spec.shape}")
    if len(tensor.data) != spec.nbytes:
        raise RequestRejected(wire.BAD_SIZE, f"{what}: {len(tensor.data)} bytes, shape {spec.shape} "
                                             f"{spec.dtype} needs {spec.nbytes}")
    if spec.quantised and (tensor.zero_point != spec.zero_point
                           or abs(tensor.scale - spec.scale) > 1e-6 * abs(spec.scale)):
        raise RequestRejected(wire.BAD_QUANT, f"{what}: quantisation scale={tensor.scale} zero_point="
                                              f"{tensor.zero_point}, expected scale={spec.scale} "
                                              f"zero_point={spec.zero_point}")


class ServedRunner:
    """The device model (and its reference) for one worker. Not thread-safe: one per worker thread."""

    def __init__(self, entry, backend="auto", reference_backend="auto"):
        self.entry = entry
        self.model = open_backend(entry.path, backend)
        self.reference = open_backend(entry.reference_path, reference_backend) if entry.reference_path else None
        self.input, self.output = self.model.input, self.model.output
        self._tail = None
        if self.reference is not None:
            ref_in, ref_out = self.reference.input, self.reference.output
            if int(np.prod(ref_in.shape)) != int(np.prod(self.input.shape)) or \
                    int(np.prod(ref_out.shape)) != int(np.prod(self.output.shape)):
                raise ModelError(
                    f"reference model {entry.reference_path} takes {ref_in.shape} -> {ref_out.shape} but the device "
                    f"model {entry.path} takes {self.input.shape} -> {self.output.shape}",
                    hint="the reference model must have the same number of input and output elements")

    def check(self, tensor):
        """Raise RequestRejected when ``tensor`` (wire.Tensor) is not this model's input."""
        _check_tensor(tensor, self.input, f"input of model {self.entry.model_id}")

    def split_tail(self):
        """The device model's tails for split requests (tinyhost.split.Tail: the engine on this host, bit-exact
        with the board's), loaded at the first split request; each split point is prepared once and cached."""
        if self._tail is None:
            from ..split import Tail
            self._tail = Tail(self.entry.path)
        return self._tail

    def check_split(self, request):
        """Raise RequestRejected when a wire.SplitRequest does not carry the tensors alive at its split point."""
        splits = self.split_tail().splits
        n = len(splits.operators)
        point = next((p for p in splits.points if p.k == request.k), None)
        if point is None or not 0 < request.k < n:
            raise RequestRejected(wire.BAD_SPLIT, f"model {self.entry.model_id} has no split point {request.k} "
                                                  f"(1..{n - 1})")
        if len(request.tensors) != len(point.tensors):
            raise RequestRejected(wire.BAD_SPLIT, f"split point {request.k} sends {len(point.tensors)} tensors, "
                                                  f"not {len(request.tensors)}")
        for got, want in zip(request.tensors, point.tensors):
            _check_tensor(got, TensorSpec(want.dtype, want.shape, want.scale, want.zero_point),
                          f"split point {request.k}: tensor {want.name!r}")

    def run_split(self, request):
        """(output bytes, compute µs) of the tail from a checked split request."""
        tail = self.split_tail()
        t0 = time.perf_counter_ns()
        out = tail.run(request.k, [t.data for t in request.tensors])
        return out, (time.perf_counter_ns() - t0) // 1000

    def run(self, tensor, use_reference):
        """(output bytes, compute µs) for a checked request tensor. The output has the device model's layout."""
        x = np.frombuffer(tensor.data, dtype=_NP_DTYPES[self.input.dtype]).reshape(self.input.shape)
        t0 = time.perf_counter_ns()
        if use_reference:
            ref = self.reference
            x_ref = _quantise(_dequantise(x, self.input), ref.input).reshape(ref.input.shape)
            y_ref = ref.run(x_ref)
            y = _quantise(_dequantise(np.asarray(y_ref), ref.output), self.output)
        else:
            y = self.model.run(x)
        compute_us = (time.perf_counter_ns() - t0) // 1000
        return np.ascontiguousarray(y, dtype=_NP_DTYPES[self.output.dtype]).tobytes(), compute_us
