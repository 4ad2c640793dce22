"""Small synthetic int8 models covering the operator variants the MLPerf models do not."""

import numpy as np

from tinyhost.model import writer as W


def _chain(seed, shape, build):
    rng = np.random.default_rng(seed)
    b, layers = W.start(rng, shape)
    build(layers)
    return W.finish(b, layers)


def conv_variants():
    def build(L):
        L.conv(6, k=3, stride=2, padding="SAME", activation="RELU6")
        L.conv(5, k=(2, 3), stride=(1, 2), padding="VALID", per_channel=False, activation="RELU")
        L.conv(4, k=3, dilation=2, padding="SAME", activation="NONE", bias=False)
        L.conv(3, k=3, dilation=(1, 2), stride=1, padding="VALID", activation="NONE")
    return _chain(1, (1, 15, 31, 3), build)


def depthwise_variants():
    def build(L):
        L.conv(0, k=3, depthwise=True, depth_multiplier=2, padding="SAME", activation="RELU6")
        L.conv(0, k=3, depthwise=True, stride=2, padding="VALID", per_channel=False, activation="NONE")
        L.conv(0, k=(3, 2), depthwise=True, dilation=2, depth_multiplier=3, padding="SAME", activation="RELU")
    return _chain(2, (1, 13, 12, 4), build)


def pool_fc_softmax():
    def build(L):
        L.conv(8, k=3, padding="SAME", activation="RELU")
        L.pool("MAX_POOL_2D", k=3, stride=2, padding="SAME", activation="NONE")
        L.pool("AVERAGE_POOL_2D", k=2, stride=1, padding="SAME", activation="RELU6")
        L.pool("AVERAGE_POOL_2D", k=3, stride=2, padding="VALID")
        n, h, w, c = L._shape()
        L.reshape((1, h * w * c))
        L.fc(16, activation="RELU", per_channel=False, filter_zero_point=5)
        L.fc(10, per_channel=True)
        L.softmax(beta=0.5)
    return _chain(3, (1, 12, 10, 2), build)


def residual_add():
    def build(L):
        L.conv(8, k=3, padding="SAME", activation="RELU")
        skip, skip_scale, skip_zp = L.x, L.scale, L.zp
        L.conv(8, k=3, padding="SAME", activation="NONE")
        L.add(skip, skip_scale, skip_zp, activation="RELU")
        L.conv(8, k=1, padding="SAME", activation="NONE")
        L.add(skip, skip_scale, skip_zp)
    return _chain(4, (1, 8, 8, 3), build)


def streaming_kws():
    """The streaming keyword-spotting model of benchmarks/engine_latency (depthwise convolutions over time)."""
    return W.streaming_kws_like(seed=0)


SYNTHETIC = {"conv_variants": conv_variants, "depthwise_variants": depthwise_variants,
             "pool_fc_softmax": pool_fc_softmax, "residual_add": residual_add, "streaming_kws": streaming_kws}
