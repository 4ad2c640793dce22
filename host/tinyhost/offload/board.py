"""Offload on a board, through the host client (tinyhost.client.Device): its config file and measured runs.

``configure`` writes /offload.json on the board (atomically, via ``Device.put_file``); the runtime picks the change
up by itself (at the next model load, or within ``config_check_ms``), and the file survives a reset.
``infer_with_info`` is the runtime's INFER with the offload record asked for: which path answered (local, the
server's model or its reference, a fallback) and each stage's time -- what ``tinyhost bench --offload`` feeds to
``tinyhost.offload.metrics``. ``run_predictions`` runs the board's own Predictor on a list of inputs from a script
through the raw REPL (no runtime in between; the overhead benchmark uses it).
"""

import json
import math
import sys
from dataclasses import dataclass

from ..errors import DeviceError, ProtocolError, UsageError
from ..flash import MODELS_DIR
from ..paths import firmware_dir
from .metrics import OffloadRecord

CONFIG_PATH = "/offload.json"
INPUTS_PATH = "/offload_inputs.bin"


def device_module():
    """The board's tinyfw.offload.config, imported here under CPython: configs are checked the board's way."""
    try:
        from tinyfw.offload import config
    except ImportError:
        sys.path.insert(0, str(firmware_dir()))
        from tinyfw.offload import config
    return config


def check_config(cfg):
    try:
        return device_module().check_config(cfg)
    except (ValueError, TypeError) as e:
        raise UsageError(f"offload config: {e}", hint="see `tinyhost offload on --help` and docs/offload.md") from None


def read_config(dev):
    """The board's offload config (defaults filled in), or None when it has none."""
    if dev.file_hash(CONFIG_PATH) is None:
        return None
    try:
        raw = json.loads(dev.get_file(CONFIG_PATH))
    except ValueError as e:
        raise DeviceError(f"{CONFIG_PATH} on the board is not valid JSON: {e}",
                          hint="overwrite it with `tinyhost offload on|off|auto`") from None
    return check_config(raw)


def live_warning(dev):
    """Why the running board does not offload although its config asks for it (e.g. "offload is off: out of
    memory: N bytes free next to the model; it runs locally"), from its STATS; None when it has not said so."""
    text = str(dev.stats().get("last_error") or "")
    return text if text.startswith("offload ") else None


def configure(dev, **changes):
    """Merge ``changes`` (config fields; None = keep) into the board's config, check it, write it atomically.
    Returns the new config."""
    cfg = read_config(dev) or dict(device_module().DEFAULTS)
    cfg.update({k: v for k, v in changes.items() if v is not None})
    cfg = check_config(cfg)
    dev.put_file(json.dumps(cfg).encode(), CONFIG_PATH)
    return cfg


def default_ids(dev, cfg):
    """(model id, device id) for a board whose config names none.

    The model id: the stem of the board's boot model (``tinyhost flash --boot-model``), else of the only model in
    /models or /rom/models -- what ``tinyhost serve --model NAME`` calls it. The device id: the board's name and its
    chip's unique id (``esp32-a1b2c3d4e5f6``; the virtual board's is derived from its flash image), the board's name
    alone where the chip has none. UsageError when the board has no model, or several and no boot model."""
    from ..romfs import MOUNT_POINT

    info = dev.info()
    device_id = cfg.get("device_id") or "-".join(x for x in (info.board, info.unique_id) if x) or None
    model_id = cfg.get("model_id") or None
    if not model_id and info.boot_model:
        model_id = _stem(info.boot_model)
    if not model_id:
        names = []
        for folder in (MODELS_DIR, MOUNT_POINT + MODELS_DIR):
            try:
                names += [e.name for e in dev.list_files(folder) if not e.is_dir and e.name.endswith(".tflite")]
            except DeviceError:
                pass
        if len(names) != 1:
            found = f"several models ({', '.join(sorted(_stem(n) for n in names))})" if names else "no model"
            raise UsageError(f"the board has {found} in {MODELS_DIR}: which model id does the server serve?",
                             hint="pass --model-id ID (what `tinyhost serve --model ID=...` serves), or name the "
                                  "board's model with `tinyhost flash --boot-model NAME`")
        model_id = _stem(names[0])
    return model_id, device_id


def _stem(path):
    name = path.rsplit("/", 1)[-1]
    return name[:-len(".tflite")] if name.endswith(".tflite") else name


def restore_config(dev, previous):
    """Put back the config ``read_config`` returned before a run (None: the board had no file)."""
    if previous is None:
        if dev.file_hash(CONFIG_PATH) is not None:
            dev.remove(CONFIG_PATH)
    else:
        dev.put_file(json.dumps(previous).encode(), CONFIG_PATH)


