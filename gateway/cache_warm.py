"""`POST /api/cache/warm`: prefill a prompt into a model's prompt cache and generate nothing.

The body is any family's chat or prompt request, read by that family's own parser (the routes are handed in,
so no family is imported here): an OpenAI chat or completion, an Ollama chat or generate, an Anthropic message
or a TGI generate. `?family=openai|ollama|anthropic|tgi` names the family; without it the shape decides:
`inputs` is TGI; `messages` with a top-level `system` (or an `anthropic-version` header) is Anthropic, with
Ollama's `options`, `format`, `keep_alive` or `think` it is Ollama, else OpenAI; `prompt` with one of Ollama's
fields (`options`, `system`, `template`, `raw`, `context`, `images`, `keep_alive`) is Ollama, else OpenAI.

The answer: `{"model", "prompt_tokens", "cached_tokens", "reused_tokens", "seconds", "persisted"}`, where
`cached_tokens` is what the KV cache now holds of the prompt, `reused_tokens` what it held before, and
`persisted` whether the prompt is in the persistent prompt cache (or being written there). A chat is warmed
without its generation prompt, so that the requests that follow, which add a turn, start with all of it.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from adapters.base import RenderError, RequestContext, Route
from gateway.types import InternalRequest, WarmResult, invalid

PATH = "/api/cache/warm"
TARGETS: dict[str, tuple[str | None, str | None]] = {  # family → the paths of its chat and its prompt request
    "openai": ("/v1/chat/completions", "/v1/completions"),
    "ollama": ("/api/chat", "/api/generate"),
    "anthropic": ("/v1/messages", None),
    "tgi": (None, "/generate"),
}
OLLAMA_CHAT = ("options", "format", "keep_alive", "think")
OLLAMA_PROMPT = ("options", "system", "template", "raw", "context", "images", "keep_alive")


def warm_route(routes: list[Route], render_error: RenderError) -> Route:
    """The warm route over the families' `routes`; errors are rendered by `render_error` (one family's shape)."""
    by_target = {(r.family, r.path): r for r in routes if r.method == "POST"}

    def parse(body: Any, ctx: RequestContext) -> InternalRequest:
        family = _family(body, ctx)
        chat_path, prompt_path = TARGETS[family]
        path = chat_path if "messages" in body or prompt_path is None else prompt_path
        if path is None or (family, path) not in by_target:
            raise invalid(f"A {family} body to warm the cache must have `messages`.", "messages")
        req = by_target[(family, path)].parse(body, ctx)
        if req.kind not in ("chat", "completion") or (req.kind == "chat" and not req.messages):
            raise invalid("Nothing to warm: the body has no messages or prompt.", "messages")
        return replace(req, warm=True, stream=False, n=1)

    return Route("POST", PATH, "cache", parse, render, render_error, name="cache.warm")


def _family(body: Any, ctx: RequestContext) -> str:
    named = ctx.query.get("family")
    if named is not None:
        if named not in TARGETS:
            raise invalid(f"`family` must be one of {', '.join(TARGETS)}, got {named!r}.", "family")
        return named
    if "inputs" in body:
        return "tgi"
    if "messages" in body:
        if "system" in body or "anthropic-version" in ctx.headers:
            return "anthropic"
        return "ollama" if any(k in body for k in OLLAMA_CHAT) else "openai"
    if "prompt" in body:
        return "ollama" if any(k in body for k in OLLAMA_PROMPT) else "openai"
    raise invalid("Nothing to warm: the body has no `messages`, `prompt` or `inputs`.", "messages")


def render(result: WarmResult, req: InternalRequest, ctx: RequestContext) -> dict[str, Any]:
    return {"model": result.model, "prompt_tokens": result.prompt_tokens, "cached_tokens": result.cached_tokens,
            "reused_tokens": result.reused_tokens, "seconds": round(result.seconds, 3),
            "persisted": result.persisted}
