//! An incremental JSON syntax automaton for constrained decoding (`response_format:
//! {"type": "json_object"}`).
//!
//! [`JsonAutomaton`] reads bytes, not characters, because byte-level BPE tokens are runs of
//! bytes: a multi-byte UTF-8 character may be split across tokens. Inside strings it validates
//! UTF-8 itself (lead byte, the allowed range of the first continuation byte, the number still
//! owed), so a token holding half a character is accepted exactly when some continuation can
//! complete it. Outside strings only ASCII is valid.
//!
//! The language is one JSON object at top level (`{…}`), optionally preceded by whitespace;
//! whitespace after it is accepted too. Nesting is limited to [`MAX_DEPTH`] levels, which keeps
//! the automaton `Copy` (the container stack is a bit set): checking a token is a copy and a few
//! byte steps, with no allocation, so a pass over the whole vocabulary is cheap.
//!
//! [`JsonAutomaton::min_close_len`] is the length in bytes of the shortest text that completes
//! the object from the current state, in O(1); [`JsonAutomaton::closing_byte`] is the first byte
//! of such a text. The decoder uses them to steer the object closed before the token budget
//! runs out.

/// The deepest nesting of objects and arrays accepted (the top-level object counts as one).
pub const MAX_DEPTH: u8 = 128;

