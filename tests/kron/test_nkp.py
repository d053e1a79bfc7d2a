"""Nearest Kronecker product: exact recovery, optimality, shapes and their error messages."""

from __future__ import annotations

import math

import pytest
import torch

from kronbit.core.errors import ConfigError
from kronbit.kron import max_rank, nearest_kronecker, relative_error
from kronbit.kron.nkp import (kron_sum, kronecker_singular_values, rearrange, resolve_rank, resolve_shapes,
                              truncation_error)

f64 = torch.float64


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_convention_matches_torch_kron():
    A = torch.randn(3, 4, generator=gen(0), dtype=f64)
    B = torch.randn(5, 2, generator=gen(1), dtype=f64)
    W = kron_sum(A, B)
    assert torch.equal(W, torch.kron(A, B))
    # W[i1*m2+i2, j1*n2+j2] = A[i1,j1]·B[i2,j2]
    assert W[2 * 5 + 4, 3 * 2 + 1] == A[2, 3] * B[4, 1]


def test_rearrangement_is_a_permutation_that_makes_kron_rank_one():
    A = torch.randn(3, 4, generator=gen(0), dtype=f64)
    B = torch.randn(5, 2, generator=gen(1), dtype=f64)
    R = rearrange(torch.kron(A, B), (3, 4), (5, 2))
    assert R.shape == (12, 10)
    assert torch.allclose(R, torch.outer(A.flatten(), B.flatten()), rtol=0, atol=1e-15)
    W = torch.randn(15, 8, generator=gen(2), dtype=f64)
    assert torch.equal(rearrange(W, (3, 4), (5, 2)).flatten().sort().values, W.flatten().sort().values)


def test_exact_recovery_rank1():
    A = torch.randn(4, 6, generator=gen(0), dtype=f64)
    B = torch.randn(8, 3, generator=gen(1), dtype=f64)
    W = torch.kron(A, B)
    A1, B1 = nearest_kronecker(W, (4, 6), (8, 3))
    assert A1.shape == (1, 4, 6) and B1.shape == (1, 8, 3)
    assert relative_error(W, A1, B1) < 1e-14
    assert torch.allclose(torch.kron(A1[0], B1[0]), W, rtol=0, atol=1e-13)
    # the factors themselves are A and B up to a scalar c (A ⊗ B = cA ⊗ B/c), and √σ each: equal norms
    c = (A1[0] / A).flatten()
    assert torch.allclose(c, c[0].expand_as(c), rtol=1e-12)
    assert torch.isclose(A1.norm(), B1.norm(), rtol=1e-12)


def test_exact_recovery_rank3_sum():
    A = torch.randn(3, 4, 6, generator=gen(3), dtype=f64)
    B = torch.randn(3, 8, 3, generator=gen(4), dtype=f64)
    W = kron_sum(A, B)
    A3, B3 = nearest_kronecker(W, (4, 6), (8, 3), rank=3)
    assert relative_error(W, A3, B3) < 1e-14
    assert torch.allclose(kron_sum(A3, B3), W, rtol=0, atol=1e-12)
    # rank 2 is not enough for a generic sum of three, rank 4 adds nothing
    assert relative_error(W, *nearest_kronecker(W, (4, 6), (8, 3), rank=2)) > 1e-3
    assert relative_error(W, *nearest_kronecker(W, (4, 6), (8, 3), rank=4)) < 1e-14


@pytest.mark.parametrize("shapes", [((4, 6), (8, 3)), ((32, 1), (1, 18)), ((2, 9), (16, 2))])
def test_full_rank_is_exact_for_any_matrix(shapes):
    a, b = shapes
    W = torch.randn(a[0] * b[0], a[1] * b[1], generator=gen(5), dtype=f64)
    A, B = nearest_kronecker(W, a, b, rank="full")
    assert A.shape[0] == max_rank(W.shape, a, b) == min(a[0] * a[1], b[0] * b[1])
    assert relative_error(W, A, B) < 1e-14


@pytest.mark.parametrize("rank", [1, 2, 5])
def test_optimal_against_perturbed_factors(rank):
    W = torch.randn(12, 20, generator=gen(6), dtype=f64)
    A, B = nearest_kronecker(W, (3, 4), (4, 5), rank=rank)
    best = relative_error(W, A, B)
    g = gen(7)
    for scale in (1e-4, 1e-2, 1e-1, 1.0):
        for _ in range(25):
            dA = scale * torch.randn(A.shape, generator=g, dtype=f64) * A.abs().mean()
            dB = scale * torch.randn(B.shape, generator=g, dtype=f64) * B.abs().mean()
            assert relative_error(W, A + dA, B + dB) >= best - 1e-12
    # and against completely random factors of the same rank
    for _ in range(50):
        assert relative_error(W, torch.randn(A.shape, generator=g, dtype=f64),
                              torch.randn(B.shape, generator=g, dtype=f64)) >= best


