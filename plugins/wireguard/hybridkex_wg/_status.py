"""The daemon's status file: secret-free JSON, replaced atomically, read by ``hybridkex wg status``.

It also remembers each pair's highest epoch across restarts, so epochs keep growing
(the protocol resynchronises without it; it only keeps the numbers readable).
"""

from __future__ import annotations

import base64
import json
import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

from hybridkex import ConfigError
from hybridkex.io import atomic_write

from ._keys import wg_key_text
from ._rotation import PeerStatus

__all__ = ["STATUS_TYPE", "status_document", "write_status", "read_status", "highest_epochs", "format_status",
           "previous_peers", "daemon_alive", "problems", "STALE_STATUS_AFTER"]

STATUS_TYPE = "hybridkex-wg-status"
_VERSION = 2
#: A status file not rewritten for this long belongs to a daemon that is hung or gone.
STALE_STATUS_AFTER = 30.0


def _wall(value: float | None, offset: float) -> float | None:
    return None if value is None or value == float("inf") else round(value + offset, 3)


def peer_entry(interface: str, name: str, local_public: bytes, peer_public: bytes,
               endpoint: tuple[str, int] | None, failure_policy: str, interval: float, status: PeerStatus,
               offset: float, *, wg_handshake: int | None = None, qkd_note: str = "") -> dict[str, Any]:
    """One peer's status entry; clock values are converted to Unix time with ``offset``.

    ``wg_handshake``: WireGuard's latest handshake (Unix seconds, 0 never; None unknown).
    WireGuard reports it to the second, so a handshake in the same second as the install
    counts as using the current key."""
    entry = asdict(status)
    for key in ("last_rotation", "next_due", "fresh_until", "last_error_at", "established", "installed_at"):
        entry[key] = _wall(entry[key], offset)
    installed = entry["installed_at"]
    entry["wg_handshake"] = wg_handshake if wg_handshake else None
    entry["wg_uses_current_key"] = (None if wg_handshake is None or installed is None
                                    else bool(wg_handshake and wg_handshake >= int(installed)))
    entry["qkd_note"] = qkd_note
    entry.update({
        "interface": interface,
        "name": name,
        "peer": wg_key_text(peer_public),
        "local_public": wg_key_text(local_public),
        "endpoint": f"{endpoint[0]}:{endpoint[1]}" if endpoint else None,
        "failure_policy": failure_policy,
        "interval": interval,
    })
    return entry


def status_document(peers: Iterable[dict[str, Any]], *, listen: tuple[str, int] | None,
                    config: Path | None, started: float | None = None) -> dict[str, Any]:
    return {
        "type": STATUS_TYPE,
        "version": _VERSION,
        "pid": os.getpid(),
        "started": round(started, 3) if started is not None else None,
        "updated": round(time.time(), 3),
        "config": str(config) if config else None,
        "listen": f"{listen[0]}:{listen[1]}" if listen else None,
        "peers": sorted(peers, key=lambda p: (p["interface"], p["name"], p["peer"])),
    }


def write_status(path: Path, document: Mapping[str, Any]) -> None:
    """Replace the status file atomically (mode 0644: it holds no secret); creates its directory."""
    path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    atomic_write(path, (json.dumps(document, indent=1, sort_keys=True) + "\n").encode(), mode=0o644)


def read_status(path: str | os.PathLike[str]) -> dict[str, Any]:
    try:
        with open(path, "rb") as fh:
            document = json.loads(fh.read(64 << 20))
    except FileNotFoundError:
        raise ConfigError(f"status file {path} does not exist; is 'hybridkex wg run' running with this "
                          "status_file?") from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read status file {path}: {exc}") from None
    if not isinstance(document, dict) or document.get("type") != STATUS_TYPE:
        raise ConfigError(f"{path} is not a hybridkex wg status file")
    return document


