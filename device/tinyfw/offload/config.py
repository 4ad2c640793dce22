# tinyfw.offload.config: the board's /offload.json -- its fields, their defaults and checks (docs/offload.md).
# The Predictor imports this module to check a config and drops it again; the host (tinyhost.offload.board)
# imports it under CPython so that it checks configs exactly as the board does.
import json
import os
from binascii import unhexlify

CONFIG_PATH = "/offload.json"
DEFAULTS = {"mode": "off", "server": "", "transport": "tcp", "model_id": "", "device_id": "", "key": "",
            "threshold": 0.8, "timeout_ms": 1000, "retries": 1, "retry_after_ms": 2000, "want": "default",
            "config_check_ms": 1000, "split": {}}
MODES = ("off", "on", "auto", "split")


def check_config(cfg):
    # Returns the config with defaults filled in; raises ValueError naming the bad field.
    out = dict(DEFAULTS)
    for k in cfg:
        if k not in DEFAULTS:
            raise ValueError("unknown field %r in the offload config" % k)
        out[k] = cfg[k]
    if out["mode"] not in MODES:
        raise ValueError("mode must be one of off, on, auto, split, not %r" % (out["mode"],))
    if out["transport"] not in ("tcp", "serial"):
        raise ValueError("transport must be tcp or serial")
    if out["want"] not in ("default", "model", "reference"):
        raise ValueError("want must be default, model or reference")
    if not 0.0 <= float(out["threshold"]) <= 1.0:
        raise ValueError("threshold must be within 0..1")
    for k, hi in (("timeout_ms", 60000), ("retries", 5), ("retry_after_ms", 3600000), ("config_check_ms", 3600000)):
        if not isinstance(out[k], int) or not 0 <= out[k] <= hi:
            raise ValueError("%s must be an integer within 0..%d" % (k, hi))
    for k in ("server", "model_id", "device_id", "key"):
        if not isinstance(out[k], str):
            raise ValueError("%s must be a string" % k)
    if out["mode"] != "off":
        if out["transport"] == "tcp" and ":" not in out["server"]:
            raise ValueError("server must be HOST:PORT for the tcp transport")
        if not out["model_id"] or not out["device_id"]:
            raise ValueError("model_id and device_id are needed to offload")
    if out["mode"] == "split":
        split_point(out["split"])
    if out["key"]:
        try:
            unhexlify(out["key"])
        except ValueError:
            raise ValueError("key must be hex digits (tinyhost offload keygen makes one)")
    return out


def split_point(split):
    # The split point a "split" config runs: (k, engine step, tensors), each tensor a list [arena offset, bytes,
    # scale, zero point, dims...]. split: {"at": k or "auto", "link": the link the board is on now, "best": {link:
    # k} (the plan's best k per link, for "auto"), "points": {"k": [step, tensors]}} (tinyhost.split writes it).
    if not isinstance(split, dict):
        raise ValueError("split must be an object (tinyhost offload split writes it)")
    at = split.get("at")
    points = split.get("points")
    if not isinstance(points, dict):
        raise ValueError("split.points must be an object")
    if at == "auto":
        best = split.get("best")
        link = split.get("link")
        if not isinstance(best, dict) or link not in best:
            raise ValueError("split.best has no split point for link %r" % (link,))
        at = best[link]
    if not isinstance(at, int) or str(at) not in points:
        raise ValueError("split.at must be a split point in split.points or \"auto\", not %r" % (at,))
    point = points[str(at)]
    if not isinstance(point, list) or len(point) != 2 or not isinstance(point[0], int) or point[0] < 1:
        raise ValueError("split point %d must be [step, tensors]" % at)
    tensors = point[1]
    if not isinstance(tensors, list) or not 1 <= len(tensors) <= 255:
        raise ValueError("split point %d must send 1..255 tensors" % at)
    for t in tensors:
        if (not isinstance(t, list) or not 5 <= len(t) <= 12 or not all(isinstance(v, int) for v in t[:2] + t[3:])
                or not isinstance(t[2], (int, float)) or t[0] < 0 or t[1] < 1):
            raise ValueError("a tensor of split point %d is not [offset, bytes, scale, zero point, dims...]" % at)
    return at, point[0], tensors


def load_config(path=CONFIG_PATH):
    # The board's config, defaults filled in; a missing file means mode "off". Raises ValueError/OSError if bad.
    try:
        with open(path) as f:
            raw = json.load(f)
    except OSError:
        return dict(DEFAULTS)
    if not isinstance(raw, dict):
        raise ValueError("the offload config must be a JSON object")
    return check_config(raw)


def save_config(cfg, path=CONFIG_PATH):
    # Checked, then written atomically: path.part first, renamed over path.
    cfg = check_config(cfg)
    tmp = path + ".part"
    with open(tmp, "w") as f:
        json.dump(cfg, f)
    try:
        os.rename(tmp, path)            # littlefs and unix replace the old file in one step
    except OSError:
        os.remove(path)
        os.rename(tmp, path)
    return cfg
