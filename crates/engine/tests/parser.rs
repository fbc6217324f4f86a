//! The output parser: a table of model outputs and what they must parse to, each run in one
//! push, one character per push, and in seeded random chunks; plus a seeded fuzz over tag
//! fragments. Every run also checks the event invariants (indices, argument deltas, and that
//! only tags and whitespace are dropped).

use qinfer_engine::parser::{
    Event, Finished, OutputParser, Parsed, ParserOptions, ToolSpec, ToolSpecError, parse_complete,
};
use qinfer_testkit::Rng;
use serde_json::{Value, json};

/// The tools every case is parsed with (OpenAI format, as a request carries them).
fn tools() -> Vec<ToolSpec> {
    let defs = json!([
        {"type": "function", "function": {"name": "get_weather", "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "days": {"type": "integer"},
                "units": {"enum": ["celsius", "fahrenheit"]}
            },
            "required": ["city"]
        }}},
        {"type": "function", "function": {"name": "write_file", "parameters": {
            "type": "object",
            "properties": {"path": {"type": "string"}, "content": {"type": "string"}}
        }}},
        {"type": "function", "function": {"name": "set_config", "parameters": {
            "type": "object",
            "properties": {
                "count": {"type": "integer"},
                "ratio": {"type": "number"},
                "enabled": {"type": "boolean"},
                "options": {"type": "object"},
                "tags": {"type": "array", "items": {"type": "string"}},
                "nothing": {"type": "null"},
                "limit": {"type": ["integer", "null"]},
                "label": {"type": ["string", "null"]},
                "mode": {"anyOf": [{"type": "integer"}, {"type": "boolean"}]}
            }
        }}},
        {"name": "list_files", "parameters": {"type": "object", "properties": {}}}
    ]);
    defs.as_array()
        .unwrap()
        .iter()
        .map(|def| ToolSpec::from_openai(def).unwrap())
        .collect()
}

struct Case {
    name: &'static str,
    /// `ParserOptions::starts_in_reasoning`.
    thinking: bool,
    input: &'static str,
    reasoning: &'static str,
    content: &'static str,
    /// JSON array of `{"name", "arguments"}`; compared as text, so argument order matters.
    calls: &'static str,
    /// `Finished::truncated_tool_call`.
    truncated: bool,
}

const NO_CALLS: &str = "[]";

