"""Train, quantise and evaluate the shipped ``kws`` model (DS-CNN as MLPerf Tiny's kws01).

    python -m models.pipeline.kws [--speech-commands DIR] [--seed 1] [--epochs 32]

Writes models/kws/kws.tflite, models/kws/testset/ (MLPerf Tiny layout, with features.json saying how its
features were made), models/kws/metrics.json and the numbers section of models/kws/README.md. Data and features
are cached under models/kws/build/ (git-ignored).
"""

import argparse
import logging
import time

import numpy as np

from models.pipeline import card, common, kws_data, tflite_ops
from tinyhost.bench.datasets import FeatureSettings, write_feature_settings
from tinyhost.features.mfcc import KWS, MLPERF_KWS01, quantize, write_wav

log = logging.getLogger("pipeline.kws")
OUT = common.MODELS_ROOT / "kws"
COUNTS = {"train": (500, 1000), "val": (50, 100), "test": (80, 160)}      # (per keyword, unknown) utterances
SILENCE = {"train": 500, "val": 50, "test": 80}
SHIPPED_TEST_SAMPLES = 200


def spec_augment(tf, batch, max_frames=8, max_coefficients=2):
    """SpecAugment-style masking: per clip, a random run of frames and one of coefficients are flattened to each
    coefficient's mean over time."""
    shape = tf.shape(batch)
    n, frames, coefs = shape[0], shape[1], shape[2]

    def band(size, limit):
        width = tf.random.uniform([n, 1], 0, limit + 1, dtype=tf.int32)
        start = tf.random.uniform([n, 1], 0, size, dtype=tf.int32)
        pos = tf.range(size)[None, :]
        return (pos >= start) & (pos < start + width)

    mask = band(frames, max_frames)[:, :, None] | band(coefs, max_coefficients)[:, None, :]
    mean = tf.reduce_mean(batch, axis=1, keepdims=True)
    return tf.where(mask[..., None], mean, batch)


def build_dscnn(tf, n_classes, filters=64, weight_decay=1e-4, batch_size=None):
    """DS-CNN of MLPerf Tiny kws01: conv 10x4/2, four depthwise-separable blocks, average pool, dense."""
    layers = tf.keras.layers
    reg = tf.keras.regularizers.l2(weight_decay)
    inputs = tf.keras.Input(shape=(KWS.n_frames, KWS.mfcc_count, 1), batch_size=batch_size, name="mfcc")
    x = layers.Conv2D(filters, (10, 4), strides=(2, 2), padding="same", kernel_regularizer=reg)(inputs)
    x = layers.BatchNormalization()(x)
    x = layers.ReLU()(x)
    x = layers.Dropout(0.2)(x)
    for _ in range(4):
        x = layers.DepthwiseConv2D((3, 3), padding="same", depthwise_regularizer=reg)(x)
        x = layers.BatchNormalization()(x)
        x = layers.ReLU()(x)
        x = layers.Conv2D(filters, (1, 1), padding="same", kernel_regularizer=reg)(x)
        x = layers.BatchNormalization()(x)
        x = layers.ReLU()(x)
    x = layers.Dropout(0.4)(x)
    x = layers.AveragePooling2D(pool_size=(int(x.shape[1]), int(x.shape[2])))(x)
    x = layers.Flatten()(x)
    outputs = layers.Dense(n_classes, activation="softmax")(x)
    return tf.keras.Model(inputs, outputs, name="ds_cnn")


def write_example_wavs(folder, test_clips, test_labels, int8_pred, seed, per_class=1):
    """A few held-out clips as 16-bit WAV in the Speech Commands layout (``folder/<label>/NNN.wav``).

    Picked at random per class (not by whether the model gets them right); ``labels.csv`` says what the int8
    model predicted for each, so a test can check the WAV -> MFCC -> model path end to end.
    """
    rng = np.random.default_rng(seed + 7)
    rows = ["file,label,int8_prediction"]
    for old in folder.glob("*/*.wav"):
        old.unlink()
    for label, name in enumerate(kws_data.LABELS):
        idx = np.flatnonzero(test_labels == label)
        for k, i in enumerate(sorted(rng.choice(idx, size=min(per_class, idx.size), replace=False))):
            (folder / name).mkdir(parents=True, exist_ok=True)
            write_wav(folder / name / f"{k:03d}.wav", test_clips[i])
            rows.append(f"{name}/{k:03d}.wav,{name},{kws_data.LABELS[int8_pred[i]]}")
    common.write_atomic(folder / "labels.csv", ("\n".join(rows) + "\n").encode())


