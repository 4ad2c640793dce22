"""Where the heap goes when a board streams keyword spotting (docs/streaming.md, "Memory"): the free heap after each
step of `tinyhost listen`'s set-up, in the virtual board's MicroPython VM, step by step through the raw REPL with the
runtime's own objects: boot, the runtime, the model loaded as listen loads it (leaving the stream's heap free, and
for comparison as a plain LOAD does), the stream's code, the front end's tables, the stream's buffers (made once the
start's code, tinyfw.stream_setup, is dropped, as cmd_stream.start drops it).

    python -m benchmarks.stream_heap [--boards esp32,esp32s3] [--model models/kws/kws.tflite]

Each step's free heap is gc.mem_free() after gc.collect(); "largest" is the largest free block (micropython.mem_info's
max free sz, 16-byte blocks). Virtual board: MicroPython's 64-bit unix VM, the firmware as .mpy files on its flash,
the heap capped at the profile's heap_bytes; a 32-bit board's objects and name pools are smaller.
"""

import argparse
import re
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

_RUNTIME = """
import tinyfw.runtime as R
class _In:
    def readinto(self, b, n=None):
        return 0
class _Out:
    def write(self, b):
        return len(b)
rt = R.Runtime(_In(), _Out())
"""
_LISTENER = """
stream_setup = None
cmd_stream._drop("stream_setup")
from tinyfw import stream
li = stream.Listener(rt.model, fe, 33, 1, 128, 1000, 1023, 40)
"""
_SHOW = """
import gc, micropython
gc.collect()
print('FREE', gc.mem_free())
micropython.mem_info()
"""
_RELEASE = """
li = fe = None
rt.model.close()
rt = None
import gc
gc.collect()
"""


def steps(model_remote, keep_free_bytes):
    """(step name, code run in the raw REPL) in the order listen's set-up takes them."""
    load = f"rt.load_model({model_remote!r}, keep_free_bytes={keep_free_bytes})\nprint('MODEL', rt.model.weights_mode)"
    return [("boot (raw REPL)", ""),
            ("runtime running", _RUNTIME),
            ("model loaded", load),
            ("stream's code (cmd_stream)", "from tinyfw import cmd_stream"),
            ("start's code (stream_setup)", "from tinyfw import stream_setup"),
            ("front end's code (mfcc)", "from tinyfw import mfcc"),
            ("front end's tables built", "fe = stream_setup.frontend(rt.model.inputs[0].scale, "
                                         "rt.model.inputs[0].zero_point)"),
            ("stream's buffers (Listener)", _LISTENER)]


def measure(board_name, model, keep_free_bytes, tmp):
    """[(step, free bytes, largest free block bytes, error or "")], the model's weights mode."""
    from tinyhost import board
    from tinyhost.flash import model_remote_path

    rows, weights = [], ""
    spec = "sim" if board_name == "esp32" else f"sim:{board_name}"
    with board.connect(spec, baud=2_000_000, state_dir=tmp / board_name, timeout_s=30.0) as b:
        b.flash([model])
        remote = model_remote_path(model, b.profile)
        with b.dev.raw_repl(fresh=True) as repl:
            failed = False
            for name, code in steps(remote, keep_free_bytes):
                error = ""
                if failed:
                    rows.append((name, None, None, "not tried"))
                    continue
                if code:
                    try:
                        out = repl.exec(code, timeout_s=120).decode()
                    except Exception as e:  # noqa: BLE001 (the board's error is the result)
                        error = str(e).strip().splitlines()[-1][:90]
                        failed = True
                        out = ""
                    m = re.search(r"MODEL (\w+)", out)
                    weights = m.group(1) if m else weights
                shown = repl.exec(_SHOW, timeout_s=60).decode()
                free = int(re.search(r"FREE (\d+)", shown).group(1))
                largest = int(re.search(r"max free sz: (\d+)", shown).group(1)) * 16
                rows.append((name, free, largest, error))
            repl.exec(_RELEASE, timeout_s=60)
    return rows, weights


def main(argv=None):
    from tinyhost import stream as st

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--boards", default="esp32", help="virtual board profiles, comma-separated")
    ap.add_argument("--model", default=str(REPO / "models" / "kws" / "kws.tflite"))
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.boards.split(","):
            for keep, how in ((st.STREAM_KEEP_FREE_BYTES, f"as listen loads it (keep_free_bytes="
                                                          f"{st.STREAM_KEEP_FREE_BYTES})"),
                              (0, "as a plain LOAD loads it")):
                rows, weights = measure(name, Path(args.model), keep, Path(tmp))
                print(f"virtual {name}, {Path(args.model).name} {how}: weights {weights or '-'}")
                print(f"  {'step':<30} {'free B':>8} {'largest B':>10}")
                for step, free, largest, error in rows:
                    figures = f"{free:>8} {largest:>10}" if free is not None else f"{'-':>8} {'-':>10}"
                    print(f"  {step:<30} {figures}  {error}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
