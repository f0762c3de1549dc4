//! Tables and JSON for `list` and `stats`.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use credpool::store::Store;
use credpool::{CredentialInfo, CredentialState, LeaseInfo, Pool, Stats};
use serde_json::{json, Value};

use super::Outcome;

/// The widest a name may print in a table.
const NAME_WIDTH: usize = 40;

/// `export`: the pool as credpool's own JSON, in the format `import` reads,
/// one object a credential, in id order. With `show_secrets` each has its
/// secret and extra text, and a file that standard output goes to is made
/// private first.
pub(crate) async fn export<S: Store>(pool: &Pool<S>, show_secrets: bool) -> Outcome {
    let infos = pool.list().await?;
    let secrets: HashMap<String, (String, Option<String>)> = if show_secrets {
        make_stdout_private();
        revealed(pool).await?
    } else {
        HashMap::new()
    };
    let entries: Vec<Value> = infos
        .iter()
        .map(|info| {
            let mut entry = serde_json::Map::new();
            entry.insert("name".into(), json!(info.name));
            if let Some((secret, extra)) = secrets.get(&info.name) {
                entry.insert("secret".into(), json!(secret));
                if let Some(extra) = extra {
                    entry.insert("extra".into(), json!(extra));
                }
            }
            entry.insert("capacity".into(), json!(info.capacity));
            if let CredentialState::Disabled { reason } = &info.state {
                // A holder may have disabled it with an empty reason, which
                // an import (like `disable`) refuses.
                let reason = if reason.trim().is_empty() {
                    "disabled without a reason"
                } else {
                    reason.as_str()
                };
                entry.insert("disabled".into(), json!(reason));
            }
            if let Some(rate) = rates_json(info) {
                entry.insert("rate".into(), rate);
            }
            Value::Object(entry)
        })
        .collect();
    outln!(
        "{}",
        serde_json::to_string_pretty(&entries).map_err(|e| e.to_string())?
    );
    Ok(())
}

/// A credential's quotas as the import format writes them: one rate over
/// every grant as a string (`"400/15m"`), else an object by scope, `"*"`
/// for every scope.
fn rates_json(info: &CredentialInfo) -> Option<Value> {
    let rates: Vec<(Option<&str>, credpool::Rate)> = info
        .limits
        .iter()
        // The pool's defaults are not the credential's own.
        .filter(|limit| !limit.default)
        .filter_map(|limit| Some((limit.scope.as_deref(), limit.rate?)))
        .collect();
    match rates.as_slice() {
        [] => None,
        [(None, rate)] => Some(json!(rate.to_string())),
        _ => Some(Value::Object(
            rates
                .iter()
                .map(|(scope, rate)| (scope.unwrap_or("*").to_string(), json!(rate.to_string())))
                .collect(),
        )),
    }
}

/// Each credential's secret and extra text, by name.
async fn revealed<S: Store>(
    pool: &Pool<S>,
) -> Result<HashMap<String, (String, Option<String>)>, credpool::Error> {
    Ok(pool
        .reveal()
        .await?
        .into_iter()
        .map(|c| {
            (
                c.name().to_string(),
                (
                    c.secret().expose().to_string(),
                    c.extra().map(str::to_string),
                ),
            )
        })
        .collect())
}

/// When standard output goes to a file that others may read (`> backup.json`
/// under the usual umask), makes it readable by its owner only, before any
/// secret is written to it.
fn make_stdout_private() {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let stdout = std::path::Path::new("/dev/stdout");
        let Ok(meta) = std::fs::metadata(stdout) else {
            return;
        };
        if meta.is_file() && meta.permissions().mode() & 0o077 != 0 {
            match std::fs::set_permissions(stdout, std::fs::Permissions::from_mode(0o600)) {
                Ok(()) => errln!(
                    "note: the file standard output goes to was readable by others; \
                     credpool made it private (mode 0600) before writing secrets to it"
                ),
                Err(error) => errln!(
                    "warning: the file standard output goes to is readable by others, and \
                     credpool could not make it private ({error}): secrets follow"
                ),
            }
        }
    }
}

