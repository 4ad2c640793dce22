"""Train, quantise and evaluate the shipped ``vww`` model (MobileNetV1 alpha=0.25, 96x96x3, person / no person).

    python -m models.pipeline.vww [--vww-dir DIR] [--seed 1] [--epochs 40] [--train-sources noto,twemoji,openmoji]

Writes models/vww/vww.tflite, models/vww/testset/ (MLPerf Tiny layout: 96*96*3 uint8 RGB per .bin),
models/vww/metrics.json and the numbers section of models/vww/README.md.

Input convention (as MLPerf Tiny vww01): the model's int8 input is ``pixel - 128`` for RGB pixels 0..255
(scale 1/255, zero point -128 after training on pixel/255).
"""

import argparse
import logging
import textwrap
import time

import numpy as np

from models.pipeline import card, common, tflite_ops, vww_data

log = logging.getLogger("pipeline.vww")
OUT = common.MODELS_ROOT / "vww"
COUNTS = {"train": 5000, "val": 200, "test": 600}            # images per class
SHIPPED_TEST_SAMPLES = 200
ALPHA = 0.25


def build_mobilenet_v1(tf, alpha=ALPHA, n_classes=2, batch_size=None, weight_decay=4e-5, bn_momentum=0.9,
                       n_tags=0):
    """MobileNetV1 (Howard et al. 2017) for 96x96x3 with 'same' padding, average pool, dense, softmax.

    ``n_tags`` > 0 adds a second, training-only head ("tags": which emoji subgroups are in the scene, sigmoid)
    on the same pooled features; it is created last, so its two weight arrays come last in ``get_weights()``.
    """
    layers = tf.keras.layers
    reg = tf.keras.regularizers.l2(weight_decay)

    def conv_bn(x, filters, kernel, stride):
        x = layers.Conv2D(filters, kernel, strides=stride, padding="same", use_bias=False,
                          kernel_regularizer=reg)(x)
        x = layers.BatchNormalization(momentum=bn_momentum)(x)
        return layers.ReLU(6.0)(x)

    def depthwise_separable(x, filters, stride):
        x = layers.DepthwiseConv2D(3, strides=stride, padding="same", use_bias=False)(x)
        x = layers.BatchNormalization(momentum=bn_momentum)(x)
        x = layers.ReLU(6.0)(x)
        return conv_bn(x, filters, 1, 1)

    inputs = tf.keras.Input(shape=(vww_data.SIZE, vww_data.SIZE, 3), batch_size=batch_size, name="image")
    x = conv_bn(inputs, int(32 * alpha), 3, 2)
    for filters, stride in ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), (512, 1), (512, 1),
                            (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1)):
        x = depthwise_separable(x, int(filters * alpha), stride)
    x = layers.AveragePooling2D(pool_size=(int(x.shape[1]), int(x.shape[2])))(x)
    x = layers.Flatten()(x)
    x = layers.Dropout(0.2)(x)
    outputs = layers.Dense(n_classes, activation="softmax", name="person")(x)
    if n_tags:
        outputs = [outputs, layers.Dense(n_tags, activation="sigmoid", name="tags")(x)]
    return tf.keras.Model(inputs, outputs, name="mobilenet_v1_025")


def augment(tf, images, labels, strong=False):
    """Random flips, brightness and contrast on float batches in [0, 1] (training only).

    ``strong`` adds, per image: a zoom of up to 1/0.85 about a random point, a random colour mix (each output
    channel a near-identity mix of the three, so hues and palettes shift) and one cut-out square of 10-28 pixels
    filled with a random grey.
    """
    x = tf.image.random_flip_left_right(images)
    x = tf.image.random_brightness(x, 0.1)
    x = tf.image.random_contrast(x, 0.8, 1.2)
    if strong:
        n, size = tf.shape(x)[0], vww_data.SIZE
        side = tf.random.uniform([n, 1], 0.85, 1.0)
        corner = tf.random.uniform([n, 2], 0.0, 1.0) * (1.0 - side)
        boxes = tf.concat([corner, corner + side], axis=1)
        x = tf.image.crop_and_resize(x, boxes, tf.range(n), (size, size))
        mix = tf.eye(3, batch_shape=[n]) + tf.random.normal([n, 3, 3], stddev=0.12)
        x = tf.einsum("bhwc,bcd->bhwd", x, mix)
        half = tf.random.uniform([n, 1, 1], 5.0, 14.0)
        centre = tf.random.uniform([n, 2, 1, 1], 0.0, float(size))
        grid = tf.range(size, dtype=tf.float32)
        inside = tf.logical_and(tf.abs(grid[None, :, None] - centre[:, 0]) < half,
                                tf.abs(grid[None, None, :] - centre[:, 1]) < half)
        x = tf.where(inside[..., None], tf.random.uniform([n, 1, 1, 1]), x)
    return tf.clip_by_value(x, 0.0, 1.0), labels


