"""Pseudo-labels for the self-conditioned conv_gan: clusters of the train images, no labels.

Liu, Wang, Li, Torralba, Zhu and Isola, "Diverse Image Generation via Self-Conditioned GANs"
(CVPR 2020) condition an unconditional GAN on clusters of its own data, so G need not
stretch one continuous latent space over many separate modes (for digits: blends of two
digits between them). They cluster D's features; we cluster the images once, before
training, with scikit-learn: PCA to 50 dimensions, then spectral clustering on the
10-nearest-neighbour graph (on mnist-5k, 20 clusters agree with the true digit for 84 % of
the images; k-means on the pixels, 55 % at 10 clusters). docs/quality.md has the measurements.

The clustering is seeded and independent of the job's seed, so the trials of a sweep on one
data set share it. At most FIT_AT_MOST images are clustered; the rest of the train split and
the test split get the majority cluster of their nearest clustered neighbours. Cost: about
0.6 s for mnist-5k, a few seconds for 60,000 images."""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from workers.trainer.data import ImageData, Prepare

log = logging.getLogger(__name__)

CLUSTERS = 20  # at most; fewer for small train splits (MIN_CLUSTER_SIZE images each)
MIN_CLUSTER_SIZE = 20
FIT_AT_MOST = 5000
PCA_DIMS = 50
NEIGHBOURS = 10
SEED = 0
BATCH = 1000


@dataclass(frozen=True)
class Clusters:
    """train: (N,) and test: (M,) cluster indices (int64, on CPU); prior: (K,) the fraction of
    train images in each cluster, the distribution G's conditions are drawn from."""

    train: Tensor
    test: Tensor
    prior: Tensor

    @property
    def k(self) -> int:
        return len(self.prior)


def count_for(train_size: int) -> int:
    """How many clusters a train split of this size gets: CLUSTERS, or fewer so that each
    holds about MIN_CLUSTER_SIZE images (at least 1)."""
    return max(1, min(CLUSTERS, train_size // MIN_CLUSTER_SIZE))


def cluster(data: ImageData, prepare: Prepare, k: int | None = None) -> Clusters:
    """Cluster `data`'s train images as the model sees them (after `prepare`) into `k`
    (default count_for(train size)) groups; raises ValueError for an empty train split. If
    the clustering fails (degenerate data), everything is one cluster: a plain GAN."""
    train, test = _flat(data.train_x, prepare), _flat(data.test_x, prepare)
    n = len(train)
    if n == 0:
        raise ValueError("cannot cluster an empty train split")
    k = k or count_for(n)
    if k > 1:
        try:
            with warnings.catch_warnings():  # degenerate data (constant images) warns
                warnings.simplefilter("ignore")
                return _spectral(train, test, k)
        except Exception as exc:  # self-conditioning is an aid: never fail a job over it
            log.warning("clustering %s failed (%s); training unconditioned", data.name, exc)
    return _clusters(np.zeros(n, dtype=np.int64), np.zeros(len(test), dtype=np.int64), 1)


def _spectral(train: np.ndarray, test: np.ndarray, k: int) -> Clusters:
    """PCA + spectral clustering of (at most FIT_AT_MOST of) `train`, the rest and `test`
    assigned by their nearest clustered neighbours."""
    from sklearn.cluster import SpectralClustering
    from sklearn.decomposition import PCA
    from sklearn.neighbors import KNeighborsClassifier

    n = len(train)
    rng = np.random.default_rng(SEED)
    fit_idx = np.sort(rng.permutation(n)[:FIT_AT_MOST])
    pca = PCA(min(PCA_DIMS, len(fit_idx) - 1, train.shape[1]), random_state=SEED)
    fit_features = pca.fit_transform(train[fit_idx])
    spectral = SpectralClustering(
        k,
        affinity="nearest_neighbors",
        n_neighbors=min(NEIGHBOURS, len(fit_idx) - 1),
        random_state=SEED,
    )
    fit_labels = spectral.fit_predict(fit_features)
    knn = KNeighborsClassifier(min(NEIGHBOURS, len(fit_idx))).fit(fit_features, fit_labels)

    def assign(x: np.ndarray) -> np.ndarray:
        if len(x) == 0:
            return np.zeros(0, dtype=np.int64)
        return np.asarray(knn.predict(pca.transform(x)), dtype=np.int64)

    train_labels = assign(train)
    train_labels[fit_idx] = fit_labels  # the clustered images keep their own cluster
    return _clusters(train_labels, assign(test), k)


def _flat(images: Tensor, prepare: Prepare) -> np.ndarray:
    """(N, C, H, W) uint8 -> (N, C*H*W) float32 on the host, prepared as for training."""
    parts = [
        prepare(images[i : i + BATCH]).flatten(1).float().cpu()
        for i in range(0, len(images), BATCH)
    ]
    if not parts:
        return np.zeros((0, 1), dtype=np.float32)
    return torch.cat(parts).numpy()


def _clusters(train: np.ndarray, test: np.ndarray, k: int) -> Clusters:
    counts = np.bincount(train, minlength=k).astype(np.float64)
    prior = torch.as_tensor(counts / counts.sum(), dtype=torch.float32)
    return Clusters(torch.as_tensor(train), torch.as_tensor(test), prior)
