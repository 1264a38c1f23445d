"""Commands around the pipeline: the `mlpipe` CLI, sweeps, presets, the pull-request report and the
README's generated blocks."""
