import pytest

from pipeline.splits import assign_splits, split_fingerprint

IDS = [f"c{i:03d}" for i in range(100)]
FAMILIES = ["mlp" if i % 2 else "cnn" for i in range(100)]
DATASETS = ["digits" if i % 3 else "shapes" for i in range(100)]


def test_random_task_follows_the_peer_protocol():
    a = assign_splits(IDS, FAMILIES, DATASETS)
    counts = {s: list(a.values()).count(s) for s in ("train", "val", "test")}
    assert counts == {"test": 50, "train": 40, "val": 10}


def test_a_smaller_test_fraction_trains_on_more_and_tests_on_a_subset():
    half = assign_splits(IDS, FAMILIES, DATASETS)
    fifth = assign_splits(IDS, FAMILIES, DATASETS, test_fraction=0.2)
    counts = {s: list(fifth.values()).count(s) for s in ("train", "val", "test")}
    assert counts == {"test": 20, "train": 64, "val": 16}
    # The smaller test set lies inside the larger one, so the two runs' test figures compare.
    assert {i for i, s in fifth.items() if s == "test"} < {i for i, s in half.items() if s == "test"}
    with pytest.raises(ValueError, match="test_fraction must be between 0 and 1"):
        assign_splits(IDS, FAMILIES, DATASETS, test_fraction=0.0)


def test_assignment_does_not_depend_on_listing_order_and_changes_with_seed():
    a = assign_splits(IDS, FAMILIES, DATASETS, seed=3)
    b = assign_splits(IDS[::-1], FAMILIES[::-1], DATASETS[::-1], seed=3)
    assert a == b
    assert split_fingerprint(a) != split_fingerprint(assign_splits(IDS, FAMILIES, DATASETS, seed=4))


def test_cross_architecture_tests_only_on_the_unseen_family():
    a = assign_splits(
        IDS, FAMILIES, DATASETS, "cross-architecture", train_families=("mlp",), test_families=("cnn",)
    )
    fam = dict(zip(IDS, FAMILIES, strict=True))
    assert {fam[i] for i, s in a.items() if s == "test"} == {"cnn"}
    assert {fam[i] for i, s in a.items() if s != "test"} == {"mlp"}


def test_cross_dataset_leaves_other_datasets_out():
    ds = ["digits", "shapes", "textures"] * 33 + ["digits"]
    a = assign_splits(
        IDS, FAMILIES, ds, "cross-dataset", train_datasets=("digits",), test_datasets=("shapes",)
    )
    by = dict(zip(IDS, ds, strict=True))
    assert all(by[i] != "textures" for i in a)
    assert {by[i] for i, s in a.items() if s == "test"} == {"shapes"}


def test_unknown_group_and_empty_split_are_clear_errors():
    with pytest.raises(ValueError, match="no checkpoints of family transformer"):
        assign_splits(
            IDS,
            FAMILIES,
            DATASETS,
            "cross-architecture",
            train_families=("mlp",),
            test_families=("transformer",),
        )
    with pytest.raises(ValueError, match="in both the train and the test side"):
        assign_splits(
            IDS, FAMILIES, DATASETS, "cross-architecture", train_families=("mlp",), test_families=("mlp",)
        )
    with pytest.raises(ValueError, match="would be empty"):
        assign_splits(IDS[:2], FAMILIES[:2], DATASETS[:2])


@pytest.mark.parametrize("task", ["random", "cross-dataset"])
def test_every_step_of_a_training_run_lands_on_one_side(task):
    # 40 runs of 5 stored steps each, as a Small CNN Zoo read with steps="all".
    ids = [f"run{r:02d}/step{s}" for r in range(40) for s in range(5)]
    runs = [i.split("/")[0] for i in ids]
    datasets = ["digits" if int(i[3:5]) % 2 else "shapes" for i in ids]
    cross = {"train_datasets": ("digits",), "test_datasets": ("shapes",)} if task == "cross-dataset" else {}
    a = assign_splits(ids, ["cnn"] * len(ids), datasets, task, runs=runs, **cross)
    sides: dict[str, set[str]] = {}
    for i, side in a.items():
        sides.setdefault(i.split("/")[0], set()).add(side)
    assert all(len(s) == 1 for s in sides.values()), sides
    assert {s for v in sides.values() for s in v} == {"train", "val", "test"}
    if task == "random":  # whole runs still make the peers' half for test
        assert list(a.values()).count("test") == 100


def test_runs_of_one_checkpoint_each_split_as_ids_do():
    assert assign_splits(IDS, FAMILIES, DATASETS, runs=IDS, seed=5) == assign_splits(
        IDS, FAMILIES, DATASETS, seed=5
    )
