"""OWL: per-layer unstructured sparsity from each layer's share of outlier weights.

Yin et al. 2024, "Outlier Weighed Layerwise Sparsity (OWL): A Missing Secret Sauce for
Pruning LLMs to High Sparsity". A layer's *outlier ratio* is the share of its weights whose
Wanda score ``|w| * ||x||`` exceeds ``M`` times the mean score of the layer (all its
prunable projections together); layers with more outliers are pruned less. The ratios are
mapped linearly to sparsities whose mean is the target and which stay within ``lam`` of it.

The paper's code scales the ratios to a range of width ``2 * lam`` and then centres them on
the target, which can put one layer up to ``2 * lam`` from it when the ratios are skewed;
here the deviations from the mean are scaled so that the largest is ``lam``, which holds
every layer within ``[target - lam, target + lam]`` as the paper states.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from autoprune.engine.scores import Scores


def outlier_ratios(scores: Scores, threshold: float = 5.0) -> list[float]:
    """Per layer, the share of its weights whose score exceeds ``threshold`` times the mean
    score of all the layer's weights (OWL's layerwise outlier distribution, with ``M =
    threshold``).

    Meant for Wanda scores (``activation`` importance, :func:`autoprune.engine.wanda
    .wanda_scores`), which is what OWL reads.

    Raises:
        ValueError: If a layer has no per-weight scores, or ``threshold`` is not positive.
    """
    if threshold <= 0:
        raise ValueError(f"threshold must be positive, got {threshold}")
    ratios = []
    for layer, weights in enumerate(scores.weights):
        if not weights:
            raise ValueError(f"layer {layer}: scores ({scores.method}) hold no per-weight scores")
        flat = torch.cat([w.reshape(-1).float() for w in weights.values()])  # (weights,)
        ratios.append(int((flat > threshold * flat.mean()).sum()) / flat.numel())
    return ratios


def owl_sparsity(outliers: Sequence[float], target: float, lam: float = 0.08) -> list[float]:
    """Per-layer sparsities from per-layer outlier ratios.

    Layer ``l`` gets ``target - lam * (D_l - mean D) / max |D - mean D|``: the mean is
    ``target`` (up to float rounding), every layer lies within ``[target - lam, target +
    lam]`` (the layer furthest from the mean outlier ratio on the bound), and a layer with
    more outliers gets less sparsity. Equal ratios give ``target`` everywhere.

    Raises:
        ValueError: If ``outliers`` is empty, ``lam`` is negative, or ``[target - lam,
            target + lam]`` is not within ``[0, 1)``.
    """
    if not outliers:
        raise ValueError("owl_sparsity needs one outlier ratio per layer; none was given")
    if lam < 0:
        raise ValueError(f"lam must be >= 0, got {lam}")
    if target - lam < 0.0 or target + lam >= 1.0:
        raise ValueError(
            f"target {target} with lam {lam}: layer sparsities would span "
            f"[{target - lam:g}, {target + lam:g}], which must lie within [0, 1)"
        )
    ratios = torch.tensor(outliers, dtype=torch.float64)  # (layers,)
    deviation = ratios - ratios.mean()  # (layers,)
    largest = float(deviation.abs().max())
    if largest == 0.0:
        return [float(target)] * len(outliers)
    sparsity = target - lam * deviation / largest  # (layers,)
    return [float(s) for s in sparsity]
