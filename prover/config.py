"""The run configuration: one pydantic model per part, composed, resolved in one place.

Precedence (lowest to highest): the defaults below < a TOML file (`--config run.toml`) <
command-line flags. `resolve_config` is the only function that merges them; every run writes
the result next to its outputs (`write_resolved_config`), and that file passed back as
`--config` reproduces the run.

Sections: [policy] (policy.config.PolicyConfig), [verifier] (lean_env.config.VerifierConfig),
[rollout], [training], [fleet], [benchmark]. Defaults name their source: GRPO values follow
DeepSeekMath (Shao et al. 2024) and TRL's GRPOConfig, sampling follows DeepSeek-Prover-V1.5.

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
    episodes: Literal["whole-proof", "tactic"] = Field(
        "whole-proof", description="Episode kind (prover/rl/rollout.py): 'whole-proof' (one completion, checked once) "
        "or 'tactic' (multi-turn, LeanDojo's framing: tactic in, new goals or Lean's error out).")
    tactic_template: Literal["gptf", "bfs-prover"] = Field(
        "gptf", description="Tactic episodes: state -> tactic prompt (prover/search/best_first.py TACTIC_TEMPLATES).")
    tactic_turns: int = Field(8, ge=1, description="Tactic episodes: at most this many tactic calls per episode.")


class FleetConfig(BaseModel):
    """The Ray fleet (prover/fleet): rollout actors (one generation engine each), verifier
    actors (one `lean_env` verifier each) and the learner; local unless `ray_address` names a
    cluster."""

    model_config = ConfigDict(extra="forbid")

    ray_address: str | None = Field(
        None, description="Ray cluster to join ('ray://host:10001' or 'auto'); None starts a local Ray on this "
        "machine inside the Fleet's `with` block.")
    num_cpus: int | None = Field(
        None, ge=1, description="Local Ray only: CPUs Ray may schedule on (None: all of this machine's).")
    actor_cpus: float = Field(
        1.0, ge=0, description="CPUs each actor reserves in Ray's scheduler (0 lets many share a small machine).")
    actor_gpus: float = Field(
        0.0, ge=0, description="GPUs each rollout and learner actor reserves (1 on a GPU cluster).")
    rollout_workers: int = Field(1, ge=1, description="Ray rollout actors, each holding one generation engine.")
    verifier_workers: int = Field(1, ge=1, description="Ray verifier actors, each holding one lean_env verifier pool.")
    mode: Literal["sync", "async"] = Field(
        "sync", description="'sync': generate, verify, learn, sync weights, one after the other; 'async': the "
        "next step's rollouts run while the learner trains (rollouts up to max_staleness versions old).")
    max_staleness: int = Field(
        1, ge=0, description="Async mode: episodes sampled by a policy more than this many learner versions "
        "behind are dropped (AReaL's staleness bound; 1 = one-step-off).")
    max_restarts: int = Field(
        3, ge=0, description="Times a dead rollout or verifier actor is replaced (and its work retried) before "
        "the step fails.")

    @model_validator(mode="after")
    def _async_needs_staleness(self) -> FleetConfig:
        if self.mode == "async" and self.max_staleness < 1:
            raise ValueError(f"fleet.mode = 'async' overlaps rollouts with learning, so rollouts are at least one "
                             f"version old: fleet.max_staleness must be >= 1, got {self.max_staleness}")
        return self


class TrainingConfig(BaseModel):
    """The learner: GRPO (and SFT) optimisation."""

    model_config = ConfigDict(extra="forbid")

    algorithm: Literal["grpo", "sft"] = Field("grpo", description="GRPO with verified rewards, or supervised fine-tuning.")
    learning_rate: float = Field(
        1e-6, gt=0, description="AdamW learning rate. 1e-6 as in DeepSeekMath's GRPO (and TRL's default)."
    )
    kl_coef: float = Field(
        0.04, ge=0, description="beta, weight of the KL penalty to the reference policy. 0.04 as in DeepSeekMath."
    )
    clip_eps: float = Field(0.2, gt=0, lt=1, description="epsilon of the clipped surrogate objective (PPO, DeepSeekMath).")
    steps: int = Field(1000, ge=1, description="Optimizer steps.")
    micro_batch_size: int = Field(4, ge=1, description="Sequences per forward/backward pass.")
    gradient_accumulation: int = Field(1, ge=1, description="Micro-batches per optimizer step.")
    max_grad_norm: float = Field(1.0, gt=0, description="Gradient clipping norm.")
    seed: int = Field(0, ge=0, le=SEED_MAX, description="Seed for data order and initialisation.")
    save_every: int = Field(100, ge=1, description="Steps between checkpoints.")


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
    fleet: FleetConfig = Field(default_factory=FleetConfig)
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
