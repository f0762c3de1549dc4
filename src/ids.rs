//! The values that name credentials and leases. A leaf: it imports nothing of the crate.

use std::fmt;
use std::sync::OnceLock;

/// This process as a lease's holder: `<process id>@<host name>`, what
/// `credpool list` shows so that a stale lease can be told from a live one.
pub(crate) fn this_process() -> &'static str {
    static HOLDER: OnceLock<String> = OnceLock::new();
    HOLDER.get_or_init(|| format!("{}@{}", std::process::id(), host_name()))
}

/// The machine's host name, as well as std can tell it without a C call:
/// the kernel's (Linux), else the shell's variables, else `localhost`.
fn host_name() -> String {
    let from_kernel = std::fs::read_to_string("/proc/sys/kernel/hostname").ok();
    let from_env = || {
        ["HOSTNAME", "COMPUTERNAME"]
            .iter()
            .find_map(|name| std::env::var(name).ok())
    };
    from_kernel
        .or_else(from_env)
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}

/// The store's id of a credential: stable for the credential's life, never reused
/// by a store for another credential.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CredentialId(u64);

impl CredentialId {
    /// Wraps a raw id, e.g. one sent by another process.
    pub const fn new(raw: u64) -> Self {
        Self(raw)
    }

    /// The raw id.
    pub const fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for CredentialId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// A lease's fencing token: unique within its store, and larger for every
/// later grant, so a stale holder can always be told from the current one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LeaseId(u64);

impl LeaseId {
    /// Wraps a raw id, e.g. one sent by another process.
    pub const fn new(raw: u64) -> Self {
        Self(raw)
    }

    /// The raw id.
    pub const fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for LeaseId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A lease named by value, without the guard: what a lease becomes with
/// [`Lease::into_token`](crate::Lease::into_token), or what another process sends to have a lease released.
///
/// A store refuses a token for a lease it does not hold (fencing).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LeaseToken {
    credential_id: CredentialId,
    lease_id: LeaseId,
}

impl LeaseToken {
    /// A token for the given credential and lease.
    pub const fn new(credential_id: CredentialId, lease_id: LeaseId) -> Self {
        Self {
            credential_id,
            lease_id,
        }
    }

    /// The credential's id.
    pub const fn credential_id(&self) -> CredentialId {
        self.credential_id
    }

    /// The lease's id.
    pub const fn lease_id(&self) -> LeaseId {
        self.lease_id
    }
}

/// `CREDENTIAL.LEASE`, the two ids: what `credpool acquire` prints and
/// `credpool release` reads.
impl fmt::Display for LeaseToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.credential_id.0, self.lease_id.0)
    }
}

/// Reads a token as [`Display`](fmt::Display) writes it.
///
/// ```
/// use credpool::LeaseToken;
/// let token: LeaseToken = "7.1234".parse().unwrap();
/// assert_eq!((token.credential_id().get(), token.lease_id().get()), (7, 1234));
/// assert_eq!(token.to_string(), "7.1234");
/// assert!("7".parse::<LeaseToken>().is_err());
/// ```
impl std::str::FromStr for LeaseToken {
    type Err = ParseTokenError;

    fn from_str(text: &str) -> Result<Self, ParseTokenError> {
        let (credential, lease) = text.trim().split_once('.').ok_or(ParseTokenError)?;
        let number = |part: &str| part.parse::<u64>().map_err(|_| ParseTokenError);
        Ok(Self::new(
            CredentialId::new(number(credential)?),
            LeaseId::new(number(lease)?),
        ))
    }
}

/// A lease token that is not `CREDENTIAL.LEASE` (two whole numbers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParseTokenError;

impl fmt::Display for ParseTokenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a lease token is two whole numbers joined by a dot, such as 7.1234 (what `credpool acquire` printed)")
    }
}

impl std::error::Error for ParseTokenError {}
