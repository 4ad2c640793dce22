"""Offload overhead on loopback: end-to-end latency minus server compute, measured by the board side.

The device side is device/tinyfw/offload's Predictor (mode "on"), talking over a real TCP socket (TCP_NODELAY,
persistent) to `tinyhost serve`'s server on 127.0.0.1 (TFLM). Per request the device clock splits the time into
serialise, send, wait (network + server), receive and parse; the server reports its queue and compute time.

* ``--via sim`` (default): the virtual board. tinyfw and a small model with the kws input (1x49x10x1 int8, a
  pooling + fully-connected body, random weights, so it fits the emulated heap) are flashed to a VirtualBoard;
  the board's own Predictor runs over the real engine through `tinyhost.offload.board.run_predictions`, and the
  server serves the same model.
* ``--via vm``: the MicroPython unix VM started directly (no pty, no runtime) with the MLPerf Tiny kws model on the
  server: the same offload code path without the board layer.

Target: overhead p50 <= 1 ms. The printed numbers are those measured in this run.

    nice -n 19 python benchmarks/offload_overhead.py [--via sim|vm] [--requests 300] [--auth]
"""

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
KWS = REPO.parent / "shared" / "mlperf-tiny" / "kws_ref_model.tflite"

DEVICE_SCRIPT = r"""
import sys, json, time
sys.path.insert(0, %(device)r)
from tinyfw import offload
class TI:
    def __init__(s, shape, dtype, scale, zp, nbytes):
        s.shape, s.dtype, s.scale, s.zero_point, s.nbytes = shape, dtype, scale, zp, nbytes
class NoLocalModel:
    # the kws model's tensors; local inference is never used in mode "on" while the server answers
    inputs = [TI((1, 49, 10, 1), "int8", 0.5847029089927673, 83, 490)]
    outputs = [TI((1, 12), "int8", 0.00390625, -128, 12)]
    def input_buffer(s, i=0): raise RuntimeError("local inference used")
p = offload.Predictor(NoLocalModel(), %(cfg)s, config_path="/nonexistent/offload.json")
x = bytearray(490)
for i in range(490): x[i] = (i * 37) %% 256
rows = []
for i in range(%(warmup)d + %(n)d):
    out, info = p.predict(x)
    if i >= %(warmup)d:
        rows.append([info.total_us, info.server_compute_us, info.server_queue_us, info.serialise_us, info.send_us,
                     info.wait_us, info.receive_us, info.parse_us, 1 if info.offloaded else 0])
print(json.dumps({"rows": rows, "counters": p.counters()}))
"""


def pct(values, q):
    v = sorted(values)
    k = (len(v) - 1) * q / 100
    lo = int(k)
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (k - lo)


def tiny_kws_shaped_model(path):
    """kws's input (1x49x10x1 int8) with a cheap body: average pool, fully connected to 12, softmax."""
    from tinyhost.model.writer import small_classifier

    return small_classifier(path, (1, 49, 10, 1), 12, seed=1, pool=7)

def via_sim(args, tmp):
    from tinyhost import flash
    from tinyhost.board import connect
    from tinyhost.offload import auth, board, models, server

    model = tiny_kws_shaped_model(Path(tmp) / "kws_tiny.tflite")
    keys, cfg = None, {"mode": "on", "model_id": "kws-tiny", "device_id": "bench-sim", "timeout_ms": 5000}
    if args.auth:
        token_file = Path(tmp) / "keys.json"
        cfg["key"] = auth.ensure_device_key(token_file, "bench-sim").hex()
        keys = auth.KeyStore(token_file)
    srv = server.OffloadServer({"kws-tiny": models.ModelEntry("kws-tiny", model)}, keys, server.ServerConfig(port=0))
    with server.ServerThread(srv) as (host, port), \
            connect(f"sim:{args.board}", state_dir=Path(tmp) / "sim") as b:
        cfg["server"] = f"{host}:{port}"
        b.flash([model])
        x = bytes((i * 37) % 256 for i in range(490))
        run = board.run_predictions(b.dev, flash.model_remote_path(model, b.profile),
                                    [x] * (args.warmup + args.requests), config=cfg)
    records = run.records[args.warmup:]
    rows = [[r["total_us"], r["server_compute_us"], r["server_queue_us"], r["serialise_us"], r["send_us"],
             r["wait_us"], r["receive_us"], r["parse_us"], 1 if r["offloaded"] else 0] for r in records]
    where = (f"virtual board ({args.board} profile; its VM, runtime, engine and pty) -> tinyhost serve (TFLM, "
             f"kws-shaped tiny model)")
    return rows, run.counters, where