const CASES: &[Case] = &[
    Case {
        name: "plain content",
        thinking: false,
        input: "Hello, world!\nHow are you?",
        reasoning: "",
        content: "Hello, world!\nHow are you?",
        calls: NO_CALLS,
        truncated: false,
    },
    Case {
        name: "empty output",
        thinking: false,
        input: "",
        reasoning: "",
        content: "",
        calls: NO_CALLS,
        truncated: false,
    },
    Case {
        name: "empty output in thinking mode",
        thinking: true,
        input: "",
        reasoning: "",
        content: "",
        calls: NO_CALLS,
        truncated: false,
    },
    Case {
        name: "whitespace away from tags is kept",
        thinking: false,
        input: "  indented\n\n\tand trailing \n\n",
        reasoning: "",
        content: "  indented\n\n\tand trailing \n\n",
        calls: NO_CALLS,
        truncated: false,
    },
    Case {
        name: "thinking mode: reasoning then content",
        thinking: true,
        input: "The user says hello.\nI should greet back.\n</think>\n\nHello! How can I help?",
        reasoning: "The user says hello.\nI should greet back.",
        content: "Hello! How can I help?",
        calls: NO_CALLS,
        truncated: false,
    },
    Case {
        name: "thinking mode: a leading newline is stripped",
        thinking: true,
        input: "\nReason.\n</think>\n\nAnswer.",
        reasoning: "Reason.",
        content: "Answer.",
        calls: NO_CALLS,
        truncated: false,
    },
    Case {
        name: "thinking mode: unterminated reasoning",
        thinking: true,
        input: "Still thinking about it\n",
        reasoning: "Still thinking about it\n",
        content: "",
        calls: NO_CALLS,
        truncated: false,
    },
    Case {
        name: "non-thinking prefix",
        thinking: false,
        input: "<think>\n\n</think>\n\nHi there.",
        reasoning: "",
        content: "Hi there.",
        calls: NO_CALLS,
        truncated: false,
    },
    Case {
        name: "think block emitted without a thinking prompt",
        thinking: false,
        input: "<think>\nLet me think.\n</think>\n\nThe answer is 4.",
        reasoning: "Let me think.",
        content: "The answer is 4.",
        calls: NO_CALLS,
        truncated: false,
    },
    Case {
        name: "only </think> in thinking mode",
        thinking: true,
        input: "</think>",
        reasoning: "",
        content: "",
        calls: NO_CALLS,
        truncated: false,
    },
    Case {
        name: "only </think> in content mode",
        thinking: false,
        input: "</think>",
        reasoning: "",
        content: "",
        calls: NO_CALLS,
        truncated: false,
    },
    Case {
        name: "stray </think> in content is dropped with the newlines after it",
        thinking: false,
        input: "Leaked reasoning.\n</think>\n\nAnswer.",
        reasoning: "",
        content: "Leaked reasoning.\nAnswer.",
        calls: NO_CALLS,
        truncated: false,
    },
    Case {
        name: "<think> inside reasoning is text",
        thinking: true,
        input: "Tags like <think> matter.\n</think>\n\nok",
        reasoning: "Tags like <think> matter.",
        content: "ok",
        calls: NO_CALLS,
        truncated: false,
    },
    Case {
        name: "tool call after reasoning",
        thinking: true,
        input: "I need the weather.\n</think>\n\n<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n</function>\n</tool_call>",
        reasoning: "I need the weather.",
        content: "",
        calls: r#"[{"name":"get_weather","arguments":{"city":"Paris"}}]"#,
        truncated: false,
    },
    Case {
        name: "content then tool call",
        thinking: false,
        input: "Let me check.\n\n<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n<parameter=days>\n3\n</parameter>\n</function>\n</tool_call>",
        reasoning: "",
        content: "Let me check.",
        calls: r#"[{"name":"get_weather","arguments":{"city":"Paris","days":3}}]"#,
        truncated: false,
    },
    Case {
        name: "tool call inside unterminated think",
        thinking: true,
        input: "I should look it up.\n<tool_call>\n<function=get_weather>\n<parameter=city>\nBerlin\n</parameter>\n</function>\n</tool_call>",
        reasoning: "I should look it up.",
        content: "",
        calls: r#"[{"name":"get_weather","arguments":{"city":"Berlin"}}]"#,
        truncated: false,
    },
    Case {
        name: "tool call inside think, then </think> and content",
        thinking: true,
        input: "Check first.\n\n<tool_call>\n<function=get_weather>\n<parameter=city>\nOslo\n</parameter>\n</function>\n</tool_call>\n</think>\n\nDone.",
        reasoning: "Check first.",
        content: "Done.",
        calls: r#"[{"name":"get_weather","arguments":{"city":"Oslo"}}]"#,
        truncated: false,
    },
    Case {
        name: "two parallel tool calls",
        thinking: false,
        input: "<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n</function>\n</tool_call>\n<tool_call>\n<function=get_weather>\n<parameter=city>\nTokyo\n</parameter>\n</function>\n</tool_call>",
        reasoning: "",
        content: "",
        calls: r#"[{"name":"get_weather","arguments":{"city":"Paris"}},{"name":"get_weather","arguments":{"city":"Tokyo"}}]"#,
        truncated: false,
    },
    Case {
        name: "text between and after calls is content",
        thinking: false,
        input: "<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n</function>\n</tool_call>\nAnd also:\n<tool_call>\n<function=list_files>\n</function>\n</tool_call>\n\nThat is all.",
        reasoning: "",
        content: "And also:That is all.",
        calls: r#"[{"name":"get_weather","arguments":{"city":"Paris"}},{"name":"list_files","arguments":{}}]"#,
        truncated: false,
    },
    Case {
        name: "parameters out of schema order keep written order",
        thinking: false,
        input: "<tool_call>\n<function=get_weather>\n<parameter=units>\ncelsius\n</parameter>\n<parameter=days>\n2\n</parameter>\n<parameter=city>\nRome\n</parameter>\n</function>\n</tool_call>",
        reasoning: "",
        content: "",
        calls: r#"[{"name":"get_weather","arguments":{"units":"celsius","days":2,"city":"Rome"}}]"#,
        truncated: false,
    },
    Case {
        name: "value containing < and </",
        thinking: false,
        input: "<tool_call>\n<function=write_file>\n<parameter=path>\nindex.html\n</parameter>\n<parameter=content>\n<div class=\"a\">if a < b && c > d</div>\n</para\n</parameter text\n<parameter=fake>\n</tool_call> </think> <tool_call>\n</parameter>\n</function>\n</tool_call>",
        reasoning: "",
        content: "",
        calls: r#"[{"name":"write_file","arguments":{"path":"index.html","content":"<div class=\"a\">if a < b && c > d</div>\n</para\n</parameter text\n<parameter=fake>\n</tool_call> </think> <tool_call>"}}]"#,
        truncated: false,
    },
    Case {
        name: "multi-line code value loses exactly one newline each side",
        thinking: false,
        input: "<tool_call>\n<function=write_file>\n<parameter=path>\nmain.py\n</parameter>\n<parameter=content>\n\ndef f(x):\n    if x:\n        return 1\n\n    return 0\n\n</parameter>\n</function>\n</tool_call>",
        reasoning: "",
        content: "",
        calls: r#"[{"name":"write_file","arguments":{"path":"main.py","content":"\ndef f(x):\n    if x:\n        return 1\n\n    return 0\n"}}]"#,
        truncated: false,
    },
    Case {
        name: "values typed by schema",
        thinking: false,
        input: "<tool_call>\n<function=set_config>\n<parameter=count>\n42\n</parameter>\n<parameter=ratio>\n0.5\n</parameter>\n<parameter=enabled>\ntrue\n</parameter>\n<parameter=options>\n{\"a\": [1, 2], \"b\": {\"c\": null}}\n</parameter>\n<parameter=tags>\n[\"x\", \"y\"]\n</parameter>\n<parameter=nothing>\nnull\n</parameter>\n<parameter=mode>\nfalse\n</parameter>\n</function>\n</tool_call>",
        reasoning: "",
        content: "",
        calls: r#"[{"name":"set_config","arguments":{"count":42,"ratio":0.5,"enabled":true,"options":{"a":[1,2],"b":{"c":null}},"tags":["x","y"],"nothing":null,"mode":false}}]"#,
        truncated: false,
    },
    Case {
        name: "Python spellings from re-rendered history",
        thinking: false,
        input: "<tool_call>\n<function=set_config>\n<parameter=enabled>\nFalse\n</parameter>\n<parameter=nothing>\nNone\n</parameter>\n<parameter=mode>\nTrue\n</parameter>\n</function>\n</tool_call>",
        reasoning: "",
        content: "",
        calls: r#"[{"name":"set_config","arguments":{"enabled":false,"nothing":null,"mode":true}}]"#,
        truncated: false,
    },
    Case {
        name: "nullable types",
        thinking: false,
        input: "<tool_call>\n<function=set_config>\n<parameter=limit>\nnull\n</parameter>\n<parameter=label>\nnull\n</parameter>\n</function>\n</tool_call>\n<tool_call>\n<function=set_config>\n<parameter=limit>\n7\n</parameter>\n<parameter=label>\n7\n</parameter>\n</function>\n</tool_call>",
        reasoning: "",
        content: "",
        calls: r#"[{"name":"set_config","arguments":{"limit":null,"label":null}},{"name":"set_config","arguments":{"limit":7,"label":"7"}}]"#,
        truncated: false,
    },
    Case {
        name: "string params stay strings even when they look like JSON",
        thinking: false,
        input: "<tool_call>\n<function=write_file>\n<parameter=path>\n12345\n</parameter>\n<parameter=content>\n{\"a\": 1}\n</parameter>\n</function>\n</tool_call>",
        reasoning: "",
        content: "",
        calls: r#"[{"name":"write_file","arguments":{"path":"12345","content":"{\"a\": 1}"}}]"#,
        truncated: false,
    },
    Case {
        name: "enum of strings is a string",
        thinking: false,
        input: "<tool_call>\n<function=get_weather>\n<parameter=city>\ntrue\n</parameter>\n<parameter=units>\nnull\n</parameter>\n</function>\n</tool_call>",
        reasoning: "",
        content: "",
        calls: r#"[{"name":"get_weather","arguments":{"city":"true","units":"null"}}]"#,
        truncated: false,
    },
    Case {
        name: "invalid JSON for a typed param falls back to the raw string",
        thinking: false,
        input: "<tool_call>\n<function=set_config>\n<parameter=count>\nmany\n</parameter>\n<parameter=options>\n{a: 1}\n</parameter>\n<parameter=enabled>\nyes\n</parameter>\n</function>\n</tool_call>",
        reasoning: "",
        content: "",
        calls: r#"[{"name":"set_config","arguments":{"count":"many","options":"{a: 1}","enabled":"yes"}}]"#,
        truncated: false,
    },
    Case {
        name: "unknown tool: JSON if it parses, else string",
        thinking: false,
        input: "<tool_call>\n<function=do_thing>\n<parameter=x>\n1\n</parameter>\n<parameter=y>\nhello world\n</parameter>\n<parameter=z>\n[1, 2]\n</parameter>\n<parameter=w>\nfalse\n</parameter>\n</function>\n</tool_call>",
        reasoning: "",
        content: "",
        calls: r#"[{"name":"do_thing","arguments":{"x":1,"y":"hello world","z":[1,2],"w":false}}]"#,
        truncated: false,
    },
    Case {
        name: "unknown parameter of a known tool",
        thinking: false,
        input: "<tool_call>\n<function=get_weather>\n<parameter=city>\nLima\n</parameter>\n<parameter=hourly>\ntrue\n</parameter>\n</function>\n</tool_call>",
        reasoning: "",
        content: "",
        calls: r#"[{"name":"get_weather","arguments":{"city":"Lima","hourly":true}}]"#,
        truncated: false,
    },
    Case {
        name: "no parameters",
        thinking: false,
        input: "<tool_call>\n<function=list_files>\n</function>\n</tool_call>",
        reasoning: "",
        content: "",
        calls: r#"[{"name":"list_files","arguments":{}}]"#,
        truncated: false,
    },
    Case {
        name: "repeated parameter: first position, last value",
        thinking: false,
        input: "<tool_call>\n<function=get_weather>\n<parameter=city>\nA\n</parameter>\n<parameter=days>\n1\n</parameter>\n<parameter=city>\nB\n</parameter>\n</function>\n</tool_call>",
        reasoning: "",
        content: "",
        calls: r#"[{"name":"get_weather","arguments":{"city":"B","days":1}}]"#,
        truncated: false,
    },
    Case {
        name: "no newlines around values or tags",
        thinking: false,
        input: "<tool_call><function=get_weather><parameter=city>Paris</parameter><parameter=days>4</parameter></function></tool_call>",
        reasoning: "",
        content: "",
        calls: r#"[{"name":"get_weather","arguments":{"city":"Paris","days":4}}]"#,
        truncated: false,
    },
    Case {
        name: "truncated call at max tokens is content",
        thinking: false,
        input: "Sure.\n\n<tool_call>\n<function=write_file>\n<parameter=path>\na.txt\n</parameter>\n<parameter=content>\nPartial fil",
        reasoning: "",
        content: "Sure.\n\n<tool_call>\n<function=write_file>\n<parameter=path>\na.txt\n</parameter>\n<parameter=content>\nPartial fil",
        calls: NO_CALLS,
        truncated: true,
    },
    Case {
        name: "truncated inside the tag is content",
        thinking: false,
        input: "Sure.\n<tool_call>\n<funct",
        reasoning: "",
        content: "Sure.\n<tool_call>\n<funct",
        calls: NO_CALLS,
        truncated: true,
    },
    Case {
        name: "truncated call inside think is reasoning",
        thinking: true,
        input: "Think.\n<tool_call>\n<function=get_weather>\n<parameter=ci",
        reasoning: "Think.\n<tool_call>\n<function=get_weather>\n<parameter=ci",
        content: "",
        calls: NO_CALLS,
        truncated: true,
    },
    Case {
        name: "truncated after a complete first call",
        thinking: false,
        input: "<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n</function>\n</tool_call>\n<tool_call>\n<function=get_weather>\n<parameter=city>\nTok",
        reasoning: "",
        content: "<tool_call>\n<function=get_weather>\n<parameter=city>\nTok",
        calls: r#"[{"name":"get_weather","arguments":{"city":"Paris"}}]"#,
        truncated: true,
    },
    Case {
        name: "missing </tool_call> at the end is still a call",
        thinking: false,
        input: "<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n</function>\n</tool_",
        reasoning: "",
        content: "",
        calls: r#"[{"name":"get_weather","arguments":{"city":"Paris"}}]"#,
        truncated: false,
    },
    Case {
        name: "missing </function> is still a call",
        thinking: false,
        input: "<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n</tool_call>\nok",
        reasoning: "",
        content: "ok",
        calls: r#"[{"name":"get_weather","arguments":{"city":"Paris"}}]"#,
        truncated: false,
    },
    Case {
        name: "missing </tool_call> before text or the next call",
        thinking: false,
        input: "<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n</function>\n<tool_call>\n<function=get_weather>\n<parameter=city>\nRome\n</parameter>\n</function>\nBye",
        reasoning: "",
        content: "Bye",
        calls: r#"[{"name":"get_weather","arguments":{"city":"Paris"}},{"name":"get_weather","arguments":{"city":"Rome"}}]"#,
        truncated: false,
    },
    Case {
        name: "parameter closed by </function> (recovered at the end)",
        thinking: false,
        input: "<tool_call>\n<function=write_file>\n<parameter=path>\na.txt\n</parameter>\n<parameter=content>\nhello\n</function>\n</tool_call>\nWritten.",
        reasoning: "",
        content: "Written.",
        calls: r#"[{"name":"write_file","arguments":{"path":"a.txt","content":"hello"}}]"#,
        truncated: false,
    },
    Case {
        name: "<tool_call> in prose is content",
        thinking: false,
        input: "Wrap calls in <tool_call> tags.\nOK",
        reasoning: "",
        content: "Wrap calls in <tool_call> tags.\nOK",
        calls: NO_CALLS,
        truncated: false,
    },
    Case {
        name: "<tool_call> without <function=",
        thinking: false,
        input: "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {}}\n</tool_call>",
        reasoning: "",
        content: "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {}}\n</tool_call>",
        calls: NO_CALLS,
        truncated: false,
    },
    Case {
        name: "<function= without closing >",
        thinking: false,
        input: "<tool_call>\n<function=get_weather\n<parameter=city>\nParis\n</parameter>\n</function>\n</tool_call>",
        reasoning: "",
        content: "<tool_call>\n<function=get_weather\n<parameter=city>\nParis\n</parameter>\n</function>\n</tool_call>",
        calls: NO_CALLS,
        truncated: false,
    },
    Case {
        name: "empty function name",
        thinking: false,
        input: "<tool_call>\n<function=>\n</function>\n</tool_call>",
        reasoning: "",
        content: "<tool_call>\n<function=>\n</function>\n</tool_call>",
        calls: NO_CALLS,
        truncated: false,
    },
    Case {
        name: "stray text between parameters",
        thinking: false,
        input: "<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\njunk\n</function>\n</tool_call>",
        reasoning: "",
        content: "<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\njunk\n</function>\n</tool_call>",
        calls: NO_CALLS,
        truncated: false,
    },
    Case {
        name: "nested <tool_call>: the inner well-formed call is found",
        thinking: false,
        input: "<tool_call>\n<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n</function>\n</tool_call>",
        reasoning: "",
        content: "<tool_call>",
        calls: r#"[{"name":"get_weather","arguments":{"city":"Paris"}}]"#,
        truncated: false,
    },
    Case {
        name: "stray closing tags are content",
        thinking: false,
        input: "a </tool_call> b </function> c </parameter> d <function=x>",
        reasoning: "",
        content: "a </tool_call> b </function> c </parameter> d <function=x>",
        calls: NO_CALLS,
        truncated: false,
    },
    Case {
        name: "unicode in reasoning, content and arguments",
        thinking: true,
        input: "思考中…🤔 ünïcödé\n</think>\n\n答案是 42 🎉\n\n<tool_call>\n<function=get_weather>\n<parameter=city>\n東京 🗼\n</parameter>\n</function>\n</tool_call>",
        reasoning: "思考中…🤔 ünïcödé",
        content: "答案是 42 🎉",
        calls: r#"[{"name":"get_weather","arguments":{"city":"東京 🗼"}}]"#,
        truncated: false,
    },
    Case {
        name: "unicode tool and parameter names",
        thinking: false,
        input: "<tool_call>\n<function=天气>\n<parameter=城市>\n北京\n</parameter>\n</function>\n</tool_call>",
        reasoning: "",
        content: "",
        calls: r#"[{"name":"天气","arguments":{"城市":"北京"}}]"#,
        truncated: false,
    },
];

