"""Distil a multi-label teacher of the zoo into a smaller student (paper 004: 3D, or MLD, PS, none).

    python jobs/distill_multilabel.py --teacher fmnist-ml-all --data data/mosaics --name ml-student
    python jobs/distill_multilabel.py --teacher NAME --data DIR --loss 3d --pairing views
    python jobs/distill_multilabel.py --config my.yaml --epochs 12       # flags override the file

Stages (docs/multilabel.md "The distillation job"): training images and labels -> the teacher's logits
with Ray Data -> the student on Ray Train (BCE on the labels + the distillation term) -> mAP, CF1, OF1 on
the test split -> registration (task multilabel, thresholds, lineage). Each stage is skipped on a rerun
when its inputs are unchanged (--force reruns them).
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

from zoo.config import multilabel_config_from_args  # noqa: E402
from zoo.pipeline import JobError  # noqa: E402
from zoo.pipeline.multilabel import run_distill_multilabel  # noqa: E402


def main(argv: Sequence[str] | None = None) -> int:
    try:
        run_distill_multilabel(multilabel_config_from_args(argv))
    except JobError as e:  # bad input, said in one line; nothing was computed
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
