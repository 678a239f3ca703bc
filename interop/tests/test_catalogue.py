"""The catalogue: unique ids, every scenario resolvable, the quick subset covers every value pairwise."""

from __future__ import annotations

import itertools

from hybridkex_interop import all_cells, sections, select_cells
from hybridkex_interop._catalogue import KNOWN_FAILURES, scenario_for
from hybridkex_interop._hkx import AUTHS, BACKEND_PAIRS, INTEGRATIONS, KEMS, QKDS
from hybridkex_interop._pairwise import pairwise, uncovered_pairs


def test_ids_unique_and_scenarios_resolve() -> None:
    cells = all_cells()
    assert len({c.id for c in cells}) == len(cells)
    for c in cells:
        assert callable(scenario_for(c))
        assert c.timeout > 0


def test_every_section_has_cells_and_quick_cells() -> None:
    quick = select_cells(quick=True)
    for s in sections():
        assert any(c.section == s.key for c in all_cells()), s.key
        assert any(c.section == s.key for c in quick), s.key


def test_full_hkx_matrix_is_the_cartesian_product() -> None:
    hkx = [c for c in all_cells() if c.section == "hkx"]
    assert len(hkx) == len(INTEGRATIONS) * len(AUTHS) * len(QKDS) * len(KEMS) * len(BACKEND_PAIRS)


def test_quick_hkx_rows_cover_every_pair_of_values() -> None:
    rows = [(c.params["auth"], c.params["qkd"], c.params["kem"], c.scenario.removeprefix("hkx-"))
            for c in select_cells(quick=True) if c.section == "hkx"
            and (c.params["init_backend"], c.params["resp_backend"]) == ("cryptography", "cryptography")]
    assert not uncovered_pairs([AUTHS, QKDS, KEMS, INTEGRATIONS], rows)
    backends = {(c.params["init_backend"], c.params["resp_backend"])
                for c in select_cells(quick=True) if c.section == "hkx"}
    assert backends == set(BACKEND_PAIRS)  # mixed backends are separate cells, each in the quick run


def test_pairwise_generator() -> None:
    dims = [("a", "b", "c"), ("x", "y"), ("1", "2", "3", "4"), ("p", "q")]
    rows = pairwise(dims)
    assert not uncovered_pairs(dims, rows)
    assert len(rows) < len(list(itertools.product(*dims)))
    assert pairwise(dims) == rows  # deterministic
    assert pairwise([("only", "one")]) == [("only",), ("one",)]


def test_only_selects_by_glob_or_exact_id() -> None:
    some = select_cells(only=["hkx/tls/*"])
    assert some and all(c.id.startswith("hkx/tls/") for c in some)
    one = all_cells()[5].id
    assert [c.id for c in select_cells(only=[one])] == [one]
    assert select_cells(quick=True, only=["no/such/cell"]) == []


def test_known_failures_match_cells() -> None:
    for pattern in KNOWN_FAILURES:
        assert select_cells(only=[pattern]), pattern
    if KNOWN_FAILURES:
        assert all(c.xfail for c in select_cells(only=list(KNOWN_FAILURES)))
    else:  # nothing is known to fail: no cell may be marked as if it were
        assert not any(c.xfail for c in select_cells())
