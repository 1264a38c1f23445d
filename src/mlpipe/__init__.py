"""mlpipe: a declarative, reproducible DVC pipeline for Keras multilayer perceptrons."""

import os

__version__ = "0.1.0"

# Keep TensorFlow's C++ log out of stage logs: on a machine without a GPU it logs errors that are
# none ("failed call to cuInit"), and tf.data logs one for every fit under op determinism
# ("NodeDef mentions attribute use_unbounded_threadpool"). A real failure still raises a Python
# exception with its message. `TF_CPP_MIN_LOG_LEVEL=0 dvc repro` shows the log again. Set here
# because any module may be the first to import keras.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


class MlpipeError(Exception):
    """An error caused by the user's params or data, reported without a traceback."""