/// `pools`: each pool with how many credentials it holds.
pub(crate) fn pools(
    pools: &[credpool::PoolSummary],
    place: &super::Place,
    as_json: bool,
) -> Outcome {
    if as_json {
        let rows: Vec<Value> = pools
            .iter()
            .map(|pool| json!({"name": pool.name, "credentials": pool.credentials}))
            .collect();
        outln!(
            "{}",
            serde_json::to_string_pretty(&rows).map_err(|e| e.to_string())?
        );
        return Ok(());
    }
    if pools.is_empty() {
        outln!("{}: no pool holds a credential yet", place.describe());
        return Ok(());
    }
    let mut rows = vec![vec!["POOL".to_string(), "CREDENTIALS".into()]];
    rows.extend(
        pools
            .iter()
            .map(|pool| vec![pool.name.clone(), pool.credentials.to_string()]),
    );
    print_table(&rows);
    Ok(())
}

/// How `list` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    Table,
    Json,
    Ndjson,
}

/// Which credentials `list` prints, in what order, and how many.
#[derive(clap::Args, Debug, Clone, Default)]
pub(crate) struct Filter {
    /// Only credentials in these states (available, leased, cooling,
    /// disabled; several with commas).
    #[arg(short, long, value_delimiter = ',', value_enum)]
    state: Vec<StateName>,
    /// Only names that match this pattern: `*` for any run of characters,
    /// `?` for one (quote it from the shell).
    #[arg(short, long, value_name = "GLOB")]
    name: Option<String>,
    /// The order [default: as added].
    #[arg(long, value_enum)]
    sort: Option<SortKey>,
    /// At most this many.
    #[arg(short, long, value_name = "N")]
    limit: Option<usize>,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
enum StateName {
    Available,
    Leased,
    Cooling,
    Disabled,
}

impl StateName {
    /// The word `CredentialState::label` gives the state.
    fn label(self) -> &'static str {
        match self {
            StateName::Available => "available",
            StateName::Leased => "leased",
            StateName::Cooling => "cooling",
            StateName::Disabled => "disabled",
        }
    }
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
enum SortKey {
    /// By name.
    Name,
    /// Least recently used first (never used first).
    LastUsed,
    /// Most used first.
    Uses,
    /// Most holders first.
    Held,
}

impl Filter {
    /// Whether a credential passes the state and name filters.
    fn keeps(&self, c: &CredentialInfo) -> bool {
        (self.state.is_empty()
            || self
                .state
                .iter()
                .any(|state| state.label() == c.state.label()))
            && self
                .name
                .as_deref()
                .is_none_or(|glob| glob_matches(glob, &c.name))
    }

    /// The credentials that pass, in the order asked for, at most `limit`.
    fn apply(&self, mut credentials: Vec<CredentialInfo>) -> Vec<CredentialInfo> {
        credentials.retain(|c| self.keeps(c));
        match self.sort {
            None => {}
            Some(SortKey::Name) => credentials.sort_by(|a, b| a.name.cmp(&b.name)),
            Some(SortKey::LastUsed) => credentials.sort_by_key(|c| c.last_used_at),
            Some(SortKey::Uses) => credentials.sort_by_key(|c| std::cmp::Reverse(c.use_count)),
            Some(SortKey::Held) => credentials.sort_by_key(|c| std::cmp::Reverse(c.holders)),
        }
        if let Some(limit) = self.limit {
            credentials.truncate(limit);
        }
        credentials
    }

