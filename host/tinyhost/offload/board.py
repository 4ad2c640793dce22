"""Offload on a board, through the host client (tinyhost.client.Device): its config file and measured runs.

``configure`` writes /offload.json on the board (atomically, via ``Device.put_file``); the board's Predictor picks
the change up by itself, and the file survives a reset. ``run_predictions`` runs the board's own Predictor on a
list of inputs and returns each output with its per-request Info record: what ``tinyhost bench --offload`` feeds
to ``tinyhost.offload.metrics``.
"""

import json
import sys
from dataclasses import dataclass

from ..errors import DeviceError, UsageError
from ..paths import firmware_dir

CONFIG_PATH = "/offload.json"
INPUTS_PATH = "/offload_inputs.bin"


def device_module():
    """The board's tinyfw.offload, imported here under CPython (it validates configs the board's way)."""
    try:
        from tinyfw import offload
    except ImportError:
        sys.path.insert(0, str(firmware_dir()))
        from tinyfw import offload
    return offload


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


def configure(dev, **changes):
    """Merge ``changes`` (config fields; None = keep) into the board's config, check it, write it atomically.
    Returns the new config."""
    cfg = read_config(dev) or dict(device_module().DEFAULTS)
    cfg.update({k: v for k, v in changes.items() if v is not None})
    cfg = check_config(cfg)
    dev.put_file(json.dumps(cfg).encode(), CONFIG_PATH)
    return cfg


def redacted(cfg):
    return {k: ("<set>" if k == "key" and v else v) for k, v in cfg.items()}


@dataclass(frozen=True)
class BoardRun:
    outputs: list            # bytes per input
    records: list            # Info dicts per input (device/tinyfw/offload Info.as_dict())
    counters: dict           # the Predictor's counters after the run
    wall_s: float            # board clock, whole loop


_RUN_CODE = """
import json, time
from tinyfw import engine
from tinyfw.offload import Predictor
m = engine.load(%(model)r, backend=%(backend)r)
p = Predictor(m, %(config)s, config_path=%(config_path)r)
buf = bytearray(%(nbytes)d)
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
    dev.stop()
    try:
        dev.repl.enter()
        dev.repl.soft_reset()          # a clean heap: the runtime's buffers and modules are gone
        text = dev.repl.exec(code, timeout_s=timeout_s).decode(errors="replace")
    finally:
        try:
            dev.repl.soft_reset()      # whatever the run left behind, the runtime gets a clean heap
        finally:
            dev.start()
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
