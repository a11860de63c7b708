"""The fit loop, checks and prediction methods shared by both mixtures.

The loop is scikit-learn's (``sklearn/mixture/_base.py``): ``n_init`` initialisations, each
iterating an E-step and an M-step until the bound changes by less than ``tol``, the best
kept; ``warm_start`` continues from the last fit; ``max_iter=0`` returns the
initialisation. A subclass supplies the steps and the bound:

- ``_check_parameters(X)``: priors and user-given initial values, in data units;
- ``_initialize(X, resp)``: the parameters from initial responsibilities;
- ``_estimate_log_prob(X)``, ``_estimate_log_weights()``: the E-step's terms;
- ``_m_step(X, resp)``: the parameters from responsibilities (probabilities, not logs);
- ``_compute_lower_bound(log_prob_norm, neg_entropy)``: the bound after an M-step;
- ``_get_parameters()`` / ``_set_parameters(params)``: the fitted state as a tuple.
"""

import numbers
import warnings
from time import time

import numpy as np
from sklearn.base import BaseEstimator, DensityMixin
from sklearn.cluster import KMeans, kmeans_plusplus
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils import check_array, check_random_state
from sklearn.utils.validation import check_is_fitted

from ._covariance import COVARIANCE_TYPES

INIT_PARAMS = ("kmeans", "k-means++", "random", "random_from_data")

# --------------------------------------------------------------------------------------
# parameter checks, worded as scikit-learn's parameter validation
# --------------------------------------------------------------------------------------


def check_int(owner, name, value, low):
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < low:
        raise ValueError(
            f"The '{name}' parameter of {owner} must be an int in the range "
            f"[{low}, inf). Got {value!r} instead."
        )


def check_real(owner, name, value, low, closed_left=True, allow_none=False):
    ok = value is None and allow_none
    if not ok and isinstance(value, numbers.Real) and not isinstance(value, bool):
        ok = bool(np.isfinite(value)) and (value >= low if closed_left else value > low)
    if not ok:
        bracket = "[" if closed_left else "("
        extra = " or None" if allow_none else ""
        raise ValueError(
            f"The '{name}' parameter of {owner} must be a float in the range "
            f"{bracket}{float(low)}, inf){extra}. Got {value!r} instead."
        )


def check_str(owner, name, value, options):
    if not isinstance(value, str) or value not in options:
        listed = ", ".join(repr(o) for o in sorted(options))
        raise ValueError(
            f"The '{name}' parameter of {owner} must be a str among {{{listed}}}. "
            f"Got {value!r} instead."
        )


def check_bool(owner, name, value):
    if not isinstance(value, bool | np.bool_):
        raise ValueError(
            f"The '{name}' parameter of {owner} must be an instance of 'bool'. "
            f"Got {value!r} instead."
        )


def check_verbose(owner, value):
    if isinstance(value, bool | np.bool_):
        return
    if not isinstance(value, numbers.Integral) or value < 0:
        raise ValueError(
            f"The 'verbose' parameter of {owner} must be an int in the range [0, inf) or "
            f"an instance of 'bool'. Got {value!r} instead."
        )


def normalize_log(weighted_log_prob, entropy=False):
    """In-place log-sum-exp over components.

    :returns: ``(log_prob_norm, resp, sum r log r)`` with shapes (N,), (N, K) and a float
        (None unless ``entropy``); ``weighted_log_prob`` is overwritten.
    """
    wlp = weighted_log_prob
    shift = wlp.max(axis=1)
    wlp -= shift[:, None]
    resp = np.exp(wlp)
    total = resp.sum(axis=1)
    log_total = np.log(total)
    resp /= total[:, None]
    neg_entropy = None
    if entropy:
        # sum r log r = sum_n [sum_k r_nk (wlp_nk - shift_n)] - log total_n: no second log
        neg_entropy = float(np.einsum("nk,nk->", resp, wlp) - log_total.sum())
    return log_total + shift, resp, neg_entropy


