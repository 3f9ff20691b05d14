"""No false all-clear: an experiment none of whose needs could be established is `unverified`.

A need is established when the cache group could look for it in the launch context and got an
answer (present, missing, broken); `unknown`, `unreadable` and `error` are not answers, and a
need of a kind nothing inspects is not either. An experiment with no blocking need at all
(nothing declared, nothing discovered) is unverified too. Only decided when the cache group ran.
"""
from __future__ import annotations

from typing import Dict

NO_ANSWER = ("unknown", "unreadable", "error")


def unverified(ctx) -> Dict[str, str]:
    """{experiment id: why it is unverified} for a DoctorContext whose checks ran."""
    if "cache" not in tuple(ctx.options.groups):
        return {}
    states = ctx.need_states()
    out = {}
    for e in ctx.plan.experiments:
        needs = [n for n in e.needs if getattr(n, "blocking", True)]
        if not needs:
            out[e.id] = f"nothing declared or discovered for {e.repo} {e.model} (see mutation-doctor needs)"
            continue
        answered = [n for n in needs if n.key in states and states[n.key].status not in NO_ANSWER]
        if not answered:
            kinds = ", ".join(sorted({n.kind for n in needs}))
            out[e.id] = f"none of its {len(needs)} need(s) ({kinds}) could be looked for in the launch context"
    return out
