#!/usr/bin/env python3
"""Generate tests/fixtures/tokenizer/corpus.json: the oracle for qinfer's tokenizer tests.

Each entry is a text, the ids the Hugging Face `tokenizers` Python package (pinned in
tools/requirements-text.txt; its wheel uses the Oniguruma regex engine, qinfer's build uses
fancy-regex) gives for `encode(text, add_special_tokens=False)`, and what `decode(ids)` gives
back. `nfc_changes` marks texts that the tokenizer's NFC normaliser rewrites, so decoding
cannot give the original back.

Usage (from the repo root):

    python3 -m venv /work/text-venv
    /work/text-venv/bin/pip install -r tools/requirements-text.txt
    /work/text-venv/bin/python tools/make_tokenizer_fixtures.py

The tokenizer is read from the committed assets/qwen3.5-tokenizer/tokenizer.json.gz.
"""

import gzip
import json
import pathlib
import unicodedata

import tokenizers

ROOT = pathlib.Path(__file__).resolve().parent.parent
TOKENIZER = ROOT / "assets" / "qwen3.5-tokenizer" / "tokenizer.json.gz"
OUT = ROOT / "tests" / "fixtures" / "tokenizer" / "corpus.json"

RUST_CODE = """\
use std::collections::HashMap;

/// Counts words.
fn count(text: &str) -> HashMap<&str, usize> {
    let mut counts = HashMap::new();
    for word in text.split_whitespace() {
        *counts.entry(word).or_insert(0) += 1;
    }
    counts
}
"""

PYTHON_CODE = """\
class Cache:
    def __init__(self, size: int = 128) -> None:
        self._items: dict[str, bytes] = {}
        self.size = size

    def get(self, key):
\t\treturn self._items.get(key)  # tab-indented on purpose
"""

JSON_TEXT = """\
{
  "model": "qwen3.6",
  "messages": [
    {"role": "user", "content": "What's 2+2?"}
  ],
  "temperature": 0.7,
  "stream": true
}
"""

CHAT_PROMPT = """\
<|im_start|>system
# Tools

You have access to the following functions:

<tools>
{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}
</tools><|im_end|>
<|im_start|>user
What's the weather in Paris? Answer briefly.<|im_end|>
<|im_start|>assistant
<think>
The user wants the weather in Paris; I should call the tool.
</think>

<tool_call>
<function=get_weather>
<parameter=city>
Paris
</parameter>
</function>
</tool_call><|im_end|>
<|im_start|>user
<tool_response>
{"temp_c": 21, "sky": "clear"}
</tool_response><|im_end|>
<|im_start|>assistant
<think>
"""

