"""QKD key sources: the simulated BB84 link, the ETSI GS QKD 014 client, and the KME simulator."""

from ._source import QKD_KEY_BYTES, QKDKey, QKDKeySource

__all__ = ["QKDKey", "QKDKeySource", "QKD_KEY_BYTES"]
