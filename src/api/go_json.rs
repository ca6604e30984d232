//! Why etcd's gateway refuses a JSON body, in its words. etcd 3.5's grpc-gateway reads a request
//! with Go's `json.Decoder` (one value; its scanner words every syntax error, "invalid character
//! '}' looking for beginning of object key string") and hands it to golang/protobuf's `jsonpb`,
//! which takes the message's fields in declaration order and unmarshals each with
//! `encoding/json` ("json: cannot unmarshal string into Go value of type bool", integers from a
//! number or a quoted one, enums by name or number).
//!
//! [`explain`] is asked only once our own parser has refused a body: it never refuses anything,
//! it finds the words etcd would have used. `None` when it finds no fault (our parser's own
//! words stand then) or when the body is nested deeper than a request can be. [`read`] answers
//! both questions for a body our parser refused in one pass: etcd's words, or the body as jsonpb
//! reads it (null members left out, bytes given as arrays turned into base64), for our parser to
//! take after all.

use std::collections::HashMap;
use std::sync::OnceLock;

use prost::Message;
use prost_types::field_descriptor_proto::{Label, Type};

/// Go's scanner refuses values nested deeper than this.
const GO_MAX_DEPTH: usize = 10_000;

/// Deepest message the check walks (a nested txn is at most 64 levels).
const WALK_MAX_DEPTH: usize = 128;

/// Deepest JSON level whose values the scanner keeps for the check (a message level is an object
/// and, for a repeated field, an array).
const KEEP_MAX_DEPTH: usize = 2 * WALK_MAX_DEPTH + 2;

/// Etcd's words for why `body` (whose first JSON value is the request) is not a `T`.
pub fn explain<T>(body: &[u8]) -> Option<String> {
    let message = message_name(std::any::type_name::<T>())?;
    let schema = schema();
    let desc = schema.messages.get(&message)?;
    let value = match Scanner::new(body, Mode::Decoder).value() {
        Ok(value) => value,
        Err(e) => return Some(e),
    };
    check_message(body, &value, desc, schema, 0).err()
}

/// `metastore::pb::etcdserverpb::RangeRequest` → `etcdserverpb.RangeRequest`.
fn message_name(type_name: &str) -> Option<String> {
    let mut parts = type_name.rsplit("::");
    let message = parts.next()?;
    let package = parts.next()?;
    Some(format!("{package}.{message}"))
}

/// The fields of every message and the value names of every enum of our protos, from the
/// descriptor set the build wrote.
struct Schema {
    messages: HashMap<String, Vec<Field>>,
    enums: HashMap<String, Vec<String>>,
}

struct Field {
    name: String,
    json_name: String,
    kind: Type,
    repeated: bool,
    /// The message or enum type, without the leading dot.
    type_name: String,
}

fn schema() -> &'static Schema {
    static SCHEMA: OnceLock<Schema> = OnceLock::new();
    SCHEMA.get_or_init(|| {
        let bytes = include_bytes!(concat!(env!("OUT_DIR"), "/descriptors.bin"));
        let set = prost_types::FileDescriptorSet::decode(&bytes[..]).unwrap_or_default();
        let mut schema = Schema {
            messages: HashMap::new(),
            enums: HashMap::new(),
        };
        for file in &set.file {
            let package = file.package();
            for message in &file.message_type {
                add_message(&mut schema, package, message);
            }
            for e in &file.enum_type {
                add_enum(&mut schema, package, e);
            }
        }
        schema
    })
}

fn add_message(schema: &mut Schema, scope: &str, message: &prost_types::DescriptorProto) {
    let name = format!("{scope}.{}", message.name());
    let fields = message
        .field
        .iter()
        .map(|f| Field {
            name: f.name().to_string(),
            json_name: f.json_name().to_string(),
            kind: f.r#type(),
            repeated: f.label() == Label::Repeated,
            type_name: f.type_name().trim_start_matches('.').to_string(),
        })
        .collect();
    for nested in &message.nested_type {
        add_message(schema, &name, nested);
    }
    for e in &message.enum_type {
        add_enum(schema, &name, e);
    }
    schema.messages.insert(name, fields);
}

