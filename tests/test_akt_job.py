"""The AKT job (`jobs/akt.py`, `zoo.pipeline.akt`) and the training runner's `EpochTraining` path.

Unit tests: the config, bad input (stopped before any compute), the runner's pieces for several
networks (checkpoints of several optimisers, gradient averaging over two processes, the plain path
unchanged). One end-to-end test (slow): tiny synthetic images as a user brings them (a labelled target
ImageFolder, a source directory, an eval ImageFolder), real Ray Train, real MLflow, then a rerun and a
diverging game.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from zoo.artifacts import InputSpec, ModelSpec
from zoo.config import ConfigError, load_akt_config
from zoo.data import encode_png, synthetic_images
from zoo.pipeline.training import (
    _average_gradients,
    _load_checkpoint,
    _PlainEpochs,
    _save_checkpoint,
)
from zoo.train import Schedule, epoch_order, train_epoch

ROOT = Path(__file__).resolve().parent.parent
CLASSES = ("alpha", "beta", "gamma")


def _job_main():
    spec = importlib.util.spec_from_file_location("akt_job_script", ROOT / "jobs" / "akt.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.main


def _write_folder(root: Path, images: np.ndarray, labels: np.ndarray | None, prefix: str = "") -> Path:
    """An ImageFolder (labels given: root/<class>/<i>.png) or a flat directory of PNGs."""
    for i, im in enumerate(images):
        d = root if labels is None else root / CLASSES[labels[i]]
        d.mkdir(parents=True, exist_ok=True)
        (d / f"{prefix}{i}.png").write_bytes(encode_png(im))
    return root


@pytest.fixture()
def akt_data(tmp_path: Path) -> dict[str, Path]:
    """Target: 3 classes x 8 labelled 16x16 images; source: 48 images of 2 other classes; eval: 60."""
    images, labels = synthetic_images(220, 5, size=16, seed=3)
    t = np.flatnonzero(labels < 3)
    s = np.flatnonzero(labels >= 3)
    target = _write_folder(tmp_path / "target", images[t[:24]], labels[t[:24]])
    evald = _write_folder(tmp_path / "eval", images[t[24:84]], labels[t[24:84]], prefix="e")
    source = _write_folder(tmp_path / "source", images[s[:48]], None)
    return {"target": target, "source": source, "eval": evald, "tmp": tmp_path}


def _argv(d: dict[str, Path], uri: str, *extra: str) -> list[str]:
    return [
        "--target", str(d["target"]), "--source", str(d["source"]), "--eval", str(d["eval"]),
        "--name", "akt-tiny", "--run-dir", str(d["tmp"] / "run"), "--tracking-uri", uri,
        "--epochs", "3", "--warmup-epochs", "1", "--batch-size", "16", "--num-workers", "1", *extra,
    ]  # fmt: skip


# ------------------------------------------------------------------------------------------ config
def test_config_defaults_and_refusals() -> None:
    cfg = load_akt_config(None, {"target": "t", "source": "s", "name": "n", "epochs": 10})
    akt, schedule = cfg.akt(), cfg.schedule()
    assert akt.method == "akt" and akt.warmup_epochs == 5  # the job's default: half the epochs
    assert (akt.lr_m, akt.lr_g, akt.lr_d, akt.lambda_s) == (0.01, 0.01, 0.001, 1.0)  # the paper's
    assert schedule.lr == akt.lr_m and schedule.lr_at(7) == pytest.approx(0.001)  # x0.1 from 3/4
    assert load_akt_config(None, {"target": "t", "name": "n", "method": "scratch"}).akt().warmup_epochs == 0
    bad = [
        ({"source": "s", "name": "n"}, "target is required"),
        ({"target": "t", "name": "n"}, "needs unlabelled source images"),
        ({"target": "t", "source": "s", "name": "n", "epochs": 4, "warmup_epochs": 4}, "never be used"),
        ({"target": "t", "source": "s", "name": "n", "lambda_s": -1}, "lambda_s"),
        ({"target": "t", "source": "s", "name": "n", "method": "gan"}, "method"),
        ({"target": "t", "source": "s", "name": "n", "colour": 1}, "unknown config key"),
    ]
    for kw, match in bad:
        with pytest.raises(ConfigError, match=match):
            load_akt_config(None, kw)


# ------------------------------------------------------------------------------------------ bad input
def _expect_error(capsys: pytest.CaptureFixture, argv: list[str]) -> str:
    assert _job_main()(argv) == 2
    return capsys.readouterr().err


def test_bad_inputs_stop_before_compute(akt_data, mlflow_uri, capsys, monkeypatch) -> None:
    import zoo.pipeline.session as session

    def no_ray(*a, **k):
        raise AssertionError("the job reached Ray although its input is bad")

    monkeypatch.setattr(session, "init_ray", no_ray)
    tmp = akt_data["tmp"]
    empty = tmp / "empty"
    empty.mkdir()
    err = _expect_error(capsys, [*_argv(akt_data, mlflow_uri), "--source", str(empty)])
    assert "--source" in err and "no images" in err
    one = _write_folder(tmp / "one", *synthetic_images(4, 1, size=16))
    err = _expect_error(capsys, [*_argv(akt_data, mlflow_uri), "--target", str(one)])
    assert "one class" in err and "at least 2" in err
    mixed = _write_folder(tmp / "mixed", *synthetic_images(6, 3, size=16))
    (mixed / CLASSES[0] / "big.png").write_bytes(encode_png(np.zeros((20, 20), np.uint8)))
    err = _expect_error(capsys, [*_argv(akt_data, mlflow_uri), "--target", str(mixed)])
    assert "shapes" in err and "(16, 16)" in err and "(20, 20)" in err
    rgb = _write_folder(tmp / "rgb", np.zeros((3, 16, 16, 3), np.uint8), None)
    err = _expect_error(capsys, [*_argv(akt_data, mlflow_uri), "--source", str(rgb)])
    assert "shape (16, 16, 3)" in err and "(16, 16)" in err and "--source" in err
    zebra = tmp / "badeval" / "zebra"
    zebra.mkdir(parents=True)
    (zebra / "z.png").write_bytes(encode_png(np.zeros((16, 16), np.uint8)))
    err = _expect_error(capsys, [*_argv(akt_data, mlflow_uri), "--eval", str(zebra.parent)])
    assert "--eval" in err and "zebra" in err
    err = _expect_error(capsys, [*_argv(akt_data, mlflow_uri), "--method", "pseudo"])
    assert "method" in err
    assert not list((tmp / "run").glob("train")), "nothing was trained"


# ------------------------------------------------------------------------------- the runner's pieces
def test_checkpoint_holds_every_optimiser(tmp_path: Path) -> None:
    torch.manual_seed(0)
    module = torch.nn.ModuleDict({"a": torch.nn.Linear(3, 2), "b": torch.nn.Linear(2, 1)})
    opts = {
        "a": torch.optim.SGD(module["a"].parameters(), lr=0.1, momentum=0.9),
        "b": torch.optim.Adam(module["b"].parameters(), lr=0.01),
    }
    module["b"](module["a"](torch.randn(4, 3))).sum().backward()
    for o in opts.values():
        o.step()
    _save_checkpoint(tmp_path, module, opts, {"epoch": 3, "history": [{"train_loss": 1.0}]})
    torch.manual_seed(1)
    fresh = torch.nn.ModuleDict({"a": torch.nn.Linear(3, 2), "b": torch.nn.Linear(2, 1)})
    fresh_opts = {
        "a": torch.optim.SGD(fresh["a"].parameters(), lr=0.5, momentum=0.9),
        "b": torch.optim.Adam(fresh["b"].parameters(), lr=0.5),
    }
    state = _load_checkpoint(tmp_path, fresh, fresh_opts)
    assert state["epoch"] == 3
    assert all(torch.equal(v, fresh.state_dict()[k]) for k, v in module.state_dict().items())
    for name in opts:
        saved, loaded = opts[name].state_dict(), fresh_opts[name].state_dict()
        assert saved["param_groups"][0]["lr"] == loaded["param_groups"][0]["lr"]
        assert all(
            torch.equal(saved["state"][i][k], loaded["state"][i][k])
            for i in saved["state"]
            for k in saved["state"][i]
            if torch.is_tensor(saved["state"][i][k])
        )
    # a checkpoint of one optimiser written before optimisers were named still restores
    torch.save(opts["a"].state_dict(), tmp_path / "optimizer.pt")
    _load_checkpoint(tmp_path, fresh, {"model": fresh_opts["a"]})


def _rank_average(rank: int, world: int, port: int, out: dict) -> None:
    torch.distributed.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    try:
        w = torch.nn.Parameter(torch.zeros(3))
        opt = torch.optim.SGD([w], lr=1.0)
        opt.register_step_pre_hook(_average_gradients(world))
        (w * torch.tensor([1.0, 2.0, 3.0]) * (rank + 1)).sum().backward()  # grads differ by rank
        opt.step()
        out[rank] = w.detach().tolist()
    finally:
        torch.distributed.destroy_process_group()


def test_gradients_are_averaged_over_ranks_before_each_step() -> None:
    """Data parallelism of an EpochTraining: two processes step on the mean of their gradients."""
    port = 29500 + os.getpid() % 2000
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_rank_average, args=(2, port, out), nprocs=2, join=True)
        result = dict(out)
    expected = [-1.5, -3.0, -4.5]  # -lr x mean over ranks of (rank + 1) x [1, 2, 3]
    assert result[0] == pytest.approx(expected) and result[1] == pytest.approx(expected)


def test_plain_training_data_trains_as_before() -> None:
    """A TrainingData of images and a batch loss still runs the training core's epoch, with the
    schedule's lr and order, as `train_network` did before EpochTraining existed."""
    from zoo.artifacts import build_net

    spec = ModelSpec("cnn", ["a", "b"], InputSpec(1, 8, 8, (0.5,), (0.5,)), {"width": 4, "depth": 2})
    schedule = Schedule(epochs=4, lr=0.1, batch_size=8, lr_step_at=0.5, seed=2)
    images, labels = torch.randn(20, 1, 8, 8), torch.randint(0, 2, (20,))
    loss_fn = lambda out, idx: torch.nn.functional.cross_entropy(out, labels[idx])  # noqa: E731

    class Data:
        def load(self, spec, device):
            return images, loss_fn

    plain = _PlainEpochs(Data(), schedule, augment=False)
    torch.manual_seed(0)
    net, opts = plain.build(spec)
    torch.manual_seed(0)
    ref = build_net(spec)
    ref_opt = schedule.make_optimizer(ref.parameters())
    loaded = plain.load(spec.input, torch.device("cpu"))
    for epoch in range(3):
        metrics = plain.train_epoch(net, opts, loaded, epoch, 0, 1)
        schedule.set_lr(ref_opt, epoch)
        ref_loss = train_epoch(ref, ref_opt, images, loss_fn, epoch_order(20, 2, epoch), 8)
        assert metrics == {"train_loss": ref_loss, "lr": schedule.lr_at(epoch), "samples": 20}
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), ref.state_dict().values()))
    assert plain.network(net) is net and plain.stop([{"train_loss": float("nan")}]) is None