TESTSET_README = """# `vww` test set: {n} held-out emoji scenes, MLPerf Tiny vww01 layout

`y_labels.csv` rows `file,2,class` (0 non_person, 1 person); each `.bin` is 27,648 bytes of uint8 RGB (96 rows x 96
columns x 3 channels); feed `pixel - 128` as int8. Written by `python -m models.pipeline.vww` (see ../README.md).
Each scene draws its emoji from one design source; the files of each source (the N in `tst_N_...`):

{by_source}

The scenes are derived from these emoji images, under their licences:

- Noto Color Emoji, Copyright 2013 Google LLC, SIL Open Font License 1.1 (Debian `fonts-noto-color-emoji`).
- Twemoji (https://github.com/jdecked/twemoji), Copyright 2019 Twitter, Inc and other contributors, CC BY 4.0
  (https://creativecommons.org/licenses/by/4.0/), from the npm package `emoji-datasource-twitter`.
- OpenMoji, the open-source emoji and icon project (https://openmoji.org), CC BY-SA 4.0
  (https://creativecommons.org/licenses/by-sa/4.0/), from the npm package `openmoji`. The scenes drawn from
  OpenMoji designs are adaptations of them and are shared under CC BY-SA 4.0 as well.

The scenes were changed from the originals: the emoji are scaled, rotated, mirrored, cropped by the frame and
composed on generated backgrounds, then blurred, recoloured, resampled and given noise.
"""