    fn is_set(&self) -> bool {
        !self.state.is_empty() || self.name.is_some() || self.limit.is_some()
    }
}

/// Whether `text` matches `glob`, where `*` stands for any run of
/// characters and `?` for one character.
pub(crate) fn glob_matches(glob: &str, text: &str) -> bool {
    let (glob, text): (Vec<char>, Vec<char>) = (glob.chars().collect(), text.chars().collect());
    // The last `*` seen, and where in the text it was tried from.
    let (mut g, mut t, mut star) = (0, 0, None);
    while t < text.len() {
        match glob.get(g) {
            Some('*') => {
                star = Some((g, t));
                g += 1;
            }
            Some(&c) if c == '?' || c == text[t] => {
                g += 1;
                t += 1;
            }
            _ => match star {
                // Let the last `*` take one more character.
                Some((at, from)) => {
                    g = at + 1;
                    t = from + 1;
                    star = Some((at, from + 1));
                }
                None => return false,
            },
        }
    }
    glob[g..].iter().all(|&c| c == '*')
}

/// How many credentials `list` reads from the store at a time.
const PAGE: usize = 1_000;

pub(crate) async fn list<S: Store>(
    pool: &Pool<S>,
    format: Format,
    show_secrets: bool,
    filter: &Filter,
) -> Outcome {
    let secrets: HashMap<String, (String, Option<String>)> = if show_secrets {
        make_stdout_private();
        revealed(pool).await?
    } else {
        HashMap::new()
    };
    let mut out = Listing::new(format, show_secrets, &secrets);
    if filter.sort.is_some() {
        // An order of its own: every credential is read first.
        for c in filter.apply(pool.list().await?) {
            out.row(&c);
        }
    } else {
        // In the order they were added: a page at a time, written as it
        // comes, so that `list | head` stops reading at once.
        let (mut after, mut left) = (None, filter.limit.unwrap_or(usize::MAX));
        while left > 0 {
            let page = pool.list_page(after, PAGE).await?;
            let Some(last) = page.last() else { break };
            if after.is_some_and(|after| last.id <= after) {
                // A store that does not move on: stop rather than repeat.
                break;
            }
            after = Some(last.id);
            for c in page.iter().filter(|c| filter.keeps(c)).take(left) {
                out.row(c);
                left -= 1;
            }
            out.flush();
        }
    }
    let listed = out.finish();
    if listed == 0 && format == Format::Table {
        if filter.is_set() {
            outln!("(no credential in pool `{}` matches)", pool.name());
        } else {
            outln!("(no credentials in pool `{}`)", pool.name());
        }
    }
    Ok(())
}

/// `list`'s output, written as the rows come: JSON (an array, indented as
/// serde_json writes one), a JSON object a line, or a table whose columns
/// are as wide as the widest cell of its first page of rows.
struct Listing<'a> {
    format: Format,
    secrets: &'a HashMap<String, (String, Option<String>)>,
    now: SystemTime,
    /// Text not written yet.
    text: String,
    /// The table's rows until its widths are known.
    rows: Vec<Vec<String>>,
    widths: Option<Vec<usize>>,
    listed: usize,
}

impl<'a> Listing<'a> {
    fn new(
        format: Format,
        show_secrets: bool,
        secrets: &'a HashMap<String, (String, Option<String>)>,
    ) -> Self {
        let mut heading = vec![
            "NAME".to_string(),
            "STATE".into(),
            "HELD".into(),
            "HELD BY".into(),
            "LAST USED".into(),
            "USES".into(),
            "NOTE".into(),
        ];
        if show_secrets {
            heading.extend(["SECRET".to_string(), "EXTRA".into()]);
        }
        Self {
            format,
            secrets,
            now: SystemTime::now(),
            text: String::new(),
            rows: vec![heading],
            widths: None,
            listed: 0,
        }
    }

