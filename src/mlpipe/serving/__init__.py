"""The export stage's work and what uses it: the exported formats, metadata.json and `mlpipe
predict`."""
