//! JSON-aware mutations: of a JSON document, or of the JSON header of a safetensors file (its
//! length prefix is rewritten to match, or sometimes not).

use serde_json::{Map, Number, Value};

use super::mutate::Rng;

/// A mutation of `data` if it is JSON or safetensors, else None.
pub fn mutate(data: &[u8], rng: &mut Rng) -> Option<Vec<u8>> {
    if let Some((header, tensors)) = split_safetensors(data) {
        let mut header = mutate_text(&header, rng)?;
        let padding = if rng.chance(2) { (8 - header.len() % 8) % 8 } else { 0 };
        header.extend(std::iter::repeat(b' ').take(padding));
        let length = if rng.chance(8) { rng.next() % (2 * header.len() as u64 + 16) } else { header.len() as u64 };
        let mut out = length.to_le_bytes().to_vec();
        out.extend_from_slice(&header);
        out.extend_from_slice(tensors);
        return Some(out);
    }
    mutate_text(data, rng)
}

/// The JSON header and the data of a safetensors file.
fn split_safetensors(data: &[u8]) -> Option<(Vec<u8>, &[u8])> {
    let n = u64::from_le_bytes(data.get(..8)?.try_into().ok()?) as usize;
    let header = data.get(8..8usize.checked_add(n)?)?;
    header.first().filter(|&&b| b == b'{')?;
    Some((header.to_vec(), &data[8 + n..]))
}

fn mutate_text(text: &[u8], rng: &mut Rng) -> Option<Vec<u8>> {
    if rng.chance(4) {
        return replace_number_literal(text, rng);
    }
    let mut value: Value = serde_json::from_slice(text).ok()?;
    let mut paths = Vec::new();
    collect(&value, String::new(), &mut paths);
    let path = rng.pick(paths.as_slice()).clone();
    let donor_path: &String = rng.pick(paths.as_slice());
    let donor = value.pointer(donor_path).cloned().unwrap_or(Value::Null);
    let node = value.pointer_mut(&path)?;
    *node = mutate_value(node.take(), donor, rng);
    if rng.chance(2) {
        serde_json::to_vec(&value).ok()
    } else {
        serde_json::to_vec_pretty(&value).ok()
    }
}

/// JSON pointers of every node below `value` (itself included).
fn collect(value: &Value, at: String, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                collect(v, format!("{at}/{}", k.replace('~', "~0").replace('/', "~1")), out);
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                collect(v, format!("{at}/{i}"), out);
            }
        }
        _ => {}
    }
    out.push(at);
}

const NUMBERS: &[f64] = &[
    0.0, -1.0, 1.0, 2.0, 7.0, 255.0, 256.0, 257.0, 65535.0, 65536.0, 2147483647.0, 2147483648.0, 4294967295.0,
    4294967296.0, 9007199254740992.0, 4.611686018427388e18, 9.223372036854776e18, 1.8446744073709552e19,
    -9.223372036854776e18, 1e308, -1e308, 0.5, 1.5, -0.0, 1e-300,
];

const STRINGS: &[&str] = &["", "byte", "char", "bpe", "BPE", "WordPiece", "ByteLevel", "F32", "U32", "I64", "F16", "u8",
    "u16", "u32", "\u{0}", "\u{fffd}", "<|endoftext|>", "../../../etc/passwd", "/", "NaN", "-1", "1e999", "Ġ"];

fn number(x: f64) -> Value {
    if x.fract() == 0.0 && (0.0..1.8e19).contains(&x) {
        Value::Number(Number::from(x as u64))
    } else if x.fract() == 0.0 && (-9.3e18..0.0).contains(&x) {
        Value::Number(Number::from(x as i64))
    } else {
        Number::from_f64(x).map_or(Value::Null, Value::Number)
    }
}

fn mutate_value(node: Value, donor: Value, rng: &mut Rng) -> Value {
    if rng.chance(8) {
        // Another type altogether, or another node's value.
        return match rng.below(6) {
            0 => Value::Null,
            1 => Value::Bool(rng.chance(2)),
            2 => number(*rng.pick(NUMBERS)),
            3 => Value::String(rng.pick(STRINGS).to_string()),
            4 => Value::Array(vec![]),
            _ => donor,
        };
    }
    match node {
        Value::Number(n) => {
            let x = n.as_f64().unwrap_or(0.0);
            number(match rng.below(4) {
                0 => x + 1.0,
                1 => x - 1.0,
                2 => x * (1 << rng.below(40)) as f64,
                _ => *rng.pick(NUMBERS),
            })
        }
        Value::String(s) => Value::String(match rng.below(5) {
            0 => rng.pick(STRINGS).to_string(),
            1 => s.repeat(2 + rng.below(64)),
            2 => s.chars().rev().collect(),
            3 => {
                let mut s = s;
                s.truncate(s.char_indices().map(|(i, _)| i).nth(rng.below(s.chars().count() + 1)).unwrap_or(s.len()));
                s
            }
            _ => format!("{s}{}", rng.pick(STRINGS)),
        }),
        Value::Bool(b) => Value::Bool(!b),
        Value::Array(mut items) => {
            let n = items.len();
            match rng.below(4) {
                0 if n > 0 => {
                    items.remove(rng.below(n));
                }
                1 if n > 0 => {
                    let copy = items[rng.below(n)].clone();
                    items.insert(rng.below(n + 1), copy);
                }
                2 => items.truncate(rng.below(n + 1)),
                _ => items.push(donor),
            }
            Value::Array(items)
        }
        Value::Object(map) => Value::Object(mutate_object(map, donor, rng)),
        Value::Null => number(*rng.pick(NUMBERS)),
    }
}

fn mutate_object(mut map: Map<String, Value>, donor: Value, rng: &mut Rng) -> Map<String, Value> {
    let keys: Vec<String> = map.keys().cloned().collect();
    match rng.below(4) {
        0 if !keys.is_empty() => {
            map.remove(rng.pick(keys.as_slice()));
        }
        1 if !keys.is_empty() => {
            let key = rng.pick(keys.as_slice()).clone();
            if let Some(v) = map.remove(&key) {
                map.insert(format!("{key}{}", rng.pick(STRINGS)), v);
            }
        }
        2 => {
            map.insert(rng.pick(STRINGS).to_string(), donor);
        }
        _ => {
            if let Some(key) = keys.get(rng.below(keys.len())) {
                map.insert(key.clone(), donor);
            }
        }
    }
    map
}

/// Replaces one number in the text by a literal that a parsed value cannot hold (too large,
/// negative zero, a float where an integer goes...).
fn replace_number_literal(text: &[u8], rng: &mut Rng) -> Option<Vec<u8>> {
    let starts: Vec<usize> = (0..text.len())
        .filter(|&i| (text[i].is_ascii_digit() || text[i] == b'-') && (i == 0 || !is_number_byte(text[i - 1])))
        .collect();
    if starts.is_empty() {
        return None;
    }
    let start = *rng.pick(starts.as_slice());
    let end = (start + 1..=text.len()).find(|&i| i == text.len() || !is_number_byte(text[i]))?;
    let literal = rng.pick(&["1e999", "-1e999", "18446744073709551616", "-0", "1.0", "0.5", "-1", "4294967296", "340282366920938463463374607431768211456"]);
    let mut out = text[..start].to_vec();
    out.extend_from_slice(literal.as_bytes());
    out.extend_from_slice(&text[end..]);
    Some(out)
}

fn is_number_byte(b: u8) -> bool {
    b.is_ascii_digit() || matches!(b, b'-' | b'+' | b'.' | b'e' | b'E')
}
