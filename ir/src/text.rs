//! Textual form of the IR: a printer and a parser that round-trip.
//!
//! ```text
//! graph lenet {
//!   input %x: f32[1,1,28,28]
//!   const %w: f32[2,1,1,1] = [0.5, -1.0]
//!   const %big: f32[64,3,7,7] = hex"0000803f..."
//!   %y = conv(%x, %w) {kernel=[1,1], strides=[1,1], pads=[0,0,0,0], dilations=[1,1], groups=1} : f32[1,2,28,28]
//!   %a, %b = split(%y) {axis=1, sizes=[1,1]} : f32[1,1,28,28], f32[1,1,28,28] #name "split0"
//!   output %a, %b
//! }
//! ```
//!
//! * Value names that are not plain identifiers (`[A-Za-z0-9_]+`) are quoted: `%"conv1/out:0"`.
//! * A node whose name differs from its first output's name gets a `#name "..."` suffix.
//! * Types use `TensorType`'s `Display` (`f32[1,8,4,4]@nchw8c`, `quant(...)`).
//! * Constants print bit-exactly: small ones as a decimal list (floats in Rust's shortest
//!   round-tripping form), others (and any holding a NaN, f16/bf16, or non-0/1 bools) as
//!   little-endian `hex"..."` bytes.
//! * `//` starts a comment that runs to the end of the line.
//!
//! Printing a graph lists inputs (in `g.inputs` order), then constants, then live nodes, then the
//! outputs. Parsing runs shape inference on every node (`Graph::add_node`) and checks that the
//! declared output types agree in dtype and shape; a declared layout or quantization is kept.

use crate::ops::Attr;
use crate::{ConstData, DType, Graph, IrError, Layout, Op, QuantParams, Result, TensorType};
use crate::{ValueDef, ValueId};
use std::collections::HashMap;
use std::fmt::Write;

/// Constants with at most this many elements print as a decimal list, larger ones as hex.
const LIST_MAX: usize = 32;

/// Print `g` in full (parseable).
pub fn print(g: &Graph) -> String {
    print_impl(g, None)
}

/// Print `g` for humans: constants with more than `max_const_elems` elements are elided as
/// `<elided N bytes>` (the result is not parseable when anything was elided).
pub fn print_with_limit(g: &Graph, max_const_elems: usize) -> String {
    print_impl(g, Some(max_const_elems))
}

fn is_plain(s: &str) -> bool {
    !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn quote(s: &str) -> String {
    let mut o = String::with_capacity(s.len() + 2);
    o.push('"');
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            '\n' => o.push_str("\\n"),
            '\t' => o.push_str("\\t"),
            '\r' => o.push_str("\\r"),
            c if c.is_control() => {
                let _ = write!(o, "\\u{{{:x}}}", c as u32);
            }
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

fn var(s: &str) -> String {
    if is_plain(s) {
        format!("%{s}")
    } else {
        format!("%{}", quote(s))
    }
}

fn graph_name(s: &str) -> String {
    if is_plain(s) && !s.starts_with(|c: char| c.is_ascii_digit()) {
        s.to_string()
    } else {
        quote(s)
    }
}

fn fmt_attr(a: &Attr) -> String {
    fn list<T>(v: &[T], f: impl Fn(&T) -> String) -> String {
        let items: Vec<String> = v.iter().map(f).collect();
        format!("[{}]", items.join(", "))
    }
    match a {
        Attr::Int(i) => i.to_string(),
        Attr::Float(f) => format!("{f:?}"),
        Attr::Ints(v) => list(v, |i| i.to_string()),
        Attr::Floats(v) => list(v, |f| format!("{f:?}")),
        Attr::Str(s) => quote(s),
    }
}

fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2 + 5);
    s.push_str("hex\"");
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s.push('"');
    s
}

