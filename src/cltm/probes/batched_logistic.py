"""Many independent L2 logistic regressions at once (the CLTM sweep's classification fast path).

Each problem is exactly scikit-learn's ``make_pipeline(StandardScaler(), LogisticRegression(C=C,
class_weight="balanced"))`` on its own rows: features standardised with the problem's own mean and (ddof=0)
standard deviation (1 where a feature is constant), class weights n / (2 n_c), objective

    0.5 ||w||^2 + C * sum_i s_i * log(1 + exp(-y_i (z_i . w + b)))       (intercept b not penalised)

so coefficients are in the standardised space, like ``pipeline[-1].coef_``. Only binary problems (labels
0/1, 1 = positive); multi-class labels go through :class:`cltm.probes.LogisticProbe` one at a time.

How. With n rows per problem and n < d (the sweep: <= 240 rows of 768-dim features) the optimal w lies in
the span of the standardised rows, w = Z^T alpha, so Newton's method runs on the n x n Gram matrix K = Z Z^T
(one batched matmul) instead of the d x d Hessian. The intercept is eliminated by a Schur complement, which
leaves one symmetric positive-definite n x n system per Newton step (Cholesky, batched over problems in
torch, float64). A backtracking line search keeps every step a descent step; converged problems leave the
active set. Newton converges quadratically, so the result matches a tightly converged scikit-learn fit to
~1e-8 (closer than scikit-learn's own default ``tol=1e-4`` fit is to the optimum). Problems of unequal size
are padded and masked.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

__all__ = ["BatchedLogisticFit", "fit_logistic_batched", "fit_logistic_subsets"]


@dataclass
class BatchedLogisticFit:
    """Result of :func:`fit_logistic_batched` for b problems of dimension d.

    ``coef`` [b, d] / ``intercept`` [b] are in each problem's standardised space (as scikit-learn's pipeline);
    ``mean`` / ``scale`` [b, d] are the standardisation; ``n_iter`` / ``converged`` [b] report the solver.
    """

    coef: np.ndarray
    intercept: np.ndarray
    mean: np.ndarray
    scale: np.ndarray
    n_iter: np.ndarray
    converged: np.ndarray

    @property
    def raw_coef(self) -> np.ndarray:
        """Coefficients on the raw (unstandardised) features: decision = x @ raw_coef + raw_intercept."""
        return self.coef / self.scale

    @property
    def raw_intercept(self) -> np.ndarray:
        return self.intercept - np.einsum("bd,bd->b", self.mean, self.raw_coef)

    def decision_function(self, X: np.ndarray) -> np.ndarray:
        """Scores of every model: X [m, d] (one shared test set) -> [b, m]; X [b, m, d] -> [b, m]."""
        X = np.asarray(X, dtype=np.float64)
        if X.ndim == 2:
            return self.raw_coef @ X.T + self.raw_intercept[:, None]
        if X.shape[0] != len(self.coef):
            raise ValueError(f"X has {X.shape[0]} test sets for {len(self.coef)} problems")
        return np.einsum("bmd,bd->bm", X, self.raw_coef) + self.raw_intercept[:, None]

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Predicted labels (0/1), same shapes as :meth:`decision_function`."""
        return (self.decision_function(X) > 0).astype(np.int64)


