"""`tinyhost serve` throughput with 64 concurrent simulated devices against the raw model's inference rate.

In one run: (1) the raw rate, one TFLM interpreter invoking the kws model back to back in this process (measured
before and after the server phase, mean of the two); (2) the server in its own process (one worker, TFLM) while
64 simulated devices, asyncio connections in this process speaking the board's protocol (HELLO, then REQUEST
after REQUEST, each waiting for its reply), keep it busy for --seconds. Serving overhead = 1 - served rate / raw
rate (target <= 20 %); p50/p99 latency as the devices see it. The printed numbers are those measured in this run.

    nice -n 19 python benchmarks/serve_throughput.py [--devices 64] [--seconds 10] [--auth]
"""

import argparse
import asyncio
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
KWS = REPO.parent / "shared" / "mlperf-tiny" / "kws_ref_model.tflite"

SERVER = r"""
import sys, time
from pathlib import Path
from tinyhost.offload import auth, models, server
keys = auth.KeyStore(sys.argv[2]) if sys.argv[2] else None
srv = server.OffloadServer({"kws": models.ModelEntry("kws", Path(sys.argv[1]))}, keys,
                           server.ServerConfig(port=0, queue_limit=4096))
with server.ServerThread(srv) as (host, port):
    print(port, flush=True)
    sys.stdin.readline()
    st = srv.stats
    print(st.requests_ok, st.busy_replies, st.requests_rejected, flush=True)
"""


def raw_rate(seconds):
    import numpy as np
    from tflite_micro.python.tflite_micro import runtime
    it = runtime.Interpreter.from_file(str(KWS))
    x = (np.arange(490) * 37 % 256).astype(np.uint8).view(np.int8).reshape(1, 49, 10, 1)
    for _ in range(5):
        it.set_input(x, 0)
        it.invoke()
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        it.set_input(x, 0)
        it.invoke()
        it.get_output(0)
        n += 1
    return n / (time.perf_counter() - t0)


async def devices(port, count, seconds, keys):
    from tinyhost.offload import wire
    from tinyhost.offload.client import AsyncOffloadClient
    tensor = wire.Tensor("int8", (1, 49, 10, 1), 0.5847029089927673, 83, bytes((i * 37) % 256 for i in range(490)))
    clients = [AsyncOffloadClient("127.0.0.1", port, device_id=f"sim-{i}", key=keys.get(i), timeout_s=60)
               for i in range(count)]
    await asyncio.gather(*(c.connect() for c in clients))
    for c in clients:                                   # warm-up: one request each
        await c.infer("kws", tensor)
    latencies, failures = [], 0
    deadline = time.perf_counter() + seconds

    async def run(c):
        nonlocal failures
        while time.perf_counter() < deadline:
            ex = await c.infer("kws", tensor, check=False)
            if ex.reply.ok:
                latencies.append(ex.total_us)
            else:
                failures += 1

    t0 = time.perf_counter()
    await asyncio.gather(*(run(c) for c in clients))
    wall = time.perf_counter() - t0
    await asyncio.gather(*(c.close() for c in clients))
    return latencies, failures, wall


def pct(values, q):
    v = sorted(values)
    k = (len(v) - 1) * q / 100
    lo = int(k)
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (k - lo)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--devices", type=int, default=64)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--auth", action="store_true")
    args = ap.parse_args(argv)
    if not KWS.is_file():
        sys.exit(f"needs {KWS} (../shared/mlperf-tiny beside the repository)")
    from tinyhost.offload import auth

    tmp = tempfile.TemporaryDirectory()
    token_file = ""
    keys = {}
    if args.auth:
        token_file = str(Path(tmp.name) / "keys.json")
        keys = {i: auth.ensure_device_key(token_file, f"sim-{i}") for i in range(args.devices)}
    raw_before = raw_rate(3.0)
    proc = subprocess.Popen([sys.executable, "-c", SERVER, str(KWS), token_file], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        port = int(proc.stdout.readline())

        latencies, failures, wall = asyncio.run(devices(port, args.devices, args.seconds, keys))
        proc.stdin.write("\n")
        proc.stdin.flush()
        served_total = proc.stdout.readline().split()
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
        tmp.cleanup()
    raw_after = raw_rate(3.0)
    raw = (raw_before + raw_after) / 2
    served = len(latencies) / wall
    overhead = 1 - served / raw
    print(f"serve throughput: kws (TFLM) on this machine, {args.devices} concurrent simulated devices for "
          f"{wall:.1f} s, one server worker, auth={'HMAC-SHA256' if args.auth else 'off'}")
    print(f"raw model rate      {raw:8.1f} inferences/s (before {raw_before:.1f}, after {raw_after:.1f})")
    print(f"served rate         {served:8.1f} answers/s ({len(latencies)} answers, {failures} errors; "
          f"server counted {served_total[0]} answers incl. warm-up)")
    print(f"served / raw        {served / raw:8.3f}  -> serving overhead {overhead * 100:.1f} % (target <= 20 %): "
          f"{'met' if overhead <= 0.20 else 'NOT met'}")
    print(f"latency per request p50 {pct(latencies, 50) / 1000:.1f} ms, p90 {pct(latencies, 90) / 1000:.1f} ms, "
          f"p99 {pct(latencies, 99) / 1000:.1f} ms (queueing behind {args.devices - 1} other devices included)")
    return 0 if overhead <= 0.20 and failures == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
