"""Shared pieces of the training pipeline: seeding, TensorFlow set-up, int8 conversion, evaluation, outputs.

Runs in the training venv (``pip install -e '.[train]'``, see docs/models.md). TensorFlow is imported lazily so
that the data generators and the .tflite inspection also work without it.
"""

import csv
import hashlib
import json
import logging
import os
import random
import sys
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[2]
MODELS_ROOT = REPO_ROOT / "models"
sys.path.insert(0, str(REPO_ROOT / "host"))          # tinyhost.features without installing tinyhost here

from models.pipeline import tflite_ops  # noqa: E402  (after the path set-up)

log = logging.getLogger("pipeline")

#: Operators the on-device engine implements; a shipped model may use only these.
ALLOWED_OPS = frozenset({"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "AVERAGE_POOL_2D", "MAX_POOL_2D",
                         "ADD", "RESHAPE", "SOFTMAX"})


def setup_tf(seed, threads=1):
    """Import TensorFlow limited to ``threads`` intra-op and inter-op threads, seeded; returns the module."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")       # reproducible float results across runs
    os.environ["PYTHONHASHSEED"] = str(seed)
    try:
        import tensorflow as tf
    except ImportError:
        sys.exit("pipeline: TensorFlow is missing — install the training extra: "
                 "python3 -m venv .venv-train && .venv-train/bin/pip install -e '.[train]' (or `make models`)")
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)
    random.seed(seed)
    np.random.seed(seed)
    tf.keras.utils.set_random_seed(seed)
    try:
        tf.config.experimental.enable_op_determinism()
    except AttributeError:
        pass
    return tf


def convert_int8(tf, model, representative, path):
    """Post-training full-integer quantisation (int8 weights, activations, input and output); atomic write.

    ``model`` must have a fixed batch of 1 (``Input(batch_size=1)``). ``representative`` is a float array of
    inputs (a few hundred training samples). Returns the .tflite bytes.
    """
    def samples():
        for x in representative:
            yield [x[None, ...].astype(np.float32)]

    if model.input_shape[0] != 1:
        raise ValueError("convert a copy of the model built with batch_size=1 (a dynamic batch brings SHAPE, "
                         "STRIDED_SLICE and PACK into the graph)")
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = samples
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8
    blob = converter.convert()
    ops = set(tflite_ops.operators(blob))
    bad = ops - ALLOWED_OPS
    if bad:
        raise SystemExit(f"pipeline: the converted model uses operators the engine lacks: {sorted(bad)}")
    write_atomic(path, blob)
    return blob


def write_atomic(path, data):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    tmp.write_bytes(data)
    tmp.replace(path)


def sha256(data):
    return hashlib.sha256(data).hexdigest()


def tflm_interpreter(blob):
    """TFLM's Python interpreter for the model bytes, and the smallest arena (bytes) it runs in."""
    from tflite_micro.python.tflite_micro import runtime
    arena_bytes = tflite_ops.tflm_min_arena_bytes(blob)
    return runtime.Interpreter.from_bytes(bytes(blob), arena_size=arena_bytes), arena_bytes


def tflm_predict(interp, inputs_q):
    """Run TFLM on each int8 input; returns the int8 outputs ``(n, classes)``."""
    d = interp.get_input_details(0)
    outputs = []
    for x in inputs_q:
        interp.set_input(np.asarray(x, dtype=d["dtype"]).reshape(d["shape"]), 0)
        interp.invoke()
        outputs.append(np.array(interp.get_output(0)).reshape(-1))
        interp.reset()
    return np.stack(outputs)


def io_quant(blob):
    """((input_scale, input_zero_point), (output_scale, output_zero_point)) of a .tflite model."""
    info = tflite_ops.io_tensors(blob)
    i, o = info["inputs"][0], info["outputs"][0]
    return (i["scale"], i["zero_point"]), (o["scale"], o["zero_point"])


def write_mlperf_testset(directory, samples_u8_or_i8, labels, label_names, prefix="tst"):
    """MLPerf Tiny dataset layout: one ``.bin`` per sample and ``y_labels.csv`` rows ``file,n_classes,class``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for old in directory.glob("*.bin"):
        old.unlink()
    rows = []
    for i, (x, y) in enumerate(zip(samples_u8_or_i8, labels)):
        name = f"{prefix}_{i:06d}_{label_names[y]}_{int(y)}.bin"
        (directory / name).write_bytes(np.ascontiguousarray(x).tobytes())
        rows.append((name, len(label_names), int(y)))
    tmp = directory / "y_labels.csv.part"
    with open(tmp, "w", newline="") as f:
        csv.writer(f, lineterminator="\n").writerows(rows)
    tmp.replace(directory / "y_labels.csv")


def stratified_pick(labels, n, seed):
    """Indices of about ``n`` samples with the classes in proportion (at least one each), deterministic."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    picked = []
    for c in classes:
        idx = np.flatnonzero(labels == c)
        k = max(1, int(round(n * idx.size / labels.size)))
        picked.extend(rng.choice(idx, size=min(k, idx.size), replace=False).tolist())
    picked = np.array(sorted(picked))
    return picked


def write_metrics(path, metrics):
    write_atomic(path, (json.dumps(metrics, indent=2, sort_keys=True) + "\n").encode())


def confusion(y_true, y_pred, n_classes):
    m = np.zeros((n_classes, n_classes), dtype=np.int64)
    for t, p in zip(y_true, y_pred):
        m[t, p] += 1
    return m
