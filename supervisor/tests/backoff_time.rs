//! The restart arithmetic driven by (paused) tokio time, the way the
//! supervisor's workers drive it: each exit is decided at the current
//! instant, the worker sleeps the decided delay, the next process crashes
//! after running a while. Minutes of a crash loop take microseconds, and
//! every delay is checked exactly (the end-to-end runs with real processes
//! are in tests/supervisor.rs).
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use opmas_domain::backoff::{ExitKind, RestartDecision, RestartWindow, decide, record_restart};
use opmas_domain::{RestartMode, RestartPolicy};
use tokio::time::Instant;

fn epoch() -> DateTime<Utc> {
    "2026-01-01T00:00:00Z".parse().unwrap()
}

/// Runs a crash loop under `policy`: every process runs `runs_for`, then
/// fails; returns the delays decided, in order, and when the loop gave up
/// (with the restarts counted in the period), if it did within `horizon`.
async fn crash_loop(
    policy: &RestartPolicy,
    runs_for: Duration,
    horizon: Duration,
) -> (Vec<u64>, Option<(Duration, u32)>) {
    let start = Instant::now();
    let now = || epoch() + TimeDelta::from_std(start.elapsed()).unwrap();
    let mut window = RestartWindow::default();
    let mut delays = Vec::new();
    while start.elapsed() < horizon {
        tokio::time::sleep(runs_for).await; // the process runs, then crashes
        let ran = u64::try_from(runs_for.as_millis()).unwrap();
        // jitter sample 0.5: no spread, exact delays
        match decide(policy, &window, ExitKind::Failure, ran, now(), 0.5) {
            RestartDecision::Restart { delay_ms, .. } => {
                record_restart(&mut window, policy, now(), ran);
                delays.push(delay_ms);
                tokio::time::sleep(Duration::from_millis(delay_ms)).await;
            }
            RestartDecision::GiveUp { restarts_in_period } => {
                return (delays, Some((start.elapsed(), restarts_in_period)));
            }
            RestartDecision::DoNotRestart => panic!("a failure under on_failure is restarted"),
        }
    }
    (delays, None)
}

fn policy() -> RestartPolicy {
    RestartPolicy {
        mode: RestartMode::OnFailure,
        initial_delay_ms: 1_000,
        max_delay_ms: 8_000,
        multiplier: 2.0,
        jitter: 0.0,
        reset_after_ms: 60_000,
        intensity: 5,
        period_ms: 60_000,
        failed_cooldown_ms: None,
    }
}

#[tokio::test(start_paused = true)]
async fn delays_double_up_to_the_maximum_then_the_intensity_limit_gives_up() {
    // Quick crashes: 1, 2, 4, 8, 8 s, then the 6th exit finds 5 restarts in
    // the last minute and gives up.
    let (delays, gave_up) = crash_loop(
        &policy(),
        Duration::from_millis(100),
        Duration::from_secs(600),
    )
    .await;
    assert_eq!(delays, [1_000, 2_000, 4_000, 8_000, 8_000]);
    let (at, restarts) = gave_up.expect("the intensity limit");
    assert_eq!(restarts, 5);
    // 6 runs of 100 ms and 23 s of delays.
    assert_eq!(at, Duration::from_millis(6 * 100 + 23_000));
}

#[tokio::test(start_paused = true)]
async fn restarts_spread_wider_than_the_period_never_give_up() {
    // Each process runs 20 s: at most 3 restarts fall in any minute.
    let mut p = policy();
    p.intensity = 4;
    let (delays, gave_up) =
        crash_loop(&p, Duration::from_secs(20), Duration::from_secs(3_600)).await;
    assert!(gave_up.is_none(), "gave up after {delays:?}");
    assert!(delays.len() > 100, "an hour of restarts: {}", delays.len());
    assert!(delays.iter().all(|d| *d <= 8_000));
}

#[tokio::test(start_paused = true)]
async fn a_stable_run_resets_the_backoff() {
    let p = policy();
    let start = Instant::now();
    let now = || epoch() + TimeDelta::from_std(start.elapsed()).unwrap();
    let mut window = RestartWindow::default();
    let mut delays = Vec::new();
    // Three quick crashes, one run longer than reset_after, one quick crash.
    for runs_for in [100, 100, 100, 61_000, 100] {
        tokio::time::sleep(Duration::from_millis(runs_for)).await;
        let RestartDecision::Restart { delay_ms, attempt } =
            decide(&p, &window, ExitKind::Failure, runs_for, now(), 0.5)
        else {
            panic!("restart expected");
        };
        delays.push((delay_ms, attempt));
        record_restart(&mut window, &p, now(), runs_for);
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
    }
    assert_eq!(
        delays,
        [(1_000, 1), (2_000, 2), (4_000, 3), (1_000, 1), (2_000, 2)],
        "the stable run started the exponent again"
    );
}

#[tokio::test(start_paused = true)]
async fn jitter_stays_within_its_band() {
    let mut p = policy();
    p.jitter = 0.25;
    let window = RestartWindow::default();
    for sample in [0.0, 0.1, 0.5, 0.9, 0.999] {
        let RestartDecision::Restart { delay_ms, .. } =
            decide(&p, &window, ExitKind::Failure, 100, epoch(), sample)
        else {
            panic!("restart expected");
        };
        assert!((750..=1_250).contains(&delay_ms), "{sample}: {delay_ms}");
        let before = Instant::now();
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
        assert_eq!(before.elapsed(), Duration::from_millis(delay_ms));
    }
}
