"""`mutation-doctor explain`: failure explanation reports for finished experiment batches.

    from doctor.explain import explain_path, main
    report = explain_path("results/run_20260106_220807")   # BatchReport
    main(["results/", "--markdown", "report.md"])          # the CLI, returns the exit code
"""
from doctor.explain.cli import main
from doctor.explain.model import BatchReport, Cause, Evidence, Explanation, NeedUse


def explain_path(path, registry=None, cap=None, rerun_path=None, jobs=None):
    """Explain every experiment under PATH (see doctor.explain.batch.explain_path)."""
    from doctor.explain.batch import explain_path as _explain
    from doctor.explain.readers import DEFAULT_CAP

    return _explain(path, registry=registry, cap=cap or DEFAULT_CAP, rerun_path=rerun_path, jobs=jobs)


__all__ = ["main", "explain_path", "BatchReport", "Cause", "Evidence", "Explanation", "NeedUse"]
