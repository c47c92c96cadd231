# Copyright 2026 The rllm_fully_async Authors. Licensed under the Apache License, Version 2.0.
"""SGLang 0.5.6's own source, read from its wheel with ``ast``: the contract our SGLang tests check against.

SGLang cannot be installed (let alone imported) on a CPU-only machine, but its wheel is pure Python. These
helpers read the released files and turn them into what a test can compare with: the HTTP route table of
``srt/entrypoints/http_server.py``, the request dataclasses of ``srt/managers/io_struct.py``, the keyword
arguments of ``SamplingParams``, an ``argparse`` parser built from ``ServerArgs.add_cli_args``, and the keys a
function puts into the dicts it answers with. Nothing is typed in by hand, so a name that 0.5.6 lacks fails.

The wheel is downloaded once (``pip download --no-deps sglang==0.5.6``) into ``~/.cache/rllm_fully_async`` (or
``$RLLM_SGLANG_WHEEL_DIR``) and checked against its published sha256.
"""

from __future__ import annotations

import argparse
import ast
import functools
import hashlib
import json
import os
import re
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SGLANG_VERSION = "0.5.6"
WHEEL_NAME = f"sglang-{SGLANG_VERSION}-py3-none-any.whl"
WHEEL_SHA256 = "c32b6a5bafcda41c2f299ed4a1fbe8401946076b4e010fe8feb5b8a9712bf66b"

HTTP_SERVER = "sglang/srt/entrypoints/http_server.py"
IO_STRUCT = "sglang/srt/managers/io_struct.py"
SERVER_ARGS = "sglang/srt/server_args.py"
SAMPLING_PARAMS = "sglang/srt/sampling/sampling_params.py"
TOKENIZER_MANAGER = "sglang/srt/managers/tokenizer_manager.py"
TOKENIZER_COMMUNICATOR = "sglang/srt/managers/tokenizer_communicator_mixin.py"
MODEL_RUNNER = "sglang/srt/model_executor/model_runner.py"


def wheel_cache_dir() -> Path:
    return Path(os.environ.get("RLLM_SGLANG_WHEEL_DIR") or Path.home() / ".cache" / "rllm_fully_async")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def fetch_wheel() -> Path:
    """The sglang 0.5.6 wheel, downloaded on first use; raises ``RuntimeError`` saying how to provide it."""
    cache = wheel_cache_dir()
    wheel = cache / WHEEL_NAME
    if not wheel.exists():
        cache.mkdir(parents=True, exist_ok=True)
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            f"sglang=={SGLANG_VERSION}",
            "-d",
            str(cache),
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        if proc.returncode != 0 or not wheel.exists():
            raise RuntimeError(
                f"the SGLang contract tests need the sglang {SGLANG_VERSION} wheel and could not download it "
                f"({' '.join(cmd)} exited {proc.returncode}):\n{proc.stderr[-2000:]}\n"
                f"Download it where PyPI is reachable and put {WHEEL_NAME} in {cache} "
                "(or point RLLM_SGLANG_WHEEL_DIR at its folder)."
            )
    digest = _sha256(wheel)
    if digest != WHEEL_SHA256:
        raise RuntimeError(
            f"{wheel} has sha256 {digest}, not the published {WHEEL_SHA256}: delete it to download again"
        )
    return wheel


@dataclass(frozen=True)
class Route:
    path: str
    methods: frozenset[str]
    handler: str
    body_class: str | None  # the io_struct dataclass FastAPI builds from the JSON body, if any


@dataclass(frozen=True)
class Field:
    name: str
    annotation: str
    has_default: bool


