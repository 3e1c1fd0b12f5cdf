"""Chat-template rendering in a Jinja2 sandbox, the way HF ``apply_chat_template`` does it.

Templates come from model files, i.e. from strangers: they run in jinja2's
``ImmutableSandboxedEnvironment`` (no access to underscore attributes, no mutation of lists/dicts
passed in), with a few extra limits (unsafe attribute access fails loudly instead of rendering
nothing, huge string/list repetition and powers are refused).  Environment as in HF transformers:
``trim_blocks``/``lstrip_blocks``, the ``loopcontrols`` extension, a ``{% generation %}`` block tag
(rendered as its body), globals ``raise_exception(msg)``, ``strftime_now(fmt)``, a restricted
``dict`` and ``namespace``, and a ``tojson`` filter that does not HTML-escape.

Every failure — syntax error, ``raise_exception`` in the template, sandbox violation, a runtime
error while rendering, malformed messages, a bound hit — is a :class:`ChatTemplateError` with a clear
message.

:func:`render_chat` checks the messages here and renders in a renderer process
(``template_worker``: bounded in time, memory and output size, killable); the process runs
:func:`render_sandboxed`.
"""

from __future__ import annotations

import functools
import json
import operator
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import jinja2
import jinja2.ext
import jinja2.nodes
from jinja2.exceptions import SecurityError, TemplateError, TemplateSyntaxError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from mistralrs.engine.tokenizer import template_worker

__all__ = [
    "DEFAULT_CHATML_TEMPLATE", "ChatTemplateCancelled", "ChatTemplateError", "render_chat", "render_sandboxed",
    "validate_messages",
]


class ChatTemplateError(ValueError):
    """A chat template could not be compiled or rendered, or the messages are malformed."""


class ChatTemplateCancelled(ChatTemplateError):
    """The render was stopped because the process is shutting down (not the template's fault)."""


#: ChatML, used when a model ships no chat template (HF's former default template).
DEFAULT_CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_MAX_REPEAT = 1 << 20  # largest string/list a template may build with `*`
_MAX_POWER_BITS = 4096  # largest result of `**` (in bits)


class _TemplateRaised(TemplateError):
    """raise_exception() called by the template itself."""


class _OutputTooLarge(TemplateError):
    """The output, or a string the template builds, would exceed the output bound."""


# str methods whose integer argument is the length of the result ('x'.ljust(2**30) is 1 GB)
_WIDTH_METHODS = frozenset(["ljust", "rjust", "center", "zfill", "expandtabs"])


def _raise_exception(message: Any) -> None:
    raise _TemplateRaised(str(message))


def _tojson(x: Any, ensure_ascii: bool = False, indent: Any = None, separators: Any = None, sort_keys: bool = False) -> str:
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


class _TemplateDict:
    """``dict(...)`` for templates without exposing the ``dict`` type itself."""

    def __call__(self, *args: Any, **kwargs: Any) -> dict:
        return dict(*args, **kwargs)

    def fromkeys(self, *args: Any, **kwargs: Any) -> dict:
        return dict.fromkeys(*args, **kwargs)


