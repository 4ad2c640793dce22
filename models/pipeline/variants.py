"""Quantisation variants of one trained Keras model: float32, int8 post-training, int8 quantisation-aware.

The three files share the architecture and, up to quantisation, the weights: *float32* is the trained model
converted without optimisation (float32 weights, activations, input and output); *int8 post-training* is the
shipped int8 model (calibrated on a representative set after training); *int8 quantisation-aware* starts from
the trained weights and is fine-tuned with fake-quantisation in the graph (TensorFlow Model Optimization's
``quantize_model``, which works on ``tf_keras`` models), then converted with full-integer quantisation.

Each is scored with TFLM's interpreter; the TFLM agreement is the share of held-out samples on which TFLM's top-1
equals TensorFlow Lite's (the converter's own interpreter), with the largest output difference: against its
reference kernels (the arithmetic TFLM implements) and against its default, optimised kernels (XNNPACK, which
requantises int8 in float and so rounds some values differently).
"""

import logging

import numpy as np

from models.pipeline import common, tflite_ops

log = logging.getLogger("pipeline.variants")

NAMES = {"float32": "float32", "int8_ptq": "int8 post-training", "int8_qat": "int8 quantisation-aware"}


def convert_float32(tf, model, path):
    """The model as float32 .tflite (no optimisation); refuses operators outside the engine's set."""
    blob = tf.lite.TFLiteConverter.from_keras_model(model).convert()
    bad = set(tflite_ops.operators(blob)) - common.ALLOWED_OPS
    if bad:
        raise SystemExit(f"pipeline: the float32 model uses operators the engine lacks: {sorted(bad)}")
    common.write_atomic(path, blob)
    return blob


def _noop_quantize_config(tfmot):
    qk = tfmot.quantization.keras

    class NoOpQuantizeConfig(qk.QuantizeConfig):
        """No fake quantisation at the layer: an average pool keeps its input's scale, so the converter needs no
        requantising QUANTIZE op (which the engine implements, but the float reference model does not have)."""

        def get_weights_and_quantizers(self, layer):
            return []

        def get_activations_and_quantizers(self, layer):
            return []

        def set_quantize_weights(self, layer, quantize_weights):
            pass

        def set_quantize_activations(self, layer, quantize_activations):
            pass

        def get_output_quantizers(self, layer):
            return []

        def get_config(self):
            return {}

    return NoOpQuantizeConfig


def quantization_aware(tf, build, weights, train_ds, val, epochs, learning_rate):
    """Fine-tune a fake-quantised copy of the model (``build(keras_module, batch_size)`` makes the architecture
    with ``tf_keras``) from ``weights``; returns the trained QAT model rebuilt with batch 1 for conversion."""
    try:
        import tensorflow_model_optimization as tfmot
        import tf_keras
    except ImportError:
        raise SystemExit("pipeline: quantisation-aware training needs tensorflow-model-optimization and tf-keras "
                         "— install the training extra: .venv-train/bin/pip install -e '.[train]'")
    qk = tfmot.quantization.keras
    noop = _noop_quantize_config(tfmot)

    def annotate(layer):
        if isinstance(layer, tf_keras.layers.AveragePooling2D):
            return qk.quantize_annotate_layer(layer, noop())
        return layer

    def qat(batch_size):
        base = build(tf_keras, batch_size)
        base.set_weights(weights)
        annotated = tf_keras.models.clone_model(base, clone_function=annotate)
        annotated.set_weights(weights)
        with qk.quantize_scope({"NoOpQuantizeConfig": noop}):
            return qk.quantize_apply(qk.quantize_annotate_model(annotated))

    model = qat(None)
    steps = sum(1 for _ in train_ds) * epochs
    schedule = tf_keras.optimizers.schedules.CosineDecay(learning_rate, steps, alpha=0.1)
    model.compile(optimizer=tf_keras.optimizers.Adam(schedule), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    model.fit(train_ds, epochs=epochs, validation_data=val, verbose=2)
    single = qat(1)
    single.set_weights(model.get_weights())
    return single


def convert_qat_int8(tf, qat_model, representative, path):
    """Full-integer conversion of a QAT model (int8 input and output); same operator check as the PTQ path."""
    return common.convert_int8(tf, qat_model, representative, path)


def tflite_predict(tf, blob, inputs, reference=False):
    """TensorFlow Lite's interpreter (the converter's runtime) on each input, with its reference kernels or its
    default ones; raw outputs."""
    kernels = (tf.lite.experimental.OpResolverType.BUILTIN_REF if reference
               else tf.lite.experimental.OpResolverType.AUTO)
    interp = tf.lite.Interpreter(model_content=bytes(blob), num_threads=1, experimental_op_resolver_type=kernels)
    interp.allocate_tensors()
    i, o = interp.get_input_details()[0], interp.get_output_details()[0]
    out = []
    for x in inputs:
        interp.set_tensor(i["index"], np.asarray(x, dtype=i["dtype"]).reshape(i["shape"]))
        interp.invoke()
        out.append(interp.get_tensor(o["index"]).reshape(-1).copy())
    return np.stack(out)


def model_inputs(blob, features):
    """Float features as the model's input: float32 as they are, int8 quantised with its input tensor."""
    from tinyhost.features.mfcc import quantize
    inp = tflite_ops.io_tensors(blob)["inputs"][0]
    if inp["dtype"] == "float32":
        return features.astype(np.float32)
    return quantize(features, inp["scale"], inp["zero_point"])


def evaluate(tf, blob, features, labels):
    """Top-1 in TFLM and TFLM's agreement with TensorFlow Lite on ``features`` (float, model input shape)."""
    x = model_inputs(blob, features)
    interp, arena = common.tflm_interpreter(blob)
    tflm = common.tflm_predict(interp, x).astype(np.float64)
    lite = tflite_predict(tf, blob, x).astype(np.float64)
    ref = tflite_predict(tf, blob, x, reference=True).astype(np.float64)
    pred = tflm.argmax(axis=1)
    out = tflite_ops.io_tensors(blob)["outputs"][0]
    return {
        "accuracy": float(np.mean(pred == labels)),
        "tflm_agrees_with_tflite_top1": float(np.mean(pred == lite.argmax(axis=1))),
        "tflm_max_output_difference": float(np.max(np.abs(tflm - lite))),
        "tflm_agrees_with_tflite_reference_top1": float(np.mean(pred == ref.argmax(axis=1))),
        "tflm_max_output_difference_reference": float(np.max(np.abs(tflm - ref))),
        "output_dtype": out["dtype"],
        "tflite_bytes": len(blob), "sha256": common.sha256(blob), "tflm_arena_bytes": arena,
        "operators": sorted(set(tflite_ops.operators(blob))),
        "input": {k: tflite_ops.io_tensors(blob)["inputs"][0][k] for k in ("dtype", "scale", "zero_point")},
    }, pred


def shipped_testset_inputs(blob, testset_int8, scale, zero_point):
    """The shipped test set's int8 samples (quantised with ``scale``, ``zero_point``) as this model's inputs:
    dequantised, then fed as float32 or requantised with the model's own input quantisation — exactly what
    ``tests/test_models_shipped.py`` does, so the accuracy it re-scores is the one recorded here."""
    x = (np.asarray(testset_int8, np.float32) - np.float32(zero_point)) * np.float32(scale)
    return model_inputs(blob, x)
