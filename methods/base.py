"""The method contract, re-exported from :mod:`bench.method` where it lives.

Plug-ins written as ``from methods.base import Method, Requirements`` keep working; new code
may import from ``bench.method`` directly.
"""

from __future__ import annotations

from bench.method import (
    COMPONENT_KINDS,
    EVIDENCE_KINDS,
    Baseline,
    Configurable,
    Method,
    MethodContext,
    NoConfig,
    Requirements,
    Resources,
    config_to_json,
    make_config,
)

__all__ = [
    "COMPONENT_KINDS",
    "EVIDENCE_KINDS",
    "Baseline",
    "Configurable",
    "Method",
    "MethodContext",
    "NoConfig",
    "Requirements",
    "Resources",
    "config_to_json",
    "make_config",
]