def official_on_testset(x_test_clips, y_test):
    """Top-1 of MLPerf Tiny's own kws01 model on our test clips (its 30 ms-window front end), when available."""
    from tinyhost import zoo
    path = common.REPO_ROOT.parent / "shared" / "mlperf-tiny" / "kws_ref_model.tflite"
    if not path.is_file():
        path = zoo.path_of(zoo.find("kws01"))
        if zoo.status(zoo.find("kws01")).state != "installed":
            return None
    blob = path.read_bytes()
    (scale, zp), _ = common.io_quant(blob)
    interp, _ = common.tflm_interpreter(blob)
    feats = kws_data.features(x_test_clips, MLPERF_KWS01)
    pred = common.tflm_predict(interp, quantize(feats, scale, zp)).argmax(axis=1)
    return float(np.mean(pred == y_test))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=32)
    parser.add_argument("--speech-commands", metavar="DIR", help="train on Google Speech Commands v2 instead")
    parser.add_argument("--max-per-class", type=int, default=2000,
                        help="cap per class and split (Speech Commands; keeps memory and time modest)")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply the synthetic set sizes")
    parser.add_argument("--out", default=str(OUT))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    out = common.Path(args.out)
    started = time.time()

    if args.speech_commands:
        clips = kws_data.speech_commands(args.speech_commands, args.seed, args.max_per_class)
        provenance = {"source": "google-speech-commands-v2", "path": str(args.speech_commands)}
    else:
        counts = {s: tuple(max(1, int(round(c * args.scale))) for c in v) for s, v in COUNTS.items()}
        silence = {s: max(1, int(round(v * args.scale))) for s, v in SILENCE.items()}
        clips, speakers = kws_data.synthetic(args.seed, counts, silence)
        provenance = {"source": "synthetic espeak-ng + sox", "voices": {s: len(v) for s, v in speakers.items()},
                      "test_voices": speakers["test"], "accents": list(kws_data.ACCENTS),
                      "unknown_words": list(kws_data.UNKNOWN_WORDS)}
    t_data = time.time() - started
    feats = {s: kws_data.features(c) for s, (c, _) in clips.items()}
    labels = {s: y for s, (_, y) in clips.items()}
    log.info("data: %s clips in %.0f s; features %s", {s: len(y) for s, y in labels.items()}, t_data,
             kws_data.fingerprint(feats.values()))

    tf = common.setup_tf(args.seed)
    model = build_dscnn(tf, len(kws_data.LABELS))
    steps = int(np.ceil(len(labels["train"]) / 64)) * args.epochs
    schedule = tf.keras.optimizers.schedules.CosineDecay(3e-3, steps, alpha=0.02)
    model.compile(optimizer=tf.keras.optimizers.Adam(schedule), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    train = (tf.data.Dataset.from_tensor_slices((feats["train"][..., None], labels["train"]))
             .shuffle(len(labels["train"]), seed=args.seed).batch(64)
             .map(lambda x, y: (spec_augment(tf, x), y)))
    model.fit(train, epochs=args.epochs, validation_data=(feats["val"][..., None], labels["val"]), verbose=2)
    t_train = time.time() - started - t_data
    float_pred = model.predict(feats["test"][..., None], batch_size=256, verbose=0).argmax(axis=1)
    float_acc = float(np.mean(float_pred == labels["test"]))

    rng = np.random.default_rng(args.seed)
    rep_idx = rng.choice(len(labels["train"]), size=min(500, len(labels["train"])), replace=False)
    rep = feats["train"][rep_idx][..., None]
    tflite_path = out / "kws.tflite"
    single = build_dscnn(tf, len(kws_data.LABELS), batch_size=1)
    single.set_weights(model.get_weights())
    blob = common.convert_int8(tf, single, rep, tflite_path)
    (in_scale, in_zp), _ = common.io_quant(blob)
    x_test_q = quantize(feats["test"], in_scale, in_zp)
    interp, arena = common.tflm_interpreter(blob)
    int8_out = common.tflm_predict(interp, x_test_q[..., None])
    int8_pred = int8_out.argmax(axis=1)
    int8_acc = float(np.mean(int8_pred == labels["test"]))

    pick = common.stratified_pick(labels["test"], SHIPPED_TEST_SAMPLES, args.seed)
    common.write_mlperf_testset(out / "testset", x_test_q[pick], labels["test"][pick], kws_data.LABELS)
    write_feature_settings(out / "testset", FeatureSettings("kws", KWS, (float(in_scale), int(in_zp))))
    shipped_acc = float(np.mean(int8_pred[pick] == labels["test"][pick]))
    write_example_wavs(out / "wav", clips["test"][0], labels["test"], int8_pred, args.seed)
    official = official_on_testset(clips["test"][0], labels["test"])

    per_class = {name: float(np.mean(int8_pred[labels["test"] == i] == i))
                 for i, name in enumerate(kws_data.LABELS) if np.any(labels["test"] == i)}
    metrics = {
        "model": "kws", "architecture": "DS-CNN (MLPerf Tiny kws01 topology), 64 filters",
        "labels": list(kws_data.LABELS), "seed": args.seed, "epochs": args.epochs,
        "data": provenance, "counts": {s: int(len(y)) for s, y in labels.items()},
        "accuracy_float": float_acc, "accuracy_int8": int8_acc, "accuracy_int8_shipped_testset": shipped_acc,
        "shipped_count": int(len(pick)), "accuracy_int8_per_class": per_class,
        "official_kws01_on_this_testset": official,
        "confusion_int8": common.confusion(labels["test"], int8_pred, len(kws_data.LABELS)).tolist(),
        "input": {"shape": [1, KWS.n_frames, KWS.mfcc_count, 1], "scale": in_scale, "zero_point": in_zp},
        "tflite_bytes": len(blob), "sha256": common.sha256(blob), "parameters": tflite_ops.parameter_count(blob),
        "macs": tflite_ops.macs(blob), "operators": sorted(set(tflite_ops.operators(blob))),
        "tflm_arena_bytes": arena, "seconds": {"data": round(t_data), "train": round(t_train),
                                               "total": round(time.time() - started)},
        "tensorflow": tf.__version__, "features_fingerprint": kws_data.fingerprint(feats.values()),
    }
    common.write_metrics(out / "metrics.json", metrics)
    card.update(out / "README.md", metrics)
    log.info("float %.4f  int8 %.4f  shipped-200 %.4f  official-kws01 %s  arena %d B  %d B .tflite",
             float_acc, int8_acc, shipped_acc, official, arena, len(blob))


if __name__ == "__main__":
    main()
