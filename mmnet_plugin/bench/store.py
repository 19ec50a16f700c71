"""Finished results on disk: one JSON record per (method, setting) under
``<output>/records/``, written atomically and keyed by everything that decides it (the
configuration and the code), so a rerun resumes and other code's results are not reused."""

from __future__ import annotations

import datetime as _dt
import json
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from .files import atomic_write_json
from .methods import METHODS

__all__ = ["ResultStore", "utc_now"]


def utc_now() -> str:
    """The time now in UTC, ISO 8601 to the second (records' ``finished_at``)."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


class ResultStore:
    """Finished records under ``<output>/records/`` (one JSON file each, written
    atomically), and the summaries rewritten after each one.

    A record is reused when its key matches (same configuration and code). Records of the
    same configuration made by other code are counted in :attr:`other_code` and reused only
    with ``reuse_stale`` (then marked ``reused_stale_code``)."""

    def __init__(
        self, output: Path, run_info: Dict[str, Any], run_key: str, config_key_nocode: str, reuse_stale: bool = False
    ):
        self.output = output
        self.records_dir = output / "records"
        self.run_info = run_info
        self.run_key = run_key
        self.reuse_stale = reuse_stale
        self.records: Dict[str, Dict[str, Any]] = {}  # key -> record (status ok)
        self.other_code: Dict[str, Dict[str, Any]] = {}  # key_nocode -> record made by other code
        self.failed: List[Dict[str, Any]] = []
        self.stale = 0
        if self.records_dir.is_dir():
            for f in sorted(self.records_dir.glob("*.json")):
                try:
                    rec = json.loads(f.read_text())
                except (OSError, ValueError):
                    print(f"note: ignoring unreadable record {f}", file=sys.stderr)
                    continue
                if not isinstance(rec, dict) or rec.get("status") != "ok" or "key" not in rec:
                    continue
                if rec.get("run_key") == run_key:
                    self.records[rec["key"]] = rec
                elif rec.get("config_key") == config_key_nocode and "key_nocode" in rec:
                    self.other_code[rec["key_nocode"]] = rec
                else:
                    self.stale += 1

    def done(self, key: str, key_nocode: Optional[str] = None) -> Optional[Dict[str, Any]]:
        rec = self.records.get(key)
        if rec is None and self.reuse_stale and key_nocode is not None and key_nocode in self.other_code:
            rec = dict(self.other_code[key_nocode], reused_stale_code=True)
            self.records[rec["key"]] = rec
        return rec

    def conflicting(self, method: str, setting: str, key: str) -> List[Dict[str, Any]]:
        """Finished records of the same run configuration, method and setting whose method
        configuration differs (e.g. changed hyperparameters): they are not reused."""
        return [
            r for r in self.records.values() if r["method"] == method and r["setting"] == setting and r["key"] != key
        ]

    def retire(self, method: str, setting: str, key: str) -> List[Dict[str, Any]]:
        """Drop the :meth:`conflicting` records from this run's results (their files stay)."""
        old = self.conflicting(method, setting, key)
        for r in old:
            self.records.pop(r["key"], None)
        return old

    def add(self, record: Dict[str, Any]) -> None:
        if record["status"] == "ok":
            # a newer configuration of the same method and setting replaces the older one
            for old in self.conflicting(record["method"], record["setting"], record["key"]):
                self.records.pop(old["key"], None)
            self.records[record["key"]] = record
            name = f"{record['method']}__{record['setting']}__{record['key']}.json"
            atomic_write_json(self.records_dir / name, record)
        else:
            self.failed = [
                f for f in self.failed if (f["method"], f["setting"]) != (record["method"], record["setting"])
            ]
            self.failed.append(record)

    def current(self) -> List[Dict[str, Any]]:
        """The records of this run configuration, in setting then method order."""
        order = {m: i for i, m in enumerate(METHODS)}
        latest: Dict[Tuple[str, str], Dict[str, Any]] = {}
        for r in sorted(self.records.values(), key=lambda r: r.get("finished_at", "")):
            latest[(r["method"], r["setting"])] = r  # one row per (method, setting): the newest
        for r in self.failed:
            latest[(r["method"], r["setting"])] = r
        recs = list(latest.values())
        return sorted(recs, key=lambda r: (r["ways"], r["shots"], order.get(r["method"], 99), r["method"]))