class SGLangSource:
    """Parsed files of one sglang wheel."""

    def __init__(self, wheel: Path) -> None:
        self.wheel = wheel
        self._zip = zipfile.ZipFile(wheel)
        self._modules: dict[str, ast.Module] = {}

    def module_source(self, path: str) -> str:
        return self._zip.read(path).decode()

    def module(self, path: str) -> ast.Module:
        if path not in self._modules:
            self._modules[path] = ast.parse(self.module_source(path), filename=path)
        return self._modules[path]

    def class_def(self, path: str, name: str) -> ast.ClassDef:
        for node in self.module(path).body:
            if isinstance(node, ast.ClassDef) and node.name == name:
                return node
        raise KeyError(f"class {name} not found in {path}")

    def function(self, path: str, qualname: str) -> ast.FunctionDef | ast.AsyncFunctionDef:
        """``"func"`` at module level or ``"Class.method"``."""
        cls_name, _, func_name = qualname.rpartition(".")
        body = self.class_def(path, cls_name).body if cls_name else self.module(path).body
        for node in body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == func_name:
                return node
        raise KeyError(f"{qualname} not found in {path}")

    # ------------------------------------------------------------------ HTTP routes

    @functools.cached_property
    def routes(self) -> dict[str, Route]:
        """``http_server.py``'s route table: path -> methods, handler and body dataclass."""
        table: dict[str, Route] = {}
        for node in self.module(HTTP_SERVER).body:
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            body_class = None
            for arg in node.args.args:
                if isinstance(arg.annotation, ast.Name) and arg.annotation.id.endswith(("ReqInput", "Req")):
                    body_class = arg.annotation.id
            for deco in node.decorator_list:
                if not (isinstance(deco, ast.Call) and isinstance(deco.func, ast.Attribute)):
                    continue
                if not (isinstance(deco.func.value, ast.Name) and deco.func.value.id == "app"):
                    continue
                if not deco.args or not isinstance(deco.args[0], ast.Constant):
                    continue  # e.g. a route named by an environment variable
                kind = deco.func.attr
                if kind in ("get", "post", "put", "delete"):
                    methods = {kind.upper()}
                elif kind == "api_route":
                    methods = set()
                    for kw in deco.keywords:
                        if kw.arg == "methods":
                            methods = set(ast.literal_eval(kw.value))
                else:
                    continue
                path = deco.args[0].value
                table[path] = Route(path, frozenset(methods), node.name, body_class)
        return table

    # ------------------------------------------------------------------ request dataclasses

    def dataclass_fields(self, name: str, path: str = IO_STRUCT) -> dict[str, Field]:
        """Fields of an io_struct dataclass, including those of its io_struct base classes."""
        cls = self.class_def(path, name)
        fields: dict[str, Field] = {}
        for base in cls.bases:
            if isinstance(base, ast.Name) and base.id not in ("ABC", "object"):
                fields.update(self.dataclass_fields(base.id, path))
        for stmt in cls.body:
            if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
                fields[stmt.target.id] = Field(
                    stmt.target.id, ast.unparse(stmt.annotation), stmt.value is not None
                )
        return fields

    def literal_choices(self, name: str, path: str = IO_STRUCT, field: str = "mode") -> tuple[str, ...]:
        """The values of a ``Literal[...]`` field annotation."""
        annotation = self.dataclass_fields(name, path)[field].annotation
        match = re.fullmatch(r"Literal\[(.*)\]", annotation)
        if not match:
            raise ValueError(f"{name}.{field} is {annotation}, not a Literal")
        return tuple(ast.literal_eval(f"[{match.group(1)}]"))

    def sampling_params_args(self) -> dict[str, str]:
        """``SamplingParams.__init__``'s keyword arguments -> annotations (``SamplingParams(**params)``)."""
        init = self.function(SAMPLING_PARAMS, "SamplingParams.__init__")
        return {a.arg: ast.unparse(a.annotation) for a in init.args.args[1:]}

    # ------------------------------------------------------------------ server arguments

    def _server_args_defaults(self) -> dict[str, Any]:
        defaults: dict[str, Any] = {}
        for stmt in self.class_def(SERVER_ARGS, "ServerArgs").body:
            if (
                isinstance(stmt, ast.AnnAssign)
                and isinstance(stmt.target, ast.Name)
                and stmt.value is not None
            ):
                try:
                    defaults[stmt.target.id] = ast.literal_eval(stmt.value)
                except ValueError:
                    pass  # computed defaults (field(default_factory=...)) are not needed to parse
        return defaults

    def _module_constants(self, path: str) -> dict[str, Any]:
        constants: dict[str, Any] = {}
        for stmt in self.module(path).body:
            if (
                isinstance(stmt, ast.Assign)
                and len(stmt.targets) == 1
                and isinstance(stmt.targets[0], ast.Name)
            ):
                try:
                    constants[stmt.targets[0].id] = ast.literal_eval(stmt.value)
                except ValueError:
                    pass
        return constants

    def server_args_parser(self) -> argparse.ArgumentParser:
        """An ``argparse`` parser with every flag ``ServerArgs.add_cli_args`` defines, as it defines it.

        ``prepare_server_args`` parses ``sys.argv[1:]`` of ``python -m sglang.launch_server`` with exactly
        these definitions. Types are SGLang's (``str``/``int``/``float``/JSON); choices that are module
        constants are resolved; a custom ``action`` class is kept as a plain store. Unlike SGLang's parser,
        abbreviations are refused, so a command line must use the full flag names.
        """
        parser = argparse.ArgumentParser(prog="sglang.launch_server", allow_abbrev=False, exit_on_error=False)
        types = {
            "str": str,
            "int": int,
            "float": float,
            "json_list_type": json.loads,
            "json.loads": json.loads,
        }
        types["nullable_str"] = lambda v: None if v.lower() in ("none", "null", "") else v
        defaults = self._server_args_defaults()
        constants = self._module_constants(SERVER_ARGS)
        add_cli_args = self.function(SERVER_ARGS, "ServerArgs.add_cli_args")
        calls = [
            node
            for node in ast.walk(add_cli_args)
            if isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "add_argument"
        ]
        for call in sorted(calls, key=lambda c: (c.lineno, c.col_offset)):
            flags = [ast.literal_eval(a) for a in call.args]
            kwargs: dict[str, Any] = {}
            for kw in call.keywords:
                source = ast.unparse(kw.value)
                if kw.arg == "help":
                    continue
                if kw.arg == "type":
                    kwargs["type"] = types[source]
                elif kw.arg == "action":
                    if isinstance(kw.value, ast.Constant):
                        kwargs["action"] = kw.value.value
                elif kw.arg == "default":
                    if source.startswith("ServerArgs."):
                        kwargs["default"] = defaults.get(source.removeprefix("ServerArgs."))
                    else:
                        try:
                            kwargs["default"] = ast.literal_eval(kw.value)
                        except ValueError:
                            kwargs["default"] = None
                elif kw.arg == "choices":
                    try:
                        kwargs["choices"] = ast.literal_eval(kw.value)
                    except ValueError:
                        if source in constants:
                            kwargs["choices"] = constants[source]
                else:
                    kwargs[kw.arg] = ast.literal_eval(kw.value)
            if kwargs.get("action") in ("store_true", "store_false"):
                kwargs.pop("type", None)
            parser.add_argument(*flags, **kwargs)
        return parser

    def parse_server_args(self, argv: list[str]) -> argparse.Namespace:
        """Parse a launch command line's arguments; raises ``SystemExit``/``ArgumentError`` on a bad flag."""
        return self.server_args_parser().parse_args(argv)

    # ------------------------------------------------------------------ responses

    def produced_keys(self, path: str, qualname: str, *, follow: tuple[str, ...] = ()) -> set[str]:
        """String keys a function writes into dicts: dict literals and ``d["key"] = ...`` assignments.

        ``follow`` names methods it calls (``self.method(...)``) whose keys count too, as
        ``"path:Class.method"`` (the path defaults to this function's file).
        """
        keys = _dict_keys(self.function(path, qualname))
        for target in follow:
            other_path, _, other = target.rpartition(":")
            keys |= _dict_keys(self.function(other_path or path, other))
        return keys


