//! The one declaration of every setting: its type, default, range or choices and help.
//!
//! [`settings!`](crate::settings) declares a config struct field by field; from that one place
//! it derives the struct, its `Default`, range checks ([`Schema::check`]) and the list of
//! [`Key`]s that the Python package turns into dataclass fields, click options with their help
//! and `[default: …]`, and TOML validation. Values from outside Rust (Python objects, TOML, CLI
//! flags) arrive as [`Raw`] maps and are checked against the keys before they become a config,
//! so every message names the key and the value.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Serialize;
use serde_json::Value;

use crate::error::{Error, Result};

/// A value as it arrives from outside Rust, before it is checked against its key.
#[derive(Clone, Debug, PartialEq)]
pub enum Raw {
    None,
    Bool(bool),
    Int(i128),
    Float(f64),
    Str(String),
    List(Vec<Raw>),
    /// Anything else, by its type name (reported, never accepted).
    Other(String),
}

impl std::fmt::Display for Raw {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Raw::None => write!(f, "None"),
            Raw::Bool(b) => write!(f, "{}", if *b { "True" } else { "False" }),
            Raw::Int(i) => write!(f, "{i}"),
            Raw::Float(x) => write!(f, "{x}"),
            Raw::Str(s) => write!(f, "{s:?}"),
            Raw::List(items) => {
                write!(f, "[")?;
                for (i, item) in items.iter().enumerate() {
                    write!(f, "{}{item}", if i > 0 { ", " } else { "" })?;
                }
                write!(f, "]")
            }
            Raw::Other(t) => write!(f, "a {t}"),
        }
    }
}

/// The kind of value a key takes.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A non-negative integer (counts, sizes, seeds).
    Int,
    /// A finite number.
    Float,
    Bool,
    Str,
    Path,
    /// A list of paths (a single path is taken as a list of one).
    Paths,
    /// A list of strings (a single string is taken as a list of one).
    Strs,
    /// One word of a fixed set.
    Choice,
}

/// A type that can be a setting.
pub trait Setting {
    fn kind() -> Kind;
    /// `None` is a valid value.
    fn optional() -> bool {
        false
    }
    /// The words of a [`Kind::Choice`].
    fn choices() -> &'static [&'static str] {
        &[]
    }
    /// The number checked against a key's bounds (`None`: nothing to check).
    fn number(&self) -> Option<f64> {
        None
    }
}

macro_rules! setting_number {
    ($($t:ty => $kind:ident),*) => {$(
        impl Setting for $t {
            fn kind() -> Kind { Kind::$kind }
            fn number(&self) -> Option<f64> { Some(*self as f64) }
        }
    )*};
}
setting_number!(usize => Int, u64 => Int, u32 => Int, f64 => Float);

impl Setting for bool {
    fn kind() -> Kind {
        Kind::Bool
    }
}

impl Setting for String {
    fn kind() -> Kind {
        Kind::Str
    }
}

impl Setting for PathBuf {
    fn kind() -> Kind {
        Kind::Path
    }
}

impl Setting for Vec<PathBuf> {
    fn kind() -> Kind {
        Kind::Paths
    }
}

impl Setting for Vec<String> {
    fn kind() -> Kind {
        Kind::Strs
    }
}

impl<T: Setting> Setting for Option<T> {
    fn kind() -> Kind {
        T::kind()
    }
    fn optional() -> bool {
        true
    }
    fn choices() -> &'static [&'static str] {
        T::choices()
    }
    fn number(&self) -> Option<f64> {
        self.as_ref().and_then(Setting::number)
    }
}

/// The range a number must be in: each end `(value, inclusive)`. Settings that are not numbers
/// take [`Bounds::ANY`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Bounds {
    pub min: Option<(f64, bool)>,
    pub max: Option<(f64, bool)>,
    /// Set by the program, not by users (e.g. the model's vocabulary size, which the tokenizer
    /// decides): left out of the keys users see.
    pub derived: bool,
}

impl Bounds {
    pub const ANY: Bounds = Bounds { min: None, max: None, derived: false };
    /// Derived from other settings (see [`Bounds::derived`]).
    pub const DERIVED: Bounds = Bounds { min: None, max: None, derived: true };

    /// `>= x`.
    pub const fn at_least(x: f64) -> Self {
        Bounds { min: Some((x, true)), max: None, derived: false }
    }
    /// `> x`.
    pub const fn above(x: f64) -> Self {
        Bounds { min: Some((x, false)), max: None, derived: false }
    }
    /// `[lo, hi]`, `(lo, hi)`, `[lo, hi)` or `(lo, hi]` by the two flags.
    pub const fn range(lo: f64, lo_inclusive: bool, hi: f64, hi_inclusive: bool) -> Self {
        Bounds { min: Some((lo, lo_inclusive)), max: Some((hi, hi_inclusive)), derived: false }
    }

