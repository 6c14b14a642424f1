"""The `zoo` CLI (`python -m zoo`) on a real sqlite MLflow store: register a teacher trained elsewhere,
see it listed, show it, remove it; bad input gives exit code 2 and one line on stderr."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from zoo import cli
from zoo.architectures import build_model
from zoo.registry import Registry
from zoo.unify.calibration import calibration_from_metadata, fit_calibration

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ["T-shirt/top", "Trouser", "Pullover"]


@pytest.fixture()
def elsewhere(tmp_path: Path) -> dict:
    """A teacher "trained elsewhere": a state_dict in a .safetensors file and a classes.txt."""
    torch.manual_seed(0)
    model = build_model("cnn", len(CLASSES), in_channels=1, image_size=28, width=4, depth=2).eval()
    weights = tmp_path / "teacher.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    classes = tmp_path / "classes.txt"
    classes.write_text(
        "\n".join(CLASSES[:1]) + "\n\n  " + "\n".join(CLASSES[1:]) + "\n\n"
    )  # blank lines ignored
    return {"model": model, "weights": weights, "classes": classes, "dir": tmp_path}


def zoo(*args: str, cwd: Path, uri: str | None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "ZOO_CACHE_DIR": str(cwd / "cache")}
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("MLFLOW_REGISTRY_URI", None)
    if uri:
        env["MLFLOW_TRACKING_URI"] = uri
    return subprocess.run(
        [sys.executable, "-m", "zoo", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def register_args(e: dict, name: str = "fmnist-a", *extra: str) -> list[str]:
    return [
        "register", "--name", name, "--arch", "cnn", "--arch-kwargs", '{"width": 4, "depth": 2}',
        "--weights", str(e["weights"]), "--classes", str(e["classes"]), "--input-shape", "1,28,28",
        "--mean", "0.2860", "--std", "0.3530", "--tag", "source=party-b", "--tag", "accuracy=0.87", *extra,
    ]  # fmt: skip


def cli_main(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str, str]:
    """The CLI in-process (one MLflow import for many commands); the entry point is run for real too."""
    capsys.readouterr()
    try:
        code = cli.main(list(args))
    except SystemExit as exc:  # argparse errors
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def test_register_list_show_rm(elsewhere: dict, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A user registers a teacher trained elsewhere and sees it listed. No MLFLOW_TRACKING_URI: the zoo is
    zoo.db in the working directory, with its artifacts beside it."""
    work = tmp_path / "work"
    work.mkdir()
    run = zoo(*register_args(elsewhere, "fmnist-a", "--alias", "champion"), cwd=work, uri=None)
    assert run.returncode == 0, run.stderr
    assert "registered models:/fmnist-a/1" in run.stdout and run.stderr == ""
    assert (work / "zoo.db").is_file() and list((work / "zoo-artifacts").rglob("weights.safetensors"))
    uri = f"sqlite:///{work / 'zoo.db'}"

    # the registered teacher loads with the same outputs as the model trained elsewhere
    registry = Registry(uri, cache_dir=tmp_path / "cache")
    model, spec, record = registry.load("fmnist-a", alias="champion")
    assert spec.classes == CLASSES and spec.input.mean == (0.286,) and spec.input.std == (0.353,)
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(model(x), elsewhere["model"](x), rtol=0, atol=0)
    registry.register_model("fmnist-b", elsewhere["model"], spec, tags={"source": "party-c"})

    run = zoo("list", cwd=work, uri=None)
    assert run.returncode == 0, run.stderr
    header, *rows = run.stdout.splitlines()
    assert header.split() == [
        "NAME",
        "VERSION",
        "ARCH",
        "CLASSES",
        "INPUT",
        "SOURCE",
        "ACCURACY",
        "ALIASES",
        "TAGS",
    ]
    assert [row.split() for row in rows] == [
        ["fmnist-a", "1", "cnn", "3", "1x28x28", "party-b", "0.87", "champion", "-"],
        ["fmnist-b", "1", "cnn", "3", "1x28x28", "party-c", "-", "-", "-"],
    ]

    out = {}
    for key, args in {
        "json": ["list", "--json"],
        "tagged": ["list", "--tag", "source=party-c", "--json"],
        "none": ["list", "--tag", "source=nobody"],
        "show": ["show", "fmnist-a"],
        "show-json": ["show", "models:/fmnist-a@champion", "--json"],
        "alias": ["alias", "fmnist-b", "champion", "1"],
        "show-b": ["show", "fmnist-b", "--alias", "champion", "--json"],
    }.items():
        code, out[key], err = cli_main(capsys, "--tracking-uri", uri, *args)
        assert code == 0, (args, err)
    listed = json.loads(out["json"])
    assert [(r["name"], r["version"], r["aliases"]) for r in listed] == [
        ("fmnist-a", 1, ["champion"]),
        ("fmnist-b", 1, []),
    ]
    assert listed[0]["tags"] == {"arch": "cnn", "classes": "3", "source": "party-b", "accuracy": "0.87"}
    assert listed[0]["spec"]["classes"] == CLASSES
    assert [r["name"] for r in json.loads(out["tagged"])] == ["fmnist-b"]
    assert "holds no models with these tags" in out["none"]
    for name in CLASSES:
        assert name in out["show"]
    assert "champion" in out["show"] and "1x28x28" in out["show"]
    shown = json.loads(out["show-json"])
    assert shown["spec"]["arch_kwargs"] == {"width": 4, "depth": 2} and shown["versions"] == [1]
    assert json.loads(out["show-b"])["aliases"] == ["champion"]

    code, _, err = cli_main(capsys, "--tracking-uri", uri, "rm", "fmnist-a")
    assert code == 0, err
    code, listed, err = cli_main(capsys, "list", "--json", "--tracking-uri", uri)
    assert code == 0, err
    assert [r["name"] for r in json.loads(listed)] == ["fmnist-b"]


