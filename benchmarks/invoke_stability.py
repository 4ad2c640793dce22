"""Does a model's whole-invoke time drift away from the sum of its per-operator times? (docs/engine.md, Speed)

Runs the model in the MicroPython VM (firmware as flashed: .mpy tree, plan beside the model) and prints, per bucket
of 250 invokes, the fastest whole invoke and the per-step times of the bucket's last invoke. On this host AD's
invoke sometimes runs ~100 us slower for seconds at a time with every step ~9 us slower, whatever its size; this
script is the place to start looking again.

    python -m benchmarks.invoke_stability [--model PATH] [--invokes 2000] [--heap-bytes N]
"""

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.engine_latency import DEVICE_DIR, MODELS, REPO, micropython_exe

_VM_SCRIPT = r"""
import sys, time
from array import array
sys.path.insert(0, sys.argv[1])
from tinyfw import engine
m = engine.load(sys.argv[2])
n = int(sys.argv[3])
row = array("i", [0] * len(m.kernel_names()))
best = None
for r in range(200):                          # per-step minima first (as engine_latency --profile)
    m.invoke(row)
    best = list(row) if best is None else [min(a, b) for a, b in zip(best, row)]
print("per-step minima (us):", best, "sum", sum(best))
t = []                                        # a list growing while timing, as a plain benchmark loop would
for i in range(n):
    t0 = time.ticks_us()
    m.invoke(row)
    t.append(time.ticks_diff(time.ticks_us(), t0))
    if i % 250 == 249:
        print("invokes %5d-%5d: fastest %4d us; last one's steps %s" % (i - 249, i, min(t[-250:]), list(row)))
"""


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(MODELS["ad"]))
    ap.add_argument("--invokes", type=int, default=2000)
    ap.add_argument("--heap-bytes", type=int, default=4 << 20)
    args = ap.parse_args(argv)
    model = Path(args.model)
    if not model.is_file():
        raise SystemExit(f"invoke_stability: {model} is absent")
    sys.path.insert(0, str(REPO / "host"))
    from tinyhost.model.plan import copy_with_plan
    from tinyhost.mpy import compile_tree
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        device_dir = compile_tree(DEVICE_DIR, tmp / "device", "x64")
        path = copy_with_plan(model, tmp)
        script = tmp / "stability.py"
        script.write_text(_VM_SCRIPT)
        proc = subprocess.run([micropython_exe(), "-X", f"heapsize={args.heap_bytes}", str(script), str(device_dir),
                               str(path), str(args.invokes)], capture_output=True, text=True, timeout=600)
        print(proc.stdout + proc.stderr, end="")
        return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
