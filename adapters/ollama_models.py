"""Ollama's model management: the views (/api/tags, /api/show, /api/ps), the changes (copy, delete, create, pull,
push), the `options` vocabulary they share with generation, and the Go formatting their answers depend on.

Ollama is a Go server, and its clients decode with Go's rules: timestamps are `time.Time` (RFC 3339 with a zone,
fractional seconds trimmed), `ollama list` and `ollama ps` slice `digest[:12]`, and `ollama show --parameters`
prints what Go's `%#v` makes of each value. These helpers reproduce those shapes from plain Python values.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any, NoReturn

from adapters.base import RequestContext, expect_object, get_typed, type_name
from gateway.types import (
    InternalRequest,
    ModelChange,
    ModelInfo,
    ModelList,
    Progress,
    Result,
    RunningList,
    RunningModel,
    invalid,
)

DEFAULT_TAG = "latest"
DEFAULT_PREFIXES = ("registry.ollama.ai/library/", "registry.ollama.ai/")
FOREVER_SECONDS = (2**63 - 1) / 1e9
"""Go's largest time.Duration: Ollama stores keep_alive < 0 as this, so /api/ps shows an expiry ~292 years ahead
(the CLI prints "Forever" for anything over 20 years away)."""
HIDDEN_METADATA = ("general.name", "tokenizer.chat_template")  # Ollama deletes these from model_info
SHORT_ARRAY = 5  # without `verbose`, Ollama replaces longer arrays in model_info by []
PARAMETER_WIDTH = 30  # `%-30s %#v` in Ollama's ShowHandler
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
GO_ESCAPES = {"\a": "\\a", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\v": "\\v",
              "\\": "\\\\", '"': '\\"'}

# Every key of Ollama's `api.Options` (and its `Runner`), with its Go type. Keys outside this table are ignored
# (Ollama logs "invalid option provided" and goes on); a listed key of another type is a 400.
OPTION_TYPES: dict[str, str] = {
    "num_keep": "int", "seed": "int", "num_predict": "int", "top_k": "int", "top_p": "float", "min_p": "float",
    "typical_p": "float", "repeat_last_n": "int", "temperature": "float", "repeat_penalty": "float",
    "presence_penalty": "float", "frequency_penalty": "float", "stop": "strings",
    "num_ctx": "int", "num_batch": "int", "num_gpu": "int", "main_gpu": "int", "use_mmap": "bool",
    "num_thread": "int", "draft_num_predict": "int",
}
UNSUPPORTED_CREATE = ("files", "adapters", "quantize", "quantization", "draft_files", "remote_host", "messages")


# ---------------------------------------------------------------------------------------------------------------
# Go formatting


def go_time(epoch: float) -> str:
    """A Go `time.Time` in JSON: RFC 3339 in UTC with 'Z', fractional seconds without trailing zeros (none for a
    whole second). Microseconds are the finest a float epoch holds exactly."""
    micros = round(epoch * 1_000_000)
    stamp = (EPOCH + timedelta(microseconds=micros)).strftime("%Y-%m-%dT%H:%M:%S")
    fraction = micros % 1_000_000
    return stamp + (f".{fraction:06d}".rstrip("0") if fraction else "") + "Z"


def go_float(value: float) -> str:
    """Go's `%v` of a float64: the shortest digits, in e-notation from an exponent of 6 up or below -4."""
    if math.isnan(value) or math.isinf(value):
        return "NaN" if math.isnan(value) else ("+Inf" if value > 0 else "-Inf")
    if value == 0:
        return "0"
    number = Decimal(repr(float(value))).normalize()
    exponent = number.adjusted()
    if -4 <= exponent < 6:
        return format(number, "f")
    digits = "".join(str(d) for d in number.as_tuple().digits)
    mantissa = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
    return f"{'-' if number < 0 else ''}{mantissa}e{'-' if exponent < 0 else '+'}{abs(exponent):02d}"


def go_quote(text: str) -> str:
    """Go's strconv.Quote (what `%#v` does to a string): printable characters kept, the rest escaped."""
    out = []
    for char in text:
        if char in GO_ESCAPES:
            out.append(GO_ESCAPES[char])
        elif char.isprintable():
            out.append(char)
        elif ord(char) < 0x80:
            out.append(f"\\x{ord(char):02x}")
        else:
            out.append(f"\\u{ord(char):04x}" if ord(char) < 0x10000 else f"\\U{ord(char):08x}")
    return '"' + "".join(out) + '"'


