"""Exceptions raised by `roomstate.crdt`.

CrdtError                 the root: a value or encoding the data types cannot accept
├── ClockDriftError       a remote stamp is further ahead of the local clock than allowed
└── CodecError            bytes that are not a state of a known codec version, or text
                          that is not an HLC stamp
"""

from __future__ import annotations

__all__ = ["ClockDriftError", "CodecError", "CrdtError"]


class CrdtError(Exception):
    """Root of every error raised by `roomstate.crdt`."""


class ClockDriftError(CrdtError):
    """A remote stamp is more than the drift bound ahead of the local wall clock."""


class CodecError(CrdtError):
    """Bytes that do not decode to a state of a supported codec version, or text that is not
    an encoded HLC stamp (`Stamp.decode`)."""