def previous_peers(path: Path | None) -> dict[tuple[bytes, bytes], dict[str, Any]]:
    """(local public key, peer public key) -> that peer's entry in a previous run's status file."""
    if path is None or not path.exists():
        return {}
    try:
        document = read_status(path)
        return {(base64.b64decode(p["local_public"]), base64.b64decode(p["peer"])): p
                for p in document.get("peers", []) if isinstance(p, dict)}
    except (ConfigError, KeyError, TypeError, ValueError):
        return {}


def highest_epochs(path: Path | None) -> dict[tuple[bytes, bytes], int]:
    """(local public key, peer public key) -> highest epoch, from a previous run's status file."""
    result = {}
    for key, entry in previous_peers(path).items():
        try:
            result[key] = int(entry["highest_epoch"])
        except (KeyError, TypeError, ValueError):
            continue
    return result


def daemon_alive(document: Mapping[str, Any], now: float | None = None) -> tuple[bool, str]:
    """Whether the daemon that wrote ``document`` runs: its PID exists and it rewrote the file recently."""
    now = time.time() if now is None else now
    pid = document.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False, "the status file names no daemon PID"
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False, f"daemon pid {pid} is not running"
    except PermissionError:
        pass  # it exists, owned by another user
    updated = document.get("updated")
    if not isinstance(updated, (int, float)) or now - updated > STALE_STATUS_AFTER:
        return False, (f"daemon pid {pid} has not updated the status file for "
                       f"{now - updated:.0f} s (hung?)" if isinstance(updated, (int, float)) else "no update time")
    return True, ""


def problems(document: Mapping[str, Any], now: float | None = None) -> list[str]:
    """Why ``hybridkex wg status`` should exit non-zero (empty: all is well)."""
    found = []
    alive, why = daemon_alive(document, now)
    if not alive:
        found.append(why)
    for p in document.get("peers", []):
        if p.get("stale"):
            found.append(f"peer {p.get('name') or p.get('peer')} on {p.get('interface')} is stale")
    return found


def _ago(value: float | None, now: float) -> str:
    if value is None:
        return "never"
    delta = now - value
    return f"{delta:.0f} s ago" if delta >= 0 else f"in {-delta:.0f} s"


def format_status(document: Mapping[str, Any], now: float | None = None) -> str:
    """A table for people: one row per peer."""
    now = time.time() if now is None else now
    rows = [("INTERFACE", "PEER", "NAME", "ROLE", "EPOCH", "QKD", "KEY AGE", "WG HANDSHAKE", "CURRENT KEY",
             "NEXT DUE", "DEADLINE", "STATE", "FAILURES", "LAST ERROR")]
    for p in document.get("peers", []):
        state = "STALE" if p.get("stale") else (p.get("state", "") if p.get("confirmed") or p.get("epoch") == 0
                                                else p.get("state", "") + " (unconfirmed)")
        rows.append((
            p.get("interface", ""), p.get("peer", "")[:10] + "…", p.get("name") or "-", p.get("role", ""),
            str(p.get("epoch", 0)), {"used": "yes", "off": "no", "unavailable": "no (unavail.)"}.get(p.get("qkd"), "-"),
            _ago(p.get("established"), now).replace(" ago", ""), _ago(p.get("wg_handshake"), now),
            {True: "yes", False: "NO", None: "-"}[p.get("wg_uses_current_key")],
            _ago(p.get("next_due"), now) if p.get("next_due") else "-",
            _ago(p.get("fresh_until"), now), state, str(p.get("failures", 0)),
            (p.get("last_error") or "-") + (f" (at {_ago(p.get('last_error_at'), now)})"
                                             if p.get("last_error") and p.get("last_error_at") else ""),
        ))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r[:-1], widths, strict=True)) + "  " + r[-1] for r in rows]
    updated = document.get("updated")
    header = f"daemon pid {document.get('pid')}, status written {_ago(updated, now)}"
    return "\n".join([header, *lines])