def test_error_from_singular_values_matches_reconstruction():
    W = torch.randn(24, 30, generator=gen(8), dtype=f64)
    sv = kronecker_singular_values(W, (4, 5), (6, 6))
    assert torch.allclose(sv, torch.linalg.svdvals(rearrange(W, (4, 5), (6, 6))), rtol=1e-10)
    for r in (1, 3, 20):
        A, B = nearest_kronecker(W, (4, 5), (6, 6), rank=r)
        assert abs(truncation_error(sv, r) - relative_error(W, A, B)) < 1e-10


def test_gram_route_for_large_balanced_shapes_is_optimal():
    # short side of R is 256 ≥ _GRAM_MIN_SIDE: the eigh-of-Gram route is taken for small ranks
    W = torch.randn(256, 256, generator=gen(9), dtype=torch.float32)
    sv = kronecker_singular_values(W, (16, 16), (16, 16))
    for r in (1, 8):
        A, B = nearest_kronecker(W, (16, 16), (16, 16), rank=r)
        assert A.dtype == torch.float32
        assert abs(relative_error(W, A, B) - truncation_error(sv, r)) < 1e-5


def test_dtypes_and_sign_convention():
    W = torch.randn(8, 6, generator=gen(10))
    A, B = nearest_kronecker(W.bfloat16(), (2, 3), (4, 2), rank=2)
    assert A.dtype == B.dtype == torch.bfloat16
    A, B = nearest_kronecker(W, (2, 3), (4, 2), rank=2)
    for i in range(2):  # largest-|.| entry of each A_i is positive: results do not depend on LAPACK's signs
        assert A[i].flatten()[A[i].abs().argmax()] > 0


def test_max_rank_and_rank_errors():
    assert max_rank((12, 20), (3, 4), (4, 5)) == 12
    assert max_rank((12, 20), (12, 20), (1, 1)) == 1
    assert resolve_rank("full", (12, 20), (3, 4), (4, 5)) == 12
    with pytest.raises(ConfigError, match=r"rank 13 is above the maximum 12 .*use rank ≤ 12 or 'full'"):
        nearest_kronecker(torch.zeros(12, 20), (3, 4), (4, 5), rank=13)
    with pytest.raises(ConfigError, match="rank must be an integer ≥ 1 or 'full'"):
        resolve_rank(0, (12, 20), (3, 4), (4, 5))


def test_shape_errors_name_shapes_and_valid_factorizations():
    with pytest.raises(ConfigError) as e:
        nearest_kronecker(torch.zeros(12, 20), (5, 4), None)
    msg = str(e.value)
    assert "\n" not in msg
    assert "a_shape (5, 4) does not divide W (12, 20)" in msg
    assert "d1 dividing 12 (1, 2, 3, 4, 6, 12)" in msg and "d2 dividing 20 (1, 2, 4, 5, 10, 20)" in msg
    with pytest.raises(ConfigError, match=r"A \(3, 4\) ⊗ B \(4, 4\) is \(12, 16\), not W \(12, 20\)"):
        nearest_kronecker(torch.zeros(12, 20), (3, 4), (4, 4))
    assert resolve_shapes((12, 20), None, (4, 5)) == ((3, 4), (4, 5))
    with pytest.raises(ConfigError, match="must be two positive integers"):
        resolve_shapes((12, 20), (3, 4, 1), None)


def test_relative_error_edge_cases():
    W = torch.randn(4, 4, generator=gen(11), dtype=f64)
    assert relative_error(W, torch.zeros(1, 2, 2, dtype=f64), torch.zeros(1, 2, 2, dtype=f64)) == 1.0
    with pytest.raises(ConfigError, match="not W"):
        relative_error(W, torch.zeros(1, 2, 2), torch.zeros(1, 3, 2))


@pytest.mark.parametrize("m, n", [(768, 768), (3072, 768), (12, 20), (7, 5), (1, 1)])
def test_full_rank_without_shapes_picks_the_most_balanced_shape(m, n):
    from kronbit.kron.nkp import balanced_shapes, divisors

    a, b = balanced_shapes(m, n)
    assert (a[0] * b[0], a[1] * b[1]) == (m, n)
    # no factorization has factors closer in size
    best = min(abs(math.log(p * q / (m * n / (p * q)))) for p in divisors(m) for q in divisors(n))
    assert abs(math.log(a[0] * a[1] / (b[0] * b[1]))) == pytest.approx(best)
    assert resolve_shapes((m, n), None, None, rank="full") == (a, b)
    W = torch.randn(m, n, dtype=f64, generator=gen(m + n))
    A, B = nearest_kronecker(W, a, b, rank="full")
    assert torch.allclose(kron_sum(A, B), W, atol=1e-10)


def test_balanced_shape_of_a_square_bert_layer():
    from kronbit.kron.nkp import balanced_shapes

    assert balanced_shapes(768, 768) == ((24, 32), (32, 24))  # 768 = 24·32: equal sizes, near-square
    with pytest.raises(ConfigError, match="give a_shape and/or b_shape"):
        resolve_shapes((768, 768), None, None, rank=4)