/// The decimal list form of a constant, when it represents the bytes exactly.
fn const_list(ty: &TensorType, b: &[u8]) -> Option<String> {
    fn join<T>(it: impl Iterator<Item = T>, f: impl Fn(T) -> String) -> String {
        let v: Vec<String> = it.map(f).collect();
        format!("[{}]", v.join(", "))
    }
    macro_rules! ints {
        ($t:ty, $n:expr) => {
            join(b.chunks_exact($n), |c| {
                <$t>::from_le_bytes(c.try_into().unwrap()).to_string()
            })
        };
    }
    Some(match ty.dtype {
        DType::F32 => {
            let v: Vec<f32> = b
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect();
            if v.iter().any(|x| x.is_nan()) {
                return None;
            }
            join(v.iter(), |x| format!("{x:?}"))
        }
        DType::F64 => {
            let v: Vec<f64> = b
                .chunks_exact(8)
                .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
                .collect();
            if v.iter().any(|x| x.is_nan()) {
                return None;
            }
            join(v.iter(), |x| format!("{x:?}"))
        }
        DType::I8 => ints!(i8, 1),
        DType::U8 => ints!(u8, 1),
        DType::I16 => ints!(i16, 2),
        DType::U16 => ints!(u16, 2),
        DType::I32 => ints!(i32, 4),
        DType::U32 => ints!(u32, 4),
        DType::I64 => ints!(i64, 8),
        DType::U64 => ints!(u64, 8),
        DType::Bool => {
            if b.iter().any(|&x| x > 1) {
                return None;
            }
            join(b.iter(), |&x| {
                (if x == 1 { "true" } else { "false" }).to_string()
            })
        }
        DType::F16 | DType::BF16 => return None,
    })
}

fn print_impl(g: &Graph, limit: Option<usize>) -> String {
    let mut s = String::new();
    print_graph(&mut s, g, limit, "");
    s
}

/// Print `g` with every line indented by `ind` (sub-graphs are printed nested in their node).
fn print_graph(s: &mut String, g: &Graph, limit: Option<usize>, ind: &str) {
    let _ = writeln!(s, "{ind}graph {} {{", graph_name(&g.name));
    for &i in &g.inputs {
        let v = g.value(i);
        let _ = writeln!(s, "{ind}  input {}: {}", var(&v.name), v.ty);
    }
    for v in &g.values {
        let ValueDef::Const(d) = &v.def else { continue };
        let numel = v.ty.numel();
        let body = if limit.is_some_and(|m| numel > m) {
            format!("<elided {} bytes>", d.len())
        } else if d.len() != v.ty.size_bytes() {
            // Malformed constant (the verifier rejects it); print the raw bytes.
            hex(d.bytes())
        } else if numel <= LIST_MAX {
            const_list(&v.ty, d.bytes()).unwrap_or_else(|| hex(d.bytes()))
        } else {
            hex(d.bytes())
        };
        let _ = writeln!(s, "{ind}  const {}: {} = {}", var(&v.name), v.ty, body);
    }
    for (_, n) in g.iter_nodes() {
        let outs: Vec<String> = n.outputs.iter().map(|&o| var(&g.value(o).name)).collect();
        let ins: Vec<String> = n.inputs.iter().map(|&i| var(&g.value(i).name)).collect();
        let _ = write!(
            s,
            "{ind}  {} = {}({})",
            outs.join(", "),
            n.op.name(),
            ins.join(", ")
        );
        let attrs = n.op.attrs();
        if !attrs.is_empty() {
            let a: Vec<String> = attrs
                .iter()
                .map(|(k, a)| format!("{k}={}", fmt_attr(a)))
                .collect();
            let _ = write!(s, " {{{}}}", a.join(", "));
        }
        let tys: Vec<String> = n.outputs.iter().map(|&o| g.ty(o).to_string()).collect();
        let _ = write!(s, " : {}", tys.join(", "));
        let first = n.outputs.first().map(|&o| g.value(o).name.as_str());
        if first != Some(n.name.as_str()) {
            let _ = write!(s, " #name {}", quote(&n.name));
        }
        let bodies = n.op.bodies();
        if bodies.is_empty() {
            s.push('\n');
        } else {
            s.push_str(" {\n");
            let inner = format!("{ind}    ");
            for b in bodies {
                print_graph(s, b, limit, &inner);
            }
            let _ = writeln!(s, "{ind}  }}");
        }
    }
    let outs: Vec<String> = g.outputs.iter().map(|&o| var(&g.value(o).name)).collect();
    if outs.is_empty() {
        let _ = writeln!(s, "{ind}  output");
    } else {
        let _ = writeln!(s, "{ind}  output {}", outs.join(", "));
    }
    let _ = writeln!(s, "{ind}}}");
}

