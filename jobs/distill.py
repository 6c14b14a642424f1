"""Cross-task distillation: train a student for a labelled task from a zoo teacher whose classes may
differ from the task's (paper 002, Sec. 4; docs/crosstask.md).

    python jobs/make_task.py --out tasks/fmnist                      # a demo task (Fashion-MNIST)
    python jobs/distill.py --teacher fmnist-demo-t1 --task tasks/fmnist/train --val tasks/fmnist/val \\
        --eval tasks/fmnist/eval --name fmnist-distilled
    python jobs/distill.py --teacher none --task ... --name fmnist-baseline       # the same, no teacher
    python jobs/distill.py --config my-distill.yaml --lambda 5 --tau 2

Stages (zoo/pipeline/distill.py): inputs checked -> the task's images (transfer.parquet) -> the teacher's
logits and features with Ray Data -> the cost matrix (cost.json) -> the student on Ray Train -> evaluation
and registration with lineage. Each stage is skipped on a rerun when its inputs are unchanged.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script from anywhere, without installing the project
    sys.path.insert(0, str(ROOT))

from zoo.pipeline.console import quiet_console  # noqa: E402

quiet_console()  # before Ray and MLflow are imported: some of their settings are read at import

from zoo.config import distill_config_from_args  # noqa: E402
from zoo.pipeline import JobError  # noqa: E402
from zoo.pipeline.distill import run_distill  # noqa: E402
from zoo.pipeline.training import StudentDiverged  # noqa: E402


def main(argv: Sequence[str] | None = None) -> int:
    try:
        run_distill(distill_config_from_args(argv))
    except JobError as e:  # bad input, said in one line; nothing was computed
        print(f"error: {e}", file=sys.stderr)
        return 2
    except StudentDiverged as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
