"""Typed configuration of the main job (`jobs/unify.py`): a dataclass loaded from YAML, with
command-line flags overriding the file, and the file overriding the defaults.

    cfg = load_config("configs/default.yaml", overrides={"epochs": 2})
    cfg = config_from_args(sys.argv[1:])     # --config FILE plus flags

Every value is checked against the field's type when the config is built; an unknown key or a
value of the wrong type raises `ConfigError` naming the key and what it expects.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from zoo.artifacts import InputSpec, ModelSpec, build_net
from zoo.assess import NORMALISATIONS
from zoo.errors import JobError
from zoo.multilabel.loss_fn import DistillRecipe
from zoo.train import Schedule
from zoo.unify.recipe import Recipe

__all__ = [
    "AKTJobConfig",
    "ConfigError",
    "DistillConfig",
    "DistillMultilabelConfig",
    "UnifyConfig",
    "add_run_flags",
    "build_distill_parser",
    "build_multilabel_parser",
    "build_parser",
    "config_from_args",
    "distill_config_from_args",
    "load_akt_config",
    "load_config",
    "load_distill_config",
    "load_multilabel_config",
    "multilabel_config_from_args",
]

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "default.yaml"


class ConfigError(JobError):
    """A config file or flag is invalid; the message names the key and the fix."""


class _JobConfig:
    """What every job's config shares: its run directory and its plain-dict form (MLflow params)."""

    name: str
    run_dir: str | None

    @property
    def run_path(self) -> Path | str:
        """The run directory: a local path, or a URI (`s3://...`, `file://...`) kept as a string;
        default runs/<name>."""
        if self.run_dir and "://" in self.run_dir:
            return self.run_dir
        return Path(self.run_dir) if self.run_dir else Path("runs") / self.name

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class UnifyConfig(_JobConfig):
    """Everything the main job needs. Teachers: all models of `zoo` (models tagged zoo=<name>), or
    the names in `teachers` (`name`, `name:3` for a version, `name@alias`), or the models matching
    every `tags` k=v. Transfer set: `transfer` (directory of images or Parquet), else the demo split's.
    Evaluation set: `eval` (labelled ImageFolder), else the demo split's (the final report only).
    Validation set (what `--sweep` selects on): `val`, else the demo split's, else none (proxy)."""

    # stage 1: teachers
    zoo: str = "fmnist-demo"
    teachers: list[str] | None = None
    tags: dict[str, str] = field(default_factory=dict)
    build_demo_zoo: bool = True  # build the demo zoo first when `zoo` is the demo zoo and is absent
    synonyms: dict[str, str] = field(default_factory=dict)
    # inputs
    transfer: str | None = None
    image_column: str | None = None
    id_column: str | None = None
    transfer_limit: int | None = None
    eval: str | None = None
    # labelled ImageFolder the sweep, the stop rule and the champion decision use (default: the demo
    # split's validation set, when there is one)
    val: str | None = None
    # stage 2: inference
    inference_batch_size: int = 512
    inference_concurrency: int | None = None
    inference_threads: int | None = None
    # stage 3: soft labels
    method: str = "ce"  # CE-BS: see configs/default.yaml for why
    mode: str = "bs"
    temperature: float = 3.0
    # levers beyond paper 001 (docs/unify.md, "Beyond the paper: levers"); defaults as measured in
    # benchmarks/results/uhc-levers.md
    teacher_temperatures: dict[str, float] = field(default_factory=dict)  # teacher name -> owner's fit
    sample_weighting: str = "none"  # "confidence": down-weight transfer images no teacher claims
    augment: bool = False  # random translations of the transfer images while the student trains
    # levers on q (issue 18; modes e and bs: bp has no q and leaves them off)
    owner_calibration: bool = False  # each teacher's temperature from its owner's calibration (its spec)
    sharpen: float = 1.0  # tau of zoo.unify.sharpen: 1 = q as estimated, 0 = hard labels
    estimation_temperature: float | None = None  # T at which q is estimated (default: temperature)
    propagate: bool = False  # smooth q over the kNN graph of the teachers' features (zoo.unify.propagate)
    propagation: dict[str, Any] = field(default_factory=dict)  # {k, alpha, dim, gamma}; default 10, .8, 64, 3
    # stage 4: student
    name: str = "unified-fmnist"
    arch: str = "cnn"
    arch_kwargs: dict[str, Any] = field(default_factory=dict)
    student_input: dict[str, Any] | None = None  # InputSpec fields; default: the teachers' contract
    epochs: int = 5  # at least; more on a small transfer set (min_steps)
    # The budget follows the data: at least this many optimiser steps (default: about the demo job's 5
    # epochs of 20k images at batch 128), so a few hundred transfer images get enough epochs.
    min_steps: int = 750
    # Stop rule: the student stops once its validation accuracy has not improved for this many epochs
    # (None: max(5, epochs // 10); 0: never). Needs a validation set.
    patience: int | None = None
    # A student whose top-1 agrees with its own soft labels' on fewer transfer images than this has not
    # converged: reported as such, and never made champion.
    min_agreement: float = 0.6
    lr: float = 0.05
    batch_size: int = 128
    optimizer: str = "sgd"
    seed: int = 0
    num_workers: int | None = None
    use_gpu: bool | None = None
    spv: bool = True  # train the SPV benchmark (supervised on the teachers' data) when it is known
    spv_epochs: int | None = None  # default: the demo teachers' epochs, else 15
    spv_data: str | None = None  # labelled ImageFolder of the teachers' own data (SPV beyond the demo zoo)
    # run
    run_dir: str | None = None  # default runs/<name>
    force: bool = False
    sweep: bool = False  # sweep method x mode x T x lr first (Ray Tune, docs/sweep.md); the best trains
    sweep_config: str | None = None  # sweep YAML (default: the built-in grid)
    tracking_uri: str | None = None
    experiment: str = "unify"
    ray_address: str | None = None
    num_cpus: int | None = None  # when starting a local Ray: logical CPUs (default max(4, 2 x cores))

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            setattr(self, f.name, coerce(f.name, getattr(self, f.name), hints[f.name]))
        bad = {k: v for k, v in self.teacher_temperatures.items() if not 0 < v < float("inf")}
        if bad:
            raise ConfigError(
                f"teacher_temperatures {bad}: each must be a finite number > 0 (fit it with "
                "zoo.unify.calibration.fit_temperature on the teacher's labelled held-out images)"
            )
        for k in ("epochs", "batch_size", "inference_batch_size", "min_steps"):
            if getattr(self, k) < 1:
                raise ConfigError(f"{k} must be >= 1, got {getattr(self, k)}")
        if self.patience is not None and self.patience < 0:
            raise ConfigError(f"patience must be >= 0 (0: no stop rule), got {self.patience}")
        if not 0 <= self.min_agreement <= 1:
            raise ConfigError(f"min_agreement must be in [0, 1], got {self.min_agreement}")
        if not self.name or "/" in self.name:
            raise ConfigError(f"name {self.name!r}: give the unified model a name without '/'")
        # The recipe and the schedule validate themselves: build them once now, so a bad value stops
        # the job here, named, before anything runs.
        try:
            self.recipe()
            self.schedule()
        except ValueError as e:
            raise ConfigError(str(e)) from None

    def recipe(
        self, teachers: Sequence[str] | None = None, owner_temperatures: Mapping[str, float] | None = None
    ) -> Recipe:
        """The student's recipe; ``teachers`` (names, in the logits' order) place the per-teacher
        temperatures: the config's ``teacher_temperatures`` by name, else (``owner_calibration``) the
        owners' (``owner_temperatures``, from the teachers' specs), else 1."""
        temps = None
        if self.teacher_temperatures and teachers is not None:
            unknown = sorted(set(self.teacher_temperatures) - set(teachers))
            if unknown:
                raise ConfigError(
                    f"teacher_temperatures names {unknown} are not among the teachers {list(teachers)}"
                )
        owners = dict(owner_temperatures or {}) if self.owner_calibration else {}
        by_name = {**owners, **self.teacher_temperatures}
        if by_name and teachers is not None:
            temps = tuple(float(by_name.get(n, 1.0)) for n in teachers)
        on_q = str(self.mode).strip().lower() != "bp"  # the levers on q: modes e and bs only
        return Recipe(
            method=self.method,
            mode=self.mode,
            temperature=self.temperature,
            teacher_temperatures=temps,
            sample_weighting=self.sample_weighting,
            augment=self.augment,
            estimation_temperature=self.estimation_temperature if on_q else None,
            propagation=dict(self.propagation) if on_q and self.propagate else None,
            sharpen=self.sharpen if on_q else 1.0,
        )

    def schedule(self) -> Schedule:
        """How the student trains (paper 001, Sec. 4.1.1's schedule; `zoo.train.Schedule`)."""
        return Schedule(
            epochs=self.epochs,
            lr=self.lr,
            batch_size=self.batch_size,
            optimizer=self.optimizer,
            seed=self.seed,
        )

    def student_spec(self, classes: Sequence[str], input_spec: InputSpec) -> ModelSpec:
        """The student's network: the configured architecture over ``classes`` with ``input_spec``."""
        try:
            spec = ModelSpec(
                self.arch, list(classes), input_spec, dict(self.arch_kwargs), {"role": "student"}
            )
            build_net(spec)
        except ValueError as e:  # ArtifactError: unknown arch, bad kwargs or input
            raise ConfigError(f"student: {e}; fix --arch / arch_kwargs / student_input") from None
        return spec


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def coerce(key: str, value: Any, tp: Any) -> Any:
    """Check (and gently coerce: int -> float, "3" -> 3 for flags) `value` against the type `tp`."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return coerce(key, value, a)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{key}: {value!r} is not a {_type_name(tp)}")
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lstrip("-").isdigit():
            return int(value)
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, (str, Path)):
            return str(value)
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    if origin is list:
        (item,) = typing.get_args(tp)
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, Sequence) or isinstance(value, (str, bytes)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [coerce(f"{key}[{i}]", v, item) for i, v in enumerate(value)]
    if origin is dict:
        kt, vt = typing.get_args(tp)
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return {coerce(f"{key} key", k, kt): coerce(f"{key}.{k}", v, vt) for k, v in value.items()}
    raise ConfigError(f"{key}: unsupported type {tp}")  # pragma: no cover - a bug in the dataclass


def _fields(cls: type = UnifyConfig) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls)}


def _read_yaml(path: str | Path) -> dict[str, Any]:
    """The mapping in the YAML file ``path`` (keys with '-' read as '_'); ConfigError naming the fix."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist; pass --config PATH to a YAML file")
    try:
        loaded = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {e}") from e
    if loaded is None:
        loaded = {}
    if not isinstance(loaded, Mapping):
        raise ConfigError(
            f"config file {path} must hold a mapping of keys to values, got {type(loaded).__name__}"
        )
    return {str(k).replace("-", "_"): v for k, v in loaded.items()}


