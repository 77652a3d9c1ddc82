"""tinyconv: a from-scratch reference CNN engine.

    import tinyconv
    import tinyconv.functional as F

    x = tinyconv.Tensor(np.random.randn(2, 3, 8, 8), requires_grad=True)
    loss = F.relu(x).sum()
    loss.backward()
"""
__version__ = "0.1.0"

from tinyconv.tensor import Tensor, tensor, no_grad, is_grad_enabled, concat, cat, stack  # noqa: F401
from tinyconv.gradcheck import gradcheck, gradcheck_module  # noqa: F401
from tinyconv.random import manual_seed  # noqa: F401
from tinyconv.checkpoint import save, load  # noqa: F401
from tinyconv import functional, nn  # noqa: F401,E402
from tinyconv.threads import set_num_threads, get_num_threads  # noqa: F401,E402
from tinyconv import blocks, models, summary  # noqa: F401,E402
