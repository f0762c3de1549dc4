//! Leases from the shell: `acquire` prints one (its token outlives the
//! process), `release TOKEN` gives it back, `reset-locks` ends cool-downs.

use std::time::Duration;

use credpool::store::Want;
use credpool::{Error, LeaseToken, Limited, Pool, ReleaseOutcome, Store};

use super::{duration, Failure, Outcome};

/// `credpool acquire`.
#[derive(clap::Args, Debug)]
pub(crate) struct AcquireArgs {
    /// A credential that may serve this scope now (an endpoint, say).
    #[arg(short, long)]
    scope: Option<String>,
    /// This credential, and no other.
    #[arg(short, long, value_name = "NAME")]
    name: Option<String>,
    /// Take this many units of one credential's capacity at once (a heavy
    /// job); they count as as many grants against its quotas.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=i64::from(credpool::MAX_UNITS)), value_name = "N")]
    units: u32,
    /// How long the lease lives unless released first.
    #[arg(short, long, default_value = "60s", value_parser = duration::parse_positive, value_name = "DURATION")]
    pub(crate) ttl: Duration,
    /// How long to wait for a credential to come free [default: 0, not at all].
    #[arg(short, long, value_parser = duration::parse, value_name = "DURATION")]
    wait: Option<Duration>,
    /// Print JSON.
    #[arg(short, long)]
    json: bool,
    /// Print the secret and extra text too.
    #[arg(long)]
    show_secrets: bool,
}

/// `credpool release`.
#[derive(clap::Args, Debug)]
pub(crate) struct ReleaseArgs {
    /// The lease's token, as `credpool acquire` printed it.
    token: String,
    /// Rate limited: not handed out again for this long.
    #[arg(long, value_parser = duration::parse_positive, value_name = "DURATION", conflicts_with = "disable")]
    cool_down: Option<Duration>,
    /// The cool-down concerns this scope only.
    #[arg(long, requires = "cool_down")]
    scope: Option<String>,
    /// Banned or invalid: not handed out until enabled.
    #[arg(long, value_name = "REASON")]
    disable: Option<String>,
}

/// `credpool reset-locks`.
#[derive(clap::Args, Debug)]
pub(crate) struct ResetArgs {
    /// Only this credential [default: every one].
    name: Option<String>,
    /// Only this scope's cool-downs [default: every scope's, and the
    /// credential's own].
    #[arg(long)]
    scope: Option<String>,
}

/// Leases a credential and prints it; the lease outlives this process
/// (until its TTL, or `credpool release TOKEN`).
pub(crate) async fn acquire<S: Store>(pool: &Pool<S>, args: AcquireArgs) -> Outcome {
    let mut want = Want::any();
    if let Some(scope) = &args.scope {
        want = want.in_scope(scope)?;
    }
    if let Some(name) = &args.name {
        want = want.named(name)?;
    }
    want = want.units(args.units)?;
    let lease = match args.wait.filter(|wait| !wait.is_zero()) {
        Some(wait) => match pool.acquire_matching_timeout(&want, wait).await {
            Err(Error::Timeout { .. }) => None,
            other => Some(other?),
        },
        None => pool.try_acquire_matching(&want).await?,
    };
    let Some(lease) = lease else {
        let waited = match args.wait {
            Some(wait) if !wait.is_zero() => format!("within {}", humantime::format_duration(wait)),
            _ => "now (add --wait DURATION to wait for one)".to_string(),
        };
        return Err(Failure(format!(
            "no credential in pool `{}` came free for {want} {waited}",
            pool.name()
        )));
    };
    let credential = lease.credential().clone();
    let units = lease.units();
    let expires = lease.expires_at().map(super::duration::rfc3339);
    let token = lease.into_token();
    if args.json {
        let mut object = serde_json::json!({
            "token": token.to_string(),
            "name": credential.name(),
            "units": units,
            "expires_at": expires.map(|at| at.to_string()),
        });
        if args.show_secrets {
            object["secret"] = credential.secret().expose().into();
            object["extra"] = credential.extra().into();
        }
        outln!("{object}");
    } else {
        outln!("token   {token}");
        outln!("name    {}", credential.name());
        if units > 1 {
            outln!("units   {units}");
        }
        if let Some(at) = expires {
            outln!("expires {at}");
        }
        if args.show_secrets {
            outln!("secret  {}", credential.secret().expose());
            if let Some(extra) = credential.extra() {
                outln!("extra   {extra}");
            }
        }
    }
    Ok(())
}

/// Gives back the lease a token names, with its outcome.
pub(crate) async fn release<S: Store>(pool: &Pool<S>, args: ReleaseArgs) -> Outcome {
    let token: LeaseToken = args
        .token
        .parse()
        .map_err(|error| Failure(format!("{:?}: {error}", args.token)))?;
    let outcome = match (args.cool_down, args.scope, args.disable) {
        (Some(pause), Some(scope), _) => {
            ReleaseOutcome::Limited(Limited::after(pause).scope(&scope)?)
        }
        (Some(pause), None, _) => ReleaseOutcome::CoolDown(pause),
        (None, _, Some(reason)) => ReleaseOutcome::Disable(reason),
        (None, _, None) => ReleaseOutcome::Success,
    };
    pool.release_token(token, outcome.clone()).await?;
    outln!("released lease {token} ({})", outcome.label());
    Ok(())
}

/// Ends cool-downs (twscrape's `reset_locks`).
pub(crate) async fn reset_locks<S: Store>(pool: &Pool<S>, args: ResetArgs) -> Outcome {
    let reset = pool
        .reset_limits(args.name.as_deref(), args.scope.as_deref())
        .await?;
    let scope = args
        .scope
        .map_or(String::new(), |scope| format!(" in scope {scope:?}"));
    match reset {
        0 => outln!("nothing was cooling down{scope}"),
        1 => outln!("ended the cool-downs of 1 credential{scope}"),
        n => outln!("ended the cool-downs of {n} credentials{scope}"),
    }
    Ok(())
}