#[test]
fn table() {
    for case in CASES {
        check(case);
    }
}

/// Runs one case three ways, checks they agree with each other and with the expectation.
fn check(case: &Case) {
    let options = ParserOptions {
        starts_in_reasoning: case.thinking,
        tools: tools(),
    };
    let (parsed, finished) = run_all_ways(case.input, &options, 0x5eed ^ case.input.len() as u64);
    let name = case.name;
    assert_eq!(parsed.reasoning, case.reasoning, "{name}: reasoning");
    assert_eq!(parsed.content, case.content, "{name}: content");
    let calls: Vec<Value> = parsed
        .tool_calls
        .iter()
        .map(|call| json!({"name": call.name, "arguments": call.arguments}))
        .collect();
    let expected: Value = serde_json::from_str(case.calls).expect("expected calls are JSON");
    assert_eq!(
        Value::Array(calls).to_string(),
        expected.to_string(),
        "{name}: tool calls"
    );
    assert_eq!(finished.tool_calls, parsed.tool_calls.len(), "{name}");
    assert_eq!(
        finished.truncated_tool_call, case.truncated,
        "{name}: truncated"
    );
    assert_eq!(parsed, parse_complete(case.input, options), "{name}");
}

/// Parses `input` in one push, one char per push, and in random chunks; asserts that the
/// three agree and that each event stream is well formed; returns the common result.
fn run_all_ways(input: &str, options: &ParserOptions, seed: u64) -> (Parsed, Finished) {
    let whole = run(input, [input], options);
    let chars = run(input, input.split_inclusive(|_| true), options);
    let random = run(input, random_chunks(input, seed), options);
    assert_eq!(chars, whole, "one char per push differs for {input:?}");
    assert_eq!(random, whole, "random chunks differ for {input:?}");
    whole
}