def _standardise(X: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    import torch  # imported here: importing cltm.probes stays light for sweep workers

    m = mask.to(X.dtype).unsqueeze(-1)
    count = m.sum(1)
    mean = (X * m).sum(1) / count
    centred = (X - mean.unsqueeze(1)) * m
    var = (centred * centred).sum(1) / count
    scale = var.sqrt()
    # scikit-learn's StandardScaler leaves (near-)constant features unscaled
    eps = 10 * torch.finfo(X.dtype).eps
    tiny = scale < eps * torch.clamp(mean.abs(), min=1.0)
    scale = torch.where(tiny, torch.ones_like(scale), scale)
    return centred / scale.unsqueeze(1), mean, scale


def _log1pexp(x: torch.Tensor) -> torch.Tensor:
    import torch  # imported here: importing cltm.probes stays light for sweep workers

    return torch.nn.functional.softplus(x)


def _newton_kernel(
    K: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor,
    C: float,
    max_iter: int,
    tol: float,
    alpha0: torch.Tensor | None = None,
    b0: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Newton on w = Z^T alpha for every problem; K [b, n, n], target/weight [b, n] (weight 0 = padding)."""
    import torch  # imported here: importing cltm.probes stays light for sweep workers

    nb, n, _ = K.shape
    dtype = K.dtype
    sign = 2 * target - 1  # +1 / -1
    cw = C * weight
    alpha = torch.zeros(nb, n, dtype=dtype) if alpha0 is None else alpha0.clone()
    b = torch.zeros(nb, dtype=dtype) if b0 is None else b0.clone()
    n_iter = torch.zeros(nb, dtype=torch.int64)
    converged = torch.zeros(nb, dtype=torch.bool)
    eye = torch.eye(n, dtype=dtype)
    k_alpha = torch.bmm(K, alpha.unsqueeze(-1)).squeeze(-1)

    def objective(a_k_a, margin, cw_active, sign_active):
        return 0.5 * a_k_a + (cw_active * _log1pexp(-sign_active * margin)).sum(-1)

    for _ in range(max_iter):
        active = torch.nonzero(~converged).squeeze(-1)
        if len(active) == 0:
            break
        Ka, a, ka, bb = K[active], alpha[active], k_alpha[active], b[active]
        t, cwa, sg = target[active], cw[active], sign[active]
        u = ka + bb.unsqueeze(-1)
        p = torch.sigmoid(u)
        r = cwa * (p - t)
        w_diag = cwa * p * (1 - p)
        g_b = r.sum(-1)
        omega = w_diag.sum(-1).clamp_min(torch.finfo(dtype).tiny)
        eta = a + r - w_diag * (g_b / omega).unsqueeze(-1)
        # M = I + P W^1/2 K W^1/2 P with P = I - q q^T, q = W^1/2 1 / sqrt(omega): SPD, eigenvalues >= 1
        sw = w_diag.sqrt()
        q = sw / omega.sqrt().unsqueeze(-1)
        Kt = Ka * sw.unsqueeze(-1) * sw.unsqueeze(-2)
        Ktq = torch.bmm(Kt, q.unsqueeze(-1)).squeeze(-1)
        qKtq = (q * Ktq).sum(-1, keepdim=True)
        PKtP = (
            Kt
            - q.unsqueeze(-1) * Ktq.unsqueeze(-2)
            - Ktq.unsqueeze(-1) * q.unsqueeze(-2)
            + (qKtq.unsqueeze(-1) * q.unsqueeze(-1) * q.unsqueeze(-2))
        )
        M = PKtP + eye
        k_eta = torch.bmm(Ka, eta.unsqueeze(-1)).squeeze(-1)
        v = sw * k_eta
        v = v - q * (q * v).sum(-1, keepdim=True)
        L, info = torch.linalg.cholesky_ex(M)
        sol = torch.cholesky_solve(v.unsqueeze(-1), L).squeeze(-1)
        sol = sol - q * (q * sol).sum(-1, keepdim=True)
        d_alpha = eta - sw * sol
        k_d = torch.bmm(Ka, d_alpha.unsqueeze(-1)).squeeze(-1)
        d_b = (g_b - (w_diag * k_d).sum(-1)) / omega
        # Newton decrement: [dw; db] . [g_w; g_b], with g_w = Z^T (alpha + r)
        decrement = (k_d * (a + r)).sum(-1) + d_b * g_b
        a_k_a = (a * ka).sum(-1)
        d_k_a = (d_alpha * ka).sum(-1)
        d_k_d = (d_alpha * k_d).sum(-1)
        f0 = objective(a_k_a, u, cwa, sg)
        step = torch.ones_like(f0)
        accepted = torch.zeros_like(f0, dtype=torch.bool)
        for _ in range(30):
            margin = ka - step.unsqueeze(-1) * k_d + (bb - step * d_b).unsqueeze(-1)
            f = objective(a_k_a - 2 * step * d_k_a + step**2 * d_k_d, margin, cwa, sg)
            ok = f <= f0 - 1e-4 * step * decrement.clamp_min(0)
            accepted |= ok
            if bool(accepted.all()):
                break
            step = torch.where(accepted, step, step / 2)
        alpha[active] = a - step.unsqueeze(-1) * d_alpha
        k_alpha[active] = ka - step.unsqueeze(-1) * k_d
        b[active] = bb - step * d_b
        n_iter[active] += 1
        done = (decrement.abs() <= tol * (1 + f0.abs())) | ~accepted | (info != 0)
        converged[active] = done & accepted & (info == 0)
        if bool((~accepted | (info != 0)).any()):
            # no descent possible at machine precision: the problem is at its optimum as far as float64 can
            # tell
            converged[active[~accepted | (info != 0)]] = True
    return alpha, b, n_iter, converged


def _as_padded(
    X: np.ndarray | Sequence[np.ndarray], y: np.ndarray | Sequence[np.ndarray], mask: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if isinstance(X, np.ndarray) and X.ndim == 3:
        y_arr = np.asarray(y)
        if y_arr.shape != X.shape[:2]:
            raise ValueError(f"y has shape {y_arr.shape}, expected {X.shape[:2]} to match X {X.shape}")
        mask_arr = np.ones(X.shape[:2], dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
        if mask_arr.shape != X.shape[:2]:
            raise ValueError(f"mask has shape {mask_arr.shape}, expected {X.shape[:2]}")
        return X, y_arr, mask_arr
    X_list = [np.asarray(x) for x in X]
    y_list = [np.asarray(v) for v in y]
    if len(X_list) != len(y_list):
        raise ValueError(f"{len(X_list)} feature matrices but {len(y_list)} label vectors")
    if not X_list:
        raise ValueError("no problems given")
    dims = {x.shape[1] for x in X_list}
    if len(dims) != 1:
        raise ValueError(f"all problems need the same feature dimension, got {sorted(dims)}")
    n_max = max(len(x) for x in X_list)
    d = dims.pop()
    Xp = np.zeros((len(X_list), n_max, d), dtype=np.float64)
    yp = np.zeros((len(X_list), n_max), dtype=np.int64)
    mp = np.zeros((len(X_list), n_max), dtype=bool)
    for i, (x, v) in enumerate(zip(X_list, y_list, strict=True)):
        if len(x) != len(v):
            raise ValueError(f"problem {i}: {len(x)} rows but {len(v)} labels")
        Xp[i, : len(x)] = x
        yp[i, : len(v)] = v
        mp[i, : len(x)] = True
    return Xp, yp, mp


def fit_logistic_batched(
    X: np.ndarray | Sequence[np.ndarray],
    y: np.ndarray | Sequence[np.ndarray],
    *,
    C: float = 1.0,
    mask: np.ndarray | None = None,
    sample_weight: np.ndarray | None = None,
    class_weight: str | None = "balanced",
    max_iter: int = 100,
    tol: float = 1e-12,
    chunk_size: int = 16,
) -> BatchedLogisticFit:
    """Fit b independent standardised L2 logistic regressions (see the module docstring for the objective).

    X: [b, n, d] array (with an optional boolean ``mask`` [b, n] marking real rows) or a list of b arrays
    [n_i, d]; y: labels 0/1 of the same layout. ``sample_weight`` [b, n] multiplies the class weights, as in
    scikit-learn (whose balanced class weights also use the weighted class totals). Problems are solved
    ``chunk_size`` at a time (memory ~ chunk_size * (n*d + n*n) * 8 bytes). Returns coefficients in the
    standardised space plus the standardisation (see :class:`BatchedLogisticFit`).
    """
    import torch  # imported here: importing cltm.probes stays light for sweep workers

    if C <= 0:
        raise ValueError(f"C must be positive, got {C}")
    if class_weight not in ("balanced", None):
        raise ValueError(f"class_weight must be 'balanced' or None, got {class_weight!r}")
    Xp, yp, mp = _as_padded(X, y, mask)
    nb, n, d = Xp.shape
    sw_all = np.ones((nb, n)) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
    if sw_all.shape != (nb, n):
        raise ValueError(f"sample_weight has shape {sw_all.shape}, expected {(nb, n)}")
    labels = np.where(mp, yp, 0)
    bad = mp & (labels != 0) & (labels != 1)
    if bad.any():
        i = int(np.flatnonzero(bad.any(1))[0])
        raise ValueError(f"problem {i}: labels must be 0/1 (1 = positive); multi-class needs LogisticProbe")
    n_pos = (mp & (labels == 1)).sum(1)
    n_all = mp.sum(1)
    one_class = (n_pos == 0) | (n_pos == n_all)
    if one_class.any():
        i = int(np.flatnonzero(one_class)[0])
        raise ValueError(f"problem {i}: only one class among its {int(n_all[i])} rows; need both 0 and 1")

    out = {k: [] for k in ("coef", "intercept", "mean", "scale", "n_iter", "converged")}
    for start in range(0, nb, chunk_size):
        sl = slice(start, min(start + chunk_size, nb))
        Xc = torch.from_numpy(np.ascontiguousarray(Xp[sl], dtype=np.float64))
        m = torch.from_numpy(mp[sl])
        t = torch.from_numpy(labels[sl].astype(np.float64))
        weight = torch.from_numpy(sw_all[sl]) * m
        if class_weight == "balanced":
            # scikit-learn >= 1.6 balances the sample-weighted class totals: sum(sw) / (2 * sum_c(sw))
            total = weight.sum(1, keepdim=True)
            pos = (weight * t).sum(1, keepdim=True)
            cls_w = torch.where(t > 0, total / (2 * pos), total / (2 * (total - pos)))
            weight = weight * cls_w
        Z, mean, scale = _standardise(Xc, m)
        K = torch.bmm(Z, Z.transpose(1, 2))
        alpha, b, n_iter, converged = _newton_kernel(K, t, weight, C, max_iter, tol)
        coef = torch.bmm(alpha.unsqueeze(1), Z).squeeze(1)
        out["coef"].append(coef.numpy())
        out["intercept"].append(b.numpy())
        out["mean"].append(mean.numpy())
        out["scale"].append(scale.numpy())
        out["n_iter"].append(n_iter.numpy())
        out["converged"].append(converged.numpy())
    return BatchedLogisticFit(**{k: np.concatenate(v) for k, v in out.items()})


def fit_logistic_subsets(
    features: np.ndarray,
    labels: np.ndarray,
    subsets: Sequence[np.ndarray],
    *,
    C: float = 1.0,
    chunk_size: int = 16,
    **kwargs,
) -> BatchedLogisticFit:
    """The sweep's entry point: one problem per index array in ``subsets`` over shared ``features`` [N, d].

    ``labels`` [N] are 0/1; each problem trains on ``features[rows]`` / ``labels[rows]`` (e.g. a
    ``ConditionPlan.train_rows``). Rows are gathered one chunk at a time, so memory stays bounded however many
    problems there are.
    """
    features = np.asarray(features)
    labels = np.asarray(labels)
    if len(features) != len(labels):
        raise ValueError(f"{len(features)} feature rows but {len(labels)} labels")
    parts = []
    for start in range(0, len(subsets), chunk_size):
        rows = [np.asarray(r, dtype=np.int64) for r in subsets[start : start + chunk_size]]
        parts.append(
            fit_logistic_batched(
                [features[r] for r in rows], [labels[r] for r in rows], C=C, chunk_size=chunk_size, **kwargs
            )
        )
    return BatchedLogisticFit(
        **{k: np.concatenate([getattr(p, k) for p in parts]) for k in BatchedLogisticFit.__dataclass_fields__}
    )
