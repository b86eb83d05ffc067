"""Training with box labels: the slices a box case gives, the losses it takes part in, and TIM
pooling inside its box."""

import numpy as np
import torch

from mtilib.data.dataset import CaseVolume, SliceDataset
from mtilib.data.io import box_core, box_core_plane
from mtilib.data.phantom import PhantomConfig, generate_case
from mtilib.losses import LossWeights, dice_ce_loss, multitask_loss
from mtilib.models import ModelConfig, build_model


def _box_volume(case, case_id="boxed"):
    ijk = np.argwhere(case.labels == 2)
    box = [[int(ijk[:, a].min()), int(ijk[:, a].max())] for a in range(3)]
    return CaseVolume.from_arrays(case_id, case.images, case.phase_times_s, case.spacing, None, case.class_id,
                                  case.enhancement, case.affine, box), box


def test_a_box_case_gives_its_box_slices_without_segmentation():
    case = generate_case(11, "HCC", PhantomConfig.preset("samples"))
    vol, box = _box_volume(case)
    mask_vol = CaseVolume.from_phantom(case, "masked")
    data = SliceDataset([vol, mask_vol], image_size=64, negative_ratio=1.0, lesion_slice_floor=0)
    boxed = [data[i] for i in range(len(data)) if int(data[i]["case_index"]) == 0]
    assert sorted(int(item["slice_index"]) for item in boxed) == list(range(box[2][0], box[2][1] + 1))
    for item in boxed:
        assert not bool(item["seg_valid"]) and bool(item["has_lesion"])
        assert int(item["label"].sum()) == 0 and float(item["pool_mask"].sum()) > 0
        torch.testing.assert_close(item["enhancement"], torch.from_numpy(case.enhancement.astype(np.float32)))
        core = box_core(case.labels.shape, box)[..., int(item["slice_index"])]
        assert np.array_equal(item["pool_mask"].numpy() > 0.5, core)  # 64² in, 64² out: the core itself
    masked = [data[i] for i in range(len(data)) if int(data[i]["case_index"]) == 1]
    assert all(bool(item["seg_valid"]) and float(item["pool_mask"].sum()) == 0 for item in masked)
    assert any(not bool(item["has_lesion"]) for item in masked)  # the mask case keeps its negatives


def test_box_core_is_inside_the_box_and_covers_its_centre():
    core = box_core((20, 20, 6), [[4, 13], [6, 9], [2, 3]])
    ijk = np.argwhere(core)
    assert ijk[:, 0].min() >= 4 and ijk[:, 0].max() <= 13 and ijk[:, 1].min() >= 6 and ijk[:, 1].max() <= 9
    assert set(ijk[:, 2]) == {2, 3} and core[8, 7, 2]
    assert 0 < core.sum() < 10 * 4 * 2  # smaller than the box
    # the in-plane core the slice dataset builds per slice is every slice of the 3D core
    plane = box_core_plane((20, 20), [[4, 13], [6, 9], [2, 3]])
    assert all(np.array_equal(core[..., k], plane) for k in (2, 3)) and not core[..., [0, 1, 4, 5]].any()
    one_voxel = box_core_plane((5, 5), [[2, 2], [3, 3]])
    assert one_voxel.sum() == 1 and one_voxel[2, 3]


def test_segmentation_loss_skips_rows_without_a_mask():
    torch.manual_seed(0)
    b, k, h, w = 4, 3, 16, 16
    logits = torch.randn(b, k, h, w, requires_grad=True)
    labels = torch.randint(0, 3, (b, h, w))
    from mtilib.models import MTIOutput

    out = MTIOutput(logits, None, None, {})
    batch = {"label": labels, "has_lesion": torch.ones(b, dtype=torch.bool)}
    _, parts = multitask_loss(out, {**batch, "seg_index": torch.tensor([0, 2])}, LossWeights())
    torch.testing.assert_close(parts["seg"], LossWeights().seg * dice_ce_loss(logits[[0, 2]], labels[[0, 2]]).detach())
    total, parts = multitask_loss(out, {**batch, "seg_index": torch.tensor([], dtype=torch.long)}, LossWeights())
    assert float(parts["seg"]) == 0.0
    total.backward()  # the graph is kept: DDP sees every parameter used
    assert logits.grad is not None and float(logits.grad.abs().sum()) == 0.0


def test_tim_pools_inside_the_given_mask_for_box_rows_only():
    torch.manual_seed(0)
    model = build_model(ModelConfig(width=4, descriptor_dim=8, head_hidden=16, tdd_dim=16)).eval()
    x = torch.rand(2, 4, 32, 32) + 0.5
    t = torch.tensor([[0.0, 35.0, 70.0, 180.0]] * 2)
    pool = torch.zeros(2, 1, 32, 32)
    pool[0, 0, 10:20, 12:22] = 1.0  # row 0 is a box case; row 1 is not
    with torch.no_grad():
        plain = model(x, t)
        boxed = model(x, t, pool_mask=pool)
        feats = [f.reshape(2, 4, *f.shape[1:]) for f in model.encoder(x.reshape(8, 1, 32, 32))]
        expected, measured = model.tim.describe(x, feats[:2], pool)
    torch.testing.assert_close(boxed.aux["descriptors"][0], expected[0])
    torch.testing.assert_close(boxed.aux["measured_enhancement"][0], measured[0])
    torch.testing.assert_close(boxed.aux["descriptors"][1], plain.aux["descriptors"][1])
    assert not torch.allclose(boxed.aux["descriptors"][0], plain.aux["descriptors"][0])


def test_a_crop_moves_the_box_with_it():
    from mtilib.data.dataset import crop_volume

    vol = CaseVolume.from_arrays("a", np.random.default_rng(0).random((4, 20, 20, 6)) + 1, [0, 35, 70, 180],
                                 [1, 1, 1], None, 0, [0.1, 0.2, 0.3], None, [[5, 9], [6, 8], [1, 2]])
    cropped = crop_volume(vol, (slice(4, 14), slice(5, 15), slice(0, 6)))
    assert cropped.lesion_box == ((1, 5), (1, 3), (1, 2)) and cropped.images.shape == (4, 10, 10, 6)
    assert crop_volume(vol, (slice(7, 20), slice(0, 20), slice(0, 6))).lesion_box[0] == (0, 2)  # clipped