/// The longest run of whitespace bytes accepted outside strings: enough for pretty-printing,
/// and it keeps a model from padding forever before or inside the object.
pub const MAX_WS_RUN: u8 = 32;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Str {
    /// Plain characters.
    Normal,
    /// After a backslash.
    Escape,
    /// Inside `\uXXXX`, this many hex digits still owed.
    Unicode(u8),
    /// Inside a multi-byte UTF-8 character: `need` continuation bytes owed, the next one in
    /// `lo..=hi`.
    Utf8 { need: u8, lo: u8, hi: u8 },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Num {
    /// After `-`: a digit must follow.
    Minus,
    /// A leading `0`: no more integer digits.
    Zero,
    /// Integer digits after a `1`–`9`.
    Int,
    /// After `.`: a digit must follow.
    Dot,
    /// Fraction digits.
    Frac,
    /// After `e`/`E`: a sign or a digit must follow.
    Exp,
    /// After the exponent's sign: a digit must follow.
    ExpSign,
    /// Exponent digits.
    ExpDigits,
}

impl Num {
    /// Whether the number may end here.
    fn can_end(self) -> bool {
        matches!(self, Num::Zero | Num::Int | Num::Frac | Num::ExpDigits)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// Before the top-level object.
    Start,
    /// Right after `{`: a key or `}`.
    ObjOpen,
    /// After `,` in an object: a key.
    ObjKey,
    /// After a key: `:`.
    Colon,
    /// A value must follow (after `:`, or `,` in an array).
    Value,
    /// Right after `[`: a value or `]`.
    ArrOpen,
    /// After a value inside a container: `,` or the closer.
    AfterValue,
    /// Inside a string; `key` when it is an object key.
    Str {
        key: bool,
        s: Str,
    },
    Num(Num),
    /// Inside `true` / `false` / `null`: the word and how many bytes are read.
    Lit {
        word: u8,
        pos: u8,
    },
    /// The top-level object is closed.
    Done,
}

const LITERALS: [&[u8]; 3] = [b"true", b"false", b"null"];

/// The syntax state after some prefix of the output. `Copy`: advancing a copy is how a
/// candidate token is checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JsonAutomaton {
    mode: Mode,
    /// Bit `i` set when container level `i` (0 = top) is an object, clear for an array.
    stack: u128,
    depth: u8,
    /// Whitespace bytes read in a row outside strings.
    ws: u8,
}

impl Default for JsonAutomaton {
    fn default() -> Self {
        Self::new()
    }
}

fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

impl JsonAutomaton {
    /// The state before any output.
    pub fn new() -> Self {
        JsonAutomaton {
            mode: Mode::Start,
            stack: 0,
            depth: 0,
            ws: 0,
        }
    }

    /// The state after `text`, or `None` if `text` cannot continue a valid object.
    pub fn accepts(&self, text: &str) -> Option<Self> {
        self.accepts_bytes(text.as_bytes())
    }

    /// The state after `bytes`, or `None` if they cannot continue a valid object.
    pub fn accepts_bytes(&self, bytes: &[u8]) -> Option<Self> {
        let mut s = *self;
        for &b in bytes {
            if !s.step(b) {
                return None;
            }
        }
        Some(s)
    }

    /// Whether the top-level object is closed.
    pub fn is_complete(&self) -> bool {
        self.mode == Mode::Done
    }

    /// Whether nothing but whitespace has been read.
    pub fn is_start(&self) -> bool {
        self.mode == Mode::Start
    }

    fn top_is_object(&self) -> bool {
        self.depth > 0 && self.stack >> (self.depth - 1) & 1 == 1
    }

    fn push(&mut self, object: bool) -> bool {
        if self.depth >= MAX_DEPTH {
            return false;
        }
        if object {
            self.stack |= 1 << self.depth;
        } else {
            self.stack &= !(1 << self.depth);
        }
        self.depth += 1;
        self.mode = if object { Mode::ObjOpen } else { Mode::ArrOpen };
        true
    }

    /// Closes the innermost container with `b` (`}` or `]`) if it matches.
    fn close(&mut self, b: u8) -> bool {
        let object = self.top_is_object();
        if self.depth == 0 || (b == b'}') != object {
            return false;
        }
        self.depth -= 1;
        self.mode = if self.depth == 0 {
            Mode::Done
        } else {
            Mode::AfterValue
        };
        true
    }

    fn start_value(&mut self, b: u8) -> bool {
        self.mode = match b {
            b'{' => return self.push(true),
            b'[' => return self.push(false),
            b'"' => Mode::Str {
                key: false,
                s: Str::Normal,
            },
            b'-' => Mode::Num(Num::Minus),
            b'0' => Mode::Num(Num::Zero),
            b'1'..=b'9' => Mode::Num(Num::Int),
            b't' => Mode::Lit { word: 0, pos: 1 },
            b'f' => Mode::Lit { word: 1, pos: 1 },
            b'n' => Mode::Lit { word: 2, pos: 1 },
            _ => return false,
        };
        true
    }

    /// Advances by one byte; false (state unspecified) when the byte is invalid here.
    fn step(&mut self, b: u8) -> bool {
        if is_ws(b) && !matches!(self.mode, Mode::Str { .. }) {
            if self.ws >= MAX_WS_RUN || !self.step_syntax(b) {
                return false;
            }
            self.ws += 1;
            return true;
        }
        self.ws = 0;
        self.step_syntax(b)
    }

    fn step_syntax(&mut self, b: u8) -> bool {
        match self.mode {
            Mode::Start => match b {
                b'{' => self.push(true),
                _ => is_ws(b),
            },
            Mode::Done => is_ws(b),
            Mode::ObjOpen | Mode::ObjKey => match b {
                b'"' => {
                    self.mode = Mode::Str {
                        key: true,
                        s: Str::Normal,
                    };
                    true
                }
                b'}' if self.mode == Mode::ObjOpen => self.close(b),
                _ => is_ws(b),
            },
            Mode::Colon => match b {
                b':' => {
                    self.mode = Mode::Value;
                    true
                }
                _ => is_ws(b),
            },
            Mode::Value => is_ws(b) || self.start_value(b),
            Mode::ArrOpen => match b {
                b']' => self.close(b),
                _ => is_ws(b) || self.start_value(b),
            },
            Mode::AfterValue => match b {
                b',' => {
                    self.mode = if self.top_is_object() {
                        Mode::ObjKey
                    } else {
                        Mode::Value
                    };
                    true
                }
                b'}' | b']' => self.close(b),
                _ => is_ws(b),
            },
            Mode::Str { key, s } => {
                let next = match s {
                    Str::Normal => match b {
                        b'"' => {
                            self.mode = if key { Mode::Colon } else { Mode::AfterValue };
                            return true;
                        }
                        b'\\' => Str::Escape,
                        0x00..=0x1f => return false,
                        0x20..=0x7f => Str::Normal,
                        0xc2..=0xdf => Str::Utf8 {
                            need: 1,
                            lo: 0x80,
                            hi: 0xbf,
                        },
                        0xe0 => Str::Utf8 {
                            need: 2,
                            lo: 0xa0,
                            hi: 0xbf,
                        },
                        0xed => Str::Utf8 {
                            need: 2,
                            lo: 0x80,
                            hi: 0x9f,
                        },
                        0xe1..=0xef => Str::Utf8 {
                            need: 2,
                            lo: 0x80,
                            hi: 0xbf,
                        },
                        0xf0 => Str::Utf8 {
                            need: 3,
                            lo: 0x90,
                            hi: 0xbf,
                        },
                        0xf1..=0xf3 => Str::Utf8 {
                            need: 3,
                            lo: 0x80,
                            hi: 0xbf,
                        },
                        0xf4 => Str::Utf8 {
                            need: 3,
                            lo: 0x80,
                            hi: 0x8f,
                        },
                        _ => return false,
                    },
                    Str::Escape => match b {
                        b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => Str::Normal,
                        b'u' => Str::Unicode(4),
                        _ => return false,
                    },
                    Str::Unicode(n) => {
                        if !b.is_ascii_hexdigit() {
                            return false;
                        }
                        if n == 1 {
                            Str::Normal
                        } else {
                            Str::Unicode(n - 1)
                        }
                    }
                    Str::Utf8 { need, lo, hi } => {
                        if b < lo || b > hi {
                            return false;
                        }
                        if need == 1 {
                            Str::Normal
                        } else {
                            Str::Utf8 {
                                need: need - 1,
                                lo: 0x80,
                                hi: 0xbf,
                            }
                        }
                    }
                };
                self.mode = Mode::Str { key, s: next };
                true
            }
            Mode::Num(n) => {
                let next = match (n, b) {
                    (Num::Minus, b'0') => Num::Zero,
                    (Num::Minus, b'1'..=b'9') => Num::Int,
                    (Num::Int, b'0'..=b'9') => Num::Int,
                    (Num::Zero | Num::Int, b'.') => Num::Dot,
                    (Num::Dot | Num::Frac, b'0'..=b'9') => Num::Frac,
                    (Num::Zero | Num::Int | Num::Frac, b'e' | b'E') => Num::Exp,
                    (Num::Exp, b'+' | b'-') => Num::ExpSign,
                    (Num::Exp | Num::ExpSign | Num::ExpDigits, b'0'..=b'9') => Num::ExpDigits,
                    _ => {
                        // The number ends here; the byte belongs to what follows it.
                        if !n.can_end() {
                            return false;
                        }
                        self.mode = Mode::AfterValue;
                        return self.step_syntax(b);
                    }
                };
                self.mode = Mode::Num(next);
                true
            }
            Mode::Lit { word, pos } => {
                let w = LITERALS[word as usize];
                if w[pos as usize] != b {
                    return false;
                }
                self.mode = if pos as usize + 1 == w.len() {
                    Mode::AfterValue
                } else {
                    Mode::Lit { word, pos: pos + 1 }
                };
                true
            }
        }
    }

    /// The length in bytes of the shortest text that closes the top-level object from here.
    pub fn min_close_len(&self) -> usize {
        let string_tail = |s: Str| match s {
            Str::Normal => 1,
            Str::Escape => 2,
            Str::Unicode(n) | Str::Utf8 { need: n, .. } => n as usize + 1,
        };
        let local = match self.mode {
            Mode::Start => 2,
            Mode::Done | Mode::ObjOpen | Mode::ArrOpen | Mode::AfterValue => 0,
            Mode::ObjKey => 4,
            Mode::Colon => 2,
            Mode::Value => 1,
            Mode::Str { key, s } => string_tail(s) + if key { 2 } else { 0 },
            Mode::Num(n) => usize::from(!n.can_end()),
            Mode::Lit { word, pos } => LITERALS[word as usize].len() - pos as usize,
        };
        local + self.depth as usize
    }

    /// The first byte of a shortest closing text (see [`Self::min_close_len`]); `None` once
    /// complete.
    pub fn closing_byte(&self) -> Option<u8> {
        let closer = if self.top_is_object() { b'}' } else { b']' };
        Some(match self.mode {
            Mode::Done => return None,
            Mode::Start => b'{',
            Mode::ObjOpen | Mode::ArrOpen | Mode::AfterValue => closer,
            Mode::ObjKey => b'"',
            Mode::Colon => b':',
            Mode::Value => b'0',
            Mode::Str { s, .. } => match s {
                Str::Normal => b'"',
                Str::Escape => b'n',
                Str::Unicode(_) => b'0',
                Str::Utf8 { lo, .. } => lo,
            },
            Mode::Num(n) if n.can_end() => closer,
            Mode::Num(_) => b'0',
            Mode::Lit { word, pos } => LITERALS[word as usize][pos as usize],
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(text: &str) -> Option<JsonAutomaton> {
        JsonAutomaton::new().accepts(text)
    }

    fn complete(text: &str) -> bool {
        run(text).is_some_and(|a| a.is_complete())
    }

    #[test]
    fn valid_objects_complete_and_parse() {
        for t in [
            "{}",
            "  \n{ }",
            r#"{"a":1}"#,
            r#"{"a": [1, -2.5e+3, 0, 0.0, 1E9, true, false, null, "x", {}, []]}"#,
            r#"{"k": {"n": {"m": [[[]]]}}, "s": "\"\\\/\b\f\n\r\t\u00e9\uD83D\uDE00"}"#,
            "{\"é\": \"日本語 😀\"}",
            "{\"a\":{}}\n",
        ] {
            assert!(complete(t), "{t}");
            serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(t.trim())
                .unwrap_or_else(|e| panic!("{t}: {e}"));
        }
    }

    #[test]
    fn prefixes_are_accepted_but_not_complete() {
        let t = r#"{"a": [1, -2.5e+3, "x\u00e9", {"b": nul"#;
        for end in 0..=t.len() {
            let a = run(&t[..end]).unwrap_or_else(|| panic!("prefix {:?}", &t[..end]));
            assert!(!a.is_complete());
        }
    }

    #[test]
    fn invalid_text_is_rejected() {
        for t in [
            "[]",
            "\"x\"",
            "1",
            "x",
            "{,",
            "{\"a\"}",
            "{\"a\":}",
            "{\"a\":1,}",
            "{\"a\":1]",
            "{\"a\":[1}",
            "{\"a\":01",
            "{\"a\":-}",
            "{\"a\":1.}",
            "{\"a\":1e}",
            "{\"a\":tru}",
            "{\"a\":True",
            "{\"a\":\"\\x\"",
            "{\"a\":\"\\u12g",
            "{\"a\":\"line\nbreak\"",
            "{\"a\":1}}",
            "{\"a\":1},",
            "{'a':1}",
            "{a:1}",
            "{\"a\":1 2}",
            "{\"a\":+1}",
        ] {
            assert!(run(t).is_none(), "{t:?} should be rejected");
        }
    }

    #[test]
    fn utf8_is_checked_byte_by_byte() {
        let a = run("{\"").unwrap();
        // "é" = C3 A9 split over two steps.
        let half = a.accepts_bytes(&[0xc3]).unwrap();
        assert!(half.accepts_bytes(&[0xa9, b'"']).is_some());
        assert!(half.accepts_bytes(b"\"").is_none());
        // Overlong / surrogate / out-of-range leads and stray continuations.
        for bad in [
            &[0xc0, 0x80][..],
            &[0xe0, 0x80],
            &[0xed, 0xa0],
            &[0xf4, 0x90],
            &[0x80],
        ] {
            assert!(a.accepts_bytes(bad).is_none(), "{bad:x?}");
        }
        // Outside strings only ASCII.
        assert!(run("{").unwrap().accepts_bytes(&[0xc3, 0xa9]).is_none());
        // 4-byte emoji in pieces.
        let e = "😀".as_bytes();
        let mut s = a;
        for &b in e {
            s = s.accepts_bytes(&[b]).unwrap();
        }
        assert!(s.accepts("\":1}").unwrap().is_complete());
    }

    #[test]
    fn whitespace_runs_are_limited_outside_strings() {
        let n = MAX_WS_RUN as usize;
        let ws = " ".repeat(n);
        assert!(run(&ws).is_some());
        assert!(run(&format!("{ws} ")).is_none());
        let a = run(&format!("{ws}{{{ws}\"a\"{ws}:{ws}1{ws}")).unwrap();
        assert!(a.accepts("\n").is_none());
        assert!(a.accepts("}").unwrap().is_complete());
        // Spaces inside strings are content, not layout.
        assert!(run(&format!("{{\"{ws}{ws}\":1}}")).unwrap().is_complete());
    }

    #[test]
    fn depth_is_limited() {
        let deep = format!("{{\"a\":{}", "[".repeat(MAX_DEPTH as usize - 1));
        let a = run(&deep).unwrap();
        assert!(a.accepts("[").is_none());
        assert!(a.accepts("1").is_some());
    }

    #[test]
    fn closing_text_is_shortest_and_valid() {
        for t in [
            "",
            "{",
            "{\"",
            "{\"ab",
            "{\"a\\",
            "{\"a\\u1",
            "{\"a\"",
            "{\"a\":",
            "{\"a\": [",
            "{\"a\": [1",
            "{\"a\": [-",
            "{\"a\": [1.",
            "{\"a\": [1e",
            "{\"a\": [1e+",
            "{\"a\": [1,",
            "{\"a\": [\"x",
            "{\"a\": [fa",
            "{\"a\": {\"b\": {},",
            "{\"a\": \"\u{e9}",
        ] {
            let mut a = run(t).unwrap();
            let mut out = t.as_bytes().to_vec();
            let need = a.min_close_len();
            let mut n = 0;
            while let Some(b) = a.closing_byte() {
                a = a
                    .accepts_bytes(&[b])
                    .unwrap_or_else(|| panic!("{t:?}: byte {b}"));
                out.push(b);
                n += 1;
                assert_eq!(a.min_close_len(), need - n, "{t:?}");
            }
            assert_eq!(n, need, "{t:?}");
            let s = String::from_utf8(out).unwrap();
            serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(s.trim())
                .unwrap_or_else(|e| panic!("{s}: {e}"));
        }
        // Half a character in a string closes with a valid continuation byte.
        let a = run("{\"").unwrap().accepts_bytes(&[0xf0]).unwrap();
        assert_eq!(a.min_close_len(), 3 + 1 + 3);
        let mut a = a;
        let mut out = b"{\"\xf0".to_vec();
        while let Some(b) = a.closing_byte() {
            a = a.accepts_bytes(&[b]).unwrap();
            out.push(b);
        }
        let s = String::from_utf8(out).unwrap();
        serde_json::from_str::<serde_json::Value>(&s).unwrap();
    }
}