fn add_enum(schema: &mut Schema, scope: &str, e: &prost_types::EnumDescriptorProto) {
    let values = e.value.iter().map(|v| v.name().to_string()).collect();
    schema.enums.insert(format!("{scope}.{}", e.name()), values);
}

/// A JSON value as Go's scanner found it: its kind and where its text lies in the input.
#[derive(Debug)]
struct Value {
    kind: Kind,
    start: usize,
    end: usize,
}

#[derive(Debug)]
enum Kind {
    Null,
    Bool,
    Number,
    String,
    Array(Vec<Value>),
    /// Keys decoded, in input order (the last of a repeated key wins, as in a Go map).
    Object(Vec<(String, Value)>),
}

impl Kind {
    /// The word `encoding/json` uses for a value of this kind in a type error.
    fn go_word(&self) -> &'static str {
        match self {
            Kind::Null => "null",
            Kind::Bool => "bool",
            Kind::Number => "number",
            Kind::String => "string",
            Kind::Array(_) => "array",
            Kind::Object(_) => "object",
        }
    }
}

/// How the input ends: `json.Decoder` reads one value and ignores what follows; `json.Unmarshal`
/// wants exactly one value.
#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Decoder,
    Unmarshal,
}

/// Go's `encoding/json` scanner, iterative (an explicit stack of open containers), building the
/// value tree as it goes.
struct Scanner<'a> {
    input: &'a [u8],
    at: usize,
    mode: Mode,
}

/// An open array or object and what it holds so far.
enum Open {
    Array(usize, Vec<Value>),
    Object(usize, Vec<(String, Value)>, Option<String>),
}

impl<'a> Scanner<'a> {
    fn new(input: &'a [u8], mode: Mode) -> Self {
        Self { input, at: 0, mode }
    }

    fn eof(&self) -> String {
        match self.mode {
            Mode::Decoder => "unexpected EOF".into(),
            Mode::Unmarshal => "unexpected end of JSON input".into(),
        }
    }

    /// The input ended inside a number or a literal: the decoder's `unexpected EOF`; unmarshal
    /// feeds the scanner a space there, which that state refuses in its own words.
    fn cut_in(&self, context: &str) -> String {
        match self.mode {
            Mode::Decoder => self.eof(),
            Mode::Unmarshal => format!("invalid character ' ' {context}"),
        }
    }

    /// A number stopped short where a digit must come: the byte there, or the input's end.
    fn bad_number(&self, context: &str) -> String {
        match self.at < self.input.len() {
            true => self.invalid(context),
            false => self.cut_in(context),
        }
    }

    fn invalid(&self, context: &str) -> String {
        format!(
            "invalid character {} {context}",
            quote_char(self.input[self.at])
        )
    }

    fn skip_space(&mut self) {
        while self.at < self.input.len()
            && matches!(self.input[self.at], b' ' | b'\t' | b'\r' | b'\n')
        {
            self.at += 1;
        }
    }

    /// The next byte, or the end-of-input error.
    fn peek(&self) -> Result<u8, String> {
        self.input.get(self.at).copied().ok_or_else(|| self.eof())
    }

