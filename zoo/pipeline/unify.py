"""The main job (`jobs/unify.py`): unify teachers of the zoo into one student (paper 001).

    result = run_unify(cfg)      # cfg: zoo.config.UnifyConfig

A sequence of stages, each writing under the run directory and skipped on a rerun when its inputs are
unchanged (`zoo.pipeline.cache`):

0. inputs, all checked before Ray starts: the teachers (resolved in the zoo, downloaded, loaded; the
   demo zoo is built first when it is absent), the union label space, the transfer source, the
   evaluation set (and the validation set the sweep selects on), the student's network and recipe;
1. transfer.parquet (`zoo.pipeline.transfer`);
2. logits.parquet: every teacher on every transfer image, with Ray Data (`zoo.pipeline.inference`);
   optionally the sweep picks the recipe on the cached logits (`zoo.pipeline.sweep`);
3. soft_labels.parquet for modes E and BS (`zoo.pipeline.soft_labels`);
4. the student on Ray Train (`zoo.pipeline.training`), with its MLflow run;
5. SPV, the supervised benchmark, when the demo split has the teachers' data (`zoo.pipeline.spv`);
6. registration with lineage; `champion` moves only when the student beats it on the same set
   (`zoo.pipeline.registration`); then the summary (`zoo.pipeline.report`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from zoo.artifacts import InputSpec, ModelSpec
from zoo.config import UnifyConfig
from zoo.demo import DemoSplit
from zoo.labels import LabelSpace
from zoo.pipeline import JobError
from zoo.pipeline.cache import StageResult, fingerprint
from zoo.pipeline.datasets import (
    LabelledSet,
    dataset_for_split,
    demo_set,
    read_labelled_folder,
    transfer_arrays,
)
from zoo.pipeline.evaluation import class_groups, evaluate_model, fit_agreement
from zoo.pipeline.inference import inference_stage, read_logits
from zoo.pipeline.make_zoo import DEMO_ZOO, ensure_demo_zoo, load_split
from zoo.pipeline.registration import registration_stage
from zoo.pipeline.report import JobResult, publish
from zoo.pipeline.session import Session
from zoo.pipeline.soft_labels import soft_labels_stage
from zoo.pipeline.spv import demo_spv_data, spv_stage
from zoo.pipeline.storage import join, parquet_metadata
from zoo.pipeline.sweep import load_sweep_config, run_sweep
from zoo.pipeline.teachers import Teacher, common_input, label_space, resolve_teachers
from zoo.pipeline.training import train_student
from zoo.pipeline.transfer import TransferSource, transfer_stage
from zoo.pipeline.unify_multilabel import (
    MultilabelUnifyInputs,
    multilabel_inputs,
    run_unify_multilabel,
    teachers_task,
)
from zoo.train import Schedule
from zoo.unify.calibration import calibration_from_metadata
from zoo.unify.recipe import Recipe

__all__ = [
    "STUDENT_VERSION",
    "UnifyInputs",
    "check_inputs",
    "common_input",
    "owner_temperatures",
    "register_stage",
    "run_unify",
    "student_stage",
    "sweep_inputs",
    "sweep_recipe",
]

STUDENT_VERSION = 2  # 2: trained by the shared training core (zoo.train) from (spec, schedule, recipe)


@dataclass
class UnifyInputs:
    """Everything the job needs, checked before any compute."""

    teachers: list[Teacher]
    space: LabelSpace
    split: DemoSplit | None  # the demo zoo's split, when the zoo has one
    whole_demo_zoo: bool  # the teachers are exactly the demo split's (SPV is meaningful)
    source: TransferSource
    eval_set: LabelledSet
    val_set: LabelledSet | None
    spec: ModelSpec  # the student's network
    recipe: Recipe
    schedule: Schedule


def run_unify(cfg: UnifyConfig, log: Callable[[str], None] = print) -> JobResult:
    """Run the whole job for ``cfg``; returns what it did and prints the summary table. Ray starts only
    when a stage needs it (joining the job's cluster under `ray job submit`)."""
    t0 = time.perf_counter()
    with Session(
        cfg.run_path, tracking_uri=cfg.tracking_uri, force=cfg.force, log=log,
        ray_address=cfg.ray_address, num_cpus=cfg.num_cpus,
    ) as s:  # fmt: skip
        inp = check_inputs(cfg, s)
        if isinstance(inp, MultilabelUnifyInputs):  # multi-label teachers: docs/multilabel.md "Unification"
            return run_unify_multilabel(cfg, s, inp, t0)
        stages: dict[str, StageResult] = {}
        stages["transfer"] = transfer_stage(
            s.run,
            inp.source,
            image_column=cfg.image_column,
            id_column=cfg.id_column,
            limit=cfg.transfer_limit,
        )
        stages["inference"] = inference_stage(
            s.run, stages["transfer"], inp.teachers, inp.space, start_ray=s.start_ray,
            features=inp.recipe.propagation is not None,
            batch_size=cfg.inference_batch_size, use_gpu=cfg.use_gpu,
            concurrency=cfg.inference_concurrency, num_threads=cfg.inference_threads,
        )  # fmt: skip
        recipe, schedule, selected_by = inp.recipe, inp.schedule, "the config (no sweep)"
        if cfg.sweep:
            recipe, schedule, selected_by = sweep_recipe(cfg, s, inp)
        schedule = _budget(schedule, stages["transfer"], cfg.min_steps, s.log)
        targets = stages["inference"]
        if recipe.mode != "bp":
            feats = s.run.features if recipe.propagation is not None else None
            targets = stages["soft_labels"] = soft_labels_stage(s.run, stages["inference"], recipe, feats)
        stages["student"] = student_stage(cfg, s, inp, recipe, schedule, stages["transfer"], targets)
        res = JobResult(
            name=cfg.name,
            run_dir=s.run.root,
            teachers=[{**t.lineage(), "arch": t.spec.arch, "classes": t.spec.classes} for t in inp.teachers],
            classes=list(inp.space.classes),
            groups=class_groups(inp.space.mask),
            recipe=recipe,
            schedule=schedule,
            arch=cfg.arch,
            selected_by=selected_by,
            eval_source=inp.eval_set.source,
            stages=stages,
            mlflow_run_id=stages["student"].value["mlflow_run_id"],
            tracking_uri=s.tracking_uri,
        )
        res.student_accuracy = evaluate_model(stages["student"].path, inp.eval_set, res.groups)
        if inp.val_set is not None:
            res.val_source = inp.val_set.source
            res.val_accuracy = evaluate_model(stages["student"].path, inp.val_set, {})["all"]
        res.agreement = stages["student"].value.get("agreement")
        spv_data = _spv_data(cfg, inp)
        if spv_data is not None:
            stages["spv"] = _spv(cfg, s, inp, spv_data)
            res.spv_accuracy = evaluate_model(stages["spv"].path, inp.eval_set, res.groups)
        stages["register"] = register_stage(cfg, s, inp, res)
        res.registered = stages["register"].value
        res.seconds = time.perf_counter() - t0
        publish(res, s.run.summary, s.client)
        log(res.summary)
        return res


def _budget(
    schedule: Schedule, transfer: StageResult, min_steps: int, log: Callable[[str], None]
) -> Schedule:
    """The student's epochs from the transfer set's size: at least ``min_steps`` optimiser steps."""
    n = int(parquet_metadata(transfer.path)["zoo.num_images"])
    budget = schedule.for_data(n, min_steps)
    if budget.epochs != schedule.epochs:
        log(
            f"[student] {n} transfer images: {budget.epochs} epochs instead of {schedule.epochs}, "
            f"for at least {min_steps} optimiser steps of {schedule.batch_size} (min_steps)"
        )
    return budget


# ------------------------------------------------------------------------------------------ inputs
def check_inputs(cfg: UnifyConfig, s: Session) -> UnifyInputs | MultilabelUnifyInputs:
    """Teachers, label space, transfer source, evaluation and validation sets, the student: every
    input the job takes, checked before any compute (JobError naming the fix otherwise). Multi-label
    teachers have their own inputs (`zoo.pipeline.unify_multilabel`)."""
    demo = cfg.build_demo_zoo and cfg.zoo == DEMO_ZOO and not cfg.teachers and not cfg.tags

    def build_demo() -> None:
        s.start_ray()
        ensure_demo_zoo(cfg.zoo, tracking_uri=s.tracking_uri)

    teachers = resolve_teachers(
        s.registry,
        names=cfg.teachers,
        tags=cfg.tags,
        zoo=cfg.zoo,
        build_zoo=build_demo if demo else None,
        log=s.log,
    )
    if teachers_task(teachers) == "multilabel":
        return multilabel_inputs(cfg, s, teachers)
    space = label_space(teachers, cfg.synonyms)
    s.log(f"[teachers] {len(teachers)} teachers, {space.num_classes} union classes: {list(space.classes)}")
    wants_split = cfg.transfer is None or cfg.eval is None or cfg.spv or cfg.val is None
    split = _demo_split(cfg.zoo, s) if wants_split else None
    source = _transfer_source(cfg, split)
    eval_set = _eval_set(cfg, split, space, s.log)
    val_set = _val_set(cfg, split, space, s.log)
    spec_in = (
        InputSpec(**cfg.student_input)
        if cfg.student_input
        else common_input([t.spec.input for t in teachers], s.log)
    )
    return UnifyInputs(
        teachers=teachers,
        space=space,
        split=split,
        whole_demo_zoo=split is not None and not cfg.teachers and not cfg.tags,
        source=source,
        eval_set=eval_set,
        val_set=val_set,
        spec=cfg.student_spec(space.classes, spec_in),
        recipe=cfg.recipe([t.name for t in teachers], owner_temperatures(teachers, cfg, s.log)),
        schedule=cfg.schedule(),
    )


def _demo_split(zoo: str, s: Session) -> DemoSplit | None:
    """The demo split of ``zoo``, or None when the zoo has none (not a demo zoo)."""
    try:
        return load_split(zoo, s.registry)
    except (LookupError, FileNotFoundError, ValueError, OSError):
        return None
    except Exception as e:  # an MLflow error meaning "no such run/artifact"
        if type(e).__name__ in ("MlflowException", "RestException"):
            return None
        raise


def _transfer_source(cfg: UnifyConfig, split: DemoSplit | None) -> TransferSource:
    if cfg.transfer is not None:
        return cfg.transfer
    if split is not None:
        return transfer_arrays(split, dataset_for_split(split))
    raise JobError(
        f"no transfer set: zoo {cfg.zoo!r} has no demo split; pass --transfer DIR (images) or a Parquet file"
    )


def _eval_set(
    cfg: UnifyConfig, split: DemoSplit | None, space: LabelSpace, log: Callable[[str], None]
) -> LabelledSet:
    """The evaluation (test) set: reported on, and the champion's yardstick; never chosen on."""
    if cfg.eval is not None:
        # Only the union's classes are evaluated: an evaluation folder of a user's whole label set serves
        # any subset of their teachers; the classes left out are listed.
        ev = read_labelled_folder(cfg.eval, space, skip_unknown=True, log=log)
    elif split is not None:
        ev = demo_set(split, space, "eval")
    else:
        raise JobError(
            "no evaluation set: pass --eval DIR, a labelled ImageFolder whose class directories are "
            f"union classes {list(space.classes)} (the champion is decided on it)"
        )
    if len(ev) == 0:
        raise JobError(f"the evaluation set ({ev.source}) has no image of the union classes; pass --eval DIR")
    log(f"[eval] {len(ev)} labelled images from {ev.source} (the final report)")
    return ev


def _val_set(
    cfg: UnifyConfig, split: DemoSplit | None, space: LabelSpace, log: Callable[[str], None]
) -> LabelledSet | None:
    """The validation set (what the sweep selects on): --val, else the demo split's when sweeping."""
    val = None
    if cfg.val is not None:
        val = read_labelled_folder(cfg.val, space, flag="--val")
    elif split is not None and cfg.sweep:
        val = demo_set(split, space, "val")
    if val is not None and len(val) == 0:
        raise JobError(f"the validation set ({val.source}) has no image of the union classes; pass --val DIR")
    if cfg.sweep:
        log(
            f"[val] {len(val)} labelled images from {val.source} (the sweep selects on them)"
            if val is not None
            else "[val] no labelled validation set (--val DIR): the sweep ranks by the label-free proxy"
        )
    return val


def owner_temperatures(
    teachers: Sequence[Teacher | tuple[str, ModelSpec]], cfg: UnifyConfig, log: Callable[[str], None]
) -> dict[str, float]:
    """Lever owner_calibration: each teacher's temperature from its owner's calibration (the spec's
    ``metadata["calibration"]``, `zoo.unify.calibration`), by name; empty when the lever is off. A
    teacher without one (a spec made before calibrations existed) keeps temperature 1, said in the log."""
    if not cfg.owner_calibration:
        return {}
    temps, missing = {}, []
    for t in teachers:
        name, spec = (t.name, t.spec) if isinstance(t, Teacher) else t
        try:
            cal = calibration_from_metadata(None if spec is None else spec.metadata)
        except ValueError as e:
            raise JobError(f"teacher {name}: {e}; re-register it with a valid --calibration FILE") from None
        if cal is None:
            missing.append(name)
        else:
            temps[name] = cal.temperature
    if missing:
        log(
            f"[calibration] {', '.join(missing)}: no owner's calibration in the spec, temperature 1 "
            "(a zoo built before calibrations existed: rebuild it, or `zoo register --calibration`)"
        )
    log(f"[calibration] owners' temperatures: {json.dumps({k: round(v, 3) for k, v in temps.items()})}")
    return temps


# ------------------------------------------------------------------------------------------ stages
def sweep_recipe(cfg: UnifyConfig, s: Session, inp: UnifyInputs) -> tuple[Recipe, Schedule, str]:
    """The sweep (Ray Tune on the cached logits) chooses the recipe's method, mode, T and the lr."""
    s.start_ray()
    swept = run_sweep(
        load_sweep_config(cfg.sweep_config), s.run.root, spec=inp.spec, schedule=inp.schedule,
        recipe=inp.recipe, val_set=inp.val_set, tracking_uri=s.tracking_uri, experiment=cfg.experiment,
        force=cfg.force, log=s.log,
    )  # fmt: skip
    recipe, schedule = swept.chosen(inp.recipe, inp.schedule)
    selected_by = (
        f"the sweep, on {swept.metric} of {inp.val_set.source}"
        if inp.val_set is not None
        else f"the sweep, on the label-free proxy ({swept.metric}; no validation set)"
    )
    s.log(f"sweep: best config {swept.best_config}, selected by {selected_by}")
    return recipe, schedule, selected_by


def sweep_inputs(
    cfg: UnifyConfig, s: Session, val: str | None, no_labels: bool
) -> tuple[ModelSpec, Recipe, LabelledSet | None]:
    """For `jobs/sweep.py` on a run's cached logits: the student's network (the config's input
    contract, else the teachers' as the main job picks it), the config's recipe, and the validation
    set (``val``, else the config's, else the demo split's; None with ``no_labels``: the proxy ranks)."""
    lf = read_logits(s.run.logits)
    space = lf.label_space
    specs = [s.registry.get(t["name"], version=int(t["version"])).spec for t in lf.teachers]
    spec_in = (
        InputSpec(**cfg.student_input) if cfg.student_input else common_input([x.input for x in specs], s.log)
    )
    val_set = None
    if not no_labels and (val or cfg.val):
        val_set = read_labelled_folder(val or cfg.val, space, flag="--val")
    elif not no_labels:
        split = _demo_split(cfg.zoo, s)
        val_set = None if split is None else demo_set(split, space, "val")
    s.log(
        f"[sweep] {len(val_set)} labelled validation images from {val_set.source}"
        if val_set is not None
        else "[sweep] no labelled validation set (--val DIR): ranking by the label-free proxy"
    )
    owners = owner_temperatures([(t["name"], x) for t, x in zip(lf.teachers, specs)], cfg, s.log)
    return cfg.student_spec(space.classes, spec_in), cfg.recipe(list(space.teachers), owners), val_set


def student_stage(
    cfg: UnifyConfig,
    s: Session,
    inp: UnifyInputs,
    recipe: Recipe,
    schedule: Schedule,
    transfer: StageResult,
    targets: StageResult,
) -> StageResult:
    """Stage: the student on Ray Train, in `<run>/train/student-<fp>/student`, with the job's MLflow
    run (made when the student trains; a skipped stage reuses the recorded one), the stop rule on the
    validation set, and how well it fits its own soft labels (`fit_agreement`). Its sidecar keeps the
    training metrics, the agreement and the MLflow run id."""
    net = replace(inp.spec, metadata={})
    val_fp = None if inp.val_set is None else inp.val_set.fingerprint()
    patience = (
        None if inp.val_set is None or cfg.patience == 0 else cfg.patience or max(5, schedule.epochs // 10)
    )
    inputs = [
        targets.fingerprint, transfer.value, net.to_dict(), schedule, recipe,
        inp.eval_set.fingerprint(), val_fp, patience, cfg.num_workers, cfg.use_gpu,
    ]  # fmt: skip
    fp = fingerprint("student", STUDENT_VERSION, *inputs)
    run_name = f"student-{fp[:12]}"

    def train(path: Any, _fp: str) -> dict[str, Any]:
        s.start_ray()
        run_id = s.open_mlflow_run(
            cfg.experiment,
            f"{cfg.name}-{recipe.method}-{recipe.mode}",
            tags={"zoo.job": "unify", "zoo.run_dir": s.run.display, "teachers": _teachers_tag(inp.teachers)},
            params={f"job.{k}": v for k, v in cfg.to_dict().items() if v is not None and k != "force"},
        )
        result = train_student(
            inp.spec, schedule, recipe, transfer.path, targets.path, storage_path=s.run.train_storage,
            run_name=run_name, eval_set=inp.eval_set, val_set=inp.val_set, patience=patience,
            num_workers=cfg.num_workers, use_gpu=cfg.use_gpu, mlflow_tracking_uri=s.tracking_uri,
            mlflow_run_id=run_id,
        )  # fmt: skip
        agreement = (
            None if recipe.mode == "bp" else fit_agreement(result.model_dir, transfer.path, targets.path)
        )
        return {**_jsonable(result.metrics), "agreement": agreement, "mlflow_run_id": run_id}

    out = s.run.stage(
        "student",
        join(s.run.train_storage, run_name, "student"),
        STUDENT_VERSION,
        inputs,
        train,
        sidecar=True,
    )
    if not (out.value or {}).get("mlflow_run_id"):  # a sidecar from before the run id was kept
        raise JobError(f"{out.path}.json has no MLflow run id: rerun with --force")
    return out


def _spv_data(cfg: UnifyConfig, inp: UnifyInputs) -> LabelledSet | None:
    """What SPV trains on: ``--spv-data`` (a user's own labelled data), else the demo teachers' data
    when the teachers are exactly the demo split's and the evaluation set is its own; else none."""
    if not cfg.spv:
        return None
    if cfg.spv_data is not None:
        return read_labelled_folder(cfg.spv_data, inp.space, flag="--spv-data")
    if inp.whole_demo_zoo and cfg.eval is None:
        return demo_spv_data(inp.split, list(inp.space.classes))
    return None


def _spv(cfg: UnifyConfig, s: Session, inp: UnifyInputs, data: LabelledSet) -> StageResult:
    """SPV with the teachers' recipe (the demo split's config; for a user's data: Adam, lr 1e-3,
    batch 32, ``spv_epochs`` or 15 epochs): the student's network trained on their data."""
    tc = dict(inp.split.config) if inp.split is not None and cfg.spv_data is None else {}
    recipe = {
        "epochs": cfg.spv_epochs or int(tc.get("epochs", 15)),
        "lr": float(tc.get("lr", 1e-3)),
        "batch_size": int(tc.get("batch_size", 32)),
        "optimizer": str(tc.get("optimizer", "adam")),
    }
    return spv_stage(s.run, inp.spec, data, recipe, cfg.seed)


def register_stage(cfg: UnifyConfig, s: Session, inp: UnifyInputs, res: JobResult) -> StageResult:
    """Stage: the student registered as a version of ``cfg.name`` with its lineage (`registration.json`
    records it); the champion alias moves only when it beats the champion on the same set: the
    validation set when there is one (the evaluation set is the test set: reported, never chosen on),
    and never to a student that has not converged. A rerun that changes nothing registers nothing."""
    student = res.stages["student"]
    metric, chosen_on = champion_yardstick(inp)
    res.champion_chosen_on = f"{metric} of {chosen_on.source}"
    not_champion = None
    if res.agreement is not None and res.agreement < cfg.min_agreement:
        not_champion = (
            f"not converged: its top-1 agrees with its own soft labels on {res.agreement:.0%} of the "
            f"transfer images (min_agreement {cfg.min_agreement:.0%}); give it more steps (--min-steps) "
            "or check the teachers"
        )
    lineage = {
        "teachers": [t.lineage() for t in inp.teachers],
        "method": res.recipe.method,
        "mode": res.recipe.mode,
        "temperature": res.recipe.temperature,
        "recipe": res.recipe.to_dict(),
        "schedule": res.schedule.to_dict(),
        "transfer_fingerprint": res.stages["transfer"].value,
        "student_fingerprint": student.fingerprint,
        "metrics": {
            "eval_accuracy": res.student_accuracy["all"],
            **({"val_accuracy": res.val_accuracy} if res.val_accuracy is not None else {}),
            **{f"eval_accuracy[{k}]": v for k, v in res.student_accuracy.items()},
            **({"spv_accuracy": res.spv_accuracy["all"]} if res.spv_accuracy else {}),
            **{k: v for k, v in (student.value or {}).items() if isinstance(v, (int, float))},
        },
        "classes": list(inp.space.classes),
        "mlflow_run_id": res.mlflow_run_id,
        "eval_source": inp.eval_set.source,
        "selected_by": res.selected_by,
        "champion_chosen_on": res.champion_chosen_on,
    }

    return registration_stage(
        s, cfg.name, student, lineage, metric=metric, eval_fingerprint=chosen_on.fingerprint(),
        not_champion=not_champion,
    )  # fmt: skip


def champion_yardstick(inp: UnifyInputs) -> tuple[str, LabelledSet]:
    """The metric and the set the champion is chosen on: the validation set when there is one."""
    return ("val_accuracy", inp.val_set) if inp.val_set is not None else ("eval_accuracy", inp.eval_set)


def _teachers_tag(teachers: Sequence[Teacher]) -> str:
    return ",".join(f"{t.name}:{t.version}" for t in teachers)


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(d, default=str))
