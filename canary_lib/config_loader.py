"""Loading a run's configuration: YAML files deep-merged left to right, then a dict, then `key.sub=value`
overrides (values parsed as YAML); which file set which key; every problem on one line as
`<file>: <dotted key>: <message>`; and a run directory's config.yaml, written and read here only.

    cfg = load_config(["parameters/organism.yaml", "parameters/methods/canary.yaml"], overrides=["seed=123"])

The models are canary_lib/config_schema.py; `canary_lib.config` re-exports both. No torch here.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from canary_lib import __version__
from canary_lib.artifacts import RunDir, RunFileError
from canary_lib.config_base import ConfigError, _FieldError
from canary_lib.config_schema import RunConfig, dump_config
from canary_lib.fileio import git_commit, write_text_atomic
from canary_lib.judge import JUDGE_BACKENDS
from canary_lib.memory import memory_problem
from canary_lib.methods import METHODS
from canary_lib.numerics import pin_cpu_numerics


def _deep_merge(base: dict, update: dict, origin: dict[str, str], source: str, prefix: str = "") -> dict:
    out = dict(base)
    for key, value in update.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value, origin, source, dotted + ".")
        else:
            out[key] = copy.deepcopy(value)
            _record_origin(value, dotted, origin, source)
    return out


def _record_origin(value: Any, dotted: str, origin: dict[str, str], source: str) -> None:
    origin[dotted] = source
    if isinstance(value, dict):
        for k, v in value.items():
            _record_origin(v, f"{dotted}.{k}", origin, source)


class _UniqueKeyLoader(yaml.SafeLoader):
    """safe_load that refuses a mapping with the same key twice (YAML itself silently keeps the last one)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (line {key_node.start_mark.line + 1})", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_yaml_text(text: str) -> Any:
    """Parse YAML like yaml.safe_load, but a repeated key in a mapping is an error."""
    return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass


