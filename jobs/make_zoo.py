"""Build the demo teacher zoo from Fashion-MNIST following paper 001's protocol (Sec. 4.1.1).

    python jobs/make_zoo.py                                   # fmnist-demo: 5 teachers over 8 classes
    python jobs/make_zoo.py --overlap complete --name fmnist-complete
    python jobs/make_zoo.py --synthetic --teachers 3          # no Fashion-MNIST needed
    ray job submit --address http://127.0.0.1:8265 --working-dir . -- python jobs/make_zoo.py

Teachers are registered as <name>-t<i> (tags zoo=<name>, role=teacher) in the MLflow store of
$MLFLOW_TRACKING_URI (default sqlite:///zoo.db); the split goes to the experiment <name>. A rebuild
makes new versions. Each teacher ships its owner's calibration (temperature and confidence quantiles,
fitted on its own held-out slice: --holdout-per-class) in its spec's metadata. Prints a table of the
teachers at the end.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script from anywhere, without installing the project
    sys.path.insert(0, str(ROOT))

from zoo.demo import DEFAULT_ARCHS, DemoConfig  # noqa: E402
from zoo.pipeline.console import quiet_console  # noqa: E402

DEMO_ZOO = "fmnist-demo"  # as zoo.pipeline.make_zoo.DEMO_ZOO (not imported here: it pulls in Ray)


def build_parser() -> argparse.ArgumentParser:
    d = DemoConfig()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--name", default=DEMO_ZOO, help="zoo name (teachers are <name>-t<i>)")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--teachers", type=int, default=d.n_teachers, help="number of teachers N")
    p.add_argument("--union", type=int, default=d.n_union_classes, help="number of union classes |L_U|")
    p.add_argument(
        "--classes-per-teacher", default="{}-{}".format(*d.classes_per_teacher), help="range, e.g. 3-5"
    )
    p.add_argument("--overlap", choices=("random", "complete"), default=d.overlap)
    p.add_argument(
        "--images-per-class",
        default=str(d.images_per_class[0]),
        help="per teacher: N or LOW-HIGH within 50-200",
    )
    p.add_argument("--transfer-size", type=int, default=d.transfer_size, help="images in the transfer set")
    p.add_argument(
        "--val-size",
        type=int,
        default=d.val_size,
        help="labelled validation images (training images of the union; the sweep selects on them)",
    )
    p.add_argument(
        "--holdout-per-class",
        type=int,
        default=d.holdout_per_class,
        help="per teacher and class, labelled images its owner holds out to calibrate it (0: no calibration)",
    )
    p.add_argument(
        "--archs",
        default=",".join(DEFAULT_ARCHS),
        help="architecture pool: name[:key=value...], comma-separated",
    )
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--optimizer", choices=("adam", "sgd"), default=d.optimizer)
    p.add_argument("--augment", action="store_true", help="random 2-pixel shifts while training teachers")
    p.add_argument("--data", default=None, help="directory of the Fashion-MNIST idx files")
    p.add_argument("--download", action="store_true", help="download Fashion-MNIST when it is not found")
    p.add_argument(
        "--synthetic", action="store_true", help="synthetic 16x16 patterns instead of Fashion-MNIST"
    )
    p.add_argument(
        "--tracking-uri", default=None, help="MLflow store (default $MLFLOW_TRACKING_URI or zoo.db)"
    )
    p.add_argument("--if-absent", action="store_true", help="build only if the zoo is not there yet")
    p.add_argument(
        "--address", default=None, help="Ray cluster address (default: $RAY_ADDRESS or a local Ray)"
    )
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds to wait for the teachers")
    return p


def _range(text: str) -> tuple[int, int]:
    lo, _, hi = text.partition("-")
    return int(lo), int(hi or lo)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg = DemoConfig(
            seed=args.seed,
            n_union_classes=args.union,
            n_teachers=args.teachers,
            classes_per_teacher=_range(args.classes_per_teacher),
            images_per_class=_range(args.images_per_class),
            transfer_size=args.transfer_size,
            val_size=args.val_size,
            holdout_per_class=args.holdout_per_class,
            overlap=args.overlap,
            archs=tuple(a for a in args.archs.split(",") if a.strip()),
            epochs=args.epochs,
            lr=args.lr,
            batch_size=args.batch_size,
            optimizer=args.optimizer,
            augment=args.augment,
        )
    except ValueError as e:
        print(f"make_zoo: {e}", file=sys.stderr)
        return 2

    quiet_console()
    # Ray and MLflow only once the flags are known good: `--help` and a bad flag answer at once.
    import ray

    from zoo.pipeline.make_zoo import build_zoo, ensure_demo_zoo, format_table
    from zoo.pipeline.session import init_ray, tracking_uri_for

    kwargs = dict(data=args.data, synthetic=args.synthetic, download=args.download, timeout_s=args.timeout)
    uri = tracking_uri_for(args.tracking_uri)
    started = init_ray(args.address)
    try:
        if args.if_absent:
            build = ensure_demo_zoo(args.name, cfg, uri, **kwargs)
        else:
            build = build_zoo(args.name, cfg, tracking_uri=uri, **kwargs)
    except (ValueError, LookupError, FileNotFoundError) as e:
        print(f"make_zoo: {e}", file=sys.stderr)
        return 2
    finally:
        if started:
            ray.shutdown()
    what = "built" if build.built else "already present"
    print(
        f"\nzoo {build.name} {what}: {len(build.records)} teachers over "
        f"{len(build.split.union_classes)} classes "
        f"({', '.join(build.split.union_classes)}); transfer set {len(build.split.transfer_indices)} images, "
        f"eval set {len(build.split.eval_indices)} images; split run {build.run_id}"
        + (f"; {build.seconds:.1f} s" if build.built else "")
    )
    print(format_table(build.rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