class _TemplateNamespace(jinja2.utils.Namespace):
    """``namespace(...)`` that refuses underscore-prefixed attribute names."""

    def __init__(*args: Any, **kwargs: Any) -> None:  # noqa: N805 - same trick as jinja's Namespace
        self, args = args[0], args[1:]
        attrs = dict(*args, **kwargs)
        for name in attrs:
            _TemplateNamespace._check_name(name)
        jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name: str, value: Any) -> None:
        _TemplateNamespace._check_name(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check_name(name: Any) -> None:
        if isinstance(name, str) and name.startswith("_"):
            raise SecurityError(f"chat templates cannot set underscore-prefixed attribute {name!r} on a namespace")


class _GenerationBlock(jinja2.ext.Extension):
    """``{% generation %}...{% endgeneration %}`` (HF's assistant-mask marker): renders its body."""

    tags = {"generation"}

    def parse(self, parser: Any) -> jinja2.nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_render"), [], [], body).set_lineno(lineno)

    def _render(self, caller: Any) -> str:
        return caller()


class _ChatEnvironment(ImmutableSandboxedEnvironment):
    intercepted_binops = frozenset(["*", "**", "+"])
    max_chars = 16 * 2**20  # set per render by render_sandboxed

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805 - as jinja's
        if type(getattr(__obj, "__self__", None)) is str and getattr(__obj, "__name__", None) in _WIDTH_METHODS:
            for arg in (*args, *kwargs.values()):
                if isinstance(arg, int) and arg > __self.max_chars:
                    raise _OutputTooLarge(f"str.{__obj.__name__}({arg})")
        return super().call(__context, __obj, *args, **kwargs)

    def unsafe_undefined(self, obj: Any, attribute: str) -> Any:
        # jinja's default returns an Undefined that renders as "" — fail loudly instead
        raise SecurityError(f"access to attribute {attribute!r} of {type(obj).__name__!r} object is unsafe")

    def call_binop(self, context: Any, operator_: str, left: Any, right: Any) -> Any:
        if operator_ == "*":
            for seq, count in ((left, right), (right, left)):
                if isinstance(seq, (str, list, tuple)) and isinstance(count, int):
                    if len(seq) * max(count, 0) > _MAX_REPEAT:
                        raise SecurityError(f"chat template tried to build a sequence of {len(seq) * count} items")
            return operator.mul(left, right)
        if operator_ == "**":
            if isinstance(left, int) and isinstance(right, int) and right > 0:
                if abs(left) > 1 and right * max(abs(left).bit_length(), 1) > _MAX_POWER_BITS:
                    raise SecurityError("chat template tried to compute a huge power")
            return operator.pow(left, right)
        if operator_ == "+":
            # a doubling loop ({% set ns.s = ns.s + ns.s %}) reaches gigabytes in 30 steps
            if isinstance(left, (str, list, tuple)) and isinstance(right, (str, list, tuple)):
                if len(left) + len(right) > self.max_chars:
                    raise _OutputTooLarge(f"a sequence of {len(left) + len(right)} items")
            return operator.add(left, right)
        return super().call_binop(context, operator_, left, right)


@functools.lru_cache(maxsize=1)
def _environment() -> _ChatEnvironment:
    env = _ChatEnvironment(
        trim_blocks=True,
        lstrip_blocks=True,
        extensions=[_GenerationBlock, jinja2.ext.loopcontrols],
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    env.globals["dict"] = _TemplateDict()
    env.globals["namespace"] = _TemplateNamespace
    return env


@functools.lru_cache(maxsize=32)
def _compile(template: str) -> jinja2.Template:
    try:
        return _environment().from_string(template)
    except TemplateSyntaxError as exc:
        raise ChatTemplateError(f"chat template syntax error at line {exc.lineno}: {exc.message}") from None
    except TemplateError as exc:
        raise ChatTemplateError(f"invalid chat template: {exc}") from None


def message_text(content: Any, where: str) -> str:
    """A message's ``content`` as text: a string, or text parts joined with newlines; a
    ChatTemplateError naming ``where`` otherwise."""
    return _message_content(content, where)


def _message_content(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, (list, tuple)):
        texts = []
        for j, part in enumerate(content):
            if not isinstance(part, Mapping):
                raise ChatTemplateError(f"{where}.content[{j}] must be an object, got {type(part).__name__}")
            if part.get("type") != "text":
                raise ChatTemplateError(f"{where}.content[{j}].type must be 'text', got {part.get('type')!r}")
            text = part.get("text")
            if not isinstance(text, str):
                raise ChatTemplateError(f"{where}.content[{j}].text must be a string, got {type(text).__name__}")
            texts.append(text)
        return "\n".join(texts)
    raise ChatTemplateError(
        f"{where}.content must be a string or a list of text parts, got {type(content).__name__}"
    )


def validate_messages(messages: Any) -> list[dict]:
    """Checked copies of ``messages``: dicts with a string ``role`` and a string ``content``.

    ``content`` may also be a list of ``{"type": "text", "text": ...}`` parts (joined with
    newlines), or ``None`` on an assistant message that carries ``tool_calls``.  Other keys are kept.
    """
    if not isinstance(messages, (list, tuple)):
        raise ChatTemplateError(f"messages must be a list, got {type(messages).__name__}")
    out = []
    for i, msg in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(msg, Mapping):
            raise ChatTemplateError(f"{where} must be an object, got {type(msg).__name__}")
        role = msg.get("role")
        if not isinstance(role, str) or not role:
            raise ChatTemplateError(f"{where}.role must be a non-empty string, got {role!r}")
        if "content" not in msg:
            raise ChatTemplateError(f"{where}.content is missing")
        content = msg["content"]
        clean = dict(msg)
        if content is None and msg.get("tool_calls"):
            clean["content"] = None
        else:
            clean["content"] = _message_content(content, where)
        out.append(clean)
    return out


def render_chat(
    template: str,
    messages: list[dict],
    *,
    add_generation_prompt: bool = True,
    bos_token: str | None,
    eos_token: str | None,
    **extra: Any,
) -> str:
    """Render ``messages`` with the chat ``template`` (HF ``apply_chat_template(tokenize=False)``).

    ``extra`` goes to the template as further variables (``tools``, ``documents``,
    ``enable_thinking``...; plain data, as they are pickled to the renderer process).  The render
    runs in a renderer process, bounded in time, memory and output size (``template_worker``'s
    limits).  Raises :class:`ChatTemplateError` on any failure.
    """
    if not isinstance(template, str) or not template:
        raise ChatTemplateError("chat template must be a non-empty string")
    clean = validate_messages(messages)
    variables = dict(extra)
    variables.update(
        messages=clean,
        add_generation_prompt=bool(add_generation_prompt),
        bos_token=bos_token if bos_token is not None else "",
        eos_token=eos_token if eos_token is not None else "",
    )
    try:
        return template_worker.render(template, variables)
    except template_worker.RenderCancelled as exc:
        raise ChatTemplateCancelled(str(exc)) from None
    except template_worker.RenderError as exc:
        raise ChatTemplateError(str(exc)) from None


def render_sandboxed(template: str, variables: dict[str, Any], max_chars: int) -> str:
    """``template`` rendered with ``variables`` in this process's sandbox (what a renderer process
    runs): output over ``max_chars`` characters is refused. Raises :class:`ChatTemplateError`, or
    MemoryError (the caller's process is then spent)."""
    compiled = _compile(template)
    compiled.environment.max_chars = max_chars
    try:
        chunks = []
        size = 0
        for chunk in compiled.generate(**variables):
            size += len(chunk)
            if size > max_chars:
                raise _OutputTooLarge(f"{size} characters")
            chunks.append(chunk)
        return "".join(chunks)
    except _OutputTooLarge:
        raise ChatTemplateError(f"chat template output exceeds {max_chars} characters") from None
    except _TemplateRaised as exc:
        raise ChatTemplateError(f"chat template raised an error: {exc.message}") from None
    except SecurityError as exc:
        raise ChatTemplateError(f"chat template blocked by the sandbox: {exc}") from None
    except TemplateError as exc:
        raise ChatTemplateError(f"chat template failed: {type(exc).__name__}: {exc}") from None
    except RecursionError:
        raise ChatTemplateError("chat template failed: recursion too deep") from None
    except MemoryError:
        raise
    except Exception as exc:  # TypeError, KeyError, ZeroDivisionError... raised inside the template
        raise ChatTemplateError(f"chat template failed: {type(exc).__name__}: {exc}") from None
