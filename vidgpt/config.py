"""Run configuration: one TOML file per run, `--section.key=value` overrides, type checks and the rules
that span sections.

    cfg = load_config("configs/demo_cpu.toml", ["--optimizer.lr=3e-4", "--data.batch_size=4"])

Each section is the config dataclass of the component that uses it, declared once beside its code
with a docstring per field (the reference; `python -m vidgpt.config` prints it):

    [model]       vidgpt.model.ModelConfig (`flavor`: the named size the other keys override)
    [diffusion]   vidgpt.diffusion.DiffusionConfig          the noising process
    [objective]   vidgpt.objective.FramePromptObjective     frame-as-prompt training loss
    [data]        vidgpt.components.data.DataConfig
    [optimizer]   vidgpt.components.engine.OptimizerConfig
    [training]    vidgpt.components.engine.TrainingConfig
    [checkpoint]  vidgpt.checkpoint.CheckpointConfig
    [logging]     vidgpt.components.tensorboard.LoggingConfig
    [eval]        vidgpt.components.validation.EvalConfig, with [eval.sampling] vidgpt.sampling.SamplingSpec

Unknown sections or keys, values of the wrong type and impossible values raise `ConfigError` with a
one-line message naming the key, before anything else starts. `dumps(cfg)` writes the resolved
configuration back as TOML; the trainer stores it in the run directory.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from vidgpt.checkpoint import CheckpointConfig
from vidgpt.cli import field_docs
from vidgpt.components.data import DataConfig
from vidgpt.components.engine import OptimizerConfig, TrainingConfig
from vidgpt.components.tensorboard import LoggingConfig
from vidgpt.components.validation import EvalConfig
from vidgpt.diffusion import DiffusionConfig, build_diffusion
from vidgpt.errors import ConfigError
from vidgpt.model import FLAVORS, ModelConfig
from vidgpt.objective import FramePromptObjective

__all__ = ["Config", "ConfigError", "dumps", "load_config", "from_dict", "apply_override", "to_dict"]

DEFAULT_FLAVOR = "tiny"


@dataclass
class Config:
    """A whole run: the run directory and one section per component."""

    run_dir: str = "runs/default"
    """Run directory: resolved config, checkpoints/, tensorboard/, samples/."""
    model: ModelConfig = field(default_factory=lambda: FLAVORS[DEFAULT_FLAVOR])
    """The network (`flavor` picks a named size from vidgpt.model.FLAVORS; the other keys override it)."""
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    """The noising process."""
    objective: FramePromptObjective = field(default_factory=FramePromptObjective)
    """The frame-as-prompt training objective."""
    data: DataConfig = field(default_factory=DataConfig)
    """The training data."""
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    """AdamW and its schedule."""
    training: TrainingConfig = field(default_factory=TrainingConfig)
    """Length, seed, precision and parallelism."""
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    """Sharded checkpoints."""
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    """TensorBoard and console."""
    eval: EvalConfig = field(default_factory=EvalConfig)
    """Validation and samples during training."""


def check_across_sections(cfg: Config) -> Config:
    """The rules that span sections (each section checks its own keys when it is built)."""
    if not cfg.run_dir:
        raise ConfigError("run_dir: must not be empty")
    e = cfg.eval
    if e.samples and e.sampling.prompt_frames >= cfg.data.num_frames:
        raise ConfigError(f"eval.sampling.prompt_frames: must be < data.num_frames ({cfg.data.num_frames}): the model "
                          f"never sees longer prompts, got {e.sampling.prompt_frames}")
    if e.sampling.context_scale != 1.0 and not cfg.objective.trains_without_prompt:
        raise ConfigError("eval.sampling.context_scale: guidance on the earlier frames needs a model trained with "
                          "0-frame prompts (objective.prompt_rule = 'uniform', prompt_min_len = 0)")
    if cfg.objective.teacher_forcing and e.sampling.chunk != 1:
        raise ConfigError(f"eval.sampling.chunk: a model trained with objective.teacher_forcing never saw two noisy "
                          f"frames together: sample it frame by frame (chunk = 1), got {e.sampling.chunk}")
    try:
        cfg.objective.check_process(build_diffusion(cfg.diffusion))
    except ValueError as exc:
        raise ConfigError(f"objective.loss_weighting: {exc}") from exc
    return cfg


# ----------------------------------------------------------------------------- building from TOML


def _check_type(value: Any, hint: Any, where: str) -> Any:
    """Return value if it matches the annotation (ints are accepted as floats), else raise."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(hint):
            if option is type(None) and value is None:
                return None
            if option is not type(None):
                try:
                    return _check_type(value, option, where)
                except ConfigError:
                    pass
        raise ConfigError(f"{where}: expected {_type_name(hint)}, got {value!r}")
    if origin is Literal:
        if value not in typing.get_args(hint):
            raise ConfigError(f"{where}: must be one of {', '.join(map(repr, typing.get_args(hint)))}, got {value!r}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        (item,) = typing.get_args(hint)
        return [_check_type(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a table, got {value!r}")
        return value
    if hint is Any:
        return value
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is int and isinstance(value, bool) or not isinstance(value, hint):
        raise ConfigError(f"{where}: expected {_type_name(hint)}, got {value!r}")
    if hint is float and not math.isfinite(value):
        raise ConfigError(f"{where}: must be a finite number, got {value!r}")
    return value


def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def _build(cls: type, data: dict[str, Any], where: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    base = None
    if cls is ModelConfig:  # [model]: a named flavor, then the keys given override it
        flavor = data.get("flavor", DEFAULT_FLAVOR)
        if flavor not in FLAVORS:
            raise ConfigError(f"model.flavor: unknown flavor {flavor!r}; choose one of {', '.join(FLAVORS)}")
        base, names = FLAVORS[flavor], ["flavor", *(n for n in names if n != "flavor")]
    unknown = sorted(set(data) - set(names))
    if unknown:
        key = f"{where}.{unknown[0]}" if where else unknown[0]
        raise ConfigError(f"{key}: unknown key; valid keys{' of ' + where if where else ''}: {', '.join(names)}")
    kwargs = {}
    for name, value in data.items():
        key = f"{where}.{name}" if where else name
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            if not isinstance(value, dict):
                raise ConfigError(f"{key}: expected a [{key}] table, got {value!r}")
            kwargs[name] = _build(hint, value, key)
        else:
            kwargs[name] = _check_type(value, hint, key)
    try:
        return dataclasses.replace(base, **kwargs) if base is not None else cls(**kwargs)
    except ConfigError:
        raise
    except ValueError as exc:  # a section's own check, which does not know its section's name
        raise ConfigError(f"{where}: {exc}") from exc


def _parse_value(text: str) -> Any:
    """An override value: a TOML literal (numbers, booleans, arrays, quoted strings) or a bare string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_override(data: dict[str, Any], override: str) -> None:
    """Apply '--section.key=value' (or 'section.key=value') to a nested dict."""
    body = override[2:] if override.startswith("--") else override
    if "=" not in body:
        raise ConfigError(f"{override}: overrides look like --section.key=value")
    dotted, text = body.split("=", 1)
    keys = dotted.split(".")
    node = data
    for k in keys[:-1]:
        node = node.setdefault(k, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{dotted}: {k} is not a section")
    node[keys[-1]] = _parse_value(text)


def from_dict(data: dict[str, Any]) -> Config:
    return check_across_sections(_build(Config, data, ""))


def load_config(path: str | Path | None, overrides: list[str] = ()) -> Config:  # type: ignore[assignment]
    """Read a TOML file (or start from defaults), apply overrides, type-check and validate."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = tomllib.loads(Path(path).read_text())
        except FileNotFoundError as exc:
            raise ConfigError(f"{path}: no such config file") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML ({exc})") from exc
    for override in overrides:
        apply_override(data, override)
    return from_dict(data)


def to_dict(cfg: Config) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def dumps(cfg: Config) -> str:
    """The configuration as TOML (top-level keys, then one table per section)."""
    data = to_dict(cfg)
    lines = [f"{k} = {_toml_value(v)}" for k, v in data.items() if not isinstance(v, dict)]
    for section, values in data.items():
        if isinstance(values, dict):
            lines += ["", f"[{section}]"]
            lines += [f"{k} = {_toml_value(v)}" for k, v in values.items() if v is not None]
    return "\n".join(lines) + "\n"


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {_toml_value(x)}" for k, x in v.items() if x is not None) + "}"
    raise TypeError(f"cannot write {v!r} as TOML")


# ----------------------------------------------------------------------------- the reference


def reference() -> str:
    """Every section and key with its type, default and docstring (Markdown): docs/config.md."""
    lines = ["# Run configuration reference", "",
             "Generated by `python -m vidgpt.config > docs/config.md` from the config dataclasses' field "
             "docstrings (the one place each setting is declared). Override any key with `--section.key=value`.",
             ""]
    defaults = to_dict(Config())

    def table(cls: type, values: dict[str, Any], name: str) -> None:
        docs = field_docs(cls)
        hints = typing.get_type_hints(cls)
        lines.extend([f"## [{name}]", "", f"`{cls.__module__}.{cls.__qualname__}`: {_first_line(cls)}", "",
                      "| key | type | default | meaning |", "|---|---|---|---|"])
        nested = []
        fields = dataclasses.fields(cls)
        if cls is ModelConfig:  # the flavor first: the other keys override it
            fields = sorted(fields, key=lambda f: f.name != "flavor")
            lines.append(f"| flavor | str | \"{DEFAULT_FLAVOR}\" | named size from vidgpt.model.FLAVORS "
                         f"({', '.join(FLAVORS)}); the keys below override it (defaults shown: tiny's) |")
        for f in fields:
            if cls is ModelConfig and f.name == "flavor":
                continue
            if dataclasses.is_dataclass(hints[f.name]):
                nested.append((hints[f.name], values[f.name], f"{name}.{f.name}"))
                continue
            hint = hints[f.name]
            kind = (" / ".join(map(_toml_value, typing.get_args(hint))) if typing.get_origin(hint) is Literal
                    else _type_name(hint)).replace("|", "\\|")
            default = _toml_value(values[f.name]) if values[f.name] is not None else "(derived)"
            lines.append(f"| {f.name} | {kind} | {default} | {docs.get(f.name, '').replace('|', '/')} |")
        lines.append("")
        for sub, subvalues, subname in nested:
            table(sub, subvalues, subname)

    lines.append(f"Top level: `run_dir` (default {_toml_value(defaults['run_dir'])}): "
                 f"{field_docs(Config)['run_dir']}")
    lines.append("")
    hints = typing.get_type_hints(Config)
    for f in dataclasses.fields(Config):
        if dataclasses.is_dataclass(hints[f.name]):
            table(hints[f.name], defaults[f.name], f.name)
    return "\n".join(lines)


def _first_line(cls: type) -> str:
    return " ".join((cls.__doc__ or "").strip().split("\n\n")[0].split())


if __name__ == "__main__":
    sys.stdout.write(reference())
