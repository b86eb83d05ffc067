"""Inference helpers give the model back in the mode they found it (a training loop validates
between epochs and must find dropout switched on again)."""

import numpy as np
import torch

from mtilib.data.dataset import CaseVolume
from mtilib.models import ModelConfig, build_model
from mtilib.train.inference import evaluate_cases, evaluating, lesion_slice_outputs, predict_case


def small_volume() -> CaseVolume:
    rng = np.random.default_rng(0)
    images = rng.uniform(0.5, 1.5, size=(4, 32, 32, 3)).astype(np.float32)
    labels = np.zeros((32, 32, 3), np.uint8)
    labels[8:24, 8:24] = 1
    labels[12:18, 12:18, 1] = 2
    return CaseVolume.from_arrays("c0", images, [0.0, 35.0, 70.0, 180.0], (1.0, 1.0, 2.0), labels=labels,
                                  class_id=3, enhancement=np.array([0.5, 1.0, 0.8], np.float32))


def test_predict_evaluate_and_slice_outputs_restore_the_callers_mode():
    model = build_model(ModelConfig(width=4, descriptor_dim=8, head_hidden=16, tdd_dim=16))
    volume = small_volume()
    model.train()
    model.seg_head.eval()  # a caller's own mixed modes are kept too
    seen = []
    hook = model.register_forward_pre_hook(lambda module, args: seen.append(module.training))
    predict_case(model, volume, 32)
    evaluate_cases(model, [volume], 32)
    lesion_slice_outputs(model, [volume], 32, min_lesion_pixels=1)
    hook.remove()
    assert seen and not any(seen), "inference must run in eval mode"
    assert model.training and not model.seg_head.training
    assert all(m.training for name, m in model.named_modules() if not name.startswith("seg_head"))


def test_evaluating_restores_the_mode_after_an_error():
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Dropout(0.5)).train()
    try:
        with evaluating(model):
            assert not model.training and not model[1].training
            raise RuntimeError("inside")
    except RuntimeError:
        pass
    assert model.training and model[1].training
