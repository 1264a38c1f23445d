"""The evaluate stage's work: scores, baselines and plots of a trained model on the validation and
test splits."""
