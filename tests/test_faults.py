"""The fault sweep's fast share (bench/faults.py runs all of it as a user would, and the rest: kills, races,
full disks, pickles, escaping): every bad file, flag and study of tests/faults.py, through the CLI in this
process, must exit 2 with one line and leave nothing behind."""

from __future__ import annotations

from collections import Counter

import pytest
from faults import all_cases, build_workspace, listing, run_in_process


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    return build_workspace(tmp_path_factory.mktemp("faults"))


@pytest.mark.slow
def test_every_bad_input_is_one_line_exit_2_and_leaves_nothing(workspace, tmp_path, monkeypatch):
    monkeypatch.setenv("SAEATLAS_CACHE", str(tmp_path / "cache"))
    shared = listing(workspace["root"])
    cases = all_cases(workspace)
    outcomes = [run_in_process(case, tmp_path / f"case{i}") for i, case in enumerate(cases)]
    kinds = Counter(o.case.kind for o in outcomes)
    assert kinds["flags"] >= 100 and kinds["study file"] >= 50 and len(kinds) >= 8  # the sweep grows with schemas
    bad = [f"{o.case.kind} / {o.case.verb} / {o.case.name}: {o.verdict} {o.stderr[-1:]} {o.left}" for o in outcomes]
    bad = [line for line, o in zip(bad, outcomes, strict=True) if o.verdict != "ok"]
    assert not bad, f"{len(bad)} of {len(outcomes)} cases:\n" + "\n".join(bad)
    assert listing(workspace["root"]) == shared  # the valid originals were never touched
