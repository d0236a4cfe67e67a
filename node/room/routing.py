"""Who receives an app message on this node. Pure."""

from __future__ import annotations

from collections.abc import Collection

from roomstate.wire.events import AppMessage

__all__ = ["recipients"]


def recipients(message: AppMessage, local: Collection[str]) -> list[str]:
    """The local participants an app message goes to: everyone but the sender for "*", else
    the named ones that are here (each once, never the sender)."""
    if message.to == "*":
        return [sid for sid in local if sid != message.from_id]
    wanted = (message.to,) if isinstance(message.to, str) else message.to
    return [sid for sid in dict.fromkeys(wanted) if sid in local and sid != message.from_id]
