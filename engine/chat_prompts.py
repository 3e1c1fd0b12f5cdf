"""Chat requests -> prompt token ids: the chat template, tools and BOS, as the model wants them.

A mixin over ``tokenizer`` and ``config``, shared by the loaded model (engine/api.py's ``LLM``) and the
Ray backend's ingress, which holds the tokenizer but no weights (engine/scaleout/frontend_model.py).
"""

from __future__ import annotations

from typing import Any

from mistralrs.engine.tokenizer.chat_template import DEFAULT_CHATML_TEMPLATE, render_chat
from mistralrs.engine.tools.plan import ToolPlan, plan_tools


class ChatPrompts:
    tokenizer: Any  # engine.tokenizer.TextTokenizer
    config: Any  # conf.schema.Config

    def tool_plan(self, tools: Any = None, tool_choice: Any = None, parallel_tool_calls: Any = None) -> ToolPlan:
        """How a chat request's tools are handled (engine/tools/plan.py); raises ToolRequestError."""
        return plan_tools(self.chat_template, tools, tool_choice, parallel_tool_calls, self.config.serve.tool_parser)

    @property
    def chat_template(self) -> str:
        """The model's chat template (or ChatML's, for a model that ships none)."""
        return self.tokenizer.chat_template or DEFAULT_CHATML_TEMPLATE

    def chat_prompt_ids(self, messages: list[dict[str, Any]], tools: ToolPlan | None = None) -> list[int]:
        """The prompt's token ids; ``tools`` (from :meth:`tool_plan`) puts the offered tools and past
        calls into it as the template or the generic format wants them."""
        tok = self.tokenizer
        if tools is None:
            tools = self.tool_plan()
        messages, extra = tools.render_inputs(messages)
        text = render_chat(self.chat_template, messages, add_generation_prompt=True,
                           bos_token=tok.bos_token, eos_token=tok.eos_token, **extra)
        ids = tok.encode(text, add_special=False, parse_special=True)
        # Templates usually write BOS themselves; add it only when the model wants one and it is absent.
        if tok.add_bos and tok.bos_id is not None and ids[:1] != [tok.bos_id]:
            ids.insert(0, tok.bos_id)
        return ids
