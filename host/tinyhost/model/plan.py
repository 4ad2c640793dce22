"""Load plans: a model's load-time work, done on the host with the firmware's own engine code.

``build_plan(path)`` parses, validates, prepares and plans a ``.tflite`` exactly as the board would (the same
``tinyfw.engine`` modules, run under CPython) and packs the result into the plan format of
``device/tinyfw/engine/plan_read.py``. ``tinyhost flash`` puts it next to the model (``MODEL.tflite`` ->
``MODEL.plan``); the board then loads the model with its small plan loader instead of parsing the flatbuffer,
which is what lets the MLPerf Tiny models load within an ESP32's heap. The ``.tflite`` is never changed (the plan
sits beside it, so removing the plan restores the original set-up), and the board only uses a plan whose recorded
sha256 equals its model file's and whose own trailing sha256 checks out (docs/engine.md, "Load plans").
"""

import hashlib
import io
import struct
from dataclasses import dataclass
from pathlib import Path

from .. import paths
from ..atomic import write_bytes_atomic
from ..errors import ModelError
from . import engine_module

# Engine modules whose code decides a plan's contents: a cached plan is rebuilt when any of them changes.
_PLAN_SOURCES = ("model_prepare.py", "reader.py", "op_prepare.py", "arena_layout.py", "quant.py", "params.py",
                 "plan_write.py", "plan_check.py", "plan_read.py")


@dataclass(frozen=True)
class PlanHeader:
    version: int
    model_sha256: str
    model_bytes: int
    arena_bytes: int
    macs: int
    ops: int
    channel_data_bytes: int
    filter_bytes: int
    largest_filter_bytes: int
    arena_streamed_bytes: int      # tensor arena with the work area each operator needs, weights streamed
    arena_ram_bytes: int           # the same with weights in RAM
    max_channels: int
    inputs: int
    outputs: int


def plan_remote_path(model_remote):
    """The board path of a model's plan (the firmware's rule, ``tinyfw.engine.plan_path``)."""
    return engine_module().plan_path(model_remote)


def build_plan(tflite_path):
    """The load plan of the model at ``tflite_path`` (bytes). Raises tinyhost.errors.ModelError for a bad model."""
    engine = engine_module()
    from tinyfw.engine import model_prepare, plan_write, plan_check

    path = Path(tflite_path)
    try:
        with open(path, "rb") as f:
            recipe = model_prepare.prepare(f)
            digest = plan_check.model_sha256(f, recipe.model_bytes)
    except engine.ModelError as e:
        raise ModelError(f"{path}: {e}", hint="the model must be an int8 .tflite file using only the supported "
                                               "operators (see docs/engine.md)") from None
    out = io.BytesIO()
    plan_write.write(recipe, digest, out)
    return out.getvalue()


def copy_with_plan(model_src, dest_dir):
    """Copy the model at ``model_src`` into ``dest_dir`` with its load plan beside it, as `tinyhost flash --model`
    leaves them on a board; returns the copy's path."""
    model = Path(dest_dir) / Path(model_src).name
    model.write_bytes(Path(model_src).read_bytes())
    model.with_suffix(".plan").write_bytes(build_plan(model))
    return model


def read_header(plan):
    """:class:`PlanHeader` of plan bytes; ModelError when they are not a plan."""
    engine_module()
    from tinyfw.engine import plan_check

    if len(plan) < plan_check.HEADER_BYTES or plan[:4] != plan_check.MAGIC:
        raise ModelError("not a tinyhost load plan", hint="build one with tinyhost.model.plan.build_plan")
    h = struct.unpack(plan_check.HEADER_FMT, plan[:plan_check.HEADER_BYTES])
    return PlanHeader(version=h[1], model_sha256=h[3].hex(), model_bytes=h[4], arena_bytes=h[5], macs=h[6],
                      ops=h[7], channel_data_bytes=h[10], filter_bytes=h[11], largest_filter_bytes=h[12],
                      arena_streamed_bytes=h[13], arena_ram_bytes=h[14], max_channels=h[15], inputs=h[16],
                      outputs=h[17])


def _engine_digest():
    from ..paths import firmware_dir

    digest = hashlib.sha256()
    root = Path(firmware_dir()) / "tinyfw" / "engine"
    for name in _PLAN_SOURCES:
        digest.update((root / name).read_bytes())
    return digest.hexdigest()[:16]


def cache_dir():
    return paths.cache_dir("plan")


def plan_file(tflite_path, cache=None):
    """A file holding the plan of ``tflite_path`` (cached by model sha256 and engine code), for flashing."""
    path = Path(tflite_path)
    model_digest = hashlib.sha256(path.read_bytes()).hexdigest()
    # the digests name the plan; the stem, cut short, only helps a reader (a long one would pass NAME_MAX)
    target = Path(cache or cache_dir()) / f"{path.stem[:48]}-{model_digest[:16]}-{_engine_digest()}.plan"
    if not target.is_file() or not _current_format(target):
        target.parent.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(target, build_plan(path))
    return target


def _current_format(plan_path):
    """Whether the cached plan at plan_path has the format the engine in this process writes (a process that
    imported older engine code than the files now on disk could have cached a plan under the new key)."""
    engine_module()             # the firmware directory on sys.path
    from tinyfw.engine import plan_check

    with open(plan_path, "rb") as f:
        head = f.read(6)
    return (len(head) == 6 and head[:4] == plan_check.MAGIC
            and struct.unpack("<H", head[4:])[0] == plan_check.PLAN_VERSION)
