"""Score VWW .tflite files in TFLM on the pipeline's held-out emoji scenes, without training.

    python -m models.pipeline.vww_score FILE... [--test-sources noto] [--per-class 400] [--seed 1]

The scenes are the test split that ``python -m models.pipeline.vww`` makes with the same seed, sources and count,
so an earlier model (e.g. ``git show REV:models/vww/vww.tflite > old.tflite``) is scored on the very scenes that
its card reports, or on another source mix. Prints top-1 overall and per source.
"""

import argparse
import logging

import numpy as np

from models.pipeline import common, vww_data


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", metavar="FILE")
    parser.add_argument("--test-sources", default=",".join(vww_data.SOURCES))
    parser.add_argument("--per-class", type=int, default=600, help="test scenes per class, over the sources")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    sources = tuple(s for s in args.test_sources.split(",") if s)
    data, _, _ = vww_data.synthetic(args.seed, {"train": 1, "val": 1, "test": args.per_class},
                                    train_sources=sources, test_sources=sources)
    images, labels, scene_sources = data["test"]
    x_q = (images.astype(np.int16) - 128).astype(np.int8)
    for path in args.files:
        interp, _ = common.tflm_interpreter(common.Path(path).read_bytes())
        right = common.tflm_predict(interp, x_q).argmax(axis=1) == labels
        by_source = ", ".join(f"{s} {100 * right[scene_sources == k].mean():.1f} %"
                              for k, s in enumerate(vww_data.SOURCES) if (scene_sources == k).any())
        print(f"{path}: {100 * right.mean():.1f} % of {len(labels)} ({by_source})")


if __name__ == "__main__":
    main()
