"""The main job: unify teachers of the zoo into one student over the union of their classes.

    python jobs/unify.py                                  # the embedded default (configs/default.yaml)
    python jobs/unify.py --teachers a,b,c --transfer DIR --eval DIR --name my-model
    python jobs/unify.py --config configs/full.yaml --epochs 10
    ray job submit --address http://127.0.0.1:8265 --working-dir . -- python jobs/unify.py

Stages (docs/unify-job.md): teachers -> transfer set -> Ray Data inference (logits.parquet) -> soft
labels -> Ray Train student -> MLflow registration (alias `champion` only if it beats the current one).
Each stage is skipped on a rerun when its inputs are unchanged (--force reruns them).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script from anywhere, without installing the project
    sys.path.insert(0, str(ROOT))

from zoo.config import ConfigError, config_from_args  # noqa: E402


def main(argv: Sequence[str] | None = None) -> int:
    try:
        cfg = config_from_args(argv)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    # Progress bars on a terminal only; Ray Data prints its own per-operator progress.
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one bar per teacher download
    from zoo.pipeline.job import JobError, run_unify
    from zoo.pipeline.transfer import TransferSetError

    try:
        run_unify(cfg)
    except (JobError, TransferSetError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
