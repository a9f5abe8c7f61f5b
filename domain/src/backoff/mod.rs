//! The restart arithmetic: should an exited process be restarted, and when?
//!
//! Pure functions over a [`RestartPolicy`] and a [`RestartWindow`]; the caller
//! supplies the time and a jitter sample so the result is reproducible.
//!
//! - `Never` never restarts; `OnFailure` does not restart a clean exit.
//! - A run of at least `reset_after_ms` counts as stable: the backoff exponent
//!   (`consecutive`) starts again from 0.
//! - Intensity: if `intensity` restarts already happened in
//!   `(now - period, now]`, the decision is [`RestartDecision::GiveUp`].
//! - Delay: `min(max_delay, initial * multiplier^consecutive)`, then spread by
//!   `delay * (1 - jitter + 2 * jitter * sample)` and clamped to
//!   `[0, max_delay]`.
//!
//! Use [`decide`] to choose and [`record_restart`] to remember a restart that
//! was decided.

use chrono::{DateTime, TimeDelta, Utc};
use serde::{Deserialize, Serialize};

use crate::spec::{RestartMode, RestartPolicy};

/// Restarts the backoff remembers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestartWindow {
    /// Times of restarts still inside the intensity period, oldest first.
    pub recent: Vec<DateTime<Utc>>,
    /// Restarts since the last stable run: the backoff exponent.
    pub consecutive: u32,
}

/// How a process ended, as far as restart policy cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExitKind {
    Success,
    Failure,
}

impl ExitKind {
    /// Exit code 0 without a signal is success; anything else (a nonzero
    /// code, a signal, or nothing known) is failure.
    pub fn from_exit(code: Option<i32>, signal: Option<i32>) -> Self {
        match (code, signal) {
            (Some(0), None) => Self::Success,
            _ => Self::Failure,
        }
    }
}

/// What to do about an exited process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RestartDecision {
    /// Start it again after `delay_ms`; `attempt` counts from 1 since the last
    /// stable run.
    Restart { delay_ms: u64, attempt: u32 },
    /// Too many restarts in the period: the agent has failed.
    GiveUp { restarts_in_period: u32 },
    /// Leave it stopped (policy says so, or we asked it to stop).
    DoNotRestart,
}

/// Decides what to do after a process that ran for `ran_for_ms` exited at `now`.
///
/// `jitter_sample` is a uniform sample in `[0, 1)`; values outside are clamped
/// and a non-finite value means "no jitter".
pub fn decide(
    policy: &RestartPolicy,
    window: &RestartWindow,
    exit: ExitKind,
    ran_for_ms: u64,
    now: DateTime<Utc>,
    jitter_sample: f64,
) -> RestartDecision {
    match (policy.mode, exit) {
        (RestartMode::Never, _) | (RestartMode::OnFailure, ExitKind::Success) => {
            return RestartDecision::DoNotRestart;
        }
        (RestartMode::Always | RestartMode::OnFailure, _) => {}
    }
    let window = normalized(window, policy, now, ran_for_ms);
    let in_period = window.recent.iter().filter(|t| **t <= now).count();
    let in_period = u32::try_from(in_period).unwrap_or(u32::MAX);
    if in_period >= policy.intensity {
        return RestartDecision::GiveUp {
            restarts_in_period: in_period,
        };
    }
    RestartDecision::Restart {
        delay_ms: delay_ms(policy, window.consecutive, jitter_sample),
        attempt: window.consecutive.saturating_add(1),
    }
}

/// Remembers a restart decided at `now` after a run of `ran_for_ms`.
pub fn record_restart(
    window: &mut RestartWindow,
    policy: &RestartPolicy,
    now: DateTime<Utc>,
    ran_for_ms: u64,
) {
    *window = normalized(window, policy, now, ran_for_ms);
    window.recent.push(now);
    window.consecutive = window.consecutive.saturating_add(1);
}

/// The backoff delay before jitter is `min(max, initial * multiplier^n)`;
/// then jitter spreads it and the result is clamped to `[0, max]`.
pub fn delay_ms(policy: &RestartPolicy, consecutive: u32, jitter_sample: f64) -> u64 {
    if policy.initial_delay_ms == 0 {
        return 0;
    }
    let max = policy.max_delay_ms as f64;
    let exponent = i32::try_from(consecutive).unwrap_or(i32::MAX);
    let base = (policy.initial_delay_ms as f64 * policy.multiplier.powi(exponent)).min(max);
    let jitter = if policy.jitter.is_finite() {
        policy.jitter.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let sample = if jitter_sample.is_finite() {
        jitter_sample.clamp(0.0, 1.0)
    } else {
        0.5
    };
    let spread = base * (1.0 - jitter + 2.0 * jitter * sample);
    // `as` saturates; a NaN (from a nonsensical policy) becomes 0.
    spread.clamp(0.0, max).round() as u64
}

/// The window as seen at `now`: stable runs reset the exponent and restarts
/// older than the period are forgotten.
fn normalized(
    window: &RestartWindow,
    policy: &RestartPolicy,
    now: DateTime<Utc>,
    ran_for_ms: u64,
) -> RestartWindow {
    let cutoff = i64::try_from(policy.period_ms)
        .ok()
        .and_then(TimeDelta::try_milliseconds)
        .and_then(|period| now.checked_sub_signed(period))
        .unwrap_or(DateTime::<Utc>::MIN_UTC);
    RestartWindow {
        recent: window
            .recent
            .iter()
            .copied()
            .filter(|t| *t > cutoff)
            .collect(),
        consecutive: if ran_for_ms >= policy.reset_after_ms {
            0
        } else {
            window.consecutive
        },
    }
}

#[cfg(test)]
mod tests;
