//! Credentials, their secrets, and what a store reports about them.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::error::{Error, InvalidInput, Result};
use crate::ids::CredentialId;
use crate::limits::{Limited, Rate, ScopeLimit};

/// The longest credential name accepted, in bytes.
pub const MAX_NAME_BYTES: usize = 255;
/// The longest secret accepted, in bytes.
pub const MAX_SECRET_BYTES: usize = 64 * 1024;
/// The largest capacity a credential may have (what every store can count).
pub const MAX_CAPACITY: u32 = i32::MAX as u32;
/// The longest `extra` text accepted, in bytes.
pub const MAX_EXTRA_BYTES: usize = 1024 * 1024;
/// The shortest lease TTL accepted: one millisecond, the unit stores keep
/// time in. A shorter TTL (zero, say) would let a lease expire as it is
/// granted, so the next caller would get a credential that is still in use.
pub const MIN_LEASE_TTL: Duration = Duration::from_millis(1);

/// Refuses a lease TTL shorter than [`MIN_LEASE_TTL`].
pub(crate) fn validate_lease_ttl(ttl: Duration) -> Result<()> {
    if ttl < MIN_LEASE_TTL {
        return Err(InvalidInput::new(
            "lease TTL",
            format!(
                "{ttl:?} is shorter than the smallest TTL, {MIN_LEASE_TTL:?}: a lease would expire \
                 as it is granted and its credential be handed out again while in use"
            ),
        )
        .into());
    }
    Ok(())
}

/// A secret value: a password, an API key, a token.
///
/// `Debug` and `Display` print `***`; the value is read only through
/// [`Secret::expose`], so a secret does not reach a log line by accident.
///
/// ```
/// let secret = credpool::Secret::new("hunter2");
/// assert_eq!(format!("{secret} {secret:?}"), "*** ***");
/// assert_eq!(secret.expose(), "hunter2");
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Box<str>);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into().into_boxed_str())
    }

    /// The secret value itself. Call it only where the value is used.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Self::new(value)
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Self {
        Self::new(value)
    }
}

/// A credential as a worker uses it: name, secret, optional extra text
/// (a cookie, say) and capacity. Cheap to clone.
///
/// `Debug` shows neither the secret nor the extra text.
#[derive(Clone)]
pub struct Credential(Arc<CredentialData>);

struct CredentialData {
    id: CredentialId,
    name: Arc<str>,
    secret: Secret,
    extra: Option<String>,
    capacity: u32,
}

impl Credential {
    /// Builds a credential as a store hands it out. Stores call this; users get
    /// credentials from leases.
    pub fn new(
        id: CredentialId,
        name: Arc<str>,
        secret: Secret,
        extra: Option<String>,
        capacity: u32,
    ) -> Self {
        Self(Arc::new(CredentialData {
            id,
            name,
            secret,
            extra,
            capacity,
        }))
    }

    /// The store's id of this credential.
    pub fn id(&self) -> CredentialId {
        self.0.id
    }

    /// The credential's name, unique within its pool.
    pub fn name(&self) -> &str {
        &self.0.name
    }

    /// The name as a shared string (cheap to clone).
    pub fn name_arc(&self) -> &Arc<str> {
        &self.0.name
    }

    /// The secret: read it with [`Secret::expose`].
    pub fn secret(&self) -> &Secret {
        &self.0.secret
    }

    /// The optional extra text (a cookie, a session token, any opaque text).
    pub fn extra(&self) -> Option<&str> {
        self.0.extra.as_deref()
    }

    /// How many leases may hold this credential at once.
    pub fn capacity(&self) -> u32 {
        self.0.capacity
    }
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credential")
            .field("id", &self.0.id)
            .field("name", &self.0.name)
            .field("secret", &self.0.secret)
            .field("extra", &self.0.extra.as_ref().map(|_| "***"))
            .field("capacity", &self.0.capacity)
            .finish()
    }
}

/// A credential to add to a pool.
///
/// ```
/// use credpool::NewCredential;
/// let account = NewCredential::new("alice", "hunter2").extra("session=abc").capacity(2);
/// assert_eq!(account.name(), "alice");
/// ```
#[derive(Clone)]
pub struct NewCredential {
    pub(crate) name: String,
    pub(crate) secret: Secret,
    pub(crate) extra: Option<String>,
    pub(crate) capacity: u32,
    pub(crate) disabled: Option<String>,
    /// Quotas by scope (`""`: every scope), one per scope.
    pub(crate) rates: Vec<(String, Rate)>,
}