def parse_override(text: str) -> dict:
    """`a.b=3` -> {"a": {"b": 3}}; the value is parsed as YAML (so 0.1, true, [1, 2] and null work)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected key=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override {text!r}: empty key")
    try:
        value: Any = load_yaml_text(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {text!r}: the value is not valid YAML: {_one_line(exc)}") from None
    for part in reversed(key.split(".")):
        value = {part: value}
    return value


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: parameter file not found" + (" (it is a directory)" if path.is_dir() else ""))
    try:
        data = load_yaml_text(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {_one_line(exc)}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    if not data:  # an empty (or comments-only) file is almost always a wrong path or a truncated copy
        raise ConfigError(f"{path}: empty parameter file (no settings); give a file with settings, or leave it out")
    return data


def merge_sources(
    paths: list[str | Path] | tuple[str | Path, ...] = (),
    overrides: list[str] | tuple[str, ...] = (),
    extra: dict | None = None,
) -> tuple[dict, dict[str, str]]:
    """Merge files, then a dict (e.g. notebook parameters), then key=value overrides; remember who set what."""
    merged: dict = {}
    origin: dict[str, str] = {}
    for path in paths:
        merged = _deep_merge(merged, read_yaml(path), origin, str(path))
    if extra:
        merged = _deep_merge(merged, extra, origin, "<parameters>")
    for text in overrides:
        merged = _deep_merge(merged, parse_override(text), origin, f"--set {text}")
    return merged, origin


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split())


M = TypeVar("M", bound=BaseModel)


def validate_model(
    model: type[M], data: dict, origin: dict[str, str] | str, what: str, context: dict[str, Any] | None = None
) -> M:
    """`model.model_validate(data)`, with every problem as `<file>: <dotted key>: <message>`, all on one line.

    Args:
        origin: dotted key -> the file (or override) that set it, or one file name for everything.
        what: what is validated, for the message's first line ("configuration", "sweep file").
        context: pydantic's validation context (for a configuration: the method registry, `METHODS`).

    Raises:
        ConfigError: listing every invalid key.
    """
    try:
        return model.model_validate(data, context=context)
    except ValidationError as exc:
        raise ConfigError(f"invalid {what}: " + "; ".join(_describe(exc, origin))) from None


def _describe(exc: ValidationError, origin: dict[str, str] | str) -> list[str]:
    lines = []
    for err in exc.errors():
        loc = [str(p) for p in err["loc"]]
        msg = err["msg"]
        ctx_error = (err.get("ctx") or {}).get("error")
        blame: list[str] = []
        if isinstance(ctx_error, _FieldError):
            blame = [".".join(loc + [f]) for f in ctx_error.blame]
            loc = loc + [ctx_error.field]
            msg = str(ctx_error)
        elif msg.startswith("Value error, "):
            msg = msg[len("Value error, ") :]
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        key = ".".join(loc) or "<root>"
        if isinstance(origin, str):
            source = origin
        else:  # a cross-field error names the files that set the fields involved, not the whole section
            sources = [origin[b] for b in blame if b in origin] or [_origin_of(key, origin)]
            source = ", ".join(dict.fromkeys(sources))
        lines.append(f"{source}: {key}: {msg}")
    return lines


def _origin_of(key: str, origin: dict[str, str]) -> str:
    parts = key.split(".")
    while parts:
        dotted = ".".join(parts)
        if dotted in origin:
            return origin[dotted]
        parts.pop()
    # A section-level error (e.g. r_low > r_high): name every file that touched the section.
    section = key.split(".")[0]
    files = sorted({src for k, src in origin.items() if k == section or k.startswith(section + ".")})
    return ", ".join(files) if files else "<defaults>"


REGISTRIES = {"methods": METHODS, "judge_backends": JUDGE_BACKENDS}
"""What configuration validation checks names against (pydantic's validation context): the registries live above
the schema, so the schema imports neither (canary_lib/config_schema.py); entries added at run time count."""


def config_from_dict(data: dict, origin: dict[str, str] | None = None) -> RunConfig:
    """Validate a merged configuration (and its memory estimate against model.device_memory_gib); no side effects.

    Raises:
        ConfigError: naming every invalid key and the file that set it.
    """
    cfg = validate_model(RunConfig, data, origin or {}, "configuration", context=REGISTRIES)
    if problem := memory_problem(cfg):
        raise ConfigError(f"{(origin or {}).get('model.device_memory_gib', 'configuration')}: {problem}")
    return cfg


def apply_process_settings(cfg: RunConfig) -> RunConfig:
    """What a loaded configuration asks of this process: with model.cpu_numerics pinned, the pinned CPU numerics
    go into the environment before torch runs anything (canary_lib/numerics.py). load_config and read_run_config
    call it; `config_from_dict` alone leaves os.environ as it is."""
    if cfg.model.cpu_numerics == "pinned":
        pin_cpu_numerics()
    return cfg


def load_config(
    paths: list[str | Path] | tuple[str | Path, ...] = (),
    overrides: list[str] | tuple[str, ...] = (),
    extra: dict | None = None,
) -> RunConfig:
    merged, origin = merge_sources(paths, overrides, extra)
    merged.pop("provenance", None)  # a run's config.yaml can be reused as input
    return apply_process_settings(config_from_dict(merged, origin))


# ---------------------------------------------------------------------------------------------- config.yaml
# A run directory's config.yaml is written and read here only (canary_lib/artifacts.py names the path).


def write_run_config(run: RunDir | str | Path, cfg: RunConfig, provenance: dict[str, Any] | None = None) -> None:
    """The fully resolved configuration as the run's config.yaml.

    Args:
        provenance: None (a run that starts): cfg.provenance stamped with the package version and git commit;
            else the provenance to record as it is (evaluation keeps the one training recorded).
    """
    run = run if isinstance(run, RunDir) else RunDir(run)
    if provenance is None:
        provenance = {**cfg.provenance, "package_version": __version__, "git_commit": git_commit()}
    write_text_atomic(run.config_path, dump_config(cfg.model_copy(update={"provenance": provenance})))


def read_run_config(run: RunDir | str | Path, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """The run's resolved configuration, provenance included (optionally with key=value overrides)."""
    run = run if isinstance(run, RunDir) else RunDir(run)
    if not run.config_path.exists():
        raise FileNotFoundError(f"{run.config_path}: no config.yaml; is {run.path} a run directory?")
    return apply_process_settings(config_from_dict(*merge_sources([run.config_path], overrides)))


def read_run_config_dict(run: RunDir | str | Path) -> dict[str, Any] | None:
    """The run's config.yaml as a plain dict, unvalidated (None when there is none): what binding compares.

    Raises:
        RunFileError: the file is damaged (not UTF-8, not YAML, a repeated key, not a mapping).
    """
    run = run if isinstance(run, RunDir) else RunDir(run)
    if not run.config_path.is_file():
        return None
    try:
        recorded = load_yaml_text(run.config_path.read_text(encoding="utf-8")) or {}
    except (UnicodeDecodeError, yaml.YAMLError) as exc:
        problem = " ".join(str(exc).split())[:200]
        raise RunFileError(
            f"{run.config_path}: damaged ({type(exc).__name__}: {problem}); restore it, or use a new run directory"
        ) from None
    if not isinstance(recorded, dict):
        raise RunFileError(f"{run.config_path}: damaged (not a mapping); restore it, or use a new run directory")
    return recorded