def go_value(value: Any, quoted: bool) -> str:
    """A parameter value as Go prints it: `%#v` (quoted strings) for `parameters`, `%v` for Modelfile lines.
    Numbers are float64 in Ollama (they come from JSON), so an int is printed as one too."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return go_float(float(value))
    text = str(value)
    return go_quote(text) if quoted else text


# ---------------------------------------------------------------------------------------------------------------
# Names and details


def display_name(name: str) -> str:
    """Ollama's shortest display form: the default registry and `library/` left out, `:latest` added to a name
    without a tag (Ollama clients compare names with the tag)."""
    lowered = name.lower()
    for prefix in DEFAULT_PREFIXES:
        if lowered.startswith(prefix):
            name = name[len(prefix):]
            break
    return name if ":" in name.rsplit("/", 1)[-1] else f"{name}:{DEFAULT_TAG}"


def bare_digest(digest: str) -> str:
    """The hex digits alone: Ollama lists `digest` without the `sha256:` prefix."""
    for prefix in ("sha256:", "sha256-"):
        if digest.startswith(prefix):
            return digest[len(prefix):]
    return digest


def details(info: ModelInfo) -> dict[str, Any]:
    arch = info.architecture
    return {
        "parent_model": "",
        "format": "gguf",
        "family": arch,
        "families": [arch] if arch else None,
        "parameter_size": info.parameter_size,
        "quantization_level": info.quantization,
    }


# ---------------------------------------------------------------------------------------------------------------
# GET /api/tags


def render_tags(result: ModelList, req: InternalRequest, ctx: RequestContext) -> dict[str, Any]:
    """Newest first, as Ollama sorts; every alias is an entry of its own, like a model made with `ollama cp`."""
    newest_first = sorted(result.models, key=lambda info: info.created, reverse=True)
    return {"models": [_tag(name, info) for info in newest_first for name in [info.name, *info.aliases]]}


def _tag(name: str, info: ModelInfo) -> dict[str, Any]:
    shown = display_name(name)
    entry: dict[str, Any] = {
        "name": shown,
        "model": shown,
        "modified_at": go_time(info.created),
        "size": info.size,
        "digest": bare_digest(info.digest),
        "details": details(info),
    }
    if info.capabilities:
        entry["capabilities"] = list(info.capabilities)
    return entry


# ---------------------------------------------------------------------------------------------------------------
# GET /api/ps


def render_ps(result: RunningList, req: InternalRequest, ctx: RequestContext) -> dict[str, Any]:
    """Longest time left first; a model kept forever shows Ollama's far-future expiry."""
    entries = sorted(result.models, key=lambda m: _expiry(m, ctx), reverse=True)
    return {"models": [_running(model, ctx) for model in entries]}


def _expiry(model: RunningModel, ctx: RequestContext) -> float:
    return ctx.created + FOREVER_SECONDS if model.expires_at is None else model.expires_at


def _running(model: RunningModel, ctx: RequestContext) -> dict[str, Any]:
    shown = display_name(model.info.name)
    return {
        "name": shown,
        "model": shown,
        "size": model.size,
        "digest": bare_digest(model.info.digest),
        "details": details(model.info),
        "expires_at": go_time(_expiry(model, ctx)),
        "size_vram": model.size_vram,
        "context_length": model.context_length,
        "runner": model.runner,  # ours: pid, health, restarts, crashes, weight repacking (Go clients skip it)
    }


# ---------------------------------------------------------------------------------------------------------------
# POST /api/show


def render_show(result: ModelInfo, req: InternalRequest, ctx: RequestContext) -> dict[str, Any]:
    """Ollama's ShowResponse. `model_info` and `capabilities` are always sent: ollama-python requires the first and
    the CLI reads the second. A `system` in the request replaces the model's, and request `options` appear in the
    Modelfile only, both as in Ollama."""
    system = req.render.get("system") or result.system
    response: dict[str, Any] = {
        "modelfile": modelfile(result, display_name(req.model or result.name), system,
                               {**result.parameters, **req.render.get("options", {})}),
    }
    parameters = parameter_lines(result.parameters)
    if parameters:
        response["parameters"] = parameters
    if result.template:
        response["template"] = result.template
    if system:
        response["system"] = system
    response["details"] = details(result)
    response["model_info"] = model_info(result, bool(req.render.get("verbose")))
    response["capabilities"] = list(result.capabilities)
    response["modified_at"] = go_time(result.created)
    if result.max_model_len:  # ours: the context this server gives it and why (Ollama clients skip the key)
        response["context"] = {"size": result.max_model_len, "reason": result.context_reason}
    return response


