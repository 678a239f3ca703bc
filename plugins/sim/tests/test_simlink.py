"""The simulated QKD link key source, its link file and the ``qkd-link`` commands."""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import stat
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from hybridkex._errors import ConfigError, QKDKeyReplay, QKDUnavailable
from hybridkex.qkd import QKDKeySource

from hybridkex_sim import LinkParameters, SimulatedLinkSource, init_link_file, load_link_file
from hybridkex_sim._simlink import MAX_KEY_BITS, update_link_file
from hybridkex_sim.cli._qkd_link import qkd_link


def counter_rng() -> Callable[[int], bytes]:
    """A deterministic stand-in for os.urandom: distinct SHA-256 outputs."""
    counter = itertools.count()
    return lambda n: hashlib.sha256(next(counter).to_bytes(8, "big")).digest()[:n]


@pytest.fixture
def link(tmp_path: Path) -> Path:
    path = tmp_path / "link.json"
    init_link_file(path)
    return path


@pytest.fixture
def pair(link: Path) -> Iterator[tuple[SimulatedLinkSource, SimulatedLinkSource]]:
    """Master and slave ends of one link, as two independent objects (two processes' worth of state)."""
    with SimulatedLinkSource(link) as master, SimulatedLinkSource(link) as slave:
        assert isinstance(master, SimulatedLinkSource) and isinstance(slave, SimulatedLinkSource)
        yield master, slave


# -- link file -----------------------------------------------------------------------------

def test_link_file_is_created_0600_even_under_a_loose_umask(tmp_path: Path) -> None:
    path = tmp_path / "link.json"
    old = os.umask(0o022)
    try:
        created = init_link_file(path, LinkParameters(channel_error=0.03, eve=0.1))
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    document = json.loads(path.read_text())
    assert document["type"] == "hybridkex-qkd-sim-link" and document["version"] == 1
    assert document["parameters"]["channel_error"] == 0.03 and document["parameters"]["eve"] == 0.1
    loaded = load_link_file(path)
    assert loaded == created and len(loaded.seed) == 32


def test_link_file_refuses_to_overwrite_without_force(link: Path) -> None:
    before = load_link_file(link)
    with pytest.raises(ConfigError, match="already exists"):
        init_link_file(link)
    assert load_link_file(link) == before
    after = init_link_file(link, force=True)
    assert after.seed != before.seed and load_link_file(link) == after


def test_link_file_repr_hides_the_seed(link: Path) -> None:
    loaded = load_link_file(link)
    assert loaded.seed.hex() not in repr(loaded) and "seed" not in repr(loaded)
    assert len(loaded.fingerprint) == 16 and loaded.fingerprint not in loaded.seed.hex()


def test_missing_link_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_link_file(tmp_path / "nope.json")


def test_world_readable_link_file_is_refused(link: Path) -> None:
    link.chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        load_link_file(link)
    with pytest.raises(ConfigError):
        SimulatedLinkSource(link)


@pytest.mark.parametrize(("mutate", "message"), [
    (lambda d: "{not json", "not valid JSON"),
    (lambda d: json.dumps([1, 2]), "not a simulated QKD link file"),
    (lambda d: json.dumps({**d, "type": "other"}), "not a simulated QKD link file"),
    (lambda d: json.dumps({**d, "version": 2}), "unsupported version 2"),
    (lambda d: json.dumps({**d, "seed": "!!"}), "base64"),
    (lambda d: json.dumps({**d, "seed": "AAAA"}), "3-byte seed"),
    (lambda d: json.dumps({**d, "parameters": {"eve": 3}}), "bad parameters"),
    (lambda d: json.dumps({**d, "parameters": {"colour": 1}}), "unknown parameters colour"),
])
def test_garbled_link_file(link: Path, mutate: Callable[[dict[str, object]], str], message: str) -> None:
    document = json.loads(link.read_text())
    link.write_text(mutate(document))
    with pytest.raises(ConfigError, match=message):
        load_link_file(link)


def test_update_link_file_keeps_the_seed(link: Path) -> None:
    before = load_link_file(link)
    after = update_link_file(link, eve=0.5)
    assert after.seed == before.seed and after.params.eve == 0.5
    assert load_link_file(link) == after and stat.S_IMODE(link.stat().st_mode) == 0o600
    with pytest.raises(ValueError):
        update_link_file(link, colour=1)


# -- key source ----------------------------------------------------------------------------

def test_master_and_slave_agree(pair: tuple[SimulatedLinkSource, SimulatedLinkSource]) -> None:
    master, slave = pair
    sent = master.get_new_keys(3)
    assert [len(k.key) for k in sent] == [32, 32, 32]
    assert len({k.key for k in sent}) == 3
    assert all(k.key_id.version == 8 and k.key_id.variant == uuid.RFC_4122 for k in sent)
    received = slave.get_keys_by_id([k.key_id for k in sent])
    assert received == sent