// ------------------------------------------------------------------------------------------------
// Lexer

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    /// `%name` or `%"name"`.
    Var(String),
    Str(String),
    /// A number as written (`12`, `-3`, `1.5`, `1e-5`, `-inf`).
    Num(String),
    Punct(char),
}

impl std::fmt::Display for Tok {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Tok::Ident(s) => write!(f, "'{s}'"),
            Tok::Var(s) => write!(f, "{}", var(s)),
            Tok::Str(s) => write!(f, "{}", quote(s)),
            Tok::Num(s) => write!(f, "number {s}"),
            Tok::Punct(c) => write!(f, "'{c}'"),
        }
    }
}

fn lex_string(chars: &[char], i: &mut usize) -> std::result::Result<String, String> {
    // chars[*i] == '"'
    *i += 1;
    let mut s = String::new();
    loop {
        let Some(&c) = chars.get(*i) else {
            return Err("unterminated string".into());
        };
        *i += 1;
        match c {
            '"' => return Ok(s),
            '\\' => {
                let Some(&e) = chars.get(*i) else {
                    return Err("unterminated escape".into());
                };
                *i += 1;
                match e {
                    '"' => s.push('"'),
                    '\\' => s.push('\\'),
                    'n' => s.push('\n'),
                    't' => s.push('\t'),
                    'r' => s.push('\r'),
                    'u' => {
                        if chars.get(*i) != Some(&'{') {
                            return Err("expected '{' after \\u".into());
                        }
                        *i += 1;
                        let start = *i;
                        while chars.get(*i).is_some_and(|c| c.is_ascii_hexdigit()) {
                            *i += 1;
                        }
                        if chars.get(*i) != Some(&'}') || *i == start || *i - start > 6 {
                            return Err("bad \\u{...} escape".into());
                        }
                        let h: String = chars[start..*i].iter().collect();
                        *i += 1;
                        let cp = u32::from_str_radix(&h, 16)
                            .ok()
                            .and_then(char::from_u32)
                            .ok_or("bad \\u{...} code point")?;
                        s.push(cp);
                    }
                    _ => return Err(format!("unknown escape '\\{e}'")),
                }
            }
            c => s.push(c),
        }
    }
}

fn is_word(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

fn lex_line(line: &str) -> std::result::Result<Vec<Tok>, String> {
    let chars: Vec<char> = line.chars().collect();
    let mut toks = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
        } else if c == '/' && chars.get(i + 1) == Some(&'/') {
            break;
        } else if c == '"' {
            toks.push(Tok::Str(lex_string(&chars, &mut i)?));
        } else if c == '%' {
            i += 1;
            if chars.get(i) == Some(&'"') {
                toks.push(Tok::Var(lex_string(&chars, &mut i)?));
            } else {
                let start = i;
                while i < chars.len() && is_word(chars[i]) {
                    i += 1;
                }
                if i == start {
                    return Err("expected a name after '%'".into());
                }
                toks.push(Tok::Var(chars[start..i].iter().collect()));
            }
        } else if c.is_ascii_digit()
            || (c == '-'
                && chars
                    .get(i + 1)
                    .is_some_and(|n| n.is_ascii_alphanumeric() || *n == '.'))
        {
            let start = i;
            i += 1;
            while i < chars.len() {
                let d = chars[i];
                let exp_sign = (d == '+' || d == '-') && matches!(chars[i - 1], 'e' | 'E');
                if is_word(d) || d == '.' || exp_sign {
                    i += 1;
                } else {
                    break;
                }
            }
            toks.push(Tok::Num(chars[start..i].iter().collect()));
        } else if c.is_ascii_alphabetic() || c == '_' {
            let start = i;
            while i < chars.len() && is_word(chars[i]) {
                i += 1;
            }
            toks.push(Tok::Ident(chars[start..i].iter().collect()));
        } else if "=(){}[],:@#<>".contains(c) {
            toks.push(Tok::Punct(c));
            i += 1;
        } else {
            return Err(format!("unexpected character {c:?}"));
        }
    }
    Ok(toks)
}

// ------------------------------------------------------------------------------------------------
// Parser

struct Cur<'a> {
    toks: &'a [Tok],
    pos: usize,
}

