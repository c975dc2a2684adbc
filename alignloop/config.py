"""Typed stage configs, YAML files and command-line overrides.

Each stage has one pydantic config (`SFTConfig` for `alignloop sft`, ...). Its field
descriptions are the `--help` text: `config_command` turns every field into an option
(`lora_rank` -> `--lora-rank`), so the command line, the YAML file and the Python API share
one set of names. Precedence: field defaults < `--config file.yaml` < command-line options.
The resolved config is saved beside every output (`save_config`).

We build the commands with click (which typer wraps) because the options are generated
from the config classes; a hand-written typer signature would repeat every field.
"""

from __future__ import annotations

import re
import types
import typing
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar, get_args, get_origin

import click
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

C = TypeVar("C", bound="StageConfig")

DEFAULT_MODEL = "smollm2-135m-instruct"


class ConfigError(ValueError):
    """A bad config file or option; the message names the file and the field."""


class StageConfig(BaseModel):
    """Base of every stage config: unknown keys are errors (a typo never passes silently)."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    @model_validator(mode="before")
    @classmethod
    def _choice_words_not_booleans(cls, data: Any) -> Any:
        """`reward: true` in a YAML file is a boolean; a choice field that has the word "true"
        (or "false") among its choices takes it as that word."""
        if not isinstance(data, dict):
            return data
        out = dict(data)
        for name, value in data.items():
            info = cls.model_fields.get(name)
            if (isinstance(value, bool) and info is not None and get_origin(info.annotation) is Literal
                    and str(value).lower() in get_args(info.annotation)):
                out[name] = str(value).lower()
        return out


class LoraOptions(BaseModel):
    """Weight dtype, and what is trained: LoRA adapters or every weight."""

    heading: ClassVar[str] = "Model and LoRA options"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="Weight dtype: auto = float32 on CPU, bfloat16 on a GPU that has it; a half type on a "
                           "CPU without fast kernels for it (no AVX-512) is float32, with a notice."
    )
    lora: bool = Field(True, description="Train LoRA adapters (peft) instead of all weights.")
    lora_rank: int = Field(16, ge=1, description="LoRA rank r.")
    lora_alpha: float = Field(32.0, gt=0, description="LoRA alpha (the update is scaled by alpha / r).")
    lora_dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the LoRA input.")
    lora_targets: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj", "gate_proj"],
        description="Module names that get LoRA adapters (comma-separated on the command line).",
    )


class ModelOptions(LoraOptions):
    """How a causal LM is loaded and what is trained."""

    model: str = Field(DEFAULT_MODEL, description="Model: a registry name (smollm2-135m-instruct), a local folder or a Hugging Face id.")


def _unwrap_optional(annotation: Any) -> tuple[Any, bool]:
    origin = get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return annotation, False


def _click_type(annotation: Any) -> tuple[Any, bool]:
    """(click type, is_list) for a field annotation."""
    annotation, _ = _unwrap_optional(annotation)
    origin = get_origin(annotation)
    if origin is Literal:
        return click.Choice([str(a) for a in get_args(annotation)]), False
    if origin is list:
        return str, True
    if annotation in (int, float, str, bool):
        return annotation, False
    if annotation is Path:
        return click.Path(path_type=Path), False
    return str, False


def option_name(field: str) -> str:
    return "--" + field.replace("_", "-")


def option_sections(cls: type[BaseModel]) -> list[tuple[str, list[str]]]:
    """The fields of `cls` in `--help` order, in sections: first the command's own fields (those
    its class declares; required ones at the top), then the shared ones it inherits, one section
    per option group under the group's `heading` (pydantic itself lists inherited fields first)."""
    def declared_in(name: str) -> int:  # position in the MRO of the class that declares the field
        return next(i for i, k in enumerate(cls.__mro__) if name in vars(k).get("__annotations__", {}))

    names = sorted(cls.model_fields, key=lambda n: (declared_in(n), not cls.model_fields[n].is_required()))
    sections: dict[str, list[str]] = {"Options": []}
    for name in names:
        group = cls.__mro__[declared_in(name)]
        title = "Options" if group is cls else getattr(group, "heading", "Shared options")
        sections.setdefault(title, []).append(name)
    return [(title, fields) for title, fields in sections.items() if fields]


class StageCommand(click.Command):
    """A command whose `--help` shows its options in `sections` (title, parameter names); the
    parameters in no section (--config, --help, ...) come last, under "Other options"."""

    def __init__(self, *args: Any, sections: list[tuple[str, list[str]]], **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.sections = sections

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        params = {p.name: p for p in self.get_params(ctx)}
        placed = {n for _, names in self.sections for n in names}
        sections = [*self.sections, ("Other options", [n for n in params if n not in placed])]
        for title, names in sections:
            rows = [r for r in (params[n].get_help_record(ctx) for n in names if n in params) if r]
            if rows:
                with formatter.section(title):
                    formatter.write_dl(rows)


def _options_for(cls: type[StageConfig], positional: tuple[str, ...]) -> list[click.Parameter]:
    params: list[click.Parameter] = []
    for name in [n for _, names in option_sections(cls) for n in names]:
        field = cls.model_fields[name]
        ctype, is_list = _click_type(field.annotation)
        help_text = field.description or ""
        if field.is_required():
            help_text += " [required]"
        elif not callable(field.default_factory):
            default = field.default
            if default is not None and default != "":
                shown = ",".join(default) if isinstance(default, list) else default
                help_text += f" [default: {shown}]"
        elif field.default_factory is not None:
            default = field.default_factory()
            if isinstance(default, list) and default:
                help_text += f" [default: {','.join(map(str, default))}]"
        if name in positional:
            params.append(click.Argument([name], type=ctype, required=False))
            continue
        if ctype is bool:
            flag = option_name(name)
            params.append(click.Option([f"{flag}/--no-{flag[2:]}", name], default=None, help=help_text))
        else:
            params.append(click.Option([option_name(name), name], type=ctype, default=None, help=help_text,
                                       metavar="A,B,..." if is_list else None))
    return params


class _Yaml12Loader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2 booleans: only true / false (any case) are booleans,
    so `mixed_precision: no` (Accelerate's own spelling) is the string "no", not False."""


_BOOL = "tag:yaml.org,2002:bool"
_Yaml12Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != _BOOL]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_Yaml12Loader.add_implicit_resolver(_BOOL, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))


