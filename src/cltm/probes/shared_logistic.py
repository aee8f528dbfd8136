"""Many L2 logistic regressions whose training sets are overlapping row subsets of one feature matrix.

The CLTM sweep's classification fast path. Within one (layer, seed) every training set is a union of a few
per-language blocks (``single`` = N of i, ``self`` = 2N of i, ``pair`` = N of i + N of j), so the same rows
enter many problems. Each problem is still exactly scikit-learn's
``make_pipeline(StandardScaler(), LogisticRegression(C=C, class_weight="balanced"))`` on its own rows, with
the objective of :mod:`cltm.probes.batched_logistic`:

    0.5 ||w||^2 + C * sum_i s_i * log(1 + exp(-y_i (z_i . w + b)))      z_i = (x_i - mean_p) / scale_p

How the work is shared. Standardisation is folded into the coefficients: z_i . w + b = x_i . u + c with
u = w / scale_p and c = b - u . mean_p, so margins and gradients of *all* problems are products with the raw
rows. Rows are grouped into *atoms* (rows that belong to exactly the same problems: here the N of each
language, and the other N of its 2N); each atom is multiplied once by the stacked coefficients of every
problem that contains it (one small GEMM per atom and pass instead of one pass per problem and row block).
Per-problem means and scales come from per-atom sums, which add up. The solver is L-BFGS run in lockstep over
all problems (vectorised two-loop recursion, Armijo backtracking on margins that are linear in the step, so a
line search costs no extra product with the data); finished problems leave the products. Products run in
float32 on atom-centred rows, everything else in float64, and a problem float32 cannot resolve is finished in
float64. A problem stops when its largest gradient entry is below ``tol * C * n_p``: scikit-learn's lbfgs
criterion on its rescaled objective, with the same default ``tol=1e-4``, so both stop at about the same
distance from the optimum (in the sweep benchmark their held-out F1 differ by 0.0025 on average, less than
either differs from a 10x tighter fit; benchmarks/RESULTS.md).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from cltm.probes.batched_logistic import BatchedLogisticFit

__all__ = ["fit_logistic_shared"]


class _Layout:
    """The (row, problem) pairs of the problems being solved, atom by atom, in flat float64 arrays.

    ``local_of`` maps problem ids to positions in the working set (-1: not being solved). Atom k's rows
    (centred on the atom's own mean, float32 by default) form an [r, q] row-major block of pairs at
    ``spans[k]``, one column per working problem that contains them. Rebuilt when problems finish, so they
    stop costing products with the data.
    """

    def __init__(self, atoms, local_of, w_pos, w_neg, C):
        self.rows, self.problems, self.spans = [], [], []
        pair_problem, pair_target = [], []
        offset = 0
        self.centres = []
        for rows, centre, members, t in atoms:
            members = local_of[members]
            members = members[members >= 0]
            if not len(members):
                continue
            size = len(rows) * len(members)
            self.rows.append(rows)
            self.centres.append(centre)
            self.problems.append(members)
            self.spans.append(slice(offset, offset + size))
            offset += size
            pair_problem.append(np.tile(members, len(rows)))
            pair_target.append(np.repeat(t, len(members)))
        self.size, self.nb = offset, len(w_pos)
        self.problem_of = np.concatenate(pair_problem)
        self.target = np.concatenate(pair_target)
        self.sign = 2 * self.target - 1
        self.weight = C * np.where(self.target > 0, w_pos[self.problem_of], w_neg[self.problem_of])

    def keep(self, values: np.ndarray, keep: np.ndarray) -> np.ndarray:
        """``values`` of this layout restricted to the problems ``keep`` (a mask over its working set), in
        the layout that ``_Layout`` builds for them (same atoms, same order): no product with the data."""
        parts = []
        for members, span in zip(self.problems, self.spans, strict=True):
            cols = keep[members]
            if cols.any():
                parts.append(values[span].reshape(-1, len(members))[:, cols].ravel())
        return np.concatenate(parts)

    def per_problem(self, values: np.ndarray) -> np.ndarray:
        return np.bincount(self.problem_of, weights=values, minlength=self.nb)

    def products(self, u: np.ndarray) -> np.ndarray:
        """x . u_p for every pair: (x - atom centre) . u in the rows' dtype, plus centre . u in float64."""
        out = np.empty(self.size)
        u_low = u.astype(self.rows[0].dtype)
        for rows, centre, members, span in zip(
            self.rows, self.centres, self.problems, self.spans, strict=True
        ):
            out[span] = (rows @ u_low[members].T + centre @ u[members].T).ravel()
        return out

    def transposed_products(self, residual: np.ndarray, d: int) -> np.ndarray:
        """Per problem, the sum over its rows of residual * x -> [nb, d] (same split as ``products``)."""
        gx = np.zeros((self.nb, d))
        r_low = residual.astype(self.rows[0].dtype)
        for rows, centre, members, span in zip(
            self.rows, self.centres, self.problems, self.spans, strict=True
        ):
            r_sum = residual[span].reshape(len(rows), len(members)).sum(0)
            gx[members] += r_low[span].reshape(len(rows), len(members)).T @ rows + r_sum[:, None] * centre
        return gx

    def loss(self, margins: np.ndarray) -> np.ndarray:
        return self.per_problem(self.weight * _softplus(-self.sign * margins))

    def residual(self, margins: np.ndarray) -> np.ndarray:
        return self.weight * (_sigmoid(margins) - self.target)


def _atoms_of(union_pos: list[np.ndarray], n_union: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Group union positions by the exact set of problems containing them -> [(positions, problems)], in
    order of first appearance."""
    membership = np.zeros((n_union, len(union_pos)), dtype=bool)
    owner = np.repeat(np.arange(len(union_pos)), [len(p) for p in union_pos])
    membership[np.concatenate(union_pos), owner] = True
    signature = np.packbits(membership, axis=1)
    atom_of: dict[bytes, int] = {}
    which = np.array([atom_of.setdefault(row.tobytes(), len(atom_of)) for row in signature])
    first = np.unique(which, return_index=True)[1]
    return [(np.flatnonzero(which == a), np.flatnonzero(membership[first[a]])) for a in range(len(atom_of))]


def _softplus(x: np.ndarray) -> np.ndarray:
    return np.logaddexp(0.0, x)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def _rowdot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.einsum("bd,bd->b", a, b)


def _check_subsets(labels: np.ndarray, subsets: list[np.ndarray]) -> None:
    sizes = np.array([len(s) for s in subsets])
    owner = np.repeat(np.arange(len(subsets)), sizes)
    rows = np.concatenate(subsets)
    if len(rows) and (rows.min() < 0 or rows.max() >= len(labels)):
        raise ValueError(f"row indices must lie in [0, {len(labels)}); got {rows.min()}..{rows.max()}")
    pairs = np.sort(owner * len(labels) + rows)  # a sort: np.unique is slow on wide-ranging integers
    repeated = pairs[1:] == pairs[:-1]
    if repeated.any():
        k = int(pairs[1:][repeated][0] // len(labels))
        raise ValueError(f"problem {k}: its rows are not distinct; pass each training row once")
    y = labels[rows]
    binary = (y == 0) | (y == 1)
    if not binary.all():
        k = int(owner[~binary][0])
        raise ValueError(f"problem {k}: labels must be 0/1 (1 = positive); multi-class needs LogisticProbe")
    n_pos = np.bincount(owner, weights=y, minlength=len(subsets))
    one_class = (n_pos == 0) | (n_pos == sizes)
    if one_class.any():
        k = int(np.flatnonzero(one_class)[0])
        raise ValueError(f"problem {k}: only one class among its {sizes[k]} rows; need both 0 and 1")


def _lbfgs(
    ids, atoms, v_all, g_all, n_iter, mean_all, scale_all, threshold_all, w_pos, w_neg, C, max_iter, history
) -> None:
    """L-BFGS in lockstep over problems ``ids``, from their rows of ``v_all``; writes ``v_all``, ``g_all``
    and ``n_iter`` in place. Products with the data run in the dtype of the atoms' rows."""
    nb, d = len(v_all), v_all.shape[1] - 1

    def working(ids: np.ndarray):
        local_of = np.full(nb, -1)
        local_of[ids] = np.arange(len(ids))
        return _Layout(atoms, local_of, w_pos[ids], w_neg[ids], C), mean_all[ids], scale_all[ids]

    def margins_of(vw: np.ndarray) -> np.ndarray:
        """Margins x . u + c of every pair for standardised parameters [w, b] per working problem."""
        u = vw[:, :d] / scale
        c = vw[:, d] - _rowdot(u, mean)
        return lay.products(u) + c[lay.problem_of]

    def objective_and_gradient(vw: np.ndarray, margins: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        residual = lay.residual(margins)
        rsum = lay.per_problem(residual)
        g_w = vw[:, :d] + (lay.transposed_products(residual, d) - mean * rsum[:, None]) / scale
        f = lay.loss(margins) + 0.5 * _rowdot(vw[:, :d], vw[:, :d])
        return f, np.concatenate([g_w, rsum[:, None]], axis=1)

    # the working set: problems still being solved, with their solver state (L-BFGS history included)
    v = v_all[ids]
    S: list[np.ndarray] = []
    Y: list[np.ndarray] = []
    rho: list[np.ndarray] = []
    lay, mean, scale = working(ids)
    threshold = threshold_all[ids]
    M = margins_of(v)
    f, g = objective_and_gradient(v, M)
    done = np.abs(g).max(1) <= threshold
    for _ in range(max_iter):
        if done.any():  # retire finished problems; rebuild the products once enough of them have finished
            v_all[ids[done]], g_all[ids[done]] = v[done], g[done]
            keep = ~done
            if keep.sum() <= 0.75 * len(ids) or not keep.any():
                ids, v, g, f, threshold = ids[keep], v[keep], g[keep], f[keep], threshold[keep]
                S, Y, rho = [s[keep] for s in S], [y_[keep] for y_ in Y], [r[keep] for r in rho]
                if not len(ids):
                    break
                M = lay.keep(M, keep)
                lay, mean, scale = working(ids)
                done = np.zeros(len(ids), dtype=bool)
        active = ~done
        # two-loop recursion, vectorised over problems
        q = g.copy()
        alphas = []
        for s_k, y_k, r_k in zip(reversed(S), reversed(Y), reversed(rho), strict=True):
            a_k = r_k * _rowdot(s_k, q)
            q -= a_k[:, None] * y_k
            alphas.append(a_k)
        if S:
            sy, yy = _rowdot(S[-1], Y[-1]), _rowdot(Y[-1], Y[-1])
            gamma = np.where(yy > 0, sy / np.where(yy > 0, yy, 1.0), 1.0)
        else:
            gamma = 1.0 / np.maximum(np.linalg.norm(g, axis=1), 1e-300)
        q *= gamma[:, None]
        for s_k, y_k, r_k, a_k in zip(S, Y, rho, reversed(alphas), strict=True):
            q += (a_k - r_k * _rowdot(y_k, q))[:, None] * s_k
        direction = -q
        slope = _rowdot(g, direction)
        stale = active & (slope >= 0)  # not a descent direction: restart this problem from the gradient
        if stale.any():
            direction[stale] = -g[stale] / np.linalg.norm(g[stale], axis=1)[:, None]
            slope = _rowdot(g, direction)
        direction[~active] = 0.0
        dM = margins_of(direction)
        ww = _rowdot(v[:, :d], v[:, :d])
        wd = _rowdot(v[:, :d], direction[:, :d])
        dd = _rowdot(direction[:, :d], direction[:, :d])
        step = active.astype(np.float64)
        accepted = ~active
        for _ in range(40):  # backtracking; margins are linear in the step, no data product needed
            moved = M + step[lay.problem_of] * dM
            trial = lay.loss(moved) + 0.5 * (ww + 2 * step * wd + step**2 * dd)
            ok = trial <= f + 1e-4 * step * slope  # Armijo
            if not (ok | accepted).all():
                # near the optimum the decrease falls below float64 resolution of f: accept a step whose
                # directional derivative shows it did not overshoot (Hager-Zhang's approximate Wolfe)
                d_step = lay.per_problem(lay.residual(moved) * dM) + wd + step * dd
                ok |= (trial <= f + 1e-12 * np.abs(f)) & (d_step <= -0.8 * slope)
            accepted |= ok
            if accepted.all():
                break
            step = np.where(accepted, step, step / 2)
        stuck = ~accepted
        step[stuck] = 0.0  # no decrease measurable: the problem is at its optimum as far as we can resolve
        s_new = step[:, None] * direction
        v = v + s_new
        M = M + step[lay.problem_of] * dM
        f_new, g_new = objective_and_gradient(v, M)
        g_new[done] = g[done]
        f = np.where(done, f, f_new)
        y_new = g_new - g
        sy = _rowdot(s_new, y_new)
        S.append(s_new)
        Y.append(y_new)
        rho.append(np.where(sy > 1e-300, 1.0 / np.where(sy > 1e-300, sy, 1.0), 0.0))
        if len(S) > history:
            del S[0], Y[0], rho[0]
        g = g_new
        n_iter[ids[active]] += 1
        done |= (np.abs(g).max(1) <= threshold) | stuck
    if len(ids):  # max_iter reached
        v_all[ids], g_all[ids] = v, g


def fit_logistic_shared(
    features: np.ndarray,
    labels: np.ndarray,
    subsets: Sequence[np.ndarray],
    *,
    C: float = 1.0,
    class_weight: str | None = "balanced",
    max_iter: int = 1000,
    tol: float = 1e-4,
    history: int = 5,
    dtype: type = np.float32,
) -> BatchedLogisticFit:
    """Fit one standardised L2 logistic regression per index array in ``subsets`` over ``features`` [N, d].

    ``labels`` [N] are 0/1 (1 = positive). Each subset must list distinct rows. Returns coefficients in each
    problem's standardised space plus its standardisation (as :func:`cltm.probes.fit_logistic_subsets`), so
    ``fit.decision_function(X)`` scores raw features. Agrees with one scikit-learn fit per subset up to the
    solvers' tolerances (tested against a tightly converged fit).

    ``dtype``: precision of the products with the data (sums, margins and the solver state are float64).
    float32 is ~2x faster and resolves gradients to ~1e-7 of their scale, ample for the default ``tol``;
    pass ``np.float64`` for tolerances below ~1e-7.
    """
    if C <= 0:
        raise ValueError(f"C must be positive, got {C}")
    if class_weight not in ("balanced", None):
        raise ValueError(f"class_weight must be 'balanced' or None, got {class_weight!r}")
    features = np.asarray(features)
    labels = np.asarray(labels)
    if features.ndim != 2 or len(features) != len(labels):
        raise ValueError(
            f"features must be [N, d] with N = len(labels); got {features.shape} and {labels.shape}"
        )
    if not len(subsets):
        raise ValueError("no problems given")
    subsets = [np.asarray(s, dtype=np.int64) for s in subsets]
    _check_subsets(labels, subsets)

    all_rows = np.concatenate(subsets)
    union = np.flatnonzero(np.bincount(all_rows, minlength=len(labels)))
    position = np.zeros(len(labels), dtype=np.int64)
    position[union] = np.arange(len(union))
    union_pos = np.split(position[all_rows], np.cumsum([len(s) for s in subsets])[:-1])
    t_union = labels[union].astype(np.float64)
    nb, d = len(subsets), features.shape[1]
    n_p = np.array([len(s) for s in subsets], dtype=np.float64)
    n_pos = np.array([t_union[p].sum() for p in union_pos])
    if class_weight == "balanced":
        w_pos, w_neg = n_p / (2 * n_pos), n_p / (2 * (n_p - n_pos))
    else:
        w_pos = w_neg = np.ones(nb)

    # Per atom: its centre, its within-atom sum of squares and its rows centred on the centre. Low-precision
    # products only ever see atom-centred rows: languages far apart in the raw space (offsets >> spread)
    # would otherwise drown float32's 7 digits. Problem statistics add up over atoms (two-level variance).
    grouped = _atoms_of(union_pos, len(union))
    membership = np.zeros((nb, len(grouped)))
    centres = np.empty((len(grouped), d))
    within = np.empty((len(grouped), d))
    counts = np.empty(len(grouped))
    low = []
    for k, (rows, members) in enumerate(grouped):
        Xa = np.asarray(features[union[rows]], dtype=np.float64)
        centres[k] = Xa.mean(0)
        Xa -= centres[k]
        within[k] = np.einsum("rd,rd->d", Xa, Xa)
        counts[k] = len(rows)
        membership[members, k] = 1.0
        low.append((Xa.astype(dtype), centres[k], members, t_union[rows]))
    reference = centres.mean(0)  # keeps the between-atom sums well conditioned
    shifted = centres - reference
    mean_all = membership @ (counts[:, None] * shifted) / n_p[:, None]
    between = membership @ (counts[:, None] * shifted**2) / n_p[:, None] - mean_all**2
    scale_all = np.sqrt(np.maximum(membership @ within / n_p[:, None] + between, 0.0))
    mean_all += reference
    # scikit-learn's StandardScaler leaves (near-)constant features unscaled
    tiny = scale_all < 10 * np.finfo(np.float64).eps * np.maximum(np.abs(mean_all), 1.0)
    scale_all[tiny] = 1.0

    v_all = np.zeros((nb, d + 1))  # [w, b] per problem, standardised space
    g_all = np.zeros((nb, d + 1))
    n_iter = np.zeros(nb, dtype=np.int64)
    threshold_all = tol * C * n_p
    state = (v_all, g_all, n_iter, mean_all, scale_all, threshold_all, w_pos, w_neg, C, max_iter, history)
    _lbfgs(np.arange(nb), low, *state)
    pending = np.flatnonzero(np.abs(g_all).max(1) > threshold_all)
    if len(pending) and np.dtype(dtype) != np.float64:
        # the few problems float32 cannot resolve to ``tol`` are finished in float64 from where they stopped
        exact = [
            (np.asarray(features[union[rows]], dtype=np.float64) - centre, centre, members, t)
            for (rows, _), (_, centre, members, t) in zip(grouped, low, strict=True)
        ]
        _lbfgs(pending, exact, *state)
    return BatchedLogisticFit(
        coef=v_all[:, :d],
        intercept=v_all[:, d].copy(),
        mean=mean_all,
        scale=scale_all,
        n_iter=n_iter,
        converged=np.abs(g_all).max(1) <= threshold_all,
    )
