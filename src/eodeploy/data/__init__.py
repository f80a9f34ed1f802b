"""Reading patch data sets (EuroSAT layout) and downloading them."""

from eodeploy.data.eurosat import (
    EUROSAT_CLASSES,
    EUROSAT_MS_BANDS,
    EUROSAT_RGB_BANDS,
    PatchDataset,
    Split,
    load_patch_folder,
    stratified_split,
)
from eodeploy.data.images import read_image

__all__ = [
    "EUROSAT_CLASSES",
    "EUROSAT_MS_BANDS",
    "EUROSAT_RGB_BANDS",
    "PatchDataset",
    "Split",
    "load_patch_folder",
    "read_image",
    "stratified_split",
]
