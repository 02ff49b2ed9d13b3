"""Session-level precision and recall of findings against a store's labels.

A session (its id, or its trace when the id is missing) is *flagged* for a kind when any
finding of that kind names it, and *positive* when a label of that kind names it. Every
other session of the store, hard negatives included, is a negative. Per labeled pattern
the recall says which incidents were caught; per finding pattern the precision says how
often that detector named a session that truly had an incident of its kind.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from callward.datasets.labels import Label
from callward.detectors.findings import KINDS, Finding


@dataclass
class Score:
    true_positives: int = 0
    false_positives: int = 0
    false_negatives: int = 0

    @property
    def precision(self) -> float:
        flagged = self.true_positives + self.false_positives
        return self.true_positives / flagged if flagged else 1.0

    @property
    def recall(self) -> float:
        positives = self.true_positives + self.false_negatives
        return self.true_positives / positives if positives else 1.0


@dataclass
class Scorecard:
    by_kind: dict[str, Score] = field(default_factory=dict)
    recall_by_label_pattern: dict[str, Score] = field(default_factory=dict)
    precision_by_finding_pattern: dict[str, Score] = field(default_factory=dict)
    hard_negatives_flagged: dict[str, int] = field(default_factory=dict)
    hard_negatives: dict[str, int] = field(default_factory=dict)

    def merge(self, other: Scorecard) -> None:
        for mine, theirs in (
            (self.by_kind, other.by_kind),
            (self.recall_by_label_pattern, other.recall_by_label_pattern),
            (self.precision_by_finding_pattern, other.precision_by_finding_pattern),
        ):
            for key, s in theirs.items():
                m = mine.setdefault(key, Score())
                m.true_positives += s.true_positives
                m.false_positives += s.false_positives
                m.false_negatives += s.false_negatives
        for key, v in other.hard_negatives.items():
            self.hard_negatives[key] = self.hard_negatives.get(key, 0) + v
        for key, v in other.hard_negatives_flagged.items():
            self.hard_negatives_flagged[key] = self.hard_negatives_flagged.get(key, 0) + v


def score(findings: Iterable[Finding], labels: Iterable[Label]) -> Scorecard:
    findings = list(findings)
    labels = list(labels)
    card = Scorecard()
    for kind in KINDS:
        flagged = {f.session_key for f in findings if f.kind == kind}
        positive = {lab.session_key for lab in labels if lab.kind == kind}
        card.by_kind[kind] = Score(
            len(flagged & positive), len(flagged - positive), len(positive - flagged)
        )
        for lab in labels:
            if lab.kind != kind:
                continue
            s = card.recall_by_label_pattern.setdefault(lab.pattern, Score())
            if lab.session_key in flagged:
                s.true_positives += 1
            else:
                s.false_negatives += 1
        for pattern in sorted({f.pattern for f in findings if f.kind == kind}):
            sessions = {f.session_key for f in findings if f.pattern == pattern}
            s = card.precision_by_finding_pattern.setdefault(pattern, Score())
            s.true_positives += len(sessions & positive)
            s.false_positives += len(sessions - positive)
    any_flag = {f.session_key for f in findings}
    for lab in labels:
        if lab.kind == "none":
            card.hard_negatives[lab.pattern] = card.hard_negatives.get(lab.pattern, 0) + 1
            if lab.session_key in any_flag:
                card.hard_negatives_flagged[lab.pattern] = (
                    card.hard_negatives_flagged.get(lab.pattern, 0) + 1
                )
    return card


def markdown(card: Scorecard) -> str:
    """The quality tables as Markdown (per kind, per labeled pattern, per detector)."""
    lines = ["| kind | precision | recall | TP | FP | FN |", "|---|---|---|---|---|---|"]
    for kind, s in card.by_kind.items():
        lines.append(
            f"| {kind} | {s.precision:.3f} | {s.recall:.3f} | {s.true_positives} "
            f"| {s.false_positives} | {s.false_negatives} |"
        )
    lines += ["", "| labeled pattern | recall | caught / labeled |", "|---|---|---|"]
    for pattern, s in sorted(card.recall_by_label_pattern.items()):
        lines.append(
            f"| {pattern} | {s.recall:.3f} | {s.true_positives} / "
            f"{s.true_positives + s.false_negatives} |"
        )
    lines += ["", "| detector pattern | precision | sessions right / flagged |", "|---|---|---|"]
    for pattern, s in sorted(card.precision_by_finding_pattern.items()):
        lines.append(
            f"| {pattern} | {s.precision:.3f} | {s.true_positives} / "
            f"{s.true_positives + s.false_positives} |"
        )
    lines += ["", "| hard negative | sessions | flagged |", "|---|---|---|"]
    for pattern, count in sorted(card.hard_negatives.items()):
        lines.append(f"| {pattern} | {count} | {card.hard_negatives_flagged.get(pattern, 0)} |")
    return "\n".join(lines)
