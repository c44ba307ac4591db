"""Datasets (one file each, registering itself), the long-tail construction and the device loader."""
from . import cifar, digits, fashion, imagefolder, large  # noqa: F401  (registration; large: the split-list benchmarks)
from .longtail import longtail_counts, longtail_indices, shot_split, unused_indices, validation_indices
from .registry import DataError, DatasetInfo, ImageArrays, dataset_info, dataset_names, get_dataset, register_dataset
from .splits import NATURAL, LongTailData, kept_class_counts, load_longtail, natural_imbalance, restrict_classes

__all__ = [
    "DataError", "DatasetInfo", "DeviceLoader", "normalize", "random_crop_flip", "ImageArrays", "LongTailData", "dataset_names", "get_dataset",
    "NATURAL", "dataset_info", "load_longtail", "longtail_counts", "longtail_indices", "natural_imbalance", "kept_class_counts", "restrict_classes", "register_dataset", "shot_split",
    "unused_indices", "validation_indices",
]


def __getattr__(name: str):
    """The device loader imports torch: loaded on first use, so that listing datasets (``bkdbench data
    list``, suite files) stays torch-free."""
    if name in ("DeviceLoader", "normalize", "random_crop_flip"):
        from . import loader

        return getattr(loader, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
