"""Drive tinyfw on the virtual board with the OFFICIAL MLPerf Tiny runner (mlcommons/tiny, benchmark/runner).

What it does, in one run:
  1. starts a virtual board (MicroPython's unix VM behind a pty, emulating --board's heap, flash and line rate),
     flashes the tinyfw firmware and the model as /models/model.tflite (the file the firmware's EEMBC side loads
     when nothing is loaded), and restarts the board so that main.py starts the runtime, as on a real board;
  2. builds a small data set in the MLPerf layout the runner reads (<dataset_path>/<benchmark>/y_labels.csv with
     rows `file,n_classes,class` and one .bin per sample): --per-class samples of every class of our test set
     (the runner's AUC needs every class present);
  3. writes a devices yaml with a single DUT entry (check_name: tinyhost) and runs the runner's own main.py --mode p
     and --mode a in a child process, with the runner's code untouched.

The runner finds its DUT by scanning serial ports for a USB VID:PID (serial.tools.list_ports.comports) and then
enumerates USB devices with pyusb for USB-only power monitors. A pty has no USB ids, so the child process replaces
list_ports.comports with one that reports only the virtual board's pty, labelled with the first VID:PID of the
board profile it stands in for, and lets usb.core.find answer "no devices" when pyusb finds no libusb backend.
That is the only change; the runner's code is read from --runner-dir and not copied.

Performance mode: the runner's tests_performance.yaml runs `infer 70 10` five times; on the virtual board 70
inferences take well under a second, so the runner would report "ERROR 2 - loop exited before 10 seconds elapsed".
By default this script measures the latency first (our own EEMBC driver, one `infer` of 20) and writes a copy of
that yaml whose infer count makes each of the 5 windows last about --window-s seconds (the MLPerf Tiny rule: at
least 10 s), within the 30 s the runner waits for a reply line. --perf-iterations official keeps the runner's file.
Accuracy mode uses the runner's tests_accuracy.yaml as it is.

Every figure is from the virtual board: its CPU is this PC's, not the board's.

    git clone https://github.com/mlcommons/tiny && pip install -e '.[mlperf-runner]'
    nice -n 19 python benchmarks/mlperf_runner.py --runner-dir tiny/benchmark/runner [--benchmark kws01]
"""

import argparse
import math
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# benchmark -> (shipped model name, shipped test set)
SHIPPED = {"kws01": ("kws", "kws/kws.tflite", "kws/testset"), "vww01": ("vww", "vww/vww.tflite", "vww/testset")}
RUNNER_FILES = ("main.py", "device_manager.py", "device_under_test.py", "serial_device.py", "script.py",
                "datasets.py", "tests_performance.yaml", "tests_accuracy.yaml")
RUNNER_MODULES = {"yaml": "pyyaml", "usb": "pyusb", "sklearn": "scikit-learn", "matplotlib": "matplotlib"}
RUNNER_REPLY_TIMEOUT_S = 30.0     # device_under_test.py: infer waits this long for each reply line
DUT_NAME = "tinyhost"             # what the firmware answers to name%: the devices yaml's check_name
CHILD_FLAG = "--as-runner-child"
MODES = {"p": "performance", "a": "accuracy"}
PERF_WINDOWS = 5                  # tests_performance.yaml: `loop 5`, one data file each


class Abort(Exception):
    """A condition the user has to fix; main() prints it and exits with status 2."""


# -- the runner's code and its dependencies --------------------------------------------------------------------------

def find_runner(path):
    """The official runner's folder (holding main.py ...), or Abort saying how to get it."""
    how = ("get it with `git clone https://github.com/mlcommons/tiny` and pass --runner-dir tiny/benchmark/runner "
           "(or set MLPERF_TINY_RUNNER)")
    root = Path(path).expanduser().resolve()
    if not root.is_dir():
        raise Abort(f"{root} does not exist: {how}")
    missing = [f for f in RUNNER_FILES if not (root / f).is_file()]
    if missing:
        raise Abort(f"{root} is not the MLPerf Tiny runner (missing {', '.join(missing)}): {how}")
    return root