    fn row(&mut self, c: &CredentialInfo) {
        self.listed += 1;
        match self.format {
            Format::Json | Format::Ndjson => {
                let mut row = info_json(c);
                if let Some((secret, extra)) = self.secrets.get(&c.name) {
                    row["secret"] = json!(secret);
                    row["extra"] = json!(extra);
                }
                if self.format == Format::Ndjson {
                    self.text.push_str(&row.to_string());
                    self.text.push('\n');
                } else {
                    self.text
                        .push_str(if self.listed == 1 { "[\n" } else { ",\n" });
                    let pretty = serde_json::to_string_pretty(&row).unwrap_or_default();
                    for (i, line) in pretty.lines().enumerate() {
                        if i > 0 {
                            self.text.push('\n');
                        }
                        self.text.push_str("  ");
                        self.text.push_str(line);
                    }
                }
            }
            Format::Table => {
                let row = self.table_row(c);
                self.rows.push(row);
                if self.widths.is_some() || self.rows.len() > PAGE {
                    self.lay_out();
                }
            }
        }
    }

    fn table_row(&self, c: &CredentialInfo) -> Vec<String> {
        let now = self.now;
        let note = match &c.state {
            CredentialState::CoolingDown { until } => format!(
                "cooling for {}",
                span(until.duration_since(now).unwrap_or_default())
            ),
            CredentialState::Disabled { reason } => printable(reason),
            _ => String::new(),
        };
        let limits = limits_note(c, now);
        let note = match (note.is_empty(), limits.is_empty()) {
            (_, true) => note,
            (true, false) => limits,
            (false, false) => format!("{note}; {limits}"),
        };
        let mut row = vec![
            shorten(&c.name),
            c.state.label().to_string(),
            format!("{}/{}", c.holders, c.capacity),
            held_by(c, now),
            c.last_used_at
                .map_or_else(|| "never".to_string(), |at| ago(now, at)),
            c.use_count.to_string(),
            note,
        ];
        if let Some((secret, extra)) = self.secrets.get(&c.name) {
            row.push(printable(secret));
            row.push(extra.as_deref().map(printable).unwrap_or_default());
        }
        row
    }

    /// Writes the table's rows held so far, its widths fixed by the first.
    fn lay_out(&mut self) {
        let widths = self.widths.get_or_insert_with(|| widths_of(&self.rows));
        for row in self.rows.drain(..) {
            self.text.push_str(&table_line(&row, widths));
            self.text.push('\n');
        }
    }

    /// Writes what is held.
    fn flush(&mut self) {
        if !self.text.is_empty() {
            crate::cli::write_stdout(format_args!("{}", self.text));
            self.text.clear();
        }
    }

    /// Writes the rest; returns how many credentials were listed.
    fn finish(mut self) -> usize {
        match self.format {
            Format::Json if self.listed == 0 => self.text.push_str("[]\n"),
            Format::Json => self.text.push_str("\n]\n"),
            Format::Ndjson => {}
            Format::Table => self.lay_out(),
        }
        self.flush();
        self.listed
    }
}

pub(crate) fn stats(stats: &Stats, as_json: bool) -> Outcome {
    if as_json {
        outln!("{}", stats_json(stats));
    } else {
        outln!("{}", stats_line(stats));
    }
    Ok(())
}

/// The counts on one line, for `stats` and `watch`.
pub(crate) fn stats_line(stats: &Stats) -> String {
    let mut line = format!(
        "total {}  available {}  leased {}  cooling {}  disabled {}  leases out {}  waiting {}",
        stats.total,
        stats.available,
        stats.leased,
        stats.cooling_down,
        stats.disabled,
        stats.leases,
        stats.waiters
    );
    if stats.scope_blocked > 0 {
        line.push_str(&format!("  blocked in a scope {}", stats.scope_blocked));
    }
    line
}

