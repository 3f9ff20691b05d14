"""Secret masking time on hostile text (long letter runs, a 300 kB log line, many assignments),
printed as one JSON object: seconds per case, best of N.

    .venv/bin/python bench/bench_masking.py [--repeat N]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from core.secrets import mask_text  # noqa: E402

CASES = {
    "letters_80kB": "a" * 80_000,
    "one_line_300kB": "x" * 300_000 + " HF_TOKEN=abc",
    "lines_15x20kB_assignments": "\n".join(["a=" * 9_999] * 15),
    "lines_15x20kB_schemes": "\n".join(["a://" * 4_999] * 15),
    "log_10k_lines": "\n".join(f"Epoch {i}: loss=0.{i} acc: 0.9 HF_TOKEN=t{i} http://u:p@h/" for i in range(10_000)),
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    out = {}
    for name, text in CASES.items():
        best = float("inf")
        for _ in range(args.repeat):
            t = time.perf_counter()
            mask_text(text)
            best = min(best, time.perf_counter() - t)
        out[name] = {"chars": len(text), "seconds": round(best, 4)}
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