def check_runner_modules():
    import importlib.util

    missing = [pkg for mod, pkg in RUNNER_MODULES.items() if importlib.util.find_spec(mod) is None]
    if missing:
        raise Abort(f"the runner needs {', '.join(missing)}: pip install -e '.[mlperf-runner]' "
                    f"(or pip install {' '.join(missing)})")


# -- the child process: the runner's main.py with the virtual board as its only serial port --------------------------

def runner_child(argv):
    """``CHILD_FLAG RUNNER_DIR PORT VID PID -- main.py arguments``: run the runner's main.py as __main__."""
    import runpy

    runner_dir, port, vid, pid = argv[0], argv[1], int(argv[2], 16), int(argv[3], 16)
    runner_args = argv[argv.index("--") + 1:]

    from serial.tools import list_ports, list_ports_common

    def virtual_board_only(include_links=False):
        info = list_ports_common.ListPortInfo(port, skip_link_detection=True)
        info.vid, info.pid = vid, pid
        info.description = "tinyhost virtual board"
        info.hwid = f"USB VID:PID={vid:04X}:{pid:04X} (virtual board on {port})"
        return [info]

    list_ports.comports = virtual_board_only

    import usb.core

    usb_find = usb.core.find

    def find_or_nothing(*args, **kwargs):
        try:
            return usb_find(*args, **kwargs)
        except usb.core.NoBackendError:           # no libusb: there are no USB-only devices to find either
            return [] if kwargs.get("find_all") else None

    usb.core.find = find_or_nothing
    sys.path.insert(0, runner_dir)
    sys.argv = [os.path.join(runner_dir, "main.py")] + runner_args
    runpy.run_path(sys.argv[0], run_name="__main__")


# -- files the runner reads -------------------------------------------------------------------------------------------

def build_dataset(source, dest, benchmark, per_class):
    """Copy ``per_class`` samples of every class of the test set at ``source`` into ``dest/benchmark`` with a
    y_labels.csv; returns the rows (file, n_classes, class)."""
    from tinyhost.bench import datasets

    ds = datasets.load(source, benchmark)
    if ds.layout != "mlperf":
        raise Abort(f"{source} is not in the MLPerf Tiny layout (y_labels.csv + .bin files)")
    # the runner's performance script downloads files 0..4 (`loop 5`) and fails on a data set of fewer files
    per_class = max(per_class, math.ceil(PERF_WINDOWS / max(1, ds.n_classes)))
    chosen, count = [], {}
    for item in ds.items:
        if item.window == 0 and count.get(item.label, 0) < per_class:
            count[item.label] = count.get(item.label, 0) + 1
            chosen.append(item)
    missing = sorted(set(range(ds.n_classes)) - set(count))
    if missing:
        raise Abort(f"{source} has no sample of class(es) {missing}; the runner's AUC needs every class")
    folder = dest / benchmark
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    rows = []
    for item in chosen:
        name = Path(item.file).name
        shutil.copyfile(ds.root / item.file, folder / name)
        rows.append((name, ds.n_classes, item.label))
    (folder / "y_labels.csv").write_text("".join(f"{f},{n},{c}\n" for f, n, c in rows))
    return rows


def write_devices_yaml(path, board, baud, vid, pid, echo=False):
    path.write_text(
        "# the virtual board, as the MLPerf Tiny runner's devices yaml describes a DUT connected to the host\n"
        f"- name: tinyhost-virtual-{board}\n"
        "  type: dut\n"
        f"  check_name: {DUT_NAME}\n"
        f"  echo: {'True' if echo else 'False'}\n"
        f"  baud:\n    performance: {baud}\n    accuracy: {baud}\n    energy: {baud}\n"
        f"  usb:\n    0x{vid:04X}: 0x{pid:04X}\n")


