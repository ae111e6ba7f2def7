"""services.naas.names: what a container ID, an interface, a session and a pool may be called.

Role. The allocator and the CNI plugin check the same names with the same
rules, and the plugin must stay light (a runtime starts it for every pod), so
the rules live here, in a module that imports nothing but ``re``.

The rules are the CNI spec's where it has one: a container ID starts with an
alphanumeric character followed by alphanumerics, ``_``, ``.`` or ``-``; an
interface name is a Linux one (1-15 bytes, not ``.`` or ``..``, no ``/``, ``:``
or whitespace). Session IDs follow the container ID's rule plus ``:`` and
``@`` (SIP call IDs look like ``a84b4c76e66710@pc33.example.com``). None of them
may hold ``/``, which is what lets the stores key allocations by
``CONTAINER/INTERFACE/...`` and list a container's allocations by prefix.
Each check raises ``ValueError`` naming the field.
"""

from __future__ import annotations

import re

CONTAINER_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*")
SESSION_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:@\-]*")
POOL_NAME = re.compile(r"[a-z0-9][a-z0-9_.\-]*")
INTERFACE_BAD = re.compile(r"[/:\s]")
MAX_ID = 256  # characters of a container or session ID (the spec sets none; keys must end)
MAX_INTERFACE = 15  # IFNAMSIZ - 1
MAX_POOL = 63
MAX_LABEL = 253  # a pod's namespace or name (Kubernetes' DNS-subdomain bound)


def check_container_id(value: object, field: str = "container_id") -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{field}: a container ID is a non-empty string, got {value!r}")
    if len(value) > MAX_ID or not CONTAINER_ID.fullmatch(value):
        raise ValueError(f"{field}: {value[:80]!r} is not a container ID (an alphanumeric "
                         f"first, then alphanumerics, '_', '.' or '-'; at most {MAX_ID})")
    return value


def check_interface(value: object, field: str = "interface") -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{field}: an interface name is a non-empty string, got {value!r}")
    if (len(value.encode()) > MAX_INTERFACE or value in (".", "..")
            or INTERFACE_BAD.search(value)):
        raise ValueError(f"{field}: {value[:80]!r} is not an interface name (1-15 bytes, "
                         "not '.' or '..', no '/', ':' or whitespace)")
    return value


def check_session(value: object, field: str = "session") -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{field}: a session ID is a non-empty string, got {value!r}")
    if len(value) > MAX_ID or not SESSION_ID.fullmatch(value):
        raise ValueError(f"{field}: {value[:80]!r} is not a session ID (an alphanumeric "
                         f"first, then alphanumerics, '_', '.', ':', '@' or '-'; at most "
                         f"{MAX_ID})")
    return value


def check_pool_name(value: object, field: str = "pool") -> str:
    if not isinstance(value, str) or len(value) > MAX_POOL or not POOL_NAME.fullmatch(value):
        raise ValueError(f"{field}: {value!r} is not a pool name (lower-case alphanumerics, "
                         f"'_', '.' or '-', an alphanumeric first; at most {MAX_POOL})")
    return value


def check_label(value: object, field: str) -> str:
    """A pod's namespace or name: recorded, never parsed; any short string."""
    if not isinstance(value, str) or len(value) > MAX_LABEL:
        raise ValueError(f"{field}: expected a string of at most {MAX_LABEL} characters, "
                         f"got {value!r:.80}")
    return value