impl NewCredential {
    /// A credential with capacity 1 and no extra text, enabled.
    pub fn new(name: impl Into<String>, secret: impl Into<Secret>) -> Self {
        Self {
            name: name.into(),
            secret: secret.into(),
            extra: None,
            capacity: 1,
            disabled: None,
            rates: Vec::new(),
        }
    }

    /// A quota over every grant of the credential, whatever the scope:
    /// at most `rate.count()` grants in any window of `rate.per()`.
    pub fn rate(self, rate: Rate) -> Self {
        self.set_rate("", rate)
    }

    /// A quota over the grants for one scope (checked when the credential
    /// is added: an invalid scope fails the add).
    pub fn rate_for(self, scope: impl Into<String>, rate: Rate) -> Self {
        self.set_rate(&scope.into(), rate)
    }

    fn set_rate(mut self, scope: &str, rate: Rate) -> Self {
        self.rates.retain(|(kept, _)| kept != scope);
        self.rates.push((scope.to_string(), rate));
        self
    }

    /// The quotas, by scope (`None`: every scope).
    pub fn rates(&self) -> impl Iterator<Item = (Option<&str>, Rate)> {
        self.rates
            .iter()
            .map(|(scope, rate)| ((!scope.is_empty()).then_some(scope.as_str()), *rate))
    }

    /// Adds the credential disabled, for this reason (as an export
    /// recorded it): it is not handed out until enabled.
    pub fn disabled(mut self, reason: impl Into<String>) -> Self {
        self.disabled = Some(reason.into());
        self
    }

    /// Sets the extra text (a cookie, say).
    pub fn extra(mut self, extra: impl Into<String>) -> Self {
        self.extra = Some(extra.into());
        self
    }

    /// Sets the extra text, or clears it with `None`.
    pub fn maybe_extra(mut self, extra: Option<String>) -> Self {
        self.extra = extra;
        self
    }

    /// Sets how many leases may hold the credential at once (at least 1).
    pub fn capacity(mut self, capacity: u32) -> Self {
        self.capacity = capacity;
        self
    }

    /// The name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The secret.
    pub fn secret(&self) -> &Secret {
        &self.secret
    }

    /// Checks every field; the error names the field and the reason.
    pub fn validate(&self) -> Result<()> {
        let with_name = |mut invalid: InvalidInput| -> Error {
            if validate_name(&self.name).is_ok() {
                invalid.name = Some(self.name.clone());
            }
            invalid.into()
        };
        validate_name(&self.name)?;
        if self.name.trim() != self.name {
            // No table shows the space, so nobody could type the name.
            return Err(InvalidInput::new(
                "name",
                format!(
                    "{:?} starts or ends with a space, which no list shows: remove it",
                    self.name
                ),
            )
            .into());
        }
        check_capacity(self.capacity).map_err(with_name)?;
        check_secret(&self.secret).map_err(with_name)?;
        if self
            .disabled
            .as_deref()
            .is_some_and(|reason| reason.trim().is_empty())
        {
            return Err(with_name(InvalidInput::new(
                "disabled",
                "a disabled credential needs a reason: say why it is disabled",
            )));
        }
        if let Some(extra) = &self.extra {
            check_extra(extra).map_err(with_name)?;
        }
        for (scope, _) in &self.rates {
            if !scope.is_empty() {
                crate::limits::validate_scope(scope).map_err(|error| match error {
                    Error::InvalidInput(invalid) => with_name(*invalid),
                    other => other,
                })?;
            }
        }
        Ok(())
    }
}

/// The rules of extra text: no NUL byte, at most [`MAX_EXTRA_BYTES`].
fn check_extra(extra: &str) -> std::result::Result<(), InvalidInput> {
    if extra.contains('\0') {
        return Err(InvalidInput::new(
            "extra",
            "contains a NUL byte, which a store cannot keep",
        ));
    }
    if extra.len() > MAX_EXTRA_BYTES {
        return Err(InvalidInput::new(
            "extra",
            format!("longer than {MAX_EXTRA_BYTES} bytes"),
        ));
    }
    Ok(())
}

/// The rules of a capacity: from 1 to [`MAX_CAPACITY`].
fn check_capacity(capacity: u32) -> std::result::Result<(), InvalidInput> {
    if capacity == 0 {
        return Err(InvalidInput::new("capacity", "must be at least 1"));
    }
    if capacity > MAX_CAPACITY {
        return Err(InvalidInput::new(
            "capacity",
            format!("must be at most {MAX_CAPACITY}"),
        ));
    }
    Ok(())
}

