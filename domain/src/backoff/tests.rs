use chrono::TimeZone;

use super::*;

fn t(seconds: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(1_700_000_000 + seconds, 0)
        .single()
        .expect("valid time")
}

/// The default policy without jitter, so delays are exact.
fn policy() -> RestartPolicy {
    RestartPolicy {
        jitter: 0.0,
        ..RestartPolicy::default()
    }
}

/// Exits after `ran_for_ms`, recording each restart, and returns the decisions.
fn crash_loop(policy: &RestartPolicy, times: &[i64], ran_for_ms: u64) -> Vec<RestartDecision> {
    let mut window = RestartWindow::default();
    times
        .iter()
        .map(|&s| {
            let d = decide(policy, &window, ExitKind::Failure, ran_for_ms, t(s), 0.5);
            if matches!(d, RestartDecision::Restart { .. }) {
                record_restart(&mut window, policy, t(s), ran_for_ms);
            }
            d
        })
        .collect()
}

fn restart(delay_ms: u64, attempt: u32) -> RestartDecision {
    RestartDecision::Restart { delay_ms, attempt }
}

#[test]
fn exit_kind_from_code_and_signal() {
    assert_eq!(ExitKind::from_exit(Some(0), None), ExitKind::Success);
    assert_eq!(ExitKind::from_exit(Some(1), None), ExitKind::Failure);
    assert_eq!(ExitKind::from_exit(None, Some(9)), ExitKind::Failure);
    assert_eq!(ExitKind::from_exit(Some(0), Some(15)), ExitKind::Failure);
    assert_eq!(ExitKind::from_exit(None, None), ExitKind::Failure);
}

#[test]
fn mode_never_and_on_failure() {
    let w = RestartWindow::default();
    let never = RestartPolicy {
        mode: RestartMode::Never,
        ..policy()
    };
    assert_eq!(
        decide(&never, &w, ExitKind::Failure, 0, t(0), 0.5),
        RestartDecision::DoNotRestart
    );
    let on_failure = policy();
    assert_eq!(
        decide(&on_failure, &w, ExitKind::Success, 0, t(0), 0.5),
        RestartDecision::DoNotRestart
    );
    assert_eq!(
        decide(&on_failure, &w, ExitKind::Failure, 0, t(0), 0.5),
        restart(100, 1)
    );
    let always = RestartPolicy {
        mode: RestartMode::Always,
        ..policy()
    };
    assert_eq!(
        decide(&always, &w, ExitKind::Success, 0, t(0), 0.5),
        restart(100, 1)
    );
}

#[test]
fn delay_doubles_then_caps() {
    let p = RestartPolicy {
        intensity: 100,
        max_delay_ms: 1_000,
        ..policy()
    };
    let times: Vec<i64> = (0..6).collect();
    assert_eq!(
        crash_loop(&p, &times, 10),
        vec![
            restart(100, 1),
            restart(200, 2),
            restart(400, 3),
            restart(800, 4),
            restart(1_000, 5),
            restart(1_000, 6),
        ]
    );
    assert_eq!(
        delay_ms(&p, u32::MAX, 0.5),
        1_000,
        "a huge exponent stays capped"
    );
}

#[test]
fn jitter_stays_within_bounds() {
    let p = RestartPolicy {
        jitter: 0.25,
        initial_delay_ms: 1_000,
        max_delay_ms: 1_500,
        ..policy()
    };
    assert_eq!(delay_ms(&p, 0, 0.0), 750);
    assert_eq!(delay_ms(&p, 0, 0.5), 1_000);
    assert_eq!(delay_ms(&p, 0, 0.999_999), 1_250);
    for i in 0..=100 {
        let d = delay_ms(&p, 0, f64::from(i) / 100.0);
        assert!((750..=1_250).contains(&d), "{d}");
        let capped = delay_ms(&p, 1, f64::from(i) / 100.0);
        assert!(
            (1_125..=1_500).contains(&capped),
            "never above max: {capped}"
        );
    }
    assert_eq!(delay_ms(&p, 0, 7.0), 1_250, "samples are clamped");
    assert_eq!(
        delay_ms(&p, 0, f64::NAN),
        1_000,
        "a NaN sample means no jitter"
    );
    let zero = RestartPolicy {
        initial_delay_ms: 0,
        jitter: 1.0,
        ..policy()
    };
    assert_eq!(delay_ms(&zero, 5, 0.9), 0, "initial delay 0 is always 0");
}

#[test]
fn a_stable_run_resets_the_exponent() {
    let p = RestartPolicy {
        intensity: 100,
        ..policy()
    };
    let mut w = RestartWindow::default();
    for s in 0..3 {
        record_restart(&mut w, &p, t(s), 10);
    }
    assert_eq!(w.consecutive, 3);
    assert_eq!(
        decide(&p, &w, ExitKind::Failure, 59_999, t(5), 0.5),
        restart(800, 4)
    );
    assert_eq!(
        decide(&p, &w, ExitKind::Failure, 60_000, t(5), 0.5),
        restart(100, 1)
    );
    record_restart(&mut w, &p, t(70), 60_000);
    assert_eq!(w.consecutive, 1, "reset, then this restart");
}

#[test]
fn intensity_allows_n_restarts_in_the_period() {
    let p = RestartPolicy {
        intensity: 3,
        period_ms: 10_000,
        ..policy()
    };
    let d = crash_loop(&p, &[0, 1, 2, 3], 10);
    assert!(matches!(d[2], RestartDecision::Restart { attempt: 3, .. }));
    assert_eq!(
        d[3],
        RestartDecision::GiveUp {
            restarts_in_period: 3
        }
    );

    // Restarts at 0, 5, 6; at 10s the one at 0 is exactly `period` old and
    // falls out of (now - period, now], at 11s the window is full again.
    let d = crash_loop(&p, &[0, 5, 6, 10, 11], 10);
    assert!(matches!(d[3], RestartDecision::Restart { .. }), "{d:?}");
    assert_eq!(
        d[4],
        RestartDecision::GiveUp {
            restarts_in_period: 3
        }
    );
}

#[test]
fn old_restarts_are_forgotten() {
    let p = RestartPolicy {
        intensity: 1,
        period_ms: 1_000,
        ..policy()
    };
    let mut w = RestartWindow::default();
    record_restart(&mut w, &p, t(0), 10);
    assert!(matches!(
        decide(&p, &w, ExitKind::Failure, 10, t(0), 0.5),
        RestartDecision::GiveUp { .. }
    ));
    assert!(matches!(
        decide(&p, &w, ExitKind::Failure, 10, t(2), 0.5),
        RestartDecision::Restart { .. }
    ));
    record_restart(&mut w, &p, t(5), 10);
    assert_eq!(w.recent, vec![t(5)], "the restart at 0 was pruned");
    assert_eq!(w.consecutive, 2, "short runs keep the exponent");
}

#[test]
fn decision_serde_shape() {
    let json = serde_json::to_value(restart(5, 2)).expect("ser");
    assert_eq!(
        json,
        serde_json::json!({"Restart": {"delay_ms": 5, "attempt": 2}})
    );
    let unit = serde_json::to_value(RestartDecision::DoNotRestart).expect("ser");
    assert_eq!(unit, serde_json::json!("DoNotRestart"));
}
