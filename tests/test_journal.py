"""The local key_ID journal: a key_ID delivered twice is refused whatever the KME says (or does not say)."""

from __future__ import annotations

import multiprocessing
import os
import stat
import uuid
from collections.abc import Sequence
from pathlib import Path

import pytest

from hybridkex import ConfigError, ExchangeSettings, QKDKey, QKDKeyReplay, QKDKeySource, QKDSourceMissing
from hybridkex.qkd._journal import JournaledSource, KeyIdJournal


class ForgetfulKME(QKDKeySource):
    """A faulty KME: it hands out the same key_ID again, and answers every dec_keys without complaint."""

    kind = "forgetful"

    def __init__(self) -> None:
        self.fixed = QKDKey(uuid.uuid4(), os.urandom(32))
        self.asked: list[uuid.UUID] = []

    def get_new_keys(self, number: int = 1, size_bits: int = 256) -> list[QKDKey]:
        return [self.fixed]

    def get_keys_by_id(self, key_ids: Sequence[uuid.UUID]) -> list[QKDKey]:
        self.asked += list(key_ids)
        return [QKDKey(k, b"k" * 32) for k in key_ids]


def test_a_key_id_delivered_twice_to_the_master_is_refused(tmp_path: Path) -> None:
    source = JournaledSource(ForgetfulKME(), KeyIdJournal(tmp_path / "journal"))
    first = source.get_new_keys()
    with pytest.raises(QKDKeyReplay, match="already used on this side"):
        source.get_new_keys()
    assert first[0].key.hex() not in str(tmp_path.joinpath("journal").read_text())


def test_a_replayed_key_id_is_refused_before_the_kme_is_asked(tmp_path: Path) -> None:
    kme = ForgetfulKME()
    source = JournaledSource(kme, KeyIdJournal(tmp_path / "journal"))
    key_id = uuid.uuid4()
    source.get_keys_by_id([key_id])
    with pytest.raises(QKDKeyReplay):
        source.get_keys_by_id([key_id])
    with pytest.raises(QKDKeyReplay):
        source.get_keys_from([key_id], "SAE-A")
    assert kme.asked == [key_id], "the second request never reached the KME"


def test_one_machine_may_be_master_and_slave_of_one_key(tmp_path: Path) -> None:
    journal = KeyIdJournal(tmp_path / "journal")
    key_id = uuid.uuid4()
    journal.record("master", [key_id])
    journal.record("slave", [key_id])
    with pytest.raises(QKDKeyReplay):
        journal.record("slave", [key_id])


def test_journal_is_private_and_shared_between_instances(tmp_path: Path) -> None:
    path = tmp_path / "state" / "journal"
    key_id = uuid.uuid4()
    KeyIdJournal(path).record("slave", [key_id])
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with pytest.raises(QKDKeyReplay):
        KeyIdJournal(path).record("slave", [key_id])  # a second process (or a restart) sees it too


