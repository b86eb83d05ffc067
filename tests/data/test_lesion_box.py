"""The lesion-ROI crop of the results table's ROI baseline (mtilib.data.dataset.lesion_box)."""

import numpy as np

from mtilib.constants import LESION
from mtilib.data.dataset import CaseVolume, crop_volume, lesion_box
from mtilib.data.phantom import PhantomConfig, generate_case


def test_box_is_square_centred_widened_and_inside_the_image():
    mask = np.zeros((64, 64, 10), bool)
    mask[20:26, 30:34, 3:6] = True  # 6 x 4 pixels over slices 3-5
    rows, cols, zs = lesion_box(mask, margin_fraction=0.5, min_size=4)
    assert rows.stop - rows.start == cols.stop - cols.start == 12  # 6 widened by 3 on each side
    assert (rows.start, cols.start) == (17, 26) and (zs.start, zs.stop) == (3, 6)
    assert lesion_box(mask, min_size=20)[0].stop - lesion_box(mask, min_size=20)[0].start == 20
    edge = np.zeros((32, 32, 2), bool)
    edge[0:3, 29:32, 0] = True  # at a corner: the box shifts inside, keeping its size
    r, c, _ = lesion_box(edge, min_size=12)
    assert (r.start, r.stop, c.start, c.stop) == (0, 12, 20, 32)
    assert lesion_box(np.zeros((8, 8, 2), bool)) is None


def test_crop_keeps_the_whole_lesion_its_truth_and_the_case_normalisation():
    case = generate_case(3, "HCC", PhantomConfig.preset("samples"))
    volume = CaseVolume.from_phantom(case, "c")
    box = lesion_box(volume.labels == LESION)
    crop = crop_volume(volume, box)
    assert (crop.labels == LESION).sum() == (volume.labels == LESION).sum()
    assert crop.images.shape[0] == 4 and crop.images.shape[1] == crop.images.shape[2]
    np.testing.assert_array_equal(crop.images, volume.images[:, box[0], box[1], box[2]])
    assert crop.scale == volume.scale and crop.class_id == volume.class_id
    np.testing.assert_array_equal(crop.enhancement, volume.enhancement)