/// By scope (`*`: every scope), how many credentials its limits block now
/// and how many grants their quotas still allow: for `watch`.
pub(crate) fn scope_rows(credentials: &[CredentialInfo]) -> Vec<Vec<String>> {
    let mut by_scope: std::collections::BTreeMap<String, (u64, Option<u64>)> =
        std::collections::BTreeMap::new();
    for credential in credentials {
        for limit in &credential.limits {
            let scope = limit.scope.as_deref().map_or("*".to_string(), printable);
            let (blocked, left) = by_scope.entry(scope).or_default();
            *blocked += u64::from(limit.blocked_until.is_some());
            if let Some(remaining) = limit.remaining {
                *left = Some(left.unwrap_or(0) + u64::from(remaining));
            }
        }
    }
    let mut rows = vec![vec![
        "SCOPE".to_string(),
        "BLOCKED".into(),
        "GRANTS LEFT".into(),
    ]];
    rows.extend(by_scope.into_iter().map(|(scope, (blocked, left))| {
        vec![
            shorten(&scope),
            blocked.to_string(),
            left.map_or_else(|| "-".to_string(), |left| left.to_string()),
        ]
    }));
    rows
}

pub(crate) fn stats_json(stats: &Stats) -> Value {
    json!({
        "total": stats.total,
        "available": stats.available,
        "leased": stats.leased,
        "cooling_down": stats.cooling_down,
        "disabled": stats.disabled,
        "leases": stats.leases,
        "waiters": stats.waiters,
        "uses": stats.uses,
        "scope_blocked": stats.scope_blocked,
    })
}

/// One credential, whole: its fields one a line (or JSON), never its
/// secret unless asked.
pub(crate) async fn show<S: Store>(
    pool: &Pool<S>,
    name: &str,
    as_json: bool,
    show_secrets: bool,
) -> Outcome {
    credpool::validate_name(name)?;
    let Some(info) = pool.info(name).await? else {
        return Err(format!("no credential named {name:?} in pool `{}`", pool.name()).into());
    };
    let revealed = if show_secrets {
        pool.reveal().await?.into_iter().find(|c| c.name() == name)
    } else {
        None
    };
    if as_json {
        let mut row = info_json(&info);
        if let Some(credential) = &revealed {
            row["secret"] = json!(credential.secret().expose());
            row["extra"] = json!(credential.extra());
        }
        outln!(
            "{}",
            serde_json::to_string_pretty(&row).map_err(|e| e.to_string())?
        );
        return Ok(());
    }
    let now = SystemTime::now();
    let mut lines = vec![
        ("name", printable(&info.name)),
        ("state", info.state.label().to_string()),
        ("held", format!("{}/{}", info.holders, info.capacity)),
        (
            "last used",
            info.last_used_at
                .map_or_else(|| "never".to_string(), |at| ago(now, at)),
        ),
        ("uses", info.use_count.to_string()),
        ("added", ago(now, info.created_at)),
        (
            "extra",
            if info.has_extra { "yes" } else { "none" }.to_string(),
        ),
    ];
    match &info.state {
        CredentialState::CoolingDown { until } => lines.push((
            "cooling for",
            span(until.duration_since(now).unwrap_or_default()),
        )),
        CredentialState::Disabled { reason } => lines.push(("reason", printable(reason))),
        _ => {}
    }
    for lease in &info.leases {
        lines.push(("lease", lease_note(lease, now)));
    }
    if !info.limits.is_empty() {
        lines.push(("limits", limits_note(&info, now)));
    }
    for limit in info
        .limits
        .iter()
        .filter_map(|limit| Some((limit.scope.as_deref(), limit.rate?)))
    {
        let (scope, rate) = limit;
        lines.push((
            "quota",
            format!(
                "{rate} in {}",
                scope.map_or("every scope".to_string(), |scope| format!(
                    "scope {}",
                    printable(scope)
                ))
            ),
        ));
    }
    if let Some(credential) = &revealed {
        lines.push(("secret", printable(credential.secret().expose())));
        if let Some(extra) = credential.extra() {
            lines.push(("extra text", printable(extra)));
        }
    }
    for (key, value) in lines {
        outln!("{:<12} {value}", format!("{key}:"));
    }
    Ok(())
}

