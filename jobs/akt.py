"""Improve a target classifier with unlabelled images of other classes (paper 003, AKT), and register it
in the zoo as a teacher.

    python jobs/akt.py --target DIR --source DIR --name NAME [--eval DIR] [--method akt]
    python jobs/akt.py --config my-akt.yaml --epochs 40
    python jobs/akt_demo_data.py --out data/akt-demo      # Fashion-MNIST demo data for the line above

--target: a labelled ImageFolder (target/<class>/<image>); --source: unlabelled images of other classes
(a directory, any depth, or Parquet); --method scratch | pseudo-label | akt-di | akt (the baselines run
the same code path). Stages (docs/akt.md, "The job"): target and source as Parquet -> M, G, D_I, D_G on
Ray Train (checkpoints, resume, MLflow curves) -> evaluation -> registration (role=teacher, lineage).
Exit 2: bad input (one line, nothing computed); exit 1: the game diverged (nothing registered).
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

from zoo.config import add_run_flags, load_akt_config  # noqa: E402
from zoo.pipeline import JobError  # noqa: E402
from zoo.pipeline.akt import AKTDiverged, run_akt  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    """The job's command line; every flag defaults to None, so only flags given override the file."""
    p = argparse.ArgumentParser(prog="jobs/akt.py", description=__doc__.splitlines()[0])
    add = p.add_argument
    add("--config", help="YAML config file (keys as the long flags, with '_'); flags override it")
    add("--target", help="labelled ImageFolder of the target classes: DIR/<class>/<image>")
    add("--source", help="unlabelled images of other classes: a directory (any depth) or a Parquet file")
    add("--name", help="name of the classifier in the registry")
    add("--eval", help="labelled ImageFolder of the target classes to evaluate M on")
    add("--method", help="scratch | pseudo-label | akt-di | akt (default akt)")
    add("--arch", help="M's and G's architecture (zoo.architectures allow-list; default cnn)")
    add("--epochs", type=int, help="epochs (default 20); an epoch is one pass over the larger set")
    add("--batch-size", type=int, help="target and source images per iteration, each (default 64)")
    add("--warmup-epochs", type=int, help="epochs of M on the target alone first (default: half the epochs)")
    add("--lr-m", type=float, help="M's SGD learning rate (paper 0.01)")
    add("--lr-g", type=float, help="G's SGD learning rate (paper 0.01)")
    add("--lr-d", type=float, help="the discriminators' SGD learning rate (paper 0.001)")
    add("--lambda-di", type=float, help="weight of the instance discriminator (paper 1)")
    add("--lambda-dg", type=float, help="weight of the group discriminator (paper 1)")
    add("--lambda-s", type=float, help="weight of the pseudo-labelled source in M's loss, Eq. 6 (paper 1)")
    add("--pseudo-labels", help="hard (G's argmax, paper) or soft (G's probabilities)")
    add("--seed", type=int, help="seed of the initial weights and the batch order")
    add("--source-limit", type=int, help="use only the first N source images")
    add("--image-column", help="the source Parquet's column of encoded images (default image/img/bytes)")
    add("--zoo", help="also tag the classifier zoo=NAME (jobs/unify.py --zoo NAME then takes it)")
    add_run_flags(p)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = vars(build_parser().parse_args(argv))
        run_akt(load_akt_config(args.pop("config"), args))
    except JobError as e:  # bad input, said in one line; nothing was computed
        print(f"error: {e}", file=sys.stderr)
        return 2
    except AKTDiverged as e:  # the game diverged; nothing was registered
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
