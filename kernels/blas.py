"""gemm: C = alpha·op(A)·op(B) + beta·C on row-major sub-matrices, callable from jitted code.

BLAS's ?gemm (Fortran, column-major) through the C helper Numba's own np.dot
calls (numba_xxgemm, which forwards to SciPy's scipy.linalg.cython_blas: the
same single-threaded OpenBLAS, see tinyconv/threads.py). Over np.dot it adds
what the convolution kernels need:

* beta = 1 accumulates into C (no temporary and no separate sum);
* leading dimensions: A, B and C may be windows of bigger arrays, e.g. the
  rows of a sample's channels starting at a shifted pixel, with the row
  stride of the full array (no copy);
* transposes: op(A) = Aᵀ reads A (k, m) as an (m, k) matrix.

A row-major matrix is the column-major matrix of its transpose, so
C = op(A)·op(B) row-major is Cᵀ = op(B)ᵀ·op(A)ᵀ column-major: the call swaps
A and B (and m and n). The matrices are given as flat arrays (views) and an
element offset, which is what a leading dimension needs: the rows of a window
are `ld` elements apart in memory, longer than the window is wide.

>>> import numpy as np
>>> a, b, c = np.ones((2, 3)), np.ones((3, 4)), np.ones((2, 4))
>>> gemm(False, False, 2, 4, 3, 1.0, a.ravel(), 0, 3, b.ravel(), 0, 4, 1.0, c.ravel(), 0, 4); float(c[0, 0])
4.0
"""
import numpy as np
from numba import njit, types

# int numba_xxgemm(kind, transa, transb, m, n, k, *alpha, *a, lda, *b, ldb, *beta, *c, ldc): Numba's C helper
_xxgemm = types.ExternalFunction("numba_xxgemm", types.intc(
    types.char, types.char, types.char, types.intp, types.intp, types.intp,
    types.voidptr, types.voidptr, types.intp, types.voidptr, types.intp, types.voidptr, types.voidptr, types.intp))


@njit(cache=True)
def gemm(trans_a, trans_b, m, n, k, alpha, a, a_offset, lda, b, b_offset, ldb, beta, c, c_offset, ldc):
    """c[c_offset + i·ldc + j] = alpha·Σ_l op(A)[i, l]·op(B)[l, j] + beta·c[...] for i < m, j < n.

    a, b, c: flat (1-D, contiguous) arrays of one float dtype; A starts at a[a_offset] with rows lda apart,
    op(A) (m, k) is A or, with trans_a, Aᵀ of A (k, m); B alike, (k, n). Bounds are the caller's duty."""
    scalars = np.empty(2, dtype=c.dtype)
    scalars[0], scalars[1] = alpha, beta
    kind = ord("s") if c.itemsize == 4 else ord("d")  # float32 or float64
    # column-major: Cᵀ (n, m) = op(B)ᵀ (n, k) · op(A)ᵀ (k, m)
    _xxgemm(kind, ord("t") if trans_b else ord("n"), ord("t") if trans_a else ord("n"), n, m, k,
            scalars[0:].ctypes, b[b_offset:].ctypes, ldb, a[a_offset:].ctypes, lda,
            scalars[1:].ctypes, c[c_offset:].ctypes, ldc)
