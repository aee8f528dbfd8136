"""Classification probes with the scikit-learn estimator API (fit/predict/decision_function, clone-able).

- :class:`LogisticProbe`: standardise, then L2 logistic regression with balanced class weights (the default
probe;
  :func:`cltm.probes.fit_logistic_batched` solves many binary ones at once with the same objective).
- :class:`LDAProbe`: shrinkage linear discriminant analysis (Ledoit-Wolf by default).
- :class:`MLPProbe`: a small torch MLP, dim -> dim/6 -> dim/48 -> classes (768 -> 128 -> 16 -> C, as in
layer-wise
  emotion studies), seeded, early stopping on a held-out part of the training data.
- :class:`WeightedLayerSumProbe`: input [n, layers, dim]; softmax weights over layers learned jointly with a
linear
  (or MLP) head; ``layer_weights_`` says which layers the probe relied on. Pooling is linear, so weighting
  pooled means equals pooling the weighted frame features.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.multiclass import unique_labels

__all__ = ["LDAProbe", "LogisticProbe", "MLPProbe", "WeightedLayerSumProbe"]


def _check_Xy(X, y, ndim: int = 2) -> tuple[np.ndarray, np.ndarray]:
    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y)
    if X.ndim != ndim:
        shape = "[n, dim]" if ndim == 2 else "[n, layers, dim]"
        raise ValueError(f"X must be {shape}, got shape {X.shape}")
    if len(X) != len(y):
        raise ValueError(f"{len(X)} rows in X but {len(y)} labels")
    if not np.isfinite(X).all():
        raise ValueError("X contains NaN or inf")
    if len(np.unique(y)) < 2:
        raise ValueError(f"need at least 2 classes to train a probe, got {np.unique(y).tolist()}")
    return X, y


class _SklearnWrapped(ClassifierMixin, BaseEstimator):
    def _make(self):
        raise NotImplementedError

    def fit(self, X, y) -> _SklearnWrapped:
        X, y = _check_Xy(X, y)
        self.model_ = self._make().fit(X, y)
        self.classes_ = self.model_.classes_
        return self

    def decision_function(self, X) -> np.ndarray:
        return self.model_.decision_function(np.asarray(X, dtype=np.float64))

    def predict_proba(self, X) -> np.ndarray:
        return self.model_.predict_proba(np.asarray(X, dtype=np.float64))

    def predict(self, X) -> np.ndarray:
        return self.model_.predict(np.asarray(X, dtype=np.float64))


class LogisticProbe(_SklearnWrapped):
    """StandardScaler + LogisticRegression(C, class_weight="balanced", lbfgs); multinomial for > 2 classes."""

    def __init__(self, C: float = 1.0, max_iter: int = 1000, tol: float = 1e-4, class_weight="balanced"):
        self.C = C
        self.max_iter = max_iter
        self.tol = tol
        self.class_weight = class_weight

    def _make(self):
        return make_pipeline(
            StandardScaler(),
            LogisticRegression(
                C=self.C, max_iter=self.max_iter, tol=self.tol, class_weight=self.class_weight
            ),
        )

    @property
    def coef_(self) -> np.ndarray:
        """Coefficients on the standardised features."""
        return self.model_[-1].coef_

    @property
    def intercept_(self) -> np.ndarray:
        return self.model_[-1].intercept_


class LDAProbe(_SklearnWrapped):
    """Linear discriminant analysis with covariance shrinkage ("auto" = Ledoit-Wolf, or a float in [0, 1])."""

    def __init__(self, shrinkage="auto"):
        self.shrinkage = shrinkage

    def _make(self):
        return LinearDiscriminantAnalysis(solver="lsqr", shrinkage=self.shrinkage)


# ---------------------------------------------------------------------------------------------------- torch
# probes


def _default_hidden(dim: int) -> tuple[int, int]:
    # 768 -> (128, 16): the shape used in layer-wise SER probing, scaled with the input size
    return max(8, round(dim / 6)), max(4, round(dim / 48))


def _mlp(dim: int, hidden: tuple[int, ...], n_classes: int, dropout: float) -> torch.nn.Module:
    layers: list[torch.nn.Module] = []
    last = dim
    for h in hidden:
        layers += [torch.nn.Linear(last, h), torch.nn.ReLU(), torch.nn.Dropout(dropout)]
        last = h
    layers.append(torch.nn.Linear(last, n_classes))
    return torch.nn.Sequential(*layers)


def _train_torch(
    model: torch.nn.Module,
    X: np.ndarray,
    codes: np.ndarray,
    n_classes: int,
    *,
    lr: float,
    weight_decay: float,
    max_epochs: int,
    batch_size: int,
    validation_fraction: float,
    patience: int,
    seed: int,
    early_stopping: bool = True,
    X_val: np.ndarray | None = None,
    codes_val: np.ndarray | None = None,
) -> tuple[int, float]:
    """Adam on class-balanced cross-entropy; early stopping (best restored) on the given validation rows
    (a dev split), else on a stratified held-out part of the training rows; never on test rows.
    ``early_stopping=False`` trains ``max_epochs`` epochs and keeps the last weights."""
    rows = np.arange(len(X))
    counts = np.bincount(codes, minlength=n_classes)
    n_held_out = int(len(X) * validation_fraction)
    can_hold_out = validation_fraction > 0 and n_held_out >= n_classes and counts.min() >= 2
    if X_val is not None and len(X_val):
        # the dev rows follow the training rows in one tensor; validation indexes them
        X = np.concatenate([X, X_val])
        codes = np.concatenate([codes, codes_val])
        train_rows, val_rows = rows, np.arange(len(rows), len(X))
    elif can_hold_out and early_stopping:
        train_rows, val_rows = train_test_split(
            rows, test_size=validation_fraction, random_state=seed, stratify=codes
        )
    else:
        train_rows, val_rows = rows, rows
    Xt = torch.from_numpy(X).float()
    yt = torch.from_numpy(codes).long()
    weight = torch.from_numpy(len(codes) / (n_classes * np.maximum(counts, 1))).float()
    loss_fn = torch.nn.CrossEntropyLoss(weight=weight)
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    gen = torch.Generator().manual_seed(seed)
    best = (np.inf, 0, [p.detach().clone() for p in model.parameters()])
    train_idx = torch.from_numpy(train_rows)
    val_idx = torch.from_numpy(val_rows)
    epoch = 0
    for epoch in range(1, max_epochs + 1):
        model.train()
        perm = train_idx[torch.randperm(len(train_idx), generator=gen)]
        for start in range(0, len(perm), batch_size):
            b = perm[start : start + batch_size]
            opt.zero_grad()
            loss_fn(model(Xt[b]), yt[b]).backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            val_loss = float(loss_fn(model(Xt[val_idx]), yt[val_idx]))
        if not early_stopping:
            best = (val_loss, epoch, best[2])
            continue
        if val_loss < best[0] - 1e-6:
            best = (val_loss, epoch, [p.detach().clone() for p in model.parameters()])
        elif epoch - best[1] >= patience:
            break
    if not early_stopping:
        return epoch, best[0]
    with torch.no_grad():
        for p, saved in zip(model.parameters(), best[2], strict=True):
            p.copy_(saved)
    return epoch, best[0]


class _TorchProbe(ClassifierMixin, BaseEstimator):
    _input_ndim = 2

    def _build(self, X: np.ndarray, n_classes: int) -> torch.nn.Module:
        raise NotImplementedError

    def fit(self, X, y, X_val=None, y_val=None) -> _TorchProbe:
        """``X_val`` / ``y_val``: early-stopping rows (a dev split); default: a held-out part of X."""
        X, y = _check_Xy(X, y, self._input_ndim)
        self.classes_ = unique_labels(y)
        codes = np.searchsorted(self.classes_, y)
        # standardise per feature (per layer and feature for [n, layers, dim]) with training statistics
        self.mean_ = X.mean(0)
        self.scale_ = np.where(X.std(0) > 0, X.std(0), 1.0)
        Xs = (X - self.mean_) / self.scale_
        Xv = cv = None
        if X_val is not None and len(X_val):
            y_val = np.asarray(y_val)
            keep = np.isin(y_val, self.classes_)  # dev classes the training rows lack cannot be scored
            Xv = (np.asarray(X_val, dtype=np.float64)[keep] - self.mean_) / self.scale_
            cv = np.searchsorted(self.classes_, y_val[keep])
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            self.model_ = self._build(Xs, len(self.classes_))
            self.n_epochs_, self.best_validation_loss_ = _train_torch(
                self.model_,
                Xs,
                codes,
                len(self.classes_),
                lr=self.lr,
                weight_decay=self.weight_decay,
                max_epochs=self.max_epochs,
                batch_size=self.batch_size,
                validation_fraction=self.validation_fraction,
                patience=self.patience,
                seed=self.seed,
                early_stopping=self.early_stopping,
                X_val=Xv,
                codes_val=cv,
            )
        self.model_.eval()
        return self

    def _logits(self, X) -> np.ndarray:
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != self._input_ndim:
            raise ValueError(f"X must have {self._input_ndim} dimensions, got shape {X.shape}")
        with torch.no_grad():
            return self.model_(torch.from_numpy((X - self.mean_) / self.scale_).float()).double().numpy()

    def predict_proba(self, X) -> np.ndarray:
        logits = self._logits(X)
        logits -= logits.max(1, keepdims=True)
        p = np.exp(logits)
        return p / p.sum(1, keepdims=True)

    def decision_function(self, X) -> np.ndarray:
        logits = self._logits(X)
        return logits[:, 1] - logits[:, 0] if logits.shape[1] == 2 else logits

    def predict(self, X) -> np.ndarray:
        return self.classes_[np.argmax(self._logits(X), axis=1)]


class MLPProbe(_TorchProbe):
    """Small MLP probe: ``hidden`` sizes (default dim/6, dim/48: 128, 16 for 768-dim input), ReLU, dropout.

    Early stopping (``early_stopping``, ``patience`` epochs without a better validation loss) uses the dev
    rows given to ``fit(X, y, X_val=, y_val=)`` (the engine passes the training languages' dev split), else a
    stratified ``validation_fraction`` of the training rows; never test rows.
    """

    def __init__(
        self,
        hidden: tuple[int, ...] | None = None,
        dropout: float = 0.1,
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        max_epochs: int = 200,
        batch_size: int = 64,
        validation_fraction: float = 0.15,
        patience: int = 15,
        seed: int = 0,
        early_stopping: bool = True,
    ):
        self.hidden = hidden
        self.dropout = dropout
        self.lr = lr
        self.weight_decay = weight_decay
        self.max_epochs = max_epochs
        self.batch_size = batch_size
        self.validation_fraction = validation_fraction
        self.patience = patience
        self.seed = seed
        self.early_stopping = early_stopping

    def _build(self, X: np.ndarray, n_classes: int) -> torch.nn.Module:
        hidden = tuple(self.hidden) if self.hidden is not None else _default_hidden(X.shape[1])
        return _mlp(X.shape[1], hidden, n_classes, self.dropout)


class _LayerSum(torch.nn.Module):
    def __init__(self, n_layers: int, head: torch.nn.Module):
        super().__init__()
        self.logits = torch.nn.Parameter(torch.zeros(n_layers))
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x [n, layers, dim]
        return self.head(torch.einsum("l,nld->nd", torch.softmax(self.logits, 0), x))


class WeightedLayerSumProbe(_TorchProbe):
    """Softmax-weighted sum over layers + a head (linear when ``hidden=()``, the default), trained jointly.

    X is [n, layers, dim] (e.g. every layer's pooled mean); each layer is standardised with training
    statistics first, so the weights compare layers on an equal footing. ``layer_weights_`` [layers] sums to
    one.
    """

    _input_ndim = 3

    def __init__(
        self,
        hidden: tuple[int, ...] = (),
        dropout: float = 0.0,
        lr: float = 5e-3,
        weight_decay: float = 1e-4,
        max_epochs: int = 300,
        batch_size: int = 128,
        validation_fraction: float = 0.15,
        patience: int = 20,
        seed: int = 0,
        early_stopping: bool = True,
    ):
        self.hidden = hidden
        self.dropout = dropout
        self.lr = lr
        self.weight_decay = weight_decay
        self.max_epochs = max_epochs
        self.batch_size = batch_size
        self.validation_fraction = validation_fraction
        self.patience = patience
        self.seed = seed
        self.early_stopping = early_stopping

    def _build(self, X: np.ndarray, n_classes: int) -> torch.nn.Module:
        return _LayerSum(X.shape[1], _mlp(X.shape[2], tuple(self.hidden), n_classes, self.dropout))

    @property
    def layer_weights_(self) -> np.ndarray:
        with torch.no_grad():
            return torch.softmax(self.model_.logits, 0).double().numpy()