fn run<'a>(
    input: &str,
    chunks: impl IntoIterator<Item = &'a str>,
    options: &ParserOptions,
) -> (Parsed, Finished) {
    let mut parser = OutputParser::new(options.clone());
    let mut events = Vec::new();
    for chunk in chunks {
        events.extend(parser.push(chunk));
    }
    let (last, finished) = parser.finish();
    events.extend(last);
    check_events(input, &events);
    let mut parsed = Parsed::default();
    parsed.extend(events);
    (parsed, finished)
}

/// The invariants of an event stream: a call's events are Start, Args…, End with indices
/// 0, 1, 2…; the Args deltas concatenate to the final arguments JSON; and the text events plus
/// each call's raw text are the input minus think tags and whitespace.
fn check_events(input: &str, events: &[Event]) {
    let mut next_index = 0;
    let mut open: Option<(usize, String, String)> = None;
    let mut accounted = String::new();
    for event in events {
        match event {
            Event::Reasoning(text) | Event::Content(text) => {
                assert!(open.is_none(), "text inside a call: {events:?}");
                assert!(!text.is_empty(), "empty text event");
                accounted.push_str(text);
            }
            Event::ToolCallStart { index, name } => {
                assert!(open.is_none());
                assert_eq!(*index, next_index);
                open = Some((*index, name.clone(), String::new()));
            }
            Event::ToolCallArgs { index, delta } => {
                let (open_index, _, args) = open.as_mut().expect("args outside a call");
                assert_eq!(index, open_index);
                args.push_str(delta);
            }
            Event::ToolCallEnd { index, call, raw } => {
                let (open_index, name, args) = open.take().expect("end without start");
                assert_eq!(*index, open_index);
                assert_eq!(call.name, name);
                assert!(call.arguments.is_object());
                assert_eq!(
                    args,
                    call.arguments_json(),
                    "deltas must build the arguments"
                );
                assert!(raw.starts_with("<tool_call>"), "raw: {raw:?}");
                accounted.push_str(raw);
                next_index += 1;
            }
        }
    }
    assert!(open.is_none(), "call never ended");
    assert_eq!(
        without_tags_and_space(&accounted),
        without_tags_and_space(input),
        "only think tags and whitespace may be dropped; events: {events:?}"
    );
}