type PResult<T> = std::result::Result<T, String>;

impl Cur<'_> {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos)
    }
    fn next(&mut self) -> PResult<&Tok> {
        let t = self.toks.get(self.pos).ok_or("unexpected end of line")?;
        self.pos += 1;
        Ok(t)
    }
    fn at_punct(&self, c: char) -> bool {
        self.peek() == Some(&Tok::Punct(c))
    }
    fn eat_punct(&mut self, c: char) -> bool {
        if self.at_punct(c) {
            self.pos += 1;
            true
        } else {
            false
        }
    }
    fn punct(&mut self, c: char) -> PResult<()> {
        match self.next()? {
            Tok::Punct(p) if *p == c => Ok(()),
            t => Err(format!("expected '{c}', found {t}")),
        }
    }
    fn ident(&mut self) -> PResult<String> {
        match self.next()? {
            Tok::Ident(s) => Ok(s.clone()),
            t => Err(format!("expected a name, found {t}")),
        }
    }
    fn keyword(&mut self, k: &str) -> PResult<()> {
        match self.next()? {
            Tok::Ident(s) if s == k => Ok(()),
            t => Err(format!("expected '{k}', found {t}")),
        }
    }
    fn var(&mut self) -> PResult<String> {
        match self.next()? {
            Tok::Var(s) => Ok(s.clone()),
            t => Err(format!("expected a %value, found {t}")),
        }
    }
    fn end(&self) -> PResult<()> {
        match self.peek() {
            None => Ok(()),
            Some(t) => Err(format!("unexpected {t} at end of line")),
        }
    }
    /// A number or `inf`/`NaN`, as written.
    fn number(&mut self) -> PResult<String> {
        match self.next()? {
            Tok::Num(s) => Ok(s.clone()),
            Tok::Ident(s) if is_float_word(s) => Ok(s.clone()),
            t => Err(format!("expected a number, found {t}")),
        }
    }
    fn int(&mut self) -> PResult<i64> {
        let s = self.number()?;
        s.parse().map_err(|_| format!("bad integer '{s}'"))
    }
    /// `[item, item, ...]` of raw number strings.
    fn number_list(&mut self) -> PResult<Vec<String>> {
        self.punct('[')?;
        let mut v = Vec::new();
        if self.eat_punct(']') {
            return Ok(v);
        }
        loop {
            v.push(self.number()?);
            if self.eat_punct(']') {
                return Ok(v);
            }
            self.punct(',')?;
        }
    }
}

fn is_float_word(s: &str) -> bool {
    matches!(s, "inf" | "NaN" | "nan" | "true" | "false")
}

fn is_float_lit(s: &str) -> bool {
    s.contains(['.', 'e', 'E', 'n', 'N'])
}

fn parse_f32(s: &str) -> PResult<f32> {
    s.parse().map_err(|_| format!("bad float '{s}'"))
}

fn parse_type(c: &mut Cur) -> PResult<TensorType> {
    let dn = c.ident()?;
    let dtype = DType::from_name(&dn).ok_or_else(|| format!("unknown element type '{dn}'"))?;
    let dims = c.number_list()?;
    let mut shape = Vec::with_capacity(dims.len());
    for d in dims {
        shape.push(
            d.parse::<usize>()
                .map_err(|_| format!("bad dimension '{d}'"))?,
        );
    }
    let mut ty = TensorType::new(dtype, shape);
    crate::limits::check_type(&ty)?;
    if c.eat_punct('@') {
        let l = c.ident()?;
        ty.layout = l.parse::<Layout>()?;
    }
    if c.peek() == Some(&Tok::Ident("quant".into())) {
        c.pos += 1;
        c.punct('(')?;
        c.keyword("scale")?;
        c.punct('=')?;
        let scale = c
            .number_list()?
            .iter()
            .map(|s| parse_f32(s))
            .collect::<PResult<Vec<f32>>>()?;
        c.punct(',')?;
        c.keyword("zp")?;
        c.punct('=')?;
        let zero_point = c
            .number_list()?
            .iter()
            .map(|s| {
                s.parse::<i32>()
                    .map_err(|_| format!("bad zero point '{s}'"))
            })
            .collect::<PResult<Vec<i32>>>()?;
        let mut axis = None;
        if c.eat_punct(',') {
            c.keyword("axis")?;
            c.punct('=')?;
            let a = c.int()?;
            axis = Some(usize::try_from(a).map_err(|_| format!("bad quant axis {a}"))?);
        }
        c.punct(')')?;
        ty.quant = Some(QuantParams {
            scale,
            zero_point,
            axis,
        });
    }
    Ok(ty)
}

