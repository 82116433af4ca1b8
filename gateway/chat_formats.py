"""How a model family writes tool calls and reasoning in its text: one table, one entry per format.

A model's format is chosen once, from its chat template (or set by `chat_format` in a model's config): the
prompt side (whether the template renders tools itself, which ids it wants) and the output side (the markers
the output stage splits on, the grammar that forces a call) then read the same entry, instead of each place
sniffing the template for words of its own. Models whose templates know no tools get `generic`: tools are
described in a system message (`GENERIC_TOOL_PROMPT`) and calls are written the Hermes way, which small
instruction-tuned models follow best.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass


@dataclass(frozen=True)
class ReasoningMarkers:
    open: str
    close: str


@dataclass(frozen=True)
class ChatFormat:
    name: str
    call_open: str  # text that starts a call (or a list of calls); also the lazy grammar's trigger
    call_close: str  # text that ends one call; "" when the calls run to the end of the output
    arguments_key: str = "arguments"  # the key the call's JSON puts its arguments under
    calls_as_list: bool = False  # after call_open comes a JSON array of calls (Mistral)
    native_tools: bool = True  # the template renders `tools` and tool turns itself
    id_length: int | None = None  # tool-call ids the template accepts: exactly this many letters and digits
    detect: tuple[str, ...] = ()  # all of these in the template select this format


HERMES = ChatFormat("hermes", "<tool_call>", "</tool_call>", detect=("<tool_call>",))
MISTRAL = ChatFormat("mistral", "[TOOL_CALLS]", "", calls_as_list=True, id_length=9, detect=("[TOOL_CALLS]",))
LLAMA3 = ChatFormat("llama3", '{"name"', "", arguments_key="parameters",
                    detect=("<|start_header_id|>", "tools"))
GENERIC = ChatFormat("generic", "<tool_call>", "</tool_call>", native_tools=False)

FORMATS: dict[str, ChatFormat] = {f.name: f for f in (HERMES, MISTRAL, LLAMA3, GENERIC)}
"""Checked in this order; the first whose `detect` strings all occur in the template wins, else `generic`."""

REASONING_MARKERS = (
    ReasoningMarkers("<think>", "</think>"),
    ReasoningMarkers("[THINK]", "[/THINK]"),
    ReasoningMarkers("<|START_THINKING|>", "<|END_THINKING|>"),
)
THINKING_SWITCHES = ("enable_thinking", "reasoning_content")
"""Template variables that show a template knows about reasoning (and so that the model can think)."""

GENERIC_TOOL_PROMPT = """\
You can call functions to help answer. These are the functions, as JSON schemas:
{tools}

To call a function, reply with only this, once per call:
<tool_call>
{{"name": "<function name>", "arguments": <JSON object of arguments>}}
</tool_call>
A function's result comes back in a <tool_response> message. If no function is needed, answer normally."""
"""The system text that describes tools to a model whose template does not render them."""


def chat_format(template: str, configured: str | None = None) -> ChatFormat:
    """The format for a template; `configured` (a name from FORMATS) overrides what the template says."""
    if configured:
        return FORMATS[configured]
    for fmt in FORMATS.values():
        if fmt.detect and all(marker in template for marker in fmt.detect):
            return fmt
    return GENERIC


@functools.lru_cache(maxsize=256)
def reasoning_markers(template: str) -> ReasoningMarkers | None:
    """The markers this model puts around its reasoning, or None for a model that does not reason. A template
    that only mentions a thinking switch gets the common `<think>` pair. Kept per template: every model listing
    asks for each model's (a `thinking` capability), and the search of a long template costs tens of
    microseconds."""
    for markers in REASONING_MARKERS:
        if markers.open in template and markers.close in template:
            return markers
    if any(re.search(rf"\b{switch}\b", template) for switch in THINKING_SWITCHES):
        return REASONING_MARKERS[0]
    return None
