"""Drives a running `qinfer serve` with the official OpenAI and Anthropic Python SDKs.

Usage: python check_sdks.py BASE_URL MODEL API_KEY

Exercises, per SDK: a streaming chat and a tool-call round trip (an assistant tool call in the
history, the tool's result, and the answer); for openai also the Responses API (create, stream,
function-call items, previous_response_id, retrieve, delete) and the structured-output parse
helpers (`chat.completions.parse`, `responses.parse` with a Pydantic model). The model behind the server may have random
weights, so the checks are about the protocol: the SDK parses every response and event
without error, streams end properly, usage is reported. Images go through both SDKs
(`check_images`). Exits non-zero on any failure.
"""

import base64
import sys
from pathlib import Path
from typing import Literal

import anthropic
import openai
from pydantic import BaseModel, Field


class Finding(BaseModel):
    """A structured answer: the SDK turns it into a strict JSON Schema and parses the reply."""
    kind: Literal["error", "warning", "note"]
    line: int = Field(ge=1, le=9999)
    ok: bool
    note: str = Field(max_length=16)


def check_openai(base, model, key, seeds=5):
    client = openai.OpenAI(base_url=base + "/v1", api_key=key, max_retries=0)
    # Streaming chat.
    stream = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "Say hello"}],
        max_tokens=8,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks, "no chunks"
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finish == ["length"], finish
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 8, chunks[-1]
    # Non-streaming chat.
    r = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Hi"}], max_tokens=4, temperature=0
    )
    assert r.choices[0].finish_reason == "length", r
    assert r.usage.prompt_tokens_details.cached_tokens == 0, r.usage
    # Tool-call round trip.
    tools = [{
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather of a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }]
    messages = [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [{
            "id": "call_1", "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
        }]},
        {"role": "tool", "tool_call_id": "call_1", "content": "18 C"},
    ]
    r = client.chat.completions.create(
        model=model, messages=messages, tools=tools, max_tokens=6, temperature=0
    )
    assert r.choices[0].message.role == "assistant", r
    # A forced (named) tool call: the SDK parses whatever comes back.
    r = client.chat.completions.create(
        model=model, messages=messages[:1], tools=tools, max_tokens=12, temperature=0,
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
    )
    assert r.choices[0].message is not None
    # Any model name is served (the server serves one model) and reported as the served one.
    r = client.chat.completions.create(model="gpt-5-codex", messages=messages[:1], max_tokens=2)
    assert r.model == model, r.model
    # Errors surface as the SDK's typed exceptions.
    try:
        client.chat.completions.create(model=model, messages=messages[:1], max_tokens=10**9)
        raise AssertionError("an output budget past the context accepted")
    except openai.BadRequestError as e:
        assert e.code == "context_length_exceeded", e.code
    # Structured outputs: the SDK's parse helpers send a strict JSON Schema and parse the
    # answer into the model class (it raises if the answer does not validate).
    for seed in range(seeds):
        r = client.chat.completions.parse(
            model=model, messages=[{"role": "user", "content": "Report one finding."}],
            response_format=Finding, max_tokens=200, temperature=1.0, seed=seed,
            extra_body={"chat_template_kwargs": {"enable_thinking": False}},
        )
        assert isinstance(r.choices[0].message.parsed, Finding), r
    check_responses(client, model)
    print("openai ok")