fn parse_attr_value(c: &mut Cur) -> PResult<Attr> {
    match c.peek() {
        Some(Tok::Str(s)) => {
            let s = s.clone();
            c.pos += 1;
            Ok(Attr::Str(s))
        }
        Some(Tok::Punct('[')) => {
            let items = c.number_list()?;
            if items.iter().any(|s| is_float_lit(s)) {
                Ok(Attr::Floats(
                    items.iter().map(|s| parse_f32(s)).collect::<PResult<_>>()?,
                ))
            } else {
                Ok(Attr::Ints(
                    items
                        .iter()
                        .map(|s| s.parse().map_err(|_| format!("bad integer '{s}'")))
                        .collect::<PResult<_>>()?,
                ))
            }
        }
        _ => {
            let s = c.number()?;
            if is_float_lit(&s) {
                Ok(Attr::Float(parse_f32(&s)?))
            } else {
                Ok(Attr::Int(
                    s.parse().map_err(|_| format!("bad integer '{s}'"))?,
                ))
            }
        }
    }
}

fn unhex(s: &str) -> PResult<Vec<u8>> {
    let b = s.as_bytes();
    if !b.len().is_multiple_of(2) {
        return Err("hex data has an odd number of digits".into());
    }
    let digit = |c: u8| -> PResult<u8> {
        (c as char)
            .to_digit(16)
            .map(|d| d as u8)
            .ok_or_else(|| format!("bad hex digit {:?}", c as char))
    };
    b.chunks_exact(2)
        .map(|p| Ok(digit(p[0])? << 4 | digit(p[1])?))
        .collect()
}

fn encode_list(ty: &TensorType, items: &[String]) -> PResult<Vec<u8>> {
    let n = ty.numel();
    if items.len() != n {
        return Err(format!(
            "constant of type {ty} needs {n} elements, got {}",
            items.len()
        ));
    }
    let mut out = Vec::with_capacity(ty.size_bytes());
    macro_rules! ints {
        ($t:ty) => {
            for s in items {
                let v: $t = s
                    .parse()
                    .map_err(|_| format!("bad {} value '{s}'", ty.dtype))?;
                out.extend_from_slice(&v.to_le_bytes());
            }
        };
    }
    match ty.dtype {
        DType::F32 => ints!(f32),
        DType::F64 => ints!(f64),
        DType::I8 => ints!(i8),
        DType::U8 => ints!(u8),
        DType::I16 => ints!(i16),
        DType::U16 => ints!(u16),
        DType::I32 => ints!(i32),
        DType::U32 => ints!(u32),
        DType::I64 => ints!(i64),
        DType::U64 => ints!(u64),
        DType::Bool => {
            for s in items {
                out.push(match s.as_str() {
                    "true" | "1" => 1,
                    "false" | "0" => 0,
                    _ => return Err(format!("bad bool value '{s}'")),
                });
            }
        }
        DType::F16 | DType::BF16 => {
            return Err(format!(
                "{} constants must be written as hex\"...\"",
                ty.dtype
            ));
        }
    }
    Ok(out)
}

struct Parser {
    g: Graph,
    names: HashMap<String, ValueId>,
}

/// The lines still to parse: (1-based number, text).
type Lines<'a, 'b> = &'a mut dyn Iterator<Item = (usize, &'b str)>;

/// Parse a graph's statements up to its closing `}` (the `graph NAME {` header was read).
fn parse_block(lines: Lines, name: String, last_line: &mut usize) -> Result<Graph> {
    let perr = |line: usize, msg: String| IrError::Parse { line, msg };
    let mut p = Parser {
        g: Graph::new(name),
        names: HashMap::new(),
    };
    while let Some((ln, l)) = lines.next() {
        *last_line = ln;
        let toks = lex_line(l).map_err(|m| perr(ln, m))?;
        if toks.is_empty() {
            continue;
        }
        if toks == [Tok::Punct('}')] {
            return Ok(p.g);
        }
        let mut c = Cur {
            toks: &toks,
            pos: 0,
        };
        p.statement(&mut c, lines, last_line).map_err(|e| match e {
            Nested::Here(m) => perr(ln, m),
            Nested::Inner(e) => e,
        })?;
    }
    Err(perr(*last_line + 1, "missing closing '}'".into()))
}

