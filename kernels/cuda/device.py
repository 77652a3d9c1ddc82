"""What every CUDA kernel file shares: moving arrays, launch shapes, and two reductions.

The calling convention of kernels/cuda/ (every file): a function takes
NumPy arrays or CUDA device arrays (numba's DeviceNDArray, or anything
`cuda.as_cuda_array` accepts; device arrays must be C-contiguous, since
the views below are reshapes) and ALWAYS returns device arrays, so chained
calls never go back to the host; `.copy_to_host()` brings a result home.
Index tables and other small host-side metadata are built with NumPy and
copied once per call.

Thread mapping. An element-wise or gather kernel runs one thread per
output element on a 1-D grid of `THREADS` threads per block:

    idx = blockIdx.x·blockDim.x + threadIdx.x,   work only if idx < size

and decodes idx into (n, c, h, w) row-major. A reduction runs one block of
`REDUCE_THREADS` threads per output value: each thread sums a strided
slice of the values into a private float64 partial, then the block adds
the partials with a shared-memory tree,

    step s = T/2, T/4, ..., 1:   partial[t] += partial[t + s]   for t < s

(log2 T steps, a syncthreads after each), so the sum needs no atomics and
gives the same answer on every run.

>>> channel_sum(to_device(np.ones((2, 3, 4, 5)))).copy_to_host()
array([40., 40., 40.])
"""
import contextlib
import math
import sys
import threading

import numba
import numpy as np
from numba import cuda
from numba.np.numpy_support import as_dtype

# Under Numba's simulator every thread is a Python thread, so blocks are kept
# small there; the code paths (several tree steps, partial blocks) are the same.
SIMULATOR = bool(numba.config.ENABLE_CUDASIM)
THREADS = 32 if SIMULATOR else 128         # threads per block of the 1-D element-wise kernels
REDUCE_THREADS = 8 if SIMULATOR else 128   # threads per block of the tree reductions (a power of two)


# ---------------------------------------------------------------------------
# two races in Numba's simulator (0.68), closed (simulator only)
# ---------------------------------------------------------------------------
# 1. A block's threads get ONE shared array per call site by "look the site
#    up; if absent, np.empty one and store it". The steps are not atomic: a
#    thread switch between them (likely with the child tests'
#    sys.setswitchinterval(1e-4)) gives two threads of one block their own
#    arrays, so a GEMM tile or a reduction's partials silently splits and the
#    result is garbage, now and then. Below: the same steps under a lock (the
#    key is the simulator's own, the caller's file and line).
# 2. Calling a device function swaps the `cuda` global of ITS module for the
#    fake module and swaps it back on return. A thread entering while another
#    is inside sees the fake one, so it does not swap; the first thread's
#    return then puts the real `cuda` back under the second, whose next
#    cuda.threadIdx is an AttributeError (batchnorm's two block_sum calls in
#    a row; NVIDIA/numba-cuda#690). Below: count the threads inside per
#    module; the first swaps, the last swaps back.
_SHARED_LOCK = threading.Lock()
_SWAP_LOCK = threading.Lock()
_SWAPS = {}  # id(module globals) -> [threads inside, the original `cuda` entries]


def _simulator_shared_array(self, shape, dtype):
    """FakeCUDAShared.array (numba/cuda/simulator/kernelapi.py) with the look-up and allocation atomic."""
    if shape == 0:  # dynamic shared memory: one preallocated buffer, nothing to race on
        return _SIMULATOR_SHARED_ARRAY(self, shape, dtype)
    if isinstance(dtype, numba.types.Type):
        dtype = as_dtype(dtype)
    caller = sys._getframe(1)
    site = (caller.f_code.co_filename, caller.f_lineno)
    with _SHARED_LOCK:
        array = self._allocations.get(site)
        if array is None:
            array = self._allocations[site] = np.empty(shape, dtype)
    return array


@contextlib.contextmanager
def _simulator_swapped_cuda_module(fn, fake_cuda_module):
    """kernelapi.swapped_cuda_module, counted: `cuda` in fn's module is the fake one while any thread is inside."""
    from numba import cuda as simulator_cuda  # not this module's `cuda`: a launch here swaps that one too

    globs = fn.__globals__
    with _SWAP_LOCK:
        entry = _SWAPS.setdefault(id(globs), [0, None])
        if entry[0] == 0:
            entry[1] = {k: v for k, v in globs.items() if v is simulator_cuda}
            globs.update({k: fake_cuda_module for k in entry[1]})
        entry[0] += 1
    try:
        yield
    finally:
        with _SWAP_LOCK:
            entry[0] -= 1
            if entry[0] == 0:
                globs.update(entry[1])


