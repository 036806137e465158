"""Regions of a segmentation, as the Rand score and variation of information compare them:
the components of a class mask, or the cells a seeded watershed grows from p(cell). Pure
scikit-image, shared by the Evaluator's metrics and `unet-tfx predict --cells`."""

import numpy as np
from skimage.measure import label
from skimage.segmentation import watershed

from unet_tfx.config import TrainingConfig

SEED_THRESHOLD = TrainingConfig.cell_seed_threshold


def class_regions(classes: np.ndarray) -> np.ndarray:
    """Label image of the 4-connected components of every class but 0, numbered apart (each
    component is one class: scikit-image's `label` joins neighbours of equal value); class 0
    (the membrane of two classes) is label 0, which the Rand score leaves out."""
    return label(classes, background=0, connectivity=1)


def cell_regions(p_cell: np.ndarray, seed_threshold: float = SEED_THRESHOLD) -> np.ndarray:
    """Two classes: the cells of a [H, W] p(cell) map as a tiling. The 4-connected components
    where p(cell) > `seed_threshold` are seeds, flooded over 1 - p(cell) (scikit-image's
    watershed) until they meet, so membrane pixels join a cell and the cells divide along the
    membrane's ridge: a gap in a drawn membrane no longer merges two cells. All 0 without
    seeds."""
    return watershed(-p_cell, class_regions(p_cell > seed_threshold))
