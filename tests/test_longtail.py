"""Long-tail construction (REFERENCE.md §1) and the digits split, checked against values computed
here independently: the published training-set sizes, the reference subsampling procedure written
out in conftest, and the digits split rebuilt from scikit-learn's raw arrays."""
from __future__ import annotations

import numpy as np
import pytest

from bkdbench.data import (
    load_longtail,
    longtail_counts,
    longtail_indices,
    shot_split,
    unused_indices,
    validation_indices,
)
from bkdbench.data import digits as digits_module

# Published CIFAR-LT training-set sizes for IF 100 / 50 / 10 (Cao et al. 2019; REFERENCE.md §1).
PUBLISHED = {
    (5000, 10): {100: 12406, 50: 13996, 10: 20431},
    (500, 100): {100: 10847, 50: 12608, 10: 19573},
}


# ---------------------------------------------------------------- longtail_counts


@pytest.mark.parametrize("n_max,num_classes,imbalance", [(n, c, f) for (n, c), d in PUBLISHED.items() for f in d])
def test_counts_sum_to_published_sizes(n_max, num_classes, imbalance, reference_counts):
    counts = longtail_counts(n_max, num_classes, imbalance)
    assert sum(counts) == PUBLISHED[(n_max, num_classes)][imbalance]
    assert counts == reference_counts(n_max, num_classes, imbalance)
    assert counts[0] == n_max and counts[-1] == int(n_max / imbalance)
    assert all(a >= b for a, b in zip(counts, counts[1:]))  # head first, non-increasing


def test_counts_known_values_cifar10_if100():
    # 5000 * 0.01 ** (i / 9) = 5000, 2997.42, 1796.91, 1077.22, 645.77, 387.13, 232.08, 139.13, 83.41, 50 → truncated.
    assert longtail_counts(5000, 10, 100) == [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]


def test_step_profile():
    assert longtail_counts(5000, 10, 100, "step") == [5000] * 5 + [50] * 5
    assert longtail_counts(500, 100, 10, "step") == [500] * 50 + [50] * 50


def test_imbalance_one_keeps_everything():
    assert longtail_counts(5000, 10, 1) == [5000] * 10
    assert longtail_counts(500, 100, 1, "step") == [500] * 100
    targets = np.repeat(np.arange(4), 25)
    np.random.RandomState(3).shuffle(targets)
    kept = longtail_indices(targets, 1)
    assert sorted(kept.tolist()) == list(range(100))


@pytest.mark.parametrize("bad", [0.5, 0.99, 0])
def test_imbalance_below_one_raises(bad):
    with pytest.raises(ValueError, match="imbalance factor must be >= 1"):
        longtail_counts(5000, 10, bad)
    with pytest.raises(ValueError):
        longtail_indices(np.repeat(np.arange(3), 10), bad)


def test_unknown_profile_raises_with_choices():
    with pytest.raises(ValueError, match="exp.*step"):
        longtail_counts(5000, 10, 100, "linear")


# ---------------------------------------------------------------- longtail_indices


@pytest.fixture(scope="module")
def shuffled_targets():
    """300 images per class, 10 classes, labels in shuffled order like the real files."""
    targets = np.repeat(np.arange(10), 300)
    np.random.RandomState(11).shuffle(targets)
    return targets


@pytest.mark.parametrize("data_seed", [0, 1, 123])
@pytest.mark.parametrize("imbalance", [100, 10])
def test_indices_match_reference_procedure(shuffled_targets, data_seed, imbalance, reference_longtail):
    counts = [int(300 * (1.0 / imbalance) ** (i / 9.0)) for i in range(10)]
    expected, _ = reference_longtail(shuffled_targets, counts, data_seed)
    got = longtail_indices(shuffled_targets, imbalance, data_seed=data_seed)
    np.testing.assert_array_equal(got, expected)  # same images, same (reference) order
    assert got.dtype == np.int64
    np.testing.assert_array_equal(np.bincount(shuffled_targets[got], minlength=10), counts)