SOURCES = ("local", "model", "reference")
MODES = ("off", "on", "auto", "split")
_INFO_TIMES = ("local_us", "serialise_us", "send_us", "wait_us", "receive_us", "parse_us", "server_queue_us",
               "server_compute_us", "total_us", "request_bytes", "reply_bytes")


@dataclass(frozen=True)
class InferInfo:
    output: bytes
    time_us: int             # the whole prediction on the board's clock (local invoke, or the Predictor's total)
    mode: str                # the board's offload mode when it answered: off | on | auto
    record: OffloadRecord    # which path answered and each stage's time


def infer_with_info(dev, data, output_bytes=None, timeout_s=120.0):
    """The runtime's INFER (local or through the board's Predictor, as /offload.json says) with its record."""
    time_us, info, output = dev.infer_with_info(data, timeout_s=timeout_s)
    if output_bytes is not None and len(output) != output_bytes:
        raise ProtocolError(f"INFER reply has {len(output)} output bytes, the model's output has {output_bytes}")
    source, flags, error, retries, mode, confidence, *times = info
    record = OffloadRecord(source=SOURCES[source] if source < len(SOURCES) else "local",
                           offloaded=bool(flags & 1), fallback=bool(flags & 2), error=error, retries=retries,
                           confidence=None if math.isnan(confidence) else confidence, **dict(zip(_INFO_TIMES, times)))
    return InferInfo(output, time_us, MODES[mode] if mode < len(MODES) else "off", record)


def redacted(cfg):
    return {k: ("<set>" if k == "key" and v else v) for k, v in cfg.items()}


@dataclass(frozen=True)
class BoardRun:
    outputs: list            # bytes per input
    records: list            # Info dicts per input (tinyfw.offload Info.as_dict())
    counters: dict           # the Predictor's counters after the run
    wall_s: float            # board clock, whole loop


_RUN_CODE = """
import json, time
from tinyfw import engine
from tinyfw.offload import Predictor
m = engine.load(%(model)r, backend=%(backend)r)
p = Predictor(m, %(config)s, config_path=%(config_path)r)
buf = m.input_buffer(0)      # each input straight into the model's input tensor: no buffer of its size
t0 = time.ticks_ms()
with open(%(inputs)r, "rb") as f:
    for i in range(%(count)d):
        f.readinto(buf)
        out, info = p.predict(buf)
        print("OFF", bytes(out).hex(), json.dumps(info.as_dict()))
print("OFFEND", time.ticks_diff(time.ticks_ms(), t0), json.dumps(p.counters()))
p.close(); m.close()
"""


def run_predictions(dev, model_path, inputs, config=None, backend="auto", timeout_s=600.0):
    """Run the board's Predictor on ``inputs`` (bytes each) with the model at ``model_path`` on the board.

    ``config`` (a dict) overrides the board's /offload.json for this run only. The board must have tinyfw with its
    engine on its filesystem. Leaves the runtime running again afterwards.
    """
    if not inputs:
        raise UsageError("no inputs to run")
    nbytes = len(inputs[0])
    if any(len(x) != nbytes for x in inputs):
        raise UsageError("all inputs must have the same size")
    if config is not None:
        config = check_config(config)
    dev.put_file(b"".join(bytes(x) for x in inputs), INPUTS_PATH)
    code = _RUN_CODE % {"model": model_path, "backend": backend, "config": repr(config), "config_path": CONFIG_PATH,
                        "nbytes": nbytes, "inputs": INPUTS_PATH, "count": len(inputs)}
    with dev.raw_repl(fresh=True) as repl:     # a clean heap: the runtime's buffers and modules are gone
        try:
            text = repl.exec(code, timeout_s=timeout_s).decode(errors="replace")
        finally:
            repl.soft_reset()          # whatever the run left behind, the runtime gets a clean heap
    try:
        dev.remove(INPUTS_PATH)
    except DeviceError:
        pass
    return parse_run_output(text)


def parse_run_output(text):
    outputs, records, counters, wall_ms = [], [], None, None
    for line in text.splitlines():
        if line.startswith("OFF "):
            _, hex_out, info = line.split(" ", 2)
            outputs.append(bytes.fromhex(hex_out))
            records.append(json.loads(info))
        elif line.startswith("OFFEND "):
            _, ms, counters = line.split(" ", 2)
            wall_ms, counters = int(ms), json.loads(counters)
    if counters is None:
        raise DeviceError(f"the board's offload run did not finish: {text[-300:]!r}")
    return BoardRun(outputs, records, counters, wall_ms / 1000.0)
