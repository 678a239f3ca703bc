"""QKD key sources: the interface, the ETSI GS QKD 014 client, the key_ID journal and the registry.

Simulators (a BB84 link, a KME pair) are not part of the library: they come with the
``hybridkex-sim`` distribution, which registers the ``sim`` source through the
``hybridkex.qkd_sources`` entry-point group like any other source would.
"""

from __future__ import annotations

from ..protocol._qkd import QKD_KEY_BYTES, QKDKey, QKDKeySource
from ._etsi014 import API_PREFIX, Etsi014Client, KeyContainer, KMEStatus, parse_key_id
from ._journal import JournaledSource, KeyIdJournal, default_journal_path
from ._registry import QKDSourceKind, check_source, open_source, prepare_source, register_source, source_names

__all__ = [
    "QKDKey", "QKDKeySource", "QKD_KEY_BYTES",
    "QKDSourceKind", "open_source", "check_source", "prepare_source", "register_source", "source_names",
    "Etsi014Client", "KMEStatus", "KeyContainer", "API_PREFIX", "parse_key_id",
    "KeyIdJournal", "JournaledSource", "default_journal_path",
]
