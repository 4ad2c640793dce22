# tinyfw.offload: one predict() for local and offloaded inference, chosen by /offload.json.
#
#   from tinyfw.offload import Predictor
#   p = Predictor(model)                  # model: an engine Model (input_buffer/invoke/output_buffer)
#   out, info = p.predict(input_bytes)    # local, remote or "auto", as the board's config says
#
# Modes: "off" (always local), "on" (always offload; local on timeout or error, counted as a fallback) and
# "auto" (local first; offload only when the local top-1 confidence is below "threshold"). The config file
# survives a reset; a Predictor re-reads it when it changes (checked at most every config_check_ms), so
# `tinyhost offload on|off|auto` switches a running board. Plain MicroPython: ESP32, nRF52840, the unix VM.
import json
import os
import struct

from .frames import (CONFIG_PATH, DEFAULTS, DTYPES, E_CONFIG, E_DOWN, E_FRAME, E_LINK, E_TIMEOUT, MODES, WANTS,
                     AUTH_REQUIRED, Hmac, Offloader, OffloadError, crc32, ticks_add, ticks_diff, ticks_ms,
                     ticks_us, unhexlify)
from .links import StreamLink, TcpLink

def check_config(cfg):
    # Returns the config with defaults filled in; raises ValueError naming the bad field.
    out = dict(DEFAULTS)
    for k in cfg:
        if k not in DEFAULTS:
            raise ValueError("unknown field %r in the offload config" % k)
        out[k] = cfg[k]
    if out["mode"] not in MODES:
        raise ValueError("mode must be one of off, on, auto, not %r" % (out["mode"],))
    if out["transport"] not in ("tcp", "serial"):
        raise ValueError("transport must be tcp or serial")
    if out["want"] not in WANTS:
        raise ValueError("want must be default, model or reference")
    if not 0.0 <= float(out["threshold"]) <= 1.0:
        raise ValueError("threshold must be within 0..1")
    for k, hi in (("timeout_ms", 60000), ("retries", 5), ("retry_after_ms", 3600000), ("config_check_ms", 3600000)):
        if not isinstance(out[k], int) or not 0 <= out[k] <= hi:
            raise ValueError("%s must be an integer within 0..%d" % (k, hi))
    if out["mode"] != "off":
        if out["transport"] == "tcp" and ":" not in out["server"]:
            raise ValueError("server must be HOST:PORT for the tcp transport")
        if not out["model_id"] or not out["device_id"]:
            raise ValueError("model_id and device_id are needed to offload")
    if out["key"]:
        unhexlify(out["key"])
    return out


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
    # Atomic: write path.part, then rename over path.
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


def _file_stamp(path):
    try:
        st = os.stat(path)
        return (st[6], st[8])           # size, mtime
    except OSError:
        return None


def top1(buf, dtype, scale, zero_point):
    # (index, real value) of the largest element of an output tensor.
    n = len(buf) // DTYPES[dtype][1]
    best_i = 0
    if dtype == "float32":
        best = struct.unpack_from("<f", buf, 0)[0]
        for i in range(1, n):
            v = struct.unpack_from("<f", buf, 4 * i)[0]
            if v > best:
                best, best_i = v, i
        return best_i, best
    if dtype in ("int8", "uint8"):
        signed = dtype == "int8"
        best = -1000
        for i in range(n):
            v = buf[i]
            if signed and v > 127:
                v -= 256
            if v > best:
                best, best_i = v, i
    else:
        fmt = "<" + DTYPES[dtype][2]
        best = struct.unpack_from(fmt, buf, 0)[0]
        for i in range(1, n):
            v = struct.unpack_from(fmt, buf, DTYPES[dtype][1] * i)[0]
            if v > best:
                best, best_i = v, i
    return best_i, (best - zero_point) * scale if scale else float(best)


class Info:
    # What one predict() did; the same object is reused (read it before the next predict()).
    def __init__(self):
        self.reset()

    def reset(self):
        self.source = "local"           # local | model | reference  (model/reference: answered by the server)
        self.offloaded = False          # a remote answer was used
        self.fallback = False           # wanted remote, answered locally
        self.error = 0                  # last remote error code (wire status or E_*), 0 = none
        self.retries = 0
        self.confidence = None          # local top-1 confidence (auto mode)
        self.local_us = 0
        self.serialise_us = 0
        self.send_us = 0
        self.wait_us = 0                # request sent -> reply header in (network + server)
        self.receive_us = 0             # rest of the reply in
        self.parse_us = 0
        self.server_queue_us = 0
        self.server_compute_us = 0
        self.total_us = 0
        self.request_bytes = 0
        self.reply_bytes = 0

    def as_dict(self):
        return {k: getattr(self, k) for k in (
            "source", "offloaded", "fallback", "error", "retries", "confidence", "local_us", "serialise_us",
            "send_us", "wait_us", "receive_us", "parse_us", "server_queue_us", "server_compute_us", "total_us",
            "request_bytes", "reply_bytes")}


