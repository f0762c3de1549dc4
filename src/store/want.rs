//! What one grant asks for: any credential, one that serves a scope, one
//! by name. Above the credential and the limits, which it checks against.

use std::fmt;
use std::sync::Arc;

use crate::credential::validate_name;
use crate::error::Result;
use crate::limits::validate_scope;

/// What one grant asks for: the default (any credential, default scope),
/// a scope, a named credential, or both.
///
/// ```
/// use credpool::Want;
/// let want = Want::scope("search")?.named("alice")?;
/// assert_eq!(want.scope_name(), Some("search"));
/// assert_eq!(want.name(), Some("alice"));
/// assert!(Want::any().is_any());
/// # Ok::<(), credpool::Error>(())
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Want {
    scope: Option<Arc<str>>,
    name: Option<Arc<str>>,
}

impl Want {
    /// Any credential, for the default scope: what [`Pool::acquire`](crate::Pool::acquire) asks.
    pub fn any() -> Self {
        Self::default()
    }

    /// Any credential that may serve `scope` now.
    pub fn scope(scope: &str) -> Result<Self> {
        Self::any().in_scope(scope)
    }

    /// The same, for `scope`.
    pub fn in_scope(mut self, scope: &str) -> Result<Self> {
        validate_scope(scope)?;
        self.scope = Some(scope.into());
        Ok(self)
    }

    /// Only the credential named `name`.
    pub fn named(mut self, name: &str) -> Result<Self> {
        validate_name(name)?;
        self.name = Some(name.into());
        Ok(self)
    }

    /// The scope, if not the default.
    pub fn scope_name(&self) -> Option<&str> {
        self.scope.as_deref()
    }

    /// The credential's name, when one is asked for.
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// Whether this is the plain ask: any credential, default scope.
    pub fn is_any(&self) -> bool {
        self.scope.is_none() && self.name.is_none()
    }

    /// The scope as stores key it: `""` for the default.
    pub(crate) fn scope_key(&self) -> &str {
        self.scope.as_deref().unwrap_or("")
    }
}

impl fmt::Display for Want {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.name, &self.scope) {
            (None, None) => f.write_str("a free credential"),
            (None, Some(scope)) => write!(f, "a free credential for scope {scope:?}"),
            (Some(name), None) => write!(f, "credential {name:?}"),
            (Some(name), Some(scope)) => write!(f, "credential {name:?} for scope {scope:?}"),
        }
    }
}