def _build(cls: type, path: str | Path | None, overrides: Mapping[str, Any] | None) -> Any:
    """``cls`` (a config dataclass) from the YAML file ``path`` (if any) with the non-None
    ``overrides`` on top; unknown keys are errors."""
    data: dict[str, Any] = _read_yaml(path) if path is not None else {}
    for k, v in (overrides or {}).items():
        if v is not None:
            data[k] = v
    unknown = sorted(set(data) - set(_fields(cls)))
    if unknown:
        raise ConfigError(
            f"unknown config key(s) {unknown}"
            + (f" in {path}" if path else "")
            + f"; valid keys: {sorted(_fields(cls))}"
        )
    return cls(**data)


def load_config(path: str | Path | None = None, overrides: Mapping[str, Any] | None = None) -> UnifyConfig:
    """The config in the YAML file `path` (default: configs/default.yaml when it exists), with
    `overrides` (non-None values) applied on top. Unknown keys are errors."""
    if path is None and DEFAULT_CONFIG.is_file():
        path = DEFAULT_CONFIG
    return _build(UnifyConfig, path, overrides)


def _parse_tag(text: str) -> tuple[str, str]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"--tag {text!r}: expected KEY=VALUE")
    k, v = text.split("=", 1)
    return k.strip(), v.strip()


