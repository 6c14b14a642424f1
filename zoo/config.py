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
from zoo.pipeline import JobError
from zoo.train import Schedule
from zoo.unify.recipe import Recipe

__all__ = ["ConfigError", "UnifyConfig", "build_parser", "config_from_args", "load_config"]

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "default.yaml"


class ConfigError(JobError):
    """A config file or flag is invalid; the message names the key and the fix."""


@dataclass
class UnifyConfig:
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
    val: str | None = None  # labelled ImageFolder the sweep selects on (default: the demo split's)
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
    epochs: int = 5
    lr: float = 0.05
    batch_size: int = 128
    optimizer: str = "sgd"
    seed: int = 0
    num_workers: int | None = None
    use_gpu: bool | None = None
    spv: bool = True  # train the SPV benchmark (supervised on the teachers' data) when the demo split allows
    spv_epochs: int | None = None  # default: epochs
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
        for k in ("epochs", "batch_size", "inference_batch_size"):
            if getattr(self, k) < 1:
                raise ConfigError(f"{k} must be >= 1, got {getattr(self, k)}")
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

    @property
    def run_path(self) -> Path | str:
        """The run directory: a local path, or a URI (`s3://...`, `file://...`) kept as a string."""
        if self.run_dir and "://" in self.run_dir:
            return self.run_dir
        return Path(self.run_dir) if self.run_dir else Path("runs") / self.name

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


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


def _fields() -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(UnifyConfig)}


def load_config(path: str | Path | None = None, overrides: Mapping[str, Any] | None = None) -> UnifyConfig:
    """The config in the YAML file `path` (default: configs/default.yaml when it exists), with
    `overrides` (non-None values) applied on top. Unknown keys are errors."""
    data: dict[str, Any] = {}
    if path is None and DEFAULT_CONFIG.is_file():
        path = DEFAULT_CONFIG
    if path is not None:
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
        data.update({str(k).replace("-", "_"): v for k, v in loaded.items()})
    for k, v in (overrides or {}).items():
        if v is not None:
            data[k] = v
    unknown = sorted(set(data) - set(_fields()))
    if unknown:
        raise ConfigError(
            f"unknown config key(s) {unknown}"
            + (f" in {path}" if path else "")
            + f"; valid keys: {sorted(_fields())}"
        )
    return UnifyConfig(**data)


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
    add("--val", help="labelled ImageFolder the sweep selects its config on (default: the demo split's)")
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
    add("--epochs", type=int, help="student epochs")
    add("--arch", help="student architecture (zoo.architectures allow-list)")
    add("--lr", type=float, help="student learning rate")
    add("--batch-size", type=int, help="student batch size")
    add("--seed", type=int, help="seed of the student")
    add("--num-workers", type=int, help="Ray Train workers (default: from the cluster)")
    add("--gpu", dest="use_gpu", action="store_const", const=True, help="require GPUs")
    add("--cpu", dest="use_gpu", action="store_const", const=False, help="never use GPUs")
    add("--no-spv", dest="spv", action="store_const", const=False, help="skip the SPV benchmark")
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