/// Changes to make to one credential at once
/// ([`Pool::update`](crate::Pool::update)); what is not set stays as it is.
///
/// ```
/// use credpool::CredentialChange;
/// let change = CredentialChange::new().capacity(4).extra("session=new");
/// assert!(!change.is_empty());
/// ```
#[derive(Clone, Default)]
pub struct CredentialChange {
    pub(crate) secret: Option<Secret>,
    pub(crate) extra: Option<Option<String>>,
    pub(crate) capacity: Option<u32>,
    /// Quotas to set (`Some`) or remove (`None`), by scope (`""`: every scope).
    pub(crate) rates: Vec<(String, Option<Rate>)>,
}

impl CredentialChange {
    /// No change yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// A new secret; leases out keep the old one.
    pub fn secret(mut self, secret: impl Into<Secret>) -> Self {
        self.secret = Some(secret.into());
        self
    }

    /// New extra text (a cookie, say).
    pub fn extra(mut self, extra: impl Into<String>) -> Self {
        self.extra = Some(Some(extra.into()));
        self
    }

    /// No extra text any more.
    pub fn no_extra(mut self) -> Self {
        self.extra = Some(None);
        self
    }

    /// A new capacity. Lowering it below the leases out now is refused:
    /// wait for them to come back, or revoke them, first.
    pub fn capacity(mut self, capacity: u32) -> Self {
        self.capacity = Some(capacity);
        self
    }

    /// A new quota over every grant, whatever the scope (`None`: no quota).
    pub fn rate(self, rate: Option<Rate>) -> Self {
        self.set_rate("", rate)
    }

    /// A new quota for one scope (`None`: no quota in that scope).
    pub fn rate_for(self, scope: impl Into<String>, rate: Option<Rate>) -> Self {
        self.set_rate(&scope.into(), rate)
    }

    fn set_rate(mut self, scope: &str, rate: Option<Rate>) -> Self {
        self.rates.retain(|(kept, _)| kept != scope);
        self.rates.push((scope.to_string(), rate));
        self
    }

    /// Whether it changes nothing.
    pub fn is_empty(&self) -> bool {
        self.secret.is_none()
            && self.extra.is_none()
            && self.capacity.is_none()
            && self.rates.is_empty()
    }

    /// Checks every field that is set, as for a new credential.
    pub(crate) fn validate(&self) -> std::result::Result<(), InvalidInput> {
        if let Some(secret) = &self.secret {
            check_secret(secret)?;
        }
        if let Some(Some(extra)) = &self.extra {
            check_extra(extra)?;
        }
        if let Some(capacity) = self.capacity {
            check_capacity(capacity)?;
        }
        for (scope, _) in &self.rates {
            if !scope.is_empty() {
                crate::limits::validate_scope(scope).map_err(|error| match error {
                    Error::InvalidInput(invalid) => *invalid,
                    other => InvalidInput::new("scope", other.to_string()),
                })?;
            }
        }
        Ok(())
    }
}

impl fmt::Debug for CredentialChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CredentialChange")
            .field("secret", &self.secret.as_ref().map(|_| "***"))
            .field(
                "extra",
                &self
                    .extra
                    .as_ref()
                    .map(|extra| extra.as_ref().map(|_| "***")),
            )
            .field("capacity", &self.capacity)
            .field("rates", &self.rates)
            .finish()
    }
}

/// The refusal of a capacity below the leases out now.
pub(crate) fn capacity_below_holders(name: &str, capacity: u32, holders: u32) -> Error {
    let mut invalid = InvalidInput::new(
        "capacity",
        format!(
            "{capacity} is below the {holders} leases out now: wait for them to come \
             back (or revoke them) first"
        ),
    );
    invalid.name = Some(name.to_string());
    invalid.into()
}

/// The rules of a secret, for a new credential and a new secret alike: not
/// empty, no NUL byte, at most [`MAX_SECRET_BYTES`].
pub(crate) fn check_secret(secret: &Secret) -> std::result::Result<(), InvalidInput> {
    let secret = secret.expose();
    let reason = if secret.is_empty() {
        "must not be empty".to_string()
    } else if secret.contains('\0') {
        "contains a NUL byte, which a store cannot keep".to_string()
    } else if secret.len() > MAX_SECRET_BYTES {
        format!("longer than {MAX_SECRET_BYTES} bytes")
    } else {
        return Ok(());
    };
    Err(InvalidInput::new("secret", reason))
}

