"""One config object for a run (DESIGN §4): dataclasses with a YAML round trip and presets.

``TrainConfig.preset("quick" | "course" | "paper")``; ``cfg.to_yaml(path)``;
``TrainConfig.from_yaml(path)``. Unknown keys in a YAML file are an error (a typo must not be
silently ignored).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from mtilib.losses import GAN_KINDS, LossWeights
from mtilib.models import ModelConfig


@dataclass
class DataConfig:
    """Where the data are and how slices are made. ``image_size`` is the in-plane size the
    network sees (slices are resized); ``val_fraction`` of the training cases (by case, stratified
    by class) is held out for validation and checkpoint selection."""

    image_size: int = 64
    val_fraction: float = 0.2
    negative_ratio: float = 0.5
    roi_crop: bool = False
    augment: bool = True
    min_lesion_pixels: int = 4
    num_workers: int = 0
    class_weights: bool = False  # inverse-frequency weights in the classification CE
    # small lesions cross one or two slices: repeat a case's lesion slices up to this many items
    # per epoch so that they are seen about as often as large ones (0: off)
    lesion_slice_floor: int = 0


@dataclass
class OptimConfig:
    """AdamW with linear warm-up then cosine decay (per step); a separate Adam for the discriminator.
    ``batch_size`` is global: under DDP each process takes ``batch_size / world_size``.
    ``patience``: early stopping on the validation score (0: off). ``ema_decay``: validate and
    save an exponential moving average of the weights (0: off; :mod:`mtilib.train.ema`)."""

    epochs: int = 30
    batch_size: int = 16
    lr: float = 2e-3
    weight_decay: float = 1e-4
    warmup_epochs: float = 1.0
    min_lr_ratio: float = 0.05
    grad_clip: float = 1.0
    d_lr: float = 2e-4
    d_betas: tuple[float, float] = (0.5, 0.999)
    # early stopping: end the run once the validation score has not improved for this many
    # epochs (0: off; needs validation cases). The schedule still follows ``epochs``.
    patience: int = 0
    # exponential moving average of the weights, used for validation and the checkpoints
    # (0: off; see train.ema)
    ema_decay: float = 0.0


@dataclass
class AdversarialConfig:
    """TDD training: objective, instance noise, label smoothing of the real class token, and the
    schedule of the adversarial weight (0 during ``warmup_epochs``, then a linear ramp to λ_adv
    over ``ramp_epochs``)."""

    kind: str = "lsgan"
    instance_noise: float = 0.05
    real_label_smoothing: float = 0.1
    warmup_epochs: float = 2.0
    ramp_epochs: float = 3.0


@dataclass
class TrainConfig:
    name: str = "mtinet"
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"  # auto | bf16 | fp32 (auto: bf16 only where measured faster, see train.fastpath)
    channels_last: str | bool = "auto"  # auto | true | false (auto: measured, see train.fastpath)
    compile: bool = False
    deterministic: bool = False
    log_every: int = 0  # steps between log lines inside an epoch (0: epoch lines only)
    init_checkpoint: str | None = None  # fine-tune: start from these weights (same model config)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossWeights = field(default_factory=LossWeights)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    adversarial: AdversarialConfig = field(default_factory=AdversarialConfig)

    def __post_init__(self):
        if self.adversarial.kind not in GAN_KINDS:
            raise ValueError(f"adversarial.kind must be one of {GAN_KINDS}, not {self.adversarial.kind!r}")
        step = self.model.downsampling
        if self.data.image_size % step:
            halvings = step.bit_length() - 1
            raise ValueError(f"data.image_size must be a multiple of {step} for the {self.model.layout!r} "
                             f"layout (the encoder halves it {halvings} times), got {self.data.image_size}")

    # --- presets ---------------------------------------------------------------------------------
    @classmethod
    def preset(cls, name: str) -> TrainConfig:
        """``quick``: CI and QUICK notebooks (seconds). ``course``: the shipped checkpoint, about 11
        minutes of training on 2 CPU cores where bf16 measures faster (an estimated 20 where fp32
        stays). Made for ``make checkpoint``'s 840 phantom cases: 5 epochs, each case seen about 5
        times (a network that saw 224 cases 15 times fitted them, Dice 0.97 against 0.90 on new
        ones); warm-ups in steps about those of 15 epochs over a third of the cases; batch 8: on a
        CPU a step costs the same per sample at batch 8 as at 16, and twice the updates per sample
        converge sooner; every epoch, no early stop; weights averaged over the steps; small
        lesions' slices repeated until a case contributes 6; the regression head may scale the
        measurement it corrects (``model.enhancement_gain``); no geometric augmentation: train
        and test phantoms come from one generator, and the rotation's bilinear resampling blurs
        lesions of a few pixels; the measurements are in docs/DESIGN.md, "the course recipe").
        ``paper``: full size (DESIGN §3 widths, 128² slices) for a GPU, with augmentation."""
        if name == "quick":
            return cls(
                name="quick",
                model=ModelConfig(width=8, descriptor_dim=16, head_hidden=32, tdd_dim=32),
                data=DataConfig(image_size=64, negative_ratio=0.5),
                optim=OptimConfig(epochs=3, batch_size=8, lr=3e-3, warmup_epochs=0.5),
                adversarial=AdversarialConfig(warmup_epochs=1, ramp_epochs=1),
            )
        if name == "course":
            return cls(
                name="course",
                model=ModelConfig(width=16, enhancement_gain=True),
                data=DataConfig(image_size=64, lesion_slice_floor=6, min_lesion_pixels=2, augment=False),
                optim=OptimConfig(epochs=5, batch_size=8, lr=2e-3, warmup_epochs=0.33, ema_decay=0.998),
                adversarial=AdversarialConfig(warmup_epochs=0.67, ramp_epochs=1.0),
            )
        if name == "paper":
            return cls(
                name="paper",
                model=ModelConfig(width=32, blocks_per_stage=2),
                data=DataConfig(image_size=128, num_workers=4),
                optim=OptimConfig(epochs=200, batch_size=32, lr=1e-3, warmup_epochs=5),
                adversarial=AdversarialConfig(warmup_epochs=20, ramp_epochs=20),
            )
        raise ValueError(f"unknown preset {name!r}; choose quick, course or paper")

    # --- (de)serialisation -----------------------------------------------------------------------
    def to_dict(self) -> dict:
        return _to_plain(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        data = dict(data)
        nested = {"model": ModelConfig, "loss": LossWeights, "data": DataConfig, "optim": OptimConfig,
                  "adversarial": AdversarialConfig}
        kwargs = {}
        for key, value in data.items():
            if key in nested:
                kwargs[key] = _build(nested[key], value or {}, key)
            else:
                kwargs[key] = value
        return _build(cls, kwargs, "config")

    def to_yaml(self, path: str | Path | None = None) -> str:
        text = yaml.safe_dump(self.to_dict(), sort_keys=False)
        if path is not None:
            Path(path).write_text(text)
        return text

    @classmethod
    def from_yaml(cls, path: str | Path) -> TrainConfig:
        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise ValueError(f"{path}: not valid YAML ({exc})") from exc
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a mapping of config keys")
        try:
            return cls.from_dict(data)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{path}: {exc}") from exc


def _to_plain(value):
    if isinstance(value, dict):
        return {k: _to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_plain(v) for v in value]
    return value


def _build(cls, data: dict, where: str):
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ValueError(f"unknown key(s) in {where}: {', '.join(sorted(unknown))}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            continue
        value = data[f.name]
        if isinstance(value, list):  # YAML has no tuples
            value = tuple(value)
        if not _type_fits(value, hints[f.name]):
            raise ValueError(f"{where}.{f.name} must be {_type_name(hints[f.name])}, got {value!r}")
        kwargs[f.name] = value
    return cls(**kwargs)


def _type_fits(value, hint) -> bool:
    """Whether a config value read from YAML fits a field's annotation (``epochs: "30"`` does not
    fit ``int``; an int fits ``float``; a bool fits neither)."""
    if dataclasses.is_dataclass(hint):
        return isinstance(value, hint)
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_type_fits(value, arg) for arg in typing.get_args(hint))
    if origin is tuple:
        args = [a for a in typing.get_args(hint) if a is not Ellipsis]
        return isinstance(value, tuple) and all(_type_fits(v, args[0]) for v in value) if args else True
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, hint) if isinstance(hint, type) else True


def _type_name(hint) -> str:
    return str(hint).replace("typing.", "").replace("<class '", "").replace("'>", "")