def via_vm(args, tmp):
    from tinyhost.offload import auth, models, server

    keys, cfg = None, {"mode": "on", "model_id": "kws", "device_id": "bench-vm", "timeout_ms": 5000}
    if args.auth:
        token_file = Path(tmp) / "keys.json"
        cfg["key"] = auth.ensure_device_key(token_file, "bench-vm").hex()
        keys = auth.KeyStore(token_file)
    srv = server.OffloadServer({"kws": models.ModelEntry("kws", KWS)}, keys, server.ServerConfig(port=0))
    with server.ServerThread(srv) as (host, port):
        cfg["server"] = f"{host}:{port}"
        script = DEVICE_SCRIPT % {"device": str(REPO / "device"), "cfg": repr(cfg), "warmup": args.warmup,
                                  "n": args.requests}
        micropython = Path(sys.executable).with_name("micropython")
        proc = subprocess.run([str(micropython), "-c", script], capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        sys.exit(f"device side failed:\n{proc.stdout}\n{proc.stderr}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    return (result["rows"], result["counters"],
            "MicroPython VM (direct, not through the virtual board's pty) -> tinyhost serve (TFLM, MLPerf kws)")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--via", choices=("sim", "vm"), default="sim")
    ap.add_argument("--board", default="esp32s3", help="virtual board profile for --via sim")
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--auth", action="store_true", help="HMAC-authenticated session (per-request MACs both ways)")
    args = ap.parse_args(argv)
    if args.via == "vm" and not KWS.is_file():
        sys.exit(f"needs {KWS} (../shared/mlperf-tiny beside the repository)")
    with tempfile.TemporaryDirectory() as tmp:
        rows, counters, where = (via_sim if args.via == "sim" else via_vm)(args, tmp)
    if not all(r[8] for r in rows):
        sys.exit(f"some requests were not offloaded: {counters}")
    cols = {"total": 0, "server_compute": 1, "server_queue": 2, "serialise": 3, "send": 4, "wait": 5, "receive": 6,
            "parse": 7}
    series = {name: [r[i] for r in rows] for name, i in cols.items()}
    series["network"] = [r[5] - r[1] - r[2] for r in rows]
    series["overhead"] = [r[0] - r[1] for r in rows]
    print(f"offload overhead on loopback: {where}, {len(rows)} requests after {args.warmup} warm-up, "
          f"auth={'HMAC-SHA256' if args.auth else 'off'}, TCP_NODELAY={counters['nodelay']}")
    print(f"{'stage (us)':<16}{'p50':>9}{'p90':>9}{'p99':>9}{'mean':>9}")
    for name in ("serialise", "send", "network", "server_queue", "server_compute", "receive", "parse", "total",
                 "overhead"):
        v = series[name]
        print(f"{name:<16}{pct(v, 50):>9.0f}{pct(v, 90):>9.0f}{pct(v, 99):>9.0f}{statistics.mean(v):>9.0f}")
    p50 = pct(series["overhead"], 50)
    print(f"overhead p50 = {p50 / 1000:.3f} ms (target <= 1 ms): {'met' if p50 <= 1000 else 'NOT met'}")
    return 0 if p50 <= 1000 else 1


if __name__ == "__main__":
    sys.exit(main())
