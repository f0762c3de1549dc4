//! The values that name credentials and leases. A leaf: it imports nothing of the crate.

use std::fmt;

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