pub(crate) fn info_json(c: &CredentialInfo) -> Value {
    let (reason, until) = match &c.state {
        CredentialState::Disabled { reason } => (Some(reason.clone()), None),
        CredentialState::CoolingDown { until } => (None, Some(millis(*until))),
        _ => (None, None),
    };
    json!({
        "id": c.id.get(),
        "name": c.name,
        "state": c.state.label(),
        "holders": c.holders,
        "capacity": c.capacity,
        "disabled_reason": reason,
        "cooling_until_ms": until,
        "last_used_at_ms": c.last_used_at.map(millis),
        "use_count": c.use_count,
        "created_at_ms": millis(c.created_at),
        "has_extra": c.has_extra,
        "leases": c.leases.iter().map(|lease| json!({
            "holder": lease.holder,
            "acquired_at_ms": millis(lease.acquired_at),
            "expires_at_ms": lease.expires_at.map(millis),
            "units": lease.units,
        })).collect::<Vec<_>>(),
        "limits": c.limits.iter().map(|limit| json!({
            "scope": limit.scope,
            "rate": limit.rate.map(|rate| rate.to_string()),
            "used": limit.used,
            "remaining": limit.remaining,
            "blocked_until_ms": limit.blocked_until.map(millis),
            "reset_at_ms": limit.reset_at.map(millis),
        })).collect::<Vec<_>>(),
    })
}

