"""A request's prompt as token lists for one loaded model: templates, model defaults, windows and truncation.

Every family reaches the engine through here, so the rules are the same everywhere: a chat is rendered with
the model's own template (its GGUF jinja, or ChatML), a model's default system prompt applies when a chat has
none, and a prompt that does not fit the request's window is refused, unless the request asked for the oldest
turns to be dropped (Ollama's behaviour) or for the prompt to be cut to its last N tokens (TGI, vLLM).
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass, replace

from gateway.engine.llama import LlamaModel
from gateway.engine.template import DEFAULT_TEMPLATE, ChatTemplate
from gateway.models.registry import ModelSpec
from gateway.types import MODEL_PARAMETERS, ErrorKind, GatewayError, InternalRequest, Message, SamplingParams

log = logging.getLogger("gateway.backends.prompts")

FIRST_MESSAGES_KEPT = 32  # first messages whose tokens are remembered (agents send the same one every time)


@dataclass
class Prompt:
    text: str
    tokens: list[int]


@dataclass
class PreparedPrompts:
    prompts: list[Prompt]
    window: int  # tokens the request may use for prompt plus output
    dropped_turns: int = 0


class PromptBuilder:
    def __init__(self, context_overflow: str = "truncate"):
        self.context_overflow = context_overflow  # 'truncate' honours drop_turns requests; 'error' refuses
        self._templates: dict[str, ChatTemplate] = {}
        self._first: OrderedDict[str, list[int] | None] = OrderedDict()  # see first_message
        self._first_lock = threading.Lock()

    def prepare(self, req: InternalRequest, spec: ModelSpec, model: LlamaModel, n_ctx: int) -> PreparedPrompts:
        window = self.window(req, spec, n_ctx)
        if req.kind == "chat":
            return self._chat(req, spec, model, window)
        prompts = []
        for prompt in req.prompts:
            if isinstance(prompt, list):
                check_token_ids([prompt], model.n_vocab, "prompt")
                prompts.append(Prompt(model.detokenize(prompt), prompt))
            elif req.suffix is not None:
                prompts.append(self._fill_in_middle(prompt, req.suffix, spec, model))
            else:
                prompts.append(Prompt(prompt, model.tokenize(prompt, model.add_bos and req.add_special_tokens,
                                                             True)))
        return PreparedPrompts([_cut(p, req.truncate_tokens) for p in prompts], window)

    def window(self, req: InternalRequest, spec: ModelSpec, n_ctx: int) -> int:
        """The context this request may use: the model's, capped by the request's (or model's) num_ctx. A
        smaller num_ctx never reloads the model; it only bounds this request."""
        num_ctx = req.num_ctx or spec.parameters.get("num_ctx")
        return min(n_ctx, num_ctx) if isinstance(num_ctx, int) and num_ctx > 0 else n_ctx

    def render_chat(self, req: InternalRequest, spec: ModelSpec, model: LlamaModel,
                    messages: list[Message] | None = None) -> Prompt:
        messages = with_default_system(req.messages if messages is None else messages, spec)
        template = self._template(spec, model)
        tools = req.tools if req.tools and req.tools_in_template else None
        if req.continue_final_message and messages and messages[-1].role == "assistant":
            text = _open_last_message(template.render(messages, tools, False, **req.template_kwargs),
                                      messages[-1].content or "")
        else:
            text = template.render(messages, tools, req.add_generation_prompt, **req.template_kwargs)
        add_bos = model.add_bos and req.add_special_tokens and not (model.bos_text and
                                                                     text.startswith(model.bos_text))
        return Prompt(text, model.tokenize(text, add_bos, True))

    def first_message(self, req: InternalRequest, spec: ModelSpec, model: LlamaModel) -> list[int] | None:
        """The tokens of a chat's first message alone (the system prompt, where there is one), rendered as the
        start of the whole chat: None for a chat of one message, or where the template will not render the first
        message on its own (some insist on a user turn)."""
        messages = with_default_system(req.messages, spec)
        if len(messages) < 2:
            return None
        # Rendering and tokenizing a long system prompt again costs as much as the whole prompt did (~4 ms for
        # 2,700 tokens of SmolLM2), so the tokens of recent first messages are kept, by what the template sees.
        key = repr((spec.name, messages[0], req.tools if req.tools_in_template else None,
                    sorted(req.template_kwargs.items())))
        with self._first_lock:
            if key in self._first:
                self._first.move_to_end(key)
                return self._first[key]
        try:
            tokens = self.render_chat(replace(req, add_generation_prompt=False, continue_final_message=False), spec,
                                      model, messages[:1]).tokens
        except GatewayError:
            tokens = None
        with self._first_lock:
            self._first[key] = tokens
            while len(self._first) > FIRST_MESSAGES_KEPT:
                self._first.popitem(last=False)
        return tokens

    def _chat(self, req: InternalRequest, spec: ModelSpec, model: LlamaModel, window: int) -> PreparedPrompts:
        if any(m.images for m in req.messages) and not spec.projector:
            raise GatewayError(ErrorKind.INVALID_REQUEST, f"The model `{spec.name}` does not accept images.",
                               "messages")
        prompt = _cut(self.render_chat(req, spec, model), req.truncate_tokens)
        messages, dropped = list(req.messages), 0
        droppable = req.truncate == "drop_turns" and self.context_overflow == "truncate"
        while droppable and len(prompt.tokens) >= window:
            index = next((i for i, m in enumerate(messages[:-1]) if m.role != "system"), None)
            if index is None:
                break
            del messages[index]
            dropped += 1
            prompt = self.render_chat(req, spec, model, messages)
        if dropped:
            log.info("dropped the %d oldest turns of a chat to fit %d tokens (%d left)", dropped, window,
                     len(prompt.tokens))
        return PreparedPrompts([prompt], window, dropped)

    def _fill_in_middle(self, prefix: str, suffix: str, spec: ModelSpec, model: LlamaModel) -> Prompt:
        if model.fim is None:
            raise GatewayError(ErrorKind.INVALID_REQUEST, f"The model `{spec.name}` does not support insert "
                                                          "(it has no fill-in-the-middle tokens).", "suffix")
        pre, suf, mid = model.fim
        bos = model.tokenize("", model.add_bos, False)
        return Prompt(prefix, [*bos, pre, *model.tokenize(prefix, False, False), suf,
                               *model.tokenize(suffix, False, False), mid])

    def _template(self, spec: ModelSpec, model: LlamaModel) -> ChatTemplate:
        template = self._templates.get(spec.name)
        if template is None:
            source = model.chat_template() or DEFAULT_TEMPLATE
            try:
                template = ChatTemplate(source, model.bos_text, model.eos_text)
            except ValueError as exc:  # the model file's template: no request can work until it is replaced
                raise GatewayError(ErrorKind.INVALID_REQUEST, f"The model `{spec.name}` cannot be used for chat: "
                                                              f"its {exc}.", "model",
                                   details={"model": spec.name}) from None
            self._templates[spec.name] = template
        return template


def with_default_system(messages: list[Message], spec: ModelSpec) -> list[Message]:
    if spec.system and not any(m.role == "system" for m in messages):
        return [Message("system", spec.system), *messages]
    return messages


def with_model_defaults(sampling: SamplingParams, spec: ModelSpec) -> SamplingParams:
    """Fill what the request left unset from the model's default parameters (Ollama params layer, config)."""
    changes = {}
    for option, attribute in MODEL_PARAMETERS.items():
        value = spec.parameters.get(option)
        if value is None or getattr(sampling, attribute) not in (None, []):
            continue
        if option == "num_predict" and (not isinstance(value, int) or value < 0):
            continue
        if option == "stop":
            value = [value] if isinstance(value, str) else list(value)
        changes[attribute] = value
    return replace(sampling, **changes) if changes else sampling


def check_token_ids(prompts: list[list[int]], n_vocab: int, param: str) -> None:
    for tokens in prompts:
        for token in tokens:
            if not 0 <= token < n_vocab:
                raise GatewayError(ErrorKind.INVALID_REQUEST,
                                   f"Invalid token id {token} in `{param}`: expected 0 to {n_vocab - 1}.", param)


def _cut(prompt: Prompt, keep: int | None) -> Prompt:
    """TGI's and vLLM's truncation: keep only the last `keep` prompt tokens."""
    if keep is None or len(prompt.tokens) <= keep:
        return prompt
    return Prompt(prompt.text, prompt.tokens[-keep:])


def _open_last_message(text: str, content: str) -> str:
    """vLLM's continue_final_message: the prompt ends inside the last message, right after its content, so the
    model continues it instead of starting a new turn."""
    cut = text.rfind(content) if content else -1
    if cut == -1:
        raise GatewayError(ErrorKind.INVALID_REQUEST, "continue_final_message: the chat template does not show the "
                                                      "final message's content verbatim.", "continue_final_message")
    return text[: cut + len(content)]
