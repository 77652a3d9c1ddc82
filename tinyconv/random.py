"""tinyconv's global random generator: dropout masks and weight initialisation.

`manual_seed(s)` makes both reproducible; functions that draw random numbers
also take an explicit `generator=` (a `numpy.random.Generator`).
"""
import numpy as np

_generator = np.random.default_rng(0)


def manual_seed(seed):
    """Reseed the global generator; returns it."""
    global _generator
    _generator = np.random.default_rng(seed)
    return _generator


def get_generator():
    return _generator


def get_state():
    """The generator's state as a JSON-able dict (saved in checkpoints)."""
    return _generator.bit_generator.state


def set_state(state):
    _generator.bit_generator.state = state
