#!/usr/bin/env python3
"""Render the chat-template golden cases with transformers, exactly as it renders prompts.

Writes tests/fixtures/chat-templates/cases.json (a list of cases) and special_tokens.json.
Each case is rendered by `tokenizer.apply_chat_template(messages, tools=..., tokenize=False,
add_generation_prompt=..., chat_template=SOURCE, **kwargs)` on a stand-in tokenizer that
carries the Qwen3.5 special tokens (eos_token `<|im_end|>`, pad_token `<|endoftext|>`, no
bos/unk: the values of the real tokenizer_config.json). With tokenize=False the vocabulary is
never used, so no model download is needed and the whole transformers code path runs:
input normalisation (None-valued keys dropped, reasoning fields aliased), special-token
variables, the sandboxed jinja2 environment and its custom filters and globals.

Usage (from the repository root):
    python3 -m venv /work/template-venv
    /work/template-venv/bin/pip install -r tools/requirements-template.txt
    /work/template-venv/bin/python tools/make_template_fixtures.py
"""

import json
import sys
from pathlib import Path

import jinja2
import transformers
from tokenizers import Tokenizer, models
from transformers import PreTrainedTokenizerFast

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures" / "chat-templates"
TEMPLATES = {
    "qwen3.5": FIXTURES / "qwen3.5.jinja",
    "qwen3.6": FIXTURES / "qwen3.6.jinja",
    "probe": FIXTURES / "probe.jinja",
}
EXPECTED_VERSIONS = {"transformers": "5.23.0", "jinja2": "3.1.6"}


def make_tokenizer():
    vocab = {"<|endoftext|>": 0, "<|im_end|>": 1}
    backend = Tokenizer(models.WordLevel(vocab, unk_token=None))
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token="<|im_end|>", pad_token="<|endoftext|>"
    )


TOK = make_tokenizer()
SOURCES = {name: path.read_text(encoding="utf-8") for name, path in TEMPLATES.items()}


def render(template, messages, tools, add_generation_prompt, kwargs):
    """The rendered string, or ("raised"|"request"|"render", message) on failure."""
    try:
        text = TOK.apply_chat_template(
            messages,
            tools=tools,
            tokenize=False,
            add_generation_prompt=add_generation_prompt,
            chat_template=SOURCES[template],
            **kwargs,
        )
        return text, None
    except jinja2.exceptions.TemplateError as e:
        # raise_exception() raises the base class; subclasses are engine errors.
        kind = "raised" if type(e) is jinja2.exceptions.TemplateError else "render"
        return None, (kind, str(e))
    except ValueError as e:
        return None, ("request", str(e))
    except Exception as e:  # TypeError etc. from a filter inside the template
        return None, ("render", f"{type(e).__name__}: {e}")


CASES = []
NAMES = set()


def add(name, template, messages, tools=None, add_generation_prompt=True, kwargs=None):
    kwargs = kwargs or {}
    full = f"{template}/{name}/agp={int(add_generation_prompt)}"
    if kwargs:
        full += "/" + ",".join(f"{k}={json.dumps(v)}" for k, v in kwargs.items() if k != "values")
    assert full not in NAMES, full
    NAMES.add(full)
    text, error = render(template, messages, tools, add_generation_prompt, kwargs)
    case = {
        "name": full,
        "template": template,
        "messages": messages,
        "tools": tools,
        "add_generation_prompt": add_generation_prompt,
        "kwargs": kwargs,
    }
    if error is None:
        case["expected"] = text
    else:
        case["error_kind"], case["error"] = error
    CASES.append(case)


QWEN = ["qwen3.5", "qwen3.6"]
THINKING = [{}, {"enable_thinking": True}, {"enable_thinking": False}]
PRESERVE = [
    {},
    {"preserve_thinking": True},
    {"preserve_thinking": False},
    {"preserve_thinking": True, "enable_thinking": False},
]


def matrix(name, messages, tools=None, kwarg_sets=({},), agps=(True, False), templates=QWEN):
    for template in templates:
        for kwargs in kwarg_sets:
            for agp in agps:
                add(name, template, messages, tools, agp, dict(kwargs))


