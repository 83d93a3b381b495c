"""The behaviours scenario files can name, by ``kind``.

The built-in behaviours (`p2pay.sim.behaviours`), the cheaters (`p2pay.sim.cheaters`) and
the fake offers of discovery (`p2pay.sim.discovery`) are registered here, by name; a
behaviour of your own is added with `register`. The engine builds each peer's behaviour
with `make_behaviour`; the scenario reader checks a scenario's behaviours with
`check_behaviour` before anything runs.
"""

from __future__ import annotations

from typing import Any

from p2pay.sim.behaviours import BUILTIN, PeerBehaviour
from p2pay.sim.cheaters import CHEATERS
from p2pay.sim.discovery import FakeOffers

__all__ = ["BEHAVIOURS", "check_behaviour", "make_behaviour", "register"]

BEHAVIOURS: dict[str, type[PeerBehaviour]] = {}


def register(cls: type[PeerBehaviour]) -> type[PeerBehaviour]:
    """Make a behaviour class usable in scenario files under its ``kind`` (a class
    registered under a kind already taken replaces it)."""
    BEHAVIOURS[cls.kind] = cls
    return cls


for _cls in (*BUILTIN, *CHEATERS, FakeOffers):
    register(_cls)


def make_behaviour(kind: str, params: dict[str, Any]) -> PeerBehaviour:
    """A new behaviour object of `kind` with `params` (one per peer).

    Raises:
        ValueError: unknown kind; TypeError / ValueError: bad parameters.
    """
    cls = BEHAVIOURS.get(kind)
    if cls is None:
        raise ValueError(f"unknown behaviour {kind!r} (known: {', '.join(sorted(BEHAVIOURS))})")
    return cls(**params)


def check_behaviour(kind: str, role: str, params: dict[str, Any]) -> None:
    """Validate a scenario's behaviour for a role (builds one and drops it)."""
    behaviour = make_behaviour(kind, params)
    if role not in behaviour.roles:
        raise ValueError(f"{kind} applies to {' or '.join(behaviour.roles)}, not {role}")
