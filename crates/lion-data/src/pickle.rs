//! A small Python pickle reader for data files (protocols 0-5, the subset plain data needs:
//! None, bools, ints, floats, str/bytes, lists, tuples, dicts, the memo). Anything else (class
//! instances, globals, persistent ids) is an error naming the byte offset; nothing is executed.
//!
//! Python 2's `str` (BINSTRING / SHORT_BINSTRING, as in RefCOCO's `refs(unc).p`) is decoded as
//! UTF-8 when valid, otherwise as Latin-1.

use std::cell::RefCell;
use std::rc::Rc;

/// A decoded pickle value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    List(Vec<Value>),
    Tuple(Vec<Value>),
    Dict(Vec<(Value, Value)>),
}

impl Value {
    /// The entry of a dict with a string key.
    pub fn get(&self, key: &str) -> Option<&Value> {
        match self {
            Value::Dict(kv) => kv
                .iter()
                .find(|(k, _)| matches!(k, Value::Str(s) if s == key))
                .map(|(_, v)| v),
            _ => None,
        }
    }
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            Value::Bool(b) => Some(i64::from(*b)),
            _ => None,
        }
    }
    pub fn as_list(&self) -> Option<&[Value]> {
        match self {
            Value::List(v) | Value::Tuple(v) => Some(v),
            _ => None,
        }
    }
    /// A short name of the kind, for error messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Value::None => "None",
            Value::Bool(_) => "bool",
            Value::Int(_) => "int",
            Value::Float(_) => "float",
            Value::Str(_) => "str",
            Value::Bytes(_) => "bytes",
            Value::List(_) => "list",
            Value::Tuple(_) => "tuple",
            Value::Dict(_) => "dict",
        }
    }
}

/// Values on the stack: containers are shared so the memo sees later mutations.
#[derive(Clone)]
enum V {
    Plain(Value),
    List(Rc<RefCell<Vec<V>>>),
    Dict(Rc<RefCell<Vec<(V, V)>>>),
    Tuple(Rc<Vec<V>>),
    Mark,
}

/// Containers nested deeper than this are refused (plain data files nest a few levels).
const MAX_DEPTH: usize = 1000;

impl V {
    /// The owned value; `None` for a container that contains itself or nests too deep.
    fn freeze(&self, depth: usize) -> Option<Value> {
        if depth > MAX_DEPTH {
            return None;
        }
        Some(match self {
            V::Plain(v) => v.clone(),
            V::List(l) => {
                let l = l.try_borrow_mut().ok()?; // a mutable borrow detects self-reference
                Value::List(
                    l.iter()
                        .map(|x| x.freeze(depth + 1))
                        .collect::<Option<_>>()?,
                )
            }
            V::Dict(d) => {
                let d = d.try_borrow_mut().ok()?; // a mutable borrow detects self-reference
                let kv = d
                    .iter()
                    .map(|(k, v)| Some((k.freeze(depth + 1)?, v.freeze(depth + 1)?)))
                    .collect::<Option<_>>()?;
                Value::Dict(kv)
            }
            V::Tuple(t) => Value::Tuple(
                t.iter()
                    .map(|x| x.freeze(depth + 1))
                    .collect::<Option<_>>()?,
            ),
            V::Mark => Value::None,
        })
    }
}

/// Drops a value graph without recursion (a crafted file can nest containers very deep).
fn drop_iter(mut work: Vec<V>) {
    while let Some(v) = work.pop() {
        match v {
            V::List(rc) => {
                if let Ok(cell) = Rc::try_unwrap(rc) {
                    work.extend(cell.into_inner());
                }
            }
            V::Dict(rc) => {
                if let Ok(cell) = Rc::try_unwrap(rc) {
                    for (k, v) in cell.into_inner() {
                        work.push(k);
                        work.push(v);
                    }
                }
            }
            V::Tuple(rc) => {
                if let Ok(items) = Rc::try_unwrap(rc) {
                    work.extend(items);
                }
            }
            V::Plain(_) | V::Mark => {}
        }
    }
}

/// The unpickler's state; dropped iteratively.
#[derive(Default)]
struct Machine {
    stack: Vec<V>,
    memo: std::collections::HashMap<u64, V>,
}

impl Drop for Machine {
    fn drop(&mut self) {
        let mut all = std::mem::take(&mut self.stack);
        // (cycles are leaked: Rc cannot free them, and that is harmless for one bad file)
        all.extend(std::mem::take(&mut self.memo).into_values());
        drop_iter(all);
    }
}

/// A pickle decoding error at a byte offset.
#[derive(Debug, Clone, PartialEq)]
pub struct PickleError {
    pub offset: usize,
    pub msg: String,
}