fn without_tags_and_space(text: &str) -> String {
    let mut text: String = text.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    loop {
        let shorter = text.replace("</think>", "").replace("<think>", "");
        if shorter == text {
            return text;
        }
        text = shorter;
    }
}

/// Chunks of 1 to 8 bytes, widened to the next char boundary.
fn random_chunks(text: &str, seed: u64) -> Vec<&str> {
    let mut rng = Rng(seed);
    let mut chunks = Vec::new();
    let mut start = 0;
    while start < text.len() {
        let mut end = (start + 1 + rng.below(8)).min(text.len());
        while !text.is_char_boundary(end) {
            end += 1;
        }
        chunks.push(&text[start..end]);
        start = end;
    }
    chunks
}

#[test]
fn fuzz_tag_fragments_never_panic_and_ignore_chunking() {
    const FRAGMENTS: &[&str] = &[
        "<think>",
        "</think>",
        "<tool_call>",
        "</tool_call>",
        "<function=get_weather>",
        "<function=set_config>",
        "<function=",
        "</function>",
        "<parameter=city>",
        "<parameter=count>",
        "<parameter=",
        "</parameter>",
        "<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n</function>\n</tool_call>",
        "<tool_",
        "</thi",
        "nk>",
        "call>",
        "<",
        "</",
        ">",
        "=",
        "\n",
        "\n\n",
        " ",
        "\t",
        "a",
        "42",
        "true",
        "{\"a\": 1}",
        "é",
        "字",
        "🙂",
    ];
    let mut rng = Rng(0xdec0de);
    let mut calls = 0;
    for iteration in 0..3000 {
        let len = rng.below(24);
        let input: String = (0..len)
            .map(|_| FRAGMENTS[rng.below(FRAGMENTS.len())])
            .collect();
        let options = ParserOptions {
            starts_in_reasoning: rng.below(2) == 1,
            tools: tools(),
        };
        let (parsed, _) = run_all_ways(&input, &options, iteration);
        calls += parsed.tool_calls.len();
    }
    // The fuzz must actually reach complete calls, not only garbage.
    assert!(calls > 500, "only {calls} calls parsed");
}

