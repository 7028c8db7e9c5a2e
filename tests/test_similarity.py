"""SVCCA and linear CKA: identities, invariances and hand-computed values."""

import numpy as np
import pytest

from tinydot.analysis.similarity import SVCCA, cca_correlations, intrinsic_dimension, linear_cka
from tinydot.errors import ConfigError


@pytest.fixture
def rep():
    rng = np.random.default_rng(0)
    latent = rng.standard_normal((500, 6))
    return latent @ rng.standard_normal((6, 20))  # rank 6 in 20 dimensions


def test_svcca_of_a_representation_with_itself_is_one(rep):
    result = SVCCA().fit(rep, rep)
    assert result.similarity_ == pytest.approx(1.0)
    assert result.dims_[0] == result.dims_[1] <= 6


def test_svcca_is_invariant_to_invertible_linear_maps(rep):
    rng = np.random.default_rng(1)
    other = np.tanh(rep[:, :8]) + 0.1 * rng.standard_normal((500, 8))
    A = rng.standard_normal((20, 20)) + 5 * np.eye(20)  # invertible
    full = SVCCA(keep=1.0)
    assert full.fit(rep @ A, other).similarity_ == pytest.approx(full.fit(rep, other).similarity_)
    Q, _ = np.linalg.qr(rng.standard_normal((20, 20)))  # orthogonal maps and scaling keep the variance spectrum
    assert SVCCA().fit(3.0 * rep @ Q, other).similarity_ == pytest.approx(SVCCA().fit(rep, other).similarity_)


def test_cca_by_hand():
    # y = x1 exactly, and x2 is unrelated to y: one canonical correlation of 1
    x1 = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    x2 = np.array([1.0, -1.0, 1.0, -1.0, 1.0, -1.0])
    rho = cca_correlations(np.column_stack([x1, x2]), x1[:, None])
    assert rho == pytest.approx([1.0])


def test_intrinsic_dimension_counts_variance_directions():
    rng = np.random.default_rng(2)
    X = np.column_stack([10 * rng.standard_normal(1000), 10 * rng.standard_normal(1000),
                         0.01 * rng.standard_normal(1000)])
    assert intrinsic_dimension(X, 0.99) == 2 and intrinsic_dimension(X, 1.0) == 3


def test_linear_cka_properties_and_a_hand_value(rep):
    rng = np.random.default_rng(3)
    Q, _ = np.linalg.qr(rng.standard_normal((20, 20)))
    assert linear_cka(rep, rep) == pytest.approx(1.0)
    assert linear_cka(rep, 2.5 * rep @ Q) == pytest.approx(1.0)
    X = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])
    Y = np.array([[1.0], [0.0], [-1.0], [0.0]])
    # centered already; ||Y^T X||^2 = 4, ||X^T X|| = sqrt(8), ||Y^T Y|| = 2 -> 4 / (2 sqrt 8)
    assert linear_cka(X, Y) == pytest.approx(4 / (2 * np.sqrt(8)))


def test_bad_shapes():
    with pytest.raises(ConfigError, match="same samples"):
        SVCCA().fit(np.zeros((5, 2)), np.zeros((4, 2)))
