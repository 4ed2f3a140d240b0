"""Colour operators fitted on token pairs and judged in feature and image space."""

import numpy as np
import pytest

from cliplens.studies.inversion.colour import (
    evaluate_colour_operators,
    fit_colour_operators,
)

from .tiny import make_net, smooth_images



class ArrayTokens:
    """A stand-in for TokenCache over an in-memory array."""

    def __init__(self, a):
        self.a = a

    def __len__(self):
        return len(self.a)

    def load(self):
        return self.a

    def read(self, rows):
        return self.a[np.asarray(rows)].astype(np.float32)


def test_operator_evaluation_on_an_exact_rotation():
    from scipy.stats import ortho_group

    D, P = 24, 16
    rng = np.random.default_rng(0)
    Q = ortho_group.rvs(D, random_state=0)
    x_tr, x_te = rng.standard_normal((40, P, D)), rng.standard_normal((5, P, D))
    x_tr /= np.linalg.norm(x_tr, axis=-1, keepdims=True)
    x_te /= np.linalg.norm(x_te, axis=-1, keepdims=True)
    train = {"images": ArrayTokens(x_tr), "images_rb_swap": ArrayTokens(x_tr @ Q)}
    test = {"images": ArrayTokens(x_te), "images_rb_swap": ArrayTokens(x_te @ Q)}
    fitted = fit_colour_operators(train, {"rb_swap": ["procrustes", "symmetric", "linear"]})
    assert np.allclose(fitted["rb_swap"]["procrustes"][0], Q, atol=1e-8)
    images = {"images": smooth_images(5), "images_rb_swap": smooth_images(5).flip(1)}
    rows, arrays = evaluate_colour_operators(fitted, test, images, make_net(D=D), n_examples=2)
    by = {r["kind"]: r for r in rows}
    assert set(by) == {"none", "true", "procrustes", "symmetric", "linear"}
    assert by["true"]["r2"] == pytest.approx(1.0) and by["procrustes"]["r2"] == pytest.approx(1.0)
    assert by["procrustes"]["mse_vs_transformed"] == pytest.approx(
        by["true"]["mse_vs_transformed"], abs=1e-6)
    assert by["procrustes"]["eig_mean_modulus"] == pytest.approx(1.0)
    assert arrays["rb_swap/recon/linear"].shape == (2, 32, 32, 3)
    assert arrays["rb_swap/procrustes/eig"].shape == (D,)
