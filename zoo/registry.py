"""The teacher zoo on the MLflow model registry.

Each teacher is a registered model; each registration is a model version whose source is the artifact
directory (``weights.safetensors`` + ``spec.json``, see :mod:`zoo.artifacts`) of a plain MLflow run
in the experiment ``zoo-registry``. Nothing here uses MLflow flavours or "logged models": the weights
are plain tensors and are loaded by :func:`zoo.artifacts.load_model`, which never unpickles, so a
teacher from an untrusted party can be listed, shown and loaded without running code that came with it.

Tags. On the registered model (describing its latest version) and on each version:
``arch``, ``classes`` (class count), ``source`` (where the teacher came from), ``accuracy`` (when
known) and the user's tags. Each version also holds hidden ``zoo.*`` tags: the full spec (so showing
and filtering need no download), the class names as JSON, and the SHA-256 of the weights (checked
again on every load, cached or not).

Everything is validated before the first write: a refused registration leaves the registry as it was.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zoo.artifacts import (
    SPEC_FILE,
    WEIGHTS_FILE,
    ArtifactError,
    ModelSpec,
    check_artifact,
    load_model,
    read_spec,
    save_model,
)

EXPERIMENT_NAME = "zoo-registry"
ARTIFACT_PATH = "model"  # where a registration run logs the artifact directory

# Tags the registry derives from the spec; a user may not set them to something else.
DERIVED_TAGS = ("arch", "classes", "task")
# Tags the registry fills when it can; a user may set them.
KNOWN_TAGS = ("arch", "classes", "source", "accuracy")
INTERNAL_PREFIX = "zoo."
SPEC_TAG = "zoo.spec"
CLASS_NAMES_TAG = "zoo.class_names"
SHA_TAG = "zoo.weights_sha256"
# MLflow refuses model-registry tag values above this length (MAX_MODEL_REGISTRY_TAG_VALUE_LENGTH);
# a longer spec is read from the artifact instead of the tag.
MAX_TAG_VALUE = 100_000

# Kept strict so that every name works in a ``models:/name@alias`` URI, a path and a shell.
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
TAG_KEY_RE = re.compile(r"^[A-Za-z0-9_.\- /]{1,250}$")
ALIAS_RE = re.compile(r"^[A-Za-z0-9_-]{1,255}$")
_MODEL_URI_RE = re.compile(r"^models:/(?P<name>[^/@]+)(?:/(?P<version>[^/@]+)|@(?P<alias>[^/@]+))?/?$")


class ModelNotFound(LookupError):
    """No registered model (or no such version / alias of one) in the zoo."""


@dataclass(frozen=True)
class ModelRecord:
    """One model version of the zoo. ``source`` is the MLflow artifact URI of the version; the party the
    teacher came from is ``tags["source"]``."""

    name: str
    version: int
    tags: dict[str, str]
    aliases: list[str]
    spec: ModelSpec
    source: str
    run_id: str | None
    description: str = ""
    created_at: int | None = None  # milliseconds since the epoch, as MLflow stores it
    model_tags: dict[str, str] = field(default_factory=dict)  # tags of the registered model
    weights_sha256: str | None = None  # recorded at registration, checked on every load

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "uri": self.uri,
            "tags": dict(self.tags),
            "aliases": list(self.aliases),
            "source": self.source,
            "run_id": self.run_id,
            "description": self.description,
            "created_at": self.created_at,
            "spec": self.spec.to_dict(),
        }


def default_tracking_uri() -> str:
    """``$MLFLOW_TRACKING_URI``, else a sqlite database ``zoo.db`` in the working directory."""
    uri = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    return uri or f"sqlite:///{Path.cwd().resolve() / 'zoo.db'}"


def default_cache_dir() -> Path:
    """``$ZOO_CACHE_DIR``, else ``~/.cache/zoo``."""
    env = os.environ.get("ZOO_CACHE_DIR", "").strip()
    return Path(env).expanduser() if env else Path.home() / ".cache" / "zoo"


def experiment_id(client: Any, tracking_uri: str | None, name: str) -> str:
    """The id of the MLflow experiment ``name`` (``client``: an MlflowClient), created (or restored)
    when missing. With a sqlite store its artifacts go beside the database (``zoo-artifacts/``, as
    the zoo's models), not in ./mlruns of whatever directory the caller runs in. The one way every
    job gets an experiment."""
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            client.restore_experiment(exp.experiment_id)
        return exp.experiment_id
    db_dir = _sqlite_dir(tracking_uri or default_tracking_uri())
    location = (db_dir / "zoo-artifacts").as_uri() if db_dir is not None else None
    try:
        return client.create_experiment(name, artifact_location=location)
    except Exception as exc:  # created concurrently by another job
        if not _is_already_exists(exc):
            raise
        return client.get_experiment_by_name(name).experiment_id


def parse_model_uri(uri: str) -> tuple[str, int | None, str | None]:
    """``models:/name@alias`` -> (name, None, alias); ``models:/name/3`` -> (name, 3, None);
    ``models:/name`` and ``models:/name/latest`` -> (name, None, None)."""
    m = _MODEL_URI_RE.match(uri.strip()) if isinstance(uri, str) else None
    if m is None:
        raise ValueError(
            f"not a model URI: {uri!r}; expected models:/NAME, models:/NAME/VERSION or models:/NAME@ALIAS"
        )
    name, version, alias = m.group("name"), m.group("version"), m.group("alias")
    if version is None or version == "latest":
        return name, None, alias
    if not version.isdigit() or int(version) < 1:
        raise ValueError(f"bad version {version!r} in model URI {uri!r}: a version is a positive integer")
    return name, int(version), None


def validate_name(name: object) -> str:
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise ValueError(
            f"bad model name {name!r}: use 1-128 characters among letters, digits, '.', '_' and '-', "
            "starting with a letter or digit"
        )
    return name


def validate_alias(alias: object) -> str:
    if (
        not isinstance(alias, str)
        or not ALIAS_RE.match(alias)
        or alias.lower() == "latest"
        or re.fullmatch(r"[vV]\d+", alias)
    ):
        raise ValueError(
            f"bad alias {alias!r}: use letters, digits, '_' and '-'; 'latest' and v<number> are reserved"
        )
    return alias


def validate_tags(tags: Mapping[str, str] | None, spec: ModelSpec | None = None) -> dict[str, str]:
    """User tags: string keys and values; ``zoo.*`` keys are reserved; ``arch`` and ``classes`` must agree
    with the spec when given."""
    if tags is None:
        return {}
    if not isinstance(tags, Mapping):
        raise ValueError(f"tags must be a mapping of strings to strings, got {type(tags).__name__}")
    out: dict[str, str] = {}
    for key, value in tags.items():
        if not isinstance(key, str) or not TAG_KEY_RE.match(key):
            raise ValueError(
                f"bad tag key {key!r}: use 1-250 characters among letters, digits, '_', '-', '.', ' ' and '/'"
            )
        if key.startswith(INTERNAL_PREFIX):
            raise ValueError(f"tag key {key!r} is reserved (keys starting with {INTERNAL_PREFIX!r})")
        if not isinstance(value, str):
            raise ValueError(f"tag {key!r} must be a string, got {type(value).__name__} {value!r}")
        if len(value) > MAX_TAG_VALUE:
            raise ValueError(f"tag {key!r} is {len(value)} characters long; the limit is {MAX_TAG_VALUE}")
        out[key] = value
    if spec is not None:
        derived = {"task": "multiclass", **_derived_tags(spec)}
        for key in DERIVED_TAGS:
            if key in out and out[key] != derived[key]:
                raise ValueError(
                    f"tag {key}={out[key]!r} contradicts the spec ({key}={derived[key]!r}); "
                    "leave it out, the registry sets it"
                )
    return out


def _derived_tags(spec: ModelSpec) -> dict[str, str]:
    tags = {"arch": spec.arch, "classes": str(len(spec.classes))}
    if spec.task != "multiclass":  # no tag means multiclass, as for versions registered before `task`
        tags["task"] = spec.task
    metadata = spec.metadata or {}
    if isinstance(metadata.get("source"), str) and metadata["source"]:
        tags["source"] = metadata["source"]
    metrics = metadata.get("metrics")
    if isinstance(metrics, Mapping) and isinstance(metrics.get("accuracy"), (int, float)):
        tags["accuracy"] = f"{float(metrics['accuracy']):.4f}"
    return tags


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _sqlite_dir(uri: str) -> Path | None:
    """The directory of a ``sqlite:///`` database, None for other stores."""
    if not uri.startswith("sqlite:///"):
        return None
    path = uri[len("sqlite:///") :].split("?", 1)[0]
    if not path or path == ":memory:":
        return None
    return Path(path).expanduser().resolve().parent


def _is_not_found(exc: Exception) -> bool:
    return getattr(exc, "error_code", None) in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND") or (
        "RESOURCE_DOES_NOT_EXIST" in str(exc)
    )


