"""kernels: the maths of every op on raw NumPy arrays.

No Tensor, no tape, no classes: plain functions of arrays. Arguments are
assumed valid (tinyconv.functional validates them before calling here), so
a jitted kernel never sees a bad shape.

Conventions shared by every file (and by kernels/reference.py, the naive
oracle, and kernels/cuda/, the GPU twins):

* layout NCHW; conv weights (C_out, C_in/groups, k_h, k_w); transposed-conv
  weights (C_in, C_out/groups, k_h, k_w) as in PyTorch;
* stride, padding, dilation, output_padding, kernel_size are (h, w) pairs
  of ints, already normalised;
* `<op>_forward(...)` returns the output, or a tuple (output, saved state)
  when the backward needs state (max-pool argmax, batch-norm statistics);
* `<op>_backward(grad_output, <what the backward needs>, ...,
  needs=(...))` returns one gradient per differentiable argument, None for
  those not requested;
* float32 and float64 both run; the output dtype follows the input.
"""
