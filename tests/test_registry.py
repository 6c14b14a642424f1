"""The teacher zoo on a real MLflow registry: a sqlite store and a real `mlflow server` over HTTP."""

from __future__ import annotations

import json
import os
import pickle
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch

from zoo.architectures import build_model
from zoo.artifacts import ArtifactError, InputSpec, ModelSpec, save_model
from zoo.registry import ModelNotFound, Registry, default_tracking_uri, parse_model_uri

SHAPE = (1, 16, 16)
ARCH_KWARGS = {"width": 4, "depth": 2}


def make_teacher(
    directory: Path,
    classes: list[str],
    seed: int = 0,
    source: str | None = None,
    accuracy: float | None = None,
) -> tuple[torch.nn.Module, ModelSpec, Path]:
    torch.manual_seed(seed)
    model = build_model("cnn", len(classes), in_channels=SHAPE[0], image_size=SHAPE[1:], **ARCH_KWARGS).eval()
    metadata: dict = {}
    if source:
        metadata["source"] = source
    if accuracy is not None:
        metadata["metrics"] = {"accuracy": accuracy}
    spec = ModelSpec(
        arch="cnn",
        classes=list(classes),
        input=InputSpec(channels=SHAPE[0], height=SHAPE[1], width=SHAPE[2], mean=(0.5,), std=(0.5,)),
        arch_kwargs=dict(ARCH_KWARGS),
        metadata=metadata,
    )
    return model, spec, Path(save_model(model, spec, directory))