def test_keys_longer_than_one_block(pair: tuple[SimulatedLinkSource, SimulatedLinkSource]) -> None:
    master, slave = pair
    (sent,) = master.get_new_keys(1, MAX_KEY_BITS)
    assert len(sent.key) == MAX_KEY_BITS // 8
    assert slave.get_keys_by_id([sent.key_id]) == [sent]


def test_key_repr_hides_the_key(pair: tuple[SimulatedLinkSource, SimulatedLinkSource]) -> None:
    master, _ = pair
    (key,) = master.get_new_keys()
    assert key.key.hex() not in repr(key)
    assert "seed" not in repr(master)


def test_injected_rng_makes_key_ids_reproducible(link: Path, tmp_path: Path) -> None:
    # Reproducible for a fresh journal: a block is never reserved twice at one end.
    a = SimulatedLinkSource(link, rng=counter_rng(), consumed_path=tmp_path / "a").get_new_keys(2)
    b = SimulatedLinkSource(link, rng=counter_rng(), consumed_path=tmp_path / "b").get_new_keys(2)
    assert a == b
    c = SimulatedLinkSource(link, rng=counter_rng(), consumed_path=tmp_path / "a").get_new_keys(2)
    assert {k.key_id for k in c}.isdisjoint(k.key_id for k in a)


def consumed_lines(path: Path) -> list[str]:
    return [line for line in path.read_text().splitlines()[1:] if line.startswith("K ")]


def test_one_block_serves_several_keys_with_disjoint_material(link: Path, tmp_path: Path) -> None:
    master = SimulatedLinkSource(link, consumed_path=tmp_path / "master")
    slave = SimulatedLinkSource(link, consumed_path=tmp_path / "slave")
    keys = [master.get_new_keys()[0] for _ in range(20)]  # one at a time, as handshakes ask
    reserved = [line for line in (tmp_path / "master").read_text().splitlines() if line.startswith("R ")]
    assert len(reserved) < 10  # blocks of ~250 bytes serve several 32-byte keys
    assert len({k.key for k in keys}) == 20
    assert slave.get_keys_by_id([k.key_id for k in keys]) == keys
    # The byte ranges the slave recorded never overlap.
    spans: dict[str, list[tuple[int, int]]] = {}
    for line in consumed_lines(tmp_path / "slave"):
        for item in line.split()[2].split(","):
            block, span = item.split(":")
            start, end = map(int, span.split("-"))
            assert all(end <= s or e <= start for s, e in spans.get(block, [])), line
            spans.setdefault(block, []).append((start, end))
    # A new master process (no memory of the open block) never reuses a reserved block.
    from hybridkex_sim import _simlink
    _simlink._ALLOCATORS.clear()
    again = SimulatedLinkSource(link, consumed_path=tmp_path / "master").get_new_keys(4)
    assert not {k.key for k in again} & {k.key for k in keys}


def test_a_key_id_overlapping_consumed_material_is_refused(link: Path, tmp_path: Path) -> None:
    master = SimulatedLinkSource(link, consumed_path=tmp_path / "master")
    slave = SimulatedLinkSource(link, consumed_path=tmp_path / "slave")
    (key,) = master.get_new_keys(1, 128)
    slave.get_keys_by_id([key.key_id])
    index, offset, size = slave._parse_key_id(key.key_id)
    # A key_ID for the same block, starting inside the consumed bytes, made with the seed (a forger with
    # the link file, or a second master that drew the same block): refused like a replay.
    overlapping = slave._key_id(index, offset + 8, size)
    with pytest.raises(QKDKeyReplay, match="already used by another key_ID"):
        slave.get_keys_by_id([overlapping])
    beyond = slave._key_id(index, offset + size, 8)
    assert len(slave.get_keys_by_id([beyond])[0].key) == 8


def test_replay_is_refused(pair: tuple[SimulatedLinkSource, SimulatedLinkSource]) -> None:
    master, slave = pair
    (key,) = master.get_new_keys()
    slave.get_keys_by_id([key.key_id])
    with pytest.raises(QKDKeyReplay, match=f"key_ID {key.key_id} was already used"):
        slave.get_keys_by_id([key.key_id])


def test_duplicate_in_one_request_is_refused(pair: tuple[SimulatedLinkSource, SimulatedLinkSource]) -> None:
    master, slave = pair
    (key,) = master.get_new_keys()
    with pytest.raises(QKDKeyReplay):
        slave.get_keys_by_id([key.key_id, key.key_id])


