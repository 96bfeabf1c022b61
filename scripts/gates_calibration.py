"""Print the quality gates' precision and recall on the labelled set (docs/quality.md).

    python scripts/gates_calibration.py [tests/data/gates_labelled.jsonl] [-v]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from reflectune.config import GATE_NAMES
from reflectune.recycling.calibration import calibrate

DEFAULT = Path(__file__).resolve().parents[1] / "tests" / "data" / "gates_labelled.jsonl"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f} %"


def main(argv: list[str]) -> int:
    args = [a for a in argv if a != "-v"]
    path = Path(args[0]) if args else DEFAULT
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    result = calibrate(records)
    print(f"{path.name}: {len(records)} labelled variants, {result.good} real rewrites, "
          f"{result.bad} failed ones")
    print(f"real rewrites kept:   {result.good_kept} of {result.good} ({_pct(result.kept_share)})")
    print(f"failed ones rejected: {result.bad_rejected} of {result.bad} ({_pct(result.rejected_share)})")
    print(f"{'gate':<11} {'labelled':>8} {'fired':>6} {'precision':>10} {'recall':>8}")
    for gate in GATE_NAMES:
        print(f"{gate:<11} {result.labelled[gate]:>8} {result.fired[gate]:>6} "
              f"{_pct(result.precision(gate)):>10} {_pct(result.recall(gate)):>8}")
    if "-v" in argv:
        print("real rewrites rejected:", *result.lost, sep="\n  ")
        print("failed ones kept:", *result.missed, sep="\n  ")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
