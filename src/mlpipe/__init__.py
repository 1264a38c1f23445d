"""mlpipe: a declarative, reproducible DVC pipeline for Keras multilayer perceptrons."""

import os

__version__ = "0.1.0"

# Keep TensorFlow's C++ start-up chatter (CPU features, absent CUDA) out of stage logs. Python
# exceptions are unaffected. Set here because any module may be the first to import keras.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


class MlpipeError(Exception):
    """An error caused by the user's params or data, reported without a traceback."""
