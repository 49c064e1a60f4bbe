"""Helpers for tests that start real ``commtunnel`` processes."""

from __future__ import annotations

import os


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without COMMTUNNEL_* settings, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("COMMTUNNEL_")}
    env.update(extra)
    return env