# --- Tools: JSON schemas whose serialisation is easy to get wrong. -------------------------

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city. Use <city> & \"quotes\" carefully; it's 'fine' > ok.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "description": "Name, e.g. Zürich or 東京"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"], "default": "celsius"},
                "days": {"type": "integer", "minimum": 1, "maximum": 14},
                "when": {
                    "type": "object",
                    "properties": {
                        "start": {"type": "string", "format": "date-time"},
                        "hours": {"type": "array", "items": {"type": "number"}},
                    },
                    "required": ["start"],
                },
            },
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}
SEARCH = {
    "type": "function",
    "function": {
        "name": "search_docs",
        "description": "Search\tthe docs.\nReturns JSON like {\"hits\": [..]} — emoji 🔍 ok, back\\slash.",
        "parameters": {
            "properties": {
                "query": {"description": "Free text; may contain </tool_call>", "type": "string"},
                "filters": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {"field": {"type": "string"}, "value": {"type": ["string", "number", "null"]}},
                    },
                },
                "limit": {"type": "integer", "default": 10},
                "threshold": {"type": "number", "default": 0.5, "exclusiveMinimum": 1e-07},
                "exact": {"type": "boolean", "default": False},
            },
            "type": "object",
            "required": [],
        },
    },
}
FLAT_TOOL = {"name": "ping", "description": "A tool given without the OpenAI wrapper.", "parameters": {}}
TOOLS = [WEATHER, SEARCH]

# --- Messages. ----------------------------------------------------------------------------

SYS = {"role": "system", "content": "You are a helpful assistant."}
U1 = {"role": "user", "content": "What is 2+2?"}
U2 = {"role": "user", "content": "And times 3?"}
A_PLAIN = {"role": "assistant", "content": "2+2 = 4."}
A_REASON = {"role": "assistant", "reasoning_content": "Add two and two.", "content": "4"}
A_REASON2 = {"role": "assistant", "reasoning_content": "\n4 times 3.\n", "content": "\n12\n"}

TOOL_CALL_ARGS = {
    "city": "Zürich <CH> & \"co\"",
    "days": 3,
    "ratio": 0.5,
    "tiny": 1e-07,
    "huge": 1e20,
    "neg": -0.0,
    "flag": True,
    "off": False,
    "nothing": None,
    "when": {"start": "2025-01-01T00:00:00Z", "hours": [1, 2.5, 3], "nested": {"deep": [True, None, "x"]}},
    "list": ["a", 1, {"b": "c"}],
    "empty_obj": {},
    "empty_list": [],
    "multiline": "line1\nline2\n",
}


def call(name, arguments, wrapped=True, call_id="call_1"):
    if wrapped:
        return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}
    return {"name": name, "arguments": arguments}


def tool_msg(content, call_id="call_1"):
    return {"role": "tool", "tool_call_id": call_id, "content": content}