def test_indices_with_explicit_n_max(shuffled_targets, reference_longtail):
    counts = [int(200 * 0.1 ** (i / 9.0)) for i in range(10)]
    expected, _ = reference_longtail(shuffled_targets, counts, 5)
    np.testing.assert_array_equal(longtail_indices(shuffled_targets, 10, data_seed=5, n_max=200), expected)


def test_n_max_larger_than_a_class_raises(shuffled_targets):
    with pytest.raises(ValueError, match="class 0 has 300 images"):
        longtail_indices(shuffled_targets, 10, n_max=301)


def test_data_seeds_give_different_subsets_of_the_same_sizes(shuffled_targets):
    a = longtail_indices(shuffled_targets, 10, data_seed=0)
    b = longtail_indices(shuffled_targets, 10, data_seed=1)
    assert len(a) == len(b)
    np.testing.assert_array_equal(np.bincount(shuffled_targets[a]), np.bincount(shuffled_targets[b]))
    # Class 0 keeps all 300 in both (a permutation); the tail classes must differ as sets.
    tail_a = set(a[shuffled_targets[a] == 9].tolist())
    tail_b = set(b[shuffled_targets[b] == 9].tolist())
    assert tail_a != tail_b
    assert set(a.tolist()) != set(b.tolist())


def test_global_numpy_state_is_untouched(shuffled_targets):
    np.random.seed(987)
    before = np.random.get_state()
    expected_next = np.random.RandomState(987).rand(5)  # what the caller's stream must give next
    longtail_indices(shuffled_targets, 100, data_seed=0)
    unused_indices(shuffled_targets, 100, data_seed=3)
    after = np.random.get_state()
    assert before[0] == after[0]
    np.testing.assert_array_equal(before[1], after[1])
    assert before[2:] == after[2:]
    np.testing.assert_array_equal(np.random.rand(5), expected_next)


def test_unused_and_validation_indices(shuffled_targets, reference_longtail):
    counts = [int(300 * 0.1 ** (i / 9.0)) for i in range(10)]
    kept, rest_expected = reference_longtail(shuffled_targets, counts, 2)
    rest = unused_indices(shuffled_targets, 10, data_seed=2)
    assert len(rest) == 10
    for c in range(10):
        np.testing.assert_array_equal(rest[c], rest_expected[c])
    # kept and unused partition all images
    everything = np.concatenate([kept, *rest])
    assert sorted(everything.tolist()) == list(range(len(shuffled_targets)))
    val = validation_indices(rest, 20)
    expected_val = np.concatenate([r[:20] for r in rest_expected])
    np.testing.assert_array_equal(val, expected_val)
    assert not set(val.tolist()) & set(kept.tolist())
    # Class 0 kept all 300 of its images: it contributes no validation images.
    assert (shuffled_targets[val] == 0).sum() == 0
    assert all((shuffled_targets[val] == c).sum() == 20 for c in range(1, 10))


def test_shot_split_thresholds():
    # many: > 100, few: < 20, medium: 20..100 inclusive.
    counts = [500, 101, 100, 20, 19, 1]
    assert shot_split(counts) == {"many": [0, 1], "medium": [2, 3], "few": [4, 5]}
    assert shot_split(counts, many=50, few=15) == {"many": [0, 1, 2], "medium": [3, 4], "few": [5]}


def test_shot_split_cifar100_if100_is_35_35_30():
    split = shot_split(longtail_counts(500, 100, 100))
    assert [len(split[k]) for k in ("many", "medium", "few")] == [35, 35, 30]


# ---------------------------------------------------------------- digits


