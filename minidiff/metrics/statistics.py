"""Numbers computed from feature vectors: Fréchet distance, k-NN precision/recall, diversity.

Every function here takes features ``[N, D]`` (rows are images, columns feature dimensions; a torch
tensor or a numpy array) and works in float64. Where the features come from is ``features.py``.

    frechet_distance    Heusel et al. 2017 ("GANs Trained by a Two Time-Scale Update Rule Converge
                        to a Local Nash Equilibrium"), the "FID" when the features are Inception's
    precision_recall    Kynkäänniemi et al. 2019 ("Improved Precision and Recall Metric for
                        Assessing Generative Models"), Sec. 3
    diversity           mean pairwise distance: a plain, documented spread number
    class_accuracy      how often a classifier agrees with the class a sample was asked for
"""

from __future__ import annotations

from typing import Tuple, Union

import numpy as np
import torch
from torch import Tensor

Features = Union[Tensor, np.ndarray]


def _as_float64(feats: Features, name: str = "features") -> Tensor:
    """[N, D] float64 CPU tensor, with a clear error for anything else."""
    x = torch.as_tensor(np.asarray(feats) if not torch.is_tensor(feats) else feats)
    x = x.detach().to("cpu", torch.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"{name} must have shape [N, D] with N >= 2, got {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} contain NaN or infinite values")
    return x


# ---------------------------------------------------------------------------------- Fréchet distance
def gaussian_stats(feats: Features) -> Tuple[Tensor, Tensor]:
    """(mu [D], cov [D, D]) of features [N, D]: the Gaussian that Fréchet distance fits, float64.

    cov is the unbiased sample covariance (divides by N - 1).
    """
    x = _as_float64(feats)
    mu = x.mean(dim=0)                                              # [D]
    centred = x - mu                                                # [N, D]
    cov = centred.T @ centred / (x.shape[0] - 1)                    # [D, D]
    return mu, cov


def sqrtm_psd(matrix: Tensor) -> Tensor:
    """The symmetric square root of a symmetric positive semi-definite matrix [D, D], by eigh.

    A = V diag(l) V^T  ->  sqrt(A) = V diag(sqrt(l)) V^T. Eigenvalues that rounding made slightly
    negative are set to 0. Stable where scipy's general-purpose sqrtm can return complex noise.
    """
    matrix = 0.5 * (matrix + matrix.T)                              # exactly symmetric
    eigenvalues, eigenvectors = torch.linalg.eigh(matrix)
    root = eigenvalues.clamp(min=0).sqrt()
    return (eigenvectors * root) @ eigenvectors.T                   # V diag(sqrt(l)) V^T


def frechet_distance_from_stats(mu_a: Tensor, cov_a: Tensor, mu_b: Tensor, cov_b: Tensor) -> float:
    """Fréchet (2-Wasserstein) distance squared between N(mu_a, cov_a) and N(mu_b, cov_b).

        d^2 = |mu_a - mu_b|^2 + tr(cov_a) + tr(cov_b) - 2 tr( (cov_a cov_b)^(1/2) )

    The trace of the square root is computed on the SYMMETRIC matrix sqrt(cov_a) cov_b sqrt(cov_a),
    which has the same eigenvalues as cov_a cov_b, so only symmetric eigendecompositions are needed.
    """
    mu_a, mu_b, cov_a, cov_b = (torch.as_tensor(v, dtype=torch.float64) for v in (mu_a, mu_b, cov_a, cov_b))
    root_a = sqrtm_psd(cov_a)
    middle = root_a @ cov_b @ root_a                                # symmetric PSD, eigenvalues of cov_a cov_b
    middle = 0.5 * (middle + middle.T)
    trace_sqrt = torch.linalg.eigvalsh(middle).clamp(min=0).sqrt().sum()
    d2 = (mu_a - mu_b).square().sum() + cov_a.trace() + cov_b.trace() - 2 * trace_sqrt
    return max(float(d2), 0.0)                                      # >= 0; rounding can give -1e-12


