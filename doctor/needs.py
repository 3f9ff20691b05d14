"""`mutation-doctor needs [-ec FILE] [--launch HOW] [--json]`: what each model needs, where that was
learnt, and its state in the launch context: the user's way to see and correct what was inferred
(a `requires` entry in the registry overrides a discovered need of the same kind).

Exit codes: 0 every blocking need is present; 1 a blocking need is missing or broken; 2 usage;
3 nothing missing, but some blocking need could not be established (unknown state).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from typing import Dict, List, Optional, Sequence

from core.secrets import mask_text
from core.vocab import FORMAT_VERSION

SYMBOL = {"present": "✓", "missing": "✗", "broken": "✗"}
FAILING = ("missing", "broken")


def build_parser() -> argparse.ArgumentParser:
    from doctor.operations import add_common_args

    p = argparse.ArgumentParser(prog="mutation-doctor needs",
                                description="Per repo and model: every need (declared or discovered in the repo's "
                                            "code), where it was learnt, and its state in the launch context.",
                                epilog="Exit codes: 0 all blocking needs present, 1 one missing, 2 usage, "
                                       "3 some could not be established.")
    add_common_args(p)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    return p


def collect(ctx) -> dict:
    """The needs document (see to_text) for a DoctorContext: discovery in its launch context."""
    from core.discover.plan import with_discovered
    from core.memo import memo_dir

    plan, found = with_discovered(ctx.plan, ctx.registry, ctx.launch.home, ctx.launch.env.get("PATH", ""),
                                  memo_dir(ctx.options))
    ctx = dataclasses.replace(ctx, plan=plan, _states=None)
    states = ctx.need_states()
    used = {(s.repo, s.model) for e in plan.experiments for s in e.sides}
    repos = []
    for name, rn in found.items():
        models = {m: [_item(f, states, ctx.launch.env) for f in fs] for m, fs in rn.models.items() if (name, m) in used}
        repos.append({"repo": name, "script": rn.script, "models": models,
                      "candidates": [_item(f, states, ctx.launch.env) for f in rn.candidates],
                      "unresolved": [{"file": u.file, "line": u.line, "text": mask_text(u.text, ctx.launch.env),
                                      "why": u.why} for u in rn.unresolved]})
    launch = ctx.launch
    return {"format_version": FORMAT_VERSION,
            "launch": {"how": launch.how, "user": launch.user, "home": launch.home, "hf_cache": launch.hf_cache,
                       "torch_hub": launch.torch_hub, "inspected_as": ctx.inspected_as or launch.user},
            "repos": repos}


def _item(f, states, env) -> dict:
    s = states.get(f.need.key) if f.need is not None else None
    state = s.status if s is not None else ("unresolved" if f.unresolved else "not checked")
    return {"kind": f.kind, "spec": {k: mask_text(str(v), env) if isinstance(v, str) else v for k, v in f.spec.items()},
            "label": mask_text(f.label, env), "model": f.model, "provenance": f.provenance,
            "confidence": f.confidence, "blocking": f.blocking, "state": state,
            "path": s.path if s is not None else "", "found_elsewhere": [list(x) for x in (s.found_elsewhere if s else ())],
            "detail": mask_text(f.detail, env), "unresolved": f.unresolved}


def exit_code(doc: dict) -> int:
    items = [i for r in doc["repos"] for fs in r["models"].values() for i in fs if i["blocking"]]
    if any(i["state"] in FAILING for i in items):
        return 1
    if any(i["state"] != "present" for i in items) or any(not fs for r in doc["repos"] for fs in r["models"].values()):
        return 3
    return 0


def _line(i: dict) -> str:
    sym = SYMBOL.get(i["state"], "?") if i["blocking"] else ("!" if i["state"] != "present" else "✓")
    where = f" {i['path']}" if i["path"] and i["path"] not in i["label"] else ""
    text = f"    {sym} {i['label']}  [{i['provenance']}, {'blocks' if i['blocking'] else 'candidate'}, " \
           f"confidence {i['confidence']:.2f}]  {i['state']}{where}"
    for label, path in i["found_elsewhere"]:
        text += f"\n        present in {path} ({label})"
    if i["unresolved"]:
        text += f"\n        {i['unresolved']}"
    return text


def to_text(doc: dict, verbose: bool = False) -> str:
    launch = doc["launch"]
    out: List[str] = [f"Launch: {launch['how']} as {launch['user']}, HOME={launch['home']}  "
                      f"(Hugging Face cache {launch['hf_cache']}, torch hub {launch['torch_hub']})"]
    for r in doc["repos"]:
        out.append(f"\n{r['repo']}  ({r['script']})")
        for model, items in r["models"].items():
            out.append(f"  {model}" + ("" if items else ": nothing declared or discovered (unverified)"))
            out += [_line(i) for i in items]
            if verbose:
                out += [f"        {i['detail']}" for i in items if i["detail"]]
        if r["candidates"]:
            out.append(f"  loads no model of the registry is shown to reach ({len(r['candidates'])}, warnings only):")
            out += [_line(i) for i in r["candidates"]]
        for u in r["unresolved"]:
            out.append(f"  ? {u['file'].rsplit('/', 1)[-1]}:{u['line']}: {u['why']}: {u['text']}")
    out.append("\nA need that is wrong: declare it in the registry's \"requires\" for that model "
               "(a declared kind replaces what was discovered).")
    return "\n".join(out)


def main(argv: Optional[Sequence[str]] = None) -> int:
    from doctor.operations import make_context

    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    doc = collect(make_context(args))
    if args.json:
        json.dump(doc, sys.stdout, indent=2, ensure_ascii=False)
        sys.stdout.write("\n")
    else:
        print(to_text(doc))
    return exit_code(doc)


def needs_by_key(doc: dict) -> Dict[str, List[dict]]:
    """Items per model key `repo/model`, for callers that look one model up."""
    return {f"{r['repo']}/{m}": items for r in doc["repos"] for m, items in r["models"].items()}


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
