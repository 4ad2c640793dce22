"""Run the benchmarks: ``python -m benchmarks`` (all of them, one after the other) or ``python -m benchmarks NAME...``
(e.g. ``upload_throughput``). Each is also a script of its own: ``python -m benchmarks.NAME --help``."""

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
# Arguments a benchmark gets when run from here. engine_latency measures the engine's speed target (fast backend <= 1.5x TFLM) on the virtual board
# itself (firmware and models in its ROMFS partition, on the esp32 heap), as `tinyhost bench` would see it (~3
# min); run it on its own for the other modes.
ARGS = {"engine_latency": ["--board", "esp32-romfs"]}


def main(argv):
    available = sorted(p.stem for p in HERE.glob("*.py") if not p.stem.startswith("_"))
    chosen = argv or available
    unknown = [n for n in chosen if n not in available]
    if unknown:
        print(f"unknown benchmark(s): {', '.join(unknown)}; available: {', '.join(available)}", file=sys.stderr)
        return 2
    failed = []
    for name in chosen:
        print(f"== {' '.join([name, *ARGS.get(name, [])])}", flush=True)
        if subprocess.run([sys.executable, "-m", f"benchmarks.{name}", *ARGS.get(name, [])],
                          cwd=HERE.parent).returncode != 0:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