def _digits_reference_split():
    """The documented digits split, rebuilt from scikit-learn's arrays: per class a permutation from
    one RandomState(2024) (classes in order); the first 50 go to the test set, the rest to the pool."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    labels = bunch.target.astype(np.int64)
    rng = np.random.RandomState(2024)
    pool, test = [], []
    for c in range(10):
        idx = rng.permutation(np.where(labels == c)[0])
        test.append(idx[:50])
        pool.append(idx[50:])
    images = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)[:, None]
    return images, labels, np.concatenate(pool), np.concatenate(test)


def test_digits_load_without_importing_scikit_learn():
    """Every CLI command and Ray trial that loads digits reads scikit-learn's CSV directly (its import
    costs seconds); test_digits_split_by_index checks the arrays against ``load_digits`` itself."""
    import subprocess
    import sys

    code = ("import sys; from bkdbench.data import load_longtail; d = load_longtail('digits', 10); "
            "print(len(d.train_y), 'sklearn' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["403", "False"], out.stdout


def test_digits_counts_match_formula(reference_counts):
    data = load_longtail("digits", 10)
    expected = reference_counts(100, 10, 10)
    assert expected == [100, 77, 59, 46, 35, 27, 21, 16, 12, 10]
    assert data.class_counts == expected
    np.testing.assert_array_equal(np.bincount(data.train_y, minlength=10), expected)
    assert len(data.train_y) == 403


def test_digits_split_by_index(reference_longtail):
    images, labels, pool, test = _digits_reference_split()
    counts = [100, 77, 59, 46, 35, 27, 21, 16, 12, 10]
    kept, rest = reference_longtail(labels[pool], counts, 0)
    val = np.concatenate([r[:10] for r in rest])
    train_idx, val_idx, test_idx = pool[kept], pool[val], test

    data = load_longtail("digits", 10)
    np.testing.assert_array_equal(data.train_x, images[train_idx])
    np.testing.assert_array_equal(data.train_y, labels[train_idx])
    np.testing.assert_array_equal(data.val_x, images[val_idx])
    np.testing.assert_array_equal(data.val_y, labels[val_idx])
    np.testing.assert_array_equal(data.test_x, images[test_idx])
    np.testing.assert_array_equal(data.test_y, labels[test_idx])

    # train / val / test are disjoint sets of scikit-learn indices
    sets = [set(train_idx.tolist()), set(val_idx.tolist()), set(test_idx.tolist())]
    assert len(sets[0]) == len(train_idx) and len(sets[1]) == len(val_idx) and len(sets[2]) == len(test_idx)
    assert not (sets[0] & sets[1]) and not (sets[0] & sets[2]) and not (sets[1] & sets[2])
    np.testing.assert_array_equal(np.bincount(data.val_y, minlength=10), [10] * 10)
    np.testing.assert_array_equal(np.bincount(data.test_y, minlength=10), [50] * 10)
    assert data.train_x.dtype == np.uint8 and data.train_x.shape[1:] == (1, 8, 8)


def test_digits_split_is_deterministic_across_loads():
    first = load_longtail("digits", 10)
    digits_module._load.cache_clear()  # force a fresh read, not the cached arrays
    second = load_longtail("digits", 10)
    for name in ("train_x", "train_y", "val_x", "val_y", "test_x", "test_y"):
        np.testing.assert_array_equal(getattr(first, name), getattr(second, name))


def test_digits_data_seed_changes_train_not_test():
    a, b = load_longtail("digits", 10, data_seed=0), load_longtail("digits", 10, data_seed=1)
    np.testing.assert_array_equal(a.test_x, b.test_x)
    np.testing.assert_array_equal(np.bincount(a.train_y), np.bincount(b.train_y))
    assert not np.array_equal(a.train_x, b.train_x)


def test_digits_shots_use_its_thresholds():
    data = load_longtail("digits", 10)
    # many > 50: 100, 77, 59; few < 15: 12, 10; the rest medium.
    assert data.shots == {"many": [0, 1, 2], "medium": [3, 4, 5, 6, 7], "few": [8, 9]}


def test_validation_shortfall_by_hand():
    from bkdbench.data.longtail import validation_shortfall

    # CIFAR-10-LT IF100: only the head (5000 of 5000 kept, 0 unused) falls short of V = 20
    counts = [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
    assert validation_shortfall([5000] * 10, counts, 20) == [20] + [0] * 9
    # CIFAR-100-LT IF10: classes 0 and 1 keep 500 and 488 of 500 (0 and 12 unused): short 20 and 8
    counts100 = [int(500 * 0.1 ** (i / 99)) for i in range(100)]
    assert validation_shortfall([500] * 100, counts100, 20)[:3] == [20, 8, 0]
    # a class never gives its last training image: 3 kept, 0 unused, V = 5 → 2
    assert validation_shortfall([3], [3], 5) == [2]