impl std::fmt::Display for PickleError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "byte {}: {}", self.offset, self.msg)
    }
}

struct Reader<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn err<T>(&self, at: usize, msg: impl Into<String>) -> Result<T, PickleError> {
        Err(PickleError {
            offset: at,
            msg: msg.into(),
        })
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8], PickleError> {
        if self.pos.checked_add(n).is_none_or(|end| end > self.b.len()) {
            return self.err(self.pos, format!("truncated: wanted {n} more bytes"));
        }
        let s = &self.b[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, PickleError> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, PickleError> {
        let s = self.take(4)?;
        Ok(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
    }
    fn u64(&mut self) -> Result<u64, PickleError> {
        let s = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(s);
        Ok(u64::from_le_bytes(a))
    }
    fn line(&mut self) -> Result<&'a [u8], PickleError> {
        let start = self.pos;
        while self.pos < self.b.len() && self.b[self.pos] != b'\n' {
            self.pos += 1;
        }
        if self.pos >= self.b.len() {
            return self.err(start, "truncated: unterminated line");
        }
        self.pos += 1;
        Ok(&self.b[start..self.pos - 1])
    }
}

fn py2_str(b: &[u8]) -> String {
    match std::str::from_utf8(b) {
        Ok(s) => s.to_string(),
        Err(_) => b.iter().map(|&c| c as char).collect(),
    }
}

fn utf8(r: &Reader, at: usize, b: &[u8]) -> Result<String, PickleError> {
    std::str::from_utf8(b)
        .map(str::to_string)
        .or_else(|_| r.err(at, "invalid UTF-8 in a unicode string"))
}

/// Little-endian two's complement integer (LONG1/LONG4).
fn long_le(r: &Reader, at: usize, b: &[u8]) -> Result<i64, PickleError> {
    if b.is_empty() {
        return Ok(0);
    }
    if b.len() > 8 {
        return r.err(at, "integer wider than 64 bits");
    }
    let neg = b[b.len() - 1] & 0x80 != 0;
    let mut a = [if neg { 0xff } else { 0 }; 8];
    a[..b.len()].copy_from_slice(b);
    Ok(i64::from_le_bytes(a))
}

/// Decodes one pickle.
pub fn from_slice(bytes: &[u8]) -> Result<Value, PickleError> {
    let mut r = Reader { b: bytes, pos: 0 };
    let mut machine = Machine::default();
    let Machine { stack, memo } = &mut machine;
    loop {
        let at = r.pos;
        let op = r.u8()?;
        macro_rules! pop {
            () => {
                match stack.pop() {
                    Some(V::Mark) | None => return r.err(at, "stack underflow"),
                    Some(v) => v,
                }
            };
        }
        macro_rules! pop_mark {
            () => {{
                let Some(m) = stack.iter().rposition(|v| matches!(v, V::Mark)) else {
                    return r.err(at, "no MARK on the stack");
                };
                let items: Vec<V> = stack.drain(m + 1..).collect();
                stack.pop();
                items
            }};
        }
        match op {
            0x80 => {
                let p = r.u8()?;
                if p > 5 {
                    return r.err(at, format!("unsupported pickle protocol {p}"));
                }
            }
            0x95 => {
                r.u64()?;
            }
            b'.' => {
                let v = pop!();
                return match v.freeze(0) {
                    Some(x) => Ok(x),
                    None => {
                        // a cyclic or absurdly deep graph: leak it rather than risk a deep drop
                        std::mem::forget((v, stack, memo));
                        r.err(
                            at,
                            format!("a container contains itself or nests deeper than {MAX_DEPTH}"),
                        )
                    }
                };
            }
            b'(' => stack.push(V::Mark),
            b']' => stack.push(V::List(Rc::new(RefCell::new(Vec::new())))),
            b'}' => stack.push(V::Dict(Rc::new(RefCell::new(Vec::new())))),
            b')' => stack.push(V::Tuple(Rc::new(Vec::new()))),
            b'l' => {
                let items = pop_mark!();
                stack.push(V::List(Rc::new(RefCell::new(items))));
            }
            b'd' => {
                let items = pop_mark!();
                if items.len() % 2 != 0 {
                    return r.err(at, "DICT with an odd number of items");
                }
                let kv = items
                    .chunks(2)
                    .map(|c| (c[0].clone(), c[1].clone()))
                    .collect();
                stack.push(V::Dict(Rc::new(RefCell::new(kv))));
            }
            b't' => {
                let items = pop_mark!();
                stack.push(V::Tuple(Rc::new(items)));
            }
            0x85..=0x87 => {
                let n = (op - 0x84) as usize;
                if stack.len() < n {
                    return r.err(at, "stack underflow");
                }
                let at_split = stack.len() - n;
                let items = stack.split_off(at_split);
                if items.iter().any(|v| matches!(v, V::Mark)) {
                    return r.err(at, "MARK inside a tuple");
                }
                stack.push(V::Tuple(Rc::new(items)));
            }
            b'a' => {
                let v = pop!();
                match stack.last() {
                    Some(V::List(l)) => l.borrow_mut().push(v),
                    _ => return r.err(at, "APPEND to something that is not a list"),
                }
            }
            b'e' => {
                let items = pop_mark!();
                match stack.last() {
                    Some(V::List(l)) => l.borrow_mut().extend(items),
                    _ => return r.err(at, "APPENDS to something that is not a list"),
                }
            }
            b's' => {
                let v = pop!();
                let k = pop!();
                match stack.last() {
                    Some(V::Dict(d)) => d.borrow_mut().push((k, v)),
                    _ => return r.err(at, "SETITEM on something that is not a dict"),
                }
            }
            b'u' => {
                let items = pop_mark!();
                if items.len() % 2 != 0 {
                    return r.err(at, "SETITEMS with an odd number of items");
                }
                match stack.last() {
                    Some(V::Dict(d)) => d
                        .borrow_mut()
                        .extend(items.chunks(2).map(|c| (c[0].clone(), c[1].clone()))),
                    _ => return r.err(at, "SETITEMS on something that is not a dict"),
                }
            }
            b'N' => stack.push(V::Plain(Value::None)),
            0x88 => stack.push(V::Plain(Value::Bool(true))),
            0x89 => stack.push(V::Plain(Value::Bool(false))),
            b'J' => {
                let v = r.u32()? as i32;
                stack.push(V::Plain(Value::Int(v as i64)));
            }
            b'K' => {
                let v = r.u8()?;
                stack.push(V::Plain(Value::Int(v as i64)));
            }
            b'M' => {
                let s = r.take(2)?;
                stack.push(V::Plain(
                    Value::Int(u16::from_le_bytes([s[0], s[1]]) as i64),
                ));
            }
            0x8a => {
                let n = r.u8()? as usize;
                let b = r.take(n)?;
                stack.push(V::Plain(Value::Int(long_le(&r, at, b)?)));
            }
            0x8b => {
                let n = r.u32()? as usize;
                let b = r.take(n)?;
                stack.push(V::Plain(Value::Int(long_le(&r, at, b)?)));
            }
            b'I' | b'L' => {
                let l = r.line()?;
                let t = String::from_utf8_lossy(l);
                let t = t.trim_end_matches('L');
                let v = match t {
                    "01" if op == b'I' => Value::Bool(true),
                    "00" if op == b'I' => Value::Bool(false),
                    _ => Value::Int(
                        t.parse()
                            .or_else(|_| r.err(at, format!("bad integer {t:?}")))?,
                    ),
                };
                stack.push(V::Plain(v));
            }
            b'F' => {
                let l = r.line()?;
                let t = String::from_utf8_lossy(l);
                let v: f64 = t
                    .trim()
                    .parse()
                    .or_else(|_| r.err(at, format!("bad float {t:?}")))?;
                stack.push(V::Plain(Value::Float(v)));
            }
            b'G' => {
                let s = r.take(8)?;
                let mut a = [0u8; 8];
                a.copy_from_slice(s);
                stack.push(V::Plain(Value::Float(f64::from_be_bytes(a))));
            }
            b'X' => {
                let n = r.u32()? as usize;
                let b = r.take(n)?;
                stack.push(V::Plain(Value::Str(utf8(&r, at, b)?)));
            }
            0x8c => {
                let n = r.u8()? as usize;
                let b = r.take(n)?;
                stack.push(V::Plain(Value::Str(utf8(&r, at, b)?)));
            }
            0x8d => {
                let n = r.u64()? as usize;
                let b = r.take(n)?;
                stack.push(V::Plain(Value::Str(utf8(&r, at, b)?)));
            }
            b'T' => {
                let n = r.u32()? as usize;
                let b = r.take(n)?;
                stack.push(V::Plain(Value::Str(py2_str(b))));
            }
            b'U' => {
                let n = r.u8()? as usize;
                let b = r.take(n)?;
                stack.push(V::Plain(Value::Str(py2_str(b))));
            }
            b'B' => {
                let n = r.u32()? as usize;
                let b = r.take(n)?.to_vec();
                stack.push(V::Plain(Value::Bytes(b)));
            }
            b'C' => {
                let n = r.u8()? as usize;
                let b = r.take(n)?.to_vec();
                stack.push(V::Plain(Value::Bytes(b)));
            }
            b'V' => {
                let l = r.line()?;
                stack.push(V::Plain(Value::Str(utf8(&r, at, l)?)));
            }
            b'S' => {
                let l = r.line()?;
                let t = String::from_utf8_lossy(l).to_string();
                let t = t.trim();
                let q = t.len() >= 2
                    && (t.starts_with('\'') && t.ends_with('\'')
                        || t.starts_with('"') && t.ends_with('"'));
                if !q {
                    return r.err(at, "STRING without quotes");
                }
                stack.push(V::Plain(Value::Str(t[1..t.len() - 1].to_string())));
            }
            b'q' | b'r' | b'p' | 0x94 => {
                let key = match op {
                    b'q' => r.u8()? as u64,
                    b'r' => r.u32()? as u64,
                    b'p' => {
                        let l = r.line()?;
                        String::from_utf8_lossy(l)
                            .trim()
                            .parse()
                            .or_else(|_| r.err(at, "bad PUT index"))?
                    }
                    _ => memo.len() as u64,
                };
                let Some(top) = stack.last() else {
                    return r.err(at, "memo store with an empty stack");
                };
                memo.insert(key, top.clone());
            }
            b'h' | b'j' | b'g' => {
                let key = match op {
                    b'h' => r.u8()? as u64,
                    b'j' => r.u32()? as u64,
                    _ => {
                        let l = r.line()?;
                        String::from_utf8_lossy(l)
                            .trim()
                            .parse()
                            .or_else(|_| r.err(at, "bad GET index"))?
                    }
                };
                let Some(v) = memo.get(&key) else {
                    return r.err(at, format!("memo key {key} not defined"));
                };
                stack.push(v.clone());
            }
            b'c' | 0x93 | b'R' | 0x81 | 0x92 | b'b' | b'o' | b'i' | b'P' | b'Q' => {
                return r.err(
                    at,
                    format!("opcode 0x{op:02x} builds Python objects: not plain data"),
                );
            }
            _ => return r.err(at, format!("unknown opcode 0x{op:02x}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocol2_list_of_dicts() {
        // pickle.dumps([{'a': 1, 'b': [u'x', None, 2.5]}, (True, -3, 70000)], protocol=2)
        let b: &[u8] = b"\x80\x02]q\x00(}q\x01(X\x01\x00\x00\x00aq\x02K\x01X\x01\x00\x00\x00bq\x03]q\x04(X\x01\x00\x00\x00xq\x05NG@\x04\x00\x00\x00\x00\x00\x00eu\x88J\xfd\xff\xff\xffJp\x11\x01\x00\x87q\x06e.";
        let v = from_slice(b).unwrap();
        let l = v.as_list().unwrap();
        assert_eq!(l[0].get("a"), Some(&Value::Int(1)));
        assert_eq!(
            l[0].get("b"),
            Some(&Value::List(vec![
                Value::Str("x".into()),
                Value::None,
                Value::Float(2.5)
            ]))
        );
        assert_eq!(
            l[1],
            Value::Tuple(vec![Value::Bool(true), Value::Int(-3), Value::Int(70000)])
        );
    }

    /// Every single-byte corruption and every truncation of a real refs-style pickle decodes or
    /// fails cleanly (no panic, no runaway allocation).
    #[test]
    fn corrupted_pickles_never_panic() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../tests/fixtures/data/refs(unc).p"
        );
        let good = std::fs::read(path).unwrap();
        assert!(from_slice(&good).is_ok());
        for n in 0..good.len() {
            let _ = from_slice(&good[..n]);
        }
        for i in 0..good.len() {
            for x in [0x00u8, 0xff, 0x80, b'(', b'.', b'q', b'h', 0x8d, b'X'] {
                let mut b = good.clone();
                b[i] = x;
                let _ = from_slice(&b);
            }
        }
    }

    #[test]
    fn deep_and_cyclic_pickles_are_errors() {
        let mut deep = b"\x80\x02".to_vec();
        deep.extend(std::iter::repeat_n(b']', 200_000));
        deep.extend(std::iter::repeat_n(b'a', 199_999));
        deep.push(b'.');
        assert!(from_slice(&deep).unwrap_err().msg.contains("deeper"));
        deep.pop(); // no STOP: truncated, the deep graph is still dropped safely
        assert!(from_slice(&deep).unwrap_err().msg.contains("truncated"));
        // l = []; l.append(l)
        let cyc = b"\x80\x02]q\x00h\x00a.";
        assert!(from_slice(cyc).unwrap_err().msg.contains("itself"));
    }

    #[test]
    fn errors_name_the_offset() {
        let e = from_slice(b"\x80\x02]q\x00(K\x01").unwrap_err();
        assert!(e.msg.contains("truncated"), "{e}");
        let e = from_slice(b"\x80\x02cos\nsystem\n").unwrap_err();
        assert_eq!(e.offset, 2);
    }
}