def test_bad_input_exit_2(elsewhere: dict, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """In-process (fast) for the many cases; one subprocess to see the real exit code and stderr."""
    uri = f"sqlite:///{tmp_path / 'zoo.db'}"
    e = elsewhere
    pickled = tmp_path / "pickled.safetensors"
    pickled.write_bytes(pickle.dumps(elsewhere["model"].state_dict()))
    four = tmp_path / "four.txt"
    four.write_text("a\nb\nc\nd\n")
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")

    def replace(args: list[str], flag: str, value: str) -> list[str]:
        args = list(args)
        args[args.index(flag) + 1] = value
        return args

    good = ["--tracking-uri", uri, *register_args(e)]
    cases = {
        "input shape": replace(good, "--input-shape", "1,28"),
        "input shape text": replace(good, "--input-shape", "one"),
        "unknown arch": replace(good, "--arch", "evilnet"),
        "arch kwargs": replace(good, "--arch-kwargs", "{width: 4"),
        "arch kwargs list": replace(good, "--arch-kwargs", "[4]"),
        "unknown arch kwarg": replace(good, "--arch-kwargs", '{"widht": 4}'),
        "missing weights": replace(good, "--weights", str(tmp_path / "nope.safetensors")),
        "pickled weights": replace(good, "--weights", str(pickled)),
        "missing classes": replace(good, "--classes", str(tmp_path / "nope.txt")),
        "mismatched classes": replace(good, "--classes", str(four)),
        "no classes": replace(good, "--classes", str(empty)),
        "mean": replace(good, "--mean", "0.1,0.2"),
        "std": replace(good, "--std", "x"),
        "tag": replace(good, "--tag", "no-equals-sign"),
        "name": replace(good, "--name", "bad/name"),
        "missing flag": [a for a in good if a != "--name" and a != "fmnist-a"],
        "show unknown": ["--tracking-uri", uri, "show", "nope"],
        "rm unknown": ["--tracking-uri", uri, "rm", "nope"],
        "unknown command": ["--tracking-uri", uri, "frobnicate"],
        "version not int": ["--tracking-uri", uri, "show", "x", "--version", "one"],
    }
    for case, args in cases.items():
        code, _, err = cli_main(capsys, *args)
        assert code == 2, (case, err)
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("zoo: error: "), (case, err)
    assert Registry(uri).list() == [], "a refused registration wrote to the zoo"

    # the real thing: exit code 2, one line, no traceback
    run = zoo(*replace(register_args(e), "--weights", str(pickled)), cwd=tmp_path, uri=uri)
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert run.stderr.startswith("zoo: error: ") and len(run.stderr.strip().splitlines()) == 1, run.stderr
    assert str(pickled) in run.stderr and "pickle" in run.stderr, "the message names the user's file"


def test_register_with_the_owners_calibration(
    elsewhere: dict, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """`--calibration FILE` (zoo.unify.calibration.fit_calibration's JSON) lands, validated, in the spec's
    metadata["calibration"]; a bad file is refused with exit 2 naming it; without the flag there is none."""
    uri = f"sqlite:///{tmp_path / 'zoo.db'}"
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(60) % 3
    logits = torch.randn(60, 3, generator=g) + 3 * torch.nn.functional.one_hot(labels, 3)
    cal = fit_calibration(logits, labels)
    good = tmp_path / "calibration.json"
    good.write_text(json.dumps(cal.to_dict()))
    code, _, err = cli_main(
        capsys, "--tracking-uri", uri, *register_args(elsewhere, "cal"), "--calibration", str(good)
    )
    assert code == 0, err
    code, _, err = cli_main(capsys, "--tracking-uri", uri, *register_args(elsewhere, "plain"))
    assert code == 0, err
    registry = Registry(uri, cache_dir=tmp_path / "cache")
    assert calibration_from_metadata(registry.get("cal").spec.metadata) == cal
    assert calibration_from_metadata(registry.get("plain").spec.metadata) is None

    bad_values = tmp_path / "bad.json"
    bad_values.write_text(json.dumps({**cal.to_dict(), "temperature": -1}))
    not_json = tmp_path / "not.json"
    not_json.write_text("temperature: 1")
    for path, words in (
        (bad_values, "temperature"),
        (not_json, "not a JSON file"),
        (tmp_path / "nope.json", "no such file"),
    ):
        args = ["--tracking-uri", uri, *register_args(elsewhere, "refused"), "--calibration", str(path)]
        code, _, err = cli_main(capsys, *args)
        assert code == 2 and err.startswith("zoo: error: --calibration ") and str(path) in err, err
        assert words in err and len(err.strip().splitlines()) == 1, err
    assert [r.name for r in registry.list()] == ["cal", "plain"], "a refused registration wrote to the zoo"


def test_list_keeps_a_students_long_tags_out_of_the_table() -> None:
    """A unified student carries 64-character fingerprints and a sentence of champion decision as tags:
    `zoo list` stays one readable row per model and says where the rest is (`zoo show`, --json)."""
    from zoo.artifacts import InputSpec, ModelSpec
    from zoo.cli import LIST_TAG_WIDTH, list_table
    from zoo.registry import ModelRecord

    spec = ModelSpec("cnn", CLASSES, InputSpec(1, 28, 28, (0.3,), (0.3,)))
    tags = {
        "arch": "cnn",
        "role": "student",
        "method": "ce",
        "transfer_fingerprint": "f" * 64,
        "eval_fingerprint": "e" * 64,
        "champion_decision": "eval_accuracy 0.9016 > champion v1's 0.9005",
    }
    record = ModelRecord("unified-fmnist", 2, tags, ["champion"], spec, "file:///x", "run-1")
    header, row = list_table([record]).splitlines()
    assert "role=student" in row and "method=ce" in row and "(+3 in zoo show)" in row
    assert "f" * (LIST_TAG_WIDTH + 1) not in row and len(row) < 160
    assert header.split()[-1] == "TAGS"