def check_responses(client, model):
    """The Responses API: what Codex and `responses.create` / `responses.stream` use."""
    tools = [{
        "type": "function", "name": "get_weather", "description": "Weather of a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    }]
    r = client.responses.create(
        model=model, instructions="Be brief.", input="Say hello", max_output_tokens=8,
        temperature=0, reasoning={"effort": "low", "summary": "auto"},
        include=["reasoning.encrypted_content"],
    )
    assert r.status == "incomplete" and r.incomplete_details.reason == "max_output_tokens", r
    assert r.usage.output_tokens == 8 and r.usage.input_tokens_details.cached_tokens >= 0, r.usage
    assert isinstance(r.output_text, str)
    kinds = [item.type for item in r.output]
    assert "message" in kinds, kinds
    # Raw events, then the SDK's accumulating stream helper (which checks that every delta
    # belongs to an item it was told about, and that items finish in order).
    events = list(client.responses.create(model=model, input="Say hello", max_output_tokens=6,
                                          temperature=0, stream=True))
    assert events[0].type == "response.created" and events[-1].type == "response.incomplete", events
    with client.responses.stream(model=model, input="Say hello", max_output_tokens=6, temperature=0,
                                 reasoning={"summary": "auto"}) as stream:
        names = [e.type for e in stream]
    assert names[0] == "response.created" and "response.output_item.done" in names, names
    # A function-call round trip as input items, reasoning sent back, nothing stored.
    history = [
        {"role": "user", "content": "Weather in Paris?"},
        *[item.model_dump(exclude_none=True) for item in r.output if item.type == "reasoning"],
        {"type": "function_call", "call_id": "call_1", "name": "get_weather",
         "arguments": '{"city": "Paris"}'},
        {"type": "function_call_output", "call_id": "call_1", "output": "18 C"},
    ]
    t = client.responses.create(model=model, input=history, tools=tools, max_output_tokens=6,
                                temperature=0, store=False, parallel_tool_calls=False)
    assert t.status in ("completed", "incomplete"), t
    # Structured outputs through the Responses API.
    for seed in range(5):
        p = client.responses.parse(model=model, input="Report one finding.", text_format=Finding,
                                   max_output_tokens=200, temperature=1.0, reasoning={"effort": "none"},
                                   extra_body={"seed": seed})
        assert isinstance(p.output_parsed, Finding), p
    # Stored responses continue, can be read back and deleted.
    again = client.responses.create(model=model, previous_response_id=r.id, input="And again",
                                    max_output_tokens=4, temperature=0)
    assert again.usage.input_tokens > r.usage.input_tokens, again.usage
    assert client.responses.retrieve(r.id).id == r.id
    client.responses.delete(r.id)
    try:
        client.responses.retrieve(r.id)
        raise AssertionError("a deleted response came back")
    except openai.NotFoundError:
        pass


def check_anthropic(base, model, key):
    client = anthropic.Anthropic(base_url=base, api_key=key, max_retries=0)
    # Streaming, with thinking.
    with client.messages.stream(
        model=model,
        max_tokens=12,
        extra_body={"temperature": 0},
        thinking={"type": "enabled", "budget_tokens": 1024},
        messages=[{"role": "user", "content": "Say hello"}],
    ) as stream:
        events = [e.type for e in stream]
        final = stream.get_final_message()
    assert events[0] == "message_start" and events[-1] == "message_stop", events
    assert final.stop_reason == "max_tokens", final
    assert final.usage.output_tokens == 12, final.usage
    # Tool-use round trip.
    tools = [{
        "name": "get_weather",
        "description": "Weather of a city",
        "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
    }]
    r = client.messages.create(
        model=model,
        max_tokens=6,
        extra_body={"temperature": 0},
        tools=tools,
        messages=[
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": [
                {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}},
            ]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": "18 C"},
            ]},
        ],
    )
    assert r.role == "assistant", r
    n = client.messages.count_tokens(model=model, messages=[{"role": "user", "content": "Hi"}])
    assert n.input_tokens > 0, n
    try:
        client.messages.create(model=model, max_tokens=2, messages=[{"role": "wizard", "content": "x"}])
        raise AssertionError("bad role accepted")
    except anthropic.BadRequestError:
        pass
    print("anthropic ok")


def image_b64():
    """A committed fixture image (100x60 PNG), base64."""
    path = Path(__file__).resolve().parent.parent.parent / "tests/fixtures/tiny-vl-f32/image_a.png"
    return base64.b64encode(path.read_bytes()).decode()


def check_images(base, model, key):
    """An image through each SDK as its documentation shows it (OpenAI `image_url` data URL,
    Anthropic base64 `image` block); a second turn about the same image resumes from the prompt
    cache past it."""
    data = image_b64()
    oa = openai.OpenAI(base_url=base + "/v1", api_key=key, max_retries=0)
    content = [
        {"type": "text", "text": "What is in this image?"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{data}"}},
    ]
    kwargs = {"chat_template_kwargs": {"preserve_thinking": True}}
    first = oa.chat.completions.create(model=model, messages=[{"role": "user", "content": content}],
                                       max_tokens=4, temperature=0, extra_body=kwargs)
    plain = oa.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "What is in this image?"}],
        max_tokens=4, temperature=0)
    # 77 image tokens and the vision start/end tokens.
    assert first.usage.prompt_tokens == plain.usage.prompt_tokens + 79, (first.usage, plain.usage)
    m = first.choices[0].message
    turn = [
        {"role": "user", "content": content},
        {"role": "assistant", "content": m.content or "", "reasoning_content": getattr(m, "reasoning_content", None)},
        {"role": "user", "content": "And the colours?"},
    ]
    second = oa.chat.completions.create(model=model, messages=turn, max_tokens=2, temperature=0,
                                        extra_body=kwargs)
    cached = second.usage.prompt_tokens_details.cached_tokens
    assert cached >= first.usage.prompt_tokens, (cached, first.usage)
    an = anthropic.Anthropic(base_url=base, api_key=key, max_retries=0)
    r = an.messages.create(model=model, max_tokens=4, extra_body={"temperature": 0}, messages=[{
        "role": "user",
        "content": [
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": data}},
            {"type": "text", "text": "Describe this image."},
        ],
    }])
    assert r.usage.input_tokens > 79, r.usage
    try:
        an.messages.create(model=model, max_tokens=4, messages=[{"role": "user", "content": [
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "aGVsbG8="}},
        ]}])
        raise AssertionError("a non-image accepted")
    except anthropic.BadRequestError as e:
        assert "not a recognised image" in str(e), e
    print("images ok")


def main():
    base, model, key = sys.argv[1], sys.argv[2], sys.argv[3]
    # Optional: how many seeded structured-output answers (up to 200 tokens each) to check;
    # the run against a model on a software GPU driver takes fewer.
    seeds = int(sys.argv[4]) if len(sys.argv) > 4 else 5
    check_openai(base, model, key, seeds)
    check_anthropic(base, model, key)
    check_images(base, model, key)


if __name__ == "__main__":
    main()
