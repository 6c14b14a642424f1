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

import sys
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script from anywhere, without installing the project
    sys.path.insert(0, str(ROOT))

from zoo.pipeline.console import quiet_console  # noqa: E402

quiet_console()  # before Ray and MLflow are imported: some of their settings are read at import

from zoo.config import config_from_args  # noqa: E402
from zoo.pipeline import JobError  # noqa: E402
from zoo.pipeline.unify import run_unify  # noqa: E402


def main(argv: Sequence[str] | None = None) -> int:
    try:
        run_unify(config_from_args(argv))
    except JobError as e:  # bad input, said in one line; nothing was computed
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
