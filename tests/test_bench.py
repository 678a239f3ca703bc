"""The benchmark runs and ends with one JSON line (no speed is asserted: CI machines vary)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from bench_handshake import REPLAY_RNGS, REPLAY_WALL, ReplayBackend, handshake_pair, make_setup

from hybridkex import LocalProtocolError
from hybridkex.backends import get_backend

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_handshake.py"


def test_quick_run_ends_with_a_json_summary() -> None:
    proc = subprocess.run([sys.executable, str(BENCH), "--quick", "--backend", "cryptography"],
                          capture_output=True, text=True, timeout=240, check=False)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    for key in ("ratio", "handshake_us", "floor_us", "overhead_replayed_us", "overhead_interleaved_us",
                "overhead_inline_us"):
        assert isinstance(summary[key], (int, float)) and summary[key] > 0, (key, summary[key])
    assert summary["backend"] == "cryptography"
    assert summary["kem"] == "ml-kem-768" and summary["sig"] == "ml-dsa-65" and summary["iterations"] > 0
    assert set(summary["floor_breakdown_us"]) >= {"x25519 exchange", "ml-kem-768 encaps", "ml-dsa sign",
                                                  "ml-dsa verify", "catkdf session", "chacha20-poly1305"}
    sizes = summary["sizes"]
    assert {row["auth"] for row in sizes} == {"ml-dsa-44", "ml-dsa-65", "ml-dsa-87", "psk"}
    assert {row["qkd"] for row in sizes} == {"off", "used", "fallback"}
    for row in sizes:
        parts = (row["init_hello"], row["resp_hello"], row["init_finish"], row["resp_finish"])
        assert all(n > 0 for n in parts) and row["total"] == sum(parts) + row["init_confirm"]
        # Four messages, and a fifth (InitConfirm) only when the responder fell back without QKD.
        assert (row["init_confirm"] > 0) == (row["qkd"] == "fallback")
        if row["qkd"] == "used":
            off = next(r for r in sizes if (r["suite"], r["auth"], r["qkd"]) == (row["suite"], row["auth"], "off"))
            assert row["init_finish"] == off["init_finish"] + 16  # one key_ID
    assert 0 < summary["cookie_reply"] < 100


def test_missing_backend_is_a_clear_error() -> None:
    proc = subprocess.run([sys.executable, str(BENCH), "--quick", "--backend", "nonesuch"],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode != 0 and "nonesuch" in proc.stderr


@pytest.mark.parametrize("kem", ["ml-kem-768", "ml-kem-1024"])
def test_replayed_handshake_is_the_recorded_one(kem: str) -> None:
    # The overhead figure relies on a replaying backend reproducing the handshake byte for byte.
    setup = make_setup(get_backend("cryptography"), kem, "ml-dsa-44")
    assert isinstance(setup.replay_configs[0].backend, ReplayBackend)
    first, _ = handshake_pair(*setup.replay_configs, None, REPLAY_RNGS, REPLAY_WALL)
    again, peer = handshake_pair(*setup.replay_configs, None, REPLAY_RNGS, REPLAY_WALL)
    assert first.transcript_hash == again.transcript_hash and again.key() == peer.key()
    qkd_first, _ = handshake_pair(*setup.replay_qkd_configs, setup.replay_qkd_key, REPLAY_RNGS, REPLAY_WALL)
    qkd_again, qkd_peer = handshake_pair(*setup.replay_qkd_configs, setup.replay_qkd_key, REPLAY_RNGS, REPLAY_WALL)
    assert qkd_first.transcript_hash == qkd_again.transcript_hash and qkd_again.key() == qkd_peer.key()
    assert qkd_again.qkd.used and qkd_again.key() != again.key()


def test_replay_refuses_inputs_it_did_not_record() -> None:
    # Otherwise a replay could silently compute primitives and the overhead figure would be wrong.
    setup = make_setup(get_backend("cryptography"), "ml-kem-768", "ml-dsa-44")
    with pytest.raises(LocalProtocolError) as info:
        # Another clock: another InitHello timestamp, so other transcripts to sign.
        handshake_pair(*setup.replay_configs, None, REPLAY_RNGS, lambda: REPLAY_WALL() + 1)
    assert isinstance(info.value.__cause__, RuntimeError) and "replay" in str(info.value.__cause__)


def test_timed_handshakes_time_every_primitive_call() -> None:
    # The headline ratio divides by the primitives each handshake called: all of them must be timed,
    # and the protocol's own work must be left out of them.
    from bench_handshake import _time_handshakes

    setup = make_setup(get_backend("cryptography"), "ml-kem-768", "ml-dsa-44")
    total, primitives = _time_handshakes(setup.configs, [None, None], setup.stopwatch)
    assert 0 < primitives < total
    per_handshake = {op: n // 2 for op, n in setup.stopwatch.calls.items()}
    assert per_handshake == {"kem-generate": 1, "kem-encapsulate": 1, "kem-decapsulate": 1, "ka-generate": 2,
                             "ka-exchange": 2, "sign": 2, "verify": 2, "catkdf": 4, "chacha20-poly1305": 6}


def test_interleaved_replays_compute_each_primitive_yet_serve_the_tape() -> None:
    # overhead_interleaved_us means "the replayed work after real primitive calls": each call must run the real
    # primitive inside the stopwatch and still hand the protocol the recorded result.
    from bench_handshake import _Interleaved, _Stopwatch, _Tape, _time_interleaved

    tape, watch = _Tape(), _Stopwatch()
    tape("sign", b"m", b"c", lambda: b"recorded")
    tape.recording = False
    ran: list[int] = []
    hook = _Interleaved(tape, watch)
    assert hook("sign", b"m", b"c", lambda: ran.append(1) or b"fresh") == b"recorded"
    assert ran == [1] and watch.calls == {"sign": 1}

    setup = make_setup(get_backend("cryptography"), "ml-kem-768", "ml-dsa-44")
    overhead = _time_interleaved(setup.interleaved_configs, 2, setup.stopwatch, 0.0)
    assert overhead > 0
    per_handshake = {op: n // 2 for op, n in setup.stopwatch.calls.items()}
    assert per_handshake == {"kem-generate": 1, "kem-encapsulate": 1, "kem-decapsulate": 1, "ka-generate": 2,
                             "ka-exchange": 2, "sign": 2, "verify": 2, "catkdf": 4, "chacha20-poly1305": 6}
