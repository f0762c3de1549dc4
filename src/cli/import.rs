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
    /// Why it is disabled; absent when it is enabled.
    disabled: Option<String>,
    /// Quotas: `"400/15m"` over every grant, or by scope
    /// (`{"search": "400/15m", "*": "1000/1h"}`, `*` for every scope).
    rate: Option<RateField>,
}

/// The `rate` of an entry.
#[derive(Deserialize)]
#[serde(untagged)]
enum RateField {
    Every(String),
    ByScope(std::collections::BTreeMap<String, String>),
}

impl RateField {
    /// The quotas by scope (`""`: every scope), each rate checked.
    fn rates(self) -> Result<Vec<(String, credpool::Rate)>, String> {
        let pairs = match self {
            RateField::Every(rate) => vec![("*".to_string(), rate)],
            RateField::ByScope(by_scope) => by_scope.into_iter().collect(),
        };
        pairs
            .into_iter()
            .map(|(scope, rate)| {
                let parsed = rate
                    .parse::<credpool::Rate>()
                    .map_err(|error| match error {
                        credpool::Error::InvalidInput(invalid) => invalid.reason,
                        other => other.to_string(),
                    })?;
                let scope = if scope == "*" { String::new() } else { scope };
                if scope.trim().is_empty() && !scope.is_empty() {
                    return Err(
                        "a \"rate\" scope must not be blank (use \"*\" for every scope)".into(),
                    );
                }
                Ok((scope, parsed))
            })
            .collect()
    }
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
        // On a terminal, a bar that moves as the entries are written (one
        // transaction still: nothing is committed before the end).
        let bar = (chatty && std::io::stderr().is_terminal()).then(|| {
            let bar = indicatif::ProgressBar::new(total as u64);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{msg} [{bar:40}] {pos}/{len} entries written, {eta} left",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            bar.set_message(format!("{label}:"));
            bar
        });
        if chatty && bar.is_none() {
            progress(&format!(
                "{label}: {total} entries read and checked in {:.1?}; writing them \
                 (none is visible before all are)…",
                started.elapsed()
            ));
        }
        let moving = bar.clone();
        let written_label = label.clone();
        let added = pool
            .add_many_with_progress(credentials, skip_existing, move |written| match &moving {
                Some(bar) => {
                    bar.set_position(written as u64);
                    if written == total {
                        bar.set_message(format!("{written_label}: committing"));
                    }
                }
                None if chatty && written == total => progress(&format!(
                    "{written_label}: {total} entries ready; committing them at once…"
                )),
                None => {}
            })
            .await;
        if let Some(bar) = &bar {
            bar.finish_and_clear();
        }
        let added = added
        .map_err(|error| match error {
            Error::DuplicateName { .. } => Failure(format!(
                "{label}: {error}; nothing was imported (use --skip-existing to keep the ones that exist)"
            )),
            other => Failure(format!("{label}: {other}; nothing was imported")),
        })?;
        if chatty && bar.is_none() {
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
        errput!("\r\x1b[2K{line}");
    } else if !line.is_empty() {
        errln!("{line}");
    }
}

/// Parses and checks every entry; any problem fails the whole file.
/// An error about one entry, with the entry's position in the message.
fn at_entry(error: Error, index: usize) -> String {
    match error {
        Error::InvalidInput(mut invalid) => {
            invalid.entry = Some(index);
            invalid.to_string()
        }
        other => other.to_string(),
    }
}

pub(crate) fn parse(
    text: &str,
    label: &str,
    skip_existing: bool,
) -> Result<Vec<NewCredential>, Failure> {
    // A byte-order mark, as some editors on Windows write, is no content.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    if let Some(kind) = not_an_array(text) {
        return Err(Failure(format!(
            "{label}: the file holds {kind}, not an array of credentials: write \
             [{{\"name\": \"alice\", \"secret\": \"…\"}}, …]; nothing was imported"
        )));
    }
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
                at_entry(error, index)
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

