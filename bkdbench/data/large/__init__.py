"""The field's large benchmarks (ImageNet-LT, Places-LT, iNaturalist 2018): datasets defined by their
published split-file lists. ``lists`` reads and checks the lists, ``store`` decodes the images once
into a resized uint8 store, ``register`` turns a ``Benchmark`` into a registered dataset, and each
benchmark is one file that registers itself."""
from . import imagenet_lt, inat18, places_lt  # noqa: F401  (registration)
