"""Hessian-vector products and the spectral estimates built on them, for any loss over a parameter list.

Everything here works on a loss closure (or a list of them: one per batch, averaged) and a list of
distinct tensors, so the same code serves a quadratic with a known Hessian and a shared-weight ViT.
A tensor used by several modules is ONE variable: pass ``vitreduce.reduction.params.unique_parameters``; a
repeated tensor is refused. A vector is a list of tensors shaped like the parameters.

Products use double backward (``torch.autograd.grad`` with ``create_graph=True``). Not torch.func:
in torch 2.14 its vmap-based ``hessian``/``jacrev(jacrev)`` return wrong second derivatives for
``layer_norm`` with an affine weight (seen here on CPU; cf. pytorch#196700), which every ViT block has.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from vitreduce.sharpness.options import METHODS, Method
from vitreduce.sharpness.progress import ProgressSink, Silent

LossFn = Callable[[], torch.Tensor]
Vector = list[torch.Tensor]


@dataclass(frozen=True)
class EigenResult:
    """Top eigenvalues (largest first) with their eigenvectors and convergence.

    ``shift`` is the most negative eigenvalue when the dominant eigenvalue (largest magnitude) was
    negative and the search had to shift the operator to find the largest ones (taking
    ``shift_iterations`` products); else None.
    """

    values: list[float]
    vectors: list[Vector]
    converged: list[bool]
    iterations: list[int]
    shift: float | None = None
    shift_iterations: int = 0


@dataclass(frozen=True)
class TraceResult:
    """Hutchinson estimate of tr(H): the mean of z^T H z over Rademacher z, and its standard error."""

    trace: float
    stderr: float
    samples: int


@dataclass(frozen=True)
class SamResult:
    """loss(w + eps) - loss(w) for the (adaptive) SAM ascent step eps of radius rho."""

    loss: float
    perturbed_loss: float
    sharpness: float
    rho: float
    adaptive: bool


def _loss_terms(loss_fn: LossFn | Sequence[LossFn]) -> list[LossFn]:
    terms = [loss_fn] if callable(loss_fn) else list(loss_fn)
    if not terms:
        raise ValueError("no loss terms: pass a loss closure or a non-empty list of them (one per batch)")
    return terms


def _check_params(params: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    params = list(params)
    if len({id(p) for p in params}) != len(params):
        raise ValueError("a tensor appears twice in params; a shared tensor is one variable: "
                         "use vitreduce.reduction.params.unique_parameters(model)")
    if not params or not all(p.requires_grad for p in params):
        raise ValueError("params must be a non-empty list of tensors with requires_grad=True")
    return params


def _dot(a: Vector, b: Vector) -> float:
    return float(sum(torch.sum(x * y, dtype=torch.float64) for x, y in zip(a, b, strict=True)))


def _norm(a: Vector) -> float:
    return math.sqrt(_dot(a, a))


def _scaled(a: Vector, factor: float) -> Vector:
    return [x * factor for x in a]


def _orthogonalize(v: Vector, basis: list[Vector]) -> None:
    """v -= sum_j (u_j . v) u_j in place, for orthonormal u_j (deflation of found eigenvectors)."""
    for u in basis:
        coeff = _dot(u, v)
        for x, y in zip(v, u, strict=True):
            x.sub_(y, alpha=coeff)


def _random_vector(params: Sequence[torch.Tensor], generator: torch.Generator, rademacher: bool) -> Vector:
    # Drawn on the CPU from one seeded generator, so a seed gives the same vectors on every device.
    vector = []
    for p in params:
        if rademacher:
            x = torch.randint(0, 2, p.shape, generator=generator).mul_(2).sub_(1)
        else:
            x = torch.randn(p.shape, generator=generator, dtype=torch.float64)
        vector.append(x.to(device=p.device, dtype=p.dtype))
    return vector


def hessian_vector_product(loss_fn: LossFn | Sequence[LossFn], params: Sequence[torch.Tensor], v: Vector) -> Vector:
    """H v for the Hessian of the loss (mean over the loss terms) with respect to ``params``.

    Args:
        loss_fn: a closure returning a scalar loss that depends on ``params``, or a list of them
            (one per batch); the product is of the mean loss, accumulated one term at a time so only
            one batch's graph is alive.
        params: distinct tensors with ``requires_grad=True`` (a shared tensor once).
        v: tensors shaped like ``params``.
    """
    terms = _loss_terms(loss_fn)
    params = _check_params(params)
    out = [torch.zeros_like(p) for p in params]
    for term in terms:
        for total, product in zip(out, _term_hvp(term, params, v), strict=True):
            if product is not None:
                total.add_(product)
    return [total.div_(len(terms)) for total in out]


def _term_hvp(term: LossFn, params: list[torch.Tensor], v: Vector) -> tuple[torch.Tensor | None, ...]:
    """H v of one loss term; its graphs die when this returns (so one batch's graph is alive at a time)."""
    with torch.enable_grad():
        loss = term()
        grads = torch.autograd.grad(loss, params, create_graph=True, allow_unused=True)
        used = [(g, x) for g, x in zip(grads, v, strict=True) if g is not None]
        grad_dot_v = sum((g * x).sum() for g, x in used) if used else None
        if grad_dot_v is None or not grad_dot_v.requires_grad:
            return (None,) * len(params)  # the loss is at most linear in params: this term's Hessian is zero
        return torch.autograd.grad(grad_dot_v, params, allow_unused=True)


def _power_iteration(hvp: Callable[[Vector], Vector], start: Vector, found: list[Vector], shift: float,
                     max_iters: int, tol: float, progress: ProgressSink, label: str) -> tuple[float, Vector, bool, int]:
    """Dominant eigenpair of (H - shift I) restricted to the complement of ``found``.

    Converged when the residual ||(H - shift I) v - mu v|| of the unit vector v and its Rayleigh
    quotient mu is at most tol * |mu + shift|: then an eigenvalue of H lies within that distance.
    (The relative change of mu between iterations is no test: when convergence is slow it is small
    long before mu is right.)
    """
    v = start
    _orthogonalize(v, found)
    v = _scaled(v, 1.0 / _norm(v))
    estimate = 0.0
    for iteration in range(1, max_iters + 1):
        hv = hvp(v)
        if shift:
            for x, y in zip(hv, v, strict=True):
                x.sub_(y, alpha=shift)
        _orthogonalize(hv, found)
        estimate = _dot(v, hv)  # Rayleigh quotient of the current unit vector
        residual = _norm([x - estimate * y for x, y in zip(hv, v, strict=True)])
        norm = _norm(hv)
        progress.step(f"{label} iter {iteration}: {estimate + shift:.6g}")
        if norm > 0.0:
            v = _scaled(hv, 1.0 / norm)
        if residual <= tol * abs(estimate + shift) or norm == 0.0:
            progress.resize(iteration - max_iters)
            return estimate, v, True, iteration
    return estimate, v, False, max_iters


def top_eigenvalues(loss_fn: LossFn | Sequence[LossFn], params: Sequence[torch.Tensor], k: int = 1, *,
                    max_iters: int = 100, tol: float = 1e-3, seed: int = 0, method: Method = "power",
                    progress: ProgressSink | None = None) -> EigenResult:
    """The k largest eigenvalues of the Hessian, by power iteration with deflation or by Lanczos.

    Both report an eigenvalue as converged when the residual ||H y - theta y|| of its unit vector y is at
    most ``tol * |theta|``: an eigenvalue of H then lies within ``tol`` relative of theta.

    ``power`` keeps k + 2 parameter-sized vectors; theta is the Rayleigh quotient. If the dominant
    eigenvalue (largest magnitude) is negative, it is the smallest one: the search then continues on
    H - shift*I, shift = that value, whose dominant eigenvalues are the largest of H
    (``EigenResult.shift``). Slow when another eigenvalue is close in magnitude (a negative one too).

    ``lanczos`` (full reorthogonalisation) keeps one vector per iteration but needs far fewer
    products, most of all for close eigenvalues; theta is a Ritz value and its residual is
    |beta_m s_mi|. It returns fewer than k when the Krylov space has fewer dimensions (a Hessian with
    fewer distinct eigenvalues).

    Args:
        loss_fn: a loss closure or a list of them (one per batch, averaged).
        params: distinct tensors with ``requires_grad=True``.
        k: number of eigenvalues.
        max_iters: power iterations per eigenvalue, or Lanczos iterations, at most.
        tol: relative residual that counts as converged (see above).
        seed: seed of the random start vectors.
        method: ``power`` or ``lanczos``.
        progress: told about every Hessian-vector product (planned total: k * max_iters for power,
            max_iters for Lanczos).
    """
    if k < 1 or max_iters < 1 or not tol > 0 or method not in METHODS:
        raise ValueError(f"need k >= 1, max_iters >= 1, tol > 0, method in {METHODS} "
                         f"(got k={k}, max_iters={max_iters}, tol={tol}, method={method!r})")
    params = _check_params(params)
    terms = _loss_terms(loss_fn)
    progress = progress or Silent()
    generator = torch.Generator().manual_seed(seed)

    def hvp(v: Vector) -> Vector:
        return hessian_vector_product(terms, params, v)

    if method == "lanczos":
        return _lanczos(hvp, _random_vector(params, generator, rademacher=False), k, max_iters, tol, progress)
    values, vectors, converged, iterations = [], [], [], []
    shift, shift_iterations = 0.0, 0
    while len(values) < k:
        label = f"eigenvalue {len(values) + 1}/{k}"
        start = _random_vector(params, generator, rademacher=False)
        value, vector, done, used = _power_iteration(hvp, start, vectors, shift, max_iters, tol, progress, label)
        if value < 0 and shift == 0.0:
            # Dominant but negative: the smallest eigenvalue. Shift by it so the rest are >= 0 and the
            # largest becomes dominant; this search does not count as one of the k.
            shift, shift_iterations = value, used
            progress.resize(max_iters)
            continue
        values.append(value + shift)
        vectors.append(vector)
        converged.append(done)
        iterations.append(used)
    return EigenResult(values, vectors, converged, iterations, shift or None, shift_iterations)


def _lanczos(hvp: Callable[[Vector], Vector], start: Vector, k: int, max_iters: int, tol: float,
             progress: ProgressSink) -> EigenResult:
    """Lanczos with full reorthogonalisation; the k largest Ritz pairs of the tridiagonal T."""
    basis = [_scaled(start, 1.0 / _norm(start))]  # orthonormal q_1 .. q_m
    alphas: list[float] = []
    betas: list[float] = []  # betas[j] couples q_j and q_{j+1}
    for iteration in range(1, max_iters + 1):
        w = hvp(basis[-1])
        alphas.append(_dot(basis[-1], w))
        for _ in range(2):  # one pass loses orthogonality in floating point; two suffice (Parlett)
            _orthogonalize(w, basis)
        beta = _norm(w)
        ritz, coeffs = _tridiagonal_eigh(alphas, betas)  # ascending
        top = list(range(len(ritz) - 1, max(len(ritz) - 1 - k, -1), -1))
        residuals = [beta * abs(float(coeffs[-1, i])) for i in top]
        done = [r <= tol * abs(float(ritz[i])) for r, i in zip(residuals, top, strict=True)]
        progress.step(f"Lanczos iter {iteration}: {float(ritz[-1]):.6g}")
        # Stop when all k have converged, or the Krylov space is exhausted (beta = 0: T is exact).
        exhausted = beta <= 1e-12 * max(abs(float(ritz[0])), abs(float(ritz[-1])), 1e-30)
        if (len(top) == k and all(done)) or exhausted:
            progress.resize(iteration - max_iters)
            break
        betas.append(beta)
        basis.append(_scaled(w, 1.0 / beta))
    vectors = []
    for i in top:
        vector = [torch.zeros_like(x) for x in basis[0]]
        for q, c in zip(basis, coeffs[:, i].tolist(), strict=False):  # basis may hold one unused q
            for x, y in zip(vector, q, strict=True):
                x.add_(y, alpha=c)
        vectors.append(vector)
    converged = [True] * len(top) if exhausted else done
    return EigenResult([float(ritz[i]) for i in top], vectors, converged, [iteration] * len(top))


def _tridiagonal_eigh(alphas: list[float], betas: list[float]) -> tuple[torch.Tensor, torch.Tensor]:
    size = len(alphas)
    t = torch.diag(torch.tensor(alphas, dtype=torch.float64))  # (m, m)
    if size > 1:
        off = torch.tensor(betas[: size - 1], dtype=torch.float64)
        t += torch.diag(off, 1) + torch.diag(off, -1)
    return torch.linalg.eigh(t)


def hutchinson_trace(loss_fn: LossFn | Sequence[LossFn], params: Sequence[torch.Tensor], samples: int = 100, *,
                     seed: int = 0, progress: ProgressSink | None = None) -> TraceResult:
    """Hutchinson's estimate of tr(H): mean of z^T H z over Rademacher vectors z, with its standard error.

    Args:
        loss_fn: a loss closure or a list of them (one per batch, averaged).
        params: distinct tensors with ``requires_grad=True``.
        samples: number of Rademacher vectors (at least 2, for the standard error std/sqrt(samples)).
        seed: seed of the vectors.
        progress: told about every Hessian-vector product.
    """
    if samples < 2:
        raise ValueError(f"samples must be >= 2 for a standard error (got {samples})")
    params = _check_params(params)
    terms = _loss_terms(loss_fn)
    progress = progress or Silent()
    generator = torch.Generator().manual_seed(seed)
    estimates = []
    for index in range(samples):
        z = _random_vector(params, generator, rademacher=True)
        estimates.append(_dot(z, hessian_vector_product(terms, params, z)))
        progress.step(f"trace sample {index + 1}/{samples}: {sum(estimates) / len(estimates):.6g}")
    values = torch.tensor(estimates, dtype=torch.float64)
    return TraceResult(float(values.mean()), float(values.std() / math.sqrt(samples)), samples)


def mean_loss_and_gradient(loss_fn: LossFn | Sequence[LossFn], params: Sequence[torch.Tensor]) -> tuple[float, Vector]:
    """The loss and its gradient, both averaged over the loss terms (one backward per term).

    Args:
        loss_fn: a loss closure or a list of them (one per batch, averaged).
        params: distinct tensors with ``requires_grad=True``.
    """
    terms = _loss_terms(loss_fn)
    params = _check_params(params)
    total_loss = 0.0
    gradient = [torch.zeros_like(p) for p in params]
    for term in terms:
        with torch.enable_grad():
            loss = term()
            grads = torch.autograd.grad(loss, params, allow_unused=True)
        total_loss += float(loss.detach())
        for total, grad in zip(gradient, grads, strict=True):
            if grad is not None:
                total.add_(grad)
    return total_loss / len(terms), [g.div_(len(terms)) for g in gradient]


def mean_loss(loss_fn: LossFn | Sequence[LossFn]) -> float:
    """The loss averaged over the loss terms, without gradients.

    Args:
        loss_fn: a loss closure or a list of them (one per batch).
    """
    terms = _loss_terms(loss_fn)
    with torch.no_grad():
        return sum(float(term()) for term in terms) / len(terms)


def sam_sharpness(loss_fn: LossFn | Sequence[LossFn], params: Sequence[torch.Tensor], rho: float = 0.05, *,
                  adaptive: bool = False, eta: float = 0.01, scaled: Sequence[bool] | None = None) -> SamResult:
    """loss(w + eps) - loss(w) after ONE normalised gradient-ascent step eps of radius rho.

    g is the gradient of the mean loss over all the loss terms (the whole fixed subset at once), and
    eps is one step over all the parameters jointly: not m-sharpness (Foret et al. 2021, a max per
    m-sample chunk, averaged), which is not implemented. The step is the first-order maximiser in the
    ball, so the value is a lower bound of the max over it. The parameters are restored bitwise.

    SAM (Foret et al. 2021): eps = rho g / ||g||. ASAM (Kwon et al. 2021; the authors' code
    SamsungLabs/ASAM): eps = rho T^2 g / ||T g|| with T = |w| + eta elementwise on the ``scaled``
    tensors and T = 1 on the others (the reference scales tensors named ``weight`` and leaves biases
    and the rest unscaled; its defaults are rho 0.5, eta 0.01).

    Args:
        loss_fn: a loss closure or a list of them (one per batch, averaged).
        params: distinct tensors with ``requires_grad=True``.
        rho: radius of the ascent step (for adaptive, in the scaled coordinates T^-1 w).
        adaptive: ASAM's step instead of SAM's.
        eta: added to |w| in ASAM's T (>= 0).
        scaled: per tensor of ``params``, whether ASAM scales it by |w| + eta (default: all of them).
    """
    if not rho > 0 or not eta >= 0:
        raise ValueError(f"need rho > 0 and eta >= 0 (got rho={rho}, eta={eta})")
    terms = _loss_terms(loss_fn)
    params = _check_params(params)
    scaled = [True] * len(params) if scaled is None else list(scaled)
    if len(scaled) != len(params):
        raise ValueError(f"scaled has {len(scaled)} flags for {len(params)} tensors")
    loss, grad = mean_loss_and_gradient(terms, params)
    if adaptive:  # T_w = |w| + eta on the scaled tensors, 1 on the rest
        scale = [p.detach().abs() + eta if s else torch.ones_like(p) for p, s in zip(params, scaled, strict=True)]
        scaled_grad = [t * g for t, g in zip(scale, grad, strict=True)]  # T_w g
        norm = _norm(scaled_grad)
        step = [t * tg for t, tg in zip(scale, scaled_grad, strict=True)]  # T_w^2 g
    else:
        norm = _norm(grad)
        step = grad
    if norm == 0.0:
        return SamResult(loss, loss, 0.0, rho, adaptive)  # a stationary point: no ascent direction
    saved = [p.detach().clone() for p in params]
    try:
        with torch.no_grad():
            for p, s in zip(params, step, strict=True):
                p.add_(s, alpha=rho / norm)
        perturbed = mean_loss(terms)
    finally:
        with torch.no_grad():
            for p, original in zip(params, saved, strict=True):
                p.copy_(original)
    return SamResult(loss, perturbed, perturbed - loss, rho, adaptive)
