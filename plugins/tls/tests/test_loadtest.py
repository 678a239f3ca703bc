"""The load test end to end, short: KME simulator at 4 keys/s, ``hybridkex tls serve``, 20 connections/s for 4 s.

The full run (50 connections/s for 30 s) is ``python -m hybridkex_tls.loadtest``.
"""

from __future__ import annotations

from hybridkex_tls import loadtest


def test_every_connection_succeeds_and_only_full_handshakes_draw_qkd_keys() -> None:
    result = loadtest.run(rate=20, seconds=4, key_rate=4, max_resumptions=30)
    assert result["failed"] == 0, result["errors"]
    assert result["ok"] == 80 and result["resumed"] >= 70
    assert result["qkd_keys_used"] == result["full"] == result["qkd_keys_by_full_handshakes"] >= 1
    assert result["passed"]
