"""roomstate: real-time room state on stateless edge nodes (app messages, user data, meeting
session data), and its Python client SDK.

    from roomstate import CallClient, RestClient

The packages, and what each owns, are drawn in docs/architecture.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"  # the one place the version is written (pyproject.toml reads it)

__all__ = ["CallClient", "RestClient", "__version__"]

if TYPE_CHECKING:
    from roomstate.sdk import CallClient, RestClient


def __getattr__(name: str) -> Any:
    # The SDK is imported on first use, so `import roomstate.crdt` (pure) loads no aiohttp.
    if name in ("CallClient", "RestClient"):
        from roomstate import sdk

        return getattr(sdk, name)
    raise AttributeError(f"module 'roomstate' has no attribute {name!r}")