    fn contains(&self, x: f64) -> bool {
        let low = self.min.map_or(true, |(m, inc)| if inc { x >= m } else { x > m });
        let high = self.max.map_or(true, |(m, inc)| if inc { x <= m } else { x < m });
        x.is_finite() && low && high
    }

    /// "must be at least 1", "must be in (0, 1)", ...
    fn describe(&self, kind: &Kind) -> String {
        let what = if *kind == Kind::Int { "an integer" } else { "a number" };
        let n = |x: f64| if x.fract() == 0.0 && x.abs() < 1e15 { format!("{}", x as i64) } else { format!("{x}") };
        match (self.min, self.max) {
            (Some((lo, true)), None) => format!("must be {what} >= {}", n(lo)),
            (Some((lo, false)), None) => format!("must be {what} > {}", n(lo)),
            (None, Some((hi, inc))) => format!("must be {what} {} {}", if inc { "<=" } else { "<" }, n(hi)),
            (Some((lo, li)), Some((hi, hi_inc))) => format!(
                "must be {what} in {}{}, {}{}",
                if li { "[" } else { "(" },
                n(lo),
                n(hi),
                if hi_inc { "]" } else { ")" }
            ),
            (None, None) => format!("must be a finite {}", if *kind == Kind::Int { "integer" } else { "number" }),
        }
    }
}

/// One setting as users see it.
#[derive(Clone, Debug, Serialize)]
pub struct Key {
    pub name: &'static str,
    /// The nested object it lives in (`model`), or `None` at the top level.
    pub section: Option<&'static str>,
    pub kind: Kind,
    pub optional: bool,
    pub default: Value,
    pub choices: Vec<&'static str>,
    /// Lower bound and whether it is inclusive.
    pub min: Option<(f64, bool)>,
    pub max: Option<(f64, bool)>,
    /// One line of help.
    pub help: String,
    #[serde(skip)]
    pub derived: bool,
}

impl Key {
    /// The key of field `name` with type `T`, default `default`, `bounds` and doc lines.
    pub fn new<T: Setting + Serialize>(name: &'static str, default: &T, bounds: Bounds, doc: &[&str]) -> Self {
        let help = doc.iter().map(|l| l.trim()).filter(|l| !l.is_empty()).collect::<Vec<_>>().join(" ");
        Key {
            name,
            section: None,
            kind: T::kind(),
            optional: T::optional(),
            default: serde_json::to_value(default).unwrap_or(Value::Null),
            choices: T::choices().to_vec(),
            min: bounds.min,
            max: bounds.max,
            help,
            derived: bounds.derived,
        }
    }

    fn bounds(&self) -> Bounds {
        Bounds { min: self.min, max: self.max, derived: self.derived }
    }

    fn error(&self, message: impl std::fmt::Display) -> Error {
        Error::config(self.name, message.to_string())
    }

    /// Checks a typed value's number against the bounds.
    pub fn check_number(&self, number: Option<f64>) -> Result<()> {
        match number {
            Some(x) if !self.bounds().contains(x) => {
                Err(self.error(format!("{}, got {}", self.bounds().describe(&self.kind), x)))
            }
            _ => Ok(()),
        }
    }

    /// `raw` as the JSON value of this key, or an error naming the key, the value and what
    /// was expected.
    pub fn convert(&self, raw: &Raw) -> Result<Value> {
        if *raw == Raw::None {
            return if self.optional { Ok(Value::Null) } else { Err(self.error("must be given (None is not allowed)")) };
        }
        let wrong = |expected: &str| self.error(format!("must be {expected}, got {raw}"));
        let value = match (&self.kind, raw) {
            (Kind::Int, Raw::Int(i)) => {
                let v = u64::try_from(*i).map_err(|_| self.error(format!("{}, got {i}", self.int_range())))?;
                Value::from(v)
            }
            (Kind::Int, Raw::Float(x)) if x.fract() == 0.0 && x.is_finite() && *x >= 0.0 && *x < 2f64.powi(53) => {
                Value::from(*x as u64)
            }
            (Kind::Int, _) => return Err(wrong("an integer")),
            (Kind::Float, Raw::Int(i)) => Value::from(*i as f64),
            (Kind::Float, Raw::Float(x)) if x.is_finite() => Value::from(*x),
            (Kind::Float, Raw::Float(_)) => return Err(wrong("a finite number")),
            (Kind::Float, _) => return Err(wrong("a number")),
            (Kind::Bool, Raw::Bool(b)) => Value::from(*b),
            (Kind::Bool, _) => return Err(wrong("true or false")),
            (Kind::Str, Raw::Str(s)) => Value::from(s.clone()),
            (Kind::Path, Raw::Str(s)) => Value::from(expand_home(s)),
            (Kind::Str, _) => return Err(wrong("a string")),
            (Kind::Path, _) => return Err(wrong("a path (a string)")),
            (Kind::Paths, Raw::Str(s)) => Value::from(vec![expand_home(s)]),
            (Kind::Strs, Raw::Str(s)) => Value::from(vec![s.clone()]),
            (Kind::Paths | Kind::Strs, Raw::List(items)) => {
                let what = if self.kind == Kind::Paths { "paths" } else { "strings" };
                let mut out = Vec::with_capacity(items.len());
                for item in items {
                    match item {
                        Raw::Str(s) if self.kind == Kind::Paths => out.push(Value::from(expand_home(s))),
                        Raw::Str(s) => out.push(Value::from(s.clone())),
                        other => return Err(self.error(format!("must be a list of {what}, but it holds {other}"))),
                    }
                }
                Value::from(out)
            }
            (Kind::Paths, _) => return Err(wrong("a path or a list of paths")),
            (Kind::Strs, _) => return Err(wrong("a string or a list of strings")),
            (Kind::Choice, Raw::Str(s)) if self.choices.contains(&s.as_str()) => Value::from(s.clone()),
            (Kind::Choice, _) => return Err(wrong(&format!("one of {}", self.choices.join(", ")))),
        };
        if let Some(x) = value.as_f64() {
            if !self.bounds().contains(x) {
                return Err(self.error(format!("{}, got {raw}", self.bounds().describe(&self.kind))));
            }
        }
        Ok(value)
    }

