"""Baselines (DESIGN §3): the early-fusion U-Net, single-task networks, plain multi-task network.

The single-task and plain multi-task networks are :class:`MTINet` configurations (see
:func:`baseline_config`), so that every comparison changes one thing at a time.
"""

from __future__ import annotations

import torch
from torch import nn

from mtilib.models.heads import SegmentationHead
from mtilib.models.mtinet import Decoder, Encoder, ModelConfig, MTIOutput, check_input


class EarlyFusionUNet(nn.Module):
    """Phases stacked as input channels, one U-Net, segmentation only.

    ``x (B, P, H, W), times_s (B, P) (ignored) -> MTIOutput(seg_logits (B, K, H, W))``.
    """

    def __init__(self, config: ModelConfig | None = None, **overrides):
        super().__init__()
        config = (config or ModelConfig(arch="unet", tasks=("seg",), mdief=False, transformer=False,
                                        tim=False, tdd=False)).with_overrides(**overrides)
        self.config = config
        self.encoder = Encoder(config.phases, config.widths, config.blocks_per_stage,
                               halve_first_stage=config.layout == "compact")
        self.decoder = Decoder(config.skip_widths, config.widths[3])
        self.seg_head = SegmentationHead(config.skip_widths[0], config.num_labels, refine=config.layout == "wide")

    def forward(self, x: torch.Tensor, times_s: torch.Tensor, pool_mask: torch.Tensor | None = None) -> MTIOutput:
        """``pool_mask`` is accepted for the training loop's sake and ignored (no TIM here)."""
        check_input(x, times_s, self.config.phases, self.config.downsampling)
        feats = self.encoder(x)
        dec = self.decoder(feats[-1], feats[:-1])
        return MTIOutput(self.seg_head(dec).float(), None, None, {})


#: Names of the networks the results table compares, and what each changes.
BASELINES = {
    "mtinet": "MTI-Net, all modules",
    "no_mdief": "MTI-Net without MdIEF (1×1-conv fusion)",
    "mdief_spectral": "MTI-Net, MdIEF weighting its views by spectral entropy instead of entropy over positions",
    "no_transformer": "MTI-Net without the phase Transformer (mean over phases)",
    "no_tim": "MTI-Net without TIM (no pooling, FiLM or consistency loss)",
    "no_tdd": "MTI-Net without the adversarial discriminator",
    "multitask": "plain multi-task: shared encoder, three heads, summed losses",
    "seg_only": "single-task segmentation network",
    "reg_only": "single-task enhancement regression network",
    "cls_only": "single-task classification network",
    "unet": "early-fusion U-Net (phases as channels), segmentation only",
    "roi": "lesion-ROI classifier and regressor on a crop around the lesion (true box in training, "
           "the segmentation-only network's box at test)",
}


def baseline_config(name: str, base: ModelConfig | None = None) -> ModelConfig:
    """The :class:`ModelConfig` of a named network from :data:`BASELINES`, widths taken from ``base``."""
    if name not in BASELINES:
        raise ValueError(f"unknown network {name!r}; choose from {', '.join(BASELINES)}")
    data = (base or ModelConfig()).to_dict()
    data.update(arch="mtinet", mdief=True, mdief_entropy="spatial", transformer=True, tim=True, tdd=True,
                tasks=("seg", "reg", "cls"))
    off = dict(mdief=False, transformer=False, tim=False, tdd=False)
    changes = {
        "mtinet": {},
        "no_mdief": {"mdief": False},
        "mdief_spectral": {"mdief_entropy": "spectral"},
        "no_transformer": {"transformer": False},
        "no_tim": {"tim": False},
        "no_tdd": {"tdd": False},
        "multitask": off,
        "seg_only": {**off, "tasks": ("seg",)},
        "reg_only": {**off, "tasks": ("reg",)},
        "cls_only": {**off, "tasks": ("cls",)},
        "unet": {**off, "arch": "unet", "tasks": ("seg",)},
        # the network of the lesion-ROI baseline: its inputs are crops (mtilib.data.dataset.lesion_box)
        "roi": {**off, "tasks": ("reg", "cls")},
    }[name]
    data.update(changes)
    return ModelConfig(**data)