def model_info(info: ModelInfo, verbose: bool) -> dict[str, Any]:
    """The GGUF header keys; without `verbose`, long arrays become [] the way Ollama trims them."""
    shown: dict[str, Any] = {}
    for key, value in info.metadata.items():
        if key in HIDDEN_METADATA:
            continue
        shown[key] = [] if isinstance(value, list) and len(value) > SHORT_ARRAY and not verbose else value
    if info.parameter_count:
        shown.setdefault("general.parameter_count", info.parameter_count)
    return shown


def parameter_lines(parameters: dict[str, Any]) -> str:
    """`key<padding> value` per option, one line per element of a list (each stop string)."""
    return "\n".join(f"{key:<{PARAMETER_WIDTH}} {go_value(item, quoted=True)}"
                     for key, value in parameters.items() for item in _items(value))


def modelfile(info: ModelInfo, shown_name: str, system: str, parameters: dict[str, Any]) -> str:
    """A Modelfile in the form `ollama show --modelfile` prints: FROM the weights, then TEMPLATE, SYSTEM and one
    PARAMETER line per value."""
    commands = [f"FROM {info.path}"]
    if info.template:
        commands.append(f"TEMPLATE {modelfile_quote(info.template)}")
    if system:
        commands.append(f"SYSTEM {modelfile_quote(system)}")
    commands += [f"PARAMETER {key} {modelfile_quote(go_value(item, quoted=False))}"
                 for key, value in parameters.items() for item in _items(value)]
    header = ('# Modelfile generated by "ollama show"\n'
              "# To build a new Modelfile based on this, replace FROM with:\n"
              f"# FROM {shown_name}\n\n")
    return header + "".join(command + "\n" for command in commands)


def modelfile_quote(text: str) -> str:
    """Ollama's Modelfile quoting: only text with a newline or edge spaces is quoted, in triple quotes when it
    contains a double quote."""
    if "\n" in text or text.startswith(" ") or text.endswith(" "):
        return f'"""{text}"""' if '"' in text else f'"{text}"'
    return text


def _items(value: Any) -> list[Any]:
    return list(value) if isinstance(value, (list, tuple)) else [value]


# ---------------------------------------------------------------------------------------------------------------
# Parsing: options


