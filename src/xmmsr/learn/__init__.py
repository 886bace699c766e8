"""Learning: HDF5 training sets, the RRDB generator, normalisation, training and inference."""