    /// One whole value (and, in `Unmarshal` mode, nothing but space after it).
    fn value(&mut self) -> Result<Value, String> {
        let mut stack: Vec<Open> = Vec::new();
        loop {
            // A value begins here (or, right after `[`, the array may end).
            self.skip_space();
            let c = self.peek()?;
            let mut done = match (c, stack.last()) {
                (b']', Some(Open::Array(_, items))) if items.is_empty() => {
                    self.at += 1;
                    let Some(Open::Array(start, _)) = stack.pop() else {
                        return Err(self.eof());
                    };
                    Some(Value {
                        kind: Kind::Array(Vec::new()),
                        start,
                        end: self.at,
                    })
                }
                (b'{', _) | (b'[', _) => {
                    if stack.len() >= GO_MAX_DEPTH {
                        return Err(self.invalid("exceeded max depth"));
                    }
                    let start = self.at;
                    self.at += 1;
                    if c == b'[' {
                        stack.push(Open::Array(start, Vec::new()));
                        continue;
                    }
                    self.skip_space();
                    if self.peek()? == b'}' {
                        self.at += 1;
                        Some(Value {
                            kind: Kind::Object(Vec::new()),
                            start,
                            end: self.at,
                        })
                    } else {
                        let key = self.key()?;
                        stack.push(Open::Object(start, Vec::new(), Some(key)));
                        continue;
                    }
                }
                _ => Some(self.scalar()?),
            };
            // Close what the value completes, then read what follows it.
            loop {
                let depth = stack.len();
                let Some(open) = stack.last_mut() else {
                    let value = done.take().ok_or_else(|| self.eof())?;
                    if self.mode == Mode::Unmarshal {
                        self.skip_space();
                        if self.at < self.input.len() {
                            return Err(self.invalid("after top-level value"));
                        }
                    }
                    return Ok(value);
                };
                match open {
                    Open::Array(_, items) => {
                        // Deeper than any request is checked, values are scanned, not kept
                        // (the tree stays shallow enough to drop without deep recursion).
                        if let Some(value) = done.take().filter(|_| depth <= KEEP_MAX_DEPTH) {
                            items.push(value);
                        }
                        self.skip_space();
                        match self.peek()? {
                            b',' => {
                                self.at += 1;
                                break;
                            }
                            b']' => self.at += 1,
                            _ => return Err(self.invalid("after array element")),
                        }
                    }
                    Open::Object(_, fields, key) => {
                        let value = done.take().filter(|_| depth <= KEEP_MAX_DEPTH);
                        if let (Some(value), Some(key)) = (value, key.take()) {
                            fields.push((key, value));
                        }
                        self.skip_space();
                        match self.peek()? {
                            b',' => {
                                self.at += 1;
                                self.skip_space();
                                *key = Some(self.key()?);
                                break;
                            }
                            b'}' => self.at += 1,
                            _ => return Err(self.invalid("after object key:value pair")),
                        }
                    }
                }
                done = Some(match stack.pop() {
                    Some(Open::Array(start, items)) => Value {
                        kind: Kind::Array(items),
                        start,
                        end: self.at,
                    },
                    Some(Open::Object(start, fields, _)) => Value {
                        kind: Kind::Object(fields),
                        start,
                        end: self.at,
                    },
                    None => return Err(self.eof()),
                });
            }
        }
    }

    /// An object key and its colon.
    fn key(&mut self) -> Result<String, String> {
        if self.peek()? != b'"' {
            return Err(self.invalid("looking for beginning of object key string"));
        }
        let start = self.at;
        self.string()?;
        let key = serde_json::from_slice(&self.input[start..self.at]).unwrap_or_default();
        self.skip_space();
        if self.peek()? != b':' {
            return Err(self.invalid("after object key"));
        }
        self.at += 1;
        Ok(key)
    }

    fn scalar(&mut self) -> Result<Value, String> {
        let start = self.at;
        let kind = match self.input[self.at] {
            b'"' => {
                self.string()?;
                Kind::String
            }
            b'-' | b'0'..=b'9' => {
                self.number()?;
                Kind::Number
            }
            b't' => {
                self.literal("true")?;
                Kind::Bool
            }
            b'f' => {
                self.literal("false")?;
                Kind::Bool
            }
            b'n' => {
                self.literal("null")?;
                Kind::Null
            }
            _ => return Err(self.invalid("looking for beginning of value")),
        };
        Ok(Value {
            kind,
            start,
            end: self.at,
        })
    }

    fn literal(&mut self, word: &str) -> Result<(), String> {
        for expected in word.bytes().skip(1) {
            self.at += 1;
            let context = format!("in literal {word} (expecting {})", quote_char(expected));
            match self.input.get(self.at) {
                None => return Err(self.cut_in(&context)),
                Some(&c) if c != expected => return Err(self.invalid(&context)),
                Some(_) => {}
            }
        }
        self.at += 1;
        Ok(())
    }

    fn string(&mut self) -> Result<(), String> {
        self.at += 1;
        loop {
            match self.peek()? {
                b'"' => {
                    self.at += 1;
                    return Ok(());
                }
                b'\\' => {
                    self.at += 1;
                    match self.peek()? {
                        b'b' | b'f' | b'n' | b'r' | b't' | b'\\' | b'/' | b'"' => self.at += 1,
                        b'u' => {
                            self.at += 1;
                            for _ in 0..4 {
                                if !self.peek()?.is_ascii_hexdigit() {
                                    return Err(self.invalid("in \\u hexadecimal character escape"));
                                }
                                self.at += 1;
                            }
                        }
                        _ => return Err(self.invalid("in string escape code")),
                    }
                }
                c if c < 0x20 => return Err(self.invalid("in string literal")),
                _ => self.at += 1,
            }
        }
    }

