"""The checks every leaderboard carries: per setting, the test episodes' fingerprints agree
across methods and the training fingerprints across the methods of the shared stream."""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

__all__ = ["fingerprint_checks"]


def _common_mark(recs: Sequence[Dict[str, Any]]) -> Tuple[Optional[int], List[Optional[str]]]:
    """The largest episode count at which every record has a training-fingerprint mark,
    and each record's fingerprint there (records without marks: their final one, when all
    trained on the same number of episodes)."""
    counts = {r.get("train_episodes") for r in recs}
    if len(counts) == 1 or not all(r.get("train_fingerprint_marks") for r in recs):
        return (counts.pop() if len(counts) == 1 else None), [r["train_fingerprint"] for r in recs]
    common = set.intersection(*(set(int(k) for k in r["train_fingerprint_marks"]) for r in recs))
    if not common:
        return None, [r["train_fingerprint"] for r in recs]
    n = max(common)
    return n, [r["train_fingerprint_marks"][str(n)] for r in recs]


def fingerprint_checks(records: Sequence[Dict[str, Any]]) -> Dict[str, Dict[str, Any]]:
    """Per setting: do the test fingerprints agree across methods, and the training
    fingerprints across the shared-stream methods (at the largest episode count they all
    reached, when a time budget gave them different counts)? Marks each record's ``check``."""
    out: Dict[str, Dict[str, Any]] = {}
    by_setting: Dict[str, List[Dict[str, Any]]] = {}
    for r in records:
        if r["status"] == "ok":
            by_setting.setdefault(r["setting"], []).append(r)
    for setting, recs in by_setting.items():
        test_fps = [r["test_fingerprint"] for r in recs]
        shared = [r for r in recs if r.get("shared_stream", True)]
        at, train_fps = _common_mark(shared) if shared else (None, [])
        test_ref = max(set(test_fps), key=test_fps.count)
        train_ref = max(set(train_fps), key=train_fps.count) if train_fps else None
        shared_fp = {id(r): fp for r, fp in zip(shared, train_fps)}
        for r in recs:
            problems = []
            if r["test_fingerprint"] != test_ref:
                problems.append("ERROR: test episodes differ from the other methods'")
            if id(r) in shared_fp and train_ref is not None and shared_fp[id(r)] != train_ref:
                problems.append("ERROR: training episodes differ from the other methods'")
            r["check"] = "; ".join(problems) if problems else "ok"
        out[setting] = {
            "test_fingerprint": test_ref,
            "test_fingerprints_agree": len(set(test_fps)) == 1,
            "train_fingerprint": train_ref,
            "train_compared_at_episodes": at,
            "train_fingerprints_agree": len(set(train_fps)) <= 1,
            "methods": [r["method"] for r in recs],
        }
    return out
