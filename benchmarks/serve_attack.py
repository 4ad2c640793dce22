"""`tinyhost serve` under attack: 64 good, keyed devices' throughput and p99 with and without each attack.

In one run, on loopback only: the server (kws, TFLM, one worker, HMAC keys, default limits) in its own process;
the attack in a second process; 64 good devices (asyncio clients speaking the board's protocol) in this one. Per
phase the attack starts first, then the good devices connect (retrying a refused connect for up to 10 s) and send
request after request for --seconds. Each attack is compared with an unattacked phase run just before it, so that
what else the machine runs drifts as little as possible between the two (each baseline's ratio to the first shows
that drift). Attacks:

* idle       256 sockets opened and left silent (re-opened when the server closes them)
* slowloris  200 connections sending a HELLO at 1 byte/s (re-opened when closed)
* bigframes  250 connections each announcing a ~1 MB frame and streaming its bytes (re-opened when closed)
* flood      one keyed device on 192 connections, request after request (a refused connect waits 50 ms)
* garbage    64 connections writing random bytes (re-opened when closed, after 10 ms)

Printed per phase: good answers/s and p99 against the unattacked phase before it (targets >= 0.80 and <= 2x),
the share of the server's answers that went to others than the good devices while they ran (the flooder's), the
server's RSS at the end of the phase and its peak (VmHWM), the CPU cores the server, the good devices and the
attacker used while the good devices ran (on a machine with few cores the attacker's CPU is CPU the other two
lack), the cores the rest of the machine kept busy meanwhile (other programs, the kernel's network work) and of
them the cores in interrupts (irq), the good answers per CPU second of the server (what the attack costs the
server, whatever else the machine runs), and the server's refusal counters. Every loop is bounded by the phase
time; the run stops by itself.

    nice -n 19 python benchmarks/serve_attack.py [--seconds 5] [--phases idle,slowloris,...]
"""

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
KWS = REPO.parent / "shared" / "mlperf-tiny" / "kws_ref_model.tflite"
PHASES = ("idle", "slowloris", "bigframes", "flood", "garbage")
GOOD = 64

SERVER = r"""
import dataclasses, json, sys
from pathlib import Path
from tinyhost.offload import auth, models, server
srv = server.OffloadServer({"kws": models.ModelEntry("kws", Path(sys.argv[1]))}, auth.KeyStore(sys.argv[2]),
                           server.ServerConfig(port=0))
with server.ServerThread(srv) as (host, port):
    print(port, flush=True)
    for line in sys.stdin:
        st = dataclasses.asdict(srv.stats)
        st.pop("by_status")
        print(json.dumps(st), flush=True)
"""


def rss_mb(pid):
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(("VmRSS:", "VmHWM:")):
            out[line.split(":")[0]] = int(line.split()[1]) / 1024
    return out.get("VmRSS", 0.0), out.get("VmHWM", 0.0)


# -- attacks (run in their own process: `serve_attack.py --attack KIND --port P --seconds S --token-file F`) -----
async def _attack(kind, port, seconds, token_file):
    from tinyhost.offload import auth, wire
    from tinyhost.offload.client import AsyncOffloadClient
    deadline = time.monotonic() + seconds
    tensor = wire.Tensor("int8", (1, 49, 10, 1), 0.5847029089927673, 83, bytes(490))

    async def held(count, behaviour):
        async def one(i):
            while time.monotonic() < deadline:
                try:
                    r, w = await asyncio.open_connection("127.0.0.1", port)
                except OSError:
                    await asyncio.sleep(0.05)
                    continue
                try:
                    await behaviour(i, r, w)
                except (OSError, asyncio.IncompleteReadError):
                    pass
                finally:
                    w.close()
        await asyncio.gather(*(one(i) for i in range(count)))

    async def idle(i, r, w):
        await asyncio.wait_for(r.read(), max(deadline - time.monotonic(), 0.01))

    async def slow(i, r, w):
        for b in wire.encode_hello(1, f"slow{i}", bytes(16)):
            if time.monotonic() >= deadline or r.at_eof():
                return
            w.write(bytes([b]))
            await w.drain()
            await asyncio.sleep(1.0)

    async def big(i, r, w):
        w.write(wire.HEADER.pack(wire.MAGIC, 1, wire.KIND_REQUEST, 0, 1, (1 << 20) - 64))
        chunk = bytes(64 * 1024)
        for _ in range(16):
            if time.monotonic() >= deadline:
                return
            w.write(chunk)
            await asyncio.wait_for(w.drain(), max(deadline - time.monotonic(), 0.01))

    async def garbage(i, r, w):
        rnd = random.Random(i)
        while time.monotonic() < deadline and not r.at_eof():
            w.write(rnd.randbytes(256))
            await w.drain()
            await asyncio.sleep(0.01)

    async def flood():
        key = auth.KeyStore(token_file).key_for("flooder")

        async def one(i):
            while time.monotonic() < deadline:
                c = AsyncOffloadClient("127.0.0.1", port, device_id="flooder", key=key, timeout_s=10)
                try:
                    await c.connect()
                    while time.monotonic() < deadline:
                        await c.infer("kws", tensor, check=False)
                except Exception:
                    await asyncio.sleep(0.05)
                finally:
                    await c.close()
        await asyncio.gather(*(one(i) for i in range(192)))

    if kind == "idle":
        await held(256, idle)
    elif kind == "slowloris":
        await held(200, slow)
    elif kind == "bigframes":
        await held(250, big)
    elif kind == "garbage":
        await held(64, garbage)
    elif kind == "flood":
        await flood()