def test_a_refused_request_consumes_nothing(pair: tuple[SimulatedLinkSource, SimulatedLinkSource]) -> None:
    master, slave = pair
    used, fresh = master.get_new_keys(2)
    slave.get_keys_by_id([used.key_id])
    with pytest.raises(QKDKeyReplay):
        slave.get_keys_by_id([fresh.key_id, used.key_id])
    assert slave.get_keys_by_id([fresh.key_id]) == [fresh]


def test_consumed_ids_survive_a_reload(link: Path) -> None:
    master = SimulatedLinkSource(link)
    (key,) = master.get_new_keys()
    SimulatedLinkSource(link).get_keys_by_id([key.key_id])
    consumed = Path(f"{link}.consumed")
    assert consumed.exists() and stat.S_IMODE(consumed.stat().st_mode) == 0o600
    with pytest.raises(QKDKeyReplay):
        SimulatedLinkSource(link).get_keys_by_id([key.key_id])


def test_two_slaves_sharing_the_record_see_each_others_keys(link: Path) -> None:
    master = SimulatedLinkSource(link)
    a, b = SimulatedLinkSource(link), SimulatedLinkSource(link)
    k1, k2 = master.get_new_keys(2)
    a.get_keys_by_id([k1.key_id])
    b.get_keys_by_id([k2.key_id])  # b reads a's entry incrementally before appending its own
    with pytest.raises(QKDKeyReplay):
        a.get_keys_by_id([k2.key_id])
    with pytest.raises(QKDKeyReplay):
        b.get_keys_by_id([k1.key_id])


def test_torn_last_line_is_dropped(link: Path) -> None:
    master, slave = SimulatedLinkSource(link), SimulatedLinkSource(link)
    k1, k2 = master.get_new_keys(2)
    slave.get_keys_by_id([k1.key_id])
    consumed = Path(f"{link}.consumed")
    with open(consumed, "ab") as fh:  # a crash in the middle of appending k2's line
        fh.write(str(k2.key_id)[:10].encode())
    fresh = SimulatedLinkSource(link)
    assert fresh.get_keys_by_id([k2.key_id]) == [k2]
    with pytest.raises(QKDKeyReplay):
        SimulatedLinkSource(link).get_keys_by_id([k1.key_id])
    assert [line.split()[1] for line in consumed_lines(consumed)] == [str(k1.key_id), str(k2.key_id)]


def test_consumed_path_can_be_chosen(link: Path, tmp_path: Path) -> None:
    (key,) = SimulatedLinkSource(link).get_new_keys()
    state = tmp_path / "state.json"
    SimulatedLinkSource(link, consumed_path=state).get_keys_by_id([key.key_id])
    assert state.exists() and not consumed_lines(Path(f"{link}.consumed"))
    with pytest.raises(QKDKeyReplay):
        SimulatedLinkSource(link, consumed_path=state).get_keys_by_id([key.key_id])


def test_damaged_consumed_file_is_a_config_error(pair: tuple[SimulatedLinkSource, SimulatedLinkSource],
                                                 link: Path) -> None:
    master, slave = pair
    (key,) = master.get_new_keys()
    Path(f"{link}.consumed").write_text("garbage")
    with pytest.raises(ConfigError, match="damaged"):
        slave.get_keys_by_id([key.key_id])


def flip(key_id: uuid.UUID, bit: int) -> uuid.UUID:
    return uuid.UUID(int=key_id.int ^ (1 << bit))


def test_forged_key_ids_are_refused(pair: tuple[SimulatedLinkSource, SimulatedLinkSource], link: Path) -> None:
    master, slave = pair
    (key,) = master.get_new_keys()
    # UUID bit positions: tag 0..47, size 48..57, offset 58..61, 64..67, index 68..75 and 80..127
    for forged in (uuid.uuid4(), flip(key.key_id, 0), flip(key.key_id, 50), flip(key.key_id, 100),
                   flip(key.key_id, 77)):  # bit 77 is in the version field
        with pytest.raises(QKDUnavailable, match="was not issued by this simulated link"):
            slave.get_keys_by_id([forged])
    assert not consumed_lines(Path(f"{link}.consumed"))
    with pytest.raises(TypeError):
        slave.get_keys_by_id([str(key.key_id)])  # type: ignore[list-item]
    assert slave.get_keys_by_id([key.key_id]) == [key]


def test_key_id_from_another_link_is_refused(tmp_path: Path, link: Path) -> None:
    other = tmp_path / "other.json"
    init_link_file(other)
    (key,) = SimulatedLinkSource(other).get_new_keys()
    with pytest.raises(QKDUnavailable, match="different seed or parameters"):
        SimulatedLinkSource(link).get_keys_by_id([key.key_id])


