"""The lr_find and train stages' work: the range test, the optimizer and schedules, the shuffled
input, the fit loop and resuming."""
