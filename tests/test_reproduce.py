"""benchmarks/reproduce_uhc.py: the table, significance and plot functions on synthetic numbers, the
work plan and its resumption, and the last-layer noise of Sec. 4.2. No training of students here."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import reproduce_uhc as R  # noqa: E402


def _rows(protocol: str, means: dict[str, float], seeds: range, noise: float, rng: np.random.Generator):
    rows = []
    for s in seeds:
        trial_shift = rng.normal(0, 0.02)  # trial difficulty, shared by the methods (paired design)
        for m, mode in R.TABLE_METHODS:
            name = R.method_name(m, mode)
            rows.append(
                {
                    "protocol": protocol,
                    "seed": s,
                    "transfer_size": 20000,
                    "teacher_accuracy": None,
                    "teacher_test_accuracy": 0.9,
                    "kind": "student",
                    "method": m,
                    "mode": mode,
                    "temperature": 3.0,
                    "trial": f"{protocol}-s{s}",
                    "student": R._student_tag(),
                    "accuracy": means.get(name, 0.7) + trial_shift + rng.normal(0, noise),
                }
            )
        rows.append(
            {
                **rows[-1],
                "kind": "spv",
                "method": "spv",
                "mode": "-",
                "temperature": 0.0,
                "accuracy": 0.9 + trial_shift,
            }
        )
    return rows


def test_method_names_follow_table_2():
    names = [R.method_name(m, mode) for m, mode in R.TABLE_METHODS]
    assert names[:2] == ["SD", "SD-BS"]
    assert "MF-LU-BP" in names and "CE-E" in names and len(names) == len(set(names)) == 14


def test_significance_marks_best_and_ties():
    rng = np.random.default_rng(0)
    n = 12
    base = rng.normal(0.8, 0.03, size=n)
    acc = np.stack(
        [base + 0.05, base + 0.05 + rng.normal(0, 1e-3, n), base - 0.10, base + 0.2], axis=1
    )  # col 3 plays SPV: higher, but excluded from the candidates
    best, p, tied = R.significance(acc, ["A", "B", "C", "SPV"])
    assert best in (0, 1)
    assert tied[1 - best]  # a near-copy of the best is not significantly different
    assert not tied[2] and p[2] < 0.01  # 10 points worse on every one of 12 trials
    assert p[best] == 1.0


def test_significance_identical_columns_are_ties():
    acc = np.tile(np.array([[0.5, 0.5]]), (10, 1))
    best, p, tied = R.significance(acc, ["A", "B"])
    assert tied.all() and (p == 1.0).all()


def test_report_from_synthetic_rows(tmp_path):
    rng = np.random.default_rng(1)
    rows = _rows("random", {"SD": 0.6, "CE-BS": 0.85, "MF-LF-BS": 0.849}, range(10), 0.002, rng)
    rows += _rows("overlap", {"SD": 0.86}, range(10), 0.002, rng)
    # one sensitivity point per axis
    for x in (1000, 20000, 50000):
        rows.append({**rows[0], "transfer_size": x, "method": "sd", "mode": "bp", "accuracy": 0.5})
    out = tmp_path / "results" / "reproduce-uhc.md"
    text = R.write_report(rows, out, ["random", "overlap"], {"command": "pytest"})
    assert out.read_text() == text
    summary = json.loads(out.with_name("reproduce-uhc.json").read_text())
    assert summary["random"]["best"] in ("CE-BS", "MF-LF-BS")
    assert "SD" not in summary["random"]["tied"]
    assert summary["random"]["seeds"] == list(range(10))
    assert summary["random"]["gap_to_spv"] == pytest.approx(0.05, abs=0.01)
    assert "<ins>**" in text and "| SPV |" in text
    assert "| SD-BP | 0.5000 (n=1) | 0.5000 (n=1) | 0.5000 (n=1) |" in text  # Fig. 3a over seed 0 only
    assert out.with_name("reproduce-uhc-table2.png").stat().st_size > 1000
    assert out.with_name("reproduce-uhc-fig3.png").stat().st_size > 1000


def test_plan_merges_trials_and_resumes():
    units = R.plan(["random", "overlap"], 2, 1, ["size", "temperature"], [1000, 20000], [1.0, 3.0], [])
    keys = [u.tkey for u in units]
    assert len(keys) == len(set(keys))
    main = next(u for u in units if u.tkey == R.trial_key("random", 0, 20000, 0.0, None))
    # the T sweep joined the main trial: SD-BP at T=1 and T=3, the Table 2 methods once each
    assert ("sd", "bp", 1.0) in main.tasks and ("sd", "bp", 3.0) in main.tasks
    assert len(main.tasks) == len(set(main.tasks)) and main.spv
    done = {R.row_key(main.tkey, *t) for t in main.tasks} | {R.row_key(main.tkey, "spv", "-", 0.0)}
    left = R.pending(main, done)
    assert left is not None and not left.tasks and not left.spv and left.qacc
    done |= {R.row_key(main.tkey, f"q:{m}", "-", 3.0) for m in main.qacc}
    assert R.pending(main, done) is None


def test_read_rows_skips_a_torn_line(tmp_path):
    p = tmp_path / "r.jsonl"
    R._append(p, {"key": "a", "accuracy": 0.5})
    with open(p, "a") as f:
        f.write('{"key": "b", "acc')  # a run killed mid-write
    assert [r["key"] for r in R.read_rows(p)] == ["a"]


def test_last_layer_noise_reaches_target_accuracy():
    torch.manual_seed(0)
    x = torch.randn(200, 1, 8, 8)
    w = torch.randn(64, 4)
    y = (x.flatten(1) @ w).argmax(1)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 4))
    with torch.no_grad():
        model[1].weight.copy_(w.T)
        model[1].bias.zero_()
    sigma, acc = R.add_last_layer_noise(model, x, y, target_accuracy=0.6, seed=0)
    assert sigma > 0 and 0.5 <= acc <= 0.6
    # already at or below the target: left as it is
    sigma2, acc2 = R.add_last_layer_noise(model, x, y, target_accuracy=0.9, seed=1)
    assert sigma2 == 0.0 and acc2 == acc