def build_parser() -> argparse.ArgumentParser:
    """The job's command line. Every flag defaults to None, so only flags given override the file."""
    p = argparse.ArgumentParser(
        prog="jobs/unify.py",
        description="Unify teachers of the zoo into one student over the union of their classes "
        "(paper 001). With no arguments: the embedded default (configs/default.yaml).",
    )
    add = p.add_argument
    add("--config", help="YAML config file (keys as the long flags, with '_'); flags override it")
    add("--zoo", help="use every teacher of this zoo (models tagged zoo=NAME); default fmnist-demo")
    add("--teachers", help="comma-separated teacher names (name, name:VERSION, name@ALIAS)")
    add("--tag", action="append", type=_parse_tag, metavar="K=V", help="select teachers by tag (repeatable)")
    add("--transfer", help="transfer set: a directory of images (any depth) or a Parquet file")
    add("--image-column", help="the Parquet column holding encoded images (default: image/img/bytes)")
    add("--id-column", help="the Parquet column holding sample ids (default: id, else row numbers)")
    add("--transfer-limit", type=int, help="use only the first N transfer images")
    add("--eval", help="labelled ImageFolder for evaluation (class dirs named as union classes)")
    add(
        "--val",
        help="labelled ImageFolder: the sweep, the stop rule and the champion decision use it "
        "(default: the demo split's validation set)",
    )
    add("--name", help="name of the unified model in the registry")
    add("--method", help="soft-label method: sd, ce, mf-p, mf-lu, mf-lf")
    add("--mode", help="e (estimate q), bp (backpropagate), bs (balanced soft labels)")
    add("--temperature", type=float, help="temperature T (paper 001 uses 3)")
    add("--sample-weighting", help="none, or confidence: down-weight transfer images no teacher claims")
    add(
        "--augment",
        action="store_const",
        const=True,
        help="random translations of the transfer images while the student trains",
    )

    def on_off(flag: str, key: str, on: str, off: str) -> None:
        add(f"--{flag}", dest=key, action="store_const", const=True, help=on)
        add(f"--no-{flag}", dest=key, action="store_const", const=False, help=off)

    on_off(
        "owner-calibration", "owner_calibration", "divide each teacher's logits by its owner's temperature "
        "(its spec's calibration)", "leave the teachers' logits as they are",
    )  # fmt: skip
    add("--sharpen", type=float, metavar="TAU", help="sharpen q: 1 = as estimated, 0 = hard labels")
    add(
        "--estimation-temperature",
        type=float,
        metavar="T",
        help="T at which q is estimated (default: --temperature)",
    )
    on_off(
        "propagate", "propagate", "propagate q over the kNN graph of the teachers' features",
        "no propagation of q",
    )  # fmt: skip
    add("--epochs", type=int, help="student epochs (at least; more on a small transfer set: --min-steps)")
    add("--min-steps", type=int, help="at least this many optimiser steps for the student (default 750)")
    add("--patience", type=int, help="stop once the validation accuracy stalls this many epochs (0: never)")
    add("--arch", help="student architecture (zoo.architectures allow-list)")
    add("--lr", type=float, help="student learning rate")
    add("--batch-size", type=int, help="student batch size")
    add("--seed", type=int, help="seed of the student")
    add("--num-workers", type=int, help="Ray Train workers (default: from the cluster)")
    add("--gpu", dest="use_gpu", action="store_const", const=True, help="require GPUs")
    add("--cpu", dest="use_gpu", action="store_const", const=False, help="never use GPUs")
    add("--no-spv", dest="spv", action="store_const", const=False, help="skip the SPV benchmark")
    add("--spv-data", help="labelled ImageFolder of the teachers' own data: SPV for a zoo of your own")
    add("--run-dir", help="run directory: a path or a URI, s3://... file://... (default runs/<name>)")
    add("--force", action="store_const", const=True, help="rerun every stage even when up to date")
    add(
        "--sweep", action="store_const", const=True, help="sweep method x mode x T x lr first (docs/sweep.md)"
    )
    add(
        "--sweep-config", help="sweep YAML (default: the built-in grid; configs/sweep-full.yaml: the paper's)"
    )
    add("--tracking-uri", help="MLflow tracking URI (default $MLFLOW_TRACKING_URI, else sqlite zoo.db)")
    add("--ray-address", help="Ray cluster address (default: the job's cluster, else a local one)")
    return p


