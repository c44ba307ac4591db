"""Places-LT (Liu et al., CVPR 2019, "OLTR"): 365 Places-365 classes, Pareto-subsampled.

Lists ``Places_LT_{train,val,test}.txt`` (the decoupling code's ``data/Places_LT/``), paths relative to
the Places-365 root (``train/airfield/00000001.jpg``, ...). 62,500 train images, 4,980 to 5 per class;
val 7,300 (20 per class: validation); test 36,500 (100 per class: reported only). The field fine-tunes an
ImageNet-pretrained ResNet-152 on it (``--pretrained``). Reading: lists.py; store and cache: store.py.
"""
from .register import register_benchmark
from .lists import Benchmark

PLACES_LT = Benchmark(
    name="places-lt",
    description="Places-LT from its split lists (365 classes, 4,980–5 train images per class)",
    num_classes=365,
    lists={"train": "Places_LT_train.txt", "val": "Places_LT_val.txt", "test": "Places_LT_test.txt"},
    default_model="resnet152",
    default_recipe="places-lt",
    sizes={"train": 62_500, "val": 7_300, "test": 36_500, "max": 4980, "min": 5},
)

register_benchmark(PLACES_LT)
