"""Link efficiency on the virtual board at 115200 baud: our binary protocol against the MLPerf Tiny hex protocol.

Measures, in one run on the same virtual link:
  1. input bytes per second with our protocol (SET_INPUT frames) and with the EEMBC protocol (`db load N`, then
     `db HEX` commands of 31 bytes, one reply each), each as a fraction of the line rate (baud / 10 for 8N1);
  2. an accuracy run's wall time against its floor: input bytes / line rate + sum of device inference times,
     with our protocol (one INFER round trip per sample) and with the EEMBC protocol.
Targets: ours >= 90 % of the line rate; accuracy run <= 1.15 x its floor. The printed ratios are what was
measured in this run; nothing is adjusted.

    nice -n 19 python benchmarks/link_efficiency.py [--baud 115200] [--samples 5] [--input vww|kws]
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SHAPES = {"vww": (1, 96, 96, 3), "kws": (1, 49, 10, 1)}


def tiny_model(path, shape):
    """A random-weight model with the given input and a cheap body, so the link dominates."""
    from tinyhost.model.writer import small_classifier

    return small_classifier(path, shape, 2 if shape[1] == 96 else 12, seed=1, pool=8 if shape[1] >= 32 else 7)

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baud", type=int, default=115200)
    ap.add_argument("--samples", type=int, default=5, help="samples in each accuracy run")
    ap.add_argument("--input", choices=sorted(SHAPES), default="vww", help="input size: vww 27648 B, kws 490 B")
    ap.add_argument("--repeats", type=int, default=3, help="input transfers timed per protocol")
    ap.add_argument("--board", default=None,
                    help="board profile the virtual board emulates (default: esp32s3 for vww inputs: on the esp32 "
                         "profile the EEMBC part runs too -- `db load` writes into the input tensor -- but with "
                         "only ~7 KB of heap left; esp32 for kws)")
    args = ap.parse_args(argv)

    from tinyhost.board import connect
    from tinyhost.bench import datasets, journal, runner
    from tinyhost.bench.eembc_host import EembcDut, EembcTarget

    line_rate = args.baud / 10.0
    shape = SHAPES[args.input]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = tiny_model(tmp / "link_model.tflite", shape)
        nbytes = int(np.prod(shape))
        rng = np.random.default_rng(2)
        data_dir = tmp / ("vww01" if args.input == "vww" else "kws01")
        data_dir.mkdir()
        for i in range(args.samples):
            (data_dir / f"s{i}.bin").write_bytes(rng.integers(0, 256, nbytes, dtype=np.uint8).tobytes())
        classes = 2 if args.input == "vww" else 12
        (data_dir / "y_labels.csv").write_text("".join(f"s{i}.bin,{classes},{i % classes}\n"
                                                       for i in range(args.samples)))
        ds = datasets.load(data_dir)

        board = args.board or ("esp32s3" if args.input == "vww" else "esp32")
        with connect(f"sim:{board}", baud=args.baud, state_dir=tmp / "state") as b:
            print(f"virtual board: {board} profile at {args.baud} baud on {b.port}; line rate {line_rate:.0f} B/s; "
                  f"input {nbytes} bytes ({args.input})", flush=True)
            b.sync_firmware()
            info = b.load(model)            # the model with its load plan, then INFO, soft reset, LOAD
            dev = b.dev
            data = rng.integers(-128, 128, nbytes, dtype=np.int8).tobytes()

            t0 = time.monotonic()
            for _ in range(args.repeats):
                dev.set_input(data)
            ours_bps = args.repeats * nbytes / (time.monotonic() - t0)

            target = runner.TinyhostTarget(lambda: (dev, info))
            with journal.Journal.open(tmp / "ours.jsonl", {"model_sha256": "link"}) as j:
                t0 = time.monotonic()
                acc = runner.run_accuracy(target, ds, j)
                ours_wall = time.monotonic() - t0
            ours_floor = acc.input_bytes / line_rate + acc.device_time_s

            dut = EembcDut(dev.t, baud=args.baud, timeout_s=30.0)
            dut.sync()
            t0 = time.monotonic()
            for _ in range(args.repeats):
                dut.load(data)
            eembc_bps = args.repeats * nbytes / (time.monotonic() - t0)
            with journal.Journal.open(tmp / "eembc.jsonl", {"model_sha256": "link"}) as j:
                t0 = time.monotonic()
                acc_e = runner.run_accuracy(EembcTarget(dut, ds.benchmark), ds, j)
                eembc_wall = time.monotonic() - t0
            eembc_floor = acc_e.input_bytes / line_rate + acc_e.device_time_s
            stats = dev.stats()

    print()
    print(f"{'':34}{'ours':>14}{'MLPerf Tiny hex':>18}")
    print(f"{'input bytes/s':34}{ours_bps:>14.0f}{eembc_bps:>18.0f}")
    print(f"{'fraction of line rate':34}{ours_bps / line_rate:>13.1%} {eembc_bps / line_rate:>17.1%}"
          f"   target ours >= 90 %: {'met' if ours_bps / line_rate >= 0.9 else 'NOT met'}")
    print(f"{'accuracy run, {0} samples: wall s'.format(args.samples):34}{ours_wall:>14.2f}{eembc_wall:>18.2f}")
    print(f"{'  floor s (bytes/line rate + dev)':34}{ours_floor:>14.2f}{eembc_floor:>18.2f}")
    print(f"{'  wall / floor':34}{ours_wall / ours_floor:>14.3f}{eembc_wall / eembc_floor:>18.3f}"
          f"   target ours <= 1.15: {'met' if ours_wall / ours_floor <= 1.15 else 'NOT met'}")
    print(f"board heap after both runs: {stats['heap_free_bytes']} B free, peak live {stats['heap_peak_bytes']} B "
          f"(input kept by the runtime: {info.raw.get('input_kept', '?')})")
    print("(virtual board: timings are the host's; the line rate is the emulated one)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
