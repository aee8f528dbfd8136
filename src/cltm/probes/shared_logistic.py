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
language, and the other N of its 2N); each atom is multiplied once per pass by the stacked coefficients of
every problem that contains it, and atoms of the same shape are stacked so that a pass is a few batched
GEMMs, not a Python loop over atoms; the gradient's [atom, problem] pieces add up per problem in one sparse
product. Per-problem means and scales come from per-atom sums, which add up. Everything is relative to one
reference point (the mean of the atoms' centres): an atom's rows are stored centred on their own mean, and
that mean's offset from the reference is one more row of the atom's GEMM operand, so a forward pass gives
each problem's offset term with the margins, and the gradient's mean correction (the problem's mean is the
row-weighted mean of its atoms' offsets) is one more column of the transposed pass.

The solver is L-BFGS run in lockstep over all problems (vectorised two-loop recursion in float32, history
3; Armijo backtracking on margins that are linear in the step, so a line search costs no extra product with
the data); finished problems leave the products, their margins carried over without a new product. With
~1,600 problems of 769 parameters (54 languages) the solver state is as large as the data, so passes over it
cost as much as the GEMMs: hence float32, in-place updates and the short history (8-9 iterations either
way). It is preconditioned where problems mix atoms whose means differ (a pair of
languages): the offset between the atoms' means, in the problem's standardised space, is a direction of far
higher curvature than the within-atom directions (the data's variance along it is mostly *between* atoms),
which costs plain L-BFGS ~6 extra iterations per pair. The initial inverse Hessian of the two-loop recursion
shrinks those directions by the ratio of between- to within-atom variance along them (a quarter of it: the
middle of the range that measured best), which brings pairs down to the iterations of single-language
problems. A preconditioner changes the path, not the optimum or the stopping rule.

Products and the solver state (iterate, gradient, direction, history) are float32 and the margins, losses
and line-search sums float64: the state's passes over memory, not the flops, are most of an iteration at 50+
languages. A problem float32 cannot resolve is finished in float64 (same code, float64 atoms and state).
A problem stops when its largest gradient entry is below ``tol * C * n_p``: scikit-learn's lbfgs criterion
on its rescaled objective, with the same default ``tol=1e-4``, so both stop at about the same distance from
the optimum (benchmarks/RESULTS.md measures the held-out F1 of both).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.special import expit, log_expit

from cltm.probes.batched_logistic import BatchedLogisticFit

__all__ = ["fit_logistic_shared"]

# between-atom directions are shrunk by this fraction of their between/within variance ratio (see above)
_SHRINK = 0.25
# at most this many between-atom directions per problem (a pair has one; a problem of k atoms has k - 1)
_MAX_DIRECTIONS = 4


class _Atom:
    """Rows that belong to exactly the same problems: centred on their own mean (``rows``, in the product
    dtype), that mean relative to the fit's reference point (``offset``, float64), the problems containing
    them (global ids) and their 0/1 targets."""

    __slots__ = ("rows", "offset", "members", "target")

    def __init__(self, rows: np.ndarray, offset: np.ndarray, members: np.ndarray, target: np.ndarray):
        self.rows, self.offset, self.members, self.target = rows, offset, members, target


def _bucket(q: int) -> int:
    """Column counts are padded up to a coarse grid (<= 25 % padding) so that atoms stack into few GEMMs."""
    if q <= 4:
        return q
    step = 1 << (q.bit_length() - 3)  # 4 steps per power of two
    return -(-q // step) * step


class _Group:
    """Atoms of one shape, stacked: rows [A, r, d], centres [A, d], local problem ids [A, q] (padding: the
    dummy problem ``nb``)."""

    def __init__(self, members: list[tuple[_Atom, np.ndarray]], q: int, nb: int):
        A = len(members)
        self.cols = np.full((A, q), nb)
        for k, (_, c) in enumerate(members):
            self.cols[k, : len(c)] = c
        # gathers of coefficients read problem 0 on padding (its pairs weigh 0; sums go to ``nb``)
        self.take = np.where(self.cols == nb, 0, self.cols)
        # each atom's rows and, as one more row, its offset: a product pass yields x . u and offset . u
        r, d = members[0][0].rows.shape
        self.X_and_offset = np.empty((A, r + 1, d), dtype=members[0][0].rows.dtype)
        for k, (a, _) in enumerate(members):
            self.X_and_offset[k, :r] = a.rows
            self.X_and_offset[k, r] = a.offset
        self.X = self.X_and_offset[:, :r]
        self.offset64 = np.stack([a.offset for a, _ in members])
        self.target = np.stack([a.target for a, _ in members])[:, :, None]  # [A, r, 1]


class _Blocks:
    """The (row, problem) pairs of the problems being solved, for batched products with the data.

    Atoms with the same row count and (padded) number of working problems are stacked into a ``_Group``.
    Per-pair values (margins, residuals) live in one flat float64 vector, group g at ``spans[g]`` in
    [A, r, q] order. Rebuilt when problems finish.
    """

    def __init__(self, atoms: list[_Atom], ids: np.ndarray, n_all: int, w_pos, w_neg, C: float, sizes):
        nb = len(ids)
        local_of = np.full(n_all, -1)
        local_of[ids] = np.arange(nb)
        shapes: dict[tuple[int, int], list[tuple[_Atom, np.ndarray]]] = {}
        which: dict[tuple[int, int], list[int]] = {}
        for k, atom in enumerate(atoms):
            cols = local_of[atom.members]
            cols = cols[cols >= 0]
            if len(cols):
                shape = (len(atom.rows), _bucket(len(cols)))
                shapes.setdefault(shape, []).append((atom, cols))
                which.setdefault(shape, []).append(k)
        self.ids, self.local_of = ids, np.r_[local_of, -1]
        # flat position of (atom k, its first row, local problem p); -1 where absent. ``carry`` reads it.
        self.first_pos = np.full((len(atoms), nb + 1), -1)
        self.row_stride = np.zeros(len(atoms), dtype=np.int64)
        self.nb, self.groups, self.spans, self.atom_ids = nb, [], [], []
        targets, weights, owners, offset = [], [], [], 0
        wp, wn = np.r_[C * w_pos[ids], 0.0], np.r_[C * w_neg[ids], 0.0]
        for (r, q), members in shapes.items():
            g = _Group(members, q, nb)
            # each atom's share of each of its problems' rows (0 on padding): see transposed_products
            g.share = np.where(g.cols < nb, r / np.r_[sizes[ids], 1.0][g.cols], 0.0)
            self.groups.append(g)
            A = len(members)
            atom_ids = np.array(which[(r, q)])
            self.atom_ids.append(atom_ids)
            self.first_pos[atom_ids[:, None], g.cols] = offset + np.arange(A)[:, None] * r * q + np.arange(q)
            self.row_stride[atom_ids] = q
            self.spans.append(slice(offset, offset + A * r * q))
            offset += A * r * q
            targets.append(np.broadcast_to(g.target, (A, r, q)).ravel())
            owners.append(np.broadcast_to(g.cols[:, None, :], (A, r, q)).ravel())
            weights.append(np.where(g.target > 0, wp[g.cols][:, None, :], wn[g.cols][:, None, :]).ravel())
        self.target = np.concatenate(targets)
        self.sign = 2 * self.target - 1
        self.weight = np.concatenate(weights)
        self.problem_of = np.concatenate(owners)  # local problem id of every pair (nb: padding)
        self.dtype = self.groups[0].X.dtype
        self.first_pos[:, nb] = -1
        # The transposed product makes one [d] piece per (atom, problem) in a GEMM; the pieces add up per
        # problem in one sparse product.
        from scipy.sparse import csr_matrix

        self.piece_spans, piece_cols, off = [], [], 0
        for g in self.groups:
            n = g.cols.size
            self.piece_spans.append(slice(off, off + n))
            piece_cols.append(g.cols.ravel())
            off += n
        piece_cols_all = np.concatenate(piece_cols)
        self.pieces = np.empty((off, self.groups[0].X.shape[2]), self.dtype)
        order = np.argsort(piece_cols_all, kind="stable")
        indptr = np.r_[0, np.cumsum(np.bincount(piece_cols_all, minlength=nb + 1))]
        self.scatter = csr_matrix((np.ones(off, self.dtype), order, indptr), shape=(nb + 1, off))

    def carry(self, values: np.ndarray, old: _Blocks) -> np.ndarray:
        """Per-pair ``values`` laid out by ``old`` (a superset of these problems), in this layout: margins
        survive a rebuild without a product with the data."""
        source = np.r_[values, 0.0]
        parts = []
        for g, atom_ids in zip(self.groups, self.atom_ids, strict=True):
            old_local = old.local_of[np.r_[self.ids, -1][g.cols]]  # [A, q]; -1 for padding
            base = old.first_pos[atom_ids[:, None], old_local]
            r = g.X.shape[1]
            index = base[:, None, :] + np.arange(r)[None, :, None] * old.row_stride[atom_ids][:, None, None]
            parts.append(source[np.where(base[:, None, :] >= 0, index, -1)].ravel())
        return np.concatenate(parts)

    def _values(self, flat: np.ndarray):
        for g, span in zip(self.groups, self.spans, strict=True):
            yield flat[span].reshape(g.X.shape[0], g.X.shape[1], g.cols.shape[1]), g

    def per_pair(self, x: np.ndarray) -> np.ndarray:
        """A value per working problem, spread over its pairs (0 on padding)."""
        return np.r_[x, 0.0][self.problem_of]

    def per_problem(self, flat: np.ndarray) -> np.ndarray:
        out = np.zeros(self.nb + 1)
        for values, g in self._values(flat):
            out += np.bincount(g.cols.ravel(), weights=values.sum(1).ravel(), minlength=self.nb + 1)
        return out[: self.nb]

    def products(self, u: np.ndarray, c: np.ndarray) -> np.ndarray:
        """x . u_p + c_p for every pair, float64 out, for ``u`` in the rows' dtype and ``c`` = the intercept
        in coordinates relative to the reference point: (x - atom centre) . u + offset . u + c."""
        out = np.empty(len(self.target))
        for g, span in zip(self.groups, self.spans, strict=True):
            both = np.matmul(g.X_and_offset, u[g.take].transpose(0, 2, 1))  # [A, r + 1, q]
            shift = both[:, -1, :] + c[g.take]
            view = out[span].reshape(g.X.shape[0], g.X.shape[1], g.cols.shape[1])
            np.add(both[:, :-1, :], shift[:, None, :], out=view)
        return out

    def centred_sumsq(self, u: np.ndarray) -> np.ndarray:
        """Per problem, the sum over its rows of ((x - atom centre) . u_p)^2."""
        u_low = u.astype(self.dtype)
        out = np.zeros(self.nb + 1)
        for g in self.groups:
            sq = np.square(np.matmul(g.X, u_low[g.take].transpose(0, 2, 1)), dtype=np.float64)
            out += np.bincount(g.cols.ravel(), weights=sq.sum(1).ravel(), minlength=self.nb + 1)
        return out[: self.nb]

    def transposed_products(self, residual: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per problem, the sums over its rows of residual * (x - the problem's mean) [nb, d] (rows' dtype)
        and of the residual [nb] (float64).

        With x = reference + atom offset + (x - atom centre) and the problem's mean the row-weighted mean
        of its atoms' offsets, the sum is, over the problem's atoms a, the GEMM piece sum r (x - centre_a)
        plus (R_a - n_a / n_p R_p) offset_a (R: residual sums): one more column of each atom's GEMM,
        against its offset row."""
        sums = [(values, g, values.sum(1)) for values, g in self._values(residual)]  # R per (atom, problem)
        total = np.zeros(self.nb + 1)
        for _, g, R in sums:
            total += np.bincount(g.cols.ravel(), weights=R.ravel(), minlength=self.nb + 1)
        for (values, g, R), span in zip(sums, self.piece_spans, strict=True):
            A, r, q = values.shape
            weights = np.empty((A, q, r + 1), self.dtype)
            weights[:, :, :r] = values.transpose(0, 2, 1)
            weights[:, :, r] = R - g.share * total[g.cols]
            np.matmul(weights, g.X_and_offset, out=self.pieces[span].reshape(A, q, -1))
        return (self.scatter @ self.pieces)[: self.nb], total[: self.nb]

    def loss_and_residual(self, margins: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per problem, sum of weight * log(1 + exp(-y m)), and per pair the residual
        weight * (sigmoid(m) - t), from one sigmoid per pair: with y = +-1 and p = sigmoid(y m), the loss
        term is -weight * log p and the residual weight * y * (p - 1)."""
        z = self.sign * margins
        p = expit(z)
        with np.errstate(divide="ignore"):
            log_p = np.log(p)
        underflow = p < 1e-300  # y m below ~ -690: log sigmoid(y m) = y m to double precision
        if underflow.any():
            log_p[underflow] = log_expit(z[underflow])
        p -= 1.0
        p *= self.sign
        p *= self.weight
        return -self.per_problem(self.weight * log_p), p


def _atoms_of(union_pos: list[np.ndarray], n_union: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Group union positions by the exact set of problems containing them -> [(positions, problems)].

    A row's set of problems is identified by two sums of fixed random 64-bit keys, one per problem (two
    different sets share both sums with probability ~2^-128): no [rows x problems] matrix, no Python loop.
    """
    owner = np.repeat(np.arange(len(union_pos)), [len(p) for p in union_pos])
    pos = np.concatenate(union_pos)
    keys = np.random.default_rng(0).integers(0, 2**63, size=(2, len(union_pos)), dtype=np.uint64)
    signature = np.zeros((n_union, 2), dtype=np.uint64)
    for k in range(2):
        np.add.at(signature[:, k], pos, keys[k, owner])  # wraps modulo 2^64: a sum of the key set
    _, first, which = np.unique(signature, axis=0, return_index=True, return_inverse=True)
    which = which.ravel()
    rows_of = np.split(np.argsort(which, kind="stable"), np.cumsum(np.bincount(which))[:-1])
    at_first = pos == first[which[pos]]  # the problems of each atom, read off its first row
    members = np.split(
        owner[at_first][np.argsort(which[pos[at_first]], kind="stable")],
        np.cumsum(np.bincount(which[pos[at_first]], minlength=len(first)))[:-1],
    )
    return list(zip(rows_of, members, strict=True))


def _rowdot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.vecdot(a, b)


def _check_subsets(labels: np.ndarray, subsets: list[np.ndarray]) -> None:
    sizes = np.array([len(s) for s in subsets])
    owner = np.repeat(np.arange(len(subsets)), sizes)
    rows = np.concatenate(subsets)
    if len(rows) and (rows.min() < 0 or rows.max() >= len(labels)):
        raise ValueError(f"row indices must lie in [0, {len(labels)}); got {rows.min()}..{rows.max()}")
    # each subset sorted on its own (many short sorts beat one long one), then neighbours compared
    in_order = np.concatenate([np.sort(s) for s in subsets])
    repeated = (in_order[1:] == in_order[:-1]) & (owner[1:] == owner[:-1])
    if repeated.any():
        k = int(owner[1:][repeated][0])
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


class _Preconditioner:
    """P^-1 = I - sum_k shrink_k v_k v_k^T on the w part (unit, orthogonal v_k per problem; b untouched)."""

    def __init__(self, directions: np.ndarray, shrink: np.ndarray):
        # [nb, R, d], [nb, R]; float32 like the two-loop recursion that applies them
        self.directions, self.shrink = directions.astype(np.float32), shrink.astype(np.float32)

    def subset(self, keep: np.ndarray) -> _Preconditioner:
        return _Preconditioner(self.directions[keep], self.shrink[keep])

    def quadratic(self, x: np.ndarray) -> np.ndarray:
        """x . P^-1 x per problem."""
        out = _rowdot(x, x)
        if self.shrink.shape[1]:
            proj = np.matmul(self.directions, x[:, : self.directions.shape[2], None])[..., 0]
            out -= np.sum(self.shrink * proj**2, axis=1)
        return out

    def apply(self, q: np.ndarray) -> np.ndarray:
        """P^-1 q, in place."""
        if not self.shrink.shape[1]:
            return q
        d = self.directions.shape[2]
        coef = self.shrink * np.matmul(self.directions, q[:, :d, None])[..., 0]
        q[:, :d] -= np.matmul(coef[:, None, :], self.directions)[:, 0, :]
        return q


def _between_directions(
    membership: np.ndarray, counts: np.ndarray, centres: np.ndarray, mean: np.ndarray, scale: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per problem, the principal directions of its atoms' means in its standardised space and the
    between-atom sum of squares along each -> ([nb, R, d] unit vectors, [nb, R]); zero for one atom."""
    nb, d = mean.shape
    k_of = membership.sum(1).astype(int)
    R = int(min(max(k_of.max() - 1, 0), _MAX_DIRECTIONS))
    directions = np.zeros((nb, R, d))
    between = np.zeros((nb, R))
    for k in np.unique(k_of[k_of > 1]):  # problems with the same number of atoms, batched
        probs = np.flatnonzero(k_of == k)
        atoms = np.nonzero(membership[probs])[1].reshape(len(probs), k)  # row-major: atoms per problem
        if k == 2:  # a pair of atoms: one direction, their means' difference; SS n1 n2 / (n1 + n2) |diff|^2
            n1, n2 = counts[atoms[:, 0]], counts[atoms[:, 1]]
            diff = (centres[atoms[:, 0]] - centres[atoms[:, 1]]) / scale[probs]
            sq = _rowdot(diff, diff)
            good = sq > 0
            unit = diff / np.sqrt(np.where(good, sq, 1.0))[:, None]
            directions[probs, 0] = np.where(good[:, None], unit, 0.0)
            between[probs, 0] = np.where(good, n1 * n2 / (n1 + n2) * sq, 0.0)
            continue
        mu = (centres[atoms] - mean[probs, None, :]) / scale[probs, None, :]  # [p, k, d]
        U = np.sqrt(counts[atoms])[:, :, None] * mu
        lam, vec = np.linalg.eigh(np.einsum("pkd,pld->pkl", U, U))  # ascending; rank <= k - 1
        lam, vec = lam[:, ::-1][:, :R], vec[:, :, ::-1][:, :, :R]
        good = lam > 1e-12 * np.maximum(lam[:, :1], 1e-300)
        V = np.einsum("pkr,pkd->prd", vec, U) / np.sqrt(np.where(good, lam, 1.0))[:, :, None]
        directions[probs, : V.shape[1]] = np.where(good[:, :, None], V, 0.0)
        between[probs, : V.shape[1]] = np.where(good, lam, 0.0)
    return directions, between


def _rowdot64(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise dot products as float64, accumulated in the inputs' dtype (float32: ~1e-7 relative, far
    below the differences the line search compares; accumulating float32 rows in float64 costs a cast of
    every element)."""
    return np.vecdot(a, b).astype(np.float64, copy=False)


def _lbfgs(ids, atoms, v_all, g_all, n_iter, problem, max_iter, history, blocks=None) -> None:
    """L-BFGS in lockstep over problems ``ids``, from their rows of ``v_all``; writes ``v_all``, ``g_all``
    and ``n_iter`` in place. ``blocks``: the layout of exactly ``ids`` if the caller has it.

    The products with the data and the solver state (iterate, gradient, direction, history) are in the
    dtype of the atoms' rows; margins, losses and the reductions the line search compares are float64.
    With ~1,600 problems of 769 parameters the state is as large as the data and every pass over it costs
    memory bandwidth, so float32 state halves most of an iteration's cost. ``problem``'s means are relative
    to the fit's reference point (as the atoms' offsets)."""
    mean_all, scale_all, threshold_all, w_pos, w_neg, C, pre_all, sizes = problem
    nb_all, d = len(v_all), v_all.shape[1] - 1
    sd = atoms[0].rows.dtype

    def working(ids: np.ndarray) -> _Blocks:
        return _Blocks(atoms, ids, nb_all, w_pos, w_neg, C, sizes)

    def margins_of(vw: np.ndarray) -> np.ndarray:
        """Margins of every pair for standardised parameters [w, b] per working problem."""
        u = vw[:, :d] * inv_scale_low
        return blocks.products(u, vw[:, d] - _rowdot64(u, mean_low))

    def objective_and_gradient(vw: np.ndarray, margins: np.ndarray, known=None):
        """``known``: (loss, residual) at ``margins`` if the line search has them."""
        loss, residual = blocks.loss_and_residual(margins) if known is None else known
        sum_w, sum_b = blocks.transposed_products(residual)  # sum r (x - mean), sum r
        g = np.empty(vw.shape, sd)
        np.multiply(sum_w, inv_scale_low, out=g[:, :d])
        g[:, :d] += vw[:, :d]
        g[:, d] = sum_b
        return loss + 0.5 * _rowdot64(vw[:, :d], vw[:, :d]), g

    def set_working(new_ids: np.ndarray):
        nonlocal mean_low, inv_scale_low
        mean_low, inv_scale_low = mean_all[new_ids].astype(sd), (1.0 / scale_all[new_ids]).astype(sd)

    # the working set: problems still being solved, with their solver state (L-BFGS history included)
    v = v_all[ids].astype(sd)
    pre = pre_all.subset(ids)
    S: list[np.ndarray] = []
    Y: list[np.ndarray] = []
    rho: list[np.ndarray] = []
    if blocks is None:
        blocks = working(ids)
    mean_low = inv_scale_low = None
    set_working(ids)
    threshold = threshold_all[ids]
    M = margins_of(v) if v.any() else np.zeros(len(blocks.target))
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
                pre = pre.subset(keep)
                old = blocks
                blocks = working(ids)
                set_working(ids)
                M = blocks.carry(M, old)
                done = np.zeros(len(ids), dtype=bool)
        active = ~done
        # two-loop recursion, vectorised over problems, with the preconditioned initial matrix gamma P^-1
        # (in float32 whatever the state: it only shapes the direction)
        q = g.astype(np.float32)
        buf = np.empty_like(q)
        alphas = []
        for s_k, y_k, r_k in zip(reversed(S), reversed(Y), reversed(rho), strict=True):
            a_k = r_k * _rowdot(s_k, q)
            q -= np.multiply(y_k, a_k[:, None], out=buf)
            alphas.append(a_k)
        if S:
            sy, yPy = _rowdot(S[-1], Y[-1]), pre.quadratic(Y[-1])
            gamma = np.where(yPy > 0, sy / np.where(yPy > 0, yPy, 1.0), 1.0).astype(np.float32)
        else:
            gamma = (1.0 / np.sqrt(np.maximum(pre.quadratic(g), 1e-300))).astype(np.float32)
        q = pre.apply(q)
        q *= gamma[:, None]
        for s_k, y_k, r_k, a_k in zip(S, Y, rho, reversed(alphas), strict=True):
            q += np.multiply(s_k, (a_k - r_k * _rowdot(y_k, q))[:, None], out=buf)
        direction = np.negative(q, out=q).astype(sd, copy=False)
        slope = _rowdot64(g, direction)
        stale = active & (slope >= 0)  # not a descent direction: restart this problem from the gradient
        if stale.any():
            direction[stale] = -g[stale] / np.linalg.norm(g[stale], axis=1)[:, None]
            slope = _rowdot64(g, direction)
        direction[~active] = 0.0
        dM = margins_of(direction)
        ww = _rowdot64(v[:, :d], v[:, :d])
        wd = _rowdot64(v[:, :d], direction[:, :d])
        dd = _rowdot64(direction[:, :d], direction[:, :d])
        step = active.astype(np.float64)
        accepted = ~active
        for _ in range(40):  # backtracking; margins are linear in the step, no data product needed
            pair_step = blocks.per_pair(step)
            moved = M + pair_step * dM
            loss, residual = blocks.loss_and_residual(moved)
            trial = loss + 0.5 * (ww + 2 * step * wd + step**2 * dd)
            ok = trial <= f + 1e-4 * step * slope  # Armijo
            if not (ok | accepted).all():
                # near the optimum the decrease falls below float64 resolution of f: accept a step whose
                # directional derivative shows it did not overshoot (Hager-Zhang's approximate Wolfe)
                d_step = blocks.per_problem(residual * dM) + wd + step * dd
                ok |= (trial <= f + 1e-12 * np.abs(f)) & (d_step <= -0.8 * slope)
            accepted |= ok
            if accepted.all():
                break
            step = np.where(accepted, step, step / 2)
        stuck = ~accepted
        step[stuck] = 0.0  # no decrease measurable: the problem is at its optimum as far as we can resolve
        s_new = step.astype(sd)[:, None] * direction
        v += s_new
        if stuck.any():
            M += blocks.per_pair(step) * dM
            f_new, g_new = objective_and_gradient(v, M)
        else:  # every problem kept its accepted step, so the last trial is the new point: reuse its values
            M = moved
            f_new, g_new = objective_and_gradient(v, M, (loss, residual))
        g_new[done] = g[done]
        f = np.where(done, f, f_new)
        y_new = np.subtract(g_new, g, out=g)  # g is replaced by g_new below
        sy = _rowdot64(s_new, y_new)
        S.append(s_new.astype(np.float32, copy=False))
        Y.append(y_new.astype(np.float32, copy=False))
        rho.append(np.where(sy > 1e-300, 1.0 / np.where(sy > 1e-300, sy, 1.0), 0.0).astype(np.float32))
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
    history: int = 3,
    dtype: type = np.float32,
    precondition: bool = True,
) -> BatchedLogisticFit:
    """Fit one standardised L2 logistic regression per index array in ``subsets`` over ``features`` [N, d].

    ``labels`` [N] are 0/1 (1 = positive). Each subset must list distinct rows. Returns coefficients in each
    problem's standardised space plus its standardisation (as :func:`cltm.probes.fit_logistic_subsets`), so
    ``fit.decision_function(X)`` scores raw features. Agrees with one scikit-learn fit per subset up to the
    solvers' tolerances (tested against a tightly converged fit).

    ``dtype``: precision of the products with the data (sums, margins and the solver state are float64).
    float32 is ~2x faster and resolves gradients to ~1e-7 of their scale, ample for the default ``tol``;
    pass ``np.float64`` for tolerances below ~1e-7. ``precondition``: shrink the directions between atom
    means (module docstring); False gives plain L-BFGS (same optimum, more iterations where atoms differ).
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
    centred: list[np.ndarray] = []
    for k, (rows, members) in enumerate(grouped):
        Xa = np.asarray(features[union[rows]], dtype=np.float64)
        centres[k] = Xa.mean(0)
        Xa -= centres[k]
        within[k] = np.einsum("rd,rd->d", Xa, Xa)
        counts[k] = len(rows)
        membership[members, k] = 1.0
        centred.append(Xa.astype(dtype))
    # the solver works relative to this point (the mean of the atoms' centres): offsets and intercepts stay
    # of the size of the spread between languages, not of the raw features' distance from the origin
    reference = centres.mean(0)
    shifted = centres - reference
    low = [
        _Atom(X_c, shifted[k], members, t_union[rows])
        for k, (X_c, (rows, members)) in enumerate(zip(centred, grouped, strict=True))
    ]
    from scipy.sparse import csr_matrix

    sums = csr_matrix(membership) @ np.concatenate(
        [counts[:, None] * shifted, counts[:, None] * shifted**2, within], 1
    )
    mean_all = sums[:, :d] / n_p[:, None]
    between = sums[:, d : 2 * d] / n_p[:, None] - mean_all**2
    scale_all = np.sqrt(np.maximum(sums[:, 2 * d :] / n_p[:, None] + between, 0.0))
    mean_all += reference
    # scikit-learn's StandardScaler leaves (near-)constant features unscaled
    tiny = scale_all < 10 * np.finfo(np.float64).eps * np.maximum(np.abs(mean_all), 1.0)
    scale_all[tiny] = 1.0

    directions, between_ss = _between_directions(membership, counts, centres, mean_all, scale_all)
    shrink = np.zeros_like(between_ss)
    blocks = _Blocks(low, np.arange(nb), nb, w_pos, w_neg, C, n_p)
    if precondition and directions.shape[1]:
        # within-atom sum of squares along each direction: one product pass per direction
        for k in range(directions.shape[1]):
            within_ss = blocks.centred_sumsq(directions[:, k] / scale_all)
            ratio = _SHRINK * between_ss[:, k] / np.maximum(within_ss, 1e-300)
            shrink[:, k] = np.where(between_ss[:, k] > 0, ratio / (1.0 + ratio), 0.0)
    pre = _Preconditioner(directions, shrink)

    v_all = np.zeros((nb, d + 1))  # [w, b] per problem, standardised space
    g_all = np.zeros((nb, d + 1))
    n_iter = np.zeros(nb, dtype=np.int64)
    threshold_all = tol * C * n_p
    problem = (mean_all - reference, scale_all, threshold_all, w_pos, w_neg, C, pre, n_p)
    _lbfgs(np.arange(nb), low, v_all, g_all, n_iter, problem, max_iter, history, blocks)
    pending = np.flatnonzero(np.abs(g_all).max(1) > threshold_all)
    if len(pending) and np.dtype(dtype) != np.float64:
        # the few problems float32 cannot resolve to ``tol`` are finished in float64 from where they stopped
        exact = [
            _Atom(np.asarray(features[union[rows]], np.float64) - centres[k], a.offset, a.members, a.target)
            for k, ((rows, _), a) in enumerate(zip(grouped, low, strict=True))
        ]
        _lbfgs(pending, exact, v_all, g_all, n_iter, problem, max_iter, history)
    return BatchedLogisticFit(
        coef=v_all[:, :d],
        intercept=v_all[:, d].copy(),
        mean=mean_all,
        scale=scale_all,
        n_iter=n_iter,
        converged=np.abs(g_all).max(1) <= threshold_all,
    )
