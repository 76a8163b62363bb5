"""The suite's own output stays inside pytest's capture: no test writes into the progress
dots (figures a test wants to show go to its captured output, seen with ``pytest -rP``)."""

import re
from pathlib import Path

ESCAPES = re.compile(r"\bcap(sys|fd)\.disabled\(|sys\.__std(out|err)__")


def test_no_test_prints_past_the_capture():
    here = Path(__file__).parent
    offenders = [
        f"{path.name}:{i}"
        for path in sorted(here.glob("*.py"))
        if path.name != Path(__file__).name
        for i, line in enumerate(path.read_text("utf-8").splitlines(), 1)
        if ESCAPES.search(line)
    ]
    assert not offenders, offenders