CORPUS = [
    # --- Basics ---
    ("empty", ""),
    ("hello", "Hello, world!"),
    ("sentence", "The quick brown fox jumps over the lazy dog."),
    ("leading_space", " leading space"),
    ("single_char", "a"),
    ("long_word", "Supercalifragilisticexpialidocious antidisestablishmentarianism"),
    # --- Contractions: the regex's case-insensitive (?i:'s|'t|...) branch ---
    ("contractions", "I'm sure you'll see they've done it; she'd say it's fine."),
    ("contractions_upper", "DON'T SHOUT, I'M HERE. WE'LL SEE, THEY'RE OK"),
    ("contractions_mixed", "Don'T dOn't 'S 'T 'RE 'VE 'M 'LL 'D"),
    ("apostrophes", "O'Neil's 'quoted' text' and it\u2019s a curly one"),
    ("casefold_long_s", "it'\u017f and it'\u212a"),  # long s and the Kelvin sign fold to s / k
    # --- Digits: the pre-tokenizer isolates every \p{N} ---
    ("digits", "1234567890"),
    ("pi", "3.14159265358979323846264338327950288419716939937510"),
    ("numbers_in_text", "In 2024 the population was 8,100,000,000 (approx.)"),
    ("unicode_digits", "\u0663\u0664\u0665 \u0967\u0968 \uff10\uff11\uff12 \u00b2\u00b3 \u216b"),
    # --- Whitespace runs ---
    ("spaces", "a  b   c    d     e"),
    ("only_spaces", "     "),
    ("tabs", "tabs\there\t\tand\t\t\tthere"),
    ("newlines", "line1\nline2\n\nline4\n\n\n"),
    ("only_newline", "\n"),
    ("double_newline", "\n\n"),
    ("mixed_whitespace", "mixed \t \n \t\n  end"),
    ("trailing_spaces", "trailing spaces   "),
    ("trailing_newline", "trailing newline\n"),
    ("crlf", "crlf\r\nline\r\n\r\n"),
    ("lone_cr", "a\rb\r"),
    ("indented_block", "  indented\n    more\n\tand tab\n"),
    ("unicode_spaces", "nbsp\u00a0here ideographic\u3000space thin\u2009space"),
    ("zero_width", "zero\u200bwidth \u200d joiner \ufeffBOM"),
    ("separators", "line\u2028sep para\u2029sep nel\u0085end"),
    # --- Code ---
    ("rust_code", RUST_CODE),
    ("python_code", PYTHON_CODE),
    ("json", JSON_TEXT),
    ("json_compact", '{"a":[1,2,{"b":null}],"c":"\\u00e9\\n"}'),
    ("shell", "for f in *.rs; do rustfmt --check \"$f\" || exit 1; done 2>&1 | tee log.txt"),
    ("cpp", "std::vector<int> v{1, 2, 3}; auto it = v.begin(); ++it; // C++"),
    ("html", "<div class=\"x\">&nbsp;<b>bold</b></div>\n<!-- comment -->"),
    ("operators", "x+=1;y-=2;z**=3;a<<=b>>c;!!!???...---===>>>"),
    ("markdown_table", "| a | b |\n|---|---|\n| 1 | 2 |\n\n## Heading\n- item\n"),
    ("latex", "$$\\frac{a}{b} + \\sum_{i=0}^{n} x_i^2$$"),
    # --- CJK ---
    ("chinese", "\u4eca\u5929\u5929\u6c14\u5f88\u597d\uff0c\u6211\u4eec\u53bb\u516c\u56ed\u6563\u6b65\u5427\u3002"),
    ("chinese_traditional", "\u81fa\u7063\u7684\u7e41\u9ad4\u4e2d\u6587\u6e2c\u8a66"),
    ("japanese", "\u300c\u3053\u3093\u306b\u3061\u306f\u3001\u4e16\u754c\uff01\u300d\u30ab\u30bf\u30ab\u30ca\u3068\u6f22\u5b57\u3002"),
    ("korean", "\uc548\ub155\ud558\uc138\uc694, \uc138\uacc4! \ud55c\uad6d\uc5b4 \ud14c\uc2a4\ud2b8\uc785\ub2c8\ub2e4."),
    ("cjk_latin_mixed", "\u6211\u7231Rust\u7f16\u7a0b and Qwen3.6\u6a21\u578b"),
    ("cjk_ext_b", "\U00020000\U00020001\U0002a6d6 rare ideographs"),
    # --- Emoji ---
    ("emoji_single", "\U0001f980"),
    ("emoji_in_text", "ship it \U0001f680 now \U0001f389\U0001f389"),
    ("emoji_skin_tone", "\U0001f44d\U0001f3fd thumbs"),
    ("emoji_zwj_family", "\U0001f468\u200d\U0001f469\u200d\U0001f467\u200d\U0001f466"),
    ("emoji_rainbow_flag", "\U0001f3f3\ufe0f\u200d\U0001f308"),
    ("emoji_flags", "\U0001f1ef\U0001f1f5\U0001f1fa\U0001f1f8\U0001f1e9\U0001f1ea"),
    ("emoji_keycap_heart", "1\ufe0f\u20e3 \u2764\ufe0f \u2603"),
    # --- Right-to-left and Indic scripts ---
    ("arabic", "\u0645\u0631\u062d\u0628\u0627 \u0628\u0627\u0644\u0639\u0627\u0644\u0645 123"),
    ("arabic_harakat", "\u0628\u0650\u0633\u0652\u0645\u0650 \u0627\u0644\u0644\u0651\u064e\u0647\u0650"),
    ("hebrew_niqqud", "\u05e9\u05b8\u05c1\u05dc\u05d5\u05b9\u05dd \u05e2\u05d5\u05b9\u05dc\u05b8\u05dd"),
    ("hindi", "\u0928\u092e\u0938\u094d\u0924\u0947 \u0926\u0941\u0928\u093f\u092f\u093e, \u0915\u094d\u092f\u093e \u0939\u093e\u0932 \u0939\u0948?"),
    ("thai", "\u0e2a\u0e27\u0e31\u0e2a\u0e14\u0e35\u0e04\u0e23\u0e31\u0e1a"),
    # --- Other alphabets ---
    ("cyrillic", "\u041f\u0440\u0438\u0432\u0435\u0442, \u043c\u0438\u0440!"),
    ("greek", "\u039a\u03b1\u03bb\u03b7\u03bc\u03ad\u03c1\u03b1 \u03ba\u03cc\u03c3\u03bc\u03b5"),
    ("german", "Stra\u00dfe \u00c4\u00d6\u00dc \u00e4\u00f6\u00fc \u1e9e"),
    ("turkish", "\u0130stanbul \u0131i I\u0307 'S \u0130'\u0130"),
    # --- Combining marks and NFC ---
    ("nfc_latin", "caf\u00e9 r\u00e9sum\u00e9 na\u00efve"),
    ("nfd_latin", "cafe\u0301 re\u0301sume\u0301 nai\u0308ve"),
    ("nfc_vietnamese", "Ti\u1ebfng Vi\u1ec7t"),
    ("nfd_vietnamese", unicodedata.normalize("NFD", "Ti\u1ebfng Vi\u1ec7t")),
    ("nfd_hangul_jamo", "\u1100\u1161\u11a8 \u1112\u1161\u11ab"),
    ("singleton_decompositions", "\u212b \u2126 \u212a"),  # Angstrom, Ohm, Kelvin signs
    ("stacked_combining", "e\u0301\u0301 a\u0323\u0302 Z\u0351\u036b\u0343\u036a\u0302"),
    ("leading_combining", "\u0301abc \u0308"),
    ("ligature", "\ufb01le \ufb02ow"),  # NFC keeps ligatures; NFKC would not
    # --- Control characters ---
    ("controls", "nul\u0000bel\u0007del\u007fesc\u001b[0m"),
    # --- Special and added tokens ---
    ("im_start_user", "<|im_start|>user\nhi<|im_end|>"),
    ("im_start_assistant", "<|im_start|>assistant\n"),
    ("empty_think", "<think>\n\n</think>\n\n"),
    ("tool_call", "<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n</function>\n</tool_call>"),
    ("tool_response", "<tool_response>\n{\"temp\": 21}\n</tool_response>"),
    ("endoftext", "<|endoftext|>"),
    ("adjacent_specials", "<|im_end|><|im_start|><|im_end|>\n<|endoftext|><|endoftext|>"),
    ("special_inside_word", "abc<think>def</think>ghi"),
    ("special_with_spaces", "  <|im_start|>  x  <|im_end|>  "),
    ("vision_tokens", "<|vision_start|><|image_pad|><|image_pad|><|vision_end|>describe"),
    ("fim", "<|fim_prefix|>def f():\n    <|fim_suffix|>\n    return x<|fim_middle|>"),
    ("near_miss_specials", "<|im_start <|im_start |> < think> <THINK> <think <|IM_END|> |im_end|>"),
    ("tts_tokens", "<tts_pad><tts_text_bos>hi<tts_text_eod><tts_text_bos_single><|audio_pad|>"),
    ("chat_prompt", CHAT_PROMPT),
    # --- URLs and paths ---
    ("url", "https://example.com/a/b_c-d.html?query=1&b=two%20three#frag"),
    ("urls_misc", "mailto:someone@example.org http://[::1]:8080/ ftp://x.y/z"),
    ("paths", "C:\\Users\\me\\file.txt and /usr/local/bin/qinfer --help"),
    # --- Longer mixed text ---
    (
        "paragraph",
        "Qwen3.6 mixes Gated DeltaNet layers with gated attention (3:1). "
        "Its tokenizer \u2014 a byte-level BPE with 248,044 merges-derived tokens \u2014 "
        "handles \u201csmart quotes\u201d, ellipses\u2026 and em-dashes.\n\n"
        "\u7b2c\u4e8c\u6bb5\uff1a\u4e2d\u6587\u548c English \u6df7\u5408\u3002\n",
    ),
    ("repeated", "ab" * 300),
    ("repeated_spaces_long", "x" + " " * 100 + "y"),
]