    /// A number; it ends at the first byte that cannot continue it (or at the input's end).
    fn number(&mut self) -> Result<(), String> {
        let digit = |s: &Self| s.input.get(s.at).is_some_and(u8::is_ascii_digit);
        if self.input[self.at] == b'-' {
            self.at += 1;
            if !digit(self) {
                return Err(self.bad_number("in numeric literal"));
            }
        }
        if self.input[self.at] == b'0' {
            self.at += 1;
        } else {
            while digit(self) {
                self.at += 1;
            }
        }
        if self.input.get(self.at) == Some(&b'.') {
            self.at += 1;
            if !digit(self) {
                return Err(self.bad_number("after decimal point in numeric literal"));
            }
            while digit(self) {
                self.at += 1;
            }
        }
        if matches!(self.input.get(self.at), Some(b'e' | b'E')) {
            self.at += 1;
            if matches!(self.input.get(self.at), Some(b'+' | b'-')) {
                self.at += 1;
            }
            if !digit(self) {
                return Err(self.bad_number("in exponent of numeric literal"));
            }
            while digit(self) {
                self.at += 1;
            }
        }
        Ok(())
    }
}

/// A byte as Go's scanner quotes it in an error: `'x'`, `'\''`, `'"'`, `'\n'`, `'\x01'`.
fn quote_char(c: u8) -> String {
    match c {
        b'\'' => r"'\''".into(),
        b'"' => "'\"'".into(),
        _ => {
            let quoted = go_quote(&char::from(c).to_string());
            format!("'{}'", &quoted[1..quoted.len() - 1])
        }
    }
}

