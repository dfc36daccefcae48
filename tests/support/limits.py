"""``[limits]`` and ``[anomaly]`` sections for tests, validated like the loader does.

Overrides are written as in the TOML file (durations as strings with a unit: ``"2m"``),
so a test cannot build a section an administrator could not write. The cross-key checks
of ``gateway.config._cross_checks`` (``tarpit_base <= tarpit_max``...) are not applied.
"""

from __future__ import annotations

from typing import Any

from gateway.config import AnomalyConfig, LimitsConfig


def limits_config(**overrides: Any) -> LimitsConfig:
    """``LimitsConfig`` with every default except ``overrides``."""
    return LimitsConfig.model_validate(overrides)


def anomaly_config(**overrides: Any) -> AnomalyConfig:
    """``AnomalyConfig`` with every default except ``overrides``."""
    return AnomalyConfig.model_validate(overrides)
