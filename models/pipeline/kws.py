"""Train, quantise and evaluate the shipped ``kws`` model (DS-CNN as MLPerf Tiny's kws01).

    python -m models.pipeline.kws [--speech-commands DIR] [--seed 1] [--epochs 32]

Writes models/kws/kws.tflite, models/kws/testset/ (MLPerf Tiny layout, with features.json saying how its
features were made), models/kws/metrics.json and the numbers section of models/kws/README.md. Data and features
are cached under models/kws/build/ (git-ignored).
"""

import argparse
import json
import logging
import time

import numpy as np

from models.pipeline import card, common, kws_data, tflite_ops, variants
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


def mixup(tf, batch, targets, alpha):
    """mixup (Zhang et al., 2018): each clip's features and one-hot target blended with another clip's of the
    batch, weight ~ Beta(alpha, alpha)."""
    n = tf.shape(batch)[0]
    a, b = tf.random.gamma([n], alpha), tf.random.gamma([n], alpha)
    weight = a / (a + b)
    other = tf.random.shuffle(tf.range(n))
    wx, wy = tf.reshape(weight, [-1, 1, 1, 1]), weight[:, None]
    return (wx * batch + (1 - wx) * tf.gather(batch, other), wy * targets + (1 - wy) * tf.gather(targets, other))


def build_dscnn(tf, n_classes, filters=64, weight_decay=1e-4, batch_size=None, keras=None):
    """DS-CNN of MLPerf Tiny kws01: conv 10x4/2, four depthwise-separable blocks, average pool, dense.

    ``keras``: the Keras to build it with (default ``tf.keras``; quantisation-aware training needs ``tf_keras``).
    """
    keras = keras or tf.keras
    layers = keras.layers
    reg = keras.regularizers.l2(weight_decay)
    inputs = keras.Input(shape=(KWS.n_frames, KWS.mfcc_count, 1), batch_size=batch_size, name="mfcc")
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
    return keras.Model(inputs, outputs, name="ds_cnn")


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


def make_variants(tf, model, ptq_blob, train, feats, labels, rep, shipped, folder, qat_epochs):
    """float32, int8 post-training (the shipped model's bytes) and int8 quantisation-aware versions of ``model``
    in ``folder`` (``kws_float32.tflite``, ``kws_int8_ptq.tflite``, ``kws_int8_qat.tflite``), each scored in TFLM
    on the held-out set and on the shipped test set; returns their metrics (also written to metrics.json)."""
    n = len(kws_data.LABELS)
    single = build_dscnn(tf, n, batch_size=1)
    single.set_weights(model.get_weights())
    blobs = {"float32": variants.convert_float32(tf, single, folder / "kws_float32.tflite")}
    common.write_atomic(folder / "kws_int8_ptq.tflite", ptq_blob)
    blobs["int8_ptq"] = ptq_blob
    qat = variants.quantization_aware(tf, lambda keras, batch: build_dscnn(tf, n, batch_size=batch, keras=keras),
                                      model.get_weights(), train, (feats["val"][..., None], labels["val"]),
                                      qat_epochs, learning_rate=5e-4)
    blobs["int8_qat"] = common.convert_int8(tf, qat, rep, folder / "kws_int8_qat.tflite")
    shipped_q, shipped_y, (scale, zero_point) = shipped
    result = {}
    for key, blob in blobs.items():
        m, _ = variants.evaluate(tf, blob, feats["test"][..., None], labels["test"])
        interp, _ = common.tflm_interpreter(blob)
        x = variants.shipped_testset_inputs(blob, shipped_q, scale, zero_point)
        m["accuracy_shipped_testset"] = float(np.mean(common.tflm_predict(interp, x).argmax(axis=1) == shipped_y))
        m.update(file=f"kws_{key}.tflite", name=variants.NAMES[key])
        result[key] = m
        log.info("variant %-8s top-1 %.4f  shipped-200 %.4f  TFLM = TFLite %.4f  %d B", key, m["accuracy"],
                 m["accuracy_shipped_testset"], m["tflm_agrees_with_tflite_top1"], m["tflite_bytes"])
    metrics = {"model": "kws", "held_out_samples": int(len(labels["test"])), "shipped_count": int(len(shipped_y)),
               "shipped_testset_quantization": {"scale": float(scale), "zero_point": int(zero_point)},
               "qat_epochs": qat_epochs, "parameters": tflite_ops.parameter_count(ptq_blob),
               "tensorflow": tf.__version__, "variants": result}
    common.write_metrics(folder / "metrics.json", metrics)
    return metrics


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


