"""Kill -9 anywhere, then resume (issue 22): the short version of `python -m benchmarks.faults`.

Three SIGKILLs in a row per command (a cache build, a one-epoch training run, a safetensors
export, `predict --out F.jsonl`), then a run to completion: nothing lost, nothing twice, no
torn file, no temporary left, and the clean run's result. Orphans (pool workers that outlive
the killed process) are counted but not failed on here: making workers die with their parent
(PR_SET_PDEATHSIG) is a change of its own; the harness kills them before each rerun.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks import faults

pytestmark = pytest.mark.slow


def test_three_kills_per_command_lose_and_duplicate_nothing(tmp_path, capsys):
    tallies = faults.main(
        ["--kills", "3", "--chain", "3", "--quick", "--seed", "1", "--work", str(tmp_path)]
    )
    table = capsys.readouterr().out
    assert set(tallies) == {"prepare", "train", "export", "predict"}, table
    for name, tally in tallies.items():
        assert tally.injected == 3, (name, table)
        assert tally.problems == [], (name, tally.problems)
        assert tally.survived == 3, (name, table)
        assert (tally.lost, tally.duplicated, tally.torn, tally.leftovers) == (0, 0, 0, 0), name
    assert f"| prepare | 3 | {tallies['prepare'].writing} | 3 | 0 | 0 | 0 | 0 |" in table
    assert running_with(str(tmp_path)) == []  # every process it started is gone


def running_with(text: str) -> list[int]:
    """The processes whose command line mentions `text`."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if text.encode() in cmdline.read_bytes():
                found.append(int(cmdline.parent.name))
        except OSError:
            continue
    return found
