"""The house rules of DESIGN.md as an allow-list on the import graph: every first-party module names what it may
import, so a new dependency between layers fails the build (and shows up in review as a change to this table),
and no import circle can form."""

from __future__ import annotations

import ast
import functools
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FIRST_PARTY = ("gateway", "adapters")
THIRD_PARTY = ("flask", "werkzeug", "gunicorn", "llama_cpp", "numpy", "jinja2", "yaml", "prometheus_client",
               "requests", "urllib3", "httptools")

ADAPTER = {"gateway.types", "adapters.base", "adapters.openai_shapes", "adapters.vllm_extras"}
ENGINE = {"gateway.types", "gateway.engine.*", "gateway.markers", "llama_cpp", "numpy", "jinja2"}
MODELS = {"gateway.types", "gateway.models.*", "gateway.__version__", "gateway.chat_formats", "gateway.engine_options"}

# module (or `package.*`) → what it may import: first-party modules (`x.*` = anything inside x) and the third-party
# packages listed in THIRD_PARTY. The standard library is always allowed.
ALLOWED: dict[str, set[str]] = {
    # adapters translate: the vocabulary, the shared framing and the two shared shapes, nothing else
    "adapters.*": ADAPTER,
    "adapters.ollama": ADAPTER | {"adapters.ollama_models"},
    # the Responses API's parsing and its rendering are one family split in two modules; what it shares with
    # chat completions (error body, reasoning effort, logprobs) is in the openai_shapes leaf
    "adapters.openai_responses": ADAPTER | {"adapters.openai_responses_render"},
    # the engine runs in runner processes: no HTTP, no API family, no service
    "gateway.engine.*": ENGINE,
    "gateway.models.*": MODELS,
    # a managed model's entry is checked by building its launch command once, when the config is read
    "gateway.models.managed_config": MODELS | {"gateway.managed.engines"},
    # engine servers the gateway starts (vLLM, SGLang, llama-server...): processes and HTTP probes, standard
    # library only (time_slice is too), so scripts use it without the rest of the gateway
    "gateway.managed.*": {"gateway.managed.*", "gateway.time_slice"},
    # backends: the only layer that knows an engine (an upstream engine over HTTP, with requests)
    "gateway.backends.*": {"gateway.types", "gateway.backends.*", "gateway.engine.*", "gateway.managed.*",
                           "gateway.models.*", "gateway.chat_formats", "gateway.output", "gateway.prompt_rules",
                           "gateway.time_slice", "requests", "urllib3"},
    # the service talks to backends through their interface and the pool, never to the engine's internals
    "gateway.service": {"gateway.types", "gateway.__version__", "gateway.backends.base", "gateway.backends.pool",
                        "gateway.engine.jobs", "gateway.limits", "gateway.model_changes", "gateway.models.registry",
                        "gateway.output", "gateway.polling", "gateway.response_store", "gateway.tracker"},
    # stored Responses API answers: the vocabulary, and `gather` to build a streamed answer as the service does
    "gateway.response_store": {"gateway.types", "gateway.output"},
    # the output stage and the format table are plain logic over text: family-blind and engine-blind
    "gateway.output": {"gateway.types", "gateway.chat_formats", "gateway.markers"},
    "gateway.markers": set(),
    "gateway.chat_formats": set(),
    "gateway.model_changes": {"gateway.types", "gateway.backends.pool", "gateway.models.*", "gateway.polling"},
    "gateway.routes": {"gateway.types", "gateway.__version__", "adapters.base", "gateway.auth", "gateway.http_wire",
                       "gateway.json_body", "gateway.keys", "gateway.polling", "gateway.service",
                       "gateway.wsgi_answers", "flask", "werkzeug"},
    # answers as plain data, and the dispatch that serves fixed paths ahead of Flask: no app, no Flask
    "gateway.wsgi_answers": {"werkzeug"},
    # HTTP/1.1 on a socket: the parser, the environ, the reply; nothing of the app (routes use its `readable`)
    "gateway.http_wire": {"httptools"},
    # the worker gunicorn's master runs: threads, epoll and connections around http_wire, the app as a WSGI call
    "gateway.http_worker": {"gateway.http_wire", "gunicorn"},
    "gateway.json_body": {"gateway.types"},
    "gateway.limits": {"gateway.types"},
    "gateway.monitor": {"gateway.types", "gateway.__version__", "adapters.base", "gateway.auth", "gateway.config",
                        "gateway.metrics", "gateway.polling", "gateway.routes", "gateway.tracker",
                        "gateway.wsgi_answers", "flask"},
    "gateway.tracker": set(),
    "gateway.metrics": {"gateway.prometheus_text", "prometheus_client"},
    "gateway.prometheus_text": {"prometheus_client"},
    "gateway.polling": set(),
    "gateway.auth": {"gateway.types", "gateway.browser_guard", "gateway.keys"},
    "gateway.browser_guard": {"gateway.types"},
    "gateway.types": set(),
    "gateway.config": {"gateway.types", "gateway.keys", "gateway.engine_options", "gateway.prompt_rules",
                       "gateway.time_slice", "yaml"},
    # the API threads' scheduler slice, and the default one for the processes they start: standard library only
    "gateway.time_slice": set(),
    # agent-noise rules: checked by the config, applied by backends to system prompts
    "gateway.prompt_rules": {"gateway.types"},
    # POST /api/cache/warm: a route whose body any family's parser (handed in, never imported) reads
    "gateway.cache_warm": {"gateway.types", "adapters.base"},
    "gateway.engine_options": set(),
    "gateway.keys": {"gateway.types"},
    "gateway.app": {"adapters.*", "gateway.*", "flask"},
    "gateway.__main__": {"gateway.app", "gateway.config", "gateway.engine.cpu", "gateway.engine.huge_pages",
                         "gateway.engine.llama", "gateway.models.registry", "gateway.request_log", "gateway.shutdown",
                         "gateway.reload", "gateway.time_slice", "gunicorn"},
    "gateway.request_log": set(),
    "gateway.shutdown": {"gateway.types"},
    "gateway.reload": {"gateway.config"},
    "gateway": set(),
    "adapters": set(),
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(path: Path) -> set[str]:
    """Absolute imports; `from gateway import x` counts as `gateway.x`, since x may be a module."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module in FIRST_PARTY:
                names.update(f"{node.module}.{alias.name}" for alias in node.names)
            else:
                names.add(node.module)
    return {n for n in names if n.split(".")[0] in FIRST_PARTY + THIRD_PARTY}


@functools.cache
def modules() -> dict[str, set[str]]:
    paths = [*ROOT.glob("gateway/**/*.py"), *ROOT.glob("adapters/*.py")]
    return {module_name(p): imported_modules(p) for p in sorted(paths)}


def rule_for(module: str) -> set[str] | None:
    """The most specific entry: the module itself, else the nearest `package.*`."""
    for own in (module, module + ".*"):  # a package's __init__ follows its package's rule
        if own in ALLOWED:
            return ALLOWED[own]
    parts = module.split(".")
    for i in range(len(parts) - 1, 0, -1):
        rule = ALLOWED.get(".".join(parts[:i]) + ".*")
        if rule is not None:
            return rule
    return None


def allowed(name: str, rule: set[str]) -> bool:
    for entry in rule:
        if entry.endswith(".*") and (name == entry[:-2] or name.startswith(entry[:-1])):
            return True
        if name == entry or (entry.split(".")[0] in THIRD_PARTY and name.startswith(entry + ".")):
            return True
    return False


def test_every_module_has_a_rule():
    assert [m for m in modules() if rule_for(m) is None] == []


@pytest.mark.parametrize("module", sorted(modules()))
def test_imports_stay_within_the_allow_list(module):
    rule = rule_for(module)
    assert sorted(n for n in modules()[module] if n != module and not allowed(n, rule)) == []


def test_no_import_circles():
    graph = {m: {n for n in deps if n in modules()} for m, deps in modules().items()}
    state: dict[str, int] = {}

    def visit(module: str, path: list[str]) -> list[str] | None:
        state[module] = 1
        for dep in sorted(graph[module]):
            if state.get(dep) == 1:
                return [*path, module, dep]
            if dep not in state:
                cycle = visit(dep, [*path, module])
                if cycle:
                    return cycle
        state[module] = 2
        return None

    cycles = [c for m in sorted(graph) if m not in state and (c := visit(m, []))]
    assert cycles == []


def test_streams_are_framed_only_by_the_routes_loop():
    """Adapters return frames; only routes.py yields frames to the client. The other generators yield events:
    the service's, the wait loop's, a model change's, the monitor feed's and the response store's (which keeps a
    streamed answer as its events go by)."""
    yielding = []
    for path in [*ROOT.glob("gateway/**/*.py"), *ROOT.glob("adapters/*.py")]:
        tree = ast.parse(path.read_text(), str(path))
        if any(isinstance(node, (ast.Yield, ast.YieldFrom)) for node in ast.walk(tree)):
            yielding.append(path.relative_to(ROOT).as_posix())
    assert sorted(yielding) == ["gateway/model_changes.py", "gateway/monitor.py", "gateway/polling.py",
                                "gateway/response_store.py", "gateway/routes.py", "gateway/service.py"]