def _dict_keys(func: ast.AST) -> set[str]:
    keys: set[str] = set()
    for node in ast.walk(func):
        if isinstance(node, ast.Dict):
            keys |= {k.value for k in node.keys if isinstance(k, ast.Constant) and isinstance(k.value, str)}
        targets: list[ast.AST] = []
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, (ast.AugAssign, ast.AnnAssign)):
            targets = [node.target]
        for target in targets:
            if isinstance(target, ast.Subscript) and isinstance(target.slice, ast.Constant):
                if isinstance(target.slice.value, str):
                    keys.add(target.slice.value)
    return keys


# ---------------------------------------------------------------------- type compatibility


def _split_top(s: str) -> list[str]:
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(s):
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(s[start:i].strip())
            start = i + 1
    parts.append(s[start:].strip())
    return [p for p in parts if p]


def value_matches(value: Any, annotation: str) -> bool:
    """Whether a JSON value fits a dataclass annotation as FastAPI/pydantic would accept it (strictly)."""
    annotation = annotation.strip()
    match = re.fullmatch(r"(\w+(?:\.\w+)*)(?:\[(.*)\])?", annotation, re.S)
    if not match:
        raise ValueError(f"cannot read annotation {annotation!r}")
    head, inner = match.group(1), match.group(2)
    args = _split_top(inner) if inner else []
    if head == "Optional":
        return value is None or value_matches(value, args[0])
    if head == "Union":
        return any(value_matches(value, a) for a in args)
    if head == "Any":
        return True
    if head in ("List", "list"):
        return (
            isinstance(value, list) and all(value_matches(v, args[0]) for v in value)
            if args
            else isinstance(value, list)
        )
    if head in ("Dict", "dict"):
        return isinstance(value, dict) and (
            not args or all(value_matches(k, args[0]) and value_matches(v, args[1]) for k, v in value.items())
        )
    if head == "Literal":
        return value in ast.literal_eval(f"[{inner}]")
    if head == "bool":
        return isinstance(value, bool)
    if head == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if head == "float":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if head == "str":
        return isinstance(value, str)
    raise ValueError(f"no JSON rule for annotation {annotation!r}")


def body_problems(source: SGLangSource, class_name: str, body: dict) -> list[str]:
    """Why ``body`` does not fit SGLang's request dataclass ``class_name`` (empty when it fits)."""
    fields = source.dataclass_fields(class_name)
    problems = [f"{class_name} has no field {key!r}" for key in body if key not in fields]
    problems += [
        f"{class_name}.{key} is {fields[key].annotation}, we send {value!r}"
        for key, value in body.items()
        if key in fields and not value_matches(value, fields[key].annotation)
    ]
    problems += [
        f"{class_name}.{f.name} is required and missing"
        for f in fields.values()
        if not f.has_default and f.name not in body
    ]
    return problems