def load_data(args):
    """Features, labels and sources per split, the test clips and the data's provenance; cached under
    build/models/kws/ (git-ignored) by everything that makes them, so later runs (leave-one-engine-out) reuse them."""
    key = json.dumps({"seed": args.seed, "scale": args.scale, "speech_commands": args.speech_commands,
                      "max_per_class": args.max_per_class, "counts": COUNTS, "silence": SILENCE,
                      "people_extra": list(args.people_extra),
                      "code": common.sha256((common.REPO_ROOT / "models/pipeline/kws_data.py").read_bytes())},
                     sort_keys=True)
    cache = common.REPO_ROOT / "build" / "models" / "kws" / f"data-{common.sha256(key.encode())[:16]}.npz"
    if cache.is_file():
        with np.load(cache, allow_pickle=False) as z:
            feats = {s: z[f"feats_{s}"] for s in kws_data.SPLITS}
            labels = {s: z[f"labels_{s}"] for s in kws_data.SPLITS}
            sources = {s: z[f"sources_{s}"] for s in kws_data.SPLITS}
            test_clips = z["test_clips"]
            provenance = json.loads(str(z["provenance"]))
        log.info("data from %s", cache)
        return feats, labels, sources, test_clips, dict(provenance, cached=True)
    if args.speech_commands:
        clips = kws_data.speech_commands(args.speech_commands, args.seed, args.max_per_class)
        provenance = {"source": "google-speech-commands-v2", "path": str(args.speech_commands)}
    else:
        counts = {s: tuple(max(1, int(round(c * args.scale))) for c in v) for s, v in COUNTS.items()}
        silence = {s: max(1, int(round(v * args.scale))) for s, v in SILENCE.items()}
        extra = tuple(max(0, int(round(c * args.scale))) for c in args.people_extra)
        clips, speakers = kws_data.synthetic(args.seed, counts, silence, people_extra=extra)
        provenance = {"source": "synthetic " + ", ".join(kws_data.ENGINES) + " + sox",
                      "engine_share": kws_data.ENGINE_SHARE,
                      "voices": {s: len(v) for s, v in speakers.items()}, "test_voices": speakers["test"],
                      "people_extra": list(extra),
                      "split_voices": speakers, "accents": list(kws_data.ACCENTS),
                      "unknown_words": list(kws_data.UNKNOWN_WORDS)}
    feats = {s: kws_data.features(c) for s, (c, _, _) in clips.items()}
    labels = {s: y for s, (_, y, _) in clips.items()}
    sources = {s: src for s, (_, _, src) in clips.items()}
    test_clips = clips["test"][0]
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_name(cache.stem + ".part.npz")
    np.savez(tmp, test_clips=test_clips, provenance=np.array(json.dumps(provenance)),
             **{f"feats_{s}": feats[s] for s in kws_data.SPLITS}, **{f"labels_{s}": labels[s] for s in kws_data.SPLITS},
             **{f"sources_{s}": sources[s].astype(str) for s in kws_data.SPLITS})
    tmp.replace(cache)
    return feats, labels, sources, test_clips, provenance


def train_float(tf, feats, labels, seed, epochs, label_smoothing=0.0, mixup_alpha=0.0):
    """The DS-CNN trained on ``feats["train"]`` (SpecAugment-style masking, cosine-decayed Adam; ``mixup_alpha``
    > 0 adds :func:`mixup`, ``label_smoothing`` smooths the targets); returns the model and the training dataset
    with plain class labels (for quantisation-aware fine-tuning)."""
    n = len(kws_data.LABELS)
    model = build_dscnn(tf, n)
    steps = int(np.ceil(len(labels["train"]) / 64)) * epochs
    schedule = tf.keras.optimizers.schedules.CosineDecay(3e-3, steps, alpha=0.02)
    soft = bool(label_smoothing or mixup_alpha)
    if soft:
        model.compile(optimizer=tf.keras.optimizers.Adam(schedule),
                      loss=tf.keras.losses.CategoricalCrossentropy(label_smoothing=label_smoothing),
                      metrics=[tf.keras.metrics.CategoricalAccuracy(name="accuracy")])
    else:
        model.compile(optimizer=tf.keras.optimizers.Adam(schedule), loss="sparse_categorical_crossentropy",
                      metrics=["accuracy"])
    train = (tf.data.Dataset.from_tensor_slices((feats["train"][..., None], labels["train"]))
             .shuffle(len(labels["train"]), seed=seed).batch(64)
             .map(lambda x, y: (spec_augment(tf, x), y)))
    fit, val = train, (feats["val"][..., None], labels["val"])
    if soft:
        fit = train.map(lambda x, y: (x, tf.one_hot(y, n)))
        if mixup_alpha:
            fit = fit.map(lambda x, y: mixup(tf, x, y, mixup_alpha))
        val = (val[0], np.eye(n, dtype=np.float32)[val[1]])
    model.fit(fit, epochs=epochs, validation_data=val, verbose=2)
    return model, train


