"""A client's own writes on top of the node's state, sans-I/O (used by `CallState`).

Local state is kept by rebasing: the last converged state the node sent, plus the writes it
acknowledged since, plus the writes still waiting for a reply. A write the node refuses, or that
was never sent, is rolled back; one whose reply never comes (timeout, lost socket) is kept, as
daily-js does, until the node's next state says otherwise.
"""

from __future__ import annotations

from roomstate.crdt import Json

__all__ = ["LocalWrites", "SessionWrite"]

SessionWrite = tuple[dict[str, Json], str, list[str]]  # (data, mergeStrategy, keysToDelete)


class LocalWrites:
    """This client's writes on top of the node's state: the last state the node sent, plus the
    writes it acknowledged since, plus those still waiting for a reply (by request id)."""

    def __init__(self) -> None:
        self._session_base: dict[str, Json] = {}  # the node's last state + writes acked since
        self._session_pending: dict[int, SessionWrite] = {}  # request id -> write not yet acked
        # userData as the node has it as far as known (joined, or the last write answered), and
        # the writes not answered yet
        self._user_data_base: Json = None
        self._user_data_pending: dict[int, Json] = {}
        self.session_data: dict[str, Json] = {}  # base with the pending writes applied

    @property
    def user_data(self) -> Json:
        """The newest userData write not answered yet, else the last the node took."""
        pending = list(self._user_data_pending.values())
        return pending[-1] if pending else self._user_data_base

    def reset(self, session_data: dict[str, Json], user_data: Json) -> None:
        """A join's state, with no write pending."""
        self._user_data_base = user_data
        self._user_data_pending.clear()
        self._session_pending.clear()
        self.rebase_session(session_data)

    def rebase_session(self, session_data: dict[str, Json]) -> None:
        """The node's converged session data; the writes still pending stay on top."""
        self._session_base = dict(session_data)
        self._refresh_session()

    def forget(self) -> None:
        """Drop the session data and every write still pending."""
        self._session_base = {}
        self._session_pending.clear()
        self._user_data_pending.clear()
        self._refresh_session()

    def add_user_data(self, rid: int, data: Json) -> None:
        self._user_data_pending[rid] = data

    def add_session_write(self, rid: int, write: SessionWrite) -> None:
        self._session_pending[rid] = write
        self._refresh_session()

    def settle(self, rid: int, ok: bool) -> bool:
        """A write answered (`ok`: stored, or maybe: no reply) is folded into the base; one
        refused, or never sent, is dropped. Returns whether it was a userData write (a refused
        one is undone even when an earlier one, refused too, is still pending)."""
        if rid in self._user_data_pending:
            data = self._user_data_pending.pop(rid)
            if ok:
                self._user_data_base = data
            return True
        write = self._session_pending.pop(rid, None)
        if write is not None:
            if ok:
                self._session_base = _apply_write(self._session_base, write)
            self._refresh_session()
        return False

    def _refresh_session(self) -> None:
        view = self._session_base
        for write in self._session_pending.values():
            view = _apply_write(view, write)
        self.session_data = dict(view)


def _apply_write(base: dict[str, Json], write: SessionWrite) -> dict[str, Json]:
    """A session-data write applied to a local copy, as the node applies it to the replica."""
    data, strategy, keys_to_delete = write
    if strategy == "replace":
        return dict(data)
    merged = {**base, **data}
    for key in keys_to_delete:
        merged.pop(key, None)
    return merged
