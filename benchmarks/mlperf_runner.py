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

Streaming wakeword (--benchmark sww01, docs/streaming.md): the firmware names itself sww01 (/mlperf_model) and
serves the kws model; the runner's performance script plays the first WAV of --truth-file (its tests yaml copied
with only truth_file changed) from the interface board. tinyhost.bench.interface_board stands in for that board on a
second pty (named stm32h573i-dk in the devices yaml, VID:PID 0483:374E), and the DUT's port the runner opens is a
pty in front of the virtual board's link, on which the stand-in plays the WAV in AUDIO frames; the detections and
duty cycle it reports are the board's, in board time.

Every figure is from the virtual board: its CPU is this PC's, not the board's.

    git clone https://github.com/mlcommons/tiny && pip install -e '.[mlperf-runner]'
    nice -n 19 python benchmarks/mlperf_runner.py --runner-dir tiny/benchmark/runner [--benchmark kws01|vww01|sww01]
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
# benchmark -> (shipped model name, model file, test set: None for sww01, whose data are WAVs and a truth JSON)
SHIPPED = {"kws01": ("kws", "kws/kws.tflite", "kws/testset"), "vww01": ("vww", "vww/vww.tflite", "vww/testset"),
           "sww01": ("kws", "kws/kws.tflite", None)}
STREAMING = "sww01"
# the interface board the devices yaml names: the runner drives an entry named stm32h573i-dk with its enhanced
# IO manager (play, record_detections, print_detections, print_dutycycle); the VID:PID is that board's
INTERFACE_NAME, INTERFACE_USB = "stm32h573i-dk", (0x0483, 0x374E)
SWW_DATA = "sww_data_dir"          # the runner's folder of streaming WAVs and truth JSONs
SWW_TRUTH = "sww_short_test.json"  # the one whose WAV the runner ships (its long and medium WAVs are not in git)
RUNNER_FILES = ("main.py", "device_manager.py", "device_under_test.py", "serial_device.py", "script.py",
                "datasets.py", "tests_performance.yaml", "tests_accuracy.yaml")
RUNNER_MODULES = {"yaml": "pyyaml", "usb": "pyusb", "sklearn": "scikit-learn", "matplotlib": "matplotlib"}
RUNNER_REPLY_TIMEOUT_S = 30.0     # device_under_test.py: infer waits this long for each reply line
DUT_NAME = "tinyhost"             # what the firmware answers to name%: the devices yaml's check_name
CHILD_FLAG = "--as-runner-child"
MODES = {"p": "performance", "a": "accuracy"}
PERF_WINDOWS = 5                  # tests_performance.yaml: `loop 5`, one data file each
RUNNER_LOOP_MIN_S = 10.0          # script.py: ERROR 2 when the loop took less of the runner's clock


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
    """``CHILD_FLAG RUNNER_DIR PORT@VID:PID ... -- main.py arguments``: run the runner's main.py as __main__ with
    these ports (the virtual board's; for sww01 also the interface-board stand-in's) as the only serial ports."""
    import runpy

    runner_dir = argv[0]
    ports = [spec.rsplit("@", 1) for spec in argv[1:argv.index("--")]]
    runner_args = argv[argv.index("--") + 1:]

    from serial.tools import list_ports, list_ports_common

    def virtual_board_only(include_links=False):
        infos = []
        for port, usb_id in ports:
            vid, pid = (int(x, 16) for x in usb_id.split(":"))
            info = list_ports_common.ListPortInfo(port, skip_link_detection=True)
            info.vid, info.pid = vid, pid
            info.description = "tinyhost virtual board"
            info.hwid = f"USB VID:PID={vid:04X}:{pid:04X} (tinyhost, on {port})"
            infos.append(info)
        return infos

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
    status = 0
    try:
        runpy.run_path(sys.argv[0], run_name="__main__")
    except BaseException:       # the runner's serial read threads would keep the process alive after its traceback
        import traceback

        traceback.print_exc()
        status = 1
    import logging

    logging.shutdown()          # the runner logs its output: flush it to log.txt and stdout
    sys.__stdout__.flush()
    os._exit(status)


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


