"""The names of the files the stages write, in one place. Imports no TensorFlow.

The stages get their folders and metrics files from dvc.yaml on the command line; these are the
names inside those folders, and the dvc.yaml paths of the metrics that the tools read back.
"""

# <prepared>/, written by prepare: the features and their kinds (and <split>.parquet)
SCHEMA_FILE = "schema.json"

# A model folder, written by build and train: KERAS_FILE, or for a subclass the three after it
KERAS_FILE = "model.keras"
PREPROCESS_FILE = "preprocess.keras"
CORE_WEIGHTS_FILE = "core.weights.h5"
CORE_CONFIG_FILE = "core.json"

# The export folder, written by export: KERAS_FILE and these
SAVED_MODEL_DIR = "saved_model"
# TF Serving serves the highest numbered folder under its model's base path. The export is
# replaced whole on every run, and its bytes must repeat, so the number is fixed.
SAVED_MODEL_VERSION = 1
METADATA_FILE = "metadata.json"
ONNX_FILE = "model.onnx"
H5_FILE = "model.h5"

# Metrics and plots as dvc.yaml declares them, which `mlpipe report`, `mlpipe sweep` and
# `mlpipe readme-results` read back
TRAIN_METRICS = "metrics/train.json"
EVALUATE_METRICS = "metrics/evaluate.json"  # the headline test metrics, which DVC shows
# every score: both splits, per class, the baselines; in git, not a DVC metric, so that
# `dvc exp show` stays readable; `mlpipe report` diffs it
EVALUATE_DETAILS = "metrics/details/evaluate.json"
BASELINES_DETAILS = "metrics/details/baselines.json"  # the baselines stage's, laid out the same
LR_FIND_METRICS = "metrics/lr_find.json"
PLOTS_DIR = "plots"
