"""iNaturalist 2018 (Van Horn et al., CVPR 2018): 8,142 species, naturally long-tailed.

Lists ``iNaturalist18_{train,val}.txt`` (the decoupling code's ``data/iNaturalist18/``, made by its
``gen_lists.py``), paths relative to the iNat2018 root (``train_val2018/Plantae/...``). 437,513 train
images, 24,426 val (3 per class). There is no test list: validation is carved from the train list by a
fixed rule (per class the last ``inat_val_count(n)`` = min(3, max(1, n // 10)) images in list order)
and the official val list is reported as the test split, so nothing is chosen on what is reported.
Reading: lists.py; store and cache: store.py.
"""
from .register import register_benchmark
from .lists import Benchmark

INAT18 = Benchmark(
    name="inat18",
    description="iNaturalist 2018 from its split lists (8,142 classes; validation carved from train, val reported as test)",
    num_classes=8142,
    lists={"train": "iNaturalist18_train.txt", "val": "iNaturalist18_val.txt"},
    carve_val=True,
    default_model="resnet50",
    default_recipe="inat18",
    sizes={"train": 437_513, "val": 24_426},
)

register_benchmark(INAT18)
