"""The ``zoo`` console script (also ``python -m zoo``): see what the teacher zoo holds and add to it.

    zoo list [--tag k=v ...] [--json]
    zoo show NAME [--version V | --alias A] [--json]
    zoo register --name NAME --arch ARCH --weights FILE.safetensors --classes FILE.txt --input-shape C,H,W
                 [--arch-kwargs JSON] [--mean M,...] [--std S,...] [--tag k=v ...] [--alias A ...]
                 [--calibration FILE.json]
    zoo alias NAME ALIAS VERSION
    zoo rm NAME [--version V]

Every command takes ``--tracking-uri`` (default ``$MLFLOW_TRACKING_URI``, else ``sqlite:///<cwd>/zoo.db``).
Exit codes: 0 success, 2 bad input (a one-line ``zoo: error: ...`` on stderr), 1 any other failure.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

EXIT_FAILURE = 1
EXIT_BAD_INPUT = 2


class BadInput(ValueError):
    """Something the user typed or pointed at is wrong (exit code 2)."""


class _Parser(argparse.ArgumentParser):
    """argparse, with a one-line error message (no usage dump) and exit code 2."""

    def error(self, message: str) -> NoReturn:
        hint = f" (see '{self.prog} --help')"
        self.exit(EXIT_BAD_INPUT, f"zoo: error: {message}{hint}\n")


# ---------------------------------------------------------------------------------------------- parsing
def parse_tag(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise BadInput(f"bad tag {text!r}: write it as KEY=VALUE")
    return key.strip(), value


def parse_tags(items: Sequence[str] | None) -> dict[str, str]:
    tags: dict[str, str] = {}
    for item in items or ():
        key, value = parse_tag(item)
        if key in tags and tags[key] != value:
            raise BadInput(f"tag {key!r} given twice with different values")
        tags[key] = value
    return tags


def parse_shape(text: str) -> tuple[int, int, int]:
    parts = [p.strip() for p in text.replace("x", ",").split(",") if p.strip()]
    try:
        shape = tuple(int(p) for p in parts)
    except ValueError:
        shape = ()
    if len(shape) != 3 or min(shape) < 1:
        raise BadInput(f"bad --input-shape {text!r}: write C,H,W with positive integers, e.g. 1,28,28")
    return shape  # type: ignore[return-value]


def parse_floats(text: str | None, channels: int, flag: str, default: float) -> tuple[float, ...]:
    """A comma list of ``channels`` floats, or one float used for every channel."""
    if text is None:
        return (default,) * channels
    try:
        values = tuple(float(p) for p in text.split(",") if p.strip())
    except ValueError:
        raise BadInput(f"bad {flag} {text!r}: write a comma list of numbers, e.g. 0.5,0.5,0.5") from None
    if len(values) == 1:
        values = values * channels
    if len(values) != channels:
        raise BadInput(f"bad {flag} {text!r}: {len(values)} values for {channels} channels")
    return values


def read_classes(path: str) -> list[str]:
    """One class name a line; surrounding blanks stripped, blank lines ignored."""
    file = Path(path)
    if not file.is_file():
        raise BadInput(f"--classes {path}: no such file")
    try:
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise BadInput(f"--classes {path}: not a UTF-8 text file (one class name a line)") from None
    classes = [line.strip() for line in text.splitlines() if line.strip()]
    if not classes:
        raise BadInput(f"--classes {path}: no class names in it (one class name a line)")
    return classes


def read_calibration(path: str) -> dict[str, Any]:
    """The owner's calibration (zoo.unify.calibration.TeacherCalibration as JSON: what
    ``fit_calibration(...).to_dict()`` gives), validated; returned as its canonical dict."""
    from zoo.unify.calibration import TeacherCalibration

    file = Path(path)
    if not file.is_file():
        raise BadInput(f"--calibration {path}: no such file")
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadInput(f"--calibration {path}: not a JSON file ({exc})") from None
    try:
        return TeacherCalibration.from_dict(data).to_dict()
    except (TypeError, ValueError) as exc:
        raise BadInput(
            f"--calibration {path}: {exc} (make it with zoo.unify.calibration.fit_calibration(logits, "
            "labels).to_dict() on your held-out images)"
        ) from None


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--tracking-uri",
        default=argparse.SUPPRESS,
        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///<cwd>/zoo.db)",
    )
    parser = _Parser(
        prog="zoo", description="The teacher zoo on the MLflow model registry.", parents=[common]
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    p = sub.add_parser("list", help="list the zoo (latest version of each model)", parents=[common])
    p.add_argument(
        "--tag", action="append", metavar="KEY=VALUE", help="only models with this tag (repeatable)"
    )
    p.add_argument("--json", action="store_true", help="JSON for scripts")

    p = sub.add_parser("show", help="show one model: spec, classes, versions", parents=[common])
    p.add_argument("name", help="model name, or a models:/NAME/VERSION or models:/NAME@ALIAS URI")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--version", type=int, help="version (default: the latest)")
    group.add_argument("--alias", help="alias, e.g. champion")
    p.add_argument("--json", action="store_true", help="JSON for scripts")

    p = sub.add_parser("register", help="register a teacher trained elsewhere", parents=[common])
    p.add_argument("--name", required=True, help="model name in the zoo")
    p.add_argument("--arch", required=True, help="architecture from the allow-list (zoo.architectures)")
    p.add_argument(
        "--arch-kwargs", default="{}", metavar="JSON", help="builder keyword arguments, a JSON object"
    )
    p.add_argument("--weights", required=True, metavar="FILE.safetensors", help="the model's state_dict")
    p.add_argument(
        "--classes", required=True, metavar="FILE.txt", help="class names, one a line, output order"
    )
    p.add_argument(
        "--input-shape", required=True, metavar="C,H,W", help="input the model expects, e.g. 1,28,28"
    )
    p.add_argument("--mean", metavar="M[,M...]", help="normalisation mean per channel (default 0.5)")
    p.add_argument("--std", metavar="S[,S...]", help="normalisation std per channel (default 0.5)")
    p.add_argument("--tag", action="append", metavar="KEY=VALUE", help="tag, e.g. source=partyA (repeatable)")
    p.add_argument(
        "--alias", action="append", default=[], help="alias to point at the new version (repeatable)"
    )
    p.add_argument("--description", default="", help="free text")
    p.add_argument(
        "--calibration",
        metavar="FILE.json",
        help="the owner's calibration of the teacher on its held-out images "
        "(zoo.unify.calibration.fit_calibration(logits, labels).to_dict()), kept in the spec's metadata",
    )
    p.add_argument("--json", action="store_true", help="print the new version as JSON")

    p = sub.add_parser("alias", help="point an alias of a model at a version", parents=[common])
    p.add_argument("name")
    p.add_argument("alias")
    p.add_argument("version", type=int)

    p = sub.add_parser("rm", help="delete a model (all versions) or one version", parents=[common])
    p.add_argument("name")
    p.add_argument("--version", type=int, help="delete only this version")
    return parser


# ---------------------------------------------------------------------------------------------- output
def table(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> str:
    """Plain aligned columns."""
    cells = [[str(c) for c in header]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells)


def _shape(record: Any) -> str:
    i = record.spec.input
    return f"{i.channels}x{i.height}x{i.width}"


def _when(ms: int | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(ms / 1000)) if ms else "-"


LIST_TAG_WIDTH = 24  # longer tag values (fingerprints, lineage) are for `zoo show` and --json


def _short_tags(tags: dict[str, str], known: set[str]) -> str:
    """The tags that fit a table cell; the long ones (a student's fingerprints, decisions) counted."""
    shown = [f"{k}={v}" for k, v in sorted(tags.items()) if k not in known and len(v) <= LIST_TAG_WIDTH]
    hidden = sum(1 for k, v in tags.items() if k not in known and len(v) > LIST_TAG_WIDTH)
    return " ".join(shown + ([f"(+{hidden} in zoo show)"] if hidden else [])) or "-"


def list_table(records: Sequence[Any]) -> str:
    header = ("NAME", "VERSION", "ARCH", "CLASSES", "INPUT", "SOURCE", "ACCURACY", "ALIASES", "TAGS")
    known = {"arch", "classes", "source", "accuracy"}
    rows = [
        (
            r.name,
            r.version,
            r.spec.arch,
            len(r.spec.classes),
            _shape(r),
            r.tags.get("source", "-"),
            r.tags.get("accuracy", "-"),
            ",".join(r.aliases) or "-",
            _short_tags(r.tags, known),
        )
        for r in records
    ]
    return table(rows, header)


def show_text(record: Any, versions: Sequence[Any]) -> str:
    spec = record.spec
    i = spec.input
    lines = [
        f"name:         {record.name}",
        f"version:      {record.version}  ({record.uri})",
        f"aliases:      {', '.join(record.aliases) or '-'}",
        f"arch:         {spec.arch}",
        f"arch kwargs:  {json.dumps(spec.arch_kwargs, sort_keys=True) if spec.arch_kwargs else '-'}",
        f"input:        {i.channels}x{i.height}x{i.width}  mean={list(i.mean)}  std={list(i.std)}",
        f"tags:         {' '.join(f'{k}={v}' for k, v in sorted(record.tags.items())) or '-'}",
        f"registered:   {_when(record.created_at)}",
        f"source:       {record.source}",
        f"run:          {record.run_id or '-'}",
    ]
    if record.description:
        lines.append(f"description:  {record.description}")
    if spec.metadata:
        lines.append(f"metadata:     {json.dumps(spec.metadata, sort_keys=True)}")
    lines.append(f"classes ({len(spec.classes)}):")
    lines += [f"  {k:>4}  {c}" for k, c in enumerate(spec.classes)]
    lines.append("versions:")
    rows = [
        (
            v.version,
            v.spec.arch,
            len(v.spec.classes),
            _shape(v),
            ",".join(v.aliases) or "-",
            _when(v.created_at),
        )
        for v in versions
    ]
    lines += [
        "  " + line
        for line in table(rows, ("VERSION", "ARCH", "CLASSES", "INPUT", "ALIASES", "REGISTERED")).splitlines()
    ]
    return "\n".join(lines)


def _print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, sort_keys=True))