def parse_yaml(text: str) -> Any:
    """YAML text as Python values, with YAML 1.2 booleans (`yes`, `no`, `on`, `off` stay strings)."""
    return yaml.load(text, Loader=_Yaml12Loader)


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: no such config file")
    try:
        data = parse_yaml(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise ConfigError(f"{where}: invalid YAML ({getattr(err, 'problem', err)})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of option: value")
    return data


def build_config(cls: type[C], values: dict[str, Any], where: str = "options") -> C:
    """Validate `values` into `cls`; errors name where the values came from and the field."""
    try:
        return cls.model_validate(values)
    except ValidationError as err:
        first = err.errors()[0]
        loc = ".".join(str(x) for x in first["loc"]) or "?"
        msg = first["msg"].removeprefix("Value error, ")
        if first["type"] == "extra_forbidden":
            msg = f"unknown option (known: {', '.join(cls.model_fields)})"
        raise ConfigError(f"{where}: field '{loc}': {msg}") from None


def resolve_config(cls: type[C], config_file: str | Path | None, overrides: dict[str, Any]) -> C:
    """Defaults < YAML file < command-line overrides (None = not given)."""
    values: dict[str, Any] = {}
    where = "command line"
    if config_file:
        values.update({k.replace("-", "_"): v for k, v in load_yaml(config_file).items()})
        where = f"{config_file} + command line"
    for key, value in overrides.items():
        if value is None:
            continue
        field = cls.model_fields.get(key)
        if field is not None and _click_type(field.annotation)[1] and isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        values[key] = value
    return build_config(cls, values, where)


def save_config(config: BaseModel, path: str | Path) -> None:
    from alignloop.data.io import atomic_path

    data = config.model_dump(mode="json")
    with atomic_path(path) as tmp:
        Path(tmp).write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True), encoding="utf-8")


def input_params() -> list[click.Parameter]:
    """--input-format, --split, --columns: how a command reads its input files (data/io.py)."""
    from alignloop.data.formats import FORMATS

    return [
        click.Option(["--input-format", "input_format"], type=click.Choice(list(FORMATS)), default=None,
                     help="Read every input file as this format (default: recognised from each row's fields)."),
        click.Option(["--split", "split"], default=None,
                     help="Split of a Hugging Face hub id or DatasetDict folder given without ':SPLIT' [default: train]."),
        click.Option(["--columns", "columns"], default=None, metavar="FIELD=COLUMN,...",
                     help="Input column names for alignloop's fields, e.g. prompt=question,chosen=better,rejected=worse."),
    ]


def input_options(input_format: str | None = None, split: str | None = None, columns: str | None = None):
    """The InputOptions of those three options (a bad --columns is a ConfigError)."""
    from alignloop.data.formats import FormatError, parse_columns
    from alignloop.data.io import InputOptions

    try:
        return InputOptions(format=input_format, split=split, columns=parse_columns(columns))
    except FormatError as err:
        raise ConfigError(str(err)) from None


def config_command(
    cls: type[C],
    run: typing.Callable[[C], Any],
    name: str,
    help: str,
    positional: tuple[str, ...] = (),
    extra_params: list[click.Parameter] | None = None,
) -> click.Command:
    """A click command whose options are the fields of `cls` plus `--config FILE`."""

    # a command with an input file or folder also gets --input-format, --split, --columns
    takes_files = any(isinstance(_click_type(f.annotation)[0], click.Path) and n != "out"
                      for n, f in cls.model_fields.items())
    inputs = input_params() if takes_files else []

    def callback(config: str | None = None, **values: Any) -> Any:
        from alignloop.data.io import reading

        extra = {p.name: values.pop(p.name) for p in (extra_params or [])}
        options = input_options(**{p.name: values.pop(p.name) for p in inputs})
        cfg = resolve_config(cls, config, values)
        with reading(options):
            return run(cfg, **extra) if extra else run(cfg)

    params = _options_for(cls, positional) + list(extra_params or []) + inputs
    params.append(click.Option(["--config", "config"], type=click.Path(dir_okay=False), default=None,
                               help="YAML file of options; command-line options override it."))
    return StageCommand(name, callback=callback, params=params, help=help, sections=option_sections(cls),
                        context_settings={"max_content_width": 110, "show_default": False})
