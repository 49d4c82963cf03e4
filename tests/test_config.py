from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from vidgpt.config import Config, ConfigError, dumps, load_config, reference
from vidgpt.distributed import detect_env, first_host
from vidgpt.model import FLAVORS, ModelConfig

DEMO = Path(__file__).resolve().parents[1] / "configs" / "demo_cpu.toml"


def test_demo_config_loads_and_builds() -> None:
    cfg = load_config(DEMO)
    assert cfg.model.flavor == "cpu" and cfg.training.zero_stage == 3
    model = cfg.model
    assert model.in_channels == 3 and model.text_dim == 16 and model.patch == 4 and model.causal
    diffusion = cfg.diffusion
    assert diffusion.process == "flow" and diffusion.prediction == "x0"
    assert cfg.objective.prompt_min_len == 0 and cfg.objective.loss_weighting == "snr_clamp"


def test_overrides_are_typed() -> None:
    cfg = load_config(DEMO, ["--optimizer.lr=3e-4", "--data.batch_size=8", "--training.activation_checkpointing=true",
                             "--objective.prompt_noise=[0.05, 0.1]", "--run_dir=runs/x", "--data.path=s3://b/p",
                             "--training.deepspeed={wall_clock_breakdown = true}"])
    assert cfg.optimizer.lr == 3e-4 and cfg.data.batch_size == 8 and cfg.training.activation_checkpointing is True
    assert cfg.objective.prompt_noise == [0.05, 0.1] and cfg.run_dir == "runs/x" and cfg.data.path == "s3://b/p"
    assert cfg.training.deepspeed == {"wall_clock_breakdown": True}
    assert isinstance(load_config(None, ["--optimizer.lr=1"]).optimizer.lr, float)  # ints are valid floats


@pytest.mark.parametrize(
    "override,match",
    [
        ("--optimizer.lrr=1e-3", r"optimizer\.lrr: unknown key; valid keys of optimizer: lr, betas"),
        ("--trainig.steps=3", r"trainig: unknown key"),
        ("--data.batch_size=two", r"data\.batch_size: expected int, got 'two'"),
        ("--data.batch_size=2.5", r"data\.batch_size: expected int"),
        ("--training.activation_checkpointing=1", r"training\.activation_checkpointing: expected bool"),
        ("--data.batch_size=0", r"data\.batch_size: must be >= 1, got 0"),
        ("--model.flavor=huge", r"model\.flavor: unknown flavor 'huge'"),
        ("--training.zero_stage=4", r"training\.zero_stage: must be 0, 1, 2 or 3"),
        ("--diffusion.process=edm", r"diffusion\.process: must be one of 'ddpm', 'flow'"),
        ("--optimizer.betas=[0.9]", r"optimizer\.betas: expected two values"),
        ("--model.in_channels=none", r"model\.in_channels: expected int, got 'none'"),
        ("--objective.prompt_noise=[0.2, 0.1]", r"objective: prompt_noise must satisfy"),
        ("--objective.prompt_noise=[0.1]", r"objective: prompt_noise: expected \[lo, hi\]"),
        ("--model.text_len=0", r"model: invalid ModelConfig"),
        ("--eval.sampling.context_scale=0", r"eval\.sampling: context_scale must be a number > 0"),
        ("--eval.sampling.steps=0", r"eval\.sampling: steps must be >= 1"),
        ("--eval.sampling.prompt_frames=0", r"eval\.sampling: prompt_frames must be >= 1"),
        ("optimizer.lr", r"overrides look like --section.key=value"),
    ],
)
def test_bad_configs_name_the_key(override: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match) as exc:
        load_config(DEMO, [override])
    assert "\n" not in str(exc.value)


def test_samples_need_prompts_shorter_than_the_training_clip() -> None:
    with pytest.raises(ConfigError, match=r"eval\.sampling\.prompt_frames: must be < data\.num_frames \(8\)"):
        load_config(DEMO, ["--eval.interval=2", "--eval.samples=1", "--eval.sampling.prompt_frames=8"])


def test_context_guidance_of_samples_needs_zero_frame_prompts() -> None:
    cfg = load_config(DEMO, ["--eval.sampling.context_scale=2"])  # the demo trains with prompt_min_len 0
    assert cfg.eval.sampling.context_scale == 2.0 and cfg.objective.prompt_min_len == 0
    with pytest.raises(ConfigError, match=r"eval\.sampling\.context_scale: .*prompt_min_len = 0"):
        load_config(DEMO, ["--eval.sampling.context_scale=2", "--objective.prompt_min_len=1"])