def write_perf_yaml(runner_dir, path, benchmark, iterations):
    """The runner's tests_performance.yaml with ``infer N W`` of ``benchmark`` set to ``iterations``; returns the
    (old, new) infer steps."""
    import yaml

    tests = yaml.safe_load((runner_dir / "tests_performance.yaml").read_text())
    changed = []

    def visit(steps):
        for i, step in enumerate(steps):
            if isinstance(step, dict):
                for inner in step.values():
                    visit(inner)
            elif isinstance(step, str) and step.split()[:1] == ["infer"]:
                parts = step.split()
                new = " ".join(["infer", str(iterations)] + parts[2:])
                changed.append((step, new))
                steps[i] = new

    visit(tests[benchmark]["script"])
    if not changed:
        raise Abort(f"the runner's tests_performance.yaml has no infer step for {benchmark}")
    path.write_text(yaml.safe_dump(tests, sort_keys=False))
    return changed


# -- the virtual board --------------------------------------------------------------------------------------------

def flash(board_name, state_dir, baud, model):
    """Firmware + ``model`` (as /models/model.tflite) onto the virtual board's flash image."""
    from tinyhost import board

    staged = state_dir / "model.tflite"
    shutil.copyfile(model, staged)
    with board.connect(f"sim:{board_name}", baud=baud, state_dir=state_dir / "board") as b:
        report, _ = b.flash([staged])
    return report


def measure_latency_us(port, baud, sample, settle_s=2.0):
    """Device-clock microseconds per inference of ``sample`` through the same text protocol (our driver): a short
    run for an estimate, then one of about ``settle_s`` seconds."""
    from tinyhost.bench.eembc_host import EembcDut

    with EembcDut(port, baud=baud, timeout_s=RUNNER_REPLY_TIMEOUT_S) as dut:
        dut.sync()
        _, model = dut.profile()
        dut.load(sample)
        run = dut.infer(3, 1, timeout_s=120.0)
        iterations = max(3, min(2000, int(settle_s * 1e6 * run.iterations / max(1, run.elapsed_us))))
        run = dut.infer(iterations, 0, timeout_s=120.0)
    return model, run.elapsed_us / run.iterations


# -- one run of the runner ------------------------------------------------------------------------------------------

RESULT_LINES = (("throughput_inf_per_s", re.compile(r"Median throughput is\s+([\d.]+) inf\./sec")),
                ("top1_percent", re.compile(r"Top 1% = ([\d.]+)")),
                ("auc", re.compile(r"AUC = ([\d.]+)")))


def run_runner(runner_dir, work_dir, mode, port, vid, pid, devices, tests, dataset_root, timeout_s, echo):
    """Run main.py --mode ``mode`` in ``work_dir`` (where it writes sessions/<time>/); returns a dict with the
    session folder, its results.txt text, parsed figures, the exit status and the output's last lines."""
    before = set((work_dir / "sessions").glob("*")) if (work_dir / "sessions").is_dir() else set()
    args = [sys.executable, str(Path(__file__).resolve()), CHILD_FLAG, str(runner_dir), port, f"{vid:04X}",
            f"{pid:04X}", "--", f"--device_list={devices}", f"--test_script={tests}",
            f"--dataset_path={dataset_root}", f"--mode={mode}"]
    env = dict(os.environ, MPLBACKEND="Agg", PYTHONUNBUFFERED="1")
    lines = []
    t0 = time.monotonic()
    with subprocess.Popen(args, cwd=work_dir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True) as child:
        try:
            for line in child.stdout:
                lines.append(line.rstrip("\n"))
                if echo:
                    print(f"  runner| {lines[-1]}", flush=True)
                if time.monotonic() - t0 > timeout_s:
                    child.kill()
                    lines.append(f"(killed by {Path(__file__).name} after {timeout_s:.0f} s)")
                    break
        finally:
            status = child.wait()
    wall_s = time.monotonic() - t0
    sessions = sorted(set((work_dir / "sessions").glob("*")) - before)
    session = sessions[-1] if sessions else None
    results_txt = ""
    if session and (session / "results.txt").is_file():
        results_txt = (session / "results.txt").read_text()
    figures = {}
    for key, pattern in RESULT_LINES:
        m = pattern.search(results_txt)
        if m:
            figures[key] = float(m.group(1))
    errors = [ln for ln in results_txt.splitlines() if "ERROR" in ln]
    return {"mode": MODES[mode], "status": status, "wall_s": wall_s, "session": session, "results_txt": results_txt,
            "figures": figures, "errors": errors, "output_tail": lines[-15:]}


