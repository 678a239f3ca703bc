"""A peer for the hybridkex interop suite over the third-party ``etsi_qkd_014_client`` (PyPI).

Usage: ``PYTHONPATH=DIR python etsi014_peer.py KME_HOST:PORT SAE_CERT SAE_KEY CA``, where DIR
holds ``etsi_qkd_014_client`` and its dependencies.  Reads one JSON request per line on stdin
and answers one JSON line on stdout (keys base64, as the KME sent them):

    {"op": "version"}                                       -> {"ok": true, "version": "..."}
    {"op": "status", "slave": SAE}                          -> {"ok": true, "code": 200, "status": {...}}
    {"op": "get_key", "slave": SAE, "number": N, "size": S} -> {"ok": true, "code": 200, "keys": [...]}
    {"op": "get_key_with_key_IDs", "master": SAE, "key_ids": [...]}  -> likewise
    any non-200 answer                                      -> {"ok": true, "code": 400, "message": ..., ...}

An exception in the client answers {"ok": false, "error": "..."}; the peer keeps serving.
This file runs in its own interpreter and imports nothing from hybridkex.
"""

from __future__ import annotations

import importlib
import json
import sys
from typing import Any

# Imported by name: the package exists only on this process's PYTHONPATH, not where the suite is checked.
etsi_qkd_014_client = importlib.import_module("etsi_qkd_014_client")
data_module = importlib.import_module("etsi_qkd_014_client.data")
DataError, DataKeyContainer, DataStatus = data_module.DataError, data_module.DataKeyContainer, data_module.DataStatus


def _answer(code: int, data: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"code": code}
    if isinstance(data, DataError):
        out["message"] = data.message
        out["details"] = data.details
    elif isinstance(data, DataKeyContainer):
        out["keys"] = [{"key_ID": k.key_id, "key": k.key} for k in data.keys]
    elif isinstance(data, DataStatus):
        out["status"] = {name: getattr(data, name) for name in (
            "source_kme_id", "target_kme_id", "master_sae_id", "slave_sae_id", "key_size", "stored_key_count",
            "max_key_count", "max_key_per_request", "max_key_size", "min_key_size", "max_sae_id_count")}
    return out


def main() -> None:
    host, cert, key, ca = sys.argv[1:5]
    client = etsi_qkd_014_client.QKD014Client(host, cert, key, ca)
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            req: dict[str, Any] = json.loads(line)
            op = req["op"]
            if op == "version":
                answer: dict[str, Any] = {"version": etsi_qkd_014_client.__version__}
            elif op == "status":
                answer = _answer(*client.get_status(req["slave"]))
            elif op == "get_key":
                answer = _answer(*client.get_key(req["slave"], number=req.get("number"), size=req.get("size")))
            elif op == "get_key_with_key_IDs":
                answer = _answer(*client.get_key_with_key_IDs(req["master"], req["key_ids"]))
            else:
                raise ValueError(f"unknown op {op!r}")
            answer["ok"] = True
        except Exception as exc:  # report and keep serving
            answer = {"ok": False, "error": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"}
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
