"""Hessian-vector products, top eigenvalues, Hutchinson trace and SAM sharpness against closed forms."""
from __future__ import annotations

import inspect

import pytest
import torch

from vitreduce.sharpness.hessian import (
    hessian_vector_product,
    hutchinson_trace,
    mean_loss_and_gradient,
    sam_sharpness,
    top_eigenvalues,
)

F64 = torch.float64


def symmetric(eigenvalues, seed=0):
    """A = Q diag(eigenvalues) Q^T with a random orthogonal Q."""
    n = len(eigenvalues)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=torch.Generator().manual_seed(seed), dtype=F64))
    return q @ torch.diag(torch.tensor(eigenvalues, dtype=F64)) @ q.T


def assert_relative(values, expected, rel=1e-4):
    torch.testing.assert_close(torch.tensor(values, dtype=F64), torch.as_tensor(expected, dtype=F64), rtol=rel, atol=0)


def quadratic(a, seed=1):
    """0.5 x^T A x at a random x: its Hessian is A."""
    x = torch.randn(a.shape[0], generator=torch.Generator().manual_seed(seed), dtype=F64).requires_grad_()
    return (lambda: 0.5 * x @ a @ x), x


def test_hvp_of_quadratic_is_a_times_v():
    a = symmetric([4.0, 2.0, 1.0, -1.0, 0.5])
    loss, x = quadratic(a)
    v = torch.randn(5, dtype=F64, generator=torch.Generator().manual_seed(2))
    (hv,) = hessian_vector_product(loss, [x], [v])
    torch.testing.assert_close(hv, a @ v, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("method", ["power", "lanczos"])
def test_top_eigenvalues_of_a_known_spectrum(method):
    spectrum = [10.0, 6.0, 3.0, 1.0, 0.5, 0.25, 0.1, -0.2] + [0.05 * i for i in range(12)]
    loss, x = quadratic(symmetric(spectrum))
    result = top_eigenvalues(loss, [x], k=3, max_iters=2000, tol=1e-10, seed=3, method=method)
    assert result.converged == [True, True, True]
    assert_relative(result.values, [10.0, 6.0, 3.0])
    assert result.shift is None
    # The eigenvectors are orthonormal.
    vectors = torch.stack([v[0] for v in result.vectors])
    torch.testing.assert_close(vectors @ vectors.T, torch.eye(3, dtype=F64), atol=1e-6, rtol=0)


@pytest.mark.parametrize("method", ["power", "lanczos"])
def test_the_largest_not_the_dominant_eigenvalues(method):
    # Largest magnitude is -8: the power method finds the k largest (5, 3) on A + 8 I and reports -8
    # as the shift; Lanczos sees both ends of the spectrum at once.
    spectrum = [5.0, 3.0, -8.0, 1.0] + [0.5] * 6
    loss, x = quadratic(symmetric(spectrum, seed=4))
    result = top_eigenvalues(loss, [x], k=2, max_iters=2000, tol=1e-10, method=method)
    assert result.converged == [True, True]
    assert_relative(result.values, [5.0, 3.0])
    if method == "power":
        assert result.shift == pytest.approx(-8.0, rel=1e-4)
        assert result.shift_iterations > 0


def test_lanczos_needs_few_products_for_close_eigenvalues():
    # 1.0 and 0.99 next to -0.995: the power method crawls (ratio 0.995), Lanczos separates them quickly.
    spectrum = [1.0, 0.99, -0.995] + [0.1 * i for i in range(-5, 6)]
    loss, x = quadratic(symmetric(spectrum, seed=10))
    lanczos = top_eigenvalues(loss, [x], k=2, max_iters=200, tol=1e-8, method="lanczos")
    assert lanczos.converged == [True, True] and lanczos.iterations[0] <= len(spectrum)
    assert_relative(lanczos.values, [1.0, 0.99])
    power = top_eigenvalues(loss, [x], k=2, max_iters=200, tol=1e-8, method="power")
    assert not all(power.converged)  # said honestly: not converged within 200 iterations


def test_unconverged_estimate_says_so():
    loss, x = quadratic(symmetric([1.0, 0.999, 0.5, 0.1]))
    result = top_eigenvalues(loss, [x], k=1, max_iters=3, tol=1e-12)
    assert result.converged == [False] and result.iterations == [3]


def linear_regression(n=24, d=4, seed=5):
    """MSE of y ~ X w + b over two equal batches; Hessian w.r.t. (w, b) = 2/n [X 1]^T [X 1]."""
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(n, d, generator=generator, dtype=F64) * torch.tensor([3.0, 1.0, 0.5, 0.2], dtype=F64)
    targets = torch.randn(n, generator=generator, dtype=F64)
    w = torch.randn(d, generator=generator, dtype=F64).requires_grad_()
    b = torch.zeros(1, dtype=F64).requires_grad_()

    def batch_loss(rows):
        return lambda: ((features[rows] @ w + b - targets[rows]) ** 2).mean()

    half = n // 2
    terms = [batch_loss(slice(0, half)), batch_loss(slice(half, n))]
    design = torch.cat([features, torch.ones(n, 1, dtype=F64)], dim=1)  # (n, d + 1)
    return terms, [w, b], 2.0 / n * design.T @ design


def test_linear_regression_eigenvalues_and_trace_over_batches():
    terms, params, hessian = linear_regression()
    exact = torch.linalg.eigvalsh(hessian).flip(0)  # descending
    for method in ("power", "lanczos"):
        result = top_eigenvalues(terms, params, k=2, max_iters=2000, tol=1e-10, method=method)
        assert_relative(result.values, exact[:2])
        assert result.converged == [True, True]
    trace = hutchinson_trace(terms, params, samples=200, seed=7)
    exact_trace = float(torch.trace(hessian))
    assert trace.stderr > 0
    assert abs(trace.trace - exact_trace) <= 4 * trace.stderr
    assert abs(trace.trace - exact_trace) / exact_trace < 0.2  # and the estimate is not merely noisy


def test_hutchinson_is_exact_for_a_diagonal_hessian():
    # z^T D z = sum_i D_ii z_i^2 = tr(D) for every Rademacher z: zero spread.
    diagonal = torch.tensor([3.0, -1.0, 0.25, 7.0, 2.0], dtype=F64)
    loss, x = quadratic(torch.diag(diagonal))
    result = hutchinson_trace(loss, [x], samples=50)
    assert result.trace == pytest.approx(float(diagonal.sum()), rel=1e-12)
    assert result.stderr == pytest.approx(0.0, abs=1e-12) and result.samples == 50


def test_sam_sharpness_matches_the_closed_form():
    a = symmetric([5.0, 2.0, 1.0, 0.3])
    loss, x = quadratic(a)
    w = x.detach().clone()
    rho = 0.1
    g = a @ w
    value = lambda point: 0.5 * point @ a @ point  # noqa: E731
    expected = value(w + rho * g / g.norm()) - value(w)
    result = sam_sharpness(loss, [x], rho)
    assert result.sharpness == pytest.approx(float(expected), rel=1e-10)
    assert result.loss == pytest.approx(float(value(w)), rel=1e-12)
    assert torch.equal(x.detach(), w)  # restored bitwise


@pytest.mark.parametrize("eta, scaled", [(0.01, None), (0.0, None), (0.01, [True, False])])
def test_asam_sharpness_matches_the_closed_form(eta, scaled):
    a = symmetric([5.0, 2.0, 1.0, 0.3], seed=8)
    loss, x = quadratic(a, seed=9)
    w = x.detach().clone()
    rho = 0.5
    g = a @ w
    # Kwon et al. 2021: rho T^2 g / ||T g||, T = |w| + eta on a scaled tensor, 1 on the others. Here the
    # second tensor is y = x[2:] seen through a split of x, so one vector covers both cases.
    t = w.abs() + eta
    if scaled == [True, False]:
        t[2:] = 1.0
    eps = rho * t * t * g / (t * g).norm()
    value = lambda point: 0.5 * point @ a @ point  # noqa: E731
    if scaled is None:
        result = sam_sharpness(loss, [x], rho, adaptive=True, eta=eta)
    else:
        head, tail = w[:2].clone().requires_grad_(), w[2:].clone().requires_grad_()
        result = sam_sharpness(lambda: value(torch.cat([head, tail])), [head, tail], rho, adaptive=True, eta=eta,
                               scaled=scaled)
    assert result.sharpness == pytest.approx(float(value(w + eps) - value(w)), rel=1e-10)
    assert result.adaptive and torch.equal(x.detach(), w)


def test_asam_defaults_are_the_references():
    loss, x = quadratic(symmetric([2.0, 1.0]))
    with pytest.raises(ValueError, match="eta >= 0"):
        sam_sharpness(loss, [x], 0.5, adaptive=True, eta=-0.1)
    with pytest.raises(ValueError, match="2 flags for 1 tensors"):
        sam_sharpness(loss, [x], 0.5, adaptive=True, scaled=[True, False])
    assert inspect.signature(sam_sharpness).parameters["eta"].default == 0.01  # SamsungLabs/ASAM's


def test_gradient_and_hvp_average_the_loss_terms():
    terms, params, hessian = linear_regression()
    v = [torch.ones(4, dtype=F64), torch.ones(1, dtype=F64)]
    product = torch.cat(hessian_vector_product(terms, params, v))
    torch.testing.assert_close(product, hessian @ torch.ones(5, dtype=F64), rtol=1e-12, atol=1e-12)
    loss, grad = mean_loss_and_gradient(terms, params)
    full_loss = 0.5 * (terms[0]() + terms[1]())  # equal batches: the mean over all samples
    full_grad = torch.autograd.grad(full_loss, params)
    assert loss == pytest.approx(full_loss.item(), rel=1e-12)
    for mine, reference in zip(grad, full_grad, strict=True):
        torch.testing.assert_close(mine, reference)


def test_a_repeated_tensor_is_refused():
    loss, x = quadratic(symmetric([1.0, 2.0]))
    with pytest.raises(ValueError, match="shared tensor is one variable"):
        hessian_vector_product(loss, [x, x], [torch.ones(2, dtype=F64)] * 2)


def test_a_linear_loss_has_a_zero_hessian():
    x = torch.ones(3, dtype=F64, requires_grad=True)
    (hv,) = hessian_vector_product(lambda: (2 * x).sum(), [x], [torch.ones(3, dtype=F64)])
    assert torch.equal(hv, torch.zeros(3, dtype=F64))


class Recorder:
    def __init__(self):
        self.steps, self.total = 0, 0

    def step(self, note=""):
        self.steps += 1

    def resize(self, delta):
        self.total += delta


def test_progress_hears_every_product_and_early_stops():
    loss, x = quadratic(symmetric([4.0, 1.0, 0.5]))
    recorder = Recorder()
    result = top_eigenvalues(loss, [x], k=2, max_iters=500, tol=1e-8, progress=recorder)
    assert recorder.steps == sum(result.iterations)
    assert recorder.total == sum(result.iterations) - 2 * 500  # planned total 2 * 500 shrinks to what ran


def test_lanczos_progress_counts_one_product_per_iteration():
    loss, x = quadratic(symmetric([4.0, 2.0, 1.0, 0.5, 0.25]))
    recorder = Recorder()
    result = top_eigenvalues(loss, [x], k=2, max_iters=50, tol=1e-8, method="lanczos", progress=recorder)
    assert recorder.steps == result.iterations[0] <= 5  # 5 dimensions: exact after at most 5 products
    assert recorder.total == result.iterations[0] - 50