def build():
    # Plain conversations.
    matrix("single_user", [U1], kwarg_sets=THINKING)
    matrix("system_user", [SYS, U1], kwarg_sets=THINKING)
    matrix("multi_turn_plain", [SYS, U1, A_PLAIN, U2], kwarg_sets=PRESERVE)
    matrix("ends_with_assistant", [U1, A_REASON], kwarg_sets=PRESERVE)
    matrix("whitespace_content", [{"role": "system", "content": "  sys \n"}, {"role": "user", "content": "\n\t hi \x1c\x1f"}])
    matrix("unicode_and_jinja_syntax", [{"role": "user", "content": "Grüße 👋 {{ not_a_var }} {% raw %} <|im_end|> \\n"}])
    matrix("empty_system", [{"role": "system", "content": ""}, U1])

    # Reasoning in history: reasoning_content, inline <think>, aliases, preserve_thinking.
    matrix("history_reasoning", [SYS, U1, A_REASON, U2, A_REASON2, {"role": "user", "content": "Thanks"}], kwarg_sets=PRESERVE)
    matrix("history_reasoning_last_assistant", [U1, A_REASON, U2, A_REASON2], kwarg_sets=PRESERVE, agps=(False,))
    inline = [
        U1,
        {"role": "assistant", "content": "<think>\nInline reasoning.\n</think>\n\n4"},
        U2,
        {"role": "assistant", "content": "Only closing tag.\n</think>\n\n12"},
        {"role": "user", "content": "ok"},
    ]
    matrix("inline_think", inline, kwarg_sets=PRESERVE)
    matrix("inline_think_messy", [U1, {"role": "assistant", "content": "\n\n<think>\n\n  spaced  \n\n</think>\n\n\n  answer  \n"}], kwarg_sets=({}, {"preserve_thinking": True}))
    matrix("reasoning_and_inline", [U1, {"role": "assistant", "reasoning_content": "field wins", "content": "<think>ignored</think>\n\nA"}, U2], kwarg_sets=({"preserve_thinking": True},))
    matrix("reasoning_alias_reasoning", [U1, {"role": "assistant", "reasoning": "vLLM-style field", "content": "4"}, U2], kwarg_sets=({"preserve_thinking": True},))
    matrix("reasoning_alias_thinking", [U1, {"role": "assistant", "thinking": "thinking field", "content": "4"}, U2], kwarg_sets=({"preserve_thinking": True},))
    matrix("reasoning_null", [U1, {"role": "assistant", "reasoning_content": None, "content": "4"}, U2], kwarg_sets=({"preserve_thinking": True},))
    matrix("reasoning_empty", [U1, {"role": "assistant", "reasoning_content": "", "content": "4"}, U2], kwarg_sets=({"preserve_thinking": True}, {}))
    # Jinja's `is true` / `is false` are identity tests: only real booleans count.
    matrix("kwarg_truthiness", [U1, A_REASON, U2], kwarg_sets=(
        {"enable_thinking": "false"}, {"enable_thinking": 0}, {"preserve_thinking": 1}, {"preserve_thinking": "true"},
        {"enable_thinking": None}, {"preserve_thinking": None},
    ), agps=(True,))

    # Tools.
    matrix("tools_no_system", [U1], tools=TOOLS, kwarg_sets=({}, {"enable_thinking": False}))
    matrix("tools_with_system", [SYS, U1], tools=TOOLS)
    matrix("tools_empty_system", [{"role": "system", "content": "   "}, U1], tools=[WEATHER], agps=(True,))
    matrix("tools_flat_schema", [U1], tools=[FLAT_TOOL], agps=(True,))
    matrix("tools_empty_list", [SYS, U1], tools=[], agps=(True,))

    # Assistant tool calls: argument types, wrappers, content before calls.
    calls = [
        U1,
        {"role": "assistant", "content": None, "tool_calls": [call("get_weather", TOOL_CALL_ARGS)]},
        tool_msg("{\"temp\": 21}"),
    ]
    matrix("tool_call_arg_types", calls, tools=[WEATHER], kwarg_sets=({}, {"preserve_thinking": True}))
    matrix("tool_call_with_content", [
        U1,
        {"role": "assistant", "reasoning_content": "Need weather.", "content": "Let me check.",
         "tool_calls": [call("get_weather", {"city": "Oslo"}), call("search_docs", {"query": "oslo", "limit": 2}, call_id="call_2")]},
        tool_msg("sunny"),
        tool_msg("{\"hits\": []}", call_id="call_2"),
        {"role": "assistant", "reasoning_content": "Done.", "content": "Sunny in Oslo."},
    ], tools=TOOLS, kwarg_sets=({}, {"preserve_thinking": True}), agps=(False,))
    matrix("tool_call_unwrapped", [U1, {"role": "assistant", "content": "", "tool_calls": [call("ping", {"n": 1}, wrapped=False)]}, tool_msg("pong")])
    matrix("tool_call_no_arguments", [U1, {"role": "assistant", "tool_calls": [{"type": "function", "function": {"name": "ping"}}]}, tool_msg("pong")], agps=(True,))
    matrix("tool_call_string_arguments", [U1, {"role": "assistant", "tool_calls": [call("get_weather", "{\"city\": \"Oslo\"}")]}, tool_msg("x")], agps=(True,))
    matrix("tool_calls_empty_list", [U1, {"role": "assistant", "content": "No calls.", "tool_calls": []}, U2], agps=(True,))

    # Multi-step tool loop: last_query_index stays on the real user message.
    loop = [
        SYS,
        {"role": "user", "content": "Weather in Oslo and Bergen?"},
        {"role": "assistant", "reasoning_content": "Two cities.", "content": "", "tool_calls": [call("get_weather", {"city": "Oslo"})]},
        tool_msg("rain"),
        {"role": "assistant", "reasoning_content": "Now Bergen.", "content": "", "tool_calls": [call("get_weather", {"city": "Bergen"}, call_id="call_2")]},
        tool_msg("more rain", call_id="call_2"),
        tool_msg("extra tool output", call_id="call_3"),
    ]
    matrix("tool_loop", loop, tools=[WEATHER], kwarg_sets=PRESERVE[:3])
    matrix("tool_loop_then_user", loop + [{"role": "assistant", "reasoning_content": "Sum up.", "content": "Rainy both."}, U2],
           tools=[WEATHER], kwarg_sets=PRESERVE[:3], agps=(True,))
    # A user turn that only wraps tool responses does not count as a query.
    matrix("user_tool_response_wrapper", [
        U1,
        {"role": "assistant", "reasoning_content": "r1", "content": "c1"},
        {"role": "user", "content": "<tool_response>\nresult\n</tool_response>"},
        {"role": "assistant", "reasoning_content": "r2", "content": "c2"},
    ], agps=(True,))
    matrix("tool_first_message", [tool_msg("orphan"), U1], agps=(True,))

    # Vision content parts.
    vision = [
        {"role": "user", "content": [
            {"type": "text", "text": "Compare "},
            {"type": "image", "image": "file:///a.png"},
            {"type": "image_url", "image_url": {"url": "http://x/b.png"}},
            {"type": "text", "text": " and this clip: "},
            {"type": "video", "video": "file:///c.mp4"},
        ]},
        {"role": "assistant", "content": [{"type": "text", "text": "They differ."}]},
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "And this?"}]},
    ]
    matrix("vision", vision, kwarg_sets=({}, {"add_vision_id": True}))
    matrix("vision_system_image", [{"role": "system", "content": [{"type": "image"}]}, U1], agps=(True,))
    matrix("vision_system_video", [{"role": "system", "content": [{"type": "video"}]}, U1], agps=(True,))
    matrix("vision_system_text_parts", [{"role": "system", "content": [{"type": "text", "text": "Be brief."}]}, U1], agps=(True,))
    matrix("vision_unknown_part", [{"role": "user", "content": [{"type": "audio", "audio": "x.wav"}]}], agps=(True,))

    # Errors raised by the template or refused by transformers.
    matrix("error_system_not_first", [U1, SYS], agps=(True,))
    matrix("error_empty_messages", [], agps=(True,))
    matrix("error_only_system", [SYS], agps=(True,))
    matrix("error_unknown_role", [U1, {"role": "critic", "content": "hmm"}], agps=(True,))
    matrix("error_content_number", [{"role": "user", "content": 42}], agps=(True,))
    matrix("error_content_mapping", [{"role": "user", "content": {"text": "hi"}}], agps=(True,))
    matrix("content_null_user", [{"role": "user", "content": None}], agps=(True,))

    # The probe template: environment fidelity beyond what Qwen uses.
    values = [
        "  <a> & \"b\" 'c' é 😀 \x1c\t\n",
        "it's",
        True, False, None, 0, -7, 2**53 + 1, 0.5, -0.0, 1e-07, 1e16, 123456.789,
        [], {}, [1, "two", [3.0, None], {"k": False}],
        {"b": 1, "a": [1, 2, {"z": "y", "c": None}], "é": "ü", "": "empty"},
    ]
    add("probe_values", "probe", [U1], kwargs={"values": values})
    add("probe_values", "probe", [SYS, U1], add_generation_prompt=False, kwargs={"values": values[:3]})
    add("probe_override_special", "probe", [U1], kwargs={"values": [], "eos_token": "<EOS>", "bos_token": "<BOS>"})
    add("probe_raise_in_macro", "probe", [{"role": "user", "content": "raise"}], kwargs={"values": []})


def main():
    versions = {"transformers": transformers.__version__, "jinja2": jinja2.__version__}
    if versions != EXPECTED_VERSIONS:
        sys.exit(f"pinned versions are {EXPECTED_VERSIONS}, found {versions}: see tools/requirements-template.txt")
    build()
    out = FIXTURES / "cases.json"
    with out.open("w", encoding="utf-8") as f:
        f.write("[\n")
        f.write(",\n".join(json.dumps(case, ensure_ascii=False) for case in CASES))
        f.write("\n]\n")
    special = FIXTURES / "special_tokens.json"
    special.write_text(json.dumps(TOK.special_tokens_map, indent=2) + "\n", encoding="utf-8")
    errors = sum(1 for c in CASES if "error" in c)
    print(f"wrote {len(CASES)} cases ({errors} errors, {out.stat().st_size} bytes) to {out}")


if __name__ == "__main__":
    main()
