"""What `mutation-doctor explain` learns about finished experiments.

Frozen dataclasses only: readers and the analysis compute them, renderers print them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Tuple

# Experiment statuses as the report states them.
SUCCEEDED, FAILED, BLOCKED, SUSPICIOUS = "succeeded", "failed", "blocked", "suspicious"

# Confidence at or below this means the evidence is indirect (no log, inferred from records).
INDIRECT = 0.5


@dataclass(frozen=True)
class Evidence:
    """One piece of evidence: a file (relative to the experiment folder when inside it),
    the 1-based line number in that file (None when not applicable), and the text."""

    file: str
    line: Optional[int]
    text: str

    @property
    def location(self) -> str:
        """`file:line`, or just `file` when there is no line number."""
        return f"{self.file}:{self.line}" if self.line else self.file


@dataclass(frozen=True)
class Cause:
    """A catalogue cause with the confidence (0..1) that it is what happened."""

    id: str
    title: str
    confidence: float


@dataclass(frozen=True)
class NeedUse:
    """How one experiment's pretrained-weights need was (or was not) met.

    `source` says where the weights come from (the Hub via timm, the torch hub download),
    `cache` is the cache location the run used (or what is known about it), `present` is
    "yes", "no" or "unknown", and `basis` says how we know ("preflight record", "inferred").
    """

    model: str
    need: str
    source: str
    cache: str
    present: str
    basis: str


@dataclass(frozen=True)
class Explanation:
    """The verdict on one experiment folder: status, cause, evidence, chain of events, fixes,
    plus what the batch report and the rerun file need (repo, model, hyperparameters)."""

    experiment_id: str
    path: str
    status: str
    cause: Optional[Cause] = None
    evidence: Tuple[Evidence, ...] = ()
    chain: Tuple[str, ...] = ()
    fix: Tuple[str, ...] = ()
    run: str = ""
    layout: str = "user"
    repo: str = ""
    model: str = ""
    mode: str = "default"
    hyperparameters: Mapping[str, Any] = field(default_factory=dict)
    background: Optional[Mapping[str, Any]] = None
    duration: Optional[float] = None
    timestamp: str = ""
    needs: Tuple[NeedUse, ...] = ()
    notes: Tuple[str, ...] = ()
    basis: str = "record"  # "log" when the verdict rests on a log, "record" on experiment.json alone

    @property
    def cause_id(self) -> Optional[str]:
        return self.cause.id if self.cause else None

    @property
    def did_not_finish(self) -> bool:
        """Failed or held back: the experiment produced no valid result."""
        return self.status in (FAILED, BLOCKED)


@dataclass(frozen=True)
class BatchReport:
    """All explanations under one PATH (a results root, a run folder or an experiment folder)."""

    root: str
    runs: Tuple[str, ...]
    explanations: Tuple[Explanation, ...]
    elapsed: float = 0.0

    def count(self, status: str) -> int:
        return sum(1 for e in self.explanations if e.status == status)

    @property
    def causes(self) -> Mapping[str, int]:
        out: dict = {}
        for e in self.explanations:
            if e.cause is not None:
                out[e.cause.id] = out.get(e.cause.id, 0) + 1
        return dict(sorted(out.items(), key=lambda kv: (-kv[1], kv[0])))

    @property
    def precision(self) -> Mapping[str, int]:
        """How many verdicts rest on logs and how many on the record alone (lower confidence)."""
        logs = sum(1 for e in self.explanations if e.basis == "log")
        return {"from_logs": logs, "from_record": len(self.explanations) - logs}

    @property
    def to_rerun(self) -> Tuple[Explanation, ...]:
        return tuple(e for e in self.explanations if e.did_not_finish)

    @property
    def exit_code(self) -> int:
        """0 when nothing failed (suspicious runs alone do not fail the batch), else 1."""
        return 1 if self.to_rerun else 0
