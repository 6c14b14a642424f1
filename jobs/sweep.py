"""Sweep the unification method, mode, temperature (and student lr) on a run's cached logits.

    python jobs/sweep.py                                   # the default grid on runs/unified-fmnist
    python jobs/sweep.py --run-dir runs/my-model --sweep-config configs/sweep-full.yaml
    python jobs/sweep.py --val DIR                          # rank by accuracy on a labelled ImageFolder
    python jobs/sweep.py --no-labels                        # rank by the label-free proxy (zoo/proxy.py)
    ray job submit --address http://127.0.0.1:8265 --working-dir . -- python jobs/sweep.py

The run directory must hold transfer.parquet and logits.parquet (run `python jobs/unify.py` first:
the sweep never re-runs teacher inference). The student (architecture, input, batch size, optimiser,
seed) comes from the main job's config (--config, default configs/default.yaml), so the sweep's short
trials are short runs of the final student. Labelled validation images: --val DIR (or `val:` in the
job config), else the demo split's validation set (training images no teacher and no transfer image
uses), else none (the proxy ranks the trials). Never the test images: they report the final student.
The run directory may be a URI (s3://..., file://...). Results:
<run-dir>/sweep/ (results.json, sweep.png, Tune's trial dirs with TensorBoard events) and MLflow
(a "sweep" run with every trial nested under it). See docs/sweep.md.
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

from zoo.config import load_config  # noqa: E402
from zoo.pipeline import JobError  # noqa: E402
from zoo.pipeline.session import Session  # noqa: E402
from zoo.pipeline.storage import path_exists  # noqa: E402
from zoo.pipeline.sweep import load_sweep_config, run_sweep  # noqa: E402
from zoo.pipeline.unify import sweep_inputs  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="jobs/sweep.py", description=__doc__.split("\n\n")[0])
    add = p.add_argument
    add("--config", help="the main job's YAML config (student, zoo, run dir); default configs/default.yaml")
    add("--sweep-config", help="sweep YAML (SweepConfig keys); default: the built-in default grid")
    add("--run-dir", help="run directory with transfer.parquet and logits.parquet (default runs/<name>)")
    add(
        "--val",
        help="labelled validation ImageFolder to rank trials by accuracy (class dirs = union classes)",
    )
    add("--eval", dest="val", help=argparse.SUPPRESS)  # the old name of --val
    add("--no-labels", action="store_true", help="ignore any labelled set: rank by the label-free proxy")
    add("--methods", help="comma-separated methods (sd, ce, mf-p, mf-lu, mf-lf)")
    add("--modes", help="comma-separated modes (e, bp, bs)")
    add("--temperatures", help="comma-separated temperatures")
    add("--lrs", help="comma-separated student learning rates")
    add("--epochs", type=int, help="epochs per trial")
    add("--transfer-limit", type=int, help="transfer images the sweep uses")
    add("--max-concurrent-trials", type=int, help="trials at once (default: CPUs / cpus_per_trial)")
    add("--tracking-uri", help="MLflow tracking URI (default $MLFLOW_TRACKING_URI, else sqlite zoo.db)")
    add("--experiment", help="MLflow experiment (default: the job config's)")
    add("--ray-address", help="Ray cluster address (default: the job's cluster, else a local one)")
    add("--force", action="store_true", help="sweep again even when results.json is up to date")
    return p


def _values(text: str | None, kind: type) -> list | None:
    return None if text is None else [kind(v.strip()) for v in text.split(",") if v.strip()]


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        job_cfg = load_config(
            args.config, {"ray_address": args.ray_address, "tracking_uri": args.tracking_uri}
        )
        sweep_cfg = load_sweep_config(
            args.sweep_config,
            {
                "methods": _values(args.methods, str),
                "modes": _values(args.modes, str),
                "temperatures": _values(args.temperatures, float),
                "lrs": _values(args.lrs, float),
                "epochs": args.epochs,
                "transfer_limit": args.transfer_limit,
                "max_concurrent_trials": args.max_concurrent_trials,
            },
        )
        with Session(
            args.run_dir or job_cfg.run_path,
            tracking_uri=job_cfg.tracking_uri,
            ray_address=job_cfg.ray_address,
            num_cpus=job_cfg.num_cpus,
        ) as s:
            if not path_exists(s.run.logits):
                raise JobError(
                    f"{s.run.logits} is missing: run the main job first "
                    f"(python jobs/unify.py --run-dir {s.run.display}) or pass --run-dir"
                )
            spec, recipe, val_set = sweep_inputs(job_cfg, s, args.val, args.no_labels)
            s.start_ray()
            res = run_sweep(
                sweep_cfg,
                s.run.root,
                spec=spec,
                schedule=job_cfg.schedule(),
                recipe=recipe,
                val_set=val_set,
                tracking_uri=s.tracking_uri,
                experiment=args.experiment or job_cfg.experiment,
                force=args.force,
            )
    except (JobError, ValueError, LookupError) as e:  # bad input or config: one line, exit 2
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"[sweep] results {res.results_path}; plot {res.plot_path}; MLflow run {res.mlflow_run_id}")
    print(f"[sweep] TensorBoard: tensorboard --logdir {res.tune_path}")
    b = res.best_config
    print(
        "[sweep] train the final student with it: python jobs/unify.py "
        f"--method {b['method']} --mode {b['mode']} --temperature {b['temperature']:g} --lr {b['lr']:g}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
