"""signal_table: tidy time-intensity table measured from a data set on disk."""

import numpy as np
import pytest

from mtilib.constants import PHASES
from mtilib.data.enhancement import relative_enhancement
from mtilib.data.io import load_case, write_dataset
from mtilib.data.phantom import PhantomConfig, generate_cases
from mtilib.data.signals import SIGNAL_REGIONS, region_masks, signal_table


@pytest.fixture(scope="module")
def index(tmp_path_factory):
    cfg = PhantomConfig.preset("quick")
    cases = generate_cases(3, seed=3, config=cfg, classes=("HCC", "cyst", "hemangioma"))
    return write_dataset(tmp_path_factory.mktemp("signal") / "ds", cases[:2], cases[2:])


def test_region_masks_core_is_inside_lesion_and_in_plane():
    labels = np.zeros((9, 9, 2), np.uint8)
    labels[1:8, 1:8, :] = 1
    labels[2:7, 2:7, 0] = 2  # 5x5 lesion on slice 0
    labels[4, 4, 1] = 2  # one voxel on slice 1: no core
    masks = region_masks(labels, core_erosion=1)
    assert masks["lesion"].sum() == 26 and masks["liver"].sum() == 2 * 49 - 26
    assert masks["lesion_core"][:, :, 0].sum() == 9 and masks["lesion_core"][:, :, 1].sum() == 0
    assert not (masks["lesion_core"] & ~masks["lesion"]).any()
    assert np.array_equal(region_masks(labels, core_erosion=0)["lesion_core"], masks["lesion"])


def test_signal_table_is_tidy_and_matches_relative_enhancement(index):
    table = signal_table(index)
    assert len(table) == len(index) * len(SIGNAL_REGIONS) * len(PHASES)
    assert set(table.columns) >= {"case", "split", "class", "class_name", "atypical", "region", "n_voxels",
                                  "phase", "phase_index", "time_s", "signal", "relative_enhancement"}
    assert set(table.split) == {"train", "test"}
    case_id = index.cases()[0]
    case = load_case(index, case_id)
    rows = table[(table.case == case_id) & (table.region == "lesion")].sort_values("phase_index")
    assert list(rows.phase) == list(PHASES)
    assert rows.relative_enhancement.iloc[0] == 0.0
    expected = relative_enhancement(case.images, case.labels == 2)
    assert np.allclose(rows.relative_enhancement.iloc[1:], expected)
    assert np.allclose(rows.signal, case.images[:, case.labels == 2].mean(axis=1), rtol=1e-5)
    assert rows.n_voxels.iloc[0] == int((case.labels == 2).sum())


def test_signal_table_keeps_empty_regions_as_nan(index):
    table = signal_table(index, case_ids=index.cases()[:1], core_erosion=50)
    core = table[table.region == "lesion_core"]
    assert len(core) == len(PHASES) and (core.n_voxels == 0).all() and core.signal.isna().all()