# -- good devices -------------------------------------------------------------------------------------------
async def good_devices(port, seconds, keys, server_answers):
    """Connect the good devices, then run them for ``seconds``. ``server_answers()``: the server's answer count
    (read before and after the timed part, to tell the good devices' share of the server's answers)."""
    from tinyhost.offload import wire
    from tinyhost.offload.client import AsyncOffloadClient
    tensor = wire.Tensor("int8", (1, 49, 10, 1), 0.5847029089927673, 83, bytes((i * 37) % 256 for i in range(490)))
    latencies, errors, connect_retries = [], 0, 0

    async def connect(i):
        nonlocal connect_retries
        give_up = time.monotonic() + 10
        while True:
            c = AsyncOffloadClient("127.0.0.1", port, device_id=f"good-{i}", key=keys[i], timeout_s=10)
            try:
                await c.connect()
                return c
            except Exception:
                await c.close()
                connect_retries += 1
                if time.monotonic() > give_up:
                    return None
                await asyncio.sleep(0.05)

    clients = await asyncio.gather(*(connect(i) for i in range(GOOD)))
    deadline = time.perf_counter() + seconds

    async def run(i):
        nonlocal errors
        c = clients[i]
        while time.perf_counter() < deadline:
            if c is None:
                c = await connect(i)
                if c is None:
                    continue
            try:
                ex = await c.infer("kws", tensor, check=False)
            except Exception:
                errors += 1
                await c.close()
                c = None
                continue
            if ex.reply.ok:
                latencies.append(ex.total_us)
            else:
                errors += 1
        if c is not None:
            await c.close()

    answers_before, t0 = server_answers(), time.perf_counter()
    await asyncio.gather(*(run(i) for i in range(GOOD)))
    wall = time.perf_counter() - t0
    answered = server_answers() - answers_before
    connected = sum(c is not None for c in clients)
    return latencies, errors, connect_retries, connected, wall, answered


