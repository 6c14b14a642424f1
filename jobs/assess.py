"""The assess job: rank the zoo's teachers for a new labelled task (paper 002, Sec. 5).

    python jobs/assess.py --write-demo-task runs/fmnist-task      # a Fashion-MNIST task folder, then:
    python jobs/assess.py --task runs/fmnist-task --zoo fmnist-demo
    python jobs/assess.py --task DIR --teachers a,b,c --metrics sinkhorn,logme,leep,nce
    python jobs/assess.py --task task.parquet --label-column label   # Parquet: image + label columns

Each teacher's logits and penultimate features on the task's images are computed once with Ray Data
and cached per teacher (a teacher added later does not recompute the others); then the scores
(Approximation II's Sinkhorn score, LogME, LEEP, NCE; higher is better), the ranking table, summary.json,
ranking.png and an MLflow run with every score (docs/assess.md, "The job"). `zoo assess` is the same
job from the CLI, with --json and --top K --names.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script from anywhere, without installing the project
    sys.path.insert(0, str(ROOT))

from zoo.pipeline.console import quiet_console  # noqa: E402

quiet_console()  # before Ray and MLflow are imported: some of their settings are read at import

from zoo.cli import add_assess_arguments  # noqa: E402
from zoo.pipeline import JobError  # noqa: E402
from zoo.pipeline.assess import AssessConfig, run_assess, write_demo_task  # noqa: E402


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="jobs/assess.py", description=__doc__.splitlines()[0])
    add_assess_arguments(p)
    p.add_argument("--tracking-uri", help="MLflow store (default $MLFLOW_TRACKING_URI, else ./zoo.db)")
    p.add_argument(
        "--write-demo-task", metavar="DIR", help="write a Fashion-MNIST task folder to DIR and stop"
    )
    args = p.parse_args(argv)
    try:
        if args.write_demo_task:
            out = write_demo_task(args.write_demo_task)
            print(f"wrote a Fashion-MNIST task (5 classes x 100 test images) to {out}")
            return 0
        run_assess(AssessConfig.from_args(args))
    except JobError as e:  # bad input, said in one line; nothing was computed
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