def main() -> None:
    tokenizer = tokenizers.Tokenizer.from_str(gzip.decompress(TOKENIZER.read_bytes()).decode("utf-8"))
    names = [name for name, _ in CORPUS]
    assert len(names) == len(set(names)), "duplicate corpus names"
    entries = []
    for name, text in CORPUS:
        ids = tokenizer.encode(text, add_special_tokens=False).ids
        decoded = tokenizer.decode(ids, skip_special_tokens=False)
        nfc_changes = unicodedata.normalize("NFC", text) != text
        assert (decoded == text) != nfc_changes, f"{name}: unexpected round trip {decoded!r}"
        entries.append(
            {"name": name, "text": text, "ids": ids, "decoded": decoded, "nfc_changes": nfc_changes}
        )
    # One entry per line, ASCII-escaped so that NFC and NFD variants stay visibly different.
    header = {"generator": "tools/make_tokenizer_fixtures.py", "tokenizers_version": tokenizers.__version__}
    lines = ",\n".join("  " + json.dumps(entry, ensure_ascii=True) for entry in entries)
    body = json.dumps(header, ensure_ascii=True)[:-1] + ', "entries": [\n' + lines + "\n]}\n"
    json.loads(body)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(body, encoding="ascii")
    print(f"wrote {len(entries)} entries to {OUT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