def convert_and_score(tf, model, feats, labels, rep, path):
    """int8 post-training conversion of ``model`` to ``path``; TFLM predictions on the test features."""
    single = build_dscnn(tf, len(kws_data.LABELS), batch_size=1)
    single.set_weights(model.get_weights())
    blob = common.convert_int8(tf, single, rep, path)
    (in_scale, in_zp), _ = common.io_quant(blob)
    x_test_q = quantize(feats["test"], in_scale, in_zp)
    interp, arena = common.tflm_interpreter(blob)
    int8_pred = common.tflm_predict(interp, x_test_q[..., None]).argmax(axis=1)
    return blob, (in_scale, in_zp), x_test_q, int8_pred, arena


def per_source(pred, labels, sources):
    """Top-1 per source (engine, ``noise`` for silence) and how many samples each has."""
    return {str(src): {"accuracy": float(np.mean(pred[sources == src] == labels[sources == src])),
                       "samples": int(np.sum(sources == src))} for src in sorted(set(sources.tolist()))}


def representative(feats, labels, seed):
    rng = np.random.default_rng(seed)
    idx = rng.choice(len(labels["train"]), size=min(500, len(labels["train"])), replace=False)
    return feats["train"][idx][..., None]


def leave_one_engine_out(args, engine, feats, labels, sources, provenance):
    """Train without ``engine`` (all its voices), score on every clip that engine said (none heard in training):
    the estimate of what a voice of a new synthesiser gets. Writes loeo/<engine>.json and the card's table."""
    started = time.time()
    keep = {s: sources[s] != engine for s in ("train", "val")}
    tr_feats = {s: feats[s][keep[s]] if s in keep else feats[s] for s in kws_data.SPLITS}
    tr_labels = {s: labels[s][keep[s]] if s in keep else labels[s] for s in kws_data.SPLITS}
    tf = common.setup_tf(args.seed)
    model, _ = train_float(tf, tr_feats, tr_labels, args.seed, args.epochs, args.label_smoothing, args.mixup)
    held = {"test": np.concatenate([feats[s][sources[s] == engine] for s in kws_data.SPLITS])}
    held_labels = np.concatenate([labels[s][sources[s] == engine] for s in kws_data.SPLITS])
    folder = common.REPO_ROOT / "build" / "models" / "kws"
    blob, _, _, int8_pred, _ = convert_and_score(tf, model, held, {"test": held_labels},
                                                 representative(tr_feats, tr_labels, args.seed),
                                                 folder / f"loeo-{engine}.tflite")
    float_pred = model.predict(held["test"][..., None], batch_size=256, verbose=0).argmax(axis=1)
    test_only = np.concatenate([np.zeros(int(np.sum(sources[s] == engine)), bool) if s != "test"
                                else np.ones(int(np.sum(sources[s] == engine)), bool) for s in kws_data.SPLITS])
    result = {"engine": engine, "epochs": args.epochs, "seed": args.seed,
              "label_smoothing": args.label_smoothing, "mixup_alpha": args.mixup,
              "trained_on": {s: int(len(tr_labels[s])) for s in ("train", "val")},
              "voices": sorted({v for split in provenance.get("split_voices", {}).values() for v in split
                                if kws_data.engine_of(v) == engine}),
              "samples": int(len(held_labels)), "accuracy_float": float(np.mean(float_pred == held_labels)),
              "accuracy_int8": float(np.mean(int8_pred == held_labels)),
              "test_split_samples": int(test_only.sum()),
              "accuracy_int8_test_split": float(np.mean(int8_pred[test_only] == held_labels[test_only])),
              "seconds": round(time.time() - started), "tensorflow": tf.__version__}
    out = common.Path(args.out)
    common.write_metrics(out / "loeo" / f"{engine}.json", result)
    card.update_loeo(out / "README.md", [json.loads(p.read_text()) for p in sorted((out / "loeo").glob("*.json"))])
    log.info("leave out %s: int8 %.4f float %.4f on %d clips (test split %.4f)", engine, result["accuracy_int8"],
             result["accuracy_float"], result["samples"], result["accuracy_int8_test_split"])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=64)
    parser.add_argument("--speech-commands", metavar="DIR", help="train on Google Speech Commands v2 instead")
    parser.add_argument("--max-per-class", type=int, default=2000,
                        help="cap per class and split (Speech Commands; keeps memory and time modest)")
    parser.add_argument("--qat-epochs", type=int, default=4,
                        help="quantisation-aware fine-tuning epochs of the int8_qat variant")
    parser.add_argument("--leave-out", choices=kws_data.ENGINES, metavar="ENGINE",
                        help="instead of the shipped model: train without this synthesiser and score on it "
                             "(writes loeo/ENGINE.json and the card's leave-one-engine-out table)")
    parser.add_argument("--people-extra", type=int, nargs=2, default=(0, 0),
                        metavar=("PER_KEYWORD", "UNKNOWN"),
                        help="extra training utterances by the training people's flite and festival voices, "
                             "wider renderings (0 0: none)")
    parser.add_argument("--label-smoothing", type=float, default=0.0, help="label smoothing of the training targets")
    parser.add_argument("--mixup", type=float, default=0.0, metavar="ALPHA",
                        help="mixup of training clips, weights ~ Beta(ALPHA, ALPHA) (0: none)")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply the synthetic set sizes")
    parser.add_argument("--out", default=str(OUT))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    out = common.Path(args.out)
    started = time.time()

    feats, labels, sources, test_clips, provenance = load_data(args)
    t_data = None if provenance.get("cached") else time.time() - started
    log.info("data: %s clips in %.0f s; features %s", {s: len(y) for s, y in labels.items()},
             time.time() - started, kws_data.fingerprint(feats.values()))
    if args.leave_out:
        leave_one_engine_out(args, args.leave_out, feats, labels, sources, provenance)
        return

    tf = common.setup_tf(args.seed)
    model, train = train_float(tf, feats, labels, args.seed, args.epochs, args.label_smoothing, args.mixup)
    t_train = time.time() - started - (t_data or 0)
    float_pred = model.predict(feats["test"][..., None], batch_size=256, verbose=0).argmax(axis=1)
    float_acc = float(np.mean(float_pred == labels["test"]))

    rep = representative(feats, labels, args.seed)
    blob, (in_scale, in_zp), x_test_q, int8_pred, arena = convert_and_score(tf, model, feats, labels, rep,
                                                                           out / "kws.tflite")
    int8_acc = float(np.mean(int8_pred == labels["test"]))

    pick = common.stratified_pick(labels["test"], SHIPPED_TEST_SAMPLES, args.seed)
    common.write_mlperf_testset(out / "testset", x_test_q[pick], labels["test"][pick], kws_data.LABELS)
    write_feature_settings(out / "testset", FeatureSettings("kws", KWS, (float(in_scale), int(in_zp))))
    shipped_acc = float(np.mean(int8_pred[pick] == labels["test"][pick]))
    write_example_wavs(out / "wav", test_clips, labels["test"], int8_pred, args.seed)
    official = official_on_testset(test_clips, labels["test"])
    variant_metrics = make_variants(tf, model, blob, train, feats, labels, rep,
                                    (x_test_q[pick], labels["test"][pick], (float(in_scale), int(in_zp))),
                                    out / "variants", args.qat_epochs)

    per_class = {name: float(np.mean(int8_pred[labels["test"] == i] == i))
                 for i, name in enumerate(kws_data.LABELS) if np.any(labels["test"] == i)}
    metrics = {
        "model": "kws", "architecture": "DS-CNN (MLPerf Tiny kws01 topology), 64 filters",
        "labels": list(kws_data.LABELS), "seed": args.seed, "epochs": args.epochs,
        "label_smoothing": args.label_smoothing, "mixup_alpha": args.mixup,
        "data": provenance, "counts": {s: int(len(y)) for s, y in labels.items()},
        "accuracy_int8_per_source": per_source(int8_pred, labels["test"], sources["test"]),
        "accuracy_float_per_source": per_source(float_pred, labels["test"], sources["test"]),
        "accuracy_float": float_acc, "accuracy_int8": int8_acc, "accuracy_int8_shipped_testset": shipped_acc,
        "shipped_count": int(len(pick)), "accuracy_int8_per_class": per_class,
        "official_kws01_on_this_testset": official,
        "confusion_int8": common.confusion(labels["test"], int8_pred, len(kws_data.LABELS)).tolist(),
        "input": {"shape": [1, KWS.n_frames, KWS.mfcc_count, 1], "scale": in_scale, "zero_point": in_zp},
        "tflite_bytes": len(blob), "sha256": common.sha256(blob), "parameters": tflite_ops.parameter_count(blob),
        "macs": tflite_ops.macs(blob), "operators": sorted(set(tflite_ops.operators(blob))),
        "tflm_arena_bytes": arena, "seconds": {"data": None if t_data is None else round(t_data),
                                               "train": round(t_train),
                                               "total": round(time.time() - started)},
        "tensorflow": tf.__version__, "features_fingerprint": kws_data.fingerprint(feats.values()),
    }
    common.write_metrics(out / "metrics.json", metrics)
    card.update(out / "README.md", metrics)
    card.update_variants(out / "README.md", variant_metrics)
    log.info("float %.4f  int8 %.4f  shipped-200 %.4f  official-kws01 %s  arena %d B  %d B .tflite",
             float_acc, int8_acc, shipped_acc, official, arena, len(blob))


if __name__ == "__main__":
    main()