def write_devices_yaml(path, board, baud, vid, pid, echo=False, interface=False):
    text = ("# the virtual board, as the MLPerf Tiny runner's devices yaml describes a DUT connected to the host\n"
            f"- name: tinyhost-virtual-{board}\n"
            "  type: dut\n"
            f"  check_name: {DUT_NAME}\n"
            f"  echo: {'True' if echo else 'False'}\n"
            f"  baud:\n    performance: {baud}\n    accuracy: {baud}\n    energy: {baud}\n"
            f"  usb:\n    0x{vid:04X}: 0x{pid:04X}\n")
    if interface:
        text += ("# tinyhost's interface-board stand-in (tinyhost.bench.interface_board), under the name that makes the\n"
                 "# runner use its enhanced IO manager\n"
                 f"- name: {INTERFACE_NAME}\n"
                 "  type: interface\n"
                 "  preference: 2\n"
                 "  baud: 115200\n"
                 f"  usb:\n    0x{INTERFACE_USB[0]:04X}: 0x{INTERFACE_USB[1]:04X}\n")
    path.write_text(text)


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


def read_sww_truth(sww_data, truth_file):
    """The runner's truth JSON ``sww_data/truth_file`` (a list of {wav_file, length_sec, detection_windows}), each
    WAV checked to be in ``sww_data``: the folder the interface-board stand-in plays from."""
    import json

    path = sww_data / truth_file
    if not path.is_file():
        raise Abort(f"no truth file {path}: pass --sww-data DIR and --truth-file NAME (build a stream with "
                    "`python -m tinyhost.bench.sww DIR`, which writes one)")
    try:
        entries = json.loads(path.read_text())
        wavs = [(e["wav_file"], float(e["length_sec"])) for e in entries]
    except (ValueError, KeyError, TypeError) as e:
        raise Abort(f"{path} is not a truth file in the runner's form (a list of wav_file, length_sec, "
                    f"detection_windows): {e}") from None
    for name, _ in wavs:
        wav = sww_data / name
        if not wav.is_file() or wav.stat().st_size == 0:
            raise Abort(f"{path} names {name}, but {wav} is {'empty' if wav.is_file() else 'missing'} (the runner's "
                        f"git holds only the short WAV): pass --truth-file {SWW_TRUTH}, or build a stream with "
                        "`python -m tinyhost.bench.sww DIR` and pass --sww-data DIR --truth-file sww_test.json")
    return path, wavs


def write_sww_yaml(runner_dir, path, mode, truth_file):
    """The runner's tests yaml of ``mode`` with sww01's truth file set to ``truth_file``; returns its old name."""
    import yaml

    source = runner_dir / ("tests_performance.yaml" if mode == "p" else "tests_accuracy.yaml")
    tests = yaml.safe_load(source.read_text())
    if STREAMING not in tests:
        raise Abort(f"the runner's {source.name} has no {STREAMING} test (MLPerf Tiny v1.3 added it): update the runner")
    old = tests[STREAMING].get("truth_file")
    tests[STREAMING]["truth_file"] = truth_file
    path.write_text(yaml.safe_dump(tests, sort_keys=False))
    return old


def board_usb_id(profile):
    """The first USB VID:PID of ``profile``, else of the profile it extends (a ROMFS variant is the same board on
    the same USB bridge); None when neither names one."""
    import tomllib

    from tinyhost import boards

    if profile.usb_ids:
        return profile.usb_ids[0]
    parent = tomllib.loads(profile.path.read_text()).get("extends") if profile.path else None
    return board_usb_id(boards.load(parent)) if parent else None


# -- the virtual board --------------------------------------------------------------------------------------------

def flash(board_name, state_dir, baud, model, benchmark):
    """Firmware + ``model`` onto the virtual board's flash image: as /models/model.tflite (the firmware's default
    boot model); for sww01 under its own name (the board-time model knows its front end by it) as the boot model,
    with /mlperf_model naming sww01."""
    from tinyhost import board
    from tinyhost.flash import model_remote_path, set_boot_model, set_mlperf_model

    staged = state_dir / ("model.tflite" if benchmark != STREAMING else Path(model).name)
    shutil.copyfile(model, staged)
    with board.connect(f"sim:{board_name}", baud=baud, state_dir=state_dir / "board") as b:
        report, _ = b.flash([staged])
        streaming = benchmark == STREAMING
        set_boot_model(b.dev, model_remote_path(staged, b.profile) if streaming else None)
        set_mlperf_model(b.dev, STREAMING if streaming else None)
    return report