/// What the JSON text holds at the top when it is JSON but not an array
/// ("a JSON object", say); `None` when it may be an array, or is no JSON
/// (serde's error says where it goes wrong).
fn not_an_array(text: &str) -> Option<&'static str> {
    if text.trim_start().starts_with('[') {
        return None;
    }
    Some(
        match serde_json::from_str::<serde_json::Value>(text).ok()? {
            serde_json::Value::Array(_) => return None,
            serde_json::Value::Object(_) => "a JSON object",
            serde_json::Value::String(_) => "a JSON string",
            serde_json::Value::Bool(_) => "a JSON true or false",
            serde_json::Value::Null => "a JSON null",
            serde_json::Value::Number(_) => "a JSON number",
        },
    )
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
            disabled: None,
            rate: None,
        } => {
            let password = password.ok_or_else(|| format!("{username:?} has no \"password\""))?;
            Ok(NewCredential::new(username, password).maybe_extra(cookie))
        }
        Entry {
            name: Some(name),
            secret,
            extra,
            capacity,
            disabled,
            rate,
            username: None,
            password: None,
            cookie: None,
        } => {
            let secret = secret.ok_or_else(|| {
                format!(
                    "{name:?} has no \"secret\" (an export holds the secrets only when made \
                     with --show-secrets)"
                )
            })?;
            let rates = rate
                .map(RateField::rates)
                .transpose()
                .map_err(|why| format!("{name:?} has a bad \"rate\": {why}"))?
                .unwrap_or_default();
            let mut credential = NewCredential::new(name, secret)
                .maybe_extra(extra)
                .capacity(capacity.unwrap_or(1));
            for (scope, rate) in rates {
                credential = credential.rate_for(scope, rate);
            }
            Ok(match disabled {
                Some(reason) => credential.disabled(reason),
                None => credential,
            })
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
        // Read back as the pool keeps them.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let credentials = runtime.block_on(async {
            let pool = Pool::in_memory();
            pool.add_many(credentials).await.unwrap();
            pool.reveal().await.unwrap()
        });
        assert_eq!(credentials[1].extra(), Some("c"));
        assert_eq!(credentials[2].capacity(), 3);
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

    /// One generated entry: its JSON, its name, and whether it is valid.
    struct Generated {
        json: String,
        name: Option<String>,
        valid: bool,
    }

    fn random_text(rng: &mut fastrand::Rng) -> String {
        let pieces = [
            "a", "Z", "7", " ", "é", "日本", "🔑", r"\n", r"\t", r"\u007f", r#"\""#, r"\\",
        ];
        (0..rng.usize(0..12))
            .map(|_| pieces[rng.usize(..pieces.len())])
            .collect()
    }

    /// A name as JSON text, and whether `validate_name` should take it.
    fn random_name(rng: &mut fastrand::Rng, serial: usize) -> (String, String, bool) {
        match rng.u8(..10) {
            0 => (String::new(), String::new(), false),
            1 => {
                let long = "n".repeat(rng.usize(250..260));
                (long.clone(), long.clone(), long.len() <= 255)
            }
            2 => {
                // Control characters, escaped in the JSON.
                let escaped = format!("bad\\u00{:02x}name", rng.u8(..0x20));
                let name = format!("bad{}name", char::from(0u8));
                (escaped, name, false)
            }
            3 => ("dup".into(), "dup".into(), true),
            _ => {
                let name = format!("user-{serial}-{}", rng.alphanumeric());
                (name.clone(), name, true)
            }
        }
    }

    fn random_entry(rng: &mut fastrand::Rng, serial: usize, secret: &str) -> Generated {
        let (json_name, name, name_valid) = random_name(rng, serial);
        let defect = rng.u8(..12);
        let (json, valid) = match defect {
            0 => (format!(r#"{{"username": "{json_name}"}}"#), false),
            1 => (
                format!(r#"{{"name": "{json_name}", "secret": "{secret}", "capacity": 0}}"#),
                false,
            ),
            2 => (
                format!(r#"{{"username": "{json_name}", "password": "{secret}", "name": "x"}}"#),
                false,
            ),
            3 => (
                format!(
                    r#"{{"username": "{json_name}", "password": {}}}"#,
                    rng.u32(..)
                ),
                false,
            ),
            4 => (
                format!(r#"{{"name": "{json_name}", "secret": "{secret}", "color": "red"}}"#),
                false,
            ),
            5 => (format!(r#"{{"secret": "{secret}"}}"#), false),
            6 => (
                format!(r#"{{"name": "{json_name}", "secret": "{secret}\u0000"}}"#),
                false,
            ),
            7 | 8 => (
                format!(
                    r#"{{"name": "{json_name}", "secret": "{secret}", "extra": "{}", "capacity": {}}}"#,
                    random_text(rng),
                    rng.u32(1..5)
                ),
                name_valid,
            ),
            _ => (
                format!(r#"{{"username": "{json_name}", "password": "{secret}", "cookie": null}}"#),
                name_valid,
            ),
        };
        Generated {
            json,
            name: valid.then_some(name),
            valid,
        }
    }

    /// Random import files, well formed or not: `parse` never panics, takes
    /// exactly the files whose every entry is valid, and never repeats a
    /// secret in an error.
    #[test]
    fn random_files_are_taken_or_refused_as_a_whole() {
        let mut rng = fastrand::Rng::with_seed(7);
        let mut taken = 0;
        for case in 0..4_000 {
            let secret = format!("SECRET{case}x{}", rng.u64(..));
            let entries: Vec<Generated> = (0..rng.usize(0..6))
                .map(|serial| random_entry(&mut rng, serial, &secret))
                .collect();
            let text = format!(
                "[{}]",
                entries
                    .iter()
                    .map(|e| e.json.as_str())
                    .collect::<Vec<_>>()
                    .join(",")
            );
            let skip_existing = rng.bool();
            let names: Vec<&str> = entries.iter().filter_map(|e| e.name.as_deref()).collect();
            let unique: std::collections::HashSet<&str> = names.iter().copied().collect();
            let all_valid = entries.iter().all(|e| e.valid);
            let expected = all_valid
                .then(|| (skip_existing || unique.len() == names.len()).then_some(unique.len()));
            match parse(&text, "t", skip_existing) {
                Ok(credentials) => {
                    assert_eq!(expected, Some(Some(credentials.len())), "took {text}");
                    assert!(credentials.iter().all(|c| c.validate().is_ok()));
                    taken += 1;
                }
                Err(Failure(message)) => {
                    assert!(
                        matches!(expected, None | Some(None)),
                        "refused {text}: {message}"
                    );
                    assert!(!message.contains(&secret), "{message}");
                    assert!(message.contains("nothing was imported"), "{message}");
                }
            }
        }
        assert!(taken > 100, "the generator makes valid files too ({taken})");
    }

    /// Valid files cut short or with a byte changed: refused or taken, never a panic.
    #[test]
    fn damaged_files_never_panic() {
        let mut rng = fastrand::Rng::with_seed(11);
        let base = r#"[{"username": "u1", "password": "p1", "cookie": "c=1"},
                       {"name": "n1", "secret": "s1", "extra": "e", "capacity": 3}]"#
            .as_bytes();
        for _ in 0..4_000 {
            let mut bytes = base.to_vec();
            match rng.u8(..3) {
                0 => bytes.truncate(rng.usize(..bytes.len())),
                1 => {
                    let at = rng.usize(..bytes.len());
                    bytes[at] = rng.u8(..);
                }
                _ => {
                    let at = rng.usize(..bytes.len());
                    bytes.insert(at, *b"[]{}\",:0\n".get(rng.usize(..11)).unwrap_or(&b'x'));
                }
            }
            let text = String::from_utf8_lossy(&bytes);
            if let Ok(credentials) = parse(&text, "t", false) {
                assert!(credentials.iter().all(|c| c.validate().is_ok()));
            }
        }
    }
}
