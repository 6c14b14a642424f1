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
import os
import sys
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script from anywhere, without installing the project
    sys.path.insert(0, str(ROOT))


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


def _student(job_cfg, run_dir: Path, registry, log):
    """The final student's StudentConfig: input contract from the config, else the teachers' (the most
    common one, as the main job picks it)."""
    from zoo.artifacts import InputSpec
    from zoo.pipeline.inference import read_logits
    from zoo.pipeline.job import common_input, student_config
    from zoo.pipeline.stages import join

    lf = read_logits(join(run_dir, "logits.parquet"))
    if job_cfg.student_input:
        spec = InputSpec(**job_cfg.student_input)
    else:
        spec = common_input(
            [registry.get(t["name"], version=int(t["version"])).spec.input for t in lf.teachers], log
        )
    return student_config(job_cfg, spec), lf.label_space


def _eval_set(args, job_cfg, space, registry, log):
    """Labelled validation images over the union classes, or None (the proxy ranks the trials)."""
    from zoo.pipeline.job import eval_from_folder, load_zoo_split, val_from_split
    from zoo.pipeline.training import EvalSet

    if args.no_labels:
        return None
    if args.val or job_cfg.val:
        ev = eval_from_folder(args.val or job_cfg.val, space, flag="--val")
    else:
        split = load_zoo_split(job_cfg.zoo, registry)
        ev = None if split is None else val_from_split(split, space)
        if ev is None:
            log(
                "[sweep] no labelled validation set (--val DIR) and no demo split with one: "
                "ranking by the label-free proxy"
            )
            return None
    log(f"[sweep] {len(ev.labels)} labelled validation images from {ev.source}")
    return EvalSet(ev.images, ev.labels)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    from zoo.config import ConfigError, load_config
    from zoo.pipeline.sweep import load_sweep_config

    def floats(text: str | None) -> list[float] | None:
        return None if text is None else [float(v) for v in text.split(",") if v.strip()]

    def names(text: str | None) -> list[str] | None:
        return None if text is None else [v.strip() for v in text.split(",") if v.strip()]

    try:
        job_cfg = load_config(
            args.config, {"ray_address": args.ray_address, "tracking_uri": args.tracking_uri}
        )
        sweep_cfg = load_sweep_config(
            args.sweep_config,
            {
                "methods": names(args.methods),
                "modes": names(args.modes),
                "temperatures": floats(args.temperatures),
                "lrs": floats(args.lrs),
                "epochs": args.epochs,
                "transfer_limit": args.transfer_limit,
                "max_concurrent_trials": args.max_concurrent_trials,
            },
        )
    except (ConfigError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    from zoo.pipeline.job import JobError, init_ray, job_home
    from zoo.pipeline.sweep import run_sweep
    from zoo.registry import Registry, default_tracking_uri

    home = job_home()
    tracking_uri = job_cfg.tracking_uri or (
        default_tracking_uri() if home is None else f"sqlite:///{home / 'zoo.db'}"
    )
    from zoo.pipeline.stages import is_uri, join, path_exists

    run_dir = (
        (args.run_dir if is_uri(args.run_dir) else Path(args.run_dir)) if args.run_dir else job_cfg.run_path
    )
    if home is not None and not args.run_dir and not is_uri(run_dir):
        run_dir = home / run_dir
    if not path_exists(join(run_dir, "logits.parquet")):
        print(
            f"error: {run_dir}/logits.parquet is missing: run the main job first "
            f"(python jobs/unify.py --run-dir {run_dir}) or pass --run-dir",
            file=sys.stderr,
        )
        return 2
    registry = Registry(tracking_uri)
    try:
        student, space = _student(job_cfg, run_dir, registry, print)
        ev = _eval_set(args, job_cfg, space, registry, print)
    except (JobError, ValueError, LookupError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    started = init_ray(job_cfg, print)
    try:
        res = run_sweep(
            sweep_cfg,
            run_dir,
            student=student,
            eval_set=ev,
            tracking_uri=tracking_uri,
            experiment=args.experiment or job_cfg.experiment,
            force=args.force,
        )
    finally:
        if started:
            import ray

            ray.shutdown()
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
