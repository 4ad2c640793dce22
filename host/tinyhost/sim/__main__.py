"""``python -m tinyhost.sim``: the virtual board's relay process (what VirtualBoard starts; ``tinyhost sim`` runs
the same code in its own process). Exit codes are those of tinyhost.errors; 1 when the VM would not boot."""

import argparse
import logging
import sys

from ..errors import TinyhostError
from .relay import BootFailed, make_config, serve


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m tinyhost.sim", description=__doc__)
    parser.add_argument("--board", default="esp32")
    parser.add_argument("--baud", type=int)
    parser.add_argument("--state-dir")
    parser.add_argument("--drop-rate", type=float, default=0.0)
    parser.add_argument("--corrupt-rate", type=float, default=0.0)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--fresh", action="store_true")
    parser.add_argument("--control", action="store_true", help="read control commands from stdin")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        serve(make_config(args.board, args.baud, args.state_dir, args.drop_rate, args.corrupt_rate, args.seed,
                          args.fresh, args.control))
    except TinyhostError as e:
        print(f"tinyhost sim: {e}", file=sys.stderr)
        return e.exit_code
    except BootFailed as e:
        print(f"tinyhost sim: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