def _record(path: str, role: str, ids: list[str], out: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    try:
        KeyIdJournal(path).record(role, [uuid.UUID(i) for i in ids])
        out.put("ok")
    except QKDKeyReplay:
        out.put("replay")


def test_concurrent_processes_cannot_both_use_a_key_id(tmp_path: Path) -> None:
    path = str(tmp_path / "journal")
    key_id = str(uuid.uuid4())
    ctx = multiprocessing.get_context("spawn")
    out: multiprocessing.Queue = ctx.Queue()  # type: ignore[type-arg]
    procs = [ctx.Process(target=_record, args=(path, "slave", [key_id], out)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=60)
    answers = sorted(out.get(timeout=10) for _ in procs)
    assert answers == ["ok", "replay", "replay", "replay"]


def test_unwritable_journal_is_a_clear_configuration_error(tmp_path: Path) -> None:
    blocked = tmp_path / "file"
    blocked.write_text("not a directory")
    with pytest.raises(ConfigError, match="HYBRIDKEX_STATE_DIR or --qkd-journal"):
        KeyIdJournal(blocked / "journal").record("master", [uuid.uuid4()])


def test_preferred_turns_an_unopenable_source_into_a_reasoned_failure(tmp_path: Path) -> None:
    psk = tmp_path / "psk"
    psk.write_text("a" * 64)
    psk.chmod(0o600)
    common = {"psk_file": psk, "name": "a", "peer_name": "b", "qkd": "sim", "qkd_link": tmp_path / "missing.json",
              "qkd_journal": tmp_path / "journal"}
    source = ExchangeSettings(qkd_policy="preferred", **common).open_qkd_source()  # type: ignore[arg-type]
    assert source is not None
    with pytest.raises(QKDSourceMissing, match="cannot be opened"):
        source.get_new_keys()
    with pytest.raises(ConfigError):
        ExchangeSettings(qkd_policy="required", **common).open_qkd_source()  # type: ignore[arg-type]


# -- retention: a bounded journal that never forgets a key_ID too early ------------------------------------

DAY = 86400.0


class Clock:
    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


def _fill(journal: KeyIdJournal, clock: Clock, days: float, per_day: int) -> list[tuple[float, uuid.UUID]]:
    """Record ``per_day`` fresh key_IDs a day for ``days`` days; returns (time, key_ID) of each."""
    used = []
    for _ in range(int(days * per_day)):
        key_id = uuid.uuid4()
        journal.record("master", [key_id])
        used.append((clock.now, key_id))
        clock.now += DAY / per_day
    return used


def test_a_long_run_keeps_the_file_and_memory_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from hybridkex.qkd import _journal

    monkeypatch.setattr(_journal, "_MIN_COMPACT_BYTES", 4096)  # the floor below which it never compacts
    path = tmp_path / "journal"
    clock = Clock()
    journal = KeyIdJournal(path, days=1, clock=clock)
    sizes, held = [], []
    for _ in range(15):  # 15 days of 300 key_IDs a day, one day of retention
        _fill(journal, clock, 1, 300)
        sizes.append(path.stat().st_size)
        held.append(len(journal))
    line = len(f"master {uuid.uuid4()} {int(clock.now)}\n")
    # Without compaction the file would hold 4 500 lines; with it, at most some two days' worth.
    assert max(sizes[2:]) <= 2 * 2 * 300 * line, sizes
    assert max(held[2:]) <= 2 * 2 * 300, held
    assert sizes[-1] < 15 * 300 * line / 3
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert not list(tmp_path.glob(".journal.*.tmp")), "compaction left a temporary file behind"


def test_no_key_id_is_forgotten_within_its_retention(tmp_path: Path) -> None:
    path = tmp_path / "journal"
    clock = Clock()
    journal = KeyIdJournal(path, days=2, clock=clock)
    used = _fill(journal, clock, 6, 700)  # several compactions happen on the way
    fresh = KeyIdJournal(path, days=2, clock=clock)  # a restart: only the file speaks
    for when, key_id in used:
        if when >= clock.now - 2 * DAY:
            with pytest.raises(QKDKeyReplay):
                fresh.record("master", [key_id])
            with pytest.raises(QKDKeyReplay):
                journal.record("master", [key_id])
    # ... and the oldest ones are gone from the file: that is what the retention gives up.
    text = path.read_text()
    assert str(used[0][1]) not in text
    assert str(used[-1][1]) in text


def test_a_compaction_by_another_process_is_noticed(tmp_path: Path) -> None:
    path = tmp_path / "journal"
    clock = Clock()
    first, second = KeyIdJournal(path, days=1, clock=clock), KeyIdJournal(path, days=1, clock=clock)
    _fill(first, clock, 2, 2000)
    second.record("slave", [uuid.uuid4()])  # the second has now read up to the end of the file as it is
    read_up_to, inode = path.stat().st_size, path.stat().st_ino
    for _ in range(20_000):  # until the first compacts it to less than the second has read
        if path.stat().st_ino != inode and path.stat().st_size < read_up_to:
            break
        first.record("master", [uuid.uuid4()])
        clock.now += 43.0
    else:
        pytest.fail("the journal was never compacted")
    recent = uuid.uuid4()
    first.record("slave", [recent])  # lands before the second's old offset, in the new file
    with pytest.raises(QKDKeyReplay):
        second.record("slave", [recent])


def test_a_failed_compaction_loses_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "journal"
    clock = Clock()
    journal = KeyIdJournal(path, days=1, clock=clock)
    used = _fill(journal, clock, 1, 2000)
    clock.now += 3 * DAY  # everything is past its retention: a compaction would drop it all

    def killed(*args: object) -> None:
        raise OSError(5, "Input/output error")  # the process dies (or the disk fails) before the rename

    monkeypatch.setattr(os, "replace", killed)
    later = uuid.uuid4()
    journal.record("master", [later])  # the record itself still succeeds, on the whole old file
    monkeypatch.undo()
    fresh = KeyIdJournal(path, days=30, clock=clock)
    for _, key_id in [*used, (0.0, later)]:
        with pytest.raises(QKDKeyReplay):
            fresh.record("master", [key_id])


def test_a_line_cut_short_by_a_crash_does_not_swallow_the_next_entry(tmp_path: Path) -> None:
    path = tmp_path / "journal"
    KeyIdJournal(path).record("slave", [uuid.uuid4()])
    with path.open("ab") as fh:
        fh.write(b"slave 1b4e28ba-2fa1-11d2-883f")  # a writer killed in the middle of its line
    after = uuid.uuid4()
    KeyIdJournal(path).record("slave", [after])
    with pytest.raises(QKDKeyReplay):
        KeyIdJournal(path).record("slave", [after])
    assert path.read_text().splitlines()[-1].split()[:2] == ["slave", str(after)]


def _record_until_killed(path: str, out: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    from hybridkex.qkd import _journal

    _journal._MIN_COMPACT_BYTES = 2048  # compact every few dozen records, so a kill lands in one
    clock = Clock()
    journal = KeyIdJournal(path, days=365, clock=clock)  # nothing expires: every compaction rewrites it all
    while True:
        key_id = uuid.uuid4()
        journal.record("master", [key_id])
        out.put(str(key_id))  # only after record() returned: this key_ID may now be used
        clock.now += 60.0


def test_a_process_killed_at_any_moment_keeps_every_recorded_key_id(tmp_path: Path) -> None:
    import signal
    import time

    path = str(tmp_path / "journal")
    ctx = multiprocessing.get_context("spawn")
    out: multiprocessing.Queue = ctx.Queue()  # type: ignore[type-arg]
    child = ctx.Process(target=_record_until_killed, args=(path, out))
    child.start()
    try:
        confirmed = [out.get(timeout=60)]
        time.sleep(0.7)
    finally:
        assert child.pid is not None
        os.kill(child.pid, signal.SIGKILL)
        child.join(timeout=30)
    while True:
        try:
            confirmed.append(out.get(timeout=1))
        except Exception:  # noqa: BLE001 - queue.Empty: the child's last words are read
            break
    assert len(confirmed) > 50, "the child recorded too few key_IDs to have compacted"
    fresh = KeyIdJournal(path, days=365, clock=Clock())
    for key_id in confirmed:
        with pytest.raises(QKDKeyReplay):
            fresh.record("master", [uuid.UUID(key_id)])


def test_the_retention_is_checked_where_it_is_configured(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="positive number of days"):
        KeyIdJournal(tmp_path / "journal", days=0)
    psk = tmp_path / "psk"
    psk.write_text("a" * 64)
    psk.chmod(0o600)
    with pytest.raises(ConfigError, match="qkd-journal-days"):
        ExchangeSettings(psk_file=psk, name="a", peer_name="b", qkd_journal_days=-1).validate()
    shared = KeyIdJournal.for_path(tmp_path / "shared", days=3)
    assert KeyIdJournal.for_path(tmp_path / "shared", days=10) is shared and shared.days == 10
