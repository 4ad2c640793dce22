"""A run over a faulty line and through a board reset, on the virtual board (seeded faults), against a clean run.

In one run, each step a real `tinyhost` command on a virtual ESP32 (115200 baud) in a temporary state folder:

1. flash the firmware and the kws model onto a fresh board (stock MicroPython: the runtime is bootstrapped
   through the raw REPL) over a clean line;
2. the same onto another fresh board with --drop and --corrupt per byte in both directions (seeded; default 1e-3
   each): time against the clean flash, every file on the board (LIST, sha256) compared with the clean one;
3. the accuracy run over the 196 shipped KWS samples on a clean line: time, top-1, every prediction;
4. the same on the faulty line: time against the clean run, predictions compared one by one, recoveries;
5. steps 2 and 4 at --high per byte (default 1e-2 drop + 1e-2 corrupt), each limited to --high-limit-s: it
   completes (in what time) or stops with a message (in what time);
6. the clean run again with the VM killed (SIGKILL) 5 s in: how long until the host says the board reset, and
   the run's total time and predictions.

Every step has a time limit (--limit-s) and the run stops by itself. ``--steps`` runs only some of them (the clean
flash always runs: it is the reference): ``flash`` (step 2), ``flash-high`` (step 5's flash), ``accuracy`` (steps 3
and 4), ``accuracy-high`` (steps 3 and 5's accuracy run), ``reset`` (step 6); default all.

    nice -n 19 python -m benchmarks.link_faults [--drop 1e-3] [--corrupt 1e-3] [--seed 2] [--limit-s 900]
                                                [--high 1e-2] [--high-limit-s 600] [--steps flash,flash-high]
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


def _board_files(port):
    """Every file on the board: path -> sha256 (from the board's own HASH)."""
    from tinyhost.board import connect

    files = {}
    with connect(port=port) as b:
        dev = b.dev

        def walk(path):
            for entry in dev.list_files(path):
                full = path.rstrip("/") + "/" + entry.name
                if entry.is_dir:
                    walk(full)
                else:
                    files[full] = dev.file_hash(full)
        walk("/")
    return files


def _phases(lines):
    """A flash's phases from its output: the runtime started (``flashing N files`` printed) after so many s, the
    files sent in so many s (its ``sent N files (...) in S s`` line); "" when it did not get that far."""
    started = next((t for t, line in lines if line.startswith("flashing ")), None)
    sent = next((line.split(") in ", 1)[1].split(" s", 1)[0] for _, line in lines
                 if line.startswith("sent ") and ") in " in line), None)
    if started is None or sent is None:
        return ""
    return f" (runtime started after {started:.1f} s, files sent in {sent} s)"


def _faulty_flash(work, name, drop, corrupt, seed, limit_s, reference):
    """Flash a fresh board over a line with ``drop`` and ``corrupt`` per byte; (exit code, wall s, files identical?,
    last line, phases)."""
    from tinyhost.sim import VirtualBoard

    state = work / f"state-{name}"
    with VirtualBoard(board="esp32", state_dir=state, drop_rate=drop, corrupt_rate=corrupt, seed=seed) as vb:
        rc, wall, lines = _run(["flash", "--port", vb.port, "--model", "kws"], work, limit_s)
    same = None
    if rc == 0:
        with VirtualBoard(board="esp32", state_dir=state) as vb:
            same = _board_files(vb.port) == reference
    return rc, wall, same, (lines[-1][1] if lines else ""), _phases(lines)


STEPS = ("flash", "flash-high", "accuracy", "accuracy-high", "reset")


def _steps(text):
    steps = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in steps if s not in STEPS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown step {', '.join(unknown)}: choose from {', '.join(STEPS)}")
    return set(steps)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--drop", type=float, default=1e-3)
    ap.add_argument("--corrupt", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=2)
    ap.add_argument("--limit-s", type=float, default=900.0)
    ap.add_argument("--high", type=float, default=1e-2)
    ap.add_argument("--high-limit-s", type=float, default=600.0)
    ap.add_argument("--steps", type=_steps, default=set(STEPS),
                    help=f"comma-separated, of {', '.join(STEPS)} (default all)")
    args = ap.parse_args(argv)
    steps = args.steps
    from tinyhost.sim import VirtualBoard

    tmp = tempfile.TemporaryDirectory()
    work = Path(tmp.name)
    for name in ("clean", "noisy", "high", "reset"):
        (work / name).mkdir()
    state = work / "state"
    rows = []
    clean = noisy = high = reset = flash_noisy = flash_high = None
    killed = {}
    try:
        with VirtualBoard(board="esp32", state_dir=state) as vb:
            rc, flash_s, flash_lines = _run(["flash", "--port", vb.port, "--model", "kws"], work, args.limit_s)
            if rc != 0:
                print("flash failed:", *[line for _, line in flash_lines[-5:]], sep="\n  ")
                return 1
            reference = _board_files(vb.port)
            if steps & {"accuracy", "accuracy-high", "reset"}:
                clean = _accuracy(vb.port, work, "clean", args.limit_s)
        if "flash" in steps:
            flash_noisy = _faulty_flash(work, "noisy", args.drop, args.corrupt, args.seed, args.limit_s, reference)
        if "flash-high" in steps:
            flash_high = _faulty_flash(work, "high", args.high, args.high, args.seed, args.high_limit_s, reference)
        if "accuracy" in steps:
            with VirtualBoard(board="esp32", state_dir=state, drop_rate=args.drop, corrupt_rate=args.corrupt,
                              seed=args.seed) as vb:
                noisy = _accuracy(vb.port, work, "noisy", args.limit_s)
        if "accuracy-high" in steps:
            with VirtualBoard(board="esp32", state_dir=state, drop_rate=args.high, corrupt_rate=args.high,
                              seed=args.seed) as vb:
                high = _accuracy(vb.port, work, "high", args.high_limit_s)
        if "reset" in steps:
            with VirtualBoard(board="esp32", state_dir=state) as vb:
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

    print(f"link faults: virtual esp32 at 115200 baud, seed {args.seed}; flash of a fresh board (firmware + kws) and "
          f"the kws accuracy run over the shipped samples")
    print(f"flash, clean line: exit 0, {flash_s:7.1f} s{_phases(flash_lines)}")
    for drop, corrupt, result in ((args.drop, args.corrupt, flash_noisy), (args.high, args.high, flash_high)):
        if result is None:
            continue
        rc, wall, same, last, phases = result
        said = (f"files {'identical to' if same else 'DIFFERENT from'} the clean flash" if rc == 0
                else f"stopped: {last}")
        print(f"flash, {drop:g} drop + {corrupt:g} corrupt: exit {rc}, {wall:7.1f} s ({wall / flash_s:.1f}x clean)"
              f"{phases}, {said}")
    if flash_noisy is not None:
        rows.append(("flash", flash_noisy[0], flash_noisy[2]))
    if clean is None:
        return 0 if all(rc == 0 and same for _, rc, same in rows) else 1
    base_rc, base_s, base_top1, base_preds, _, _ = clean
    print(f"accuracy, clean line: exit {base_rc}, {base_s:7.1f} s, top-1 {base_top1}, {len(base_preds)} samples")
    if high is not None and high[0] != 0:
        (rc, wall, top1, preds, recovered, lines) = high
        last = next((line for _, line in reversed(lines) if line.startswith("tinyhost:")), lines[-1][1] if lines
                    else "")
        print(f"accuracy, {args.high:g} drop + {args.high:g} corrupt: exit {rc}, {wall:7.1f} s, {len(preds)} "
              f"predictions, stopped: {last}")
    for name, result in ((f"accuracy, {args.drop:g} drop + {args.corrupt:g} corrupt", noisy),
                         (f"accuracy, {args.high:g} drop + {args.high:g} corrupt",
                          high if high is not None and high[0] == 0 else None),
                         ("accuracy, VM killed", reset)):
        if result is None:
            continue
        rc, wall, top1, preds, recovered, lines = result
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