def parse_options(value: Any, name: str) -> dict[str, Any]:
    """Known options with Go's typing: integer options take any number (a float is truncated, as Go's conversion
    does), float options any number, `stop` an array of strings. null values are skipped; unknown keys dropped."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise invalid(f"Invalid type for `{name}`: expected an object, got {type_name(value)}.", name)
    return {key: _option(key, item, f"{name}.{key}") for key, item in value.items()
            if key in OPTION_TYPES and item is not None}


def _option(key: str, value: Any, name: str) -> Any:
    kind = OPTION_TYPES[key]
    if kind == "strings":
        return _string_list(value, name)
    if kind == "bool":
        if not isinstance(value, bool):
            raise invalid(f"Invalid type for `{name}`: expected a boolean, got {type_name(value)}.", name)
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        what = "an integer" if kind == "int" else "a number"
        raise invalid(f"Invalid type for `{name}`: expected {what}, got {type_name(value)}.", name)
    return int(value) if kind == "int" else float(value)


def _string_list(value: Any, name: str) -> list[str]:
    if not isinstance(value, list):
        raise invalid(f"Invalid type for `{name}`: expected an array of strings, got {type_name(value)}.", name)
    for i, item in enumerate(value):
        if not isinstance(item, str):
            raise invalid(f"Invalid type for `{name}[{i}]`: expected a string, got {type_name(item)}.", f"{name}[{i}]")
    return list(value)


# ---------------------------------------------------------------------------------------------------------------
# Parsing: model views and changes


def parse_tags(body: Any, ctx: RequestContext) -> InternalRequest:
    return InternalRequest(kind="list_models")


def parse_ps(body: Any, ctx: RequestContext) -> InternalRequest:
    return InternalRequest(kind="list_running")


def parse_show(body: Any, ctx: RequestContext) -> InternalRequest:
    """POST /api/show. The CLI sends `name`, ollama-python `model`; `template` is deprecated and ignored."""
    body = expect_object(body)
    get_typed(body, "template", str, "a string")
    render = {
        "verbose": get_typed(body, "verbose", bool, "a boolean", default=False),
        "system": get_typed(body, "system", str, "a string", default=""),
        "options": parse_options(body.get("options"), "options"),
    }
    return InternalRequest(kind="show_model", model=_model_or_name(body), render=render)


def parse_copy(body: Any, ctx: RequestContext) -> InternalRequest:
    body = expect_object(body)
    source = _non_empty(body, "source")
    change = ModelChange("copy", name=_non_empty(body, "destination"), source=source)
    return InternalRequest(kind="copy_model", model=source, change=change)


def parse_delete(body: Any, ctx: RequestContext) -> InternalRequest:
    name = _model_or_name(expect_object(body))
    return InternalRequest(kind="delete_model", model=name, change=ModelChange("delete", name=name))


def parse_pull(body: Any, ctx: RequestContext) -> InternalRequest:
    """POST /api/pull; `username` and `password` (deprecated in Ollama too) are ignored."""
    body = expect_object(body)
    name = _model_or_name(body)
    insecure = get_typed(body, "insecure", bool, "a boolean", default=False)
    return InternalRequest(kind="pull_model", model=name, change=ModelChange("pull", name=name, insecure=insecure),
                           stream=get_typed(body, "stream", bool, "a boolean", default=True))


def parse_create(body: Any, ctx: RequestContext) -> InternalRequest:
    """POST /api/create from `from`: a GGUF path on the server's disk or a model it serves. Uploaded `files`,
    `adapters`, `quantize` and the other forms that need Ollama's blob store or converter are refused."""
    body = expect_object(body)
    for key in UNSUPPORTED_CREATE:
        if body.get(key):
            raise invalid(f"`{key}` is not supported: create a model with `from` set to a GGUF file on the "
                          "server's disk or to a model this server serves.", key)
    name = _model_or_name(body)
    change = ModelChange(
        "create",
        name=name,
        source=get_typed(body, "from", str, "a string", default="")
        or _missing("from", "neither 'from' or 'files' was specified"),
        template=get_typed(body, "template", str, "a string"),
        system=get_typed(body, "system", str, "a string"),
        parameters=parse_options(body.get("parameters"), "parameters"),
    )
    return InternalRequest(kind="create_model", model=name, change=change,
                           stream=get_typed(body, "stream", bool, "a boolean", default=True))


def parse_push(body: Any, ctx: RequestContext) -> InternalRequest:
    raise invalid("Pushing models is not supported: this server has no registry to push to.")


def parse_blob_upload(body: Any, ctx: RequestContext) -> InternalRequest:
    """POST /api/blobs/<digest>, where `ollama create` uploads a local GGUF before sending `files`: refused with
    the way that works, instead of a bare 404 the CLI would print as is."""
    raise invalid("Uploading model files is not supported: create the model with `from` set to the path of a GGUF "
                  "file on the server's disk.")


def _model_or_name(body: dict[str, Any]) -> str:
    """`model`, or the deprecated `name` that the Go CLI still sends for show, pull and delete."""
    name = get_typed(body, "model", str, "a string") or get_typed(body, "name", str, "a string")
    return name or _missing("model", "model is required")


def _non_empty(body: dict[str, Any], key: str) -> str:
    return get_typed(body, key, str, "a string") or _missing(key, f"{key} is required")


def _missing(key: str, detail: str) -> NoReturn:
    raise invalid(f"Missing required parameter: `{key}` ({detail}).", key)


# ---------------------------------------------------------------------------------------------------------------
# Rendering: model changes


def render_progress(result: Progress, req: InternalRequest, ctx: RequestContext) -> dict[str, Any]:
    """The last step of a pull or create that was not streamed: `{"status": "success"}` when it worked."""
    return progress_object(result)


def progress_object(progress: Progress) -> dict[str, Any]:
    """Go's ProgressResponse: digest, total and completed are omitted when empty or zero."""
    out: dict[str, Any] = {"status": progress.status}
    for key in ("digest", "total", "completed"):
        if getattr(progress, key):
            out[key] = getattr(progress, key)
    return out


def render_empty(result: Result, req: InternalRequest, ctx: RequestContext) -> None:
    """Copy and delete answer 200 with an empty body."""
    return None
