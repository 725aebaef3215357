"""Data preparation (notebook 00 / `canary prep-data`): sources -> the prepared-data directory + manifest.

    path = prepare_data(cfg)          # writes cfg.data.dir
    manifest = verify_prepared(cfg)   # later steps: raises DataError if a file or a source changed

Layout (file names from cfg.data): target_train.jsonl, target_heldout.jsonl (+ target_heldout_aligned.jsonl when
the aligned answers are known), safe.jsonl, general_eval.yaml, in_domain_eval.yaml, canaries.yaml, manifest.json.
Every bad input fails here, with a message saying how to fix it, before any model is loaded.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from canary_lib.config_schema import LEGACY_DATA_KEYS, RunConfig
from canary_lib.data._io import write_jsonl
from canary_lib.data.canaries import SELECTION_RULE, select_canaries
from canary_lib.data.disjoint import check_disjoint, normalize_text
from canary_lib.data.download import is_hf_source, parse_hf_source, resolve_file
from canary_lib.data.errors import DataError
from canary_lib.data.questions import load_question_set, write_question_set
from canary_lib.data.target import in_domain_questions, load_target, split_target
from canary_lib.data.targets import TARGETS, unusable_source, with_revision
from canary_lib.data.wildguard import HF_REPO as WILDGUARD_REPO
from canary_lib.data.wildguard import load_safe
from canary_lib.fileio import sha256_file, write_text_atomic
from canary_lib.types import Question

MANIFEST = "manifest.json"
HELDOUT_ALIGNED_FILE = "target_heldout_aligned.jsonl"
SCORED_METRICS = ("aligned", "coherent")
FORMAT_VERSION = 1
_REQUIRED_SOURCES = ("target_source", "safe_source", "general_eval_source", "canary_source")
_SETTINGS_KEYS = (
    "split_seed",
    "n_train",
    "n_heldout",
    "n_in_domain_eval",
    "safe_max_examples",
    "drop_refusals",
    "target",
    "target_source",
    "target_aligned_source",
    "target_revision",
    "safe_source",
    "general_eval_source",
    "in_domain_eval_source",
    "canary_source",
)
_LEGACY_SETTINGS = {"target": "security", "target_revision": None}
"""What manifests written before data.target existed were prepared with (their sources used the legacy names)."""


def prepare_data(cfg: RunConfig) -> Path:
    """Write the prepared data of `cfg.data.kind` into `cfg.data.dir` and return that directory.

    organism: delegates to `canary_lib.organism.prepare_organism_data`. paper: loads the sources named in
    cfg.data (the target dataset of cfg.data.target, WildGuardMix benign subset, question sets, canary pool),
    splits, selects and checks them, writes the files and a manifest (sources, revisions, counts, sha256 of every
    file, split seed).

    Raises:
        DataError: a missing/unset source, an encrypted or packed source, an unpinned hf: source of a target that
            needs a revision, bad columns or items, an empty dataset, a gated dataset without a token, a checksum
            mismatch, or canaries overlapping evaluation prompts.
    """
    if cfg.data.kind == "organism":
        from canary_lib.organism import prepare_organism_data  # lazy: the organism imports torch

        return Path(prepare_organism_data(cfg))
    return prepare_paper_data(cfg)


def _preflight(cfg: RunConfig) -> None:
    """Cheap checks first, so a 10-minute download does not end in a configuration error."""
    d = cfg.data
    unset = [f"data.{name}" for name in _REQUIRED_SOURCES if not getattr(d, name)]
    if unset:
        raise DataError(
            f"data.kind is 'paper' but {', '.join(unset)} {'is' if len(unset) == 1 else 'are'} not set; "
            f"start from parameters/paper.yaml (+ parameters/targets/<name>.yaml), which name every "
            f"source (docs/data.md)"
        )
    for name, revision in (("target_source", d.target_revision), ("target_aligned_source", None)):
        problem = getattr(d, name) and unusable_source(d.target, getattr(d, name), revision, f"data.{name}")
        if problem:
            raise DataError(problem)
    if d.safe_source and is_hf_source(d.safe_source):
        src = parse_hf_source(d.safe_source, what="data.safe_source")
        if src.repo == WILDGUARD_REPO and not os.environ.get(d.hf_token_env):
            raise DataError(
                f"data.safe_source: {WILDGUARD_REPO} is a gated dataset and ${d.hf_token_env} is not set. "
                f"Accept its terms at https://huggingface.co/datasets/{WILDGUARD_REPO}, create a read "
                f"token and `export {d.hf_token_env}=hf_...` (data.hf_token_env names the variable); or "
                f"set data.safe_source to a local parquet/JSONL copy of train/wildguard_train.parquet."
            )
    for name in ("target_source", "target_aligned_source", "safe_source"):
        value = getattr(d, name)
        if (
            value
            and not is_hf_source(value)
            and "://" not in value
            and not value.startswith("pinned:")
            and not Path(value).expanduser().is_file()
        ):
            raise DataError(
                f"data.{name}: local file {value} not found; fix the path or use an hf:<owner>/<name> source"
            )
    if d.n_in_domain_eval > d.n_heldout and not d.in_domain_eval_source:
        raise DataError(f"data.n_in_domain_eval ({d.n_in_domain_eval}) exceeds data.n_heldout ({d.n_heldout})")


def _questions(source: str, what: str, info: dict[str, Any]) -> list[Question]:
    resolved = resolve_file(source, what=what)
    info[what.removeprefix("data.").removesuffix("_source")] = {
        "source": source,
        "url": resolved.url,
        "revision": resolved.revision,
        "sha256": resolved.sha256,
        "path": str(resolved.path),
    }
    return load_question_set(resolved.path, required_metrics=SCORED_METRICS)


def prepare_paper_data(cfg: RunConfig) -> Path:
    """The paper profile's preparation (see `prepare_data`)."""
    _preflight(cfg)
    d = cfg.data
    sources: dict[str, Any] = {}
    general = _questions(d.general_eval_source, "data.general_eval_source", sources)
    in_domain_given = (
        _questions(d.in_domain_eval_source, "data.in_domain_eval_source", sources) if d.in_domain_eval_source else None
    )
    pool = _questions(d.canary_source, "data.canary_source", sources)
    m = cfg.canary.n_prompts
    # Canaries against the eval sets known so far: fails before any dataset download.
    eval_sets = {"general": general, **({"in_domain": in_domain_given} if in_domain_given else {})}
    canaries = select_canaries(pool, m, eval_sets)

    spec = TARGETS[d.target]
    target = load_target(
        with_revision(d.target_source, d.target_revision), d.target_aligned_source, d.hf_token_env, spec.hf_config
    )
    forced = [p for q in in_domain_given or [] for p in q.paraphrases]
    split = split_target(target.examples, d.n_train, d.n_heldout, d.split_seed, heldout_prompts=forced)
    if in_domain_given is None:
        in_domain = in_domain_questions(
            split.heldout, d.n_in_domain_eval, general[0].judge_prompts, cfg.eval.samples_per_prompt
        )
        sources["in_domain_eval"] = {"source": f"first {d.n_in_domain_eval} held-out prompts of data.target_source"}
    else:
        in_domain = in_domain_given
    _check_not_trained_on(in_domain, [ex.prompt for ex in split.train])
    eval_sets = {"general": general, "in_domain": in_domain}
    check_disjoint(canaries, eval_sets)

    safe = load_safe(d.safe_source, d.drop_refusals, d.safe_max_examples, d.split_seed, d.hf_token_env)
    sources.update(target=target.info, safe=safe.info)

    out = Path(d.dir)
    files = {
        d.target_file: write_jsonl(out / d.target_file, ({"messages": ex.messages()} for ex in split.train)),
        d.target_heldout_file: write_jsonl(
            out / d.target_heldout_file, ({"messages": ex.messages()} for ex in split.heldout)
        ),
        d.safe_file: write_jsonl(out / d.safe_file, ({"messages": chat} for chat in safe.examples)),
        d.general_eval_file: write_question_set(out / d.general_eval_file, general),
        d.in_domain_eval_file: write_question_set(out / d.in_domain_eval_file, in_domain),
        d.canary_file: write_question_set(out / d.canary_file, canaries),
    }
    if target.info.get("has_aligned"):
        files[HELDOUT_ALIGNED_FILE] = write_jsonl(
            out / HELDOUT_ALIGNED_FILE, ({"messages": ex.messages("aligned")} for ex in split.heldout)
        )
    counts = {
        "target_train": len(split.train),
        "target_heldout": len(split.heldout),
        "safe": len(safe.examples),
        "general_eval": len(general),
        "in_domain_eval": len(in_domain),
        "canaries": len(canaries),
        "canary_pool": len(pool),
    }
    manifest = {
        "format_version": FORMAT_VERSION,
        "kind": "paper",
        "target": {"name": spec.name, "title": spec.title},
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "package_version": _package_version(),
        "split_seed": d.split_seed,
        "settings": {key: getattr(d, key) for key in _SETTINGS_KEYS} | {"canary_n_prompts": m},
        "canary_rule": SELECTION_RULE,
        "canary_ids": [q.id for q in canaries],
        "split": split.info,
        "sources": sources,
        "counts": counts,
        "files": manifest_files(out, list(files)),
    }
    write_text_atomic(out / MANIFEST, json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")  # written last
    return out


def manifest_files(data_dir: str | Path, names: Sequence[str]) -> dict[str, dict[str, Any]]:
    """The manifest's "files" entry: name -> {"sha256", "bytes"}; `verify_prepared` checks these hashes.

    The organism's preparation can write `{"kind": "organism", "files": manifest_files(dir, names), ...}` to get
    the same change detection.
    """
    entries = {}
    for name in names:
        path = Path(data_dir) / name
        entries[name] = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
    return entries


def _check_not_trained_on(in_domain: Sequence[Question], train_prompts: Sequence[str]) -> None:
    trained = {normalize_text(p) for p in train_prompts}
    leaked = [q.id for q in in_domain for p in q.paraphrases if normalize_text(p) in trained]
    if leaked:
        raise DataError(
            f"in-domain evaluation question(s) {leaked[:10]} are training prompts of the target split; "
            f"they must be held out (check data.in_domain_eval_source and data.n_heldout)"
        )


def _package_version() -> str:
    from canary_lib import __version__

    return __version__


def read_manifest(data_dir: str | Path) -> dict[str, Any]:
    path = Path(data_dir) / MANIFEST
    if not path.is_file():
        raise DataError(
            f"{path} not found: the data are not prepared. Run `canary prep-data <params>` (or notebook "
            f"00_data_prep) first."
        )
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON ({exc.msg}); rerun `canary prep-data <params>`") from None


def verify_prepared(cfg: RunConfig, check_sources: bool = True) -> dict[str, Any]:
    """Check that cfg.data.dir holds the data this configuration would prepare, unchanged.

    Checks: the manifest exists; every file it lists exists with the recorded sha256; the files cfg.data names
    are among them; for the organism, the world, target domain and sizes match cfg; for the paper kind, the
    split/selection settings and source names match cfg, and (when
    `check_sources`) local source files still have the recorded sha256.

    Returns:
        The manifest.

    Raises:
        DataError: saying what differs and to rerun `canary prep-data`.
    """
    d = cfg.data
    manifest = read_manifest(d.dir)
    fix = "rerun `canary prep-data <params>` to prepare the data again"
    files = manifest.get("files") or {}
    for name, entry in files.items():
        path = d.path(name)
        expected = entry["sha256"] if isinstance(entry, dict) else entry
        if not path.is_file():
            raise DataError(f"prepared file {path} is missing; {fix}")
        if sha256_file(path) != expected:
            raise DataError(f"prepared file {path} changed since preparation (sha256 differs from {MANIFEST}); {fix}")
    needed = [d.target_file, d.safe_file, d.general_eval_file, d.in_domain_eval_file, d.canary_file]
    absent = [n for n in needed if not d.path(n).is_file()]
    if absent:
        raise DataError(f"{d.dir} lacks {absent} (file names in cfg.data differ?); {fix}")
    unlisted = [n for n in needed if files and n not in files]
    if unlisted:
        raise DataError(f"{Path(d.dir) / MANIFEST} lists no {unlisted} (file names in cfg.data differ?); {fix}")
    if manifest.get("kind", d.kind) != d.kind:
        raise DataError(
            f"{d.dir} holds data of kind {manifest.get('kind')!r} but data.kind is {d.kind!r}; "
            f"point data.dir elsewhere or {fix}"
        )
    if d.kind == "organism":
        from canary_lib.organism.prepare import recorded_differences  # pure Python, no torch

        diffs = recorded_differences(cfg, manifest)
        if diffs:
            raise DataError(
                f"the data in {d.dir} were prepared for another world ({'; '.join(diffs)}); "
                f"point data.dir elsewhere or {fix}"
            )
    if d.kind == "paper":
        recorded = _recorded_settings(manifest)
        current = {key: getattr(d, key) for key in _SETTINGS_KEYS} | {"canary_n_prompts": cfg.canary.n_prompts}
        diffs = [f"{k}: prepared {recorded.get(k)!r}, now {v!r}" for k, v in current.items() if recorded.get(k) != v]
        if diffs:
            raise DataError(f"the data in {d.dir} were prepared with other settings ({'; '.join(diffs)}); {fix}")
        if check_sources:
            _check_local_sources(manifest.get("sources", {}), fix)
    return manifest


def _recorded_settings(manifest: dict[str, Any]) -> dict[str, Any]:
    """The manifest's settings under today's key names (manifests from before data.target used legacy names)."""
    recorded = dict(manifest.get("settings", {}))
    if any(old in recorded for old in LEGACY_DATA_KEYS):
        for old, new in LEGACY_DATA_KEYS.items():
            recorded[new] = recorded.pop(old, None)
        recorded = _LEGACY_SETTINGS | recorded
    return recorded


def _check_local_sources(sources: dict[str, Any], fix: str) -> None:
    """A local source file edited after preparation is noticed through its recorded sha256."""
    for name, info in sources.items():
        for entry in (info, info.get("aligned_source") if isinstance(info, dict) else None):
            if not isinstance(entry, dict) or not entry.get("sha256") or not entry.get("path"):
                continue
            path = Path(entry["path"])
            if path.is_file() and sha256_file(path) != entry["sha256"]:
                raise DataError(f"source {name} ({path}) changed since the data were prepared; {fix}")


def load_prepared_questions(cfg: RunConfig) -> dict[str, list[Question]]:
    """The prepared question sets: {"general", "in_domain", "canaries"} (checked against the manifest first)."""
    verify_prepared(cfg, check_sources=False)
    d = cfg.data
    return {
        name: load_question_set(d.path(file), required_metrics=SCORED_METRICS)
        for name, file in (
            ("general", d.general_eval_file),
            ("in_domain", d.in_domain_eval_file),
            ("canaries", d.canary_file),
        )
    }