/// A credential's limits in a few words, scope by scope (`*`: every
/// scope): `search: 3/400 left, blocked 4m`.
pub(crate) fn limits_note(c: &CredentialInfo, now: SystemTime) -> String {
    c.limits
        .iter()
        .map(|limit| {
            let mut parts = Vec::new();
            match (limit.rate, limit.remaining) {
                (Some(rate), Some(remaining)) => {
                    parts.push(format!("{remaining}/{} left", rate.count()));
                }
                (None, Some(remaining)) => parts.push(format!("{remaining} left")),
                _ => {}
            }
            if let Some(until) = limit.blocked_until {
                parts.push(format!(
                    "blocked {}",
                    span(until.duration_since(now).unwrap_or_default())
                ));
            } else if let Some(reset) = limit.reset_at {
                parts.push(format!(
                    "resets in {}",
                    span(reset.duration_since(now).unwrap_or_default())
                ));
            }
            let scope = limit.scope.as_deref().map_or("*".to_string(), printable);
            format!("{scope}: {}", parts.join(", "))
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// Who holds a credential's oldest lease, for how long, until when
/// (`4242@host-a for 12s, expires in 4m`), and how many more there are.
fn held_by(c: &CredentialInfo, now: SystemTime) -> String {
    let Some(first) = c.leases.first() else {
        return String::new();
    };
    let mut text = lease_note(first, now);
    if c.leases.len() > 1 {
        text.push_str(&format!(" (+{} more)", c.leases.len() - 1));
    }
    text
}

/// One lease in a few words: `4242@host-a for 12s, expires in 4m`.
fn lease_note(lease: &LeaseInfo, now: SystemTime) -> String {
    let holder = match lease.holder.as_deref() {
        None => "(handed to a waiter)".to_string(),
        Some(holder) if has_exited(holder) => format!("{} (exited)", printable(holder)),
        Some(holder) => printable(holder),
    };
    let held = match now.duration_since(lease.acquired_at) {
        Ok(held) => span(held),
        Err(_) => "0s".to_string(),
    };
    let expiry = lease.expires_at.map_or("no expiry".to_string(), |at| {
        format!(
            "expires in {}",
            span(at.duration_since(now).unwrap_or_default())
        )
    });
    let units = if lease.units > 1 {
        format!(", {} units", lease.units)
    } else {
        String::new()
    };
    format!("{holder} for {held}, {expiry}{units}")
}

/// Whether a holder (`<process id>@<host name>`) is a process of this
/// machine that is gone: what tells a dead worker's lease from a live one.
/// Only where `/proc` tells (Linux); a process of another host is never
/// said to be gone.
fn has_exited(holder: &str) -> bool {
    let Some((pid, host)) = holder.split_once('@') else {
        return false;
    };
    let this_host = LeaseInfo::this_process()
        .split_once('@')
        .map_or("", |(_, host)| host);
    // Whether this machine's `/proc` tells, looked up once for a whole list.
    static PROC_TELLS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let proc = std::path::Path::new("/proc");
    host == this_host
        && pid.parse::<u32>().is_ok()
        && *PROC_TELLS.get_or_init(|| proc.join("self").exists())
        && !proc.join(pid).exists()
}

fn millis(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// "3s ago", "5m ago", "2h ago", "4d ago".
pub(crate) fn ago(now: SystemTime, then: SystemTime) -> String {
    match now.duration_since(then) {
        Ok(elapsed) => format!("{} ago", span(elapsed)),
        Err(_) => "just now".to_string(),
    }
}

pub(crate) fn span(duration: Duration) -> String {
    let seconds = duration.as_secs();
    match seconds {
        0..=59 => format!("{seconds}s"),
        60..=3599 => format!("{}m", seconds / 60),
        3600..=86_399 => format!("{}h", seconds / 3600),
        _ => format!("{}d", seconds / 86_400),
    }
}

/// Text that is safe to print on a terminal: control characters become `?`.
pub(crate) fn printable(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

/// How many columns `text` takes on a terminal: two for a wide (CJK)
/// character, none for a combining mark.
pub(crate) fn columns(text: &str) -> usize {
    unicode_width::UnicodeWidthStr::width(text)
}

/// `name`, cut to at most [`NAME_WIDTH`] columns with an ellipsis.
pub(crate) fn shorten(name: &str) -> String {
    if columns(name) <= NAME_WIDTH {
        return name.to_string();
    }
    let mut short = String::new();
    let mut used = 0;
    for c in name.chars() {
        let width = unicode_width::UnicodeWidthChar::width(c).unwrap_or(0);
        if used + width > NAME_WIDTH - 1 {
            break;
        }
        used += width;
        short.push(c);
    }
    short.push('…');
    short
}

/// Prints rows as a table, each column as wide as its widest cell on a
/// terminal, so that columns line up after wide (CJK) names too.
pub(crate) fn print_table(rows: &[Vec<String>]) {
    let widths = widths_of(rows);
    for row in rows {
        outln!("{}", table_line(row, &widths));
    }
}

/// How many columns each column of `rows` takes: its widest cell.
fn widths_of(rows: &[Vec<String>]) -> Vec<usize> {
    let count = rows.first().map_or(0, Vec::len);
    (0..count)
        .map(|i| rows.iter().map(|row| columns(&row[i])).max().unwrap_or(0))
        .collect()
}

/// A table's row, each cell padded to its column's width.
fn table_line(row: &[String], widths: &[usize]) -> String {
    let mut line = String::new();
    for (cell, width) in row.iter().zip(widths) {
        if !line.is_empty() {
            line.push_str("  ");
        }
        line.push_str(cell);
        line.extend(std::iter::repeat_n(
            ' ',
            width.saturating_sub(columns(cell)),
        ));
    }
    line.trim_end().to_string()
}

#[cfg(test)]
mod glob_tests {
    use super::glob_matches;

    #[test]
    fn stars_and_question_marks() {
        for (glob, text, expected) in [
            ("bot-*", "bot-7", true),
            ("bot-*", "bot-", true),
            ("bot-*", "robot-7", false),
            ("*-7", "bot-7", true),
            ("b?t-*", "bat-12", true),
            ("b?t", "bt", false),
            ("*a*b*", "xxaxxbxx", true),
            ("*a*b", "xxaxxbxxc", false),
            ("日本*", "日本語", true),
            ("", "", true),
            ("", "a", false),
            ("**", "anything", true),
            ("alice", "alice", true),
            ("alice", "Alice", false),
        ] {
            assert_eq!(glob_matches(glob, text), expected, "{glob:?} ~ {text:?}");
        }
    }
}