fn content(text: &str) -> Event {
    Event::Content(text.to_string())
}

fn reasoning(text: &str) -> Event {
    Event::Reasoning(text.to_string())
}

#[test]
fn holds_back_only_the_ambiguous_suffix() {
    let mut parser = OutputParser::new(ParserOptions {
        starts_in_reasoning: true,
        tools: Vec::new(),
    });
    assert_eq!(parser.push("\nLet me"), [reasoning("Let me")]);
    // Trailing whitespace may precede a tag that drops it.
    assert_eq!(parser.push(" think"), [reasoning(" think")]);
    assert_eq!(parser.push(".\n</thi"), [reasoning(".")]);
    assert!(parser.in_reasoning());
    assert_eq!(parser.push("nk>\n"), []);
    assert!(!parser.in_reasoning());
    assert_eq!(parser.push("\nThe <"), [content("The")]);
    assert_eq!(parser.push("b> tag"), [content(" <b> tag")]);
    assert_eq!(parser.push(" <tool_"), []);
    assert_eq!(parser.push("box>"), [content(" <tool_box>")]);
    assert_eq!(parser.push("<tool_call>\n<function=f>"), []);
    assert!(parser.in_tool_call());
    let (events, finished) = parser.finish();
    assert_eq!(events, [content("<tool_call>\n<function=f>")]);
    assert_eq!(
        finished,
        Finished {
            tool_calls: 0,
            unterminated_reasoning: false,
            truncated_tool_call: true,
        }
    );
}