impl fmt::Debug for NewCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NewCredential")
            .field("name", &self.name)
            .field("secret", &self.secret)
            .field("extra", &self.extra.as_ref().map(|_| "***"))
            .field("capacity", &self.capacity)
            .field("rates", &self.rates)
            .finish()
    }
}

/// Checks a pool name: the same rules as a credential name.
#[cfg_attr(not(any(feature = "sqlite", feature = "postgres")), allow(dead_code))]
pub(crate) fn validate_pool_name(name: &str) -> Result<()> {
    validate_name(name).map_err(|error| match error {
        Error::InvalidInput(mut invalid) => {
            invalid.field = "pool name";
            Error::InvalidInput(invalid)
        }
        other => other,
    })
}

/// Checks a credential name: 1 to 255 bytes of UTF-8, no control characters.
///
/// ```
/// assert!(credpool::validate_name("alice@example.com").is_ok());
/// assert!(credpool::validate_name("").is_err());
/// assert!(credpool::validate_name("bad\nname").is_err());
/// ```
pub fn validate_name(name: &str) -> Result<()> {
    let reason = if name.is_empty() {
        "must not be empty".to_string()
    } else if name.len() > MAX_NAME_BYTES {
        format!(
            "is {} bytes long; the limit is {MAX_NAME_BYTES}",
            name.len()
        )
    } else if let Some(position) = name.chars().position(char::is_control) {
        format!("contains a control character at character {position}")
    } else {
        return Ok(());
    };
    Err(InvalidInput::new("name", reason).into())
}

/// The state of a credential, as [`Pool::list`](crate::Pool::list) reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CredentialState {
    /// Can be handed out now (some capacity is free).
    Available,
    /// Every unit of capacity is leased.
    Leased,
    /// Rate limited: not handed out before `until`.
    CoolingDown {
        /// When it may be handed out again.
        until: SystemTime,
    },
    /// Banned or invalid: not handed out until an operator enables it.
    Disabled {
        /// Why it was disabled.
        reason: String,
    },
}

impl CredentialState {
    /// A short word for tables: `available`, `leased`, `cooling`, `disabled`.
    pub fn label(&self) -> &'static str {
        match self {
            CredentialState::Available => "available",
            CredentialState::Leased => "leased",
            CredentialState::CoolingDown { .. } => "cooling",
            CredentialState::Disabled { .. } => "disabled",
        }
    }
}

/// What a store knows about one credential, without its secret.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct CredentialInfo {
    /// The store's id.
    pub id: CredentialId,
    /// The name.
    pub name: String,
    /// How many leases may hold it at once.
    pub capacity: u32,
    /// How many leases hold it now.
    pub holders: u32,
    /// Its state.
    pub state: CredentialState,
    /// Whether it has extra text (the text itself is not shown).
    pub has_extra: bool,
    /// When it was last handed out.
    pub last_used_at: Option<SystemTime>,
    /// How many times it was handed out.
    pub use_count: u64,
    /// When it was added.
    pub created_at: SystemTime,
    /// Its quotas, scoped cool-downs and reported budgets, by scope (the
    /// scope of every scope first); empty when it has none.
    pub limits: Vec<ScopeLimit>,
    /// The leases out now, oldest first: who holds each, since when,
    /// until when.
    pub leases: Vec<LeaseInfo>,
}

/// A credential as a store keeps it, without its secret: what
/// [`CredentialInfo::new`] reads a credential's state from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredCredential {
    /// The store's id.
    pub id: CredentialId,
    /// The name.
    pub name: String,
    /// How many leases may hold it at once.
    pub capacity: u32,
    /// How many leases hold it now.
    pub holders: u32,
    /// Why it was disabled, if it is.
    pub disabled_reason: Option<String>,
    /// When its cool-down ends, if it has one (it may be over).
    pub cooling_until: Option<SystemTime>,
    /// Whether it has extra text.
    pub has_extra: bool,
    /// When it was last handed out.
    pub last_used_at: Option<SystemTime>,
    /// How many times it was handed out.
    pub use_count: u64,
    /// When it was added.
    pub created_at: SystemTime,
    /// Its limits by scope, as they are at the time it was read.
    pub limits: Vec<ScopeLimit>,
    /// The leases out now, oldest first; expired ones left out (a store
    /// that does not know them leaves this empty).
    pub leases: Vec<LeaseInfo>,
}