def cpu_s(pid):
    """CPU seconds (user + system) a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_busy_s():
    """(CPU seconds all cores of the machine have been busy so far, of them in interrupts, the kernel's network
    work on loopback included)."""
    user, nice, system, idle, iowait, irq, softirq, steal = (
        int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9])
    tick = os.sysconf("SC_CLK_TCK")
    return (user + nice + system + irq + softirq + steal) / tick, (irq + softirq) / tick


def pct(values, q):
    if not values:
        return float("nan")
    v = sorted(values)
    return v[min(len(v) - 1, int(round((len(v) - 1) * q / 100)))]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--phases", default=",".join(PHASES))
    ap.add_argument("--attack", help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--token-file", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.attack:
        asyncio.run(_attack(args.attack, args.port, args.seconds, args.token_file))
        return 0
    if not KWS.is_file():
        sys.exit(f"needs {KWS} (../shared/mlperf-tiny beside the repository)")
    from tinyhost.offload import auth
    phases = [p for p in args.phases.split(",") if p]
    tmp = tempfile.TemporaryDirectory()
    token_file = str(Path(tmp.name) / "keys.json")
    keys = [auth.ensure_device_key(token_file, f"good-{i}") for i in range(GOOD)]
    auth.ensure_device_key(token_file, "flooder")
    proc = subprocess.Popen([sys.executable, "-c", SERVER, str(KWS), token_file], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)

    def stats():
        proc.stdin.write("\n")
        proc.stdin.flush()
        return json.loads(proc.stdout.readline())

    rows, ok = [], True
    try:
        port = int(proc.stdout.readline())
        for phase in [p for attack in phases for p in ("none", attack)]:
            before = stats()
            attacker = None
            if phase != "none":
                attacker = subprocess.Popen([sys.executable, __file__, "--attack", phase, "--port", str(port),
                                             "--seconds", str(args.seconds + 3), "--token-file", token_file])
                time.sleep(1.5)                 # the attack is in place before the good devices come
            pids = [proc.pid, os.getpid()] + ([attacker.pid] if attacker else [])
            cpu_before, busy_before, t0 = [cpu_s(pid) for pid in pids], machine_busy_s(), time.perf_counter()
            lat, errors, retries, connected, wall, answered = asyncio.run(
                good_devices(port, args.seconds, keys, lambda: stats()["requests_ok"]))
            took = time.perf_counter() - t0
            cores = [(cpu_s(pid) - b) / took for pid, b in zip(pids, cpu_before)]
            busy_after = machine_busy_s()
            rest = (busy_after[0] - busy_before[0]) / took - sum(cores)
            irq = (busy_after[1] - busy_before[1]) / took
            rss, hwm = rss_mb(proc.pid)
            if attacker is not None:
                attacker.wait(args.seconds + 30)
            after = stats()
            delta = {k: after[k] - before[k] for k in after if k not in ("connections_open", "connections_pending")}
            rows.append((phase, len(lat) / wall, pct(lat, 99) / 1000, errors, retries, connected, rss, hwm, delta,
                         1 - len(lat) / max(1, answered), cores, rest, irq))
    finally:
        if proc.poll() is None:
            proc.stdin.close()
            proc.kill()
        tmp.cleanup()
    first_rate, first_p99 = rows[0][1], rows[0][2]
    print(f"serve under attack: kws (TFLM), one worker, HMAC keys, default limits; {GOOD} good devices for "
          f"{args.seconds:g} s per phase, loopback, {os.cpu_count()} CPUs on this machine")
    print(f"{'phase':<10} {'answers/s':>9} {'ratio':>6} {'p99 ms':>7} {'x base':>6} {'errors':>6} {'conn':>5} "
          f"{'retries':>7} {'RSS MB':>7} {'peak MB':>7} {'others':>6} {'CPU srv/good/atk':>16} {'rest':>5} {'irq':>4} "
          f"{'ans/srv-s':>9}  "
          f"server counters")
    for phase, rate, p99, errors, retries, connected, rss, hwm, d, others, cores, rest, irq in rows:
        if phase == "none":
            base_rate, base_p99 = rate, p99
            ratio, p99x = rate / first_rate, p99 / first_p99
        else:
            ratio, p99x = rate / base_rate, p99 / base_p99
        held = phase == "none" or (ratio >= 0.80 and p99x <= 2.0 and hwm <= 100)
        ok &= held
        counters = (f"ok {d['requests_ok']}, refused {d['connections_refused']}, per-device "
                    f"{d['device_limit_refusals']}, dropped {d['pending_dropped']}, hello-timeout "
                    f"{d['hello_timeouts']}, not-hello {d['not_hello_first']}, bad {d['frames_bad']}, busy "
                    f"{d['busy_replies']}")
        print(f"{phase:<10} {rate:9.1f} {ratio:6.2f} {p99:7.1f} {p99x:6.2f} {errors:6d} {connected:3d}/{GOOD} "
              f"{retries:7d} {rss:7.1f} {hwm:7.1f} {others:6.1%} {'/'.join(f'{c:.2f}' for c in cores):>16} "
              f"{rest:5.2f} {irq:4.2f} {rate / max(cores[0], 1e-9):9.0f}  {counters}" + ("" if held else "  NOT held"))
    print("targets: answers/s ratio >= 0.80, p99 <= 2x unattacked, server peak RSS <= 100 MB: "
          + ("held" if ok else "NOT held"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
