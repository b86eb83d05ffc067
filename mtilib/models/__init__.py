"""Networks: blocks, MdIEF, phase Transformer, TIM, heads, discriminator, MTI-Net, baselines."""

from __future__ import annotations

from torch import nn

from mtilib.models.baselines import BASELINES, EarlyFusionUNet, baseline_config
from mtilib.models.discriminator import TaskDrivenDiscriminator
from mtilib.models.mtinet import ModelConfig, MTINet, MTIOutput

__all__ = [
    "BASELINES", "EarlyFusionUNet", "MTINet", "MTIOutput", "ModelConfig", "TaskDrivenDiscriminator",
    "baseline_config", "build_discriminator", "build_model",
]


def build_model(config: ModelConfig) -> nn.Module:
    """The network a :class:`ModelConfig` describes."""
    return EarlyFusionUNet(config) if config.arch == "unet" else MTINet(config)


def build_discriminator(config: ModelConfig) -> TaskDrivenDiscriminator | None:
    """The TDD for a config with ``tdd=True`` (context = the flattened region descriptors), else None."""
    if not config.tdd:
        return None
    return TaskDrivenDiscriminator(
        config.num_classes, config.phases * config.descriptor_dim, config.tdd_dim, config.tdd_layers,
        config.tdd_heads, config.transformer_dropout,
    )