def measure_latency_us(port, baud, sample, settle_s=2.0):
    """(model id, device-clock us, host wall-clock us) per inference of ``sample`` through the same text protocol
    (our driver): a short run for an estimate, then one of about ``settle_s`` seconds of the device's clock. On a
    virtual board the device's clock is board time, and the two differ."""
    from tinyhost.bench.eembc_host import EembcDut

    with EembcDut(port, baud=baud, timeout_s=RUNNER_REPLY_TIMEOUT_S) as dut:
        dut.sync()
        _, model = dut.profile()
        dut.load(sample)
        run = dut.infer(3, 1, timeout_s=120.0)
        iterations = max(3, min(2000, int(settle_s * 1e6 * run.iterations / max(1, run.elapsed_us))))
        t0 = time.monotonic()
        run = dut.infer(iterations, 0, timeout_s=120.0)
        wall_us = (time.monotonic() - t0) * 1e6
    return model, run.elapsed_us / run.iterations, wall_us / run.iterations


# -- one run of the runner ------------------------------------------------------------------------------------------

NUMBER = r"([-+\d.eE]+|nan|inf)"
RESULT_LINES = (("throughput_inf_per_s", re.compile(r"Median throughput is\s+([\d.]+) inf\./sec")),
                ("top1_percent", re.compile(r"Top 1% = ([\d.]+)")),
                ("auc", re.compile(r"AUC = ([\d.]+)")),
                # the streaming wakeword test's (streaming_ww_utils.summarize_sww_result)
                ("true_positives", re.compile(r"Accuracy: (\d+) True positives")),
                ("false_negatives", re.compile(r"(\d+) False negatives")),
                ("false_positives", re.compile(r"(\d+) False positives")),
                ("duty_cycle", re.compile(r"Average duty cycle: " + NUMBER)),
                ("period_s", re.compile(r"Average period: " + NUMBER + " s")),
                ("estimated_throughput_inf_per_s", re.compile(r"Estimated throughput: " + NUMBER + r" inf\./sec")))


def run_runner(runner_dir, work_dir, mode, ports, devices, tests, dataset_root, timeout_s, echo):
    """Run main.py --mode ``mode`` in ``work_dir`` (where it writes sessions/<time>/) with ``ports`` ((port, vid,
    pid), ...) as the serial ports it finds; returns a dict with the session folder, its results.txt text, parsed
    figures, the exit status and the output's last lines."""
    before = set((work_dir / "sessions").glob("*")) if (work_dir / "sessions").is_dir() else set()
    args = [sys.executable, str(Path(__file__).resolve()), CHILD_FLAG, str(runner_dir),
            *(f"{port}@{vid:04X}:{pid:04X}" for port, vid, pid in ports), "--", f"--device_list={devices}",
            f"--test_script={tests}", f"--dataset_path={dataset_root}", f"--mode={mode}"]
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
    ap.add_argument("--benchmark", choices=sorted(SHIPPED), default="kws01",
                    help="sww01: the streaming wakeword test, with tinyhost's interface-board stand-in [kws01]")
    ap.add_argument("--board", default=None,
                    help="board profile the virtual board emulates [esp32; esp32s3-romfs for sww01]")
    ap.add_argument("--baud", type=int, default=None,
                    help="line rate of the virtual board and of the runner's devices yaml [the profile's; 921600 "
                         "for sww01, whose audio crosses the line]")
    ap.add_argument("--model", type=Path, default=None, help="model file [the shipped model of --benchmark]")
    ap.add_argument("--dataset", type=Path, default=None,
                    help="test set in the MLPerf layout to take samples from [the shipped test set]")
    ap.add_argument("--per-class", type=int, default=2, help="samples of each class in the accuracy run [2]")
    ap.add_argument("--sww-data", type=Path, default=None,
                    help=f"sww01: folder of the WAVs and truth JSON, the stand-in's SD card [<runner-dir>/{SWW_DATA}]")
    ap.add_argument("--truth-file", default=SWW_TRUTH, help=f"sww01: the truth JSON in --sww-data [{SWW_TRUTH}]")
    ap.add_argument("--modes", default=None,
                    help="p (performance), a (accuracy) or both [pa; p for sww01: the runner's accuracy script "
                         "loops over a streaming data set that has no file count]")
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
    streaming = args.benchmark == STREAMING
    args.board = args.board or ("esp32s3-romfs" if streaming else "esp32")
    args.modes = args.modes or ("p" if streaming else "pa")
    try:
        return run(args)
    except Abort as e:
        print(f"mlperf_runner: {e}", file=sys.stderr)
        return 2


