"""A tiled shared-memory GEMM: the GPU stand-in for the BLAS call of the CPU convolutions.

Notation: C (B_c, M, N_c) = op(A) · op(B) per batch entry, op(A) (M, K),
op(B) (K, N_c); op transposes when trans_a / trans_b is set (A stored
(B_a, K, M), B stored (B_b, N_c, K)). Two batch rules, both needed by the
convolutions:

  * broadcasting: batch entry b reads A[b mod B_a] and B[b mod B_b], so a
    weight of G groups (B_a = G) serves every (sample, group) pair of a
    batch of B_b = N·G column blocks laid out n·G + g;
  * summing: with n_sum > 1, C[b] = Σ_{s < n_sum} op(A[s·B_c + b]) · op(B[s·B_c + b])
    (grad_weight = Σ_n grad_output[n] · cols[n]ᵀ is one launch).

    C[b, i, j] = Σ_s Σ_k op(A)[s·B_c + b, i, k] · op(B)[s·B_c + b, k, j]

Thread mapping. A block of TILE x TILE threads owns a TILE x TILE tile of
C[b] (grid: (ceil(N_c / TILE), ceil(M / TILE), B_c)); thread (ty, tx) owns
C[b, i, j] with i = by·TILE + ty, j = bx·TILE + tx. The K axis is walked
a tile at a time: each thread loads one element of the A tile and one of
the B tile into shared memory (0 past the edges), the block synchronises,
every thread adds its row-times-column of the two tiles, and synchronises
again before the next load. Each global element is thus read K/TILE times
instead of K. The `i < M and j < N_c` guard sits on the loads and the
store only: every thread, in range or not, must reach each syncthreads.
Accumulation is in the arrays' dtype (float32 or float64; one compiled
kernel per dtype, because a shared array's dtype is fixed at compile time).

>>> import numpy as np
>>> a, b = np.ones((5, 7)), np.ones((7, 3))
>>> gemm(a, b).copy_to_host().shape
(5, 3)
"""
import numba
import numpy as np
from numba import cuda

from kernels.cuda.device import SIMULATOR, empty, to_device

TILE = 4 if SIMULATOR else 16  # smaller under the simulator (device.py), same code paths


def gemm(a, b, trans_a=False, trans_b=False):
    """op(a) · op(b) for 2-D arrays -> device (M, N)."""
    a, b = to_device(a), to_device(b)
    a3, b3 = a.reshape(1, *a.shape), b.reshape(1, *b.shape)
    M = a.shape[1] if trans_a else a.shape[0]
    N = b.shape[0] if trans_b else b.shape[1]
    c = empty((1, M, N), a.dtype)
    matmul_into(c, a3, b3, trans_a, trans_b)
    return c.reshape(M, N)


def matmul_into(c, a, b, trans_a=False, trans_b=False, n_sum=1):
    """c[b] = Σ_s op(a[s·B_c + b]) · op(b[s·B_c + b]) (batch indices taken mod each batch size), in place."""
    grid = ((c.shape[2] + TILE - 1) // TILE, (c.shape[1] + TILE - 1) // TILE, c.shape[0])
    _KERNELS[np.dtype(c.dtype)][grid, (TILE, TILE)](a, b, c, bool(trans_a), bool(trans_b), int(n_sum))
    return c


def _make_gemm_kernel(dtype):
    zero = dtype(0)
    nb_dtype = numba.from_dtype(np.dtype(dtype))  # the shared-array element type, a compile-time constant

    @cuda.jit
    def gemm_kernel(a, b, c, trans_a, trans_b, n_sum):
        # a (B_a, M, K) or (B_a, K, M); b (B_b, K, N_c) or (B_b, N_c, K); c (B_c, M, N_c)
        tile_a = cuda.shared.array((TILE, TILE), nb_dtype)
        tile_b = cuda.shared.array((TILE, TILE), nb_dtype)
        ty, tx = cuda.threadIdx.y, cuda.threadIdx.x
        i = cuda.blockIdx.y * TILE + ty
        j = cuda.blockIdx.x * TILE + tx
        M, N = c.shape[1], c.shape[2]
        K = a.shape[1] if trans_a else a.shape[2]
        acc = zero
        for s in range(n_sum):
            batch = s * c.shape[0] + cuda.blockIdx.z
            ba, bb = batch % a.shape[0], batch % b.shape[0]
            for k0 in range(0, K, TILE):
                ka, kb = k0 + tx, k0 + ty  # this thread loads op(A)[i, ka] and op(B)[kb, j]
                if i < M and ka < K:
                    tile_a[ty, tx] = a[ba, ka, i] if trans_a else a[ba, i, ka]
                else:
                    tile_a[ty, tx] = zero
                if kb < K and j < N:
                    tile_b[ty, tx] = b[bb, j, kb] if trans_b else b[bb, kb, j]
                else:
                    tile_b[ty, tx] = zero
                cuda.syncthreads()
                for k in range(TILE):
                    acc += tile_a[ty, k] * tile_b[k, tx]
                cuda.syncthreads()
        if i < M and j < N:
            c[cuda.blockIdx.z, i, j] = acc

    return gemm_kernel


_KERNELS = {np.dtype(np.float32): _make_gemm_kernel(np.float32),
            np.dtype(np.float64): _make_gemm_kernel(np.float64)}
