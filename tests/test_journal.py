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
