"""The build stage's work: the network in Keras's three APIs behind the preprocessing, and the
model folder the stages pass on."""
