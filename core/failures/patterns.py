"""The registry's performance_metrics.log_patterns, checked: a pattern that does not compile can
never extract a metric, and saying so beats reporting a run that "trained nothing"."""
from __future__ import annotations

import re
from typing import Dict, Mapping


def invalid_patterns(patterns: Mapping[str, object]) -> Dict[str, str]:
    """Metric name -> what is wrong with its pattern, for each pattern that is not a valid regex."""
    bad: Dict[str, str] = {}
    for name, rx in patterns.items():
        if not isinstance(rx, str):
            bad[str(name)] = f"{rx!r} is not a string (expected a regular expression)"
            continue
        try:
            re.compile(rx)
        except (re.error, RecursionError, OverflowError) as e:
            bad[str(name)] = f"{rx!r} is not a valid regular expression ({e})"
    return bad
