"""Command options as typed dataclasses: each option is defined once, with its help in the field's
metadata, and reaches its dataclass one way, from the command line or from a `--config` YAML file.

A command declares its options as a dataclass whose fields come from `option(...)` (or from the
shared definitions below: `model_option()`, `dtype_option()`, ...). `add_command` turns the fields
into flags; `read_options` builds the dataclass from the flags given, over the YAML file's values,
over the field defaults; the dataclass's `__post_init__` checks the result.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imsm.config import FUSION_MODES
from imsm.errors import IMSMError
from imsm.yaml_file import load_yaml, read_yaml_mapping

DEFAULT_MODEL = "smollm2-135m"
CHAT_TEMPLATE_CHOICES = ("auto", "on", "off")
# `imsm eval`'s batch size, and an experiment's when its `eval:` section names none.
EVAL_BATCH_SIZE = 8
CONFIG_HELP = "YAML file setting any of these options (the command line wins)"


def option(
    default: Any = dataclasses.MISSING,
    *,
    help: str,
    default_factory: Callable[[], Any] | Any = dataclasses.MISSING,
    choices: tuple[str, ...] | None = None,
    positive: bool = False,
    positional: bool = False,
    repeat: bool = False,
) -> Any:
    """A dataclass field that is also a command-line option.

    Args:
        default: The default; none makes the option required.
        help: What the option does, as `--help` shows it (the default is appended).
        default_factory: For mutable defaults, as in `dataclasses.field`.
        choices: The values allowed; checked by argparse and by `check_options`.
        positive: An integer that must be >= 1; checked by argparse and by `check_options`.
        positional: A positional argument rather than a `--flag`.
        repeat: A list given by repeating the flag (`--prompt a --prompt b`) instead of by commas.
    """
    metadata = {"help": help, "choices": choices, "positive": positive, "positional": positional, "repeat": repeat}
    return dataclasses.field(default=default, default_factory=default_factory, metadata=metadata)


# The options several commands share, each defined once. Functions, because a dataclass field
# object belongs to the one class it is declared in.


def model_option() -> Any:
    return option(DEFAULT_MODEL, help="embedded model name, local directory, or Hugging Face id")


def dtype_option() -> Any:
    return option("auto", help="weights dtype: auto (bf16 only where computed natively), bf16 or fp32")


def device_option() -> Any:
    return option(None, help="cpu or cuda[:N] (default: CUDA if available)")


def trust_remote_code_option() -> Any:
    return option(False, help="let transformers run code shipped with the model")


def data_dir_option() -> Any:
    return option(None, help="directory laid out like shared/data (default: $IMSM_DATA_DIR, else the hub)")


def peft_option() -> Any:
    return option("lora", help="peft method (lora, dora, adalora, ia3, loramoe, or any peft layer tuner by name)")


def chat_template_option() -> Any:
    return option(
        "auto", choices=CHAT_TEMPLATE_CHOICES, help="wrap prompts in the model's chat template; auto: when it has one"
    )


def system_option() -> Any:
    return option(None, help="system message for the chat template (the template's default if omitted)")


def adapter_option() -> Any:
    return option(None, help="adapter directory (IMSM or plain peft); the base model alone if omitted")


@dataclass
class DecodingOptions:
    """How `imsm generate` and `imsm chat` pick tokens: greedy unless --do-sample (transformers'
    generation options, applied to the fused logits)."""

    do_sample: bool = option(False, help="sample instead of taking the likeliest token")
    temperature: float | None = option(None, help="sampling temperature (transformers' default: 1.0)")
    top_k: int | None = option(None, help="sample among the k likeliest tokens (transformers' default: 50; 0: all)")
    top_p: float | None = option(None, help="sample within the smallest set of tokens holding this probability")
    min_p: float | None = option(None, help="drop tokens less likely than min_p times the likeliest")
    repetition_penalty: float | None = option(None, help="divide the logits of tokens already present (1: none)")
    stop: list[str] = option(default_factory=list, repeat=True, help="stop a reply at this text (repeatable)")
    seed: int | None = option(None, help="seed for sampling, so a run can be repeated")
    compile: bool = option(
        False,
        help="decode with a static KV cache and the per-token step compiled by torch.compile (CUDA graphs "
        "on a GPU): the same tokens, faster per token on a GPU once compiled (docs/generation.md)",
    )

    def generation_options(self) -> dict[str, Any]:
        """The `IMSMModel.generate` keywords these options set (unset ones left to transformers)."""
        from transformers import CompileConfig  # here: transformers is slow to import for `--help`

        chosen = {
            "cache_implementation": "static" if self.compile else None,
            "compile_config": CompileConfig() if self.compile else None,
            "do_sample": self.do_sample,
            "temperature": self.temperature,
            "top_k": self.top_k,
            "top_p": self.top_p,
            "min_p": self.min_p,
            "repetition_penalty": self.repetition_penalty,
            "stop_strings": list(self.stop) or None,
        }
        return {name: value for name, value in chosen.items() if value is not None}


# How a saved adapter is run: `imsm eval`, `imsm generate` and an experiment's `variants`.


def fusion_override_option() -> Any:
    return option(
        None,
        choices=FUSION_MODES,
        help="run the adapter with this fusion instead of its own: none (vanilla PEFT) or mean (50/50 mix, no "
        "gate) work on any adapter; imsm and no-query need a gate trained that way",
    )


def adapter_scale_option() -> Any:
    return option(
        1.0,
        help="scale the adapter's change by this factor: 0 = the base model, 1 = the adapter as trained "
        "(LoRA, AdaLoRA and LoRAMoE by their scaling, (IA)3 by moving its vectors towards 1; DoRA refused)",
    )


def reduce_intruders_option() -> Any:
    return option(
        None,
        help="apply peft's reduce_intruder_dimension to a vanilla LoRA adapter, keeping this share λ of each "
        "intruder direction (0.75 is peft's default; lower removes more; (IA)3, DoRA and other methods refused)",
    )


# What `imsm eval` and an experiment's `eval:` section share.


def eval_limit_option() -> Any:
    return option(None, positive=True, help="evaluate the first N examples of each task only")


def eval_batch_size_option() -> Any:
    return option(EVAL_BATCH_SIZE, positive=True, help="examples decoded together")


def max_new_tokens_option() -> Any:
    return option(None, positive=True, help="override each task's generation cap")


def likelihood_option() -> Any:
    return option(True, help="also run the teacher-forced pass (gold NLL, yes/no margin and AUC)")


def generate_option() -> Any:
    return option(
        True,
        help="generate answers for generated-answer tasks; off, only the teacher-forced pass runs (gold NLL, "
        "yes/no margin) and no answer is scored (multiple-choice and drift tasks never generate)",
    )


def check_options(options: Any) -> None:
    """Refuse a value outside its field's `choices`, or a `positive` field below 1; call from
    `__post_init__`, so values from a YAML file are held to what argparse checks on the command line."""
    for f in dataclasses.fields(options):
        value = getattr(options, f.name)
        if value is None:
            continue
        choices = f.metadata.get("choices")
        if choices and value not in choices:
            raise IMSMError(f"{f.name} must be one of {', '.join(choices)}, got {value!r}")
        if f.metadata.get("positive") and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise IMSMError(f"{f.name} must be a positive integer, got {value!r}")


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def comma_list(text: str) -> list[str]:
    """argparse type: `a, b,c` -> ["a", "b", "c"]."""
    return [item.strip() for item in text.split(",") if item.strip()]


def positive_int_list(text: str) -> list[int]:
    """argparse type: `60, 120` -> [60, 120], each a positive integer."""
    return [positive_int(item) for item in comma_list(text)]


def key_values(text: str) -> dict[str, Any]:
    """argparse type: `r=8,lora_dropout=0` -> {"r": 8, "lora_dropout": 0}, values read as YAML."""
    values = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep:
            raise argparse.ArgumentTypeError(f"expected key=value, got {item!r}")
        values[key.strip()] = load_yaml(value)
    return values


def _kind(annotation: Any) -> Any:
    """`int | None` -> int, `list[str]` -> list, `Path` -> Path."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
    return typing.get_origin(annotation) or annotation