    fn int_range(&self) -> String {
        let b = self.bounds();
        if b.min.is_some() { b.describe(&Kind::Int) } else { "must be an integer >= 0".into() }
    }
}

/// A struct declared with [`settings!`](crate::settings).
pub trait Schema: Sized + Serialize + serde::de::DeserializeOwned + Default {
    /// Every key, in declaration order (sections' keys included, with their section set).
    fn keys() -> Vec<Key>;

    /// Checks every number against its bounds, naming the first key out of range.
    fn check(&self) -> Result<()>;

    /// The keys users set (without derived ones).
    fn user_keys() -> Vec<Key> {
        Self::keys().into_iter().filter(|k| !k.derived).collect()
    }

    /// A config from defaults and `values` (user keys, sections flattened), each checked
    /// against its key; an unknown key is an error that names it and suggests the closest one.
    fn from_raw(values: &BTreeMap<String, Raw>) -> Result<Self> {
        let keys = Self::user_keys();
        let mut json = serde_json::to_value(Self::default()).map_err(|e| Error::Data(e.to_string()))?;
        for (name, raw) in values {
            let key = keys.iter().find(|k| k.name == name).ok_or_else(|| unknown_key(name, &keys))?;
            let value = key.convert(raw)?;
            let target = match key.section {
                Some(s) => json.get_mut(s).ok_or_else(|| Error::Data(format!("config section `{s}` missing")))?,
                None => &mut json,
            };
            if let Some(object) = target.as_object_mut() {
                object.insert(name.clone(), value);
            }
        }
        let config: Self =
            serde_json::from_value(json).map_err(|e| Error::config("config", format!("cannot be built: {e}")))?;
        config.check()?;
        Ok(config)
    }

    /// The keys whose values differ from the defaults, by name (sections flattened).
    fn changed_keys(&self) -> Vec<&'static str> {
        let (mine, default) = (flat(self), flat(&Self::default()));
        Self::keys().into_iter().filter(|k| mine.get(k.name) != default.get(k.name)).map(|k| k.name).collect()
    }
}

/// `~/x` as `$HOME/x` (a path from a TOML file or a quoted flag, which no shell expanded).
pub fn expand_home(path: &str) -> String {
    match (path.strip_prefix("~/").or(if path == "~" { Some("") } else { None }), std::env::var("HOME")) {
        (Some(rest), Ok(home)) if !home.is_empty() => format!("{}/{rest}", home.trim_end_matches('/')),
        _ => path.to_string(),
    }
}

/// The values of `config` by key name, sections flattened.
pub fn flat<T: Serialize>(config: &T) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    if let Ok(Value::Object(top)) = serde_json::to_value(config) {
        for (k, v) in top {
            match v {
                Value::Object(inner) => out.extend(inner),
                v => {
                    out.insert(k, v);
                }
            }
        }
    }
    out
}

fn unknown_key(name: &str, keys: &[Key]) -> Error {
    let closest = keys
        .iter()
        .map(|k| (edit_distance(name, k.name), k.name))
        .filter(|(d, k)| *d <= 2.max(k.len() / 3))
        .min();
    let hint = match closest {
        Some((_, k)) => format!("; did you mean `{k}`?"),
        None => String::new(),
    };
    Error::config(name, format!("is not a known setting{hint}"))
}

/// Levenshtein distance between two short strings.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = if ca == *cb { prev } else { 1 + prev.min(cur).min(row[j]) };
            prev = cur;
        }
    }
    row[b.len()]
}

mod macros;
#[cfg(test)]
mod tests;
