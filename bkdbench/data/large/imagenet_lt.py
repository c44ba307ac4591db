"""ImageNet-LT (Liu et al., CVPR 2019, "OLTR"): 1,000 ImageNet classes, Pareto-subsampled.

Lists ``ImageNet_LT_{train,val,test}.txt`` (from the decoupling code's ``data/ImageNet_LT/``), paths
relative to the ImageNet root (``train/n01440764/...``, ``val/n01440764/...``). 115,846 train images,
1,280 to 5 per class; val 20,000 (20 per class, from ImageNet train: validation); test 50,000 (ImageNet
val, 50 per class: reported only). Reading: lists.py; store and cache: store.py.
"""
from .register import register_benchmark
from .lists import Benchmark

IMAGENET_LT = Benchmark(
    name="imagenet-lt",
    description="ImageNet-LT from its split lists (1,000 classes, 1,280–5 train images per class)",
    num_classes=1000,
    lists={"train": "ImageNet_LT_train.txt", "val": "ImageNet_LT_val.txt", "test": "ImageNet_LT_test.txt"},
    default_model="resnext50_32x4d",
    default_recipe="imagenet-lt",
    sizes={"train": 115_846, "val": 20_000, "test": 50_000, "max": 1280, "min": 5},
)

register_benchmark(IMAGENET_LT)
