"""Configuration: defaults < TOML file < flags, validation messages, the resolved file round-trip."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from prover.config import (
    RESOLVED_CONFIG_NAME,
    ConfigError,
    ProverConfig,
    resolve_config,
    write_resolved_config,
)


def test_defaults_are_valid_and_documented() -> None:
    config = resolve_config()
    assert config == ProverConfig(), config
    assert config.verifier.timeout_s == 60.0 and config.training.max_grad_norm == 1.0, config
    # Every field of every section carries help text (units, default's source).
    def undocumented(model: type, prefix: str) -> list[str]:
        missing = []
        for name, field in model.model_fields.items():
            nested = getattr(field.annotation, "model_fields", None)
            if nested is not None:  # a section: its own fields carry the help
                missing += undocumented(field.annotation, f"{prefix}{name}.")
            elif not (field.description or "").strip():
                missing.append(prefix + name)
        return missing

    assert undocumented(ProverConfig, "") == [], undocumented(ProverConfig, "")


def test_precedence_defaults_file_flags(tmp_path: Path) -> None:
    path = tmp_path / "run.toml"
    path.write_text('[verifier]\ntimeout_s = 30.0\nworkers = 2\n[policy.sampling]\nn = 4\nseed = 7\n[benchmark]\nk = [1, 4]\n')
    from_file = resolve_config(path)
    got = (from_file.policy.sampling.seed, from_file.verifier.timeout_s, from_file.verifier.workers, from_file.benchmark.k)
    assert got == (7, 30.0, 2, [1, 4]), got
    assert from_file.verifier.memory_limit_mb == 16384, "untouched keys keep their defaults"
    flagged = resolve_config(path, {"verifier.timeout_s": 5.0, "verifier.workers": None, "training.steps": 3})
    assert flagged.verifier.timeout_s == 5.0, "a flag beats the file"
    assert flagged.verifier.workers == 2, "a flag left unset (None) does not override the file"
    assert flagged.training.steps == 3, "a flag beats the default"
    assert flagged.policy.sampling.seed == 7


@pytest.mark.parametrize(("toml", "message"), [
    ("[verifier]\ntimeout_s = -1\n", "run.toml: verifier.timeout_s: Input should be greater than 0 (got -1)"),
    ("[verifier]\ntimout_s = 3\n", "run.toml: verifier.timout_s: Extra inputs are not permitted"),
    ("[policy.sampling]\nn = 4\n[benchmark]\nk = [1, 8]\n",
     "run.toml: benchmark.k values [8] exceed policy.sampling.n = 4, the samples per problem"),
    ("[benchmark]\nk = [1, 0]\n", "run.toml: benchmark.k.1: Input should be greater than 0 (got 0)"),
    ("[policy]\nmax_model_len = 1024\n[policy.sampling]\nmax_tokens = 1024\n",
     "run.toml: policy.sampling.max_tokens = 1024 leaves no room for a prompt within policy.max_model_len = 1024 tokens"),
    ("[policy]\nengine = 'tgi'\n", "run.toml: policy.engine: Input should be 'vllm' or 'transformers' (got 'tgi')"),
    ("[verifier\n", "run.toml: invalid TOML"),
])
def test_bad_file_values_name_the_key(tmp_path: Path, toml: str, message: str) -> None:
    path = tmp_path / "run.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError) as info:
        resolve_config(path)
    assert str(info.value).startswith(f"{tmp_path}/{message}"), str(info.value)


def test_each_value_has_one_home() -> None:
    """Samples per prompt lives in policy.sampling.n only; the balancing speed in the model's
    own args; seeds with what they seed: the removed duplicates are rejected as unknown keys."""
    gone = ["rollout.group_size", "benchmark.samples", "training.bias_update_speed", "seed"]
    for key in gone:
        with pytest.raises(ConfigError, match=rf"command-line flags: {key}: Extra inputs are not permitted"):
            resolve_config(None, {key: 4})
    config = resolve_config(None, {"policy.sampling.n": 32, "benchmark.k": [1, 8, 32]})
    assert (config.policy.sampling.n, config.benchmark.k) == (32, [1, 8, 32]), config
    with pytest.raises(ConfigError) as info:
        resolve_config(None, {"policy.sampling.n": 8, "benchmark.k": [1, 8, 32]})
    assert str(info.value) == (
        "command-line flags: benchmark.k values [32] exceed policy.sampling.n = 8, the samples per "
        "problem that pass@k is estimated from"
    ), str(info.value)


def test_bad_flag_values_are_attributed_to_flags() -> None:
    with pytest.raises(ConfigError, match=r"^command-line flags: verifier.workers: Input should be greater than or equal to 1 \(got 0\)"):
        resolve_config(None, {"verifier.workers": 0})
    with pytest.raises(ConfigError, match="not found"):
        resolve_config(Path("/nonexistent/run.toml"))


def test_resolved_config_round_trips(tmp_path: Path) -> None:
    config = resolve_config(None, {"policy.sampling.seed": 3, "verifier.timeout_s": 12.5, "policy.sampling.n": 16})
    written = write_resolved_config(config, tmp_path / "out")
    assert written == tmp_path / "out" / RESOLVED_CONFIG_NAME
    data = tomllib.loads(written.read_text())
    assert data["verifier"]["timeout_s"] == 12.5 and data["policy"]["sampling"]["n"] == 16, data
    assert resolve_config(written) == config, "feeding the resolved file back reproduces the config"
