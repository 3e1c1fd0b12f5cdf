"""Gemma's turn format, for model files that ship no chat template (the Gemma 3 270M GGUF has none).

    <bos><start_of_turn>user
    {system}\n\n{user}<end_of_turn>
    <start_of_turn>model
    {assistant}<end_of_turn>
    <start_of_turn>model

Gemma has no system role: system text goes in front of the next user turn. "assistant" is "model".
"""

GEMMA_CHAT_TEMPLATE = r"""{{- bos_token -}}
{%- set ns = namespace(system='') -%}
{%- for message in messages -%}
  {%- set content = (message['content'] or '') | trim -%}
  {%- if message['role'] == 'system' -%}
    {%- set ns.system = ns.system + content + '\n\n' -%}
  {%- elif message['role'] in ('user', 'assistant') -%}
    {%- set role = 'model' if message['role'] == 'assistant' else 'user' -%}
    {{- '<start_of_turn>' + role + '\n' + (ns.system if role == 'user' else '') + content + '<end_of_turn>\n' -}}
    {%- if role == 'user' -%}{%- set ns.system = '' -%}{%- endif -%}
  {%- else -%}
    {{- raise_exception("Gemma's chat roles are system, user and assistant; got " + message['role']) -}}
  {%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}{{- '<start_of_turn>model\n' -}}{%- endif -%}
"""
