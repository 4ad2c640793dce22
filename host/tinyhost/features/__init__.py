"""Feature front ends shared by the training pipeline, the host tool and the tests (numpy only).

``tinyhost.features.mfcc`` is the keyword-spotting MFCC front end (``from tinyhost.features.mfcc import mfcc``);
``tinyhost.features.wavdir`` turns ``ROOT/<label>/*.wav`` folders into model inputs.
"""

from .mfcc import KWS, MLPERF_KWS01, MODEL_FRONT_ENDS, MfccConfig, quantize, read_wav, wav_features, write_wav
from .wavdir import wav_dataset, wav_inputs

__all__ = ["KWS", "MLPERF_KWS01", "MODEL_FRONT_ENDS", "MfccConfig", "quantize", "read_wav", "wav_dataset",
           "wav_features", "wav_inputs", "write_wav"]
