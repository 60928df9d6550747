"""The run configuration: one pydantic model per part, composed, resolved in one place.

Precedence (lowest to highest): the defaults below < a TOML file (`--config run.toml`) <
command-line flags. `resolve_config` is the only function that merges them; every run writes
the result next to its outputs (`write_resolved_config`), and that file passed back as
`--config` reproduces the run.

Sections: [policy] (policy.config.PolicyConfig), [verifier] (lean_env.config.VerifierConfig),
[rollout], [training] (optimiser, schedule, checkpoints: shared by every trainer), [sft], [grpo] (the RL
objective), [learner] (the learner's mesh, policy.mesh.ShardingConfig), [fleet] (the Ray actors),
[benchmark], [search] (best-first tactic search), [curate], [iterate]. Defaults name their source: GRPO values follow DeepSeekMath (Shao et al. 2024)
and TRL's GRPOConfig, sampling follows DeepSeek-Prover-V1.5.

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
from policy.mesh import ShardingConfig
from prover.errors import UserError
from prover.runs import RunConfig

RESOLVED_CONFIG_NAME = "config.resolved.toml"


class ConfigError(UserError):
    """The configuration file or a flag has a bad value; the message names the key."""


# The state -> tactic prompts of prover/search/best_first.py TACTIC_TEMPLATES (each citing its
# source); named here so that a config is checked without importing the search (a test holds
# the two equal).
TacticTemplateName = Literal["bfs-prover", "gptf"]


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
    problems: str | None = Field(
        None, description="`prover train`: the problem set trained on: a suite name (data/suites.toml), a "
        ".jsonl/.lean path, or hf:owner/name.")
    split: str | None = Field(None, description="`prover train`: the split of `problems` to train on (None: all).")
    prompts_per_step: int = Field(32, ge=1, description="Distinct problems sampled per training step.")
    verify_concurrency: int = Field(
        64, ge=1, description="Candidates in flight to the verifier at once (bounded queue), per rollout worker."
    )
    episodes: Literal["whole-proof", "tactic"] = Field(
        "whole-proof", description="Episode kind (prover/rl/rollout.py): 'whole-proof' (one completion, checked once) "
        "or 'tactic' (multi-turn, LeanDojo's framing: tactic in, new goals or Lean's error out).")
    tactic_template: TacticTemplateName = Field(
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
    shard_timeout_s: float | None = Field(
        3600.0, gt=0, description="A rollout shard (one rollout actor's share of a step, sampled and judged) not "
        "back within this many seconds of its start counts as hung: the rollout and verifier actors that served "
        "it are replaced (counted against max_restarts) and the shard retried. None: wait forever.")
    stream_verify: bool = Field(
        True, description="Whole-proof episodes: the verifier actor judges each problem's samples as soon as the "
        "engine has finished them, while the rest are sampled (a Ray streaming generator; verl's and OpenRLHF's "
        "rollouts verify after the whole batch is sampled). The episodes are the same either way. False: "
        "sample the whole shard, then judge it.")

    @model_validator(mode="after")
    def _async_needs_staleness(self) -> FleetConfig:
        if self.mode == "async" and self.max_staleness < 1:
            raise ValueError(f"fleet.mode = 'async' overlaps rollouts with learning, so rollouts are at least one "
                             f"version old: fleet.max_staleness must be >= 1, got {self.max_staleness}")
        return self


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


AdvantageEstimator = Literal["grpo", "dr_grpo"]
PolicyLossName = Literal["vanilla", "cispo", "gspo"]
LossAggregation = Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"]
RolloutCorrection = Literal["none", "tis", "mis", "icepop"]
CorrectionLevel = Literal["token", "sequence"]


class GRPOConfig(BaseModel):
    """The GRPO objective and how a rollout batch becomes optimizer steps (`prover.rl.losses`,
    `prover.rl.learner`). Group size G is `policy.sampling.n`; the completion budget is
    `policy.sampling.max_tokens`; learning rate, micro-batch size and clipping norm are
    [training]'s. Each option names the paper it comes from and the verl / TRL spelling."""

    model_config = ConfigDict(extra="forbid")

    advantage_estimator: AdvantageEstimator = Field(
        "grpo",
        description="Group-relative advantage. 'grpo': (r - mean_group) / (std_group + eps), the unbiased "
        "(Bessel) std as torch.std (DeepSeekMath, Shao et al. 2024); 'dr_grpo': r - mean_group, no std "
        "scaling (Dr. GRPO, Liu et al. 2025, 'Understanding R1-Zero-like training'). verl: "
        "algorithm.adv_estimator=grpo with norm_adv_by_std_in_grpo; TRL: scale_rewards.",
    )
    advantage_eps: float = Field(
        1e-6, gt=0, description="eps added to the group std in 'grpo' advantages (verl's epsilon, 1e-6)."
    )
    policy_loss: PolicyLossName = Field(
        "vanilla",
        description="Policy-gradient surrogate. 'vanilla': PPO's clipped ratio per token with separate "
        "low/high clip (GRPO, DeepSeekMath; clip-higher when clip_ratio_high > clip_ratio_low, DAPO, Yu et "
        "al. 2025); 'cispo': REINFORCE weighted by the clipped, stop-gradient IS ratio, no token dropped "
        "(CISPO, MiniMax-M1, arXiv:2506.13585); 'gspo': one length-normalised ratio per sequence, clipped "
        "per sequence, proposed for MoE stability (GSPO, Zheng et al. 2025, arXiv:2507.18071; the "
        "GSPO-token form). verl: actor.policy_loss.loss_mode = vanilla | cispo | gspo; TRL: loss_type, "
        "importance_sampling_level='sequence' for GSPO.",
    )
    clip_ratio_low: float = Field(
        0.2,
        ge=0,
        le=1,
        description="epsilon_low: the ratio's lower bound is 1 - clip_ratio_low. 0.2 as PPO/DeepSeekMath; "
        "GSPO uses 3e-4 (sequence ratios); CISPO sets no lower bound (1.0). verl: clip_ratio_low; TRL: epsilon.",
    )
    clip_ratio_high: float = Field(
        0.2,
        gt=0,
        description="epsilon_high: the ratio's upper bound is 1 + clip_ratio_high. DAPO's clip-higher uses "
        "0.28; GSPO 4e-4. verl: clip_ratio_high; TRL: epsilon_high.",
    )
    loss_agg_mode: LossAggregation = Field(
        "token-mean",
        description="How per-token losses become one number. 'token-mean': mean over every trained token "
        "of the mini-batch (DAPO); 'seq-mean-token-mean': mean over tokens within each sequence, then over "
        "sequences (GRPO as in DeepSeekMath; GSPO's own); 'seq-mean-token-sum-norm': per-sequence token sum "
        "divided by policy.sampling.max_tokens, mean over sequences (Dr. GRPO's length-unbiased constant). "
        "verl: actor.loss_agg_mode; TRL: loss_type dapo | grpo | dr_grpo.",
    )
    kl_coef: float = Field(
        0.0,
        ge=0,
        description="beta: weight of the per-token k3 estimate of KL(pi || pi_ref), exp(ref - logp) - "
        "(ref - logp) - 1 (Schulman, 'Approximating KL divergence', 2020; DeepSeekMath used 0.04). 0 = no "
        "reference model is loaded, as TRL's current default. verl: actor.kl_loss_coef with "
        "kl_loss_type=low_var_kl; TRL: beta.",
    )
    rollout_correction: RolloutCorrection = Field(
        "tis",
        description="Rollout/learner mismatch correction from the engine's own logprobs, weight w = "
        "pi_learner(old) / pi_engine. 'none'; 'tis': truncate w at rollout_is_threshold (Yao et al. 2025, "
        "'Your efficient RL framework secretly brings you off-policy RL training'); 'mis': mask (weight 0) "
        "where w > rollout_is_threshold, keep w elsewhere (masked IS, Yao/Liu et al. 2025, 'When speed "
        "kills stability'); 'icepop': keep w only inside [rollout_is_threshold_low, rollout_is_threshold] "
        "(IcePop, Ling team, Ring-1T 2025). verl: algorithm.rollout_correction (rollout_is / "
        "rollout_rs); TRL: vllm_importance_sampling_correction with vllm_importance_sampling_cap.",
    )
    rollout_is_level: CorrectionLevel = Field(
        "token",
        description="'token': one weight per token; 'sequence': one weight per sequence, the product of its "
        "token ratios. verl: rollout_is=token|sequence; TRL: vllm_importance_sampling_mode.",
    )
    rollout_is_threshold: float = Field(
        2.0,
        gt=1,
        description="Upper threshold C on the mismatch weight (TIS truncation / MIS and IcePop mask). TIS "
        "and verl default 2; IcePop uses 5. verl: rollout_is_threshold; TRL: vllm_importance_sampling_cap.",
    )
    rollout_is_threshold_low: float = Field(
        0.5,
        gt=0,
        lt=1,
        description="Lower threshold of 'icepop' (weights below it are masked); IcePop uses 0.5.",
    )
    dynamic_sampling: bool = Field(
        False,
        description="Drop groups whose rewards are all equal (zero advantage, no gradient) and sample more "
        "prompts until rollout.prompts_per_step informative groups are collected (DAPO). verl: "
        "algorithm.filter_groups.enable.",
    )
    max_refill_rounds: int = Field(
        8,
        ge=1,
        description="Dynamic sampling: at most this many generation rounds per step before training on "
        "what was collected. verl: filter_groups.max_num_gen_batches.",
    )
    overlong_buffer_tokens: int = Field(
        0,
        ge=0,
        description="Soft overlong punishment (DAPO eq. 13): completions longer than max_tokens - this many "
        "tokens get a penalty rising linearly to overlong_penalty_factor at max_tokens. 0 = off (DAPO uses "
        "4096 of 20480). verl: reward_model.overlong_buffer.len.",
    )
    overlong_penalty_factor: float = Field(
        1.0, ge=0, description="Largest soft overlong penalty (DAPO: 1). verl: overlong_buffer.penalty_factor."
    )
    mask_truncated_completions: bool = Field(
        False,
        description="Completions cut at max_tokens train nothing (their loss mask is zeroed; they still "
        "count in their group's advantage statistics): DAPO's overlong filtering. TRL: "
        "mask_truncated_completions.",
    )
    format_penalty: float = Field(
        0.0,
        ge=0,
        description="Optional shaping: a completion with no Lean code at all (verdict not_checked:no_code) "
        "scores -format_penalty instead of 0. Acceptance alone gives reward 1; 0 = off.",
    )
    mini_batches: int = Field(
        1,
        ge=1,
        description="Optimizer steps per rollout batch; the batch is split into this many mini-batches "
        "(1 = strictly on-policy, ratios are 1 and clipping is inactive). GSPO used 4. TRL: "
        "steps_per_generation; verl: train_batch_size / ppo_mini_batch_size.",
    )
    logprob_chunk_tokens: int = Field(
        1024,
        ge=1,
        description="Tokens whose vocabulary logits are materialised at once when computing log-probs "
        "(memory: chunk x vocab x 4 bytes).",
    )
    routing_replay: bool = Field(
        False,
        description="MoE routing replay R3: the learner's forward uses the experts the rollout engine chose "
        "(vLLM enable_return_routed_experts) instead of routing afresh (Ma et al. 2025, 'Stabilizing MoE RL "
        "by aligning training and inference routers'). Needs episodes carrying routed_experts.",
    )

    @model_validator(mode="after")
    def _bounds_agree(self) -> GRPOConfig:
        if self.policy_loss != "cispo" and self.clip_ratio_low >= 1:
            raise ValueError(
                f"grpo.clip_ratio_low = {self.clip_ratio_low} puts the ratio's lower bound at "
                f"{1 - self.clip_ratio_low:g}; below 1 is needed except for policy_loss = 'cispo'"
            )
        return self


