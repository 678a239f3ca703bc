"""The benchmark runs end to end (a few connections; the real figures come from a longer run)."""

from __future__ import annotations

import json

import bench_tls as bench
import pytest


def test_bench_prints_one_json_line_last(capsys: pytest.CaptureFixture[str]) -> None:
    assert bench.main(["--connections", "3", "--rounds", "1", "--warmup", "1"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    result = json.loads(lines[-1])
    assert result["hybrid_qkd_cpu_ms"] > 0 and result["baseline_mtls_mldsa65_cpu_ms"] > 0
    assert result["ratio"] == pytest.approx(result["hybrid_qkd_cpu_ms"] / result["baseline_mtls_mldsa65_cpu_ms"],
                                            rel=1e-3)
    assert set(result["cpu_ms"]) == {"hybrid_qkd", "baseline_mtls", "hybrid_no_qkd", "hybrid_psk_auth"}
    assert any("QKD used" in line and "X25519MLKEM768" in line for line in lines)
    assert any("MLDSA65PublicKey" in line for line in lines)
