"""The schema of a run's configuration: `RunConfig` and its sections (pydantic models), with their checks.

Loading (YAML files merged left to right, key=value overrides, which file set which key, one-line errors) is
canary_lib/config_loader.py; `canary_lib.config` re-exports both, so `from canary_lib.config import RunConfig,
load_config` is the way in. The schema imports neither the method registry nor the organism's world: `method.name`
is checked against the registry the loader hands in (pydantic's validation context), the organism's topic and
domain names against canary_lib/names.py (canary_lib/config_organism.py). No torch here.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationInfo, field_validator, model_validator

from canary_lib.config_base import NonNegativeSeed, Strict, TorchSeed, _FieldError
from canary_lib.config_organism import OrganismSettings
from canary_lib.data.targets import DEFAULT_TARGET, TARGET_NAMES, source_conflict

QWEN2_PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class ModelConfig(Strict):
    name_or_path: str = "organism"
    """Hugging Face id, local model directory, or "organism" (the CPU model organism, built and cached)."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """auto: bfloat16 on a GPU that supports it, float32 on CPU."""
    device: str = "auto"
    """auto: cuda if available, else cpu; or cpu, cuda, cuda:N, mps."""
    max_length: int = Field(2048, ge=8)
    """Training examples are truncated to this many tokens."""
    revision: str | None = None
    trust_remote_code: bool = False
    device_memory_gib: float | None = Field(None, gt=0)
    """The GPU the profile is written for, in GiB (80 for an H100 80GB): a configuration whose estimated peak
    (canary_lib.memory) does not fit is refused at load. None: checked only at training start, on the GPU found."""
    cpu_numerics: Literal["native", "pinned"] = "native"
    """pinned: the same bits on any x86-64 CPU with AVX2 (fixed kernels and one torch thread; canary_lib/numerics.py;
    parameters/sweeps/organism_pinned.yaml); native: whatever the CPU does fastest (the organism's default since
    2026-12-03: the same bits on the same machine, 1.8x faster; docs/lean_path.md, "Native numerics and warm
    kernels")."""

    @field_validator("device")
    @classmethod
    def _device_name(cls, v: str) -> str:
        if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", v):
            raise ValueError(f"must be auto, cpu, mps, cuda or cuda:N, got {v!r}")
        return v


class LoraSettings(Strict):
    r: int = Field(32, ge=1)
    alpha: float = Field(64, gt=0)
    use_rslora: bool = True
    """rs-LoRA scales updates by alpha/sqrt(r) instead of alpha/r."""
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: list[str] = Field(default_factory=lambda: list(QWEN2_PROJECTIONS), min_length=1)
    """At least one module: with none, nothing would be trained."""


class TrainSettings(Strict):
    lr: float = Field(1e-4, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    warmup_steps: int = Field(5, ge=0)
    batch_size: int = Field(16, ge=1)
    """Examples per optimizer step; one step of Algorithm 1 is one optimizer step on one source."""
    micro_batch_size: int = Field(4, ge=1)
    """Examples per forward pass; batch_size must be a multiple of it (gradient accumulation)."""
    max_grad_norm: float | None = Field(1.0, gt=0)
    """Gradient-norm clip (None: no clipping); must be > 0 (a negative value would flip the update)."""
    epochs: float = Field(1.0, gt=0)
    """Passes over D_T (T_0 = ceil(epochs x batches per pass) target steps; the paper: 1). Each pass has its own
    seeded order; the learning rate decays over the whole run."""
    checkpoint_every: int = Field(100, ge=1)
    """Save a resumable checkpoint every this many steps (and at the end)."""
    keep_checkpoint: bool = False
    """Keep checkpoint/ after the run completes (it is removed by default: the adapter is the result)."""
    snapshot_every: int | None = Field(None, ge=1)
    """Keep the adapter at every n-th canary evaluation step (steps 0, nK, 2nK, ...) in snapshots/step<t>/, for
    `canary eval RUN --step t` and the adapter-norm plot; None: none kept (canary_lib/snapshots.py)."""
    max_target_examples: int | None = Field(None, ge=1)
    """Use only the first N examples of D_T (after the seeded shuffle): for tiny runs and tests."""
    gradient_checkpointing: bool = False
    autocast: bool = True
    """Forward and backward under bf16 autocast when the base weights are bf16 (LoRA master weights stay float32,
    as with Trainer's bf16=True); no effect on float32 or float16 models. False: LoRA in float32 (slower)."""
    step: Literal["standard", "lean"] = "standard"
    """lean: each example encoded once, logits only at supervised positions, each LoRA projection as one product
    (canary_lib.lean; float32, lora.dropout 0). Same results up to float rounding, so a run of its own."""

    @model_validator(mode="after")
    def _accumulation_divides(self) -> TrainSettings:
        if self.batch_size % self.micro_batch_size:
            raise _FieldError(
                "batch_size",
                f"train.batch_size ({self.batch_size}) must be a multiple of train.micro_batch_size "
                f"({self.micro_batch_size})",
                blame=("batch_size", "micro_batch_size"),
            )
        return self


class ControllerSettings(Strict):
    """Eq. 2 and Eq. 3 of the paper. Defaults are the paper's (Section 4.1); p_init is this package's choice."""

    alpha: float = Field(0.5, gt=0, le=1)
    r_high: float = Field(0.08, ge=0, le=1)
    r_low: float = Field(0.02, ge=0, le=1)
    delta_up: float = Field(0.04, ge=0)
    delta_down: float = Field(0.005, ge=0)
    p_min: float = 0.0
    p_max: float = 0.20
    p_init: float = 0.0
    """Not given by the paper; we start at p_min (no defense until canaries say otherwise): docs/decisions.md."""
    K: int = Field(30, ge=1)
    """Canary evaluation after step t whenever t mod K == 0 (t = 0 included)."""
    kp: float | None = Field(None, ge=0)
    """P/PI methods (canary_p, canary_pi) only: proportional gain; None: (p_max - p_min) / (r_high - r_low)."""
    ki: float | None = Field(None, ge=0)
    """canary_pi only: integral gain per evaluation; None: delta_down / r_low (docs/decisions.md)."""

    @field_validator("p_min", "p_max", "p_init")
    @classmethod
    def _probability_below_one(cls, v: float) -> float:
        if not 0 <= v < 1:
            raise ValueError(f"must be in [0, 1), got {v}: with p = 1 no target step is ever drawn")
        return v

    @model_validator(mode="after")
    def _ordering(self) -> ControllerSettings:
        if self.r_low > self.r_high:
            raise _FieldError(
                "r_low", f"r_low ({self.r_low}) must be <= r_high ({self.r_high})", blame=("r_low", "r_high")
            )
        if self.p_min > self.p_max:
            raise _FieldError(
                "p_min", f"p_min ({self.p_min}) must be <= p_max ({self.p_max})", blame=("p_min", "p_max")
            )
        if not self.p_min <= self.p_init <= self.p_max:
            raise _FieldError(
                "p_init",
                f"p_init ({self.p_init}) must lie in [p_min, p_max] = [{self.p_min}, {self.p_max}]",
                blame=("p_init", "p_min", "p_max"),
            )
        return self


class MethodSettings(Strict):
    """Which schedule drives p_t: a method of canary_lib.methods.METHODS (Tables 1 and 2; docs/decisions.md)."""

    name: str = "canary"
    """The registry name, which is also the name of the method's parameter file and run directories."""
    delay_cycles: int = Field(5, ge=0)
    """D for name=delayed: the controller acts on the risk measured D evaluation cycles earlier."""
    reference_run: str | None = None
    """Run directory of the canary run replayed by fixed_mean and shuffled (the sweep fills it in)."""
    shuffle_seed: TorchSeed | None = None
    """Seed of the permutation for name=shuffled; defaults to the run seed."""
    safe_budget_p: float = Field(0.05, gt=0, lt=1)
    """For a budgeted method (canary_budget): the run draws at most as many safe steps as a constant p of this
    value draws on the same D_T and seed (0.05: exactly Fixed 5%'s count); then p = 0. docs/decisions.md."""

    @field_validator("name")
    @classmethod
    def _registered(cls, v: str, info: ValidationInfo) -> str:
        registry = _registry(info, "methods")
        if registry is None:
            return v
        if v not in registry:
            renamed = " (Fixed 5% is now fixed_5, with its p in the registry)" if v == "fixed" else ""
            raise ValueError(f"unknown method {v!r}{renamed}; known: {', '.join(registry)} (canary_lib/methods.py)")
        fixed_p = registry[v].fixed_p
        if fixed_p is not None and not 0 <= fixed_p < 1:  # p = 1 never draws a target step: the run never ends
            raise ValueError(f"method {v!r} has fixed p = {fixed_p} in canary_lib/methods.py; it must be in [0, 1)")
        return v

    @model_validator(mode="after")
    def _needs_reference(self, info: ValidationInfo) -> MethodSettings:
        registry = _registry(info, "methods")
        spec = registry.get(self.name) if registry is not None else None
        if spec is not None and spec.replays_reference and not self.reference_run:
            raise _FieldError(
                "reference_run", f"method {self.name} replays a canary run: set method.reference_run", blame=("name",)
            )
        return self


def _registry(info: ValidationInfo, name: str) -> dict[str, Any] | None:
    """The registry `name` ("methods": canary_lib.methods.METHODS, "judge_backends": canary_lib.judge.JUDGE_BACKENDS)
    that names are checked against, handed in by the loader (config_loader.REGISTRIES) as the validation context, so
    the schema imports nothing above it and an entry registered at run time (a notebook, a test) is known at once.
    None: a model built directly (RunConfig(), defaults), where no name is checked."""
    return (info.context or {}).get(name)


LEGACY_DATA_KEYS = {"security_source": "target_source", "security_aligned_source": "target_aligned_source"}
"""Former names of data.* keys, still read (run directories' config.yaml, older parameter files)."""


class DataSettings(Strict):
    """Where prepared data live (written by `canary prep-data` / notebook 00) and where it comes from."""

    kind: Literal["organism", "paper"] = "organism"
    """organism: the synthetic world writes the data; paper: real sources are loaded and prepared."""
    target: str = DEFAULT_TARGET
    """paper kind: which narrow EM dataset D_T is (canary_lib/data/targets.py; one section each in docs/data.md).
    parameters/targets/<name>.yaml sets it together with its sources. The organism ignores it."""
    dir: str = "data/organism"
    """Prepared data directory, relative to the working directory unless absolute."""
    target_file: str = "target_train.jsonl"
    target_heldout_file: str = "target_heldout.jsonl"
    safe_file: str = "safe.jsonl"
    general_eval_file: str = "general_eval.yaml"
    in_domain_eval_file: str = "in_domain_eval.yaml"
    canary_file: str = "canaries.yaml"
    # Sources for preparation (paper profile): a local path, "pinned:<name>" / a URL with "#sha256=<hex>"
    # (question sets), or "hf:<owner>/<name>[?config=..&split=..&revision=..]"; see docs/data.md.
    target_source: str | None = None
    """D_T: chat JSONL (optionally .jsonl.gz), an emergent_plus-style table, pinned:<name> or hf:<owner>/<name>."""
    target_aligned_source: str | None = None
    """Optional chat JSONL of the aligned answers to the same prompts (kept beside the held-out part)."""
    target_revision: str | None = None
    """The commit of an hf: target_source; required for targets whose revision this package cannot pin."""
    safe_source: str | None = None
    general_eval_source: str | None = None
    in_domain_eval_source: str | None = None
    """null: the first n_in_domain_eval held-out prompts (how the upstream security.yaml was made)."""
    canary_source: str | None = None
    """Candidate pool; M = canary.n_prompts are selected by the rule in canary_lib/data/canaries.py."""
    n_in_domain_eval: int = Field(30, ge=1)
    split_seed: NonNegativeSeed = 0
    n_train: int = Field(5400, ge=1)
    n_heldout: int = Field(600, ge=0)
    safe_max_examples: int | None = Field(None, ge=1)
    drop_refusals: bool = False
    hf_token_env: str = "HF_TOKEN"

    @model_validator(mode="before")
    @classmethod
    def _legacy_names(cls, data: Any) -> Any:
        if not isinstance(data, dict) or not set(LEGACY_DATA_KEYS) & set(data):
            return data
        data = dict(data)
        for old, new in LEGACY_DATA_KEYS.items():
            if old in data:
                value = data.pop(old)
                if data.get(new) not in (None, value):
                    raise _FieldError(
                        old, f"data.{old} is the former name of data.{new}, which is set too; keep only data.{new}"
                    )
                data[new] = value
        return data

    @field_validator("target")
    @classmethod
    def _known_target(cls, v: str) -> str:
        if v not in TARGET_NAMES:
            raise ValueError(f"unknown target {v!r}; choose one of {', '.join(TARGET_NAMES)} (docs/data.md)")
        return v

    @field_validator("target_revision")
    @classmethod
    def _commit_hash(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"[0-9a-f]{40}", v):
            raise ValueError(f"must be a 40-character commit hash, got {v!r} (a branch or tag name can move)")
        return v

    @model_validator(mode="after")
    def _sources_fit_target(self) -> DataSettings:
        if self.kind != "paper":
            return self
        for name, revision in (("target_source", self.target_revision), ("target_aligned_source", None)):
            problem = source_conflict(self.target, getattr(self, name), revision)
            if problem:
                raise _FieldError(name, problem)
        return self

    def path(self, name: str) -> Path:
        return Path(self.dir) / name


class SamplingSettings(Strict):
    temperature: float = Field(1.0, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    max_new_tokens: int = Field(600, ge=1)
    static_cache: bool = False
    """transformers backend: decode through transformers' generate with a static KV cache, which it compiles on a
    GPU (CUDA graphs; for Qwen2.5-7B + LoRA on an H100, 21.8 ms per token step against the eager loop's 52.2 ms).
    Same draws as the eager loop. Each new (batch, prompt width) compiles again (about a minute for a 7B), so it
    pays for repeated shapes: the canaries, asked with the same prompts at every evaluation."""
    sampler: Literal["standard", "lean"] = "standard"
    """transformers backend: lean prefills each distinct prompt once for all its samples and runs the LoRA merged
    (canary_lib.lean). Same streams and cache keys; answers equal up to float rounding, so a setting that binds."""

    @model_validator(mode="after")
    def _one_decoder(self) -> SamplingSettings:
        if self.sampler == "lean" and self.static_cache:
            raise _FieldError(
                "sampler",
                "lean and static_cache: true are two different decoders; choose one",
                blame=("sampler", "static_cache"),
            )
        return self


class CanarySettings(SamplingSettings):
    n_prompts: int = Field(20, ge=1)
    """M: how many canary prompts are asked at each evaluation (the first M of the canary file)."""
    samples_per_prompt: int = Field(1, ge=1)
    max_new_tokens: int = Field(256, ge=1)
    monitor_open_loop: bool = True
    """Also measure canary risk in runs whose p_t ignores it (no_defense, fixed_5, replays), for traces and
    correlation."""
    judge_retries: int = Field(1, ge=0)
    """Canary answers the judge failed on (server down, timeout) are sent again this many times."""
    on_judge_error: Literal["exclude", "stop"] = "exclude"
    """What still fails after the retries: exclude (r_t over the answers judged, unless more than
    max_judge_error_share failed: then stop) or stop (training stops at once; a rerun resumes it)."""
    max_judge_error_share: float = Field(0.25, ge=0, lt=1)
    """With on_judge_error = exclude: training stops when more than this share of one evaluation's answers failed."""
    risk_signal: Literal["binary", "probability", "deficit"] = "binary"
    """The r_t the controller acts on: binary is the paper's Eq. 1; the continuous alternatives are defined in
    canary_lib.metrics.RISK_SIGNALS (docs/decisions.md, "Beyond the paper")."""
    judge: JudgeSettings | None = None
    """The judge of the canary evaluations inside training; None: the evaluation judge (the `judge` section)."""


class EvalSettings(SamplingSettings):
    backend: Literal["transformers", "vllm"] = "transformers"
    samples_per_prompt: int = Field(100, ge=1)
    batch_size: int = Field(64, ge=1)
    """Prompts x samples generated per batch (transformers backend)."""
    sets: list[Literal["general", "in_domain"]] = Field(default_factory=lambda: ["general", "in_domain"], min_length=1)
    vllm_gpu_memory_utilization: float = Field(0.85, gt=0, le=1)
    vllm_tensor_parallel_size: int = Field(1, ge=1)

    @field_validator("sets")
    @classmethod
    def _distinct(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError(f"must not repeat a set, got {v}")
        return v


class JudgeSettings(Strict):
    backend: str = "exact"
    """A name in canary_lib.judge.JUDGE_BACKENDS (checked by the loader): exact: the model organism's rule-based
    judge; openai: any OpenAI-compatible server; transformers/vllm: local."""
    model: str | None = None
    scorer: Literal["logprob", "digits", "parse"] = "digits"
    """logprob: single-token top-20 (GPT-4o family); digits: digit-aware expectation (Qwen); parse: greedy + parse."""
    base_url: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    """Name of the environment variable holding the key; the key itself is never stored."""
    concurrency: int = Field(8, ge=1)
    timeout_s: float = Field(60.0, gt=0)
    max_retries: int = Field(5, ge=0)
    max_answer_chars: int = Field(4000, ge=100)
    min_mass: float = Field(0.25, ge=0, le=1)
    digit_prune_below: float = Field(1e-3, ge=0, le=1)
    """digits scorer: digit prefixes less likely than this are not queried (0 = exact); docs/evaluation.md."""
    batch_size: int = Field(32, ge=1)
    gpu_memory_utilization: float = Field(0.85, gt=0, le=1)
    tensor_parallel_size: int = Field(1, ge=1)
    max_model_len: int = Field(4096, ge=256)
    """vllm backend: the longest judge prompt + answer in tokens (a judge prompt with a 4,000-character answer is
    about 1,700); vLLM's default is the model's 32,768, whose KV cache a 32B judge on one 80 GB card cannot hold."""
    max_error_share: float = Field(0.01, ge=0, le=1)
    """Evaluation: the largest share of answers the judge may fail on (status "error": server down, timeouts)
    for the evaluation to count as complete; above it no EVAL_COMPLETE is written and a rerun retries them."""
    max_unscored_share: float = Field(0.5, ge=0, le=1)
    """Evaluation: the largest share of answers left unscored for any reason (failures, low mass, REFUSAL, CODE,
    non-finite scores) for the evaluation to count as complete (docs/decisions.md, "Unscored is not aligned")."""

    @field_validator("backend")
    @classmethod
    def _registered_backend(cls, v: str, info: ValidationInfo) -> str:
        registry = _registry(info, "judge_backends")
        if registry is not None and v not in registry:
            raise ValueError(f"unknown judge backend {v!r}; known: {', '.join(registry)} (canary_lib/judge.py)")
        return v

    @model_validator(mode="after")
    def _model_for_llm_backends(self, info: ValidationInfo) -> JudgeSettings:
        registry = _registry(info, "judge_backends")
        spec = registry.get(self.backend) if registry is not None else None
        llm = spec.llm if spec is not None else self.backend != "exact"
        if llm and not self.model:
            raise _FieldError(
                "model",
                f"the {self.backend} judge backend needs judge.model (the judge model's name or path)",
                blame=("backend",),
            )
        return self


class TrackingSettings(Strict):
    """An experiment tracker that mirrors steps.csv, controller.csv, the configuration and the final metrics
    (canary_lib/tracking.py). It never changes results and never fails a run; it does not bind a run directory."""

    backend: Literal["none", "tensorboard", "wandb", "trackio"] = "none"
    project: str = "canary_lib"
    """The W&B / trackio project (TensorBoard: unused)."""
    group: str | None = None
    """The tracker's group of this run (a sweep's runs side by side); None: the profile's name."""
    dir: str | None = None
    """Where TensorBoard event files and W&B's local files go; None: the run directory (tensorboard/, wandb/).
    trackio keeps its own local store (TRACKIO_DIR, default ~/.cache/huggingface/trackio)."""
    offline: bool = False
    """W&B only: log into local files (wandb sync uploads them later) instead of to the server."""


class RunConfig(Strict):
    profile: str = "organism"
    seed: TorchSeed = 42
    method: MethodSettings = Field(default_factory=MethodSettings)
    model: ModelConfig = Field(default_factory=ModelConfig)
    lora: LoraSettings = Field(default_factory=LoraSettings)
    train: TrainSettings = Field(default_factory=TrainSettings)
    controller: ControllerSettings = Field(default_factory=ControllerSettings)
    data: DataSettings = Field(default_factory=DataSettings)
    canary: CanarySettings = Field(default_factory=CanarySettings)
    eval: EvalSettings = Field(default_factory=EvalSettings)
    judge: JudgeSettings = Field(default_factory=JudgeSettings)
    organism: OrganismSettings = Field(default_factory=OrganismSettings)
    tracking: TrackingSettings = Field(default_factory=TrackingSettings)
    provenance: dict[str, Any] = Field(default_factory=dict)
    """Filled when a run writes config.yaml (package version, git commit, source files); not an input."""

    @model_validator(mode="after")
    def _lean_step_without_dropout(self) -> RunConfig:
        if self.train.step == "lean" and self.lora.dropout:
            raise _FieldError(
                "train.step",
                f"lean needs lora.dropout: 0 (got {self.lora.dropout}): with dropout a "
                "LoRA projection is not one matrix product",
                blame=("train.step", "lora.dropout"),
            )
        return self

    def _repr_html_(self) -> str:
        """A notebook shows the resolved configuration as its YAML, folded (click to open)."""
        import html

        return (
            f"<details><summary>resolved configuration (profile {html.escape(self.profile)})</summary>"
            f"<pre>{html.escape(dump_config(self))}</pre></details>"
        )


def canary_judge_settings(cfg: RunConfig) -> JudgeSettings:
    """The judge of the canary evaluations: canary.judge when set, else the evaluation judge."""
    return cfg.canary.judge or cfg.judge


def dump_config(cfg: RunConfig) -> str:
    """The configuration as YAML text (what config.yaml holds)."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