class BaseMixture(DensityMixin, BaseEstimator):
    """Shared fit loop, data checks, prediction and sampling.

    The fit centres the data once: the steps run on ``X - shift`` with ``shift`` the data
    mean (``_shift``), the fitted attributes stay in the data's units, and every later
    computation subtracts the same ``shift`` from its points and from ``means_``.
    """

    _needs_entropy = False  # whether the bound needs sum r log r of the E-step

    def __init__(self, n_components, tol, reg_covar, max_iter, n_init, init_params,
                 random_state, warm_start, verbose, verbose_interval):
        self.n_components = n_components
        self.tol = tol
        self.reg_covar = reg_covar
        self.max_iter = max_iter
        self.n_init = n_init
        self.init_params = init_params
        self.random_state = random_state
        self.warm_start = warm_start
        self.verbose = verbose
        self.verbose_interval = verbose_interval

    # ------------------------------------------------------------------ checks

    def _validate_params(self):
        owner = type(self).__name__
        check_int(owner, "n_components", self.n_components, 1)
        check_str(owner, "covariance_type", self.covariance_type, set(COVARIANCE_TYPES))
        check_real(owner, "tol", self.tol, 0.0)
        check_real(owner, "reg_covar", self.reg_covar, 0.0)
        check_int(owner, "max_iter", self.max_iter, 0)
        check_int(owner, "n_init", self.n_init, 1)
        check_str(owner, "init_params", self.init_params, set(INIT_PARAMS))
        check_bool(owner, "warm_start", self.warm_start)
        check_verbose(owner, self.verbose)
        check_int(owner, "verbose_interval", self.verbose_interval, 1)

    def _validate_X(self, X, reset):
        X = check_array(X, dtype=np.float64, ensure_min_samples=2 if reset else 1,
                        estimator=self, input_name="X")
        if reset:
            self.n_features_in_ = X.shape[1]
        elif X.shape[1] != self.n_features_in_:
            raise ValueError(
                f"X has {X.shape[1]} features, but {type(self).__name__} is expecting "
                f"{self.n_features_in_} features as input."
            )
        return X

    # ------------------------------------------------------------------ initialisation

    def _initial_resp(self, X, random_state):
        """Responsibilities (N, K) to start from, by ``init_params``."""
        num, num_components = X.shape[0], self.n_components
        resp = np.zeros((num, num_components))
        if self.init_params == "kmeans":
            labels = KMeans(n_clusters=num_components, n_init=1,
                            random_state=random_state).fit(X).labels_
            resp[np.arange(num), labels] = 1.0
        elif self.init_params == "random":
            resp = random_state.uniform(size=(num, num_components))
            resp /= resp.sum(axis=1)[:, None]
        elif self.init_params == "random_from_data":
            # one data point per component: the means start on distinct points
            indices = random_state.choice(num, size=num_components, replace=False)
            resp[indices, np.arange(num_components)] = 1.0
        else:  # k-means++ seeding without the Lloyd iterations
            _, indices = kmeans_plusplus(X, num_components, random_state=random_state)
            resp[indices, np.arange(num_components)] = 1.0
        return resp

    def _initialize_parameters(self, X, random_state, X_fit=None):
        """Initial parameters from ``init_params`` (scikit-learn's hook).

        The responsibilities come from ``X`` itself (the same k-means as scikit-learn's),
        the parameters from ``X_fit``, the centred data, when given.
        """
        self._initialize(X if X_fit is None else X_fit, self._initial_resp(X, random_state))

    @property
    def _shift(self):
        """The data mean of the last fit (0 for hooks called on their own)."""
        return getattr(self, "_center", 0.0)

    # ------------------------------------------------------------------ the fit loop

    def fit(self, X, y=None):
        """Fit ``n_init`` times (once, continuing, under ``warm_start``); keep the best.

        :param X: data, shape (N, D).
        :param y: ignored.
        :returns: self.
        """
        self.fit_predict(X, y)
        return self

    def fit_predict(self, X, y=None):
        """Fit, then return the most probable component of each row of ``X``; shape (N,).

        Equal to ``fit(X).predict(X)`` whatever ``max_iter`` and ``tol``: a last E-step
        follows the fit.
        """
        self._validate_params()
        X = self._validate_X(X, reset=True)
        if X.shape[0] < self.n_components:
            raise ValueError(
                "Expected n_samples >= n_components but got "
                f"n_components = {self.n_components}, n_samples = {X.shape[0]}"
            )
        self._check_parameters(X)
        self._center = X.mean(axis=0)
        Xc = X - self._center

        do_init = not (self.warm_start and hasattr(self, "converged_"))
        n_init = self.n_init if do_init else 1
        random_state = check_random_state(self.random_state)
        best_bound, best_history, best_extra = -np.inf, [], None
        best_params, best_n_iter = None, 0
        self.converged_ = False

        for init in range(n_init):
            self._verbose_init_begin(init)
            if do_init:
                self._initialize_parameters(X, random_state, X_fit=Xc)
            bound = -np.inf if do_init else self.lower_bound_
            history = []
            if self.max_iter == 0:
                best_params, best_n_iter = self._get_parameters(), 0
                continue
            converged = False
            for n_iter in range(1, self.max_iter + 1):
                previous = bound
                log_prob_norm, resp, neg_entropy = normalize_log(
                    self._estimate_weighted_log_prob(Xc), self._needs_entropy)
                self._m_step(Xc, resp)
                bound = self._compute_lower_bound(log_prob_norm, neg_entropy)
                history.append(bound)
                change = bound - previous
                self._verbose_iter_end(n_iter, change)
                if abs(change) < self.tol:
                    converged = True
                    break
            self._verbose_init_end(bound, converged)
            if bound > best_bound or best_bound == -np.inf:
                best_bound, best_history = bound, history
                best_params, best_n_iter = self._get_parameters(), n_iter
                best_extra = self._iteration_extras()
                self.converged_ = converged

        # with max_iter = 0 the user asked for the initialisation: no warning then
        if not self.converged_ and self.max_iter > 0:
            warnings.warn(
                "Best performing initialization did not converge. Try different init "
                "parameters, or increase max_iter, tol, or check for degenerate data.",
                ConvergenceWarning, stacklevel=2,
            )
        self._set_parameters(best_params)
        self.n_iter_ = best_n_iter
        self.lower_bound_ = best_bound
        self.lower_bounds_ = best_history
        # a last E-step: fit_predict(X) == fit(X).predict(X) for any max_iter and tol
        _, resp, neg_entropy = normalize_log(self._estimate_weighted_log_prob(Xc),
                                             self._needs_entropy)
        self._after_fit(Xc, resp, neg_entropy, best_extra)
        return resp.argmax(axis=1)

    def _iteration_extras(self):
        """What a subclass keeps of the best initialisation's last iteration."""
        return None

    def _after_fit(self, X, resp, neg_entropy, extras):
        """Hook run after the final E-step, with its responsibilities."""

    # ------------------------------------------------------------------ predictions

    def _estimate_weighted_log_prob(self, X):
        """``log p(x_n | z_n = k) + log pi_k`` (or their E-step expectations) of centred
        points ``X - _shift``; (N, K)."""
        return self._estimate_log_prob(X) + self._estimate_log_weights()

    def _centred(self, X):
        """``X`` checked against the fit, minus the fit's shift."""
        check_is_fitted(self)
        return self._validate_X(X, reset=False) - self._shift

    def predict(self, X):
        """Most probable component of each row of ``X``; shape (N,)."""
        return self._estimate_weighted_log_prob(self._centred(X)).argmax(axis=1)

    def predict_proba(self, X):
        """Responsibilities ``p(z_n = k | x_n)``; shape (N, K)."""
        _, resp, _ = normalize_log(self._estimate_weighted_log_prob(self._centred(X)))
        return resp

    def score(self, X, y=None):
        """Mean of :meth:`score_samples` over the rows of ``X``; a float."""
        return float(np.mean(self.score_samples(X)))

    def sample(self, n_samples=1):
        """Draw from the fitted mixture (its point estimates).

        The same draws as scikit-learn's for the same ``random_state``: the counts per
        component from one multinomial, then each component's points in turn.

        :param int n_samples: number of points.
        :returns: ``(X, y)``: points (n_samples, D) and their components (n_samples,).
        """
        check_is_fitted(self)
        if not isinstance(n_samples, numbers.Integral) or n_samples < 1:
            raise ValueError(
                f"Invalid value for 'n_samples': {n_samples} . The sampling requires at "
                "least one sample."
            )
        num_components, dim = self.means_.shape
        rng = check_random_state(self.random_state)
        counts = rng.multinomial(n_samples, self.weights_)
        cov_type = self.covariance_type
        parts = []
        for k in range(num_components):
            if cov_type in ("full", "tied"):
                cov = self.covariances_[k] if cov_type == "full" else self.covariances_
                parts.append(rng.multivariate_normal(self.means_[k], cov, int(counts[k])))
            else:
                parts.append(self.means_[k] + rng.standard_normal(size=(counts[k], dim))
                             * np.sqrt(self.covariances_[k]))
        y = np.repeat(np.arange(num_components, dtype=np.int64), counts)
        return np.vstack(parts), y

    # ------------------------------------------------------------------ verbose output

    def _verbose_init_begin(self, init):
        if self.verbose >= 1:
            print(f"Initialization {init}")
        if self.verbose >= 2:
            self._init_prev_time = self._iter_prev_time = time()

    def _verbose_iter_end(self, n_iter, change):
        if self.verbose and n_iter % self.verbose_interval == 0:
            if self.verbose == 1:
                print(f"  Iteration {n_iter}")
            else:
                now = time()
                print(f"  Iteration {n_iter}\t time lapse {now - self._iter_prev_time:.5f}s"
                      f"\t ll change {change:.5f}")
                self._iter_prev_time = now

    def _verbose_init_end(self, bound, converged):
        status = "converged" if converged else "did not converge"
        if self.verbose == 1:
            print(f"Initialization {status}.")
        elif self.verbose >= 2:
            lapse = time() - self._init_prev_time
            print(f"Initialization {status}. time lapse {lapse:.5f}s\t lower bound "
                  f"{bound:.5f}.")
