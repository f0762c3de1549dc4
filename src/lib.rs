#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![warn(missing_docs, missing_debug_implementations, unreachable_pub)]

mod credential;
mod error;
mod ids;
mod limits;
mod pool;
pub mod store;
mod time;

pub use credential::{
    validate_name, Credential, CredentialChange, CredentialInfo, CredentialState, LeaseInfo,
    NewCredential, PoolSummary, ReleaseOutcome, Secret, Stats, StoredCredential, MAX_CAPACITY,
    MAX_EXTRA_BYTES, MAX_NAME_BYTES, MAX_SECRET_BYTES, MIN_LEASE_TTL,
};
pub use error::{Error, InvalidInput, Result};
pub use ids::{CredentialId, LeaseId, LeaseToken, ParseTokenError};
pub use limits::{Limited, Rate, ScopeLimit, MAX_RATE_COUNT, MAX_SCOPE_BYTES};
pub use pool::events::{Event, Events};
pub use pool::lease::Lease;
pub use pool::{Pool, PoolBuilder};
pub use store::memory::MemoryStore;
pub use store::{
    Added, Admin, ExpiredLease, Grant, GrantAnswer, GrantAttempt, Granting, Leases, OnDuplicate,
    Options, Receipt, Store, StoreSettings, Want, MAX_UNITS,
};