def config_from_args(argv: Sequence[str] | None = None) -> UnifyConfig:
    """Parse the command line: `--config FILE` (else configs/default.yaml), then flags on top."""
    args = vars(build_parser().parse_args(argv))
    path = args.pop("config")
    tags = args.pop("tag")
    if tags:
        args["tags"] = dict(tags)
    return load_config(path, args)


# ------------------------------------------------------------------------------- cross-task distillation
DISTILL_METHODS = ("auto", "crosstask", "kd", "none")
NO_TEACHER = "none"


@dataclass
class DistillConfig(_JobConfig):
    """Everything `jobs/distill.py` needs (cross-task distillation, paper 002 Sec. 4; docs/crosstask.md).

    `teacher`: a zoo model (`name`, `name:3`, `name@alias`), or "none" for the baseline student without a
    teacher. `task`: the student's labelled training images (an ImageFolder `task/<class>/<image>`, or a
    Parquet file with an image and a label column); its class directories are the student's classes.
    `val`: labelled images of the same classes for the per-epoch curve; `eval`: the final report and the
    champion's yardstick (default: `val`). `method`: "auto" is standard KD when the teacher's classes are
    the task's, else Eq. 11 ("crosstask"); `lam` defaults to 10 for crosstask (paper 002's CIFAR-100
    setting) and 1 for KD."""

    teacher: str | None = None
    task: str | None = None
    val: str | None = None
    eval: str | None = None
    image_column: str | None = None  # Parquet task/val/eval: the encoded images (default image/img/bytes)
    label_column: str | None = None  # Parquet: the class names (default label/labels/class)
    build_demo_zoo: bool = True  # a teacher of the demo zoo (fmnist-demo-t<i>) builds the zoo when absent
    # the method (Eq. 11)
    method: str = "auto"
    lam: float | None = None
    tau: float = 3.0
    eps: float = 0.1
    n_iter: int = 100
    normalisation: str = "l2"  # of the cost matrix: l2 | scale | none (docs/assess.md)
    # teacher inference
    inference_batch_size: int = 512
    inference_concurrency: int | None = None
    # the student
    name: str = "distilled"
    arch: str = "cnn"
    arch_kwargs: dict[str, Any] = field(default_factory=dict)
    student_input: dict[str, Any] | None = None  # InputSpec fields; default: from the task's images
    epochs: int = 30
    lr: float = 0.05
    batch_size: int = 64
    optimizer: str = "sgd"
    weight_decay: float = 5e-4
    seed: int = 0
    augment: bool = False
    num_workers: int | None = None
    use_gpu: bool | None = None
    # run
    run_dir: str | None = None  # default runs/<name>
    force: bool = False
    tracking_uri: str | None = None
    experiment: str = "distill"
    ray_address: str | None = None
    num_cpus: int | None = None

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            setattr(self, f.name, coerce(f.name, getattr(self, f.name), hints[f.name]))
        if not self.teacher:
            raise ConfigError("teacher: name a zoo model (--teacher NAME[@ALIAS|:VERSION]) or 'none'")
        if not self.task:
            raise ConfigError("task: pass --task DIR, a labelled ImageFolder of the student's classes")
        if not self.name or "/" in self.name:
            raise ConfigError(f"name {self.name!r}: give the student a name without '/'")
        if self.method not in DISTILL_METHODS:
            raise ConfigError(f"method {self.method!r} is unknown; use one of {list(DISTILL_METHODS)}")
        if not self.has_teacher and self.method not in ("auto", "none"):
            raise ConfigError(f"--teacher none trains without a teacher: method {self.method!r} needs one")
        if self.has_teacher and self.method == "none":
            raise ConfigError("method 'none' is the student without a teacher: pass --teacher none")
        if self.normalisation not in NORMALISATIONS:
            raise ConfigError(f"normalisation {self.normalisation!r}: use one of {list(NORMALISATIONS)}")
        bad = [k for k in ("tau", "eps") if not 0 < getattr(self, k) < float("inf")]
        bad += [k for k in ("n_iter", "epochs", "batch_size", "inference_batch_size") if getattr(self, k) < 1]
        bad += ["lam"] if self.lam is not None and not 0 <= self.lam < float("inf") else []
        if bad:
            raise ConfigError(f"{bad}: tau, eps > 0; lam >= 0; n_iter, epochs, batch sizes >= 1")
        try:
            self.schedule()
        except ValueError as e:
            raise ConfigError(str(e)) from None

    @property
    def has_teacher(self) -> bool:
        return str(self.teacher).strip().lower() != NO_TEACHER

    def lam_for(self, method: str) -> float:
        """lambda of the resolved method: the config's, else 10 (Eq. 11, CIFAR-100) or 1 (KD); 0 without."""
        if method == "none":
            return 0.0
        return self.lam if self.lam is not None else (1.0 if method == "kd" else 10.0)

    def schedule(self) -> Schedule:
        return Schedule(
            epochs=self.epochs, lr=self.lr, batch_size=self.batch_size, optimizer=self.optimizer,
            weight_decay=self.weight_decay, seed=self.seed,
        )  # fmt: skip

    def student_spec(self, classes: Sequence[str], input_spec: InputSpec) -> ModelSpec:
        """The student's network over the task's ``classes``, built once here to check it."""
        try:
            meta = {"role": "student"}
            spec = ModelSpec(self.arch, list(classes), input_spec, dict(self.arch_kwargs), meta)
            build_net(spec)
        except ValueError as e:  # ArtifactError: unknown arch, bad kwargs or input
            raise ConfigError(f"student: {e}; fix --arch / arch_kwargs / student_input") from None
        return spec


