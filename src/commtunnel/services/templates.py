"""Template rendering with python-liquid (safe for untrusted template sources).

Liquid cannot call Python code or reach the file system from a template
string, which is why it is used for user-supplied templates.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import liquid
from liquid.exceptions import LiquidError


class _BoundedEnvironment(liquid.Environment):
    """Liquid with resource limits, so an untrusted template cannot loop or grow forever."""

    loop_iteration_limit = 10_000
    output_stream_limit = 5_000_000  # characters of rendered output
    local_namespace_limit = 100_000  # bytes of assigned variables
    context_depth_limit = 30


class TemplateError(Exception):
    """A template failed to parse or render; the message is safe to show."""


class TemplateRenderer:
    """Parses liquid sources once (LRU cache) and renders them.

    Args:
        cache_size: parsed templates kept in memory.
    """

    def __init__(self, cache_size: int = 512) -> None:
        self._env = _BoundedEnvironment(autoescape=False)
        self._cache: OrderedDict[str, Any] = OrderedDict()
        self._cache_size = cache_size

    def _parse(self, source: str) -> Any:
        template = self._cache.get(source)
        if template is not None:
            self._cache.move_to_end(source)
            return template
        template = self._env.from_string(source)
        self._cache[source] = template
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return template

    def syntax_error(self, source: str) -> str | None:
        """The parse error of ``source`` as text, or None when it parses."""
        try:
            self._parse(source)
        except LiquidError as exc:
            return f"template syntax error: {exc}"
        return None

    def render(self, source: str, variables: dict[str, Any]) -> str:
        """Render ``source`` with ``variables``.

        Raises:
            TemplateError: parse or render failure.
        """
        try:
            return str(self._parse(source).render(**variables))
        except LiquidError as exc:
            raise TemplateError(str(exc)) from None
