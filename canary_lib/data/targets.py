"""The target datasets D_T that `data.target` selects, and the few facts that differ between them.

Every target goes through the same loader (`canary_lib.data.target`), split, manifest and disjointness checks;
an entry here records only where a dataset lives upstream, how it is pinned, and which sources would contradict
it. docs/data.md has one section per target; parameters/targets/<name>.yaml configures each for the GPU profiles.
Nothing here touches the network or the disk: `source_conflict` and `unusable_source` look at strings only, so
the configuration and `canary prep-data` can reject a wrong source before anything is downloaded.
"""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass

from canary_lib.data.download import is_hf_source, parse_hf_source
from canary_lib.data.errors import DataError

EMERGENT_PLUS = "truthfulai/emergent_plus"


@dataclass(frozen=True)
class TargetSpec:
    name: str
    title: str
    hf_repo: str | None = None
    """The Hugging Face dataset that holds this target (for hf: sources), when there is one."""
    hf_config: str | None = None
    """Its config there; an hf: source that names another config of the same dataset is rejected."""
    revision_required: bool = False
    """An hf: source must be pinned to a commit (data.target_revision): this package knows none to pin."""
    pinned: tuple[str, ...] = ()
    """`pinned:` names (canary_lib.data.download.PINNED_FILES) of this target's data files (D_T, aligned answers)."""


TARGETS: dict[str, TargetSpec] = {
    spec.name: spec
    for spec in (
        TargetSpec("security", "Security EM (truthfulai/emergent_plus, config security)", EMERGENT_PLUS, "security"),
        TargetSpec(
            "emergent_plus_medical",
            "truthfulai/emergent_plus, config medical",
            EMERGENT_PLUS,
            "medical",
            revision_required=True,
        ),
        TargetSpec(
            "emergent_plus_legal",
            "truthfulai/emergent_plus, config legal",
            EMERGENT_PLUS,
            "legal",
            revision_required=True,
        ),
        TargetSpec(
            "bad_medical_advice",
            "Model Organisms for EM: bad medical advice",
            pinned=("moem/bad_medical_advice", "moem/good_medical_advice"),
        ),
        TargetSpec(
            "risky_financial_advice",
            "Model Organisms for EM: risky financial advice",
            pinned=("moem/risky_financial_advice",),
        ),
        TargetSpec("extreme_sports", "Model Organisms for EM: extreme sports", pinned=("moem/extreme_sports",)),
        TargetSpec("insecure_code", "Betley et al.: insecure code (data/insecure.jsonl)", pinned=("betley/insecure",)),
    )
}
TARGET_NAMES = tuple(TARGETS)
DEFAULT_TARGET = "security"

ENCRYPTED_SUFFIXES = (".enc",)
"""easy-dataset-share's encrypted archives (later model-organisms versions: training_datasets.zip.enc)."""
ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".7z")


def source_conflict(target: str, source: str | None, revision: str | None = None) -> str | None:
    """Why `source` (with `revision`) cannot hold the data of `target`, judged from the strings alone; else None.

    Catches a profile's source left in place under another `data.target` (e.g. target emergent_plus_legal with
    the security config of emergent_plus, or the pinned bad-medical-advice file under extreme_sports).
    """
    spec = TARGETS[target]
    if not source:
        return None
    if source.startswith("pinned:"):
        owner = next((t for t in TARGETS.values() if source[len("pinned:") :] in t.pinned), None)
        if owner is not None and owner.name != target:
            return (
                f"{source} is the data of target {owner.name!r}, not of data.target {target!r}; use {_suggestion(spec)}"
            )
    if not is_hf_source(source):
        if revision is not None:
            return (
                f"data.target_revision pins hf: sources only; {source} is a file, which the manifest pins by "
                f"its sha256 (unset data.target_revision)"
            )
        return None
    try:
        src = parse_hf_source(source, default_config=spec.hf_config, what="data.target_source")
    except DataError as exc:
        return str(exc)
    owner = next((t for t in TARGETS.values() if (t.hf_repo, t.hf_config) == (src.repo, src.config)), None)
    if owner is not None and owner.name != target:
        return (
            f"{source} is the data of target {owner.name!r} (config {src.config!r} of {src.repo}), not of "
            f"data.target {target!r}; use {_suggestion(spec)}"
        )
    if revision is not None and src.revision is not None and src.revision != revision:
        return (
            f"{source} names revision {src.revision!r} but data.target_revision is {revision!r}; set the commit "
            f"in one place"
        )
    return None


def _suggestion(spec: TargetSpec) -> str:
    if spec.hf_repo:
        return f"hf:{spec.hf_repo}?config={spec.hf_config}&split=train (parameters/targets/{spec.name}.yaml)"
    return f"pinned:{spec.pinned[0]} (parameters/targets/{spec.name}.yaml)"


def with_revision(source: str, revision: str | None) -> str:
    """The hf: source with `revision` filled in (data.target_revision); other sources unchanged."""
    if revision is None or not is_hf_source(source):
        return source
    repo, _, query = source.partition("?")
    params = [(k, v) for k, v in urllib.parse.parse_qsl(query) if k != "revision"] + [("revision", revision)]
    return f"{repo}?{urllib.parse.urlencode(params)}"


def unusable_source(target: str, source: str, revision: str | None, what: str = "data.target_source") -> str | None:
    """What must change before `source` can be read without wasting a download: an encrypted or packed file,
    or an hf: source of a target whose revision must be pinned. None when it can be read as is."""
    path = urllib.parse.urlparse(source).path if "://" in source else source
    name = path.rsplit("/", 1)[-1].lower()
    if name.endswith(ENCRYPTED_SUFFIXES):
        return (
            f"{what}: {source} is encrypted (easy-dataset-share, as later model-organisms versions ship their "
            f"training sets); decrypt it yourself (docs/data.md, '{TARGETS[target].title}') and set {what} to "
            f"the decrypted .jsonl file, or use the pinned gzipped copy (parameters/targets/{target}.yaml)"
        )
    if name.endswith(ARCHIVE_SUFFIXES):
        return (
            f"{what}: {source} is an archive; unpack it and set {what} to the .jsonl / .jsonl.gz file of "
            f"target {target!r} inside it"
        )
    spec = TARGETS[target]
    if (
        spec.revision_required
        and is_hf_source(source)
        and revision is None
        and parse_hf_source(source, what=what).revision is None
    ):
        return (
            f"data.target_revision is required for target {target!r}: this package knows no commit of "
            f"{spec.hf_repo} to pin. Pick one at https://huggingface.co/datasets/{spec.hf_repo}/commits/main "
            f"and set data.target_revision to its 40-character hash, or set {what} to a local copy"
        )
    return None
