"""A run over a faulty line and through a board reset, on the virtual board (seeded faults), against a clean run.

In one run, each step a real `tinyhost` command on a virtual ESP32 (115200 baud) in a temporary state folder:

1. flash the firmware and the kws model onto the board over a clean line (the fresh-board bootstrap is not
   measured under faults: its modules travel unchecked, docs/protocol.md);
2. the accuracy run over the 196 shipped KWS samples on a clean line: time, top-1, every prediction;
3. the same with --drop and --corrupt per byte in both directions (seeded; default 1e-3 each): time against the
   clean run, predictions compared one by one, recoveries;
4. the clean run again with the VM killed (SIGKILL) 5 s in: how long until the host says the board reset, and
   the run's total time and predictions.

Every step has a time limit (--limit-s) and the run stops by itself.

    nice -n 19 python benchmarks/link_faults.py [--drop 1e-3] [--corrupt 1e-3] [--seed 2] [--limit-s 900]
"""

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

TINYHOST = [str(Path(sys.executable).with_name("tinyhost"))]


def _run(args, cwd, limit_s, on_start=None):
    """Run a tinyhost command; returns (exit code, wall s, [(t since start, line)])."""
    t0 = time.monotonic()
    p = subprocess.Popen(TINYHOST + args, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []

    def read():
        for line in p.stdout:
            lines.append((time.monotonic() - t0, line.rstrip()))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    if on_start:
        on_start(lines, t0)
    try:
        rc = p.wait(limit_s)
    except subprocess.TimeoutExpired:
        p.kill()
        rc = "killed"
    reader.join(5)
    return rc, time.monotonic() - t0, lines


def _predictions(path):
    try:
        acc = json.loads(Path(path).read_text())["accuracy"]
    except (OSError, KeyError, ValueError):
        return None, []
    return acc["value"], [s["predicted"] for s in acc["samples"]]


def _accuracy(port, work, name, limit_s, on_start=None):
    out = work / f"{name}.json"
    rc, wall, lines = _run(["bench", "--port", port, "--model", "kws", "--mode", "accuracy", "--json", str(out)],
                           work / name, limit_s, on_start)
    top1, preds = _predictions(out)
    recovered = sum("reconnecting" in line for _, line in lines)
    return rc, wall, top1, preds, recovered, lines


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--drop", type=float, default=1e-3)
    ap.add_argument("--corrupt", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=2)
    ap.add_argument("--limit-s", type=float, default=900.0)
    args = ap.parse_args(argv)
    from tinyhost.sim import VirtualBoard

    tmp = tempfile.TemporaryDirectory()
    work = Path(tmp.name)
    for name in ("clean", "noisy", "reset"):
        (work / name).mkdir()
    state = work / "state"
    rows = []
    try:
        with VirtualBoard(board="esp32", state_dir=state) as vb:
            rc, flash_s, lines = _run(["flash", "--port", vb.port, "--model", "kws"], work, args.limit_s)
            if rc != 0:
                print("flash failed:", *[line for _, line in lines[-5:]], sep="\n  ")
                return 1
            clean = _accuracy(vb.port, work, "clean", args.limit_s)
        with VirtualBoard(board="esp32", state_dir=state, drop_rate=args.drop, corrupt_rate=args.corrupt,
                          seed=args.seed) as vb:
            noisy = _accuracy(vb.port, work, "noisy", args.limit_s)
        with VirtualBoard(board="esp32", state_dir=state) as vb:
            killed = {}

            def kill_later(lines, t0):
                def go():
                    while not any("accuracy:" in line for _, line in lines) and time.monotonic() - t0 < 60:
                        time.sleep(0.05)
                    time.sleep(5)
                    vm = open(f"/proc/{vb.pid}/task/{vb.pid}/children").read().split()[0]
                    killed["at"] = time.monotonic() - t0
                    os.kill(int(vm), signal.SIGKILL)
                threading.Thread(target=go, daemon=True).start()

            reset = _accuracy(vb.port, work, "reset", args.limit_s, kill_later)
    finally:
        tmp.cleanup()

    base_rc, base_s, base_top1, base_preds, _, _ = clean
    print(f"link faults: virtual esp32 at 115200 baud, kws accuracy run over {len(base_preds)} shipped samples; "
          f"flash over a clean line {flash_s:.1f} s")
    print(f"clean        exit {base_rc}, {base_s:7.1f} s, top-1 {base_top1}")
    for name, (rc, wall, top1, preds, recovered, lines) in (
            (f"faults {args.drop:g} drop + {args.corrupt:g} corrupt, seed {args.seed}", noisy), ("VM killed", reset)):
        same = preds == base_preds
        print(f"{name}: exit {rc}, {wall:7.1f} s ({wall / base_s:.1f}x clean), top-1 {top1}, "
              f"{recovered} recoveries, predictions {'identical to' if same else 'DIFFERENT from'} the clean run "
              f"({sum(a != b for a, b in zip(preds, base_preds)) + abs(len(preds) - len(base_preds))} differ)")
        rows.append((name, rc, same))
    if "at" in killed:
        seen = [t for t, line in reset[5] if "reset" in line or "stopped" in line]
        said = f"{seen[0] - killed['at']:.2f} s after the kill" if seen else "never"
        print(f"VM killed {killed['at']:.1f} s into the run: the host said the board reset {said}")
    return 0 if all(rc == 0 and same for _, rc, same in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