/// One lease out now, as [`Pool::list`](crate::Pool::list) shows it: who
/// holds it and since when, so that a lease of a process that died can
/// be told from a live one (and ended with [`Pool::revoke`](crate::Pool::revoke)).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct LeaseInfo {
    /// The process that holds it, as `<process id>@<host name>`, recorded
    /// at the grant (or when a waiter claimed it); `None` for a lease
    /// handed to another process's waiter that has not claimed it yet, or
    /// granted by a build that did not record holders.
    pub holder: Option<String>,
    /// When it was granted.
    pub acquired_at: SystemTime,
    /// When it expires unless renewed; `None` for a lease without a TTL.
    pub expires_at: Option<SystemTime>,
    /// The units of capacity it holds.
    pub units: u32,
}

impl LeaseInfo {
    /// The holder this process records for its leases:
    /// `<process id>@<host name>`.
    pub fn this_process() -> &'static str {
        crate::ids::this_process()
    }

    /// A lease held by `holder` since `acquired_at`.
    pub fn new(
        holder: Option<String>,
        acquired_at: SystemTime,
        expires_at: Option<SystemTime>,
        units: u32,
    ) -> Self {
        Self {
            holder,
            acquired_at,
            expires_at,
            units,
        }
    }
}

impl CredentialInfo {
    /// The info of a stored credential; `now` decides whether a cool-down is over.
    pub fn new(stored: StoredCredential, now: SystemTime) -> Self {
        let cooling = stored.cooling_until.filter(|&until| until > now);
        let kind = StateKind::of(
            stored.disabled_reason.is_some(),
            cooling.is_some(),
            stored.holders >= stored.capacity,
        );
        let state = match (kind, stored.disabled_reason, cooling) {
            (StateKind::Disabled, Some(reason), _) => CredentialState::Disabled { reason },
            (StateKind::CoolingDown, _, Some(until)) => CredentialState::CoolingDown { until },
            (StateKind::Leased, ..) => CredentialState::Leased,
            _ => CredentialState::Available,
        };
        Self {
            id: stored.id,
            name: stored.name,
            capacity: stored.capacity,
            holders: stored.holders,
            state,
            has_extra: stored.has_extra,
            last_used_at: stored.last_used_at,
            use_count: stored.use_count,
            created_at: stored.created_at,
            limits: stored.limits,
            leases: stored.leases,
        }
    }
}

/// Which state a credential is in, without its details. The one rule of
/// precedence: disabled, then cooling down, then leased (every unit out),
/// then available.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StateKind {
    Disabled,
    CoolingDown,
    Leased,
    Available,
}

impl StateKind {
    /// The state of a credential that is disabled or not, cooling down now
    /// or not, and has every unit of capacity leased or not.
    pub(crate) fn of(disabled: bool, cooling: bool, full: bool) -> Self {
        if disabled {
            StateKind::Disabled
        } else if cooling {
            StateKind::CoolingDown
        } else if full {
            StateKind::Leased
        } else {
            StateKind::Available
        }
    }
}

/// A pool in a store, and how many credentials it holds
/// ([`Pool::pools`](crate::Pool::pools)).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PoolSummary {
    /// The pool's name.
    pub name: String,
    /// Credentials in the pool.
    pub credentials: u64,
}

impl PoolSummary {
    pub(crate) fn new(name: String, credentials: u64) -> Self {
        Self { name, credentials }
    }
}

/// Counts of credentials by state, and the leases and waiters of the moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Credentials in the pool.
    pub total: u64,
    /// Credentials that can be handed out now.
    pub available: u64,
    /// Credentials whose every unit of capacity is leased.
    pub leased: u64,
    /// Credentials cooling down.
    pub cooling_down: u64,
    /// Credentials disabled.
    pub disabled: u64,
    /// Leases out now, across every process using the store.
    pub leases: u64,
    /// Grants ever made of the credentials in the pool now (their use
    /// counts summed): two readings a second apart give the grants per
    /// second, at any size of pool.
    pub uses: u64,
    /// Credentials that some scope's limits refuse now (a scoped cool-down,
    /// a used-up quota or reported budget of one scope), whatever their
    /// state: they may still serve other scopes. A block of every scope
    /// counts as cooling down instead.
    pub scope_blocked: u64,
    /// Tasks waiting in `acquire`: in every process, on a store that keeps
    /// its waiting line (SQLite, Postgres: their live tickets); in this
    /// process, on the memory store.
    pub waiters: u64,
}

