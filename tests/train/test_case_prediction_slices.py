"""predict_case keeps the per-slice class probabilities and enhancement it aggregates (notebook 07
compares aggregation rules on them)."""

import numpy as np
import pytest
import torch

from mtilib.data.dataset import CaseVolume, aggregate_case
from mtilib.models import EarlyFusionUNet, ModelConfig, MTINet
from mtilib.train import predict_case


def _volume(slices=5, size=16):
    rng = np.random.default_rng(0)
    images = 100 + rng.random((4, size, size, slices)).astype(np.float32)
    labels = np.zeros((size, size, slices), np.uint8)
    labels[3:13, 3:13] = 1
    labels[6:10, 6:10, 1:4] = 2
    return CaseVolume.from_arrays("toy", images, (0, 35, 70, 180), (2.0, 2.0, 4.0), labels, 6, [0.5, 0.4, 0.3])


def test_slice_outputs_are_kept_and_aggregate_to_the_case_outputs():
    torch.manual_seed(0)
    model = MTINet(ModelConfig(width=8, descriptor_dim=8, head_hidden=16)).eval()
    vol = _volume()
    pred = predict_case(model, vol, batch_size=2)
    assert pred.slice_class_probs.shape == (5, 7)
    assert pred.slice_enhancement.shape == (5, 3)
    assert np.allclose(pred.slice_class_probs.sum(1), 1, atol=1e-5)
    probs, enh = aggregate_case(pred.slice_class_probs, pred.slice_enhancement, pred.slice_lesion_area)
    assert np.allclose(probs, pred.class_probs) and np.allclose(enh, pred.enhancement)


def test_segmentation_only_network_has_no_slice_outputs():
    model = EarlyFusionUNet(ModelConfig(arch="unet", tasks=("seg",), width=8, mdief=False, transformer=False,
                                        tim=False, tdd=False)).eval()
    pred = predict_case(model, _volume())
    assert pred.slice_class_probs is None and pred.slice_enhancement is None
    assert pred.label_map.shape == (16, 16, 5)


@pytest.mark.parametrize("field", ["slice_class_probs", "slice_enhancement"])
def test_fields_default_to_none(field):
    from mtilib.train.inference import CasePrediction

    pred = CasePrediction("c", None, None, None, None, np.zeros(3))
    assert getattr(pred, field) is None