def report(run, label):
    print(f"\n== official runner, {run['mode']} mode ({label}): exit status {run['status']}, "
          f"{run['wall_s']:.1f} s wall")
    if run["session"]:
        print(f"   session: {run['session']} (log.txt, results.txt, results.json)")
    if run["results_txt"]:
        print("   results.txt, as the runner wrote it:")
        for line in run["results_txt"].splitlines():
            print(f"   | {line}")
    else:
        print("   the runner wrote no results.txt; its last output lines:")
        for line in run["output_tail"]:
            print(f"   | {line}")


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == [CHILD_FLAG]:
        runner_child(argv[1:])
        return 0
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runner-dir", default=os.environ.get("MLPERF_TINY_RUNNER"),
                    help="the official runner's folder (mlcommons/tiny benchmark/runner) [$MLPERF_TINY_RUNNER]")
    ap.add_argument("--benchmark", choices=sorted(SHIPPED), default="kws01")
    ap.add_argument("--board", default="esp32", help="board profile the virtual board emulates [esp32]")
    ap.add_argument("--baud", type=int, default=None,
                    help="line rate of the virtual board and of the runner's devices yaml [the profile's]")
    ap.add_argument("--model", type=Path, default=None, help="model file [the shipped model of --benchmark]")
    ap.add_argument("--dataset", type=Path, default=None,
                    help="test set in the MLPerf layout to take samples from [the shipped test set]")
    ap.add_argument("--per-class", type=int, default=2, help="samples of each class in the accuracy run [2]")
    ap.add_argument("--modes", default="pa", help="p (performance), a (accuracy) or both [pa]")
    ap.add_argument("--perf-iterations", default="auto",
                    help="infer count of the performance windows: auto (about --window-s s each), official "
                         "(the runner's tests_performance.yaml as is) or a number [auto]")
    ap.add_argument("--window-s", type=float, default=12.0, help="target length of a performance window [12]")
    ap.add_argument("--out", type=Path, default=REPO / "out" / "mlperf-runner",
                    help="work folder: flash image, data set, yaml files, the runner's sessions/ [out/mlperf-runner]")
    ap.add_argument("--timeout-s", type=float, default=1800.0, help="limit for each runner run [1800]")
    ap.add_argument("--echo", action="store_true", help="show the runner's output as it runs")
    ap.add_argument("--log-traffic", action="store_true",
                    help="echo: True on the DUT entry: the runner logs every command and reply line to log.txt")
    args = ap.parse_args(argv)
    if args.runner_dir is None:     # `python -m benchmarks` runs every benchmark: this one needs the runner's code
        print("mlperf_runner: skipped, no MLPerf Tiny runner given: get it with `git clone "
              "https://github.com/mlcommons/tiny` and pass --runner-dir tiny/benchmark/runner "
              "(or set MLPERF_TINY_RUNNER)", file=sys.stderr)
        return 0
    try:
        return run(args)
    except Abort as e:
        print(f"mlperf_runner: {e}", file=sys.stderr)
        return 2


