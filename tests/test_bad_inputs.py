"""Every bad input in tests/bad_inputs/ gives its clear error (or its warning recorded in metrics.json)."""

from __future__ import annotations

import re
from collections import Counter

import pytest

from tests.bad_inputs import Case, Inputs, config, data, runs, serving

CASES: list[Case] = [*config.CASES, *runs.CASES, *data.CASES, *serving.CASES]


@pytest.fixture(scope="session")
def inputs(tiny_encoder_dir, tiny_glue_dir) -> Inputs:
    return Inputs(encoder=tiny_encoder_dir, glue=tiny_glue_dir)


def test_case_ids_are_unique():
    assert [i for i, n in Counter(c.id for c in CASES).items() if n > 1] == []


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_bad_input(case: Case, inputs: Inputs, tmp_path):
    if case.error is None:
        metrics = case.call(inputs, tmp_path)
        assert any(re.search(case.match, w) for w in metrics["warnings"]), metrics["warnings"]
    else:
        with pytest.raises(case.error, match=case.match):
            case.call(inputs, tmp_path)
