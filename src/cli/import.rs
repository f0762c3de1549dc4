//! `credpool import`: aio-credentials-pool's JSON or credpool's own, all or nothing.

use std::collections::HashMap;
use std::io::{IsTerminal, Read};
use std::time::Instant;

use credpool::{Error, NewCredential, Pool, Store};
use serde::Deserialize;

use super::{Failure, Outcome};

/// Above this many entries, import reports its progress.
const LARGE: usize = 10_000;

/// One entry in either format; which fields are set tells the format.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    // aio-credentials-pool
    username: Option<String>,
    password: Option<String>,
    cookie: Option<String>,
    // credpool
    name: Option<String>,
    secret: Option<String>,
    extra: Option<String>,
    capacity: Option<u32>,
}

/// An import file read and checked, not yet written.
pub(crate) struct Input {
    label: String,
    credentials: Vec<NewCredential>,
    skip_existing: bool,
    started: Instant,
}

/// Reads and checks the whole file (`-` for stdin); nothing is written yet.
pub(crate) fn read_input(file: &str, skip_existing: bool) -> Result<Input, Failure> {
    let started = Instant::now();
    let label = if file == "-" { "stdin" } else { file };
    let text = read(file).map_err(|error| Failure(format!("{label}: cannot read: {error}")))?;
    let credentials = parse(&text, label, skip_existing)?;
    Ok(Input {
        label: label.to_string(),
        credentials,
        skip_existing,
        started,
    })
}

impl Input {
    /// Adds every credential in one transaction, or none.
    pub(crate) async fn write_to<S: Store>(self, pool: &Pool<S>) -> Outcome {
        let Input {
            label,
            credentials,
            skip_existing,
            started,
        } = self;
        let total = credentials.len();
        let chatty = total >= LARGE;
        if chatty {
            progress(&format!(
                "{label}: {total} entries read and checked in {:.1?}; writing them in one transaction…",
                started.elapsed()
            ));
        }
        let added = if skip_existing {
            pool.add_many_skip_existing(credentials).await
        } else {
            pool.add_many(credentials).await
        }
        .map_err(|error| match error {
            Error::DuplicateName { .. } => Failure(format!(
                "{label}: {error}; nothing was imported (use --skip-existing to keep the ones that exist)"
            )),
            other => Failure(format!("{label}: {other}; nothing was imported")),
        })?;
        if chatty {
            progress("");
        }
        let skipped = total - added;
        outln!(
            "imported {added} credentials from {label} into pool `{}` in {:.1?}{}",
            pool.name(),
            started.elapsed(),
            if skipped > 0 {
                format!(" ({skipped} skipped: name already there)")
            } else {
                String::new()
            }
        );
        Ok(())
    }
}

fn read(file: &str) -> std::io::Result<String> {
    if file == "-" {
        let mut text = String::new();
        std::io::stdin().read_to_string(&mut text)?;
        Ok(text)
    } else {
        std::fs::read_to_string(file)
    }
}

/// A progress line on stderr, rewritten in place on a terminal.
fn progress(line: &str) {
    if std::io::stderr().is_terminal() {
        eprint!("\r\x1b[2K{line}");
    } else if !line.is_empty() {
        eprintln!("{line}");
    }
}

/// Parses and checks every entry; any problem fails the whole file.
pub(crate) fn parse(
    text: &str,
    label: &str,
    skip_existing: bool,
) -> Result<Vec<NewCredential>, Failure> {
    let entries: Vec<Entry> =
        serde_json::from_str(text).map_err(|error| json_error(label, &error))?;
    let mut credentials = Vec::with_capacity(entries.len());
    let mut seen: HashMap<String, usize> = HashMap::with_capacity(entries.len());
    for (index, entry) in entries.into_iter().enumerate() {
        let credential = convert(entry).map_err(|reason| {
            Failure(format!(
                "{label}: entry {index}: {reason}; nothing was imported"
            ))
        })?;
        credential.validate().map_err(|error| {
            Failure(format!(
                "{label}: {}; nothing was imported",
                error.at_entry_message(index)
            ))
        })?;
        if let Some(first) = seen.get(credential.name()) {
            if skip_existing {
                continue;
            }
            return Err(Failure(format!(
                "{label}: entry {index} ({:?}) has the same name as entry {first}; nothing was imported",
                credential.name()
            )));
        }
        seen.insert(credential.name().to_string(), index);
        credentials.push(credential);
    }
    Ok(credentials)
}