def add_run_flags(p: argparse.ArgumentParser) -> None:
    """The flags every training job shares: workers and devices, the run directory, the store, Ray."""
    add = p.add_argument
    add("--num-workers", type=int, help="Ray Train workers (default: from the cluster)")
    add("--gpu", dest="use_gpu", action="store_const", const=True, help="require GPUs")
    add("--cpu", dest="use_gpu", action="store_const", const=False, help="never use GPUs")
    add("--run-dir", help="run directory: a path or a URI (default runs/<name>)")
    add("--force", action="store_const", const=True, help="rerun every stage even when up to date")
    add("--tracking-uri", help="MLflow tracking URI (default $MLFLOW_TRACKING_URI, else sqlite zoo.db)")
    add("--ray-address", help="Ray cluster address (default: the job's cluster, else a local one)")


def build_distill_parser() -> argparse.ArgumentParser:
    """`jobs/distill.py`'s command line; every flag defaults to None, so only flags given override."""
    p = argparse.ArgumentParser(
        prog="jobs/distill.py",
        description="Train a student for a labelled task from a zoo teacher whose classes may differ "
        "(cross-task distillation, paper 002 Sec. 4; docs/crosstask.md).",
    )
    add = p.add_argument
    add("--config", help="YAML config file (keys as the long flags, with '_'); flags override it")
    add("--teacher", help="the teacher: NAME, NAME:VERSION, NAME@ALIAS, or 'none' (no teacher: the baseline)")
    add("--task", help="the student's labelled images: ImageFolder DIR/<class>/<image>, or Parquet")
    add("--val", help="labelled images of the task's classes for the per-epoch curve")
    add("--eval", help="labelled images of the task's classes for the final report (default: --val)")
    add("--image-column", help="Parquet: the column of encoded images (default image/img/bytes)")
    add("--label-column", help="Parquet: the column of class names (default label/labels/class)")
    add("--name", help="the student's name in the registry")
    add("--method", help="auto (KD when the label sets are equal, else crosstask), crosstask, kd, none")
    add("--lambda", dest="lam", type=float, help="weight of the distillation term (default 10; KD 1)")
    add("--tau", type=float, help="softmax temperature of teacher and student (default 3)")
    add("--eps", type=float, help="entropic regularisation of the Sinkhorn distance (default 0.1)")
    add("--n-iter", type=int, help="Sinkhorn iterations (default 100)")
    add("--normalisation", help="of the cost matrix's class centres: l2 (default), scale, none")
    add("--arch", help="student architecture (zoo.architectures allow-list)")
    add("--epochs", type=int, help="student epochs")
    add("--lr", type=float, help="student learning rate")
    add("--batch-size", type=int, help="student batch size")
    add("--seed", type=int, help="seed of the student")
    add_run_flags(p)
    return p