def test_tapped_link_gives_no_key(link: Path) -> None:
    update_link_file(link, eve=1.0)
    source = SimulatedLinkSource(link)
    with pytest.raises(QKDUnavailable, match=r"simulated QKD link aborted: estimated QBER 2\d\.\d% exceeds 11%"):
        source.get_new_keys()


def test_slave_on_a_tapped_link_refuses_earlier_key_ids(link: Path) -> None:
    (key,) = SimulatedLinkSource(link).get_new_keys()
    update_link_file(link, eve=1.0)
    with pytest.raises(QKDUnavailable):
        SimulatedLinkSource(link).get_keys_by_id([key.key_id])


def test_params_override(link: Path) -> None:
    tapped = SimulatedLinkSource(link, params_override=LinkParameters(eve=1.0))
    assert tapped.describe() == "sim (BB84, channel error 2.0%, eve 100%)"
    with pytest.raises(QKDUnavailable, match="no QKD key"):
        tapped.get_new_keys()


def test_describe_and_kind(pair: tuple[SimulatedLinkSource, SimulatedLinkSource]) -> None:
    master, _ = pair
    assert isinstance(master, QKDKeySource) and master.kind == "sim"
    assert master.describe() == "sim (BB84, channel error 2.0%, eve 0%)"


@pytest.mark.parametrize(("number", "size_bits"), [(0, 256), (1, 0), (1, 12), (1, MAX_KEY_BITS + 8)])
def test_bad_requests(pair: tuple[SimulatedLinkSource, SimulatedLinkSource], number: int, size_bits: int) -> None:
    master, _ = pair
    with pytest.raises(ValueError):
        master.get_new_keys(number, size_bits)


_END = """
import hashlib, sys, uuid
from hybridkex_sim import SimulatedLinkSource
source = SimulatedLinkSource(sys.argv[1])
if sys.argv[2] == "master":
    (key,) = source.get_new_keys()
else:
    (key,) = source.get_keys_by_id([uuid.UUID(sys.argv[2])])
print(key.key_id, hashlib.sha256(key.key).hexdigest())
"""


def test_two_processes_agree(tmp_path: Path, link: Path) -> None:
    # Each end has its own copy of the link file, as two sites would.
    slave_link = tmp_path / "slave-link.json"
    slave_link.write_bytes(link.read_bytes())
    slave_link.chmod(0o600)

    def run(path: Path, arg: str) -> list[str]:
        done = subprocess.run([sys.executable, "-c", _END, str(path), arg], capture_output=True, text=True,
                              timeout=60, check=True)
        return done.stdout.split()

    key_id, master_digest = run(link, "master")
    assert run(slave_link, key_id) == [key_id, master_digest]
    replay = subprocess.run([sys.executable, "-c", _END, str(slave_link), key_id], capture_output=True,
                            text=True, timeout=60)
    assert replay.returncode != 0 and "QKDKeyReplay" in replay.stderr


# -- qkd-link commands ----------------------------------------------------------------------

def test_cli_init_show_tap(tmp_path: Path) -> None:
    runner = CliRunner()
    path = tmp_path / "cli-link.json"
    result = runner.invoke(qkd_link, ["init", str(path), "--channel-error", "0.03"])
    assert result.exit_code == 0, result.output
    seed = load_link_file(path).seed
    assert "created simulated QKD link" in result.output and "channel error 3.0%" in result.output
    assert stat.S_IMODE(path.stat().st_mode) == 0o600

    again = runner.invoke(qkd_link, ["init", str(path)])
    assert again.exit_code != 0 and "already exists" in again.output and "Traceback" not in again.output

    shown = runner.invoke(qkd_link, ["show", str(path)])
    assert shown.exit_code == 0 and "key delivered" in shown.output and "estimated QBER" in shown.output

    tapped = runner.invoke(qkd_link, ["tap", str(path), "--eve", "1"])
    assert tapped.exit_code == 0 and "8 of 8 trial blocks aborted" in tapped.output
    assert load_link_file(path).params.eve == 1.0
    shown = runner.invoke(qkd_link, ["show", str(path)])
    assert "ABORTED: estimated QBER" in shown.output

    for output in (result.output, shown.output, tapped.output):
        assert seed.hex() not in output and json.loads(path.read_text())["seed"] not in output


def test_cli_errors_are_one_line(tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(qkd_link, ["show", str(tmp_path / "missing.json")])
    assert result.exit_code == 2 and "does not exist" in result.output
    assert result.output.startswith("hybridkex: error: ") and "Traceback" not in result.output
    result = runner.invoke(qkd_link, ["tap", str(tmp_path / "missing.json"), "--eve", "0.5"])
    assert result.exit_code == 2 and "does not exist" in result.output
