"""Measured quality: session-level precision and recall per kind against the labels of
stores generated with several seeds. The issue's bar is 0.9 for both, for each kind."""

from __future__ import annotations

from pathlib import Path

import pytest

from callward.datasets.generator import GenerateConfig, generate
from callward.datasets.labels import read_labels
from callward.datasets.scoring import Scorecard, markdown, score
from callward.detectors import KINDS, detect

SEEDS = (101, 202, 303)


@pytest.fixture(scope="module")
def scorecard(tmp_path_factory: pytest.TempPathFactory) -> Scorecard:
    total = Scorecard()
    for seed in SEEDS:
        d: Path = tmp_path_factory.mktemp(f"quality-{seed}")
        generate(GenerateConfig(out=d, agents=7, days=3, seed=seed, calls=15_000))
        total.merge(score(detect(d), read_labels(d)))
    print(markdown(total))
    return total


@pytest.mark.timeout(600)
@pytest.mark.parametrize("kind", KINDS)
def test_precision_and_recall_per_kind(scorecard: Scorecard, kind: str) -> None:
    s = scorecard.by_kind[kind]
    assert s.true_positives > 0
    assert s.precision >= 0.9, markdown(scorecard)
    assert s.recall >= 0.9, markdown(scorecard)


@pytest.mark.timeout(600)
def test_every_labeled_pattern_is_present_and_mostly_caught(scorecard: Scorecard) -> None:
    assert set(scorecard.recall_by_label_pattern) == {
        "identical_call_loop", "ping_pong", "retry_storm", "rate_spike", "long_session",
        "repeated_side_effect", "private_data_to_new_destination", "secret_in_egress",
        "bulk_read_then_large_send", "send_then_delete", "injection_then_send",
    }  # fmt: skip
    weak = {p: s.recall for p, s in scorecard.recall_by_label_pattern.items() if s.recall < 0.8}
    assert not weak, markdown(scorecard)


@pytest.mark.timeout(600)
def test_hard_negatives_stay_quiet(scorecard: Scorecard) -> None:
    assert set(scorecard.hard_negatives) == {
        "known_destination_send",
        "ci_batch",
        "long_healthy_session",
    }
    flagged = sum(scorecard.hard_negatives_flagged.values())
    assert flagged <= 0.1 * sum(scorecard.hard_negatives.values()), markdown(scorecard)