def run(args):
    from tinyhost import boards
    from tinyhost.paths import models_dir
    from tinyhost.sim import VirtualBoard, board_state_dir

    runner_dir = find_runner(args.runner_dir)
    check_runner_modules()
    streaming = args.benchmark == STREAMING
    if set(args.modes) - set(MODES) or not args.modes:
        raise Abort(f"--modes takes p and/or a, not {args.modes!r}")
    if args.per_class < 1:
        raise Abort("--per-class must be at least 1")
    profile = boards.load(args.board)
    baud = args.baud or (921600 if streaming else profile.baud)
    usb_id = board_usb_id(profile)
    if usb_id is None:
        raise Abort(f"board profile {args.board} has no USB ids to present the virtual board with; "
                    "use --board esp32 (or another real board's profile)")
    vid, pid = (int(x, 16) for x in usb_id.split(":"))
    shipped = models_dir()
    _, model_rel, testset_rel = SHIPPED[args.benchmark]
    model = args.model or (shipped / model_rel if shipped else None)
    if model is None or not Path(model).is_file():
        raise Abort(f"model {model} not found: pass --model FILE")

    work = (args.out / args.benchmark).resolve()
    work.mkdir(parents=True, exist_ok=True)
    state = work / "state"
    state.mkdir(exist_ok=True)
    dataset_root = work / "datasets"
    if streaming:
        sww_data = (args.sww_data or runner_dir / SWW_DATA).resolve()
        truth, wavs = read_sww_truth(sww_data, args.truth_file)
        (dataset_root / STREAMING).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(truth, dataset_root / STREAMING / truth.name)
        print(f"model {model}\nstreams {truth}: {', '.join(f'{n} ({s:g} s)' for n, s in wavs)}", flush=True)
    else:
        testset = args.dataset or (shipped / testset_rel if shipped else None)
        if testset is None or not Path(testset).is_dir():
            raise Abort(f"test set {testset} not found: pass --dataset DIR")
        rows = build_dataset(Path(testset), dataset_root, args.benchmark, args.per_class)
        print(f"model {model}\ndata set {dataset_root / args.benchmark}: {len(rows)} samples "
              f"(at least {args.per_class} per class)", flush=True)
    devices = work / "devices_tinyhost.yaml"
    write_devices_yaml(devices, args.board, baud, vid, pid, args.log_traffic, interface=streaming)
    label = (f"VIRTUAL BOARD: MicroPython unix VM on this PC's CPU emulating {args.board}'s heap, flash and "
             f"{baud} baud line; not a hardware measurement")
    print(f"flashing a virtual {args.board} ({state / 'board'}) ...", flush=True)
    flashed = flash(args.board, state, baud, Path(model), args.benchmark)
    print(f"  sent {len(flashed.sent)} files ({flashed.bytes_sent} B), {len(flashed.skipped)} already there",
          flush=True)

    results = []
    # the folder board.connect flashed: its state_dir is the root of the virtual boards' folders
    with VirtualBoard(board=args.board, state_dir=board_state_dir(args.board, state / "board"), baud=baud) as vb:
        print(f"virtual {args.board} booted on {vb.port}; the runner sees it as USB {vid:04X}:{pid:04X}",
              flush=True)
        if streaming:
            results = run_streaming(args, runner_dir, work, vb.port, baud, (vid, pid), devices, dataset_root,
                                    sww_data, truth.name, label)
        else:
            results = run_batch(args, runner_dir, work, vb.port, baud, (vid, pid), devices, dataset_root, rows,
                                label)
    print(f"\nsummary ({label}):")
    for r in results:
        figures = ", ".join(f"{k} {v:g}" for k, v in r["figures"].items()) or "no figures"
        errors = f"; runner errors: {' | '.join(r['errors'])}" if r["errors"] else ""
        print(f"  {r['mode']}: exit {r['status']}, {figures}{errors}")
        if r.get("stand_in"):
            print(f"  {r['stand_in']}")
    return 0 if all(r["status"] == 0 and r["figures"] and not r["errors"] for r in results) else 1