class Predictor:
    # The one predict API: local, remote or auto, as config (a dict, or read from config_path) says.
    def __init__(self, model, config=None, config_path=CONFIG_PATH, link=None):
        self.model = model
        self.config_path = config_path
        self.link = link
        self.info = Info()
        self.in_info = model.inputs[0]
        self.out_info = model.outputs[0]
        self.offloader = None
        self.predictions = 0
        self.offloaded = 0
        self.fallbacks = 0
        self.retries = 0
        self.errors = {}
        self.config_error = None
        self._down_until = None
        self._stamp = None
        self._checked_ms = ticks_ms()
        self.watch = config is None     # an explicit config is not replaced by the file's
        if config is not None:
            self._apply(check_config(config))
        else:
            self.reload()

    def reload(self):
        # Re-read the config file (called by itself when the file changes).
        self._stamp = _file_stamp(self.config_path)
        try:
            cfg = load_config(self.config_path)
            self.config_error = None
        except (ValueError, TypeError, OSError) as e:
            cfg = dict(DEFAULTS)
            self.config_error = str(e)
            self.errors[E_CONFIG] = self.errors.get(E_CONFIG, 0) + 1
        self._apply(cfg)

    def _apply(self, cfg):
        if self.offloader is not None:
            self.offloader.close()
            self.offloader = None
        self.cfg = cfg
        self.mode = cfg["mode"]
        self._down_until = None
        if self.mode != "off":
            self.offloader = Offloader(cfg, self.in_info, self.out_info, self.link)

    def set_mode(self, mode, threshold=None, save=True):
        cfg = dict(self.cfg)
        cfg["mode"] = mode
        if threshold is not None:
            cfg["threshold"] = threshold
        cfg = save_config(cfg, self.config_path) if save else check_config(cfg)
        self._apply(cfg)
        self._stamp = _file_stamp(self.config_path)

    def _maybe_reload(self):
        if not self.watch:
            return
        every = self.cfg["config_check_ms"] if self.cfg else 1000
        now = ticks_ms()
        if ticks_diff(now, self._checked_ms) < every:
            return
        self._checked_ms = now
        if _file_stamp(self.config_path) != self._stamp:
            self.reload()

    def _local(self, data, info):
        t = ticks_us()
        buf = self.model.input_buffer(0)
        if len(data) != len(buf):
            raise ValueError("input is %d bytes, the model takes %d" % (len(data), len(buf)))
        buf[:] = data
        self.model.invoke()
        out = self.model.output_buffer(0)
        info.local_us = ticks_diff(ticks_us(), t)
        return out

    def _remote(self, data, info):
        # memoryview of the remote answer, or None after a failure (counted; info.error says which).
        if self._down_until is not None and ticks_diff(self._down_until, ticks_ms()) > 0:
            info.error = E_DOWN
            self._count_error(E_DOWN)
            return None
        attempts = 1 + self.cfg["retries"]
        for attempt in range(attempts):
            try:
                out = self.offloader.predict_into(data, info)
                self._down_until = None
                return out
            except OffloadError as e:
                code = e.code
            except OSError as e:
                code = E_TIMEOUT if (e.args and e.args[0] in (11, 110, 116)) else E_LINK
            self.offloader.close()
            info.error = code
            self._count_error(code)
            # A timeout has used up the time budget; a broken link or lost session gets a fresh connection.
            if code not in (E_LINK, E_FRAME, AUTH_REQUIRED) or attempt + 1 == attempts:
                break
            info.retries += 1
            self.retries += 1
        self._down_until = ticks_add(ticks_ms(), self.cfg["retry_after_ms"])
        return None

    def _count_error(self, code):
        self.errors[code] = self.errors.get(code, 0) + 1

    def predict(self, data):
        # (output memoryview, Info). The output is valid until the next predict().
        self._maybe_reload()
        info = self.info
        info.reset()
        t0 = ticks_us()
        self.predictions += 1
        out = None
        if self.mode == "on":
            out = self._remote(data, info)
        elif self.mode == "auto":
            local = self._local(data, info)
            o = self.out_info
            info.confidence = top1(local, o.dtype, o.scale, o.zero_point)[1]
            if info.confidence >= self.cfg["threshold"]:
                info.total_us = ticks_diff(ticks_us(), t0)
                return local, info
            out = self._remote(data, info)
            if out is None:
                info.source = "local"
                out = local
                info.fallback = True
                self.fallbacks += 1
            else:
                info.offloaded = True
                self.offloaded += 1
            info.total_us = ticks_diff(ticks_us(), t0)
            return out, info
        if out is not None:
            info.offloaded = True
            self.offloaded += 1
        else:
            if self.mode == "on":
                info.fallback = True
                self.fallbacks += 1
            info.source = "local"
            out = self._local(data, info)
        info.total_us = ticks_diff(ticks_us(), t0)
        return out, info

    def counters(self):
        return {"mode": self.mode, "predictions": self.predictions, "offloaded": self.offloaded,
                "fallbacks": self.fallbacks, "retries": self.retries, "errors": dict(self.errors),
                "reconnects": self.offloader.reconnects if self.offloader else 0,
                "nodelay": bool(self.offloader and self.offloader.link.nodelay),
                "config_error": self.config_error}

    def close(self):
        if self.offloader is not None:
            self.offloader.close()


__all__ = ("Predictor", "Offloader", "OffloadError", "Info", "Hmac", "TcpLink", "StreamLink", "crc32", "top1",
           "check_config", "load_config", "save_config", "CONFIG_PATH", "DEFAULTS", "MODES")