def frechet_distance(feats_a: Features, feats_b: Features) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets [N_a, D] and [N_b, D] (Heusel et al. 2017).

    0 for identical sets; for 1-D Gaussians it is (mu_a - mu_b)^2 + (sigma_a - sigma_b)^2. It is biased
    upwards at small N (the covariance estimates are noisy): compare numbers computed at the same N.
    """
    mu_a, cov_a = gaussian_stats(feats_a)
    mu_b, cov_b = gaussian_stats(feats_b)
    if mu_a.shape != mu_b.shape:
        raise ValueError(f"feature dimensions differ: {mu_a.shape[0]} vs {mu_b.shape[0]}")
    return frechet_distance_from_stats(mu_a, cov_a, mu_b, cov_b)


# ---------------------------------------------------------------------------------- precision / recall
def _rowwise(a: Tensor, b: Tensor, reduce, chunk: int = 512) -> Tensor:
    """reduce(distances [c, N_b], rows) for row chunks of a [N_a, D] against b [N_b, D], concatenated.

    Only a [chunk, N_b] block of Euclidean distances exists at any time, so N can be large.
    """
    return torch.cat([reduce(torch.cdist(a[i:i + chunk], b), slice(i, i + chunk)) for i in range(0, len(a), chunk)])


def knn_radii(feats: Tensor, k: int) -> Tensor:
    """[N]: the distance from each point to its k-th nearest OTHER point in the same set."""
    if not 1 <= k < len(feats):
        raise ValueError(f"k must lie in [1, N - 1] = [1, {len(feats) - 1}], got {k}")
    # each row of distances holds 0 for the point itself: the (k + 1)-th smallest is the k-th neighbour
    return _rowwise(feats, feats, lambda distances, rows: distances.kthvalue(k + 1, dim=1).values)


def _coverage(points: Tensor, centres: Tensor, radii: Tensor) -> float:
    """Fraction of `points` [M, D] inside at least one ball (centres [N, D], radii [N])."""
    inside = _rowwise(points, centres, lambda distances, rows: (distances <= radii[None, :]).any(dim=1))  # [M]
    return float(inside.double().mean())


def precision_recall(real_feats: Features, fake_feats: Features, k: int = 3) -> Tuple[float, float]:
    """Improved precision and recall, Kynkäänniemi et al. 2019, Sec. 3 (their k = 3).

    Each set's manifold is approximated by balls around its points, each ball reaching the point's
    k-th nearest neighbour in its own set.
        precision = fraction of fake samples inside the real manifold   (are samples realistic?)
        recall    = fraction of real samples inside the fake manifold   (is the data covered?)
    real_feats [N, D], fake_feats [M, D]. Returns (precision, recall), each in [0, 1].
    """
    real, fake = _as_float64(real_feats, "real_feats"), _as_float64(fake_feats, "fake_feats")
    precision = _coverage(fake, real, knn_radii(real, k))
    recall = _coverage(real, fake, knn_radii(fake, k))
    return precision, recall


# ---------------------------------------------------------------------------------- diversity
def diversity(feats: Features) -> float:
    """Mean Euclidean distance between two different samples' features (all N(N-1)/2 pairs).

    A spread number: a model that collapses onto a few images scores near 0. Only comparable within
    one feature extractor; ``evaluate`` reports it beside the same number for real data.
    """
    x = _as_float64(feats)
    n = len(x)
    row_sums = _rowwise(x, x, lambda distances, rows: distances.sum(dim=1))     # [N]; the diagonal is 0
    return float(row_sums.sum() / (n * (n - 1)))


# ---------------------------------------------------------------------------------- class accuracy
@torch.no_grad()
def class_accuracy(classifier, images: Tensor, labels: Tensor) -> float:
    """Fraction of images [B, C, H, W] that `classifier.predict` puts in class `labels`.

    labels: class ids [B] or one-hot rows [B, K] (the contexts the samples were conditioned on).
    """
    labels = torch.as_tensor(labels)
    if labels.ndim == 2:
        labels = labels.argmax(dim=1)
    if len(labels) != len(images):
        raise ValueError(f"{len(images)} images but {len(labels)} labels")
    predicted = classifier.predict(images).cpu()
    return float((predicted == labels.cpu()).double().mean())