# ------------------------------------------------------------------------------------------ end to end
@pytest.mark.slow
@pytest.mark.timeout(1200)  # two Ray Train fits; ~1 min on an idle 2-core machine, far more when shared
def test_job_trains_registers_a_teacher_reruns_and_stops_a_diverged_game(
    ray_session, akt_data, mlflow_uri, capsys
) -> None:
    from mlflow.tracking import MlflowClient

    from zoo.pipeline.teachers import resolve_teachers
    from zoo.registry import Registry

    main = _job_main()
    argv = _argv(akt_data, mlflow_uri, "--arch", "cnn", "--zoo", "tiny-akt")
    assert main(argv) == 0
    out = capsys.readouterr().out
    run = akt_data["tmp"] / "run"
    summary = json.loads((run / "summary.json").read_text())
    assert [int(h["epoch"]) for h in summary["history"]] == [0, 1, 2]
    last = summary["history"][-1]
    assert {"d_acc", "dg_acc", "agreement", "loss_m_target", "eval_accuracy"} <= set(last), last
    assert summary["metric"] == "eval_accuracy" and summary["accuracy"] > 0.45, out  # chance: 1/3
    assert summary["n_target"] == 24 and summary["n_source"] == 48
    assert "agreement" in out and "models:/akt-tiny/1" in out and "jobs/unify.py --teachers akt-tiny" in out
    # registered as a teacher, with its lineage; the unify job's resolver takes it
    registry = Registry(mlflow_uri)
    rec = registry.get("akt-tiny", version=1)
    assert rec.tags["role"] == "teacher" and rec.tags["method"] == "akt" and rec.tags["zoo"] == "tiny-akt"
    assert rec.tags["lambda_s"] == "1.0" and len(rec.tags["target_fingerprint"]) == 64
    lineage = rec.spec.metadata["lineage"]
    assert (
        lineage["akt"]["warmup_epochs"] == 1
        and lineage["source_fingerprint"] == rec.tags["source_fingerprint"]
    )
    assert rec.spec.classes == list(CLASSES) and rec.spec.input.height == 16
    (teacher,) = resolve_teachers(registry, zoo="tiny-akt")
    assert teacher.name == "akt-tiny" and teacher.spec.classes == list(CLASSES)
    # MLflow: every per-epoch metric is a curve; the game's from the first epoch after the warm-up
    client = MlflowClient(mlflow_uri)
    steps = lambda key: sorted(m.step for m in client.get_metric_history(summary["mlflow_run_id"], key))  # noqa: E731
    assert steps("akt.loss_m_target") == steps("akt.eval_accuracy") == [0, 1, 2]
    assert steps("akt.d_acc") == steps("akt.dg_acc") == steps("akt.agreement") == [1, 2]

    # rerun: every stage is up to date, nothing trained or registered again
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert out.count("skipped (up to date)") == 4, out
    assert len(registry.versions("akt-tiny")) == 1

    # a game that diverges stops with a clear message, exit 1, and registers nothing
    bad = [*argv, "--name", "akt-nan", "--lr-m", "1e12", "--lr-g", "1e12", "--run-dir", str(run) + "-nan"]
    assert main(bad) == 1
    err = capsys.readouterr().err
    assert "AKT diverged" in err and "nothing was registered" in err, err
    assert "akt-nan" not in [r.name for r in registry.list()]