def _element_type(annotation: Any) -> Any:
    """`list[int] | None` -> int; anything else -> None. (Annotations may still be strings.)"""
    if isinstance(annotation, str):
        return int if annotation.replace(" ", "").startswith("list[int]") else None
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
    args = typing.get_args(annotation)
    return args[0] if typing.get_origin(annotation) is list and args else None


def _parse(f: dataclasses.Field, kind: Any) -> Callable[[str], Any]:
    """How one field's text is read, on the command line and from a string in a YAML file."""
    if f.metadata.get("positive"):
        return positive_int
    if kind is list and not f.metadata.get("repeat"):
        return positive_int_list if _element_type(f.type) is int else comma_list
    return {dict: key_values, int: int, float: float, Path: Path}.get(kind, str)


def _required(f: dataclasses.Field) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


def _fields(cls) -> list[tuple[dataclasses.Field, Any]]:
    hints = typing.get_type_hints(cls)
    return [(f, _kind(hints[f.name])) for f in dataclasses.fields(cls)]


def _help(f: dataclasses.Field, kind: Any) -> str:
    text = f.metadata.get("help", "")
    if _required(f):
        text += "" if f.metadata.get("positional") else " (required)"
    elif kind is bool:
        text += f" (default: {'on' if f.default else 'off'})"
    elif kind is list:
        text += " (repeat for several)" if f.metadata.get("repeat") else " (comma-separated)"
    elif kind is dict:
        text += " (key=value,key=value)"
    elif f.default is not None:
        text += f" (default: {f.default})"
    return text.replace("%", "%%")  # argparse formats help with %


