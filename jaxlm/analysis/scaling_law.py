"""Scaling-law fits with an irreducible term, bootstrap uncertainty and compute-optimal sizes.

Laws (x is model size N, compute C or tokens D; logs are natural):

    L(N)    = E + A / N^alpha
    L(C)    = E + B / C^beta
    L(N, D) = E + A / N^alpha + B / D^beta          (Hoffmann et al. 2022, approach 3)

Fitting: every law is a constant E >= 0 plus K power terms c_k x_k^-a_k with c_k >= 0.
The objective is over log-space residuals r_i = log L_pred(x_i) - log L_i (relative
errors: the right scale for losses with multiplicative noise), either the sum of
squares (`loss="squared"`, the default: nonlinear least squares in log space) or the
Huber loss of Hoffmann et al. (`loss="huber"`, delta = 1e-3 by default).

1. Grid over the exponents (200 values in [0.01, 2] for one term, 40 x 40 for two).
   For fixed exponents the law is linear in (E, c_k): solve that weighted linear least
   squares (weights 1/L_i, the first-order form of the log residual) over every subset
   of non-negative coefficients, keep the feasible solution with the smallest log-space
   objective, and keep the best grid point. This needs no starting guess.
2. Refine all parameters from there with Levenberg-Marquardt on the log residuals
   (parameters E, log c_k, a_k; E projected to >= 0 and exponents to [1e-4, 4]; Huber
   by iteratively reweighting).

Uncertainty: bootstrap over points (resample the points with replacement, refit; a
resample with fewer distinct x values than there are parameters is drawn again),
reported as the standard deviation and the 2.5 / 97.5 percentiles of each parameter.
With few points (~8) percentile intervals tend to be somewhat narrow; treat them as a
lower bound on the uncertainty.

Compute-optimal size. With L(N, D) fitted and training compute C = k * N * D (k = 6
for the forward+backward matmuls; `jaxlm scaling-fit` measures k from the runs' own
FLOP counts, which add the attention term), minimising L at fixed C gives

    N_opt(C) = G * (C / k)^a,   D_opt = (C / k) / N_opt,
    a = beta / (alpha + beta),  G = (alpha A / (beta B))^(1 / (alpha + beta)).

Assumptions: the runs' final losses are what each (N, D) reaches with a well-tuned
schedule (each run's learning rate decayed over its own length; intermediate points of
a longer run are not), and N and D vary independently enough to separate the two
terms. `isoflop_optimum` is the model-free cross-check (approach 2): runs grouped by
compute level, a parabola in log N through each group's losses gives the
loss-minimising size per level, and log N_opt = a log C + log G is fitted through them.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Callable, Sequence

import numpy as np

from jaxlm.errors import InputError

LOSSES = ("squared", "huber")
EXPONENT_BOUNDS = (1e-4, 4.0)  # exponents are kept inside (a law beyond them is no law)


@dataclasses.dataclass(frozen=True)
class PowerLawFit:
    """L(x) = E + A / x^alpha."""

    E: float
    A: float
    alpha: float
    rmse_log: float  # root mean square of the log residuals at the fit
    n_points: int
    loss: str = "squared"

    def predict(self, x) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        with np.errstate(divide="ignore", over="ignore"):
            return self.E + np.exp(np.log(self.A) - self.alpha * np.log(x))

    def params(self) -> dict[str, float]:
        return {"E": self.E, "A": self.A, "alpha": self.alpha}


@dataclasses.dataclass(frozen=True)
class LossNDFit:
    """L(N, D) = E + A / N^alpha + B / D^beta."""

    E: float
    A: float
    alpha: float
    B: float
    beta: float
    rmse_log: float
    n_points: int
    loss: str = "squared"

    def predict(self, N, D) -> np.ndarray:
        lN = np.log(np.asarray(N, dtype=np.float64))
        lD = np.log(np.asarray(D, dtype=np.float64))
        with np.errstate(divide="ignore", over="ignore"):
            return (
                self.E
                + np.exp(np.log(self.A) - self.alpha * lN)
                + np.exp(np.log(self.B) - self.beta * lD)
            )

    def params(self) -> dict[str, float]:
        return {"E": self.E, "A": self.A, "alpha": self.alpha, "B": self.B, "beta": self.beta}

    @property
    def size_exponent(self) -> float:
        """a in N_opt ∝ C^a."""
        return self.beta / (self.alpha + self.beta)

    def optimal_allocation(self, compute, flops_per_param_token: float = 6.0):
        """(N_opt, D_opt) minimising L(N, D) subject to flops_per_param_token * N * D = C."""
        nd = np.asarray(compute, dtype=np.float64) / flops_per_param_token
        s = self.alpha + self.beta
        G = (self.alpha * self.A / (self.beta * self.B)) ** (1.0 / s)
        n_opt = G * nd ** (self.beta / s)
        return n_opt, nd / n_opt


@dataclasses.dataclass(frozen=True)
class Estimate:
    """A fitted value with its bootstrap spread."""

    value: float
    std: float
    lo: float  # 2.5th percentile
    hi: float  # 97.5th percentile

    def as_dict(self) -> dict[str, float]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class Bootstrap:
    """Bootstrap samples of every parameter (rows: accepted resamples)."""

    samples: dict[str, np.ndarray]
    n_failed: int  # resamples whose fit did not converge to finite values

    def estimates(self, fit) -> dict[str, Estimate]:
        out = {}
        for name, value in fit.params().items():
            s = self.samples[name]
            lo, hi = np.percentile(s, [2.5, 97.5]) if len(s) else (math.nan, math.nan)
            with np.errstate(over="ignore", invalid="ignore"):  # a wild resample: inf
                std = float(np.std(s, ddof=1)) if len(s) > 1 else math.nan
            out[name] = Estimate(float(value), std, float(lo), float(hi))
        return out


# --------------------------------------------------------------------------- fitting


def fit_power_law(
    x: Sequence[float],
    y: Sequence[float],
    *,
    loss: str = "squared",
    huber_delta: float = 1e-3,
    irreducible: bool = True,
) -> PowerLawFit:
    """Fit L(x) = E + A / x^alpha (E = 0 when `irreducible` is False); see the module doc."""
    x, y = _check_points(x, y, n_params=3 if irreducible else 2)
    z, log_x0 = _centred_log(x)
    grid = np.linspace(0.01, 2.0, 200)[:, None]
    E, (c,), (a,), rmse = _fit_terms(
        [z], y, [grid[:, 0]], loss=loss, delta=huber_delta, irreducible=irreducible
    )
    A = c * math.exp(a * log_x0)
    return PowerLawFit(E=E, A=A, alpha=a, rmse_log=rmse, n_points=len(y), loss=loss)


def fit_loss_nd(
    N: Sequence[float],
    D: Sequence[float],
    y: Sequence[float],
    *,
    loss: str = "squared",
    huber_delta: float = 1e-3,
) -> LossNDFit:
    """Fit L(N, D) = E + A / N^alpha + B / D^beta; see the module doc."""
    N, y = _check_points(N, y, n_params=5)
    D, _ = _check_points(D, y, n_params=5)
    if len(np.unique(D)) < 2 or len(np.unique(N)) < 2:
        raise InputError("fitting L(N, D) needs runs with at least two sizes N and token counts D")
    zN, log_n0 = _centred_log(N)
    zD, log_d0 = _centred_log(D)
    axis = np.linspace(0.01, 2.0, 40)
    ga, gb = (g.ravel() for g in np.meshgrid(axis, axis, indexing="ij"))
    E, (cA, cB), (alpha, beta), rmse = _fit_terms(
        [zN, zD], y, [ga, gb], loss=loss, delta=huber_delta, irreducible=True
    )
    A = cA * math.exp(alpha * log_n0)
    B = cB * math.exp(beta * log_d0)
    return LossNDFit(E, A, alpha, B, beta, rmse_log=rmse, n_points=len(y), loss=loss)


def bootstrap(
    fit_fn: Callable[..., PowerLawFit | LossNDFit],
    *columns: Sequence[float],
    n: int = 1000,
    seed: int = 0,
    min_distinct: int = 3,
) -> Bootstrap:
    """Refit `fit_fn(*columns)` on `n` resamples of the points (rows) with replacement.

    A resample is drawn again while its first column has fewer than `min_distinct`
    distinct values (the law would not be identifiable)."""
    cols = [np.asarray(c, dtype=np.float64) for c in columns]
    m = len(cols[0])
    if len(np.unique(cols[0])) < min_distinct:
        raise InputError(f"bootstrap needs at least {min_distinct} distinct x values")
    rng = np.random.default_rng(seed)
    rows: list[dict[str, float]] = []
    failed = 0
    for _ in range(n):
        while True:
            idx = rng.integers(0, m, size=m)
            if len(np.unique(cols[0][idx])) >= min_distinct:
                break
        try:
            params = fit_fn(*(c[idx] for c in cols)).params()
        except (InputError, np.linalg.LinAlgError, FloatingPointError, OverflowError):
            failed += 1
            continue
        if all(math.isfinite(v) for v in params.values()):
            rows.append(params)
        else:
            failed += 1
    names = list(rows[0]) if rows else []
    samples = {k: np.array([r[k] for r in rows]) for k in names}
    return Bootstrap(samples=samples, n_failed=failed)


@dataclasses.dataclass(frozen=True)
class IsoflopFit:
    """N_opt(C) = G * C^a through the loss-minimising size of each compute level."""

    a: float
    G: float
    levels: list[dict[str, float]]  # per level: compute, n_opt, n_runs, interpolated

    def n_opt(self, compute) -> np.ndarray:
        return self.G * np.asarray(compute, dtype=np.float64) ** self.a


def isoflop_optimum(
    N: Sequence[float], C: Sequence[float], y: Sequence[float], *, level_tolerance: float = 0.1
) -> IsoflopFit:
    """Approach 2: runs within a factor (1 + level_tolerance) in compute form a level; a
    parabola in log N through each level with >= 3 sizes gives its N_opt (kept when the
    parabola opens upwards), and log N_opt = a log C + log G is fitted through >= 2
    levels."""
    N, y = _check_points(N, y, n_params=3)
    C, _ = _check_points(C, y, n_params=3)
    order = np.argsort(C)
    groups, current = [], [order[0]]
    for i in order[1:]:
        if math.log(C[i] / C[current[0]]) <= math.log1p(level_tolerance):
            current.append(i)
        else:
            groups.append(current)
            current = [i]
    groups.append(current)
    levels = []
    for g in groups:
        g = np.array(g)
        if len(np.unique(N[g])) < 3:
            continue
        lN = np.log(N[g])
        c2, c1, _ = np.polyfit(lN, np.log(y[g]), 2)
        if c2 <= 0:
            continue
        l_opt = -c1 / (2 * c2)
        levels.append(
            {
                "compute": float(np.exp(np.mean(np.log(C[g])))),
                "n_opt": float(math.exp(l_opt)),
                "n_runs": len(g),
                "interpolated": bool(lN.min() <= l_opt <= lN.max()),
            }
        )
    if len(levels) < 2:
        raise InputError(
            "the IsoFLOP method needs at least two compute levels with three or more "
            f"model sizes each (found {len(levels)})"
        )
    lc = np.log([v["compute"] for v in levels])
    ln = np.log([v["n_opt"] for v in levels])
    a, log_g = np.polyfit(lc, ln, 1)
    return IsoflopFit(a=float(a), G=float(math.exp(log_g)), levels=levels)


# --------------------------------------------------------------------------- internals


def _check_points(x, y, *, n_params: int) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(x, dtype=np.float64).ravel()
    y = np.asarray(y, dtype=np.float64).ravel()
    if x.shape != y.shape:
        raise InputError(f"x and loss differ in length ({len(x)} vs {len(y)})")
    if not (np.all(np.isfinite(x)) and np.all(x > 0)):
        raise InputError(f"sizes must be finite and positive, got {x.tolist()}")
    if not (np.all(np.isfinite(y)) and np.all(y > 0)):
        raise InputError(f"losses must be finite and positive, got {y.tolist()}")
    if len(y) < n_params:
        raise InputError(f"{n_params} parameters need at least {n_params} points, got {len(y)}")
    return x, y


def _centred_log(x: np.ndarray) -> tuple[np.ndarray, float]:
    """log(x / x0) with x0 the geometric mean: decorrelates a coefficient and its exponent."""
    lx = np.log(x)
    log_x0 = float(lx.mean())
    return lx - log_x0, log_x0


def _rho(r: np.ndarray, loss: str, delta: float) -> np.ndarray:
    """Per-residual loss (along the last axis); Huber as in Hoffmann et al. 2022."""
    if loss == "squared":
        return r**2
    a = np.abs(r)
    return np.where(a <= delta, 0.5 * r**2, delta * (a - 0.5 * delta))


def _fit_terms(zs, y, exponent_grid, *, loss, delta, irreducible):
    """E + sum_k c_k exp(-a_k z_k): grid + linear least squares, then Levenberg-Marquardt.

    Returns (E, [c_k], [a_k], rmse of log residuals) in the centred coordinates z_k."""
    if loss not in LOSSES:
        raise InputError(f"loss must be one of {LOSSES}, got {loss!r}")
    K = len(zs)
    Z = np.stack(zs)  # [K, n]
    G = np.stack(exponent_grid, axis=1)  # [g, K]
    U = np.exp(-G[:, :, None] * Z[None])  # [g, K, n]
    ones = np.ones((G.shape[0], 1, len(y)))
    X = np.concatenate([ones, U], axis=1) if irreducible else U  # [g, p, n]
    w = 1.0 / y  # first-order log residual: (pred - y) / y
    Xw, yw = X * w, y * w
    gram_all = Xw @ Xw.transpose(0, 2, 1)  # [g, p, p]
    rhs_all = Xw @ yw  # [g, p]
    p = X.shape[1]
    best_obj = np.full(G.shape[0], np.inf)
    best_coef = np.zeros((G.shape[0], p))
    # Non-negative least squares by enumerating the active set (p <= 3 columns).
    for mask in itertools.product([True, False], repeat=p):
        cols = [i for i in range(p) if mask[i]]
        if not cols:
            continue
        gram = gram_all[:, cols][:, :, cols] + 1e-12 * np.eye(len(cols))
        rhs = rhs_all[:, cols]
        sol = np.linalg.solve(gram, rhs[..., None])[..., 0]  # [g, q]
        coef = np.zeros((G.shape[0], p))
        coef[:, cols] = sol
        pred = np.einsum("gp,gpn->gn", coef, X)
        ok = np.all(coef >= 0, axis=1) & np.all(pred > 0, axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            r = np.log(np.where(pred > 0, pred, 1.0)) - np.log(y)
        obj = np.where(ok, _rho(r, loss, delta).sum(axis=1), np.inf)
        better = obj < best_obj
        best_obj[better], best_coef[better] = obj[better], coef[better]
    g = int(np.argmin(best_obj))
    if not np.isfinite(best_obj[g]):
        raise InputError("no non-negative fit of the law to these points")
    coef = best_coef[g]
    E0 = coef[0] if irreducible else 0.0
    cs = coef[1:] if irreducible else coef
    scale = float(np.max(y))
    theta = np.concatenate(
        [[E0], np.log(np.maximum(cs, 1e-12 * scale)), G[g]]
    )  # [E, log c_1..K, a_1..K]
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):  # rejected steps
        theta = _levenberg_marquardt(theta, Z, y, loss=loss, delta=delta, irreducible=irreducible)
    r = _log_residuals(theta, Z, y)
    return (
        float(theta[0]),
        [float(math.exp(v)) for v in theta[1 : 1 + K]],
        [float(v) for v in theta[1 + K :]],
        float(np.sqrt(np.mean(r**2))),
    )


def _log_residuals(theta, Z, y):
    K = Z.shape[0]
    terms = np.exp(theta[1 : 1 + K, None] - theta[1 + K :, None] * Z)
    return np.log(theta[0] + terms.sum(axis=0)) - np.log(y)


def _jacobian(theta, Z):
    K = Z.shape[0]
    terms = np.exp(theta[1 : 1 + K, None] - theta[1 + K :, None] * Z)  # [K, n]
    pred = theta[0] + terms.sum(axis=0)
    return np.concatenate([(1.0 / pred)[None], terms / pred, -Z * terms / pred]).T  # [n, P]


def _levenberg_marquardt(theta, Z, y, *, loss, delta, irreducible, iters=100, ftol=1e-10):
    """Minimise sum rho(log residuals) over theta; Huber via per-iteration IRLS weights.
    Stops when a step lowers the objective by less than `ftol` (relative) or none does."""
    K = Z.shape[0]
    free = np.ones(len(theta), bool)
    free[0] = irreducible

    def objective(t):
        r = _log_residuals(t, Z, y)
        return float(_rho(r, loss, delta).sum()) if np.all(np.isfinite(r)) else math.inf

    obj, lam = objective(theta), 1e-3
    for _ in range(iters):
        r = _log_residuals(theta, Z, y)
        if loss == "huber":  # IRLS: rho(r) ~ 0.5 * w r^2 with w = min(1, delta / |r|)
            wts = np.minimum(1.0, delta / np.maximum(np.abs(r), 1e-300))
        else:
            wts = np.ones_like(r)
        J = _jacobian(theta, Z)
        active = free.copy()  # E at its bound 0 with the gradient pushing it below: held
        active[0] &= not (theta[0] <= 0 and (J[:, 0] * wts) @ r > 0)
        J = J[:, active]
        JtW = J.T * wts
        H, g = JtW @ J, JtW @ r
        improved = False
        for _ in range(20):
            step = np.linalg.solve(H + lam * np.diag(np.diag(H) + 1e-12), -g)
            cand = theta.copy()
            cand[active] += step
            cand[0] = max(cand[0], 0.0)
            cand[1 + K :] = np.clip(cand[1 + K :], *EXPONENT_BOUNDS)
            cand_obj = objective(cand)
            if cand_obj < obj:
                improved = obj - cand_obj > ftol * obj
                theta, obj, lam = cand, cand_obj, max(lam / 3, 1e-12)
                break
            lam *= 4
        if not improved:
            break
    return theta