def _is_already_exists(exc: Exception) -> bool:
    code = getattr(exc, "error_code", None)
    return code == "RESOURCE_ALREADY_EXISTS" or "RESOURCE_ALREADY_EXISTS" in str(exc)


class Registry:
    """The teacher zoo. ``tracking_uri``: an MLflow tracking URI used for both tracking and the model
    registry (default :func:`default_tracking_uri`); ``cache_dir``: where loaded versions are kept
    (default :func:`default_cache_dir`)."""

    def __init__(self, tracking_uri: str | None = None, cache_dir: str | Path | None = None):
        from mlflow.tracking import MlflowClient  # 1.5 s import: only when a registry is made

        self.tracking_uri = tracking_uri or default_tracking_uri()
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        # Explicit URIs on the client: no global MLflow state that would leak between registries.
        self.client = MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)
        self._experiment_id: str | None = None

    def __repr__(self) -> str:
        return f"Registry({self.tracking_uri!r})"

    # ------------------------------------------------------------------ writing
    def register(
        self,
        name: str,
        model_dir: str | Path,
        tags: Mapping[str, str] | None = None,
        aliases: Sequence[str] = (),
        description: str = "",
    ) -> ModelRecord:
        """Register the artifact directory ``model_dir`` as a new version of ``name``.

        Everything is checked first (name, tags, aliases, the artifact itself with
        :func:`zoo.artifacts.check_artifact`); a refusal raises ValueError (ArtifactError for the
        artifact) and writes nothing."""
        validate_name(name)
        if isinstance(aliases, str):
            aliases = (aliases,)
        aliases = [validate_alias(a) for a in aliases]
        if not isinstance(description, str):
            raise ValueError(f"description must be a string, got {type(description).__name__}")
        model_dir = Path(model_dir)
        if not model_dir.is_dir():
            raise ArtifactError(f"model directory {model_dir} does not exist")
        # Work on a private copy of the two files: what is checked is exactly what is logged (a later
        # change to model_dir cannot slip in), and nothing else in model_dir is uploaded.
        with tempfile.TemporaryDirectory(prefix="zoo-register-") as tmp:
            staged = Path(tmp) / ARTIFACT_PATH
            staged.mkdir()
            for file in (WEIGHTS_FILE, SPEC_FILE):
                if (model_dir / file).is_file():
                    shutil.copyfile(model_dir / file, staged / file)
            try:
                spec = check_artifact(staged)
            except ArtifactError as exc:  # name the user's directory, not the private copy
                text = str(exc).replace(str(staged), str(model_dir))
                if str(model_dir) not in text:
                    text = f"{model_dir}: {text}"
                raise ArtifactError(text) from None
            user_tags = validate_tags(tags, spec)
            version = self._write(name, staged, spec, user_tags, aliases, description)
        return self.get(name, version=version)

    def _write(
        self,
        name: str,
        staged: Path,
        spec: ModelSpec,
        user_tags: dict[str, str],
        aliases: Sequence[str],
        description: str,
    ) -> int:
        """The MLflow writes of a registration (all checks done): a run logging the artifact, the
        registered model when new, the version, its aliases, the model's tags. Rolled back on failure."""
        version_tags = {"source": "unknown", **_derived_tags(spec), **user_tags}
        class_names = json.dumps(list(spec.classes))
        if len(class_names) <= MAX_TAG_VALUE:
            version_tags[CLASS_NAMES_TAG] = class_names
        spec_json = json.dumps(spec.to_dict(), sort_keys=True)
        if len(spec_json) <= MAX_TAG_VALUE:
            version_tags[SPEC_TAG] = spec_json
        version_tags[SHA_TAG] = _sha256(staged / WEIGHTS_FILE)

        client = self.client
        run = client.create_run(
            self._experiment(), tags={"mlflow.runName": f"register-{name}", "zoo.model_name": name}
        )
        run_id = run.info.run_id
        created_model = False
        version = None
        old_aliases: dict[str, str] = {}
        try:
            client.log_artifacts(run_id, str(staged), artifact_path=ARTIFACT_PATH)
            client.set_terminated(run_id, "FINISHED")
            try:
                old_aliases = dict(client.get_registered_model(name).aliases or {})
            except Exception as exc:
                if not _is_not_found(exc):
                    raise
                try:
                    client.create_registered_model(name, description=description or None)
                    created_model = True
                except Exception as exc2:  # registered by someone else meanwhile: use theirs
                    if not _is_already_exists(exc2):
                        raise
            source = f"{run.info.artifact_uri.rstrip('/')}/{ARTIFACT_PATH}"
            mv = client.create_model_version(
                name, source, run_id=run_id, tags=version_tags, description=description or None
            )
            version = int(mv.version)
            for alias in aliases:
                client.set_registered_model_alias(name, alias, str(version))
            self._sync_model_tags(name)
        except BaseException:
            # Roll back what this call wrote so that a failure half-way leaves the zoo as it was.
            self._rollback(name, run_id, version, created_model, old_aliases)
            raise
        return version

    def register_model(
        self,
        name: str,
        model: Any,
        spec: ModelSpec,
        tags: Mapping[str, str] | None = None,
        aliases: Sequence[str] = (),
        description: str = "",
    ) -> ModelRecord:
        """Save ``model`` with ``spec`` (:func:`zoo.artifacts.save_model`) and register it."""
        validate_name(name)
        with tempfile.TemporaryDirectory(prefix="zoo-register-") as tmp:
            directory = save_model(model, spec, Path(tmp) / "model")
            return self.register(name, directory, tags=tags, aliases=aliases, description=description)

    def set_alias(self, name: str, alias: str, version: int | str) -> ModelRecord:
        """Point ``alias`` of ``name`` at ``version`` (moving it if it pointed elsewhere)."""
        validate_alias(alias)
        record = self.get(name, version=int(version))
        self.client.set_registered_model_alias(name, alias, str(record.version))
        return self.get(name, version=record.version)

    def delete_alias(self, name: str, alias: str) -> None:
        self.get(name, alias=alias)
        self.client.delete_registered_model_alias(name, alias)

    def delete(self, name: str, version: int | str | None = None) -> None:
        """Delete one version of ``name``, or the whole registered model when ``version`` is None. The
        runs of deleted versions are deleted too (MLflow keeps them restorable until ``mlflow gc``)."""
        if version is None:
            records = self.versions(name)
            self.client.delete_registered_model(name)
        else:
            records = [self.get(name, version=int(version))]
            self.client.delete_model_version(name, str(records[0].version))
            if not self._search_versions(name):
                self.client.delete_registered_model(name)
            else:
                self._sync_model_tags(name)
        for record in records:
            if record.run_id:
                try:
                    self.client.delete_run(record.run_id)
                except Exception:  # already deleted or shared: the versions are gone, which is what counts
                    pass

    # ------------------------------------------------------------------ reading
    def names(self) -> list[str]:
        return sorted(rm.name for rm in self._search_models())

    def list(self, tags: Mapping[str, str] | None = None) -> list[ModelRecord]:
        """The latest version of every registered model whose tags include ``tags``, sorted by name. The
        filter looks at the registered model's tags, which describe its latest version."""
        wanted = {str(k): str(v) for k, v in (tags or {}).items()}
        records = []
        for rm in self._search_models(wanted):
            versions = self._search_versions(rm.name)
            if not versions:
                continue
            latest = max(versions, key=lambda mv: int(mv.version))
            record = self._record(latest, rm)
            if all(record.model_tags.get(k) == v for k, v in wanted.items()):
                records.append(record)
        return sorted(records, key=lambda r: r.name)

    def versions(self, name: str) -> list[ModelRecord]:
        """Every version of ``name``, oldest first."""
        rm = self._registered_model(name)
        versions = self._search_versions(name)
        return [self._record(mv, rm) for mv in sorted(versions, key=lambda mv: int(mv.version))]

    def get(self, name: str, version: int | str | None = None, alias: str | None = None) -> ModelRecord:
        """One version of ``name``: by ``version``, by ``alias``, else the latest. ``name`` may also be a
        ``models:/`` URI. Raises :class:`ModelNotFound` naming what exists."""
        name, version, alias = self._resolve(name, version, alias)
        rm = self._registered_model(name)
        if alias is not None:
            # The registered model carries its aliases ({alias: version}): no error-code guessing.
            aliases = dict(rm.aliases or {})
            if alias not in aliases:
                known = ", ".join(sorted(aliases)) or "none"
                raise ModelNotFound(f"model {name!r} has no alias {alias!r} (its aliases: {known})")
            mv = self.client.get_model_version(name, str(aliases[alias]))
        else:
            if version is None:
                versions = self._search_versions(name)
                if not versions:
                    raise ModelNotFound(f"model {name!r} has no versions")
                mv = max(versions, key=lambda v: int(v.version))
            else:
                try:
                    mv = self.client.get_model_version(name, str(version))
                except Exception as exc:
                    if not _is_not_found(exc):
                        raise
                    numbers = sorted(int(v.version) for v in self._search_versions(name))
                    known = ", ".join(map(str, numbers)) or "none"
                    raise ModelNotFound(
                        f"model {name!r} has no version {version} (its versions: {known})"
                    ) from None
        return self._record(mv, rm)

    def download(
        self,
        name: str,
        version: int | str | None = None,
        alias: str | None = None,
        dst: str | Path | None = None,
    ) -> Path:
        """The artifact directory (weights + spec) of a version, verified. Without ``dst`` it lives in the
        cache (``<cache_dir>/<name>/<version>-<run id>``) and is reused while it verifies."""
        record = self.get(name, version, alias)
        directory = self._fetch(record, Path(dst) if dst is not None else None)
        check_artifact(directory)
        return directory

    def load(
        self,
        name: str,
        version: int | str | None = None,
        alias: str | None = None,
        device: str = "cpu",
    ) -> tuple[Any, ModelSpec, ModelRecord]:
        """Load a version as ``(model, spec, record)`` through :func:`zoo.artifacts.load_model`, which only
        builds allow-listed architectures and reads safetensors (no code from the artifact runs)."""
        record = self.get(name, version, alias)
        directory = self._fetch(record, None)
        model, spec = load_model(directory, device=device)
        if spec.to_dict() != record.spec.to_dict():
            raise ArtifactError(
                f"the artifact of {record.uri} does not match its registered spec; the store was changed "
                f"after registration: delete the version ({record.uri}) and register it again"
            )
        return model, spec, record

    # ------------------------------------------------------------------ internals
    def _resolve(
        self, name: str, version: int | str | None, alias: str | None
    ) -> tuple[str, int | None, str | None]:
        if isinstance(name, str) and name.startswith("models:/"):
            uri_name, uri_version, uri_alias = parse_model_uri(name)
            if (uri_version is not None or uri_alias is not None) and (
                version is not None or alias is not None
            ):
                raise ValueError(f"{name!r} names a version already: pass no version or alias with it")
            name, version, alias = uri_name, uri_version if version is None else version, alias or uri_alias
        if version is not None and alias is not None:
            raise ValueError("give a version or an alias, not both")
        if version is not None:
            try:
                version = int(version)
            except (TypeError, ValueError):
                raise ValueError(f"bad version {version!r}: a version is a positive integer") from None
            if version < 1:
                raise ValueError(f"bad version {version}: a version is a positive integer")
        if not isinstance(name, str) or not name:
            raise ValueError(f"bad model name {name!r}")
        return name, version, alias

    def _experiment(self) -> str:
        if self._experiment_id is None:
            self._experiment_id = experiment_id(self.client, self.tracking_uri, EXPERIMENT_NAME)
        return self._experiment_id

    def _search_models(self, tags: Mapping[str, str] | None = None) -> list[Any]:
        clauses = []
        for key, value in (tags or {}).items():
            # Filter on the server when the filter grammar can say it; the caller checks again anyway.
            if "`" not in key and "'" not in value and "\\" not in value:
                clauses.append(f"tags.`{key}` = '{value}'")
        filter_string = " AND ".join(clauses) or None
        out, token = [], None
        while True:
            page = self.client.search_registered_models(filter_string=filter_string, page_token=token)
            out.extend(page)
            token = page.token
            if not token:
                return out

    def _search_versions(self, name: str) -> list[Any]:
        quoted = name.replace("'", "\\'")
        out, token = [], None
        while True:
            page = self.client.search_model_versions(f"name = '{quoted}'", page_token=token)
            out.extend(mv for mv in page if mv.name == name)
            token = page.token
            if not token:
                return out

    def _registered_model(self, name: str) -> Any:
        try:
            return self.client.get_registered_model(name)
        except Exception as exc:
            if not _is_not_found(exc):
                raise
        names = self.names()
        close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
        known = f" (the zoo holds {len(names)} model{'s' if len(names) != 1 else ''})"
        raise ModelNotFound(
            f"no model named {name!r} in the zoo at {self.tracking_uri}{hint}{known}"
        ) from None

    def _record(self, mv: Any, rm: Any) -> ModelRecord:
        """A ModelRecord from an MLflow ModelVersion and its RegisteredModel."""
        tags = dict(mv.tags or {})
        model_tags = dict(rm.tags or {})
        # search_model_versions leaves ModelVersion.aliases empty; the registered model has them all.
        aliases = set(getattr(mv, "aliases", None) or [])
        aliases |= {
            a for a, v in dict(getattr(rm, "aliases", None) or {}).items() if int(v) == int(mv.version)
        }
        spec_json = tags.get(SPEC_TAG)
        if spec_json is not None:
            spec = ModelSpec.from_dict(json.loads(spec_json))
        else:  # a spec too long for a tag: read it from the artifact (cached)
            spec = check_artifact(
                self._fetch_dir(mv.name, int(mv.version), mv.run_id, mv.source, tags.get(SHA_TAG))
            )
        return ModelRecord(
            name=mv.name,
            version=int(mv.version),
            tags={k: v for k, v in tags.items() if not k.startswith(INTERNAL_PREFIX)},
            aliases=sorted(aliases),
            spec=spec,
            source=mv.source,
            run_id=mv.run_id or None,
            description=mv.description or "",
            created_at=mv.creation_timestamp,
            model_tags={k: v for k, v in model_tags.items() if not k.startswith(INTERNAL_PREFIX)},
            weights_sha256=tags.get(SHA_TAG),
        )

    def _sync_model_tags(self, name: str) -> None:
        """Make the registered model's tags describe its latest version (list() filters on them)."""
        versions = self._search_versions(name)
        if not versions:
            return
        latest = max(versions, key=lambda mv: int(mv.version))
        tags = {k: v for k, v in (latest.tags or {}).items() if not k.startswith(INTERNAL_PREFIX)}
        current = dict(self.client.get_registered_model(name).tags)
        for key in KNOWN_TAGS:
            if key in current and key not in tags:
                self.client.delete_registered_model_tag(name, key)
        for key, value in tags.items():
            if current.get(key) != value:
                self.client.set_registered_model_tag(name, key, value)

    def _rollback(
        self, name: str, run_id: str, version: int | None, created_model: bool, old_aliases: Mapping[str, str]
    ) -> None:
        """Best effort: the original error is what the caller needs to see."""
        client = self.client
        steps = [lambda: client.delete_run(run_id)]
        if created_model:
            steps.append(lambda: client.delete_registered_model(name))
        elif version is not None:
            steps.append(lambda: client.delete_model_version(name, str(version)))
            # Aliases moved to the new version went with it: point them back, then fix the model's tags.
            for alias, old in old_aliases.items():
                steps.append(lambda alias=alias, old=old: client.set_registered_model_alias(name, alias, old))
            steps.append(lambda: self._sync_model_tags(name))
        for step in steps:
            try:
                step()
            except Exception:
                pass

    def _fetch(self, record: ModelRecord, dst: Path | None) -> Path:
        sha, spec = record.weights_sha256, record.spec
        if dst is None:
            return self._fetch_dir(record.name, record.version, record.run_id, record.source, sha, spec)
        dst.mkdir(parents=True, exist_ok=True)
        directory = self._download_to(record.source, dst)
        self._verify(directory, sha, record.uri, spec)
        return directory

    def _fetch_dir(
        self,
        name: str,
        version: int,
        run_id: str | None,
        source: str,
        sha: str | None,
        spec: ModelSpec | None = None,
    ) -> Path:
        """The cached copy of a version (keyed by run id), downloaded and verified when missing or damaged;
        written to a temporary directory, then renamed."""
        key = run_id or hashlib.sha256(source.encode()).hexdigest()[:32]
        final = self.cache_dir / name / f"{version}-{key}"
        uri = f"models:/{name}/{version}"
        if final.is_dir():
            try:
                self._verify(final, sha, uri, spec)
                return final
            except ArtifactError:  # a damaged cache entry: fetch it again
                shutil.rmtree(final, ignore_errors=True)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{version}-", dir=final.parent))
        try:
            directory = self._download_to(source, tmp)
            self._verify(directory, sha, uri, spec)
            try:
                os.replace(directory, final)
            except OSError:  # another process filled the cache first: use its copy once it verifies
                self._verify(final, sha, uri, spec)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return final

    def _download_to(self, source: str, dst: Path) -> Path:
        import mlflow.artifacts

        local = Path(
            mlflow.artifacts.download_artifacts(
                artifact_uri=source, dst_path=str(dst), tracking_uri=self.tracking_uri
            )
        )
        if not (local / SPEC_FILE).is_file() and (local / ARTIFACT_PATH / SPEC_FILE).is_file():
            local = local / ARTIFACT_PATH
        return local

    @staticmethod
    def _verify(directory: Path, sha: str | None, uri: str, expected: ModelSpec | None = None) -> ModelSpec:
        """Cheap integrity check of a fetched copy (spec and weights as registered); the full validation
        is load_model's, or check_artifact's in download()."""
        spec = read_spec(directory)
        if expected is not None and spec.to_dict() != expected.to_dict():
            raise ArtifactError(
                f"the spec of {uri} in {directory} differs from the registered one; the artifact store was "
                "changed: delete the version and register it again"
            )
        if sha is not None and _sha256(directory / WEIGHTS_FILE) != sha:
            raise ArtifactError(
                f"the weights of {uri} in {directory} do not match the SHA-256 recorded at registration; "
                "the artifact store was changed: delete the version and register it again"
            )
        return spec


def format_records(records: Iterable[ModelRecord]) -> list[dict[str, Any]]:
    """JSON-ready dicts of records (for scripts and the CLI)."""
    return [r.to_dict() for r in records]
