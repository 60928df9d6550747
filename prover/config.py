"""The run configuration: one pydantic model per part, composed, resolved in one place.

Precedence (lowest to highest): the defaults below < a TOML file (`--config run.toml`) <
command-line flags. `resolve_config` is the only function that merges them; every run writes
the result next to its outputs (`write_resolved_config`), and that file passed back as
`--config` reproduces the run.

Sections: [policy] (policy.config.PolicyConfig), [verifier] (lean_env.config.VerifierConfig),
[rollout], [training] (optimiser, schedule, checkpoints: shared by every trainer), [sft],
[benchmark]. Defaults name their source: GRPO values follow DeepSeekMath (Shao et al. 2024) and TRL's GRPOConfig, sampling follows DeepSeek-Prover-V1.5.

Each value has one home: samples per prompt is `policy.sampling.n` (GRPO's group size, the
samples per problem of pass@k and of `prove`); the expert-balancing speed is the model's own
(`policy.model.ModelArgs.bias_update_speed`, in the checkpoint's config.json); seeds live with
what they seed (`policy.sampling.seed`, `training.seed`). Checks across sections quote the
numbers they compare.
"""

from __future__ import annotations

import copy
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import tomli_w
from pydantic import BaseModel, ConfigDict, Field, PositiveInt, ValidationError, model_validator

from lean_env.config import VerifierConfig
from policy.config import SEED_MAX, PolicyConfig
from prover.errors import UserError
from prover.runs import RunConfig

RESOLVED_CONFIG_NAME = "config.resolved.toml"


class ConfigError(UserError):
    """The configuration file or a flag has a bad value; the message names the key."""


class RolloutConfig(BaseModel):
    """How prompts become verified samples (samples per prompt, GRPO's G: `policy.sampling.n`)."""

    model_config = ConfigDict(extra="forbid")

    prompt_template: Literal["deepseek-prover-v1.5", "plain", "deepseek-prover-v2", "goedel-prover-v2",
                             "kimina-prover"] = Field(
        "deepseek-prover-v1.5",
        description="Prompt of a released prover (prover/prompts.py TEMPLATES, each citing its source): "
        "'deepseek-prover-v1.5' (non-CoT: \"Complete the following Lean 4 code:\" + the Lean file), 'plain' (the "
        "Lean text alone), and the chat/CoT prompts 'deepseek-prover-v2', 'goedel-prover-v2', 'kimina-prover'.",
    )
    prompts_per_step: int = Field(32, ge=1, description="Distinct problems sampled per training step.")
    verify_concurrency: int = Field(
        64, ge=1, description="Candidates in flight to the verifier at once (bounded queue), per rollout worker."
    )
    num_workers: int = Field(1, ge=1, description="Ray rollout actors, each holding one generation engine.")