/// `graph NAME {` (a header line's tokens).
fn graph_header(c: &mut Cur) -> PResult<String> {
    c.keyword("graph")?;
    let name = match c.next()? {
        Tok::Ident(n) => n.clone(),
        Tok::Str(n) => n.clone(),
        t => return Err(format!("expected a graph name, found {t}")),
    };
    c.punct('{')?;
    c.end()?;
    Ok(name)
}

/// A statement's error: on its own line, or inside a nested graph (already located).
enum Nested {
    Here(String),
    Inner(IrError),
}

impl From<String> for Nested {
    fn from(m: String) -> Nested {
        Nested::Here(m)
    }
}

/// The sub-graphs of a node whose line ends in `{`: `graph NAME { .. }` blocks up to a `}`.
fn parse_bodies(lines: Lines, last_line: &mut usize) -> Result<Vec<Graph>> {
    let perr = |line: usize, msg: String| IrError::Parse { line, msg };
    let mut bodies = Vec::new();
    while let Some((ln, l)) = lines.next() {
        *last_line = ln;
        let toks = lex_line(l).map_err(|m| perr(ln, m))?;
        if toks.is_empty() {
            continue;
        }
        if toks == [Tok::Punct('}')] {
            return Ok(bodies);
        }
        let mut c = Cur {
            toks: &toks,
            pos: 0,
        };
        let name = graph_header(&mut c).map_err(|m| perr(ln, m))?;
        bodies.push(parse_block(lines, name, last_line)?);
    }
    Err(perr(
        *last_line + 1,
        "missing '}' closing the sub-graphs".into(),
    ))
}

impl Parser {
    fn define(&mut self, name: &str) -> PResult<()> {
        if self.names.contains_key(name) {
            return Err(format!("value {} is defined twice", var(name)));
        }
        Ok(())
    }
    fn lookup(&self, name: &str) -> PResult<ValueId> {
        self.names
            .get(name)
            .copied()
            .ok_or_else(|| format!("undefined value {}", var(name)))
    }

    fn statement(&mut self, c: &mut Cur, lines: Lines, last: &mut usize) -> Result<(), Nested> {
        match c.peek() {
            Some(Tok::Ident(k)) if k == "input" => {
                c.pos += 1;
                let name = c.var()?;
                c.punct(':')?;
                let ty = parse_type(c)?;
                c.end()?;
                self.define(&name)?;
                let id = self.g.add_input(name.clone(), ty);
                self.names.insert(name, id);
            }
            Some(Tok::Ident(k)) if k == "const" => {
                c.pos += 1;
                let name = c.var()?;
                c.punct(':')?;
                let ty = parse_type(c)?;
                c.punct('=')?;
                let bytes = match c.next()? {
                    Tok::Ident(h) if h == "hex" => match c.next()? {
                        Tok::Str(s) => unhex(s)?,
                        t => return Err(format!("expected a hex string, found {t}").into()),
                    },
                    Tok::Punct('[') => {
                        c.pos -= 1;
                        let items = c.number_list()?;
                        encode_list(&ty, &items)?
                    }
                    Tok::Punct('<') => {
                        return Err(Nested::Here("elided constants cannot be parsed".into()));
                    }
                    t => return Err(format!("expected constant data, found {t}").into()),
                };
                c.end()?;
                self.define(&name)?;
                let id = self
                    .g
                    .add_const(name.clone(), ty, ConstData::from_vec(bytes))
                    .map_err(|e| e.to_string())?;
                self.names.insert(name, id);
            }
            Some(Tok::Ident(k)) if k == "output" => {
                c.pos += 1;
                if c.peek().is_some() {
                    loop {
                        let n = c.var()?;
                        let id = self.lookup(&n)?;
                        self.g.outputs.push(id);
                        if !c.eat_punct(',') {
                            break;
                        }
                    }
                }
                c.end()?;
            }
            Some(Tok::Var(_)) => self.node(c, lines, last)?,
            Some(t) => return Err(format!("expected a statement, found {t}").into()),
            None => {}
        }
        Ok(())
    }