def run_batch(args, runner_dir, work, port, baud, usb, devices, dataset_root, rows, label):
    """kws01, vww01: the runner's performance and accuracy modes, host and DUT connected directly."""
    sample = (dataset_root / args.benchmark / rows[0][0]).read_bytes()
    model_id, latency_us, wall_us = measure_latency_us(port, baud, sample)
    if model_id != args.benchmark:
        raise Abort(f"the firmware reports model {model_id!r} for the model, not {args.benchmark}")
    print(f"device-clock latency {latency_us / 1000:.2f} ms per inference ({args.benchmark}, our driver; "
          f"{wall_us / 1000:.2f} ms of this host's time)", flush=True)
    results = []
    for mode in args.modes:
        if mode == "p" and args.perf_iterations != "official":
            if args.perf_iterations == "auto":
                # a window of --window-s on the device's clock; the runner also wants its 5-window loop to last 10 s
                # of its own clock, and waits 30 s for each reply line
                ceiling = int(0.7 * RUNNER_REPLY_TIMEOUT_S * 1e6 / wall_us)
                wanted = max(math.ceil(args.window_s * 1e6 / latency_us),
                             math.ceil(RUNNER_LOOP_MIN_S * 1.2 / PERF_WINDOWS * 1e6 / wall_us))
                iterations = max(1, min(ceiling, wanted))
            else:
                iterations = int(args.perf_iterations)
            tests = work / "tests_performance_tinyhost.yaml"
            changed = write_perf_yaml(runner_dir, tests, args.benchmark, iterations)
            print(f"performance script: the runner's tests_performance.yaml with {changed[0][0]!r} -> "
                  f"{changed[0][1]!r} ({tests})", flush=True)
        else:
            tests = runner_dir / ("tests_performance.yaml" if mode == "p" else "tests_accuracy.yaml")
        print(f"running the official runner, {MODES[mode]} mode ...", flush=True)
        r = run_runner(runner_dir, work, mode, [(port, *usb)], devices, tests, dataset_root, args.timeout_s,
                       args.echo)
        report(r, label)
        results.append(r)
    return results


def run_streaming(args, runner_dir, work, port, baud, usb, devices, dataset_root, sww_data, truth_name, label):
    """sww01: the runner's streaming wakeword test, the DUT's port behind tinyhost's tap and the interface board
    played by tinyhost's stand-in (tinyhost.bench.interface_board), which streams the WAVs over the DUT's link."""
    from tinyhost import board as board_layer
    from tinyhost import stream as st
    from tinyhost.bench.eembc_host import EembcDut
    from tinyhost.bench.interface_board import DutLineTap, InterfaceBoard
    from tinyhost.zoo import KWS_LABELS

    def said(playback):
        heard = ", ".join(f"{ms / 1000:.2f} s {KWS_LABELS[c] if c < len(KWS_LABELS) else c}"
                          for ms, _, c, _ in playback.detections) or "nothing"
        print(f"  stand-in: played {playback.wav_file} ({playback.audio_s:.1f} s of audio in {playback.frames} "
              f"AUDIO frames, {playback.wall_s:.1f} s wall); the board did {playback.hops} hops and heard {heard}"
              + (f"; ERROR {playback.error}" if playback.error else ""), flush=True)

    results = []
    with EembcDut(port, baud=baud) as dut:                 # the runtime main.py starts: up and answering
        dut.sync()
    with board_layer.connect(port=port, baud=baud) as b, DutLineTap(b.dev) as tap, \
            InterfaceBoard(tap, sww_data, on_playback=said) as io:
        frame = st.audio_frame_bytes(tap.dev.link.max_payload)
        if not st.line_keeps_up(baud, frame):
            raise Abort(f"the line ({baud} baud) carries the audio at {baud / st.line_bits_per_s(frame):.2f}x real "
                        f"time: pass --baud {st.fast_enough_baud(frame)}")
        print(f"DUT port for the runner: {tap.port} (the board's link, tapped); interface-board stand-in: {io.port} "
              f"(USB {INTERFACE_USB[0]:04X}:{INTERFACE_USB[1]:04X}), playing from {sww_data}", flush=True)
        ports = [(tap.port, *usb), (io.port, *INTERFACE_USB)]
        for mode in args.modes:
            tests = work / f"tests_{MODES[mode]}_sww_tinyhost.yaml"
            old = write_sww_yaml(runner_dir, tests, mode, truth_name)
            print(f"{MODES[mode]} script: the runner's, with sww01's truth_file {old} -> {truth_name} ({tests})",
                  flush=True)
            print(f"running the official runner, {MODES[mode]} mode (streaming wakeword) ...", flush=True)
            before = len(io.playbacks)
            r = run_runner(runner_dir, work, mode, ports, devices, tests, dataset_root, args.timeout_s, args.echo)
            played = io.playbacks[before:]
            audio_s = sum(p.audio_s for p in played)
            if audio_s and "false_positives" in r["figures"]:
                r["stand_in"] = (f"{r['figures']['false_positives'] * 3600 / audio_s:.1f} false accepts per hour: "
                                 f"the runner's false positives over the {audio_s:.1f} s the stand-in played")
            report(r, label + "; interface board: tinyhost's stand-in, detections and duty cycle in board time")
            results.append(r)
    return results


if __name__ == "__main__":
    sys.exit(main())