def official_on_testset(test_images, test_labels):
    """Top-1 of MLPerf Tiny's own vww01 model on our test images, when it is in the tinyhost model cache."""
    from tinyhost import zoo
    path = zoo.path_of(zoo.find("vww01"))
    if zoo.status(zoo.find("vww01")).state != "installed":
        log.info("official vww01 not in the cache (%s): skipping the cross-check", path)
        return None
    blob = path.read_bytes()
    interp, _ = common.tflm_interpreter(blob)
    x_q = (test_images.astype(np.int16) - 128).astype(np.int8)        # its input: scale 1/255, zero point -128
    return float(np.mean(common.tflm_predict(interp, x_q).argmax(axis=1) == test_labels))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--vww-dir", metavar="DIR", help="train on COCO VWW (DIR/person, DIR/non_person)")
    parser.add_argument("--max-per-class", type=int, default=None)
    parser.add_argument("--scale", type=float, default=1.0, help="multiply the synthetic set sizes")
    parser.add_argument("--aux-weight", type=float, default=0.5,
                        help="loss weight of the training-only emoji-subgroup head (0: off)")
    parser.add_argument("--train-sources", default=",".join(vww_data.SOURCES),
                        help=f"emoji design sources of the training scenes, comma-separated, of "
                             f"{', '.join(vww_data.SOURCES)}")
    parser.add_argument("--test-sources", default=",".join(vww_data.SOURCES),
                        help="emoji design sources of the test scenes (one left out of --train-sources is an "
                             "artist set never seen in training)")
    parser.add_argument("--compare-with", metavar="TFLITE",
                        help="also score this .tflite (e.g. an earlier vww.tflite) on the same test scenes")
    parser.add_argument("--augment", choices=("basic", "strong"), default="basic",
                        help="training augmentation: flips, brightness, contrast; strong: also zoom, colour mix "
                             "and cut-out")
    parser.add_argument("--out", default=str(OUT))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    out = common.Path(args.out)
    started = time.time()

    tags, subgroups, test_sources = None, [], None
    train_sources = tuple(s for s in args.train_sources.split(",") if s)
    test_sources_chosen = tuple(s for s in args.test_sources.split(",") if s)
    if args.vww_dir:
        data = vww_data.vww_folders(args.vww_dir, args.seed, args.max_per_class)
        provenance = {"source": "coco-visual-wake-words folders", "path": str(args.vww_dir)}
    else:
        counts = {s: max(2, int(round(c * args.scale))) for s, c in COUNTS.items()}
        data, glyph_stats, (tags, subgroups) = vww_data.synthetic(args.seed, counts, train_sources=train_sources,
                                                                  test_sources=test_sources_chosen)
        test_sources = data["test"][2]
        provenance = {"source": "synthetic scenes of emoji glyphs (Noto Color Emoji, Twemoji, OpenMoji) on "
                                "procedural backgrounds",
                      "train_sources": list(train_sources), "glyphs_per_source_and_split": glyph_stats,
                      "npm_tarballs": {vww_data.npm_tarball(s).name: common.sha256(vww_data.npm_tarball(s).read_bytes())
                                       for s in vww_data.NPM_SOURCES if s in glyph_stats}}
    t_data = time.time() - started
    images = {s: x[0] for s, x in data.items()}
    labels = {s: x[1] for s, x in data.items()}
    log.info("data: %s images in %.0f s", {s: len(y) for s, y in labels.items()}, t_data)

    tf = common.setup_tf(args.seed)
    # The auxiliary "tags" head (emoji subgroups in the scene) gives the backbone a richer signal than the
    # person bit alone; only the person head is exported.
    use_tags = tags is not None and args.aux_weight > 0
    model = build_mobilenet_v1(tf, n_tags=len(subgroups) if use_tags else 0)

    def targets(split):
        return {"person": labels[split], "tags": tags[split]} if use_tags else labels[split]

    train = (tf.data.Dataset.from_tensor_slices((images["train"], targets("train")))
             .shuffle(len(labels["train"]), seed=args.seed)
             .map(lambda x, y: (tf.cast(x, tf.float32) / 255.0, y))
             .batch(32).map(lambda x, y: augment(tf, x, y, strong=args.augment == "strong")))
    steps = int(np.ceil(len(labels["train"]) / 32)) * args.epochs
    # SGD with Nesterov momentum got MobileNet off the chance plateau faster than Adam on these scenes.
    schedule = tf.keras.optimizers.schedules.CosineDecay(0.05, steps, alpha=0.01)
    loss = {"person": "sparse_categorical_crossentropy", "tags": "binary_crossentropy"} if use_tags else \
        "sparse_categorical_crossentropy"
    model.compile(optimizer=tf.keras.optimizers.SGD(schedule, momentum=0.9, nesterov=True), loss=loss,
                  loss_weights={"person": 1.0, "tags": args.aux_weight} if use_tags else None,
                  metrics={"person": ["accuracy"]} if use_tags else ["accuracy"])
    model.fit(train, epochs=args.epochs, validation_data=(images["val"] / 255.0, targets("val")), verbose=2)
    t_train = time.time() - started - t_data

    def person_probabilities(keras_model, x):
        out = keras_model.predict(x / 255.0, batch_size=64, verbose=0)
        return out[0] if isinstance(out, list) else out

    float_prob = person_probabilities(model, images["test"])
    float_pred = float_prob.argmax(axis=1)
    float_acc = float(np.mean(float_pred == labels["test"]))

    rng = np.random.default_rng(args.seed)
    rep = images["train"][rng.choice(len(labels["train"]), size=min(300, len(labels["train"])),
                                     replace=False)] / 255.0
    rep = np.concatenate([np.zeros((1,) + rep.shape[1:]), np.ones((1,) + rep.shape[1:]), rep])  # range 0..1
    single = build_mobilenet_v1(tf, batch_size=1)
    single.set_weights(model.get_weights()[:-2] if use_tags else model.get_weights())
    check = person_probabilities(single, images["test"][:16])
    if not np.allclose(check, float_prob[:16], atol=1e-4):
        raise SystemExit("pipeline: the exported person head does not reproduce the trained model")
    blob = common.convert_int8(tf, single, rep.astype(np.float32), out / "vww.tflite")
    (in_scale, in_zp), _ = common.io_quant(blob)
    if abs(in_scale * 255.0 - 1.0) > 1e-3 or in_zp != -128:
        raise SystemExit(f"pipeline: vww input quantisation is scale {in_scale}, zero point {in_zp}; "
                         "expected 1/255 and -128 (int8 = pixel - 128)")
    x_test_q = (images["test"].astype(np.int16) - 128).astype(np.int8)
    interp, arena = common.tflm_interpreter(blob)
    int8_pred = common.tflm_predict(interp, x_test_q).argmax(axis=1)
    int8_acc = float(np.mean(int8_pred == labels["test"]))

    pick = common.stratified_pick(labels["test"], SHIPPED_TEST_SAMPLES, args.seed)
    common.write_mlperf_testset(out / "testset", images["test"][pick], labels["test"][pick], vww_data.LABELS)
    if test_sources is not None:
        by_source = "\n".join(textwrap.fill(f"- {source}: " + ", ".join(
            str(i) for i, k in enumerate(test_sources[pick]) if k == j), 116, subsequent_indent="  ")
            for j, source in enumerate(vww_data.SOURCES))
        common.write_atomic(out / "testset" / "README.md",
                            TESTSET_README.format(n=len(pick), by_source=by_source).encode())
    shipped_acc = float(np.mean(int8_pred[pick] == labels["test"][pick]))
    official = official_on_testset(images["test"], labels["test"])
    per_class = {name: float(np.mean(int8_pred[labels["test"] == i] == i)) for i, name in enumerate(vww_data.LABELS)}
    per_source, float_per_source, compared = {}, {}, None
    if args.compare_with:
        other, _ = common.tflm_interpreter(common.Path(args.compare_with).read_bytes())
        other_pred = common.tflm_predict(other, x_test_q).argmax(axis=1)
        compared = {"file": args.compare_with, "accuracy_int8": float(np.mean(other_pred == labels["test"]))}
    if test_sources is not None:
        for k, source in enumerate(vww_data.SOURCES):
            mask = test_sources == k
            if not mask.any():
                continue
            per_source[source] = {"samples": int(mask.sum()), "in_training": source in train_sources,
                                  "accuracy": float(np.mean(int8_pred[mask] == labels["test"][mask]))}
            float_per_source[source] = {"accuracy": float(np.mean(float_pred[mask] == labels["test"][mask]))}
            if compared:
                compared.setdefault("per_source", {})[source] = float(np.mean(other_pred[mask] ==
                                                                             labels["test"][mask]))
    metrics = {
        "model": "vww", "architecture": f"MobileNetV1 alpha={ALPHA}, 96x96x3", "labels": list(vww_data.LABELS),
        "seed": args.seed, "epochs": args.epochs, "data": provenance, "augment": args.augment,
        "aux_tags_weight": args.aux_weight if use_tags else 0.0,
        "counts": {s: int(len(y)) for s, y in labels.items()},
        "accuracy_float": float_acc, "accuracy_int8": int8_acc, "accuracy_int8_shipped_testset": shipped_acc,
        "shipped_count": int(len(pick)), "accuracy_int8_per_class": per_class,
        "accuracy_int8_per_source": per_source, "accuracy_float_per_source": float_per_source,
        "compared_with": compared,
        "official_vww01_on_this_testset": official,
        "confusion_int8": common.confusion(labels["test"], int8_pred, 2).tolist(),
        "input": {"shape": [1, vww_data.SIZE, vww_data.SIZE, 3], "scale": in_scale, "zero_point": in_zp},
        "tflite_bytes": len(blob), "sha256": common.sha256(blob), "parameters": tflite_ops.parameter_count(blob),
        "macs": tflite_ops.macs(blob), "operators": sorted(set(tflite_ops.operators(blob))),
        "tflm_arena_bytes": arena, "seconds": {"data": round(t_data), "train": round(t_train),
                                               "total": round(time.time() - started)},
        "tensorflow": tf.__version__,
    }
    common.write_metrics(out / "metrics.json", metrics)
    card.update(out / "README.md", metrics)
    log.info("float %.4f  int8 %.4f  shipped-200 %.4f  arena %d B  %d B .tflite",
             float_acc, int8_acc, shipped_acc, arena, len(blob))
    log.info("int8 per source: %s; compared: %s", per_source, compared)


if __name__ == "__main__":
    main()