#[test]
fn tool_call_events_arrive_together_with_one_args_piece_per_parameter() {
    let mut parser = OutputParser::new(ParserOptions {
        starts_in_reasoning: false,
        tools: tools(),
    });
    assert_eq!(
        parser.push("Checking.\n\n<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n"),
        [content("Checking.")]
    );
    assert!(parser.in_tool_call());
    assert_eq!(
        parser.push("</parameter>\n<parameter=days>\n3\n</parameter>\n"),
        []
    );
    let events = parser.push("</function>\n</tool_call>");
    assert!(!parser.in_tool_call());
    let expected_raw = "<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n<parameter=days>\n3\n</parameter>\n</function>\n</tool_call>";
    assert_eq!(
        events,
        [
            Event::ToolCallStart {
                index: 0,
                name: "get_weather".into()
            },
            Event::ToolCallArgs {
                index: 0,
                delta: r#"{"city":"Paris""#.into()
            },
            Event::ToolCallArgs {
                index: 0,
                delta: r#","days":3}"#.into()
            },
            Event::ToolCallEnd {
                index: 0,
                call: qinfer_engine::parser::ToolCall {
                    name: "get_weather".into(),
                    arguments: json!({"city": "Paris", "days": 3}),
                },
                raw: expected_raw.into(),
            },
        ]
    );
    let (events, finished) = parser.finish();
    assert_eq!(events, []);
    assert_eq!(finished.tool_calls, 1);
    assert!(!finished.unterminated_reasoning);
}