def load_distill_config(
    path: str | Path | None = None, overrides: Mapping[str, Any] | None = None
) -> DistillConfig:
    """The distillation job's config: the YAML file ``path`` (if any) with ``overrides`` on top."""
    return _build(DistillConfig, path, overrides)


def distill_config_from_args(argv: Sequence[str] | None = None) -> DistillConfig:
    """Parse `jobs/distill.py`'s command line: `--config FILE`, then flags on top."""
    args = vars(build_distill_parser().parse_args(argv))
    return load_distill_config(args.pop("config"), args)


# ------------------------------------------------------------------------------- the AKT job (paper 003)
@dataclass
class AKTJobConfig(_JobConfig):
    """Everything `jobs/akt.py` needs (docs/akt.md, "The job"): a labelled target ImageFolder, an
    unlabelled source (a directory of images or Parquet, `zoo.pipeline.transfer`), the method and its
    options (`zoo.akt.AKTConfig`: defaults are the paper's, but the warm-up), the network, the schedule.
    Loaded like the main job's config (`coerce`): YAML keys as the fields, flags on top."""

    target: str = ""  # labelled ImageFolder: target/<class>/**/<image>
    source: str | None = None  # unlabelled images (any depth) or Parquet; only scratch runs without
    name: str = ""  # the registered classifier
    eval: str | None = None  # labelled ImageFolder of the target classes (else: the target's own accuracy)
    image_column: str | None = None  # the source Parquet's image column
    id_column: str | None = None
    source_limit: int | None = None  # use only the first N source images
    method: str = "akt"  # scratch | pseudo-label | akt-di | akt
    arch: str = "cnn"
    arch_kwargs: dict[str, Any] = field(default_factory=dict)
    epochs: int = 20
    batch_size: int = 64  # per domain: this many target and this many source images per iteration
    lr_step_at: float = 0.75  # M's and G's lr x0.1 from this fraction of the epochs (paper: after 75)
    warmup_epochs: int | None = None  # default: half the epochs (docs/akt.md); 0: the paper
    lr_m: float = 0.01
    lr_g: float = 0.01
    lr_d: float = 0.001
    lambda_di: float = 1.0
    lambda_dg: float = 1.0
    lambda_s: float = 1.0
    d_steps: int = 2
    copy_every: int = 1
    pseudo_labels: str = "hard"
    confidence_threshold: float = 0.0
    seed: int = 0
    zoo: str | None = None  # also tag the classifier zoo=<name>, so `jobs/unify.py --zoo <name>` takes it
    num_workers: int | None = None
    use_gpu: bool | None = None
    run_dir: str | None = None  # default runs/<name>
    force: bool = False
    tracking_uri: str | None = None
    experiment: str = "akt"
    ray_address: str | None = None
    num_cpus: int | None = None

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            setattr(self, f.name, coerce(f.name, getattr(self, f.name), hints[f.name]))
        for key, what in (("target", "--target DIR, a labelled ImageFolder"), ("name", "--name NAME")):
            if not getattr(self, key):
                raise ConfigError(f"{key} is required: pass {what}")
        if "/" in self.name:
            raise ConfigError(f"name {self.name!r}: give the classifier a name without '/'")
        if self.source is None and self.method != "scratch":
            raise ConfigError(f"method {self.method!r} needs unlabelled source images: pass --source DIR")
        if self.source_limit is not None and self.source_limit < 1:
            raise ConfigError(f"source_limit must be >= 1, got {self.source_limit}")
        try:  # the method's options and the schedule validate themselves: a bad value stops here, named
            warmup = self.akt().warmup_epochs
            self.schedule()
        except ValueError as e:
            raise ConfigError(str(e)) from None
        if self.method != "scratch" and warmup >= self.epochs:
            raise ConfigError(
                f"warmup_epochs {warmup} >= epochs {self.epochs}: the source would never be used; "
                "lower --warmup-epochs or raise --epochs"
            )

    def akt(self) -> Any:
        """The method and its options (`zoo.akt.AKTConfig`, validated); warm-up default: epochs // 2."""
        from zoo.akt import AKTConfig  # here: the main job's config does not need the AKT library

        warmup = self.epochs // 2 if self.warmup_epochs is None else self.warmup_epochs
        names = ("lambda_di", "lambda_dg", "lambda_s", "d_steps", "copy_every", "lr_m", "lr_g", "lr_d")
        return AKTConfig(
            method=self.method,
            warmup_epochs=0 if self.method == "scratch" else warmup,
            pseudo_labels=self.pseudo_labels,
            confidence_threshold=self.confidence_threshold,
            **{k: getattr(self, k) for k in names},
        )

    def schedule(self) -> Schedule:
        """Epochs, batch size, seed and the lr step of M and G (`zoo.akt.akt_epoch` reads it)."""
        cfg = self.akt()
        return Schedule(
            epochs=self.epochs, lr=cfg.lr_m, batch_size=self.batch_size, momentum=cfg.momentum,
            weight_decay=cfg.weight_decay, lr_step_at=self.lr_step_at, seed=self.seed,
        )  # fmt: skip

    def classifier_spec(self, classes: Sequence[str], input_spec: InputSpec) -> ModelSpec:
        """M's network (G has the same): the configured architecture over the target's classes."""
        try:
            spec = ModelSpec(
                self.arch, list(classes), input_spec, dict(self.arch_kwargs), {"role": "teacher"}
            )
            build_net(spec)
        except ValueError as e:
            raise ConfigError(f"classifier: {e}; fix --arch / arch_kwargs") from None
        return spec


