//! Tests of the schema machinery on small example structs.

use super::*;

crate::choice_enum! {
    /// A test choice.
    pub enum Colour { Red = "red", Green = "green" }
}

crate::settings! {
    /// Inner test settings.
    pub struct Inner {
        /// Width.
        width: usize = 8; Bounds::at_least(1.0),
        /// Derived.
        vocab: usize = 256; Bounds::DERIVED,
    }
}

crate::settings! {
    /// Outer test settings.
    pub struct Outer {
        [section] inner: Inner;
        /// Rate
        /// over two lines.
        rate: f64 = 0.5; Bounds::range(0.0, false, 1.0, true),
        colour: Colour = Colour::Red; Bounds::ANY,
        limit: Option<u64> = None; Bounds::at_least(1.0),
        files: Vec<PathBuf> = vec![]; Bounds::ANY,
    }
}

fn raw(pairs: &[(&str, Raw)]) -> BTreeMap<String, Raw> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.clone())).collect()
}

#[test]
fn keys_carry_defaults_sections_and_help() {
    let keys = Outer::user_keys();
    let names: Vec<_> = keys.iter().map(|k| k.name).collect();
    assert_eq!(names, ["width", "rate", "colour", "limit", "files"]);
    assert_eq!(keys[0].section, Some("inner"));
    assert_eq!(keys[1].help, "Rate over two lines.");
    assert_eq!(keys[2].choices, ["red", "green"]);
    assert_eq!(Colour::parse_word("green", "colour").unwrap(), Colour::Green);
    assert!(Colour::parse_word("blue", "colour").unwrap_err().to_string().contains("one of red, green"));
    assert_eq!(keys[3].default, Value::Null);
    assert!(keys[3].optional);
}

#[test]
fn raw_values_are_checked_and_named() {
    let c = Outer::from_raw(&raw(&[("width", Raw::Int(3)), ("rate", Raw::Int(1)), ("files", Raw::Str("a".into()))]))
        .unwrap();
    assert_eq!((c.inner.width, c.rate, c.files.clone()), (3, 1.0, vec![PathBuf::from("a")]));
    let err = |pairs: &[(&str, Raw)]| Outer::from_raw(&raw(pairs)).unwrap_err().to_string();
    assert_eq!(err(&[("width", Raw::Int(0))]), "invalid config `width`: must be an integer >= 1, got 0");
    assert_eq!(err(&[("width", Raw::Str("64".into()))]), "invalid config `width`: must be an integer, got \"64\"");
    assert_eq!(err(&[("rate", Raw::Float(f64::NAN))]), "invalid config `rate`: must be a finite number, got NaN");
    assert_eq!(err(&[("rate", Raw::Float(0.0))]), "invalid config `rate`: must be a number in (0, 1], got 0");
    assert_eq!(err(&[("colour", Raw::Str("blue".into()))]), "invalid config `colour`: must be one of red, green, got \"blue\"");
    assert_eq!(err(&[("widht", Raw::Int(1))]), "invalid config `widht`: is not a known setting; did you mean `width`?");
    assert_eq!(err(&[("vocab", Raw::Int(1))]), "invalid config `vocab`: is not a known setting");
    assert_eq!(err(&[("width", Raw::Bool(true))]), "invalid config `width`: must be an integer, got True");
    assert_eq!(err(&[("files", Raw::List(vec![Raw::Int(1)]))]), "invalid config `files`: must be a list of paths, but it holds 1");
    assert!(Outer::from_raw(&raw(&[("limit", Raw::None)])).is_ok());
    assert!(err(&[("rate", Raw::None)]).contains("must be given"));
}

#[test]
fn typed_values_are_checked_too() {
    let mut c = Outer::default();
    c.rate = 2.0;
    assert!(c.check().unwrap_err().to_string().contains("`rate`"));
    c.rate = 1.0;
    c.limit = Some(0);
    assert!(c.check().unwrap_err().to_string().contains("`limit`"));
    c.limit = None;
    assert_eq!(c.changed_keys(), ["rate"]);
}