impl Stats {
    /// Counts `credentials` credentials in the state `kind`, held by
    /// `holders` leases in all.
    pub(crate) fn add(&mut self, kind: StateKind, credentials: u64, holders: u64) {
        self.total += credentials;
        self.leases += holders;
        match kind {
            StateKind::Available => self.available += credentials,
            StateKind::Leased => self.leased += credentials,
            StateKind::CoolingDown => self.cooling_down += credentials,
            StateKind::Disabled => self.disabled += credentials,
        }
    }
}

/// How a lease ends: the holder's feedback about the credential.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReleaseOutcome {
    /// The credential worked; hand it out again.
    Success,
    /// Rate limited: do not hand it out again before this much time has passed.
    CoolDown(Duration),
    /// Banned or invalid: do not hand it out until an operator enables it.
    Disable(String),
    /// Rate limited as the API reported it: no more requests (or only a
    /// few more) until its window resets, in one scope or in all.
    Limited(Limited),
}

/// What a release does to its credential besides freeing the unit: the one
/// reading of a [`ReleaseOutcome`] that every store applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ReleaseEffect<'a> {
    /// Cool down for this long (a zero cool-down counts as a plain release).
    pub(crate) cool_for: Option<Duration>,
    /// Disable with this reason.
    pub(crate) disable: Option<&'a str>,
    /// A budget to keep in a scope's limits (scoped, or with requests left).
    pub(crate) report: Option<&'a Limited>,
}

impl ReleaseEffect<'_> {
    /// Until when the credential cools down in every scope, from `now`
    /// (ms), if it does.
    pub(crate) fn cooling_until(&self, now: i64) -> Option<i64> {
        self.cool_for
            .map(|pause| now.saturating_add(crate::time::duration_ms(pause)))
    }
}

impl ReleaseOutcome {
    /// What this outcome does to the credential.
    pub(crate) fn effect(&self) -> ReleaseEffect<'_> {
        let mut effect = ReleaseEffect {
            cool_for: None,
            disable: None,
            report: None,
        };
        match self {
            ReleaseOutcome::CoolDown(pause) if !pause.is_zero() => effect.cool_for = Some(*pause),
            ReleaseOutcome::Disable(reason) => effect.disable = Some(reason.as_str()),
            ReleaseOutcome::Limited(limited) => effect.report = Some(limited),
            _ => {}
        }
        effect
    }

    /// A short word for logs and events: `success`, `cool-down`, `disable`,
    /// `limited`.
    pub fn label(&self) -> &'static str {
        match self {
            ReleaseOutcome::Success => "success",
            ReleaseOutcome::CoolDown(_) => "cool-down",
            ReleaseOutcome::Disable(_) => "disable",
            ReleaseOutcome::Limited(_) => "limited",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Random strings of letters, multi-byte characters and control
    /// characters, around the length limit: the check never panics, takes
    /// exactly the names the rules allow, and a refusal names the field.
    #[test]
    fn random_names_are_checked_by_the_rules() {
        let mut rng = fastrand::Rng::with_seed(3);
        let alphabet = [
            'a', 'Z', '0', ' ', '-', 'é', '日', '🔑', '\n', '\0', '\u{7f}', '\u{9f}',
        ];
        let mut accepted = 0;
        for _ in 0..20_000 {
            let length = match rng.u8(..4) {
                0 => rng.usize(0..4),
                1 => rng.usize(60..70),
                _ => rng.usize(240..262),
            };
            let name: String = (0..length)
                .map(|_| {
                    if rng.u8(..50) == 0 {
                        alphabet[rng.usize(..alphabet.len())]
                    } else {
                        alphabet[rng.usize(..4)]
                    }
                })
                .collect();
            let allowed = !name.is_empty()
                && name.len() <= MAX_NAME_BYTES
                && !name.chars().any(|c| c.is_control());
            match validate_name(&name) {
                Ok(()) => {
                    assert!(allowed, "took {name:?}");
                    accepted += 1;
                }
                Err(error) => {
                    assert!(!allowed, "refused {name:?}: {error}");
                    assert!(error.to_string().contains("name"), "{error}");
                }
            }
        }
        assert!(
            accepted > 1_000,
            "the generator makes good names too ({accepted})"
        );
    }
}