class TrainingConfig(BaseModel):
    """The optimiser, schedule and checkpoints every trainer shares (SFT here, GRPO in its own
    section for what is GRPO's alone). AdamW (Loshchilov & Hutter 2019) with linear warm-up then
    cosine decay (Loshchilov & Hutter 2017, SGDR), as DeepSeek-V3 and most LM fine-tuning."""

    model_config = ConfigDict(extra="forbid")

    learning_rate: float = Field(
        1e-6, gt=0, description="Peak AdamW learning rate (after warm-up). 1e-6 as in DeepSeekMath's GRPO "
        "(and TRL's GRPO default); SFT usually wants more (1e-5 to 1e-4, examples/sft-cpu.toml).")
    lr_schedule: Literal["cosine", "constant"] = Field(
        "cosine", description="After warm-up: cosine decay from learning_rate to min_lr_ratio * learning_rate "
        "at the last step, or constant.")
    warmup_steps: int = Field(0, ge=0, description="Optimizer steps of linear warm-up from 0 to learning_rate.")
    min_lr_ratio: float = Field(
        0.1, ge=0, le=1, description="Cosine schedule: the final learning rate as a fraction of the peak "
        "(0.1 as DeepSeek-V3's decay to 10%).")
    steps: int = Field(1000, ge=1, description="Optimizer steps (the schedule's length).")
    micro_batch_size: int = Field(4, ge=1, description="Rows (sequences, or packed rows) per forward/backward pass.")
    gradient_accumulation: int = Field(1, ge=1, description="Micro-batches per optimizer step.")
    max_grad_norm: float = Field(1.0, gt=0, description="Gradient clipping: the global L2 norm is scaled down to this.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW decoupled weight decay (TRL's default 0).")
    adam_betas: tuple[float, float] = Field(
        (0.9, 0.95), description="AdamW (beta1, beta2); (0.9, 0.95) as DeepSeek-V3 (sec. 4.2).")
    seed: int = Field(0, ge=0, le=SEED_MAX, description="Seed for data order, held-out split and dropout-free init.")
    device: str = Field("auto", description="Training device: auto (cuda when available, else cpu), cpu, cuda, cuda:N.")
    save_every: int = Field(100, ge=1, description="Steps between checkpoints (one is always written at the end).")
    keep_last: int = Field(2, ge=1, description="Checkpoints kept; older ones are removed after a new one is complete.")
    eval_every: int = Field(100, ge=1, description="Steps between held-out evaluations (and one at the end).")
    log_every: int = Field(1, ge=1, description="Steps between metrics.jsonl / TensorBoard rows.")

    @model_validator(mode="after")
    def _warmup_fits(self) -> TrainingConfig:
        if self.warmup_steps > self.steps:
            raise ValueError(f"training.warmup_steps = {self.warmup_steps} exceeds training.steps = {self.steps}")
        beta1, beta2 = self.adam_betas
        if not (0 <= beta1 < 1 and 0 <= beta2 < 1):
            raise ValueError(f"training.adam_betas = {list(self.adam_betas)}: each must be in [0, 1)")
        return self


class SFTConfig(BaseModel):
    """Supervised fine-tuning data (`prover sft`): what is trained on, and how it is cut.

    Prompts come from the same templates as `prove` and `bench` (`rollout.prompt_template` for
    Lean files, `tactic_template` for tactic rows), so what is trained is what is sampled."""

    model_config = ConfigDict(extra="forbid")

    corpus: str | None = Field(
        None, description="The corpus, a jsonl file; one row per example in `format`.")
    format: Literal["lean-files", "prompt-completion", "tactic"] = Field(
        "lean-files", description="lean-files: rows {name, code} of complete Lean files (as "
        "minif2f_valid_proofs.jsonl), each matched to its problem in `problems` and turned into the "
        "template's prompt and the proof as completion; prompt-completion: rows {prompt, completion} "
        "used as they are; tactic: rows {state (or goals: [..]), tactic} with `tactic_template`.")
    problems: str = Field(
        "minif2f-valid", description="lean-files: the problem set the proofs belong to (suite name, "
        ".jsonl/.lean path or hf:owner/name); the prompt is built from the problem, not the file.")
    tactic_template: str = Field(
        "bfs-prover", description="tactic: the state -> tactic prompt of best-first search "
        "(prover/search/best_first.py TACTIC_TEMPLATES: bfs-prover, gptf).")
    limit: int | None = Field(None, ge=1, description="Only the first N rows of the corpus (smoke runs).")
    eval_fraction: float = Field(
        0.1, ge=0, lt=1, description="Fraction of examples held out (a seeded draw, training.seed) for the "
        "evaluation loss; 0 = no evaluation.")
    max_seq_len: int = Field(
        2048, ge=8, description="Longest row, tokens: prompt + completion + EOS (or packed sequences); longer "
        "examples are skipped and counted, never truncated (a cut proof teaches a wrong end).")
    pack: bool = Field(
        True, description="Pack several examples per row with document-aware attention (our policy only; "
        "other models train one example per row).")
    mtp: bool = Field(True, description="Our policy: add the multi-token-prediction loss (DeepSeek-V3 sec. 2.2).")


class BenchmarkConfig(BaseModel):
    """pass@k on a suite, reported so others can reproduce it (samples per problem:
    `policy.sampling.n`)."""

    model_config = ConfigDict(extra="forbid")

    suite: str = Field("minif2f-test", description="Suite name (data/suites.toml), a .jsonl/.lean path, or hf:owner/name.")
    split: str | None = Field(None, description="Split to keep when the source has several (a suite fixes its own).")
    limit: int | None = Field(None, ge=1, description="Only the first N problems (smoke runs; reports say so).")
    k: list[PositiveInt] = Field(
        default_factory=lambda: [1],
        min_length=1,
        description="Values of k to report, unbiased estimator of Chen et al. 2021 (Codex); each "
        "at most policy.sampling.n, the samples per problem (pass@1 with the default n=1; "
        "DeepSeek-Prover reports pass@32 with n=32 and k = [1, 8, 32]).",
    )