#[test]
fn finished_reports_unterminated_reasoning() {
    let mut parser = OutputParser::new(ParserOptions {
        starts_in_reasoning: true,
        tools: Vec::new(),
    });
    assert_eq!(parser.push("hmm\n"), [reasoning("hmm")]);
    let (events, finished) = parser.finish();
    assert_eq!(events, [reasoning("\n")]);
    assert!(finished.unterminated_reasoning);
    assert!(!finished.truncated_tool_call);
}

#[test]
fn tool_spec_from_openai_and_bare_definitions() {
    let openai =
        json!({"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}});
    assert_eq!(
        ToolSpec::from_openai(&openai),
        Ok(ToolSpec::new("f", json!({"type": "object"})))
    );
    let bare = json!({"name": "g"});
    assert_eq!(
        ToolSpec::from_openai(&bare),
        Ok(ToolSpec::new("g", json!({})))
    );
    assert_eq!(
        ToolSpec::from_openai(&json!({"type": "custom", "name": "h"})),
        Err(ToolSpecError::NotAFunction("\"custom\"".into()))
    );
    assert_eq!(
        ToolSpec::from_openai(&json!({"type": "function", "function": {"parameters": {}}})),
        Err(ToolSpecError::MissingName)
    );
    assert_eq!(
        ToolSpec::from_openai(&json!([1])),
        Err(ToolSpecError::NotAnObject)
    );
}

#[test]
fn long_values_stream_in_linear_time() {
    // A 2 MB file-write call pushed in 16-byte chunks must not rescan the value per push.
    let body = "let x = a < b && c </ d;\n".repeat(80_000);
    let input = format!(
        "<tool_call>\n<function=write_file>\n<parameter=path>\nbig.rs\n</parameter>\n<parameter=content>\n{body}\n</parameter>\n</function>\n</tool_call>"
    );
    let mut parser = OutputParser::new(ParserOptions {
        starts_in_reasoning: false,
        tools: tools(),
    });
    let mut parsed = Parsed::default();
    for chunk in input.as_bytes().chunks(16) {
        parsed.extend(parser.push(std::str::from_utf8(chunk).unwrap()));
    }
    parsed.extend(parser.finish().0);
    assert_eq!(parsed.tool_calls.len(), 1);
    assert_eq!(
        parsed.tool_calls[0].arguments["content"],
        Value::String(body)
    );
}