def add_options(parser: argparse.ArgumentParser, cls) -> None:
    """One argument per field of the dataclass `cls`: typed from its annotation, helped from its
    metadata. Flags left out are left out of the namespace, so `read_options` can tell them apart."""
    for f, kind in _fields(cls):
        if f.metadata.get("positional"):
            parser.add_argument(f.name, type=_parse(f, kind), help=_help(f, kind))
            continue
        flag = "--" + f.name.replace("_", "-")
        settings: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS, "help": _help(f, kind)}
        if kind is bool:
            settings["action"] = argparse.BooleanOptionalAction
        elif f.metadata.get("repeat"):
            settings["action"] = "append"
        else:
            settings["type"] = _parse(f, kind)
            settings["choices"] = f.metadata.get("choices")
        parser.add_argument(flag, **settings)


def add_command(commands, name: str, run: Callable[[Any], int], cls, config_file: bool = True, **texts):
    """A subcommand whose options are the fields of `cls` and whose handler `run` receives them
    built; `texts` are `help` and `description`. With `config_file`, `--config FILE.yaml` too."""
    parser = commands.add_parser(name, **texts)
    add_options(parser, cls)
    if config_file:
        parser.add_argument("--config", type=Path, help=CONFIG_HELP)
    parser.set_defaults(handler=run, options_class=cls)
    return parser


def read_config_file(path: Path, cls) -> dict[str, Any]:
    """The options a YAML file sets for `cls`, keys as flags or field names, read like flags."""
    raw = read_yaml_mapping(path, "config file", "of option names to values")
    fields = {f.name: (f, kind) for f, kind in _fields(cls) if not f.metadata.get("positional")}
    values = {str(key).replace("-", "_"): value for key, value in raw.items()}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        close = [match for key in unknown for match in difflib.get_close_matches(key, list(fields), n=1)]
        hint = f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""
        raise IMSMError(
            f"config file {str(path)!r} sets unknown option(s) {unknown}{hint}; known: {', '.join(sorted(fields))}"
        )
    for name, value in values.items():
        f, kind = fields[name]
        if f.metadata.get("repeat") and isinstance(value, str):  # one value of a repeatable flag
            values[name] = [value]
            continue
        parse = _parse(f, kind)
        if isinstance(value, str) and parse is not str:  # "1e-3", "a,b": read as the flag would be
            try:
                values[name] = parse(value)
            except (argparse.ArgumentTypeError, ValueError) as error:
                raise IMSMError(f"config file {str(path)!r}: {name}: {error}") from None
    return values


def read_options(args: argparse.Namespace):
    """The options dataclass of the parsed command: defaults, then the --config file, then the flags given."""
    cls = args.options_class
    values = read_config_file(args.config, cls) if getattr(args, "config", None) is not None else {}
    values.update({f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)})
    for f in dataclasses.fields(cls):
        if _required(f) and f.name not in values:
            raise IMSMError(f"--{f.name.replace('_', '-')} is required (on the command line or in the --config file)")
    return cls(**values)