def test_bad_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[model\nflavor = 1")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)
    bad.write_text("model = 3\n")
    with pytest.raises(ConfigError, match=r"model: expected a \[model\] table"):
        load_config(bad)


def test_resolved_config_round_trips(tmp_path: Path) -> None:
    cfg = load_config(DEMO, ["--training.deepspeed={zero_optimization = {stage3_prefetch_bucket_size = 1000}}",
                             "--model.text_dim=0"])
    path = tmp_path / "config.toml"
    path.write_text(dumps(cfg))
    assert load_config(path) == cfg
    assert load_config(None) == Config()


def test_rank_detection_from_torchrun_and_slurm() -> None:
    env = detect_env({"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "1234"})
    assert (env.rank, env.world, env.local_rank, env.master_addr, env.master_port, env.source) == (
        3, 8, 1, "10.0.0.1", 1234, "torchrun")
    env = detect_env({"SLURM_PROCID": "5", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1", "SLURM_JOB_ID": "4242",
                      "SLURM_JOB_NODELIST": "gpu[07-08,11]"})
    assert (env.rank, env.world, env.local_rank, env.master_addr, env.source) == (5, 8, 1, "gpu07", "slurm")
    assert env.master_port == 20000 + 4242
    assert detect_env({}).world == 1 and detect_env({"SLURM_PROCID": "0", "SLURM_NTASKS": "1"}).source == "single"
    assert first_host("node12") == "node12" and first_host("n[1-2],m3") == "n1"


def test_every_model_field_is_settable_over_a_flavor() -> None:
    cfg = load_config(DEMO, ["--model.flavor=tiny", "--model.depth=3", "--model.hidden=48", "--model.heads=3",
                             "--model.patch=4", "--model.mlp_ratio=2", "--model.freq_dim=64",
                             "--model.rope_theta=500", "--model.temporal=bidirectional", "--model.text_dim=0"])
    built = cfg.model
    assert (built.depth, built.hidden, built.heads, built.patch, built.mlp_ratio, built.freq_dim) == (3, 48, 3, 4, 2.0, 64)
    assert built.rope_theta == 500.0 and built.temporal == "bidirectional" and not built.causal
    assert built.text_len == load_config(DEMO).model.text_len  # untouched keys keep their value
    assert built.in_channels == 3 and FLAVORS["tiny"].in_channels == 4
    assert load_config(DEMO).model.causal
    every = [f"--model.{f.name}={getattr(FLAVORS['base'], f.name)!r}".replace("'", '"')
             for f in dataclasses.fields(ModelConfig) if f.name != "flavor"]
    assert load_config(None, every).model == FLAVORS["base"]  # every ModelConfig field is a [model] key


@pytest.mark.parametrize(
    "override,match",
    [
        ("--model.depth=0", r"model: invalid ModelConfig: depth must be >= 1"),
        ("--model.heads=3", r"model: invalid ModelConfig: hidden=128 is not divisible by heads=3"),
        ("--model.heads=two", r"model\.heads: expected int, got 'two'"),
        ("--model.temporal=sideways", r"model\.temporal: must be one of .causal., .bidirectional."),
        ("--model.mlp_ratio=-1", r"mlp_ratio must be > 0"),
        ("--diffusion.ddim_eta=1.5", r"diffusion: ddim_eta must be >= 0 \(flow: in \[0, 1\]\)"),
        ("--diffusion.prediction=eps", r"diffusion\.prediction: must be one of 'velocity', 'x0'"),
        ("--model.width=64", r"model\.width: unknown key; valid keys of model: flavor, depth, hidden"),
    ],
)
def test_bad_model_fields_name_the_key(override: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match) as exc:
        load_config(DEMO, [override])
    assert "\n" not in str(exc.value)


def test_every_shipped_config_loads_and_the_papers_run_is_the_papers() -> None:
    configs = sorted((DEMO.parent).glob("*.toml"))
    assert len(configs) >= 2
    for path in configs:
        load_config(path)
    xl = load_config(DEMO.parent / "xl_256.toml")
    model = xl.model
    assert (model.depth, model.hidden, model.heads, model.patch, model.in_channels) == (28, 1152, 16, 2, 4)
    assert xl.training.activation_checkpointing and xl.data.num_frames == 33
    assert xl.objective.prompt_choices(33) == [1, 9, 17, 25] and xl.diffusion.process == "ddpm"
    assert xl.optimizer.lr == 2e-5 and xl.training.precision == "bf16" and xl.training.ema_decay == 0.9999


def test_the_config_reference_is_generated_from_the_field_docstrings() -> None:
    text = reference()
    for key in ("## [objective]", "| per_frame_noise | bool | false |", "## [eval.sampling]", "| flavor | str |",
                "| activation_checkpointing | bool | false |"):
        assert key in text, key
    docs = Path(__file__).resolve().parents[1] / "docs" / "config.md"
    assert docs.read_text() == text, "docs/config.md is stale: python -m vidgpt.config > docs/config.md"
