"""The split-list benchmarks (ImageNet-LT, Places-LT, iNat18): reading the standard lists, the
decoded memory-mapped store and its content-keyed cache, bad lists, and the registered datasets.
Trees are generated (tests/splitlist_files.py); pixels are checked against Pillow directly."""
from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bkdbench.data import DataError, dataset_info, get_dataset, load_longtail
from bkdbench.data.large import lists as splitlist, register as splitdata, store as splitstore
from bkdbench.data.large.imagenet_lt import IMAGENET_LT
from bkdbench.data.large.inat18 import INAT18
from splitlist_files import write_image, write_imagenet_lt

TINY = replace(IMAGENET_LT, num_classes=3)  # the ImageNet-LT lists' names and rules, 3 classes
STORE = 32


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("BKDBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("BKDBENCH_DECODE_WORKERS", "1")


def pil_store(path: Path, size: int) -> np.ndarray:
    """torchvision's Resize(size) + CenterCrop(size) on a PIL image, written out independently."""
    im = Image.open(path).convert("RGB")
    w, h = im.size
    if w <= h:
        new = (size, int(size * h / w))
    else:
        new = (int(size * w / h), size)
    im = im.resize(new, Image.BILINEAR)
    w, h = im.size
    crop = round(size * 0.875)  # the stored square holds the evaluation crop exactly where CenterCrop(crop) puts it
    top = min(max(int(round((h - crop) / 2)) - int(round((size - crop) / 2)), 0), h - size)
    left = min(max(int(round((w - crop) / 2)) - int(round((size - crop) / 2)), 0), w - size)
    return np.asarray(im.crop((left, top, left + size, top + size))).transpose(2, 0, 1)


def test_reads_lists_and_stores_every_image_as_pillow_would(tmp_path):
    lines = write_imagenet_lt(tmp_path / "img")
    listing = splitlist.scan(tmp_path / "img", TINY, STORE)
    assert {s: len(e) for s, e in listing.splits.items()} == {"train": 21, "val": 6, "test": 9}
    assert listing.classes == ("n00000000", "n00000001", "n00000002")
    stored = splitstore.load_listing(listing)
    assert stored.decoded
    arrays = stored.arrays
    assert arrays.train_x.shape == (21, 3, STORE, STORE) and arrays.train_x.dtype == np.uint8
    assert isinstance(arrays.train_x, np.memmap)
    assert arrays.train_y.tolist() == [int(line.split()[1]) for line in lines["train"]]
    assert arrays.test_y.tolist() == [int(line.split()[1]) for line in lines["test"]]
    for split, x in (("train", arrays.train_x), ("val", arrays.val_x), ("test", arrays.test_x)):
        for row, line in enumerate(lines[split]):
            np.testing.assert_array_equal(x[row], pil_store(tmp_path / "img" / line.split()[0], STORE))


def test_grayscale_cmyk_and_png_named_jpeg_become_rgb(tmp_path):
    write_imagenet_lt(tmp_path / "img")
    x = splitstore.load_listing(splitlist.scan(tmp_path / "img", TINY, STORE)).arrays.train_x
    gray = x[1]  # class 0, image 1: grayscale JPEG
    assert (gray[0] == gray[1]).all() and (gray[1] == gray[2]).all()
    assert Image.open(tmp_path / "img/train/n00000001/n00000001_0.JPEG").mode == "CMYK"
    assert Image.open(tmp_path / "img/train/n00000002/n00000002_1.JPEG").format == "PNG"
    assert x[12].std() > 0 and x[19].std() > 0  # the CMYK and the PNG rows hold pixels


def test_second_load_is_a_cache_hit_and_touching_a_file_changes_the_key(tmp_path):
    write_imagenet_lt(tmp_path / "img")
    first = splitstore.load_listing(splitlist.scan(tmp_path / "img", TINY, STORE))
    again = splitstore.load_listing(splitlist.scan(tmp_path / "img", TINY, STORE))
    assert first.decoded and not again.decoded and again.folder == first.folder
    target = tmp_path / "img/train/n00000000/n00000000_3.JPEG"
    st = target.stat()
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    touched = splitstore.load_listing(splitlist.scan(tmp_path / "img", TINY, STORE))
    assert touched.decoded and touched.folder != first.folder
    other_size = splitstore.load_listing(splitlist.scan(tmp_path / "img", TINY, 24))
    assert other_size.decoded and other_size.arrays.train_x.shape[-1] == 24


def test_an_interrupted_decode_leaves_nothing_that_is_trusted(tmp_path, monkeypatch):
    write_imagenet_lt(tmp_path / "img")
    listing = splitlist.scan(tmp_path / "img", TINY, STORE)
    calls = {"n": 0}
    real = splitstore.decode_store

    def dies_on_the_tenth(*args, **kw):
        calls["n"] += 1
        if calls["n"] == 10:
            raise KeyboardInterrupt
        return real(*args, **kw)

    monkeypatch.setattr(splitstore, "decode_store", dies_on_the_tenth)
    with pytest.raises(KeyboardInterrupt):
        splitstore.load_listing(listing)
    assert not (tmp_path / "cache").exists()  # the temporary folder went, and the folders made for it
    monkeypatch.setattr(splitstore, "decode_store", real)
    assert splitstore.load_listing(listing).decoded


def test_a_process_pool_decodes_the_same_pixels(tmp_path, monkeypatch):
    write_imagenet_lt(tmp_path / "img")
    one = splitstore.load_listing(splitlist.scan(tmp_path / "img", TINY, STORE)).arrays
    monkeypatch.setattr(splitstore, "_CHUNK", 4)
    monkeypatch.setenv("BKDBENCH_DECODE_WORKERS", "2")
    monkeypatch.setenv("BKDBENCH_CACHE", str(tmp_path / "cache2"))
    seen = []
    with splitstore.decode_progress(lambda what, done, total: seen.append((done, total))):
        two = splitstore.load_listing(splitlist.scan(tmp_path / "img", TINY, STORE))
    assert two.decoded
    np.testing.assert_array_equal(np.asarray(two.arrays.train_x), np.asarray(one.train_x))
    np.testing.assert_array_equal(np.asarray(two.arrays.test_x), np.asarray(one.test_x))
    assert seen[0] == (0, 36) and seen[-1] == (36, 36) and len(seen) > 3


DECODER = """
import pathlib, sys, time
from dataclasses import replace
import numpy as np
from bkdbench.data.large import lists, store
from bkdbench.data.large.imagenet_lt import IMAGENET_LT
root, go = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
listing = lists.scan(root, replace(IMAGENET_LT, num_classes=3), 32)
print("ready", flush=True)
while not go.exists():  # both decode at once, whenever the slower one started
    time.sleep(0.005)
stored = store.load_listing(listing)
x = np.asarray(stored.arrays.train_x, dtype=np.int64)
print(stored.folder, int(x.sum()), int((x * np.arange(x.shape[0])[:, None, None, None]).sum()), flush=True)
"""


def _store_folders(cache):
    return sorted(p.name for p in (cache / "splitlist").iterdir())


def test_two_processes_decoding_the_same_store_at_once_both_get_it(tmp_path):
    """Two processes decode one listing at the same moment: both finish with the same pixels (their
    sums checked against the images decoded by Pillow here) from one store folder, nothing left over."""
    import subprocess
    import sys

    lines = write_imagenet_lt(tmp_path / "img")
    want = np.stack([pil_store(tmp_path / "img" / line.split()[0], STORE) for line in lines["train"]]).astype(np.int64)
    go = tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, "-c", DECODER, str(tmp_path / "img"), str(go)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    try:
        assert [p.stdout.readline().strip() for p in procs] == ["ready", "ready"]
        go.touch()
        outs = [p.communicate(timeout=120) for p in procs]
    finally:
        go.touch()
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert [p.returncode for p in procs] == [0, 0], [err for _, err in outs]
    said = [out.split() for out, _ in outs]
    weights = np.arange(want.shape[0])[:, None, None, None]
    assert said[0] == said[1] == [said[0][0], str(int(want.sum())), str(int((want * weights).sum()))]
    assert _store_folders(tmp_path / "cache") == [Path(said[0][0]).name]  # one store, no temp or set-aside folder


def test_a_store_finished_by_another_process_after_our_look_is_never_removed(tmp_path, monkeypatch):
    """The race, made certain: this process looks (no valid store yet), another one then finishes the
    store, and this one decodes too. Theirs stays in place, the very same files (another process may
    be about to open them); this one's copy is dropped."""
    write_imagenet_lt(tmp_path / "img")
    listing = splitlist.scan(tmp_path / "img", TINY, STORE)
    theirs = splitstore.load_listing(listing)
    inode = os.stat(theirs.folder / "train_x.npy").st_ino
    real, looks = splitstore._valid, []

    def first_look_before_theirs_was_there(folder, listing):
        looks.append(folder)
        return False if len(looks) == 1 else real(folder, listing)

    monkeypatch.setattr(splitstore, "_valid", first_look_before_theirs_was_there)
    mine = splitstore.load_listing(listing)
    assert os.stat(theirs.folder / "train_x.npy").st_ino == inode  # their files, never replaced
    assert mine.decoded and mine.folder == theirs.folder and len(looks) >= 2
    np.testing.assert_array_equal(np.asarray(mine.arrays.train_x), np.asarray(theirs.arrays.train_x))
    assert _store_folders(tmp_path / "cache") == [theirs.folder.name]


def test_a_damaged_folder_under_the_stores_name_is_replaced(tmp_path):
    write_imagenet_lt(tmp_path / "img")
    listing = splitlist.scan(tmp_path / "img", TINY, STORE)
    folder = splitstore.load_listing(listing).folder
    (folder / "meta.json").write_text("{not json")  # damaged by hand: never trusted
    again = splitstore.load_listing(listing)
    assert again.decoded and again.folder == folder and splitstore._valid(folder, listing)
    assert _store_folders(tmp_path / "cache") == [folder.name]  # the damaged one went, set aside first


BAD_LINES = [
    ("train", "train/n00000000/n00000000_0.JPEG zero", "label 'zero' is not an integer"),
    ("train", "train/n00000000/n00000000_0.JPEG 3", "label 3 is out of range 0..2"),
    ("val", "train/n00000000/n00000000_val0.JPEG -1", "label -1 is out of range 0..2"),
    ("test", "val/n00000000/missing.JPEG 0", "does not exist"),
    ("train", "train/n00000000/n00000000_0.JPEG", "expected 'relative/path label'"),
]


@pytest.mark.parametrize("split,bad,message", BAD_LINES)
def test_bad_lines_name_the_file_and_the_line(tmp_path, split, bad, message):
    lines = write_imagenet_lt(tmp_path / "img")
    path = tmp_path / "img/splits" / f"ImageNet_LT_{split}.txt"
    body = lines[split][:2] + [bad] + lines[split][2:]
    path.write_text("\n".join(body) + "\n")
    with pytest.raises(DataError, match=f"{path}:3: .*{message}"):
        splitlist.scan(tmp_path / "img", TINY, STORE)


def test_duplicated_line_empty_list_and_missing_list(tmp_path):
    lines = write_imagenet_lt(tmp_path / "img")
    path = tmp_path / "img/splits/ImageNet_LT_train.txt"
    path.write_text("\n".join(lines["train"] + [lines["train"][4]]) + "\n")
    with pytest.raises(DataError, match=f"{path}:22: .* listed twice \\(first on line 5\\)"):
        splitlist.scan(tmp_path / "img", TINY, STORE)
    path.write_text("\n\n")
    with pytest.raises(DataError, match=f"{path} is an empty list"):
        splitlist.scan(tmp_path / "img", TINY, STORE)
    path.unlink()
    with pytest.raises(DataError, match="split list ImageNet_LT_train.txt not found"):
        splitlist.scan(tmp_path / "img", TINY, STORE)


def test_a_truncated_image_names_the_file_and_its_list_line(tmp_path):
    write_imagenet_lt(tmp_path / "img")
    target = tmp_path / "img/val/n00000001/ILSVRC2012_val_00010002.JPEG"
    target.write_bytes(target.read_bytes()[:200])
    listing = splitlist.scan(tmp_path / "img", TINY, STORE)
    test_list = tmp_path / "img/splits/ImageNet_LT_test.txt"
    with pytest.raises(DataError, match=f"{test_list}:6: {target} is not a readable image"):
        splitstore.load_listing(listing)
    assert not (tmp_path / "cache").exists()


def test_lists_found_in_the_root_and_a_leading_slash_is_ignored(tmp_path):
    lines = write_imagenet_lt(tmp_path / "img", splits_folder="")
    (tmp_path / "img/ImageNet_LT_val.txt").write_text("\n".join("/" + line for line in lines["val"]) + "\n")
    listing = splitlist.scan(tmp_path / "img", TINY, STORE)
    assert listing.splits["val"][0].rel == lines["val"][0].split()[0]


def test_inat_validation_is_the_last_of_each_class_and_its_val_list_is_test(tmp_path):
    counts = (25, 12, 2, 1)
    root = tmp_path / "inat"
    train, val = [], []
    for label, n in enumerate(counts):
        for i in range(n):
            rel = f"train_val2018/Plantae/{label}/{i:03d}.jpg"
            write_image(root / rel, label, i)
            train.append(f"{rel} {label}")
        rel = f"train_val2018/Plantae/{label}/val.jpg"
        write_image(root / rel, label, 99)
        val.append(f"{rel} {label}")
    (root / "iNaturalist18_train.txt").write_text("\n".join(train) + "\n")
    (root / "iNaturalist18_val.txt").write_text("\n".join(val) + "\n")
    bench = replace(INAT18, num_classes=len(counts))
    listing = splitlist.scan(root, bench, STORE)
    held = {label: [e.rel for e in listing.splits["val"] if e.label == label] for label in range(len(counts))}
    # min(3, max(1, n // 10)) for n >= 2: 25 → 2, 12 → 1, 2 → 1, 1 → 0; the last ones in list order
    assert held == {0: ["train_val2018/Plantae/0/023.jpg", "train_val2018/Plantae/0/024.jpg"],
                    1: ["train_val2018/Plantae/1/011.jpg"], 2: ["train_val2018/Plantae/2/001.jpg"], 3: []}
    assert np.bincount([e.label for e in listing.splits["train"]]).tolist() == [23, 11, 1, 1]
    assert [e.rel for e in listing.splits["test"]] == [line.split()[0] for line in val]
    assert not {e.rel for e in listing.splits["train"]} & {e.rel for e in listing.splits["val"]}


def test_registered_datasets_resolve_per_root_and_image_size(tmp_path):
    for name, classes in (("imagenet-lt", 1000), ("places-lt", 365), ("inat18", 8142)):
        info = get_dataset(name)
        assert info.num_classes == classes and info.augmentation == "imagenet" and info.resolve is not None
        assert info.mean == (0.485, 0.456, 0.406)
    with pytest.raises(DataError, match="imagenet-lt needs its images: pass --data-dir ROOT"):
        dataset_info("imagenet-lt", None, 28)
    with pytest.raises(DataError, match="split list ImageNet_LT_train.txt not found"):
        dataset_info("imagenet-lt", tmp_path, 28)


def test_natural_profile_keeps_the_memory_map(tmp_path, monkeypatch):
    write_imagenet_lt(tmp_path / "img")
    bench = TINY
    info = splitdata._resolved(bench, tmp_path / "img", 28)
    assert info.image_size == 28 and info.n_max == 12 and info.data_key
    monkeypatch.setattr("bkdbench.data.splits.dataset_info", lambda *a, **k: info)
    data = load_longtail("imagenet-lt", 2.4, "natural", data_dir=tmp_path / "img", image_size=28)
    assert isinstance(data.train_x, np.memmap) and data.class_counts == [12, 6, 3]
    assert data.val_x.shape == (6, 3, 32, 32) and data.test_x.shape == (9, 3, 32, 32)
    assert data.shots == {"many": [], "medium": [], "few": [0, 1, 2]}


def test_the_large_sets_take_only_the_natural_profile():
    from bkdbench.specs import SpecError, check_spec

    for name in ("imagenet-lt", "places-lt", "inat18"):
        check_spec(name, "natural", "bkd")
        with pytest.raises(SpecError, match=f"{name} is long-tailed already .* pass --imbalance natural"):
            check_spec(name, 10, "ce")


def test_lists_in_a_splits_folder_of_their_own(tmp_path, monkeypatch):
    """``--splits DIR`` ($BKDBENCH_SPLITS): the lists come from there first, the images from the root."""
    write_imagenet_lt(tmp_path / "img", splits_folder="")
    lists = tmp_path / "lists"
    lists.mkdir()
    for name in TINY.lists.values():
        (tmp_path / "img" / name).rename(lists / name)
    with pytest.raises(DataError, match="or pass --splits DIR"):
        splitlist.scan(tmp_path / "img", TINY, STORE)
    monkeypatch.setenv("BKDBENCH_SPLITS", str(lists))
    listing = splitlist.scan(tmp_path / "img", TINY, STORE)
    assert [len(listing.splits[s]) for s in ("train", "val", "test")] == [21, 6, 9]
    assert listing.splits["train"][0].list_file == lists / "ImageNet_LT_train.txt"


def test_hashing_contents_keys_the_store_by_bytes_not_by_timestamps(tmp_path, monkeypatch):
    write_imagenet_lt(tmp_path / "img")
    stamped = splitlist.scan(tmp_path / "img", TINY, STORE).key
    monkeypatch.setenv("BKDBENCH_HASH_CONTENTS", "1")
    hashed = splitlist.scan(tmp_path / "img", TINY, STORE).key
    assert hashed != stamped
    image = tmp_path / "img" / "train/n00000000/n00000000_0.JPEG"
    os.utime(image, ns=(1, 1))  # a new timestamp, the same bytes: the same store
    assert splitlist.scan(tmp_path / "img", TINY, STORE).key == hashed
    monkeypatch.delenv("BKDBENCH_HASH_CONTENTS")
    assert splitlist.scan(tmp_path / "img", TINY, STORE).key != stamped  # by timestamps it changed
    monkeypatch.setenv("BKDBENCH_HASH_CONTENTS", "1")
    image.write_bytes(image.read_bytes()[:-1] + b"\0")  # other bytes, same size: another store
    assert splitlist.scan(tmp_path / "img", TINY, STORE).key != hashed
