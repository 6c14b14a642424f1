"""Build the multi-label demo: Fashion-MNIST mosaics on disk and multi-label teachers in the zoo.

    python jobs/make_multilabel_zoo.py                         # data/mosaics, teachers fmnist-ml-*
    python jobs/make_multilabel_zoo.py --data DIR --name NAME --teachers 3 --labels-per-teacher 5

Writes DIR/{train,val,test}.parquet (kept when already there with the same sizes and seed), then trains
and registers <name>-all (all 10 labels; tag zoo=<name>-all: the distillation job's teacher) and
<name>-t0.. (overlapping label subsets, each on its own share of the images; tag zoo=<name>: a zoo for
the multi-label unification, `python jobs/unify.py --zoo <name> ...`). A rebuild makes new versions.
Prints a table of the teachers (test mAP, CF1, OF1 on their own labels). See docs/multilabel.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script from anywhere, without installing the project
    sys.path.insert(0, str(ROOT))

from zoo.pipeline.console import quiet_console  # noqa: E402

quiet_console()  # before MLflow is imported

from zoo.pipeline.make_multilabel_zoo import (  # noqa: E402
    MultilabelDemoConfig,
    build_multilabel_zoo,
    format_rows,
)
from zoo.pipeline.session import tracking_uri_for  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    d = MultilabelDemoConfig()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = p.add_argument
    add("--name", default="fmnist-ml", help="teachers are <name>-all and <name>-t<i>")
    add("--data", default="data/mosaics", help="directory for the mosaics' Parquet splits")
    for split, n in d.sizes.items():
        add(f"--{split}", type=int, default=n, help=f"{split} mosaics")
    add("--seed", type=int, default=d.seed)
    add("--teachers", type=int, default=d.teachers, help="teachers over label subsets")
    add("--labels-per-teacher", type=int, default=d.labels_per_teacher)
    add("--epochs", type=int, default=d.epochs)
    add("--tracking-uri", default=None, help="MLflow store (default $MLFLOW_TRACKING_URI or zoo.db)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg = MultilabelDemoConfig(
            sizes={"train": args.train, "val": args.val, "test": args.test},
            seed=args.seed,
            teachers=args.teachers,
            labels_per_teacher=args.labels_per_teacher,
            epochs=args.epochs,
        )
        rows = build_multilabel_zoo(args.name, args.data, cfg, tracking_uri_for(args.tracking_uri))
    except (ValueError, FileNotFoundError) as e:
        print(f"make_multilabel_zoo: {e}", file=sys.stderr)
        return 2
    print(f"\nmulti-label demo {args.name}: mosaics in {args.data}; teachers (test metrics on their labels):")
    print(format_rows(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
