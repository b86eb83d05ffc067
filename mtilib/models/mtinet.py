"""MTI-Net assembled from its modules (DESIGN §3).

``x (B, P, H, W)`` phase images, ``times_s (B, P)`` -> :class:`MTIOutput`.

1. a phase encoder shared by all phases (phases folded into the batch), stem + 4 residual stages
   of widths ``(w, 2w, 4w, 8w)``, each halving the resolution (bottleneck at H/16; see
   ``ModelConfig.layout`` for the first release's layout);
2. the shallow phase Transformer at the bottleneck (or the mean over phases);
3. MdIEF at the four skip levels (or a 1×1-conv fusion);
4. a U-Net decoder -> the preliminary lesion probability ``s0``;
5. TIM: ``s0`` pools region descriptors (seg -> reg), the regression embedding FiLMs the
   decoder (reg -> seg) before the final segmentation;
6. regression and classification heads.

The adversary (TDD) is a separate module that only the trainer uses.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from mtilib.constants import LABEL_NAMES, NUM_CLASSES, PHASES
from mtilib.models.blocks import ConvNormAct, ResBlock
from mtilib.models.heads import ClassificationHead, RegressionHead, SegmentationHead
from mtilib.models.mdief import ENTROPIES, MdIEF, PlainFusion
from mtilib.models.tim import TaskInteraction
from mtilib.models.transformer import PhaseMean, PhaseTransformer

TASKS = ("seg", "reg", "cls")
#: Encoder-decoder layouts (see ``ModelConfig.layout``).
LAYOUTS = ("compact", "wide")


@dataclass
class ModelConfig:
    """Everything that defines a network. ``arch``: ``"mtinet"`` or ``"unet"`` (early fusion).

    Switches ``mdief``, ``transformer``, ``tim``, ``tdd`` replace each module by its plain
    alternative; ``tasks`` builds single-task networks (e.g. ``("seg",)``). All four switches off
    with all three tasks is the plain multi-task network.
    """

    arch: str = "mtinet"
    phases: int = len(PHASES)
    num_classes: int = NUM_CLASSES
    num_labels: int = len(LABEL_NAMES)
    width: int = 32
    blocks_per_stage: int = 1
    mdief: bool = True
    transformer: bool = True
    tim: bool = True
    tdd: bool = True
    tasks: tuple[str, ...] = TASKS
    transformer_layers: int = 2
    transformer_heads: int = 4
    descriptor_dim: int = 32
    head_hidden: int = 64  # hidden width of the regression head (its embedding feeds TIM's FiLM)
    # With TIM, the regression head predicts a correction to the enhancement TIM measured under
    # s0 (a residual) instead of the enhancement itself; see RegressionHead.
    enhancement_residual: bool = True
    # With the residual: a learned per-phase gain on the measurement, (1 + g)·measured + correction
    # (see RegressionHead). On in the course preset, where it was measured; off elsewhere until it
    # is measured there. Checkpoints from before this field: False.
    enhancement_gain: bool = False
    # "compact": every encoder stage halves the resolution (the stem alone works at full
    # resolution): skips at H (stem, w), H/2 (w), H/4 (2w), H/8 (4w), bottleneck 8w at H/16, and
    # the segmentation head is a 1×1 classifier; the layout and cost of a MONAI BasicUNet.
    # "wide": the first release's layout: stage 1 at full resolution, skips at H (w), H/2 (2w),
    # H/4 (4w), bottleneck at H/8, a 3×3 conv block before the classifier; twice the channels at
    # every resolution, about 2.4× the convolution work. Checkpoints from before this field: "wide".
    layout: str = "compact"
    cls_hidden: int = 128  # hidden width of the classification head
    highpass_sigma: float = 0.1
    # What MdIEF's branch weights measure: "spatial" (entropy of each branch's energy over
    # positions; the default and the first release's) or "spectral" (entropy of its power spectrum).
    mdief_entropy: str = "spatial"
    dropout: float = 0.1  # in the task heads
    transformer_dropout: float = 0.0  # in the phase Transformer and the TDD
    tdd_dim: int = 64
    tdd_layers: int = 2
    tdd_heads: int = 4

    def __post_init__(self):
        self.tasks = tuple(self.tasks)
        unknown = set(self.tasks) - set(TASKS)
        if unknown or not self.tasks:
            raise ValueError(f"tasks must be a non-empty subset of {TASKS}, got {self.tasks}")
        if self.layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, not {self.layout!r}")
        if self.mdief_entropy not in ENTROPIES:
            raise ValueError(f"mdief_entropy must be one of {tuple(ENTROPIES)}, not {self.mdief_entropy!r}")
        if self.arch not in ("mtinet", "unet"):
            raise ValueError(f"arch must be 'mtinet' or 'unet', not {self.arch!r}")
        if self.arch == "unet" and self.tasks != ("seg",):
            raise ValueError("the early-fusion U-Net baseline is segmentation-only: tasks=('seg',)")
        if self.tim and not {"seg", "reg"} <= set(self.tasks):
            raise ValueError("TIM links segmentation and regression: it needs tasks 'seg' and 'reg'")
        if self.tdd and not {"reg", "cls"} <= set(self.tasks):
            raise ValueError("TDD judges regression and classification together: it needs 'reg' and 'cls'")
        # the bottleneck has 8·width channels, split over the Transformer's heads
        if self.width % 2 or (8 * self.width) % self.transformer_heads:
            raise ValueError(f"width {self.width} must be even and 8·width divisible by the heads")

    def to_dict(self) -> dict:
        return asdict(self)

    def with_overrides(self, **overrides) -> ModelConfig:
        """A copy with some fields changed (validated like a new config)."""
        return ModelConfig(**{**self.to_dict(), **overrides}) if overrides else self

    def architecture(self) -> dict:
        """The fields that shape the weights (everything but training-time regularisation):
        two configs with equal architectures can exchange state dicts."""
        return {k: v for k, v in self.to_dict().items() if k not in ("dropout", "transformer_dropout")}

    @classmethod
    def from_dict(cls, data: dict) -> ModelConfig:
        return cls(**data)

    @property
    def widths(self) -> tuple[int, int, int, int]:
        """Channels of the four encoder stages."""
        w = self.width
        return (w, 2 * w, 4 * w, 8 * w)

    @property
    def skip_widths(self) -> tuple[int, ...]:
        """Channels of the skip levels, finest first (the encoder's maps but the bottleneck)."""
        return (self.width, *self.widths[:3]) if self.layout == "compact" else self.widths[:3]

    @property
    def downsampling(self) -> int:
        """Input size over bottleneck size: H and W must be multiples of it."""
        return 16 if self.layout == "compact" else 8


@dataclass
class MTIOutput:
    """Network outputs. Tasks a network does not do are ``None``.

    seg_logits (B, K, H, W); enhancement (B, P-1); class_logits (B, C); aux: tensors for plots and
    losses (``prelim_logits``, ``descriptors``, ``pooled``, ``measured_enhancement``,
    ``entropy_weights`` (list per level of (B, 3, C)), ``phase_attention``, ``phase_pool_weights``).
    """

    seg_logits: torch.Tensor | None
    enhancement: torch.Tensor | None
    class_logits: torch.Tensor | None
    aux: dict = field(default_factory=dict)


class Encoder(nn.Module):
    """Stem + 4 residual stages; returns the skip maps (finest first) and the bottleneck last.

    ``halve_first_stage=True`` (layout "compact"): ``(N, cin, H, W) -> [stem (N, w, H, W),
    (N, w, H/2, W/2), (N, 2w, H/4, W/4), (N, 4w, H/8, W/8), bottleneck (N, 8w, H/16, W/16)]``.
    ``False`` (layout "wide"): ``-> [(N, w, H, W), (N, 2w, H/2, W/2), (N, 4w, H/4, W/4),
    bottleneck (N, 8w, H/8, W/8)]`` (the stem's output is not a skip).
    """

    def __init__(self, cin: int, widths: tuple[int, ...], blocks_per_stage: int = 1,
                 halve_first_stage: bool = True):
        super().__init__()
        self.halve_first_stage = halve_first_stage
        self.stem = ConvNormAct(cin, widths[0])
        stages = []
        prev = widths[0]
        for i, width in enumerate(widths):
            blocks = [ResBlock(prev, width, stride=2 if i or halve_first_stage else 1)]
            blocks += [ResBlock(width, width) for _ in range(blocks_per_stage - 1)]
            stages.append(nn.Sequential(*blocks))
            prev = width
        self.stages = nn.ModuleList(stages)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        feats = [x] if self.halve_first_stage else []
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        return feats


class UpBlock(nn.Module):
    """Upsample ×2 (bilinear), concatenate the skip, residual block. Output has ``cout`` channels."""

    def __init__(self, cin: int, cskip: int, cout: int):
        super().__init__()
        self.block = ResBlock(cin + cskip, cout)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        return self.block(torch.cat([x, skip], dim=1))


class Decoder(nn.Module):
    """U-Net decoder: bottleneck + skips (finest first) -> ``(B, skip_widths[0], H, W)``.

    ``up{k}`` climbs to skip level k (1 = full resolution) and has that level's channels.
    """

    def __init__(self, skip_widths: tuple[int, ...], bottleneck_width: int):
        super().__init__()
        self.levels = len(skip_widths)
        cin = bottleneck_width
        for k in range(self.levels, 0, -1):
            self.add_module(f"up{k}", UpBlock(cin, skip_widths[k - 1], skip_widths[k - 1]))
            cin = skip_widths[k - 1]

    def forward(self, bottleneck: torch.Tensor, skips: list[torch.Tensor]) -> torch.Tensor:
        x = bottleneck
        for k in range(self.levels, 0, -1):
            x = getattr(self, f"up{k}")(x, skips[k - 1])
        return x


def check_input(x: torch.Tensor, times_s: torch.Tensor, phases: int, downsampling: int = 16) -> None:
    """Raise a clear error for inputs the network cannot take."""
    if x.ndim != 4 or x.shape[1] != phases:
        raise ValueError(f"expected images of shape (B, {phases}, H, W), got {tuple(x.shape)}")
    if times_s.shape != x.shape[:2]:
        raise ValueError(f"expected phase times of shape {tuple(x.shape[:2])}, got {tuple(times_s.shape)}")
    if x.shape[-1] % downsampling or x.shape[-2] % downsampling:
        raise ValueError(f"H and W must be multiples of {downsampling} (the encoder halves them "
                         f"{downsampling.bit_length() - 1} times), got {tuple(x.shape[-2:])}")


class MTINet(nn.Module):
    """MTI-Net. ``forward(x (B, P, H, W), times_s (B, P)) -> MTIOutput``."""

    def __init__(self, config: ModelConfig | None = None, **overrides):
        super().__init__()
        config = (config or ModelConfig()).with_overrides(**overrides)
        self.config = config
        c = config
        w4 = c.widths[3]
        skips = c.skip_widths
        self.encoder = Encoder(1, c.widths, c.blocks_per_stage, halve_first_stage=c.layout == "compact")
        self.phase_mixer = (
            PhaseTransformer(w4, c.transformer_layers, c.transformer_heads, c.transformer_dropout)
            if c.transformer else PhaseMean()
        )
        self.has_seg = "seg" in c.tasks
        if self.has_seg:
            fusion = MdIEF if c.mdief else PlainFusion
            kwargs = {"highpass_sigma": c.highpass_sigma, "entropy": c.mdief_entropy} if c.mdief else {}
            self.fusions = nn.ModuleList(fusion(ch, c.phases, **kwargs) for ch in skips)
            self.decoder = Decoder(skips, w4)
            self.seg_head = SegmentationHead(skips[0], c.num_labels, refine=c.layout == "wide")
            if c.tim:
                self.prelim_head = nn.Conv2d(skips[0], 1, 1)
        # Region descriptors feed the regression and classification heads (and the TDD); a
        # segmentation-only network has no use for them, and parameters without a gradient
        # would stall DistributedDataParallel.
        self.needs_descriptors = bool({"reg", "cls"} & set(c.tasks))
        if self.needs_descriptors:
            # TIM pools the two finest skip levels
            self.tim = TaskInteraction(list(skips[:2]), c.descriptor_dim, c.head_hidden, skips[0], enabled=c.tim)
        if "reg" in c.tasks:
            residual = c.tim and c.enhancement_residual  # the measurement to correct comes from TIM
            self.reg_head = RegressionHead(c.phases, c.descriptor_dim, w4, c.head_hidden, c.dropout,
                                           residual=residual, gain=residual and c.enhancement_gain)
        if "cls" in c.tasks:
            self.cls_head = ClassificationHead(
                c.phases, c.descriptor_dim, w4, c.num_classes, use_enhancement="reg" in c.tasks,
                hidden=c.cls_hidden, dropout=c.dropout,
            )

    def forward(self, x: torch.Tensor, times_s: torch.Tensor, pool_mask: torch.Tensor | None = None) -> MTIOutput:
        """``pool_mask (B, 1, H, W)`` (training on box-labelled cases): where a row is not all zero,
        TIM pools under it instead of the preliminary mask s0 (a case known only by its lesion box
        teaches no segmentation, so s0 cannot be trusted to find its lesion). Only networks whose
        TIM pools under s0 use it; the others ignore it."""
        c = self.config
        check_input(x, times_s, c.phases, c.downsampling)
        b, p, h, w = x.shape
        folded = x.reshape(b * p, 1, h, w)
        feats = [f.reshape(b, p, *f.shape[1:]) for f in self.encoder(folded)]
        skips, bottleneck = feats[:-1], feats[-1]
        _, summary, aux = self.phase_mixer(bottleneck, times_s)
        pooled = summary.float().mean((-2, -1))
        aux["pooled"] = pooled

        dec = None
        mask = None
        if self.has_seg:
            fused = []
            aux["entropy_weights"] = []
            for fusion, f in zip(self.fusions, skips):
                fmap, weights = fusion(f)
                fused.append(fmap)
                if weights is not None:
                    aux["entropy_weights"].append(weights.float())
            dec = self.decoder(summary, fused)
            if c.tim:
                aux["prelim_logits"] = self.prelim_head(dec).float()
                mask = torch.sigmoid(aux["prelim_logits"])
                if pool_mask is not None:
                    given = pool_mask.float().flatten(1).sum(1) > 0  # on the device: no host sync
                    mask = torch.where(given[:, None, None, None], pool_mask.float(), mask)

        descriptors = None
        if self.needs_descriptors:
            descriptors, measured = self.tim.describe(x, skips[:2], mask)
            aux["descriptors"] = descriptors
            aux["measured_enhancement"] = measured

        enhancement = embedding = None
        if "reg" in c.tasks:
            enhancement, embedding = self.reg_head(descriptors, pooled, aux["measured_enhancement"])
            enhancement = enhancement.float()
        seg_logits = None
        if self.has_seg:
            if c.tim:
                dec = self.tim.modulate(dec, embedding)
            seg_logits = self.seg_head(dec).float()
        class_logits = None
        if "cls" in c.tasks:
            class_logits = self.cls_head(pooled, descriptors, enhancement).float()
        return MTIOutput(seg_logits, enhancement, class_logits, aux)