/// A string as Go's `strconv.Quote` (and `%q`) writes it.
fn go_quote(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\x07' => out.push_str("\\a"),
            '\x08' => out.push_str("\\b"),
            '\x0c' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\x0b' => out.push_str("\\v"),
            c if (c as u32) < 0x20 || c == '\x7f' => out.push_str(&format!("\\x{:02x}", c as u32)),
            c if c.is_control() || c == '\u{a0}' || c == '\u{ad}' => {
                out.push_str(&format!("\\u{:04x}", c as u32));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// `json: cannot unmarshal <word> into Go value of type <go_type>`.
fn type_error(word: &str, go_type: &str) -> String {
    format!("json: cannot unmarshal {word} into Go value of type {go_type}")
}

/// jsonpb's unmarshal of a message from `value`: an object (or null); its fields in declaration
/// order, each by its proto name or its JSON name; null fields left unset.
fn check_message(
    input: &[u8],
    value: &Value,
    fields: &[Field],
    schema: &Schema,
    depth: usize,
) -> Result<(), String> {
    if depth > WALK_MAX_DEPTH {
        return Ok(());
    }
    let members = match &value.kind {
        Kind::Null => return Ok(()),
        Kind::Object(members) => members,
        other => return Err(type_error(other.go_word(), "map[string]json.RawMessage")),
    };
    let find = |name: &str| {
        members
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v)
    };
    for field in fields {
        let Some(raw) = find(&field.name).or_else(|| find(&field.json_name)) else {
            continue;
        };
        if matches!(raw.kind, Kind::Null) {
            continue;
        }
        if field.repeated {
            let Kind::Array(items) = &raw.kind else {
                return Err(type_error(raw.kind.go_word(), "[]json.RawMessage"));
            };
            for item in items {
                check_singular(input, item, field, schema, depth)?;
            }
        } else {
            check_singular(input, raw, field, schema, depth)?;
        }
    }
    Ok(())
}

fn check_singular(
    input: &[u8],
    value: &Value,
    field: &Field,
    schema: &Schema,
    depth: usize,
) -> Result<(), String> {
    let raw = &input[value.start..value.end];
    let simple = |go_type: &str, accepted: bool| match (&value.kind, accepted) {
        (Kind::Null, _) | (_, true) => Ok(()),
        (kind, false) => Err(type_error(kind.go_word(), go_type)),
    };
    match field.kind {
        Type::Bool => simple("bool", matches!(value.kind, Kind::Bool)),
        Type::String => simple("string", matches!(value.kind, Kind::String)),
        // Base64 in a string, or an array of byte values.
        Type::Bytes => match &value.kind {
            Kind::String => {
                let text: String = serde_json::from_slice(raw).unwrap_or_default();
                base64_error(text.as_bytes()).map_or(Ok(()), Err)
            }
            Kind::Array(items) => items.iter().try_for_each(|item| match item.kind {
                Kind::Null => Ok(()),
                Kind::Number => integer(&input[item.start..item.end], "uint8"),
                ref kind => Err(type_error(kind.go_word(), "uint8")),
            }),
            _ => simple("[]uint8", false),
        },
        Type::Int32 | Type::Sint32 | Type::Sfixed32 => integer(trim_quote(raw), "int32"),
        Type::Int64 | Type::Sint64 | Type::Sfixed64 => integer(trim_quote(raw), "int64"),
        Type::Uint32 | Type::Fixed32 => integer(trim_quote(raw), "uint32"),
        Type::Uint64 | Type::Fixed64 => integer(trim_quote(raw), "uint64"),
        Type::Enum => {
            if raw.len() >= 2 && raw[0] == b'"' && raw[raw.len() - 1] == b'"' {
                let name = &raw[1..raw.len() - 1];
                let known = schema
                    .enums
                    .get(&field.type_name)
                    .is_some_and(|names| names.iter().any(|n| n.as_bytes() == name));
                return match known {
                    true => Ok(()),
                    false => Err(format!(
                        "unknown value {} for enum {}",
                        go_quote(&String::from_utf8_lossy(raw)),
                        field.type_name
                    )),
                };
            }
            integer(raw, "protoreflect.EnumNumber")
        }
        Type::Message => match schema.messages.get(&field.type_name) {
            Some(fields) => check_message(input, value, fields, schema, depth + 1),
            None => Ok(()),
        },
        // No float, double or group field in the API.
        _ => Ok(()),
    }
}

/// Go's `base64.StdEncoding.Decode` error for `src`, if any: the offset of the first byte it
/// cannot take (padding required; `\r` and `\n` skipped).
fn base64_error(src: &[u8]) -> Option<String> {
    let fail = |at: usize| Some(format!("illegal base64 data at input byte {at}"));
    let valid = |c: u8| c.is_ascii_alphanumeric() || c == b'+' || c == b'/';
    let newline = |c: u8| c == b'\n' || c == b'\r';
    let mut si = 0;
    while si < src.len() {
        let mut j = 0;
        while j < 4 {
            if si == src.len() {
                if j == 0 {
                    return None;
                }
                return fail(si - j);
            }
            let c = src[si];
            si += 1;
            if valid(c) {
                j += 1;
                continue;
            }
            if newline(c) {
                continue;
            }
            if c != b'=' || j < 2 {
                return fail(si - 1);
            }
            if j == 2 {
                // "==": the second `=` must follow.
                while si < src.len() && newline(src[si]) {
                    si += 1;
                }
                if si == src.len() {
                    return fail(src.len());
                }
                if src[si] != b'=' {
                    return fail(si - 1);
                }
                si += 1;
            }
            while si < src.len() && newline(src[si]) {
                si += 1;
            }
            if si < src.len() {
                return fail(si);
            }
            return None;
        }
    }
    None
}

/// What etcd's gateway makes of a body our parser refused.
pub enum Reading {
    /// It takes it: `body`'s first value as jsonpb reads it where our parser is stricter (a member
    /// set to null left out, so the field keeps its default; a bytes field given as an array of
    /// byte values turned into its base64).
    Take(serde_json::Value),
    /// It refuses it, in these words.
    Refuse(String),
    /// Not known (a message not in our protos, a body nested too deep for the check).
    Unknown,
}

/// [`Reading`] of `body` as a `T`: one scan and one check serve both the words and the taking.
pub fn read<T>(body: &[u8]) -> Reading {
    let Some(message) = message_name(std::any::type_name::<T>()) else {
        return Reading::Unknown;
    };
    let schema = schema();
    let Some(fields) = schema.messages.get(&message) else {
        return Reading::Unknown;
    };
    let value = match Scanner::new(body, Mode::Decoder).value() {
        Ok(value) => value,
        Err(words) => return Reading::Refuse(words),
    };
    if let Err(words) = check_message(body, &value, fields, schema, 0) {
        return Reading::Refuse(words);
    }
    match taken(&body[value.start..value.end], fields, schema) {
        Some(json) => Reading::Take(json),
        None => Reading::Unknown,
    }
}

fn taken(value: &[u8], fields: &[Field], schema: &Schema) -> Option<serde_json::Value> {
    let mut json: serde_json::Value = serde_json::Deserializer::from_slice(value)
        .into_iter::<serde_json::Value>()
        .next()?
        .ok()?;
    normalize(&mut json, fields, schema, 0);
    Some(json)
}

fn normalize(json: &mut serde_json::Value, fields: &[Field], schema: &Schema, depth: usize) {
    use base64::Engine;
    let Some(members) = json.as_object_mut() else {
        return;
    };
    members.retain(|_, v| !v.is_null());
    if depth > WALK_MAX_DEPTH {
        return;
    }
    for field in fields {
        let json_name = Some(&field.json_name).filter(|n| **n != field.name);
        for name in std::iter::once(&field.name).chain(json_name) {
            let Some(member) = members.get_mut(name.as_str()) else {
                continue;
            };
            let items: Vec<&mut serde_json::Value> = match (field.repeated, member) {
                (true, serde_json::Value::Array(items)) => items.iter_mut().collect(),
                (_, member) => vec![member],
            };
            for item in items {
                match field.kind {
                    Type::Bytes => {
                        if let serde_json::Value::Array(bytes) = item {
                            let raw: Vec<u8> = bytes
                                .iter()
                                .map(|b| b.as_u64().unwrap_or(0) as u8)
                                .collect();
                            *item = base64::engine::general_purpose::STANDARD.encode(raw).into();
                        }
                    }
                    Type::Message => {
                        if let Some(nested) = schema.messages.get(&field.type_name) {
                            normalize(item, nested, schema, depth + 1);
                        }
                    }
                    // A quoted integer is read as the JSON inside the quotes (spaces allowed).
                    Type::Int32
                    | Type::Int64
                    | Type::Sint32
                    | Type::Sint64
                    | Type::Sfixed32
                    | Type::Sfixed64
                    | Type::Uint32
                    | Type::Uint64
                    | Type::Fixed32
                    | Type::Fixed64 => {
                        if let Some(inner) = item.as_str() {
                            let inner = inner.trim_matches([' ', '\t', '\r', '\n']);
                            *item = match inner {
                                "null" => 0.into(),
                                _ => inner.to_string().into(),
                            };
                        }
                    }
                    _ => {}
                }
            }
        }
    }
}

/// jsonpb's `trimQuote`: a quoted value loses its quotes, and what is left is read as JSON.
fn trim_quote(raw: &[u8]) -> &[u8] {
    if raw.len() >= 2 && raw[0] == b'"' && raw[raw.len() - 1] == b'"' {
        &raw[1..raw.len() - 1]
    } else {
        raw
    }
}

/// `json.Unmarshal` of `raw` into a Go integer of `go_type`.
fn integer(raw: &[u8], go_type: &str) -> Result<(), String> {
    let value = Scanner::new(raw, Mode::Unmarshal).value()?;
    match value.kind {
        Kind::Null => Ok(()),
        Kind::Number => {
            let text = String::from_utf8_lossy(&raw[value.start..value.end]);
            let fits = match go_type {
                "int32" | "protoreflect.EnumNumber" => text.parse::<i32>().is_ok(),
                "uint8" => text.parse::<u8>().is_ok(),
                "int64" => text.parse::<i64>().is_ok(),
                "uint32" => text.parse::<u32>().is_ok(),
                _ => text.parse::<u64>().is_ok(),
            };
            match fits {
                true => Ok(()),
                false => Err(type_error(&format!("number {text}"), go_type)),
            }
        }
        kind => Err(type_error(kind.go_word(), go_type)),
    }
}

#[cfg(test)]
#[path = "go_json_tests.rs"]
mod tests;