fn convert(entry: Entry) -> Result<NewCredential, String> {
    match entry {
        Entry {
            username: Some(username),
            password,
            cookie,
            name: None,
            secret: None,
            extra: None,
            capacity: None,
        } => {
            let password = password.ok_or_else(|| format!("{username:?} has no \"password\""))?;
            Ok(NewCredential::new(username, password).maybe_extra(cookie))
        }
        Entry {
            name: Some(name),
            secret,
            extra,
            capacity,
            username: None,
            password: None,
            cookie: None,
        } => {
            let secret = secret.ok_or_else(|| format!("{name:?} has no \"secret\""))?;
            Ok(NewCredential::new(name, secret)
                .maybe_extra(extra)
                .capacity(capacity.unwrap_or(1)))
        }
        Entry {
            username: Some(_),
            name: Some(_),
            ..
        } => Err("mixes \"username\" (aio-credentials-pool) and \"name\" (credpool)".into()),
        Entry {
            username: None,
            name: None,
            ..
        } => Err("has neither \"username\" nor \"name\"".into()),
        _ => Err("mixes the fields of the two formats".into()),
    }
}

/// A JSON error with its place, without echoing a value (it may be a secret).
fn json_error(label: &str, error: &serde_json::Error) -> Failure {
    let message = error.to_string();
    let what = if message.contains("invalid type") || message.contains("invalid value") {
        "a field has a value of the wrong type (names and secrets are strings, capacity a number from 1)".to_string()
    } else {
        // Syntax errors, unknown or missing fields: no value in the message.
        message
            .split(" at line ")
            .next()
            .unwrap_or("invalid JSON")
            .to_string()
    };
    Failure(format!(
        "{label}: line {}, column {}: {what}; expected a JSON array of credentials; nothing was imported",
        error.line(),
        error.column()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_both_formats() {
        let text = r#"[{"username": "u1", "password": "p1", "cookie": null},
                       {"username": "u2", "password": "p2", "cookie": "c"},
                       {"name": "n1", "secret": "s1", "capacity": 3}]"#;
        let credentials = parse(text, "t", false).unwrap();
        assert_eq!(credentials.len(), 3);
        assert_eq!(credentials[1].extra_text(), Some("c"));
        assert_eq!(credentials[2].get_capacity(), 3);
    }

    #[test]
    fn never_echoes_a_value() {
        for text in [
            r#"[{"username": "u1", "password": 123456789}]"#,
            r#"[{"name": "n", "secret": "s", "capacity": -123456789}]"#,
            r#"[{"username": "u1", "password": "123456789", "extra_field": 1}]"#,
        ] {
            let Err(Failure(message)) = parse(text, "t", false) else {
                panic!("accepted {text}");
            };
            assert!(!message.contains("123456789"), "{message}");
            assert!(message.contains("line 1"), "{message}");
        }
    }

    #[test]
    fn names_the_bad_entry() {
        let text =
            r#"[{"username": "ok", "password": "p"}, {"username": "bad\nname", "password": "p"}]"#;
        let Err(Failure(message)) = parse(text, "f.json", false) else {
            panic!("accepted a control character");
        };
        assert!(message.contains("entry 1"), "{message}");
        let text = r#"[{"username": "a", "password": "p"}, {"username": "a", "password": "q"}]"#;
        let Err(Failure(message)) = parse(text, "f.json", false) else {
            panic!("accepted a duplicate");
        };
        assert!(
            message.contains("entry 1") && message.contains("entry 0"),
            "{message}"
        );
        assert_eq!(parse(text, "f.json", true).unwrap().len(), 1);
    }
}