def load_akt_config(
    path: str | Path | None = None, overrides: Mapping[str, Any] | None = None
) -> AKTJobConfig:
    """The AKT job's config: the YAML file `path` (optional) with `overrides` (non-None values) on top."""
    return _build(AKTJobConfig, path, overrides)


# ------------------------------------------------------------------ the multi-label distillation job
@dataclass
class DistillMultilabelConfig(_JobConfig):
    """The multi-label distillation job (`jobs/distill_multilabel.py`, docs/multilabel.md "The
    distillation job"): a student over the labels of the multi-label ``teacher`` (`name`, `name:3`,
    `name@alias`), trained on ``data``'s training split with the labels and the teacher's logits, evaluated
    on its test split. ``data``: a directory holding `train.parquet` and `test.parquet` (or `train/` and
    `test/` folders with labels.csv; `zoo.multilabel.read_multilabel`)."""

    teacher: str = ""
    data: str = ""
    name: str = "multilabel-student"
    # the distillation term (zoo.multilabel.loss_fn.DistillRecipe; None: the term's default)
    loss: str = "3d"
    pairing: str = "batch"
    tau: float | None = None
    weight: float | None = None
    alpha: float | None = None
    beta: float | None = None
    threshold: float = 0.5  # the student's decision threshold, every label (spec.thresholds)
    # the student
    arch: str = "cnn"
    arch_kwargs: dict[str, Any] = field(default_factory=lambda: {"width": 8, "depth": 3})
    student_input: dict[str, Any] | None = None  # InputSpec fields; default: the teacher's contract
    epochs: int = 8  # at least; more on a small training set (min_steps)
    min_steps: int = 750  # at least this many optimiser steps (the budget follows the data)
    lr: float = 3e-3
    batch_size: int = 64
    optimizer: str = "adam"
    seed: int = 0
    num_workers: int | None = None
    use_gpu: bool | None = None
    inference_batch_size: int = 512
    # run
    run_dir: str | None = None  # default runs/<name>
    force: bool = False
    tracking_uri: str | None = None
    experiment: str = "distill-multilabel"
    ray_address: str | None = None
    num_cpus: int | None = None

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            setattr(self, f.name, coerce(f.name, getattr(self, f.name), hints[f.name]))
        for k, flag in (("teacher", "--teacher NAME"), ("data", "--data DIR")):
            if not getattr(self, k):
                raise ConfigError(f"{k} is required: pass {flag}")
        if not self.name or "/" in self.name:
            raise ConfigError(f"name {self.name!r}: give the student a name without '/'")
        if not 0 < self.threshold < 1:
            raise ConfigError(f"threshold must be strictly between 0 and 1, got {self.threshold}")
        for k in ("inference_batch_size", "min_steps"):
            if getattr(self, k) < 1:
                raise ConfigError(f"{k} must be >= 1, got {getattr(self, k)}")
        try:  # the recipe and the schedule validate themselves: a bad value stops the job here, named
            self.recipe()
            self.schedule()
        except ValueError as e:
            raise ConfigError(str(e)) from None

    def recipe(self) -> DistillRecipe:
        return DistillRecipe(self.loss, self.tau, self.weight, self.alpha, self.beta, self.pairing)

    def schedule(self) -> Schedule:
        return Schedule(
            epochs=self.epochs,
            lr=self.lr,
            batch_size=self.batch_size,
            optimizer=self.optimizer,
            seed=self.seed,
        )

    def student_spec(self, classes: Sequence[str], input_spec: InputSpec) -> ModelSpec:
        """The student's network: a multi-label model over ``classes`` with ``threshold`` for each."""
        try:
            spec = ModelSpec(
                self.arch, list(classes), input_spec, dict(self.arch_kwargs), {"role": "student"},
                task="multilabel", thresholds=[self.threshold] * len(classes),
            )  # fmt: skip
            build_net(spec)
        except ValueError as e:  # ArtifactError: unknown arch, bad kwargs or input
            raise ConfigError(f"student: {e}; fix --arch / arch_kwargs / student_input") from None
        return spec