def run(args):
    from tinyhost import boards
    from tinyhost.paths import models_dir
    from tinyhost.sim import VirtualBoard

    runner_dir = find_runner(args.runner_dir)
    check_runner_modules()
    if set(args.modes) - set(MODES) or not args.modes:
        raise Abort(f"--modes takes p and/or a, not {args.modes!r}")
    if args.per_class < 1:
        raise Abort("--per-class must be at least 1")
    profile = boards.load(args.board)
    baud = args.baud or profile.baud
    if not profile.usb_ids:
        raise Abort(f"board profile {args.board} has no USB ids to present the virtual board with; "
                    "use --board esp32 (or another real board's profile)")
    vid, pid = (int(x, 16) for x in profile.usb_ids[0].split(":"))
    shipped = models_dir()
    _, model_rel, testset_rel = SHIPPED[args.benchmark]
    model = args.model or (shipped / model_rel if shipped else None)
    testset = args.dataset or (shipped / testset_rel if shipped else None)
    if model is None or not Path(model).is_file():
        raise Abort(f"model {model} not found: pass --model FILE")
    if testset is None or not Path(testset).is_dir():
        raise Abort(f"test set {testset} not found: pass --dataset DIR")

    work = (args.out / args.benchmark).resolve()
    work.mkdir(parents=True, exist_ok=True)
    state = work / "state"
    state.mkdir(exist_ok=True)
    dataset_root = work / "datasets"
    rows = build_dataset(Path(testset), dataset_root, args.benchmark, args.per_class)
    devices = work / "devices_tinyhost.yaml"
    write_devices_yaml(devices, args.board, baud, vid, pid, args.log_traffic)
    label = (f"VIRTUAL BOARD: MicroPython unix VM on this PC's CPU emulating {args.board}'s heap, flash and "
             f"{baud} baud line; not a hardware measurement")
    print(f"model {model}\ndata set {dataset_root / args.benchmark}: {len(rows)} samples "
          f"(at least {args.per_class} per class)", flush=True)
    print(f"flashing a virtual {args.board} ({state / 'board'}) ...", flush=True)
    flashed = flash(args.board, state, baud, Path(model))
    print(f"  sent {len(flashed.sent)} files ({flashed.bytes_sent} B), {len(flashed.skipped)} already there",
          flush=True)

    results = []
    with VirtualBoard(board=args.board, state_dir=state / "board", baud=baud) as vb:
        print(f"virtual {args.board} booted on {vb.port}; the runner sees it as USB {vid:04X}:{pid:04X}",
              flush=True)
        sample = (dataset_root / args.benchmark / rows[0][0]).read_bytes()
        model_id, latency_us = measure_latency_us(vb.port, baud, sample)
        if model_id != args.benchmark:
            raise Abort(f"the firmware reports model {model_id!r} for {model}, not {args.benchmark}")
        print(f"device-clock latency {latency_us / 1000:.2f} ms per inference ({args.benchmark}, our driver)",
              flush=True)
        for mode in args.modes:
            if mode == "p" and args.perf_iterations != "official":
                if args.perf_iterations == "auto":
                    ceiling = int(0.7 * RUNNER_REPLY_TIMEOUT_S * 1e6 / latency_us)
                    iterations = max(1, min(ceiling, math.ceil(args.window_s * 1e6 / latency_us)))
                else:
                    iterations = int(args.perf_iterations)
                tests = work / "tests_performance_tinyhost.yaml"
                changed = write_perf_yaml(runner_dir, tests, args.benchmark, iterations)
                print(f"performance script: the runner's tests_performance.yaml with {changed[0][0]!r} -> "
                      f"{changed[0][1]!r} ({tests})", flush=True)
            else:
                tests = runner_dir / ("tests_performance.yaml" if mode == "p" else "tests_accuracy.yaml")
            print(f"running the official runner, {MODES[mode]} mode ...", flush=True)
            r = run_runner(runner_dir, work, mode, vb.port, vid, pid, devices, tests, dataset_root,
                           args.timeout_s, args.echo)
            report(r, label)
            results.append(r)
    print(f"\nsummary ({label}):")
    for r in results:
        figures = ", ".join(f"{k} {v:g}" for k, v in r["figures"].items()) or "no figures"
        errors = f"; runner errors: {' | '.join(r['errors'])}" if r["errors"] else ""
        print(f"  {r['mode']}: exit {r['status']}, {figures}{errors}")
    return 0 if all(r["status"] == 0 and r["figures"] and not r["errors"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
