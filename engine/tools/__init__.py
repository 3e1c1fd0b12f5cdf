"""Tool calling (OpenAI's ``tools``/``tool_choice``): what the request asks, how the tools reach the
prompt, the grammar that enforces ``required`` and named choices, and parsing calls out of the output.

Data flow: :func:`.request.parse_tool_request` checks the request's fields ->
:func:`.prompt.prepare_messages` puts the tools into the chat template's ``tools`` variable or a generic
system prompt -> :func:`.grammar.forced_call_grammar` constrains decoding when a call is required ->
a :class:`.parsers.ToolCallParser` turns the generated text into content and calls, streamed or not.
"""

from mistralrs.engine.tools.calls import ContentDelta, ToolCall, ToolCallDelta
from mistralrs.engine.tools.parsers import TOOL_PARSERS, ToolCallParser, choose_tool_format
from mistralrs.engine.tools.request import ToolRequest, ToolRequestError, parse_tool_request

__all__ = [
    "TOOL_PARSERS",
    "ContentDelta",
    "ToolCall",
    "ToolCallDelta",
    "ToolCallParser",
    "ToolRequest",
    "ToolRequestError",
    "choose_tool_format",
    "parse_tool_request",
]
