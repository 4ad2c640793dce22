"""The bit-exactness oracle: TensorFlow Lite Micro's own interpreter (``tflite-micro`` package) on the host.

``TflmOracle(path).run(x)`` returns TFLM's int8 output for one input; ``tflm_arena(path)`` returns TFLM's arena
figures from its RecordingMicroAllocator (``print_allocations()``): the *head* is the non-persistent part, where
TFLM's greedy planner places activations and scratch buffers; that is the figure our planner is compared with.
"""

import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ModelError, UsageError


def _runtime():
    try:
        from tflite_micro.python.tflite_micro import runtime
    except ImportError:
        raise UsageError("the TFLM oracle needs the tflite-micro package",
                         hint="pip install 'tinyhost[oracle]'") from None
    return runtime


def available():
    try:
        _runtime()
    except UsageError:
        return False
    return True


class TflmOracle:
    """TFLM's interpreter on one model; ``run(x)`` -> output array of the first output (or ``index``)."""

    def __init__(self, model, arena_size=None):
        runtime = _runtime()
        data = Path(model).read_bytes() if not isinstance(model, (bytes, bytearray)) else bytes(model)
        try:
            self._it = runtime.Interpreter.from_bytes(data, arena_size=arena_size or max(len(data) * 4, 1 << 20))
        except (RuntimeError, ValueError) as e:
            raise ModelError(f"TFLM cannot load the model: {e}",
                             hint="check the model with `tinyhost model inspect`") from None
        self.input_details = [self._it.get_input_details(0)]
        self.output_details = [self._it.get_output_details(0)]

    def run(self, x, index=0):
        x = np.asarray(x, dtype=self.input_details[0]["dtype"]).reshape(self.input_details[0]["shape"])
        self._it.set_input(x, 0)
        self._it.invoke()
        return np.array(self._it.get_output(index))


@dataclass(frozen=True)
class TflmArena:
    total_bytes: int
    head_bytes: int       # non-persistent: activations + scratch, planned by TFLM's GreedyMemoryPlanner
    tail_bytes: int       # persistent: TFLM's tensor structs, per-channel params, node registrations


def tflm_arena(model):
    """TFLM's arena usage for the model (bytes or path), from print_allocations() after one invoke."""
    runtime = _runtime()
    data = Path(model).read_bytes() if not isinstance(model, (bytes, bytearray)) else bytes(model)
    it = runtime.Interpreter.from_bytes(data, arena_size=max(len(data) * 4, 1 << 20))
    details = it.get_input_details(0)
    it.set_input(np.zeros(details["shape"], dtype=details["dtype"]), 0)
    it.invoke()
    with tempfile.TemporaryFile(mode="w+b") as capture:
        saved = os.dup(2)
        try:
            os.dup2(capture.fileno(), 2)
            it.print_allocations()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        capture.seek(0)
        text = capture.read().decode("utf-8", "replace")

    def figure(label):
        m = re.search(rf"Arena allocation {label} (\d+) bytes", text)
        if not m:
            raise RuntimeError(f"could not read TFLM's arena {label} from print_allocations(): {text[:200]!r}")
        return int(m.group(1))

    return TflmArena(figure("total"), figure("head"), figure("tail"))
