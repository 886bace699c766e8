"""Learning: HDF5 training sets, the RRDB generator, normalisation, training and inference.

This module imports no torch, so that the workflow can read the task names cheaply.
"""

TASKS = ("dn", "sr")  # de-noising (20 ks/1x -> 100 ks/1x), super-resolution (20 ks/1x -> 100 ks/2x)
UPSCALE = {"dn": 1, "sr": 2}