class LearnerConfig(ShardingConfig):
    """How the learner is laid out over its ranks (torchrun or the fleet's Ray actors): FSDP2
    over `dp_shard` ranks, expert parallelism over `ep`, mixed precision, CPU offload
    (policy/mesh.py; applied by policy/parallelize.py). One process: no sharding at all.
    Checked against the world size and the model when the learner starts."""

    ranks: int = Field(
        1, ge=1,
        description="Learner processes `prover train` starts, as Ray actors (fleet.actor_gpus each): "
        "they form one process group (NCCL on GPUs, gloo on CPUs), shard the policy as dp_shard and ep "
        "say, and each trains on 1/ranks of every mini-batch. 1: one device, no process group. "
        "(torchrun sets its own world size.)",
    )


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


class SearchConfig(BaseModel):
    """Best-first tactic search (`--method search`, prover/search/best_first.py): where its tactic
    sessions come from, the prompt, the score that orders the frontier, and how many problems
    share engine calls. Budgets per problem are the job's (`run.expansions`,
    `run.budget_seconds`: `--expansions`, `--budget-seconds`); tactics sampled per expansion are
    `policy.sampling.n`.

    With backend 'dojo' each problem is the theorem of the same name in a repo LeanDojo has
    traced: `lean_dojo.Theorem(LeanGitRepo(dojo_url, dojo_commit), dojo_file_path, problem.name)`,
    LeanDojo's own constructors and field names (lean-dojo 4.20.0)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    backend: Literal["repl", "dojo"] = Field(
        "repl", description="Tactic sessions: 'repl' = lean_env.tactic.TacticSession on the verifier's REPL pool "
        "(the stand-in where Lean is missing); 'dojo' = LeanDojo's (lean_env.backends.dojo.DojoTacticSession) "
        "on the theorems of a traced repo (dojo_url, dojo_commit, dojo_file_path). Either way a proof found is "
        "checked again by the verifier (every acceptance rule, the final judge).")
    template: TacticTemplateName = Field(
        "bfs-prover", description="State -> tactic prompt (prover/search/best_first.py TACTIC_TEMPLATES): "
        "'bfs-prover' (\"{state}:::\", BFS-Prover-V1's model card) or 'gptf' (\"[GOAL]{state}[PROOFSTEP]\", "
        "GPT-f/PACT as llmstep sends it).")
    length_alpha: float = Field(
        0.5, ge=0.0, le=1.0, description="Exponent of BFS-Prover's length normalisation: score = sum of the "
        "path's tactic log-probs / depth**alpha. 0 = ReProver's cumulative log-prob (favours shallow states), "
        "1 = mean per tactic. 0.5 is our middle default, not a published value.")
    concurrency: int | None = Field(
        None, ge=1, description="Problems searched at once (their proposals share engine calls). None: the "
        "verifier's `workers` for 'repl' (each session holds a REPL process), 1 for 'dojo'.")
    dojo_timeout_s: float = Field(600.0, gt=0, description="'dojo': LeanDojo's limit per interaction "
                                  "(`Dojo(theorem, timeout=...)`), seconds.")
    dojo_url: str | None = Field(
        None, description="'dojo': the traced repo, LeanDojo's `LeanGitRepo.url` (a GitHub URL, another git "
        "URL or a local path), e.g. https://github.com/yangky11/miniF2F-lean4.")
    dojo_commit: str | None = Field(
        None, description="'dojo': the repo's commit, LeanDojo's `LeanGitRepo.commit` (a hash; a tag or branch "
        "is resolved to one by LeanDojo); pin the commit that was traced.")
    dojo_file_path: str | None = Field(
        None, description="'dojo': the .lean file inside the repo that holds the theorems, LeanDojo's "
        "`Theorem.file_path`, e.g. MiniF2F/Valid.lean or MiniF2F/Test.lean; `{name}` in it is replaced by the "
        "problem's name (one file per theorem). The theorem's `full_name` is the problem's name.")

    @model_validator(mode="after")
    def _dojo_names_its_theorems(self) -> SearchConfig:
        if self.backend == "dojo":
            missing = [f"search.{k}" for k in ("dojo_url", "dojo_commit", "dojo_file_path") if not getattr(self, k)]
            if missing:
                raise ValueError(
                    f"search.backend = 'dojo' finds each problem in a traced repo, lean_dojo.Theorem(LeanGitRepo("
                    f"search.dojo_url, search.dojo_commit), search.dojo_file_path, problem name): set "
                    f"{', '.join(missing)}")
        if self.dojo_file_path is not None and not self.dojo_file_path.endswith(".lean"):
            raise ValueError(f"search.dojo_file_path = {self.dojo_file_path!r}: LeanDojo takes theorems from a "
                             ".lean file")
        return self


class CurateConfig(BaseModel):
    """`prover data curate`: choose a small SFT set from larger corpora, s1 style (Muennighoff et
    al. 2025, s1K: quality, then difficulty, then diversity by a domain drawn uniformly and a
    problem drawn within it with weight 2^-rank, hardest first). See prover/curate.py."""

    model_config = ConfigDict(extra="forbid")

    corpora: list[str] = Field(
        default_factory=list, description="Corpus jsonl files (rows as prover/corpus_rows.py describes: name, "
        "code, and where known provenance), read in this order; an earlier row wins a near-duplicate.")
    pass_rates: str | None = Field(
        None, description="A `prover bench` or `prover distill` run folder: its results.jsonl gives each "
        "problem's base pass rate (accepted / samples), the difficulty signal; None: proof length alone.")
    size: int | None = Field(None, ge=1, description="Rows to select; None: every row that passes the filters.")
    seed: int = Field(0, ge=0, le=SEED_MAX, description="Seed of the diversity draw: the same inputs and seed "
                      "give the same selection.")
    max_pass_rate: float = Field(
        0.5, ge=0.0, le=1.0, description="Drop problems whose base pass rate is above this (too easy to teach "
        "the model anything). Ours: s1 keeps only questions neither base model solves, i.e. 0.")
    per_problem: int = Field(1, ge=1, description="Proofs kept per problem (s1: one trace per question); "
                             "the ones adding the most tactic names not yet chosen go first.")
    verify: bool = Field(
        False, description="Check every row again through the verifier (the pipeline of `prover lean "
        "check-set`) instead of trusting the verdict the row records; rows without one need it.")


class IterateConfig(BaseModel):
    """`prover iterate`: expert iteration (Polu et al. 2022, "Formal mathematics statement
    curriculum learning"; Anthony et al. 2017). Each round proves the problem set with the current
    policy, adds the newly accepted proofs to the accumulated corpus, and fine-tunes on that corpus
    with `prover sft` ([sft] and [training]: steps per round, learning rate, held-out fraction); the
    fine-tuned model proves in the next round. See prover/iterate.py."""

    model_config = ConfigDict(extra="forbid")

    rounds: int = Field(2, ge=1, description="Rounds of prove -> collect -> fine-tune. A finished run given more "
                        "rounds continues with the next one.")
    problems: str | None = Field(
        None, description="The problem set proved every round: a suite name (data/suites.toml, e.g. "
        "synthetic-tactics), a .jsonl/.lean path or hf:owner/name; also the set the corpus's proofs belong to.")
    split: str | None = Field(None, description="Only this split of `problems` (None: all).")
    limit: int | None = Field(None, ge=1, description="Only the first N problems of the split (smoke runs).")
    method: str = Field("whole", description="Proving method of the proving phase: whole, repair or search "
                        "(prover.search.methods, as `prover bench --method`).")
    samples: int = Field(8, ge=1, description="Samples per problem in each proving phase (policy.sampling.n "
                         "there; the other sampling values are [policy.sampling]'s).")
    attempt: Literal["unsolved", "all"] = Field(
        "unsolved", description="'unsolved': a round proves only the problems no earlier round solved (the "
        "compute goes where the corpus can grow); 'all': every problem every round, collecting more distinct "
        "proofs of solved ones (Polu et al. 2022 attempt every statement each round).")
    sft_from: Literal["base", "previous"] = Field(
        "base", description="Where each round's fine-tuning starts: 'base', policy.checkpoint, on the whole "
        "accumulated corpus (as STaR, Zelikman et al. 2022, restarts from the base model each iteration to "
        "avoid overfitting); 'previous': the last round's fine-tuned model, on the same corpus.")
    seed_corpus: str | None = Field(
        None, description="Proofs the corpus starts with (corpus rows, prover/corpus_rows.py: name and code, "
        "e.g. human-written proofs), trained on every round; they do not count as solved by the policy.")
    seed_limit: int | None = Field(None, ge=1, description="Only the first N rows of seed_corpus.")


class ProverConfig(BaseModel):
    """Everything a run needs; written next to its outputs as config.resolved.toml."""

    model_config = ConfigDict(extra="forbid")

    output_dir: Path = Field(Path("runs/latest"), description="Where the run writes results, logs and this config.")
    policy: PolicyConfig = Field(default_factory=PolicyConfig)
    verifier: VerifierConfig = Field(default_factory=VerifierConfig)
    rollout: RolloutConfig = Field(default_factory=RolloutConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    sft: SFTConfig = Field(default_factory=SFTConfig)
    grpo: GRPOConfig = Field(default_factory=GRPOConfig)
    learner: LearnerConfig = Field(default_factory=LearnerConfig)
    fleet: FleetConfig = Field(default_factory=FleetConfig)
    benchmark: BenchmarkConfig = Field(default_factory=BenchmarkConfig)
    search: SearchConfig = Field(default_factory=SearchConfig)
    curate: CurateConfig = Field(default_factory=CurateConfig)
    iterate: IterateConfig = Field(default_factory=IterateConfig)
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
        buffer = self.grpo.overlong_buffer_tokens
        if buffer >= sampling.max_tokens:
            raise ValueError(
                f"grpo.overlong_buffer_tokens = {buffer} must be below policy.sampling.max_tokens = "
                f"{sampling.max_tokens} (the penalty ramps over the last buffer tokens of the budget)"
            )
        return self


def check_grpo_run(config: ProverConfig) -> None:
    """The checks only a GRPO run needs (other commands sample n = 1 and never split batches);
    the RL entry point calls this after `resolve_config`. Raises ConfigError quoting the numbers."""
    n, prompts = config.policy.sampling.n, config.rollout.prompts_per_step
    if n < 2:
        raise ConfigError(
            f"policy.sampling.n = {n}: GRPO's advantage compares completions of one prompt, so the "
            "group size must be >= 2"
        )
    batch = prompts * n
    minis, micro, ranks = config.grpo.mini_batches, config.training.micro_batch_size, config.learner.ranks
    if batch % (minis * micro * ranks):
        over = f" over learner.ranks = {ranks}" if ranks > 1 else ""
        product = f"{minis} x {micro}" + (f" x {ranks}" if ranks > 1 else "")
        raise ConfigError(
            f"rollout.prompts_per_step x policy.sampling.n = {prompts} x {n} = {batch} sequences do not "
            f"split into grpo.mini_batches = {minis} mini-batches of whole micro-batches of "
            f"training.micro_batch_size = {micro}{over} ({product} = {minis * micro * ranks} must divide {batch})"
        )


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


def parse_assignments(items: list[str]) -> dict[str, Any]:
    """`--set key=value` flags as overrides: the key dotted (`grpo.kl_coef`), the value a TOML
    value (`0.01`, `"cispo"`, `[1, 8]`, `true`), or, when it is not one, the text itself
    (`fleet.mode=async`). A flag without `=` is a ConfigError naming it."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key or any(not part for part in key.split(".")):
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE with a dotted key, e.g. --set training.steps=50")
        try:
            value = tomllib.loads(f"v = {raw.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw.strip()
        out[key] = value
    return out


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