if SIMULATOR:
    from numba.cuda.simulator import kernel as _simulator_kernel
    from numba.cuda.simulator.kernelapi import FakeCUDAShared

    _SIMULATOR_SHARED_ARRAY = FakeCUDAShared.array
    FakeCUDAShared.array = _simulator_shared_array
    _simulator_kernel.swapped_cuda_module = _simulator_swapped_cuda_module


def to_device(a):
    """A device array for `a`: NumPy arrays are copied to the device, device arrays pass through."""
    if hasattr(a, "copy_to_host"):
        return a
    if hasattr(a, "__cuda_array_interface__"):
        return cuda.as_cuda_array(a)
    return cuda.to_device(np.ascontiguousarray(a))


def empty(shape, dtype):
    return cuda.device_array(tuple(int(s) for s in shape), dtype=dtype)


def zeros(shape, dtype):
    out = empty(shape, dtype)
    fill(out, 0)
    return out


def blocks(size, threads=THREADS):
    """Number of blocks of `threads` that cover `size` elements (at least one)."""
    return max(1, math.ceil(size / threads))


def flat(a):
    """A 1-D view of a C-contiguous device array."""
    return a.reshape(a.size)


def as_3d(a):
    """(N, C, ...) -> (N, C, L) view of a C-contiguous device array."""
    return a.reshape(a.shape[0], a.shape[1], a.size // (a.shape[0] * a.shape[1]))


def fill(a, value):
    """a[...] = value, in place."""
    a1 = flat(a)
    _fill_kernel[blocks(a1.size), THREADS](a1, value)


@cuda.jit
def _fill_kernel(a, value):
    idx = cuda.grid(1)
    if idx < a.size:
        a[idx] = value


def add_channel_bias(y, bias):
    """y[n, c, ...] += bias[c], in place (bias None: nothing to do)."""
    if bias is None:
        return y
    y3 = as_3d(y)
    _add_bias_kernel[blocks(y3.size), THREADS](y3, to_device(bias))
    return y


@cuda.jit
def _add_bias_kernel(y, bias):
    # y (N, C, L); one thread per element
    idx = cuda.grid(1)
    if idx < y.size:
        C, L = y.shape[1], y.shape[2]
        n, c, l = idx // (C * L), (idx // L) % C, idx % L
        y[n, c, l] += bias[c]


# ---------------------------------------------------------------------------
# the block tree reduction, and the per-channel sum built on it
# ---------------------------------------------------------------------------
@cuda.jit(device=True)
def block_sum(partials, value):
    """Σ of `value` over the threads of the block, returned to every thread.

    partials: a shared float64 array of blockDim.x (a power of two) slots.
    Every thread of the block must call this (it synchronises)."""
    t = cuda.threadIdx.x
    partials[t] = value
    cuda.syncthreads()
    step = cuda.blockDim.x // 2
    while step > 0:
        if t < step:
            partials[t] += partials[t + step]
        cuda.syncthreads()
        step //= 2
    total = partials[0]
    cuda.syncthreads()  # every thread has read the total before the slots are reused
    return total


def channel_sum(a):
    """Σ over every axis but 1 of (N, C, ...): grad_bias of every conv, one block per channel."""
    a3 = as_3d(to_device(a))
    out = empty((a3.shape[1],), a3.dtype)
    _channel_sum_kernel[a3.shape[1], REDUCE_THREADS](a3, out)
    return out


@cuda.jit
def _channel_sum_kernel(a, out):
    # a (N, C, L); block c sums its M = N·L values: thread t takes m = t, t + T, t + 2T, ...
    partials = cuda.shared.array(REDUCE_THREADS, np.float64)
    c = cuda.blockIdx.x
    N, C, L = a.shape
    total = 0.0
    if c < C:  # always true (grid = C); every thread still reaches block_sum
        for m in range(cuda.threadIdx.x, N * L, cuda.blockDim.x):
            total += a[m // L, c, m % L]
    total = block_sum(partials, total)
    if c < C and cuda.threadIdx.x == 0:
        out[c] = total
