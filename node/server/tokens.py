"""Meeting tokens over REST, in Daily's names: the ``properties`` of ``POST /v1/meeting-tokens``
checked and turned into `make_token`'s arguments, and a token's claims turned back into those
properties for ``GET /v1/meeting-tokens/{token}``.

Every property is either carried into the token or refused with a message naming it: a token
never silently lacks what its creator asked for.
"""

from __future__ import annotations

from typing import Any, Final

from roomstate.auth import CAN_ADMIN_CODES

__all__ = ["PROPERTIES", "TokenPropertyError", "claims_to_properties", "token_arguments"]


class TokenPropertyError(ValueError):
    """A ``properties`` object that cannot become a token; the message names the property."""


_TYPES: Final = {str: "a string", bool: "a boolean", int: "an integer"}

# Daily's property name -> (its type, `make_token`'s argument)
PROPERTIES: Final[dict[str, tuple[type, str]]] = {
    "room_name": (str, "room"),
    "user_name": (str, "user_name"),
    "user_id": (str, "user_id"),
    "is_owner": (bool, "owner"),
    "exp": (int, "exp"),
    "nbf": (int, "nbf"),
    "eject_at_token_exp": (bool, "eject_at_token_exp"),
    "eject_after_elapsed": (int, "eject_after_elapsed"),
}
PERMISSIONS: Final = ("hasPresence", "canAdmin")
CAN_ADMIN: Final = tuple(CAN_ADMIN_CODES.values())  # Daily's admin tasks


def token_arguments(body: dict[str, Any]) -> dict[str, Any]:
    """`make_token`'s keyword arguments (the room as ``room``) from a request body
    ``{"properties": {...}}``; `TokenPropertyError` for anything it cannot carry."""
    extra = sorted(set(body) - {"properties"})
    if extra:
        raise TokenPropertyError(f"unknown field '{extra[0]}'; the body is {{\"properties\": …}}")
    props = body.get("properties")
    if not isinstance(props, dict):
        raise TokenPropertyError("'properties' is required: an object with 'room_name'")
    unknown = sorted(set(props) - {*PROPERTIES, "permissions"})
    if unknown:
        takes = ", ".join([*PROPERTIES, "permissions"])
        info = f"'{unknown[0]}' is not a meeting-token property roomstate carries; it takes {takes}"
        raise TokenPropertyError(info)
    if not isinstance(props.get("room_name"), str):
        raise TokenPropertyError("'properties.room_name' is required")
    args: dict[str, Any] = {}
    for name, (kind, argument) in PROPERTIES.items():
        value = props.get(name)
        if value is None:
            continue
        if type(value) is not kind:  # (True is not an int here)
            unit = " (Unix seconds)" if name in ("exp", "nbf") else ""
            unit = " (seconds)" if name == "eject_after_elapsed" else unit
            raise TokenPropertyError(f"'{name}' must be {_TYPES[kind]}{unit}")
        args[argument] = value
    if args.get("eject_at_token_exp") and "exp" not in args:
        raise TokenPropertyError("'eject_at_token_exp' needs 'exp': the time to eject at")
    args.update(_permissions(props.get("permissions", {})))
    return args


def _permissions(permissions: Any) -> dict[str, Any]:
    if not isinstance(permissions, dict):
        raise TokenPropertyError("'permissions' must be an object")
    unknown = sorted(set(permissions) - set(PERMISSIONS))
    if unknown:
        takes = " and ".join(PERMISSIONS)
        info = f"'permissions.{unknown[0]}' is not a permission roomstate carries; it takes {takes}"
        raise TokenPropertyError(info)
    args: dict[str, Any] = {}
    has_presence = permissions.get("hasPresence", True)
    if not isinstance(has_presence, bool):
        raise TokenPropertyError("'permissions.hasPresence' must be a boolean")
    args["has_presence"] = has_presence
    can_admin = permissions.get("canAdmin", False)
    tasks = ", ".join(f'"{task}"' for task in CAN_ADMIN)
    if isinstance(can_admin, list):
        bad = [task for task in can_admin if task not in CAN_ADMIN]
        if bad:
            raise TokenPropertyError(f"'permissions.canAdmin' lists {bad[0]!r}; it takes {tasks}")
        args["can_admin"] = tuple(dict.fromkeys(can_admin)) or False
    elif isinstance(can_admin, bool):
        args["can_admin"] = can_admin
    else:
        info = f"'permissions.canAdmin' must be a boolean or a list of {tasks}"
        raise TokenPropertyError(info)
    return args


def claims_to_properties(claims: dict[str, Any]) -> dict[str, Any]:
    """A verified token's claims as Daily's properties (those it carries, in their types)."""
    short = {
        "r": "room_name",
        "u": "user_name",
        "ud": "user_id",
        "o": "is_owner",
        "exp": "exp",
        "nbf": "nbf",
        "ejt": "eject_at_token_exp",
        "eje": "eject_after_elapsed",
    }
    props: dict[str, Any] = {}
    for claim, name in short.items():
        value = claims.get(claim)
        kind = PROPERTIES[name][0]
        if value is not None and type(value) is kind:
            props[name] = value
    permissions: dict[str, Any] = {}
    given = claims.get("p")
    if isinstance(given, dict):
        if isinstance(given.get("hp"), bool):
            permissions["hasPresence"] = given["hp"]
        can_admin = given.get("ca")
        if isinstance(can_admin, bool):
            permissions["canAdmin"] = can_admin
        elif isinstance(can_admin, str | list):
            parts = can_admin.split(",") if isinstance(can_admin, str) else can_admin
            names = [CAN_ADMIN_CODES.get(str(part).strip(), str(part).strip()) for part in parts]
            permissions["canAdmin"] = [name for name in CAN_ADMIN if name in names]
    if permissions:
        props["permissions"] = permissions
    return props