    fn node(&mut self, c: &mut Cur, lines: Lines, last: &mut usize) -> Result<(), Nested> {
        let mut outs = vec![c.var()?];
        while c.eat_punct(',') {
            outs.push(c.var()?);
        }
        c.punct('=')?;
        let op_name = c.ident()?;
        c.punct('(')?;
        let mut ins = Vec::new();
        if !c.eat_punct(')') {
            loop {
                let n = c.var()?;
                ins.push(self.lookup(&n)?);
                if c.eat_punct(')') {
                    break;
                }
                c.punct(',')?;
            }
        }
        let mut attrs: Vec<(String, Attr)> = Vec::new();
        if c.eat_punct('{') && !c.eat_punct('}') {
            loop {
                let k = c.ident()?;
                c.punct('=')?;
                let v = parse_attr_value(c)?;
                if attrs.iter().any(|(n, _)| *n == k) {
                    return Err(format!("attribute '{k}' given twice").into());
                }
                attrs.push((k, v));
                if c.eat_punct('}') {
                    break;
                }
                c.punct(',')?;
            }
        }
        c.punct(':')?;
        let mut tys = vec![parse_type(c)?];
        while c.eat_punct(',') {
            tys.push(parse_type(c)?);
        }
        let mut node_name = outs[0].clone();
        if c.eat_punct('#') {
            c.keyword("name")?;
            match c.next()? {
                Tok::Str(s) => node_name = s.clone(),
                t => return Err(format!("expected a quoted node name, found {t}").into()),
            }
        }
        let nested = c.eat_punct('{');
        c.end()?;
        if tys.len() != outs.len() {
            return Err(
                format!("{} outputs named but {} types given", outs.len(), tys.len()).into(),
            );
        }
        for (i, o) in outs.iter().enumerate() {
            self.define(o)?;
            if outs[..i].contains(o) {
                return Err(format!("value {} is defined twice", var(o)).into());
            }
        }
        let bodies = if nested {
            parse_bodies(lines, last).map_err(Nested::Inner)?
        } else {
            Vec::new()
        };
        let op = Op::from_parts_with_bodies(&op_name, &attrs, bodies)?;
        // Shape inference on arbitrary (parsed) attributes must never take the parser down.
        let g = &mut self.g;
        let res = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            g.add_node(node_name, op, ins, outs.clone())
        }))
        .map_err(|_| format!("shape inference of '{op_name}' failed on these operands"))?;
        let ids = res.map_err(|e| e.to_string())?;
        for ((id, ty), name) in ids.iter().zip(tys).zip(outs) {
            let inferred = self.g.ty(*id);
            if inferred.dtype != ty.dtype || inferred.shape != ty.shape {
                return Err(
                    format!("{} is declared {ty} but inferred {inferred}", var(&name)).into(),
                );
            }
            self.g.value_mut(*id).ty = ty;
            self.names.insert(name, *id);
        }
        Ok(())
    }
}

/// Parse the text form. Errors carry the 1-based line number.
pub fn parse(s: &str) -> Result<Graph> {
    let perr = |line: usize, msg: String| IrError::Parse { line, msg };
    let mut lines = s.lines().enumerate().map(|(i, l)| (i + 1, l));
    let mut last_line = 0;
    // Header.
    let name = loop {
        let Some((ln, l)) = lines.next() else {
            return Err(perr(last_line.max(1), "expected 'graph NAME {'".into()));
        };
        last_line = ln;
        let toks = lex_line(l).map_err(|m| perr(ln, m))?;
        if toks.is_empty() {
            continue;
        }
        let mut c = Cur {
            toks: &toks,
            pos: 0,
        };
        break graph_header(&mut c).map_err(|m| perr(ln, m))?;
    };
    let g = parse_block(&mut lines, name, &mut last_line)?;
    for (ln, l) in lines {
        if !lex_line(l).map_err(|m| perr(ln, m))?.is_empty() {
            return Err(perr(ln, "unexpected text after the closing '}'".into()));
        }
    }
    Ok(g)
}