def build_multilabel_parser() -> argparse.ArgumentParser:
    """The multi-label distillation job's command line; flags default to None (the file decides)."""
    p = argparse.ArgumentParser(
        prog="jobs/distill_multilabel.py",
        description="Distil a multi-label teacher of the zoo into a smaller student (paper 004: 3D, MLD, "
        "PS or the student alone), evaluate it (mAP, CF1, OF1) and register it.",
    )
    add = p.add_argument
    add("--config", help="YAML config file (keys as the long flags, with '_'); flags override it")
    add("--teacher", help="the multi-label teacher: name, name:VERSION or name@ALIAS")
    add("--data", help="directory with train.parquet and test.parquet (or train/, test/ with labels.csv)")
    add("--name", help="name of the student in the registry")
    add("--loss", help="distillation term: 3d (default), mld, ps, none (the student alone)")
    add("--pairing", help="3D's L_NDD pairs: batch (two images) or views (an image and its flip)")
    add("--tau", type=float, help="temperature (default: 4 for 3d, 1 for mld and ps)")
    add("--weight", type=float, help="weight of the mld / ps term (default 10/64 for mld, 1 for ps)")
    add("--alpha", type=float, help="3D's positive-divide weight (default 100/64)")
    add("--beta", type=float, help="3D's L_NDD weight (default 10/64)")
    add("--threshold", type=float, help="the student's decision threshold for every label (default 0.5)")
    add("--arch", help="student architecture (zoo.architectures allow-list)")
    add("--epochs", type=int, help="student epochs (at least; more on a small training set: --min-steps)")
    add("--min-steps", type=int, help="at least this many optimiser steps for the student (default 750)")
    add("--lr", type=float, help="student learning rate")
    add("--batch-size", type=int, help="student batch size")
    add("--optimizer", help="adam (default) or sgd")
    add("--seed", type=int, help="seed of the student")
    add_run_flags(p)
    return p


def load_multilabel_config(
    path: str | Path | None = None, overrides: Mapping[str, Any] | None = None
) -> DistillMultilabelConfig:
    """The multi-label distillation job's config: the YAML file ``path`` (if any), ``overrides`` on top."""
    return _build(DistillMultilabelConfig, path, overrides)


def multilabel_config_from_args(argv: Sequence[str] | None = None) -> DistillMultilabelConfig:
    """Parse the distillation job's command line: `--config FILE`, then flags on top."""
    args = vars(build_multilabel_parser().parse_args(argv))
    return load_multilabel_config(args.pop("config"), args)
