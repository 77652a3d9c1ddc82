"""kernels.cuda: numba.cuda twins of the CPU kernels, same names and arguments.

Each file mirrors kernels/<op>.py. Functions accept NumPy or device arrays
and return device arrays (see kernels/cuda/device.py for the convention).
Importing works without a GPU; calling needs one, or Numba's simulator
(NUMBA_ENABLE_CUDASIM=1 set before numba is first imported).
"""
