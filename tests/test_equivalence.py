"""Adam (RMSProp) as adaptive clipping: the factor-2 sandwich of §3.1."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

import optclip

floats = st.floats(1e-6, 1e3)


def h_adam(a, b2, eps, nu, g):
    # RMSProp's effective step, written out from the paper's display.
    return a / (eps + np.sqrt(b2 * nu + (1 - b2) * g**2))


def h_clip(eta, tau, g):
    return eta * np.minimum(tau / np.abs(g), 1.0)


@settings(max_examples=200, deadline=None, derandomize=True)
@given(floats, st.floats(0.0, 0.999), st.floats(1e-12, 1e-2), st.floats(0.0, 1e4), floats)
def test_sandwich_holds(a, b2, eps, nu, g):
    eq = optclip.adam_as_clipping(a, b2, eps, {"x": np.float64(nu)})
    hc = h_clip(float(eq.learning_rate["x"]), float(eq.threshold["x"]), g)
    ha = h_adam(a, b2, eps, nu, g)
    rel = 1e-5  # float32 arithmetic in the package
    assert hc / 2 * (1 - rel) <= ha <= hc * (1 + rel)


def test_paper_constant_breaks_the_stated_lower_bound():
    # With the paper's eta = 2a / D the stated bound h_clip / 2 <= h_adam fails:
    # at sqrt(b2 nu) = sqrt(1 - b2) |g| and eps -> 0, h_adam = h_clip / (2 sqrt 2).
    a, b2, eps, g = 1.0, 0.99, 1e-12, 1.0
    nu = (1 - b2) * g**2 / b2
    d = eps + np.sqrt(b2 * nu)
    paper_h_clip = h_clip(2 * a / d, d / np.sqrt(1 - b2), g)
    assert h_adam(a, b2, eps, nu, g) < paper_h_clip / 2
    np.testing.assert_allclose(
        h_adam(a, b2, eps, nu, g), paper_h_clip / (2 * np.sqrt(2)), rtol=1e-6
    )
    # ... and the package's map keeps the sandwich at the same point.
    eq = optclip.adam_as_clipping(a, b2, eps, {"x": jnp.float32(nu)})
    ours = h_clip(float(eq.learning_rate["x"]), float(eq.threshold["x"]), g)
    assert ours / 2 <= h_adam(a, b2, eps, nu, g) * (1 + 1e-6) <= ours * (1 + 1e-6)
