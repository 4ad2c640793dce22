"""How many new names (qstrs) the firmware can still intern before MicroPython needs its next qstr pool, and how big
that pool is (docs/engine.md, "The qstr pool cliff").

Interned names live in pools that double in size; a new pool is one contiguous block, which a heap with a model in it
may not have. On the virtual board, per profile: the firmware flashed and the model loaded through the runtime, as
`tinyhost bench` does; then, in the raw REPL (runtime stopped, its names still interned), `micropython.qstr_info()`,
and new names interned one at a time (getattr with a fresh name) until the free heap drops by more than 1 KB at once:
that is the next pool.

    python -m benchmarks.qstr_headroom [--boards esp32,esp32-romfs] [--model models/kws/kws.tflite]
"""

import argparse
import re
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

_PROBE = """
import gc, micropython
micropython.qstr_info()
names = 0
gc.collect()
before = gc.mem_free()
while names < 5000:
    getattr(None, "zq%d" % names, None)
    names += 1
    gc.collect()
    free = gc.mem_free()
    if before - free > 1024:
        print("NEXT_POOL", names, before - free)
        break
    before = free
"""


def measure(board_name, model, tmp):
    from tinyhost import board

    with board.connect(f"sim:{board_name}", baud=2_000_000, state_dir=tmp / board_name, timeout_s=30.0) as b:
        b.sync_firmware()
        b.load(model)                   # as every command loads: INFO, soft reset, LOAD
        out = b.dev.run_script(_PROBE, timeout_s=120.0).decode()
    info = re.search(r"n_pool=(\d+), n_qstr=(\d+), n_str_data_bytes=(\d+), n_total_bytes=(\d+)", out)
    pool = re.search(r"NEXT_POOL (\d+) (\d+)", out)
    if not info or not pool:
        raise RuntimeError(f"unexpected output from the board: {out!r}")
    n_pool, n_qstr, str_bytes, total = (int(v) for v in info.groups())
    return {"board": board_name, "pools": n_pool, "names": n_qstr, "pool_table_bytes": total - str_bytes,
            "headroom_names": int(pool.group(1)), "next_pool_bytes": int(pool.group(2))}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--boards", default="esp32,esp32-romfs", help="virtual board profiles, comma-separated")
    ap.add_argument("--model", default=str(REPO / "models" / "kws" / "kws.tflite"))
    args = ap.parse_args(argv)
    print(f"{'virtual board':<16} {'pools':>5} {'names':>6} {'pool tables B':>13} {'headroom names':>14} "
          f"{'next pool B':>11}")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.boards.split(","):
            r = measure(name, Path(args.model), Path(tmp))
            print(f"{r['board']:<16} {r['pools']:>5} {r['names']:>6} {r['pool_table_bytes']:>13} "
                  f"{r['headroom_names']:>14} {r['next_pool_bytes']:>11}")
    print(f"After loading {Path(args.model).name} through the runtime; names = interned by the firmware so far "
          "(micropython.qstr_info()); headroom = new names interned before the free heap dropped by the next pool, "
          "in one block. Virtual board: MicroPython's 64-bit unix VM, whose pool entries are larger than a 32-bit "
          "board's.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