class ProverConfig(BaseModel):
    """Everything a run needs; written next to its outputs as config.resolved.toml."""

    model_config = ConfigDict(extra="forbid")

    output_dir: Path = Field(Path("runs/latest"), description="Where the run writes results, logs and this config.")
    policy: PolicyConfig = Field(default_factory=PolicyConfig)
    verifier: VerifierConfig = Field(default_factory=VerifierConfig)
    rollout: RolloutConfig = Field(default_factory=RolloutConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    sft: SFTConfig = Field(default_factory=SFTConfig)
    benchmark: BenchmarkConfig = Field(default_factory=BenchmarkConfig)
    run: RunConfig = Field(default_factory=RunConfig)

    @model_validator(mode="after")
    def _sections_agree(self) -> ProverConfig:
        sampling, context = self.policy.sampling, self.policy.max_model_len
        if sampling.max_tokens >= context:
            raise ValueError(
                f"policy.sampling.max_tokens = {sampling.max_tokens} leaves no room for a prompt "
                f"within policy.max_model_len = {context} tokens"
            )
        too_big = [k for k in self.benchmark.k if k > sampling.n]
        if too_big:
            raise ValueError(
                f"benchmark.k values {too_big} exceed policy.sampling.n = {sampling.n}, the samples "
                "per problem that pass@k is estimated from"
            )
        return self


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    node = tree
    *parents, leaf = dotted.split(".")
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{dotted}: {part!r} is a value, not a section")
        node = child
    node[leaf] = value


def _describe(error: ValidationError, origin: str) -> str:
    first = error.errors()[0]
    loc = ".".join(str(p) for p in first["loc"])
    key = f"{loc}: " if loc else ""  # checks across sections have no single key
    # Our own checks (ValueError in a validator) already quote the values they compare.
    own = first["type"] == "value_error"
    message = str(first["ctx"]["error"]) if own else first["msg"]
    got = f" (got {first['input']!r})" if not own and "input" in first and not isinstance(first["input"], dict) else ""
    more = f" (and {error.error_count() - 1} more)" if error.error_count() > 1 else ""
    return f"{origin}: {key}{message}{got}{more}"


def read_config_file(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start}: {exc.reason})") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror})") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML ({exc})") from None


def resolve_config(config_file: Path | None = None, overrides: Mapping[str, Any] | None = None) -> ProverConfig:
    """defaults < TOML file < flags. `overrides` maps dotted keys ("verifier.timeout_s") to values;
    None values mean "flag not given" and are skipped."""
    tree: dict[str, Any] = read_config_file(config_file) if config_file else {}
    origin = str(config_file) if config_file else "defaults"
    merged = copy.deepcopy(tree)
    for dotted, value in (overrides or {}).items():
        if value is not None:
            _set_dotted(merged, dotted, value)
    try:   # the flags may complete the file (a cross-field check the file alone would fail)
        return ProverConfig.model_validate(merged)
    except ValidationError as exc:
        with_flags = exc
    try:   # name the culprit: the file when it is wrong on its own, else the flags
        ProverConfig.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, origin)) from None
    raise ConfigError(_describe(with_flags, "command-line flags")) from None


def write_resolved_config(config: ProverConfig, out_dir: Path | None = None) -> Path:
    """Write the resolved config as TOML (None values omitted) into `out_dir` (default: its
    own output_dir); feeding it back with --config reproduces the run. Written atomically
    (a new file renamed over the old), so a crash never leaves half a config."""
    target_dir = out_dir or config.output_dir
    target_dir.mkdir(parents=True, exist_ok=True)
    path = target_dir / RESOLVED_CONFIG_NAME
    data = config.model_dump(mode="json", exclude_none=True)
    command = f"prover --config {path} {config.run.command} --out NEW_DIR" if config.run.command else None
    head = ("# What this run did ([run]: the job; the rest: every setting, resolved).\n"
            + (f"# Re-run it: {command}\n" if command else "") + "\n")
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(head + tomli_w.dumps(data), encoding="utf-8")
    tmp.replace(path)
    return path
