//! Each setting's default and choice list is declared once, in its `settings!` /
//! `choice_enum!` block: this test fails if Rust code elsewhere in the crates declares a
//! setting's default again (a `Default` impl or `fn default` body naming it) or writes one of
//! its choice words as a string (the Python package has its twin in
//! tests/test_declared_once.py).

use std::path::{Path, PathBuf};

use grufinity::generate::SamplingConfig;
use grufinity::inference::LoadConfig;
use grufinity::schema::{Key, Kind, Schema};
use grufinity::train::TrainConfig;

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let p = entry.path();
        if p.is_dir() {
            sources(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

/// `text` without comments and without the bodies of the declaring macros.
fn code_outside_declarations(text: &str) -> String {
    let no_comments: String = text.lines().map(|l| l.split("//").next().unwrap_or("")).collect::<Vec<_>>().join("\n");
    let mut out = String::new();
    let mut rest = no_comments.as_str();
    while let Some(at) = ["settings! {", "choice_enum! {"].iter().filter_map(|m| rest.find(m)).min() {
        out.push_str(&rest[..at]);
        let body = &rest[at..];
        let mut depth = 0usize;
        let mut end = body.len();
        for (i, c) in body.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        end = i + 1;
                        break;
                    }
                }
                _ => {}
            }
        }
        rest = &body[end..];
    }
    out.push_str(rest);
    out
}

fn all_keys() -> Vec<Key> {
    let mut keys = TrainConfig::keys();
    keys.extend(SamplingConfig::keys());
    keys.extend(LoadConfig::keys());
    keys
}

/// The bodies of the `fn default` functions of `code`.
fn default_bodies(code: &str) -> String {
    let mut out = String::new();
    for (at, _) in code.match_indices("fn default(") {
        let body = &code[at..];
        let Some(open) = body.find('{') else { continue };
        let mut depth = 0usize;
        for (i, c) in body[open..].char_indices() {
            match c {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        out.push_str(&body[open..open + i + 1]);
                        out.push('\n');
                        break;
                    }
                }
                _ => {}
            }
        }
    }
    out
}

#[test]
fn defaults_and_choices_are_declared_once() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut files = Vec::new();
    sources(&root.join("grufinity/src"), &mut files);
    sources(&root.join("grufinity-py/src"), &mut files);
    assert!(files.len() > 30, "found the sources: {files:?}");
    let mut found = Vec::new();
    for file in &files {
        let code = code_outside_declarations(&std::fs::read_to_string(file).unwrap());
        let defaults = default_bodies(&code);
        for key in all_keys() {
            // `name: <value>` inside a `fn default` body: a default declared again.
            if let Some(default) = key.default.as_f64() {
                let pattern = format!("{}:", key.name);
                for (at, _) in defaults.match_indices(&pattern) {
                    let code = &defaults;
                    let before = code[..at].chars().last().unwrap_or(' ');
                    if before.is_alphanumeric() || before == '_' || before == '.' {
                        continue;
                    }
                    let value: String = code[at + pattern.len()..]
                        .trim_start()
                        .chars()
                        .take_while(|c| c.is_ascii_digit() || matches!(c, '.' | 'e' | '-' | '_'))
                        .collect();
                    if value.replace('_', "").parse::<f64>().is_ok_and(|v| v == default) {
                        found.push(format!("{}: `{}: {value}`", file.display(), key.name));
                    }
                }
            }
            if key.kind == Kind::Choice {
                // A word that is also a key's name ("stop") names that key where it appears.
                for word in key.choices.iter().filter(|w| !all_keys().iter().any(|k| k.name == **w)) {
                    if code.contains(&format!("\"{word}\"")) {
                        found.push(format!("{}: choice \"{word}\" of `{}`", file.display(), key.name));
                    }
                }
            }
        }
    }
    assert!(found.is_empty(), "declared outside the schema:\n{}", found.join("\n"));
}

#[test]
fn the_check_sees_a_second_declaration() {
    let code = code_outside_declarations(
        "crate::settings! { x: usize = 3; Bounds::ANY, }\nimpl Default for C { fn default() -> Self { C { chunk_len: 128 } } }",
    );
    assert!(!code.contains("x: usize"));
    assert!(default_bodies(&code).contains("chunk_len: 128"));
}