# ---------------------------------------------------------------------------------------------- commands
def cmd_list(registry: Any, args: argparse.Namespace) -> None:
    records = registry.list(tags=parse_tags(args.tag))
    if args.json:
        _print_json([r.to_dict() for r in records])
    elif records:
        print(list_table(records))
    else:
        print(
            f"the zoo at {registry.tracking_uri} holds no models" + (" with these tags" if args.tag else "")
        )


def cmd_show(registry: Any, args: argparse.Namespace) -> None:
    record = registry.get(args.name, version=args.version, alias=args.alias)
    versions = registry.versions(record.name)
    if args.json:
        _print_json({**record.to_dict(), "versions": [v.version for v in versions]})
    else:
        print(show_text(record, versions))


def cmd_register(registry: Any, args: argparse.Namespace) -> None:
    from zoo.artifacts import SPEC_FILE, WEIGHTS_FILE, InputSpec, ModelSpec

    weights = Path(args.weights)
    if not weights.is_file():
        raise BadInput(f"--weights {args.weights}: no such file")
    try:
        arch_kwargs = json.loads(args.arch_kwargs)
    except json.JSONDecodeError as exc:
        raise BadInput(f"bad --arch-kwargs: not JSON ({exc.msg}); e.g. '{{\"width\": 32}}'") from None
    if not isinstance(arch_kwargs, dict):
        raise BadInput("bad --arch-kwargs: a JSON object is needed, e.g. '{\"width\": 32}'")
    channels, height, width = parse_shape(args.input_shape)
    metadata: dict[str, Any] = {"registered_with": "zoo register", "weights_file": weights.name}
    if args.calibration is not None:
        from zoo.unify.calibration import CALIBRATION_KEY

        metadata[CALIBRATION_KEY] = read_calibration(args.calibration)
    spec = ModelSpec(
        arch=args.arch,
        classes=read_classes(args.classes),
        input=InputSpec(
            channels=channels,
            height=height,
            width=width,
            mean=parse_floats(args.mean, channels, "--mean", 0.5),
            std=parse_floats(args.std, channels, "--std", 0.5),
        ),
        arch_kwargs=arch_kwargs,
        metadata=metadata,
    )
    # Validate the spec as spec.json would be read back, then let register() check the whole artifact.
    spec = ModelSpec.from_dict(json.loads(json.dumps(spec.to_dict())))
    with tempfile.TemporaryDirectory(prefix="zoo-register-") as tmp:
        directory = Path(tmp) / "model"
        directory.mkdir()
        shutil.copyfile(weights, directory / WEIGHTS_FILE)
        (directory / SPEC_FILE).write_text(json.dumps(spec.to_dict(), indent=2, sort_keys=True))
        try:
            record = registry.register(
                args.name,
                directory,
                tags=parse_tags(args.tag),
                aliases=args.alias,
                description=args.description,
            )
        except ValueError as exc:  # name the user's files, not the temporary directory
            text = str(exc).replace(f"{directory}: ", "").replace(str(directory / WEIGHTS_FILE), str(weights))
            raise BadInput(
                text.replace(str(directory / SPEC_FILE), "the spec").replace(str(directory), "the model")
            ) from None
    if args.json:
        _print_json(record.to_dict())
    else:
        spec = record.spec
        print(f"registered {record.uri}: {spec.arch}, {len(spec.classes)} classes, input {_shape(record)}")