def outputs(model: torch.nn.Module) -> torch.Tensor:
    x = torch.randn(5, *SHAPE, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return model.eval()(x)


def snapshot(registry: Registry) -> tuple:
    """What the zoo holds, down to MLflow runs and experiments: a refusal must leave all of it unchanged."""
    client = registry.client
    models = sorted((r.name, r.version) for name in registry.names() for r in registry.versions(name))
    experiments = sorted(e.name for e in client.search_experiments())
    runs = sorted(
        r.info.run_id for e in client.search_experiments() for r in client.search_runs([e.experiment_id])
    )
    return models, experiments, runs


# ---------------------------------------------------------------------------------------------- round trip
def roundtrip(registry: Registry, tmp_path: Path) -> None:
    model_a, spec_a, dir_a = make_teacher(tmp_path / "a", ["cat", "dog", "bird"], 0, "party-a", 0.91)
    model_b, _, dir_b = make_teacher(tmp_path / "b", ["car", "truck"], 1)

    rec = registry.register(
        "teacher-a", dir_a, tags={"team": "vision"}, aliases=["champion"], description="A"
    )
    assert (rec.name, rec.version, rec.aliases) == ("teacher-a", 1, ["champion"])
    assert rec.tags == {
        "arch": "cnn",
        "classes": "3",
        "source": "party-a",
        "accuracy": "0.9100",
        "team": "vision",
    }
    assert rec.spec.to_dict() == spec_a.to_dict()
    registry.register("teacher-b", dir_b, tags={"team": "road", "source": "party-b"})

    # list and filter by tags (the registered model's tags)
    assert [(r.name, r.version) for r in registry.list()] == [("teacher-a", 1), ("teacher-b", 1)]
    assert [r.name for r in registry.list({"team": "vision"})] == ["teacher-a"]
    assert [r.name for r in registry.list({"source": "party-b", "classes": "2"})] == ["teacher-b"]
    assert [r.name for r in registry.list({"arch": "cnn"})] == ["teacher-a", "teacher-b"]
    assert registry.list({"team": "nobody"}) == []
    assert registry.get("teacher-b").tags["source"] == "party-b"
    assert "accuracy" not in registry.get("teacher-b").tags

    # load gives a model with identical outputs, from the registry and from the cache
    loaded, spec, record = registry.load("teacher-a")
    assert spec.to_dict() == spec_a.to_dict() and record.version == 1
    torch.testing.assert_close(outputs(loaded), outputs(model_a), rtol=0, atol=0)
    cached = registry.download("teacher-a", 1)
    assert cached.is_relative_to(registry.cache_dir) and (cached / "spec.json").is_file()
    # a damaged cache entry is noticed (SHA-256 recorded at registration) and fetched again
    (cached / "weights.safetensors").write_bytes(b"\0" * 64)
    loaded, _, _ = registry.load("teacher-a", version=1)
    torch.testing.assert_close(outputs(loaded), outputs(model_a), rtol=0, atol=0)
    (cached / "spec.json").write_text(json.dumps({**spec_a.to_dict(), "classes": ["x", "y", "z"]}))
    loaded, spec, _ = registry.load("teacher-a", version=1)
    assert spec.classes == ["cat", "dog", "bird"]
    exported = registry.download("teacher-b", dst=tmp_path / "export")
    assert sorted(p.name for p in exported.iterdir()) == ["spec.json", "weights.safetensors"]

    # a second version; aliases; load by alias and by URI
    model_a2, _, dir_a2 = make_teacher(tmp_path / "a2", ["cat", "dog", "bird", "fish"], 2, "party-a")
    rec2 = registry.register("teacher-a", dir_a2)
    assert rec2.version == 2 and registry.get("teacher-a").version == 2
    assert registry.get("teacher-a", alias="champion").version == 1
    assert [r.version for r in registry.versions("teacher-a")] == [1, 2]
    (latest_a,) = registry.list({"classes": "4"})  # the model's tags follow its latest version
    assert (latest_a.name, latest_a.version) == ("teacher-a", 2)
    assert "accuracy" not in latest_a.model_tags
    registry.set_alias("teacher-a", "champion", 2)
    loaded, _, record = registry.load("teacher-a", alias="champion")
    assert record.version == 2 and record.aliases == ["champion"]
    torch.testing.assert_close(outputs(loaded), outputs(model_a2), rtol=0, atol=0)
    loaded, _, record = registry.load("models:/teacher-a/1")
    assert record.version == 1 and record.aliases == []
    torch.testing.assert_close(outputs(loaded), outputs(model_a), rtol=0, atol=0)
    assert registry.get("models:/teacher-a@champion").version == 2

    # not found: clear errors that name what exists
    with pytest.raises(ModelNotFound, match=r"no model named 'teacher-c'.*did you mean .*'teacher-a'"):
        registry.get("teacher-c")
    with pytest.raises(ModelNotFound, match=r"no version 7 \(its versions: 1, 2\)"):
        registry.get("teacher-a", version=7)
    with pytest.raises(ModelNotFound, match=r"no alias 'best' \(its aliases: champion\)"):
        registry.load("teacher-a", alias="best")
    with pytest.raises(ValueError, match="not both"):
        registry.get("teacher-a", version=1, alias="champion")

    # delete a version, then whole models
    registry.delete("teacher-a", version=1)
    assert [r.version for r in registry.versions("teacher-a")] == [2]
    with pytest.raises(ModelNotFound):
        registry.get("teacher-a", version=1)
    registry.delete("teacher-b")
    assert [r.name for r in registry.list()] == ["teacher-a"]
    with pytest.raises(ModelNotFound):
        registry.load("teacher-b")
    registry.delete("teacher-a", version=2)  # its last version: the registered model goes too
    assert registry.list() == [] and registry.names() == []


def test_roundtrip_sqlite(mlflow_uri: str, tmp_path: Path) -> None:
    registry = Registry(mlflow_uri, cache_dir=tmp_path / "cache")
    roundtrip(registry, tmp_path)
    # the zoo is self-contained: artifacts beside the database
    logged = list((tmp_path / "zoo-artifacts").rglob("weights.safetensors"))
    assert logged, "registration runs should log their artifacts next to the sqlite file"


@pytest.fixture()
def mlflow_server(tmp_path: Path):
    """A real `mlflow server` on 127.0.0.1 (own process group, stopped in the finalizer)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    log = open(tmp_path / "server.log", "wb")
    proc = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "mlflow"),
            "server",
            "--host", "127.0.0.1",
            "--port", str(port),
            "--workers", "1",
            "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
            "--artifacts-destination", str(tmp_path / "server-artifacts"),
        ],
        cwd=tmp_path,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited: {(tmp_path / 'server.log').read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"mlflow server not ready in 120 s: {(tmp_path / 'server.log').read_text()[-2000:]}"
                )
            time.sleep(0.5)
        yield url
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=20)
        except ProcessLookupError:
            pass
        log.close()


@pytest.mark.slow
def test_roundtrip_server(mlflow_server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    registry = Registry(cache_dir=tmp_path / "cache")
    assert registry.tracking_uri == mlflow_server
    roundtrip(registry, tmp_path / "work")
    # artifacts went through the server (proxied) into its artifact destination
    assert list((tmp_path / "server-artifacts").rglob("weights.safetensors"))


# ---------------------------------------------------------------------------------------------- refusals
class Evil:
    """Unpickling this would create a marker file: a refused artifact must never be unpickled."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def broken_artifacts(tmp_path: Path) -> dict[str, Path]:
    """Artifact directories each broken in one way."""
    out = {}
    model, spec, good = make_teacher(tmp_path / "good", ["a", "b", "c"])

    def variant(name: str, spec_dict: dict | str | None = None, weights: bytes | None = None) -> None:
        d = tmp_path / name
        d.mkdir()
        spec_text = spec_dict if isinstance(spec_dict, str) else json.dumps(spec_dict or spec.to_dict())
        (d / "spec.json").write_text(spec_text)
        (d / "weights.safetensors").write_bytes(
            weights if weights is not None else (good / "weights.safetensors").read_bytes()
        )
        out[name] = d

    bad = spec.to_dict()
    variant("spec-not-json", "{not json")
    variant("spec-no-classes", {k: v for k, v in bad.items() if k != "classes"})
    variant("mismatched-classes", {**bad, "classes": ["a", "b", "c", "d"]})
    variant("unknown-arch", {**bad, "arch": "evilnet"})
    weights = (good / "weights.safetensors").read_bytes()
    variant("corrupt-weights", weights=weights[: len(weights) // 2])
    variant("empty-weights", weights=b"")
    marker = tmp_path / "UNPICKLED"
    variant("pickled-weights", weights=pickle.dumps(Evil(str(marker))))
    torch_file = tmp_path / "state.pt"
    torch.save(model.state_dict(), torch_file)
    variant("torch-save-weights", weights=torch_file.read_bytes())
    missing = tmp_path / "no-weights"
    missing.mkdir()
    (missing / "spec.json").write_text(json.dumps(spec.to_dict()))
    out["no-weights"] = missing
    out["no-directory"] = tmp_path / "does-not-exist"
    out["good"] = good
    return out


def test_refusals_leave_registry_unchanged(mlflow_uri: str, tmp_path: Path) -> None:
    registry = Registry(mlflow_uri, cache_dir=tmp_path / "cache")
    dirs = broken_artifacts(tmp_path / "art")
    registry.register("teacher", dirs["good"], tags={"team": "x"})
    before = snapshot(registry)
    assert before[0] == [("teacher", 1)] and len(before[2]) == 1

    refusals = {name: (name, d, {}, ()) for name, d in dirs.items() if name != "good"}
    good = dirs["good"]
    refusals.update(
        {
            "name-with-slash": ("bad/name", good, {}, ()),
            "name-empty": ("", good, {}, ()),
            "name-with-space": ("a teacher", good, {}, ()),
            "name-not-str": (3, good, {}, ()),
            "tag-value-float": ("teacher", good, {"accuracy": 0.9}, ()),
            "tag-key-reserved": ("teacher", good, {"zoo.spec": "{}"}, ()),
            "tag-arch-contradicts": ("teacher", good, {"arch": "resnet18"}, ()),
            "tag-key-bad": ("teacher", good, {"a=b": "c"}, ()),
            "alias-reserved": ("teacher", good, {}, ("latest",)),
            "alias-version-like": ("teacher", good, {}, ("v2",)),
            "new-name-bad-alias": ("other", good, {}, ("bad alias",)),
        }
    )
    for case, (name, directory, tags, aliases) in refusals.items():
        with pytest.raises(ValueError) as info:  # ArtifactError is a ValueError
            registry.register(name, directory, tags=tags, aliases=aliases)
        assert str(info.value), case
        assert snapshot(registry) == before, f"{case} changed the registry"
    for case in ("spec-not-json", "mismatched-classes", "unknown-arch", "corrupt-weights", "pickled-weights"):
        with pytest.raises(ArtifactError) as info:
            registry.register("teacher", dirs[case])
        assert str(dirs[case]) in str(info.value), "the message names the user's directory"
    assert not (tmp_path / "art" / "UNPICKLED").exists(), "a pickled payload was unpickled"
    assert snapshot(registry) == before

    # A failure half-way (the artifact store breaks after the run is created) is rolled back: no new
    # version, no new model, no run left; the existing version is untouched.
    store = tmp_path / "zoo-artifacts"
    store.rename(tmp_path / "zoo-artifacts.bak")
    store.write_text("not a directory")
    for name in ("teacher", "newcomer"):
        with pytest.raises(Exception) as info:
            registry.register(name, dirs["good"])
        assert not isinstance(info.value, ValueError), "a store failure is not the user's bad input"
        assert snapshot(registry) == before, f"a failed registration of {name!r} left something behind"
    store.unlink()
    (tmp_path / "zoo-artifacts.bak").rename(store)
    _, spec, record = registry.load("teacher")
    assert record.version == 1 and record.tags["team"] == "x"


def test_parse_model_uri() -> None:
    assert parse_model_uri("models:/teacher-a@champion") == ("teacher-a", None, "champion")
    assert parse_model_uri("models:/teacher-a/3") == ("teacher-a", 3, None)
    assert parse_model_uri("models:/teacher-a") == ("teacher-a", None, None)
    assert parse_model_uri("models:/teacher-a/latest") == ("teacher-a", None, None)
    for bad in ("runs:/abc/model", "models:/", "models:/a/0", "models:/a/b/c", "teacher-a", "models:/a/x"):
        with pytest.raises(ValueError):
            parse_model_uri(bad)


def test_default_tracking_uri(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    # (a Registry() creates the database at once; tests/test_cli.py uses this default store for real)
    assert default_tracking_uri() == f"sqlite:///{tmp_path.resolve() / 'zoo.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert default_tracking_uri() == "http://127.0.0.1:5000"