def cmd_alias(registry: Any, args: argparse.Namespace) -> None:
    record = registry.set_alias(args.name, args.alias, args.version)
    print(f"models:/{record.name}@{args.alias} -> version {record.version}")


def cmd_rm(registry: Any, args: argparse.Namespace) -> None:
    registry.delete(args.name, version=args.version)
    print(
        f"deleted {args.name}"
        + (f" version {args.version}" if args.version is not None else " (all versions)")
    )


COMMANDS = {"list": cmd_list, "show": cmd_show, "register": cmd_register, "alias": cmd_alias, "rm": cmd_rm}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import mlflow  # noqa: F401  (after parsing: --help stays fast)

    from zoo.registry import ModelNotFound, Registry

    # MLflow logs at INFO on stderr (database creation, migrations): keep stderr for our own messages.
    # Set after `import mlflow`, which configures its logger.
    for logger in ("mlflow", "alembic"):
        logging.getLogger(logger).setLevel(logging.WARNING)

    try:
        registry = Registry(getattr(args, "tracking_uri", None))
        COMMANDS[args.command](registry, args)
    except KeyboardInterrupt:
        print("zoo: interrupted", file=sys.stderr)
        return 130
    except (BadInput, ModelNotFound, ValueError, FileNotFoundError) as exc:
        # ValueError covers ArtifactError: every refusal of a bad spec, weights file or name.
        print(f"zoo: error: {_one_line(exc)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except Exception as exc:  # MLflow store unreachable, disk full, ...: a message, never a traceback
        print(f"zoo: error: {type(exc).__name__}: {_one_line(exc)}", file=sys.stderr)
        return EXIT_FAILURE
    return 0


def _one_line(exc: BaseException) -> str:
    text = str(exc.args[0]) if isinstance(exc, LookupError) and exc.args else str(exc)
    return " ".join(text.split()) or type(exc).__name__


if __name__ == "__main__":
    sys.exit(main())
