//! Metrics and logs projectors, rollups, retention and log search against
//! the real Postgres and nats-server (telemetry published by hand, as a
//! supervisor would).
#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use chrono::{DateTime, Utc};
use opmas_domain::telemetry::{LogLevel, LogLine, LogStream, MetricSample};
use opmas_projections::maintenance::{Removed, Retention, retain, rollup};
use opmas_projections::search::{LogQuery, search_logs};
use support::*;
use tokio_util::sync::CancellationToken;

fn at(secs: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(secs, 0).unwrap()
}

fn sample(agent: &str, t: DateTime<Utc>, cpu: f64, rss: u64) -> MetricSample {
    MetricSample {
        agent_id: agent.into(),
        node: "node-a".into(),
        pid: 7,
        at: t,
        cpu_percent: cpu,
        rss_bytes: rss,
        threads: 4,
        open_fds: 10 + rss % 3,
        last_heartbeat_at: None,
    }
}

fn line(agent: &str, t: DateTime<Utc>, level: LogLevel, text: &str) -> LogLine {
    LogLine {
        agent_id: agent.into(),
        node: "node-a".into(),
        pid: 7,
        at: t,
        stream: LogStream::Stdout,
        level,
        line: text.into(),
        dropped_before: 0,
    }
}

async fn count(db: &TestDb, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(&db.pool).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metrics_rollups_match_raw_and_retention_keeps_what_is_recent() {
    let db = TestDb::new().await;
    let streams = Streams::new().await;
    let js = streams.js();
    let now = at(Utc::now().timestamp() / 3600 * 3600); // an hour boundary
    let day = 86_400;
    let mut samples = Vec::new();
    for agent in ["m1", "m2"] {
        // three minutes of samples every 5 s in the previous hour, ...
        for i in 0..36 {
            let t = now - chrono::Duration::seconds(3600 - 5 * i);
            samples.push(sample(
                agent,
                t,
                (i * 7 % 100) as f64,
                1_000 + (i as u64 * 37) % 500,
            ));
        }
        // ... one 8 days old (raw expired, rollup kept) and one 100 days old.
        samples.push(sample(
            agent,
            now - chrono::Duration::seconds(8 * day),
            50.0,
            5,
        ));
        samples.push(sample(
            agent,
            now - chrono::Duration::seconds(100 * day),
            60.0,
            6,
        ));
    }
    for s in samples.iter().chain(samples.iter().take(3)) {
        let subject = streams.telemetry.metrics_subject(&s.agent_id);
        js.publish(subject, serde_json::to_vec(s).unwrap().into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    let cancel = CancellationToken::new();
    let projector = streams.projector(&db, streams.config(), &cancel);
    let total = samples.len() as i64;
    assert!(
        eventually(Duration::from_secs(30), || async {
            count(&db, "select count(*) from agent_metric_samples").await == total
        })
        .await
    );
    cancel.cancel();
    projector.await.unwrap();

    let minutes = rollup(&db.pool, now).await.unwrap();
    assert_eq!(minutes, 3 + 2, "three recent minutes and the two old ones");
    // Every 1m rollup equals the aggregate of its raw samples.
    let mismatches = count(
        &db,
        "
        select count(*) from agent_metric_rollups r
        full join (select agent_id, date_trunc('minute', at, 'UTC') b, count(*) n,
                          min(cpu_percent) mn, avg(cpu_percent) av, max(cpu_percent) mx,
                          (array_agg(cpu_percent order by at desc))[1] l,
                          max(rss_bytes)::float8 rmx, avg(rss_bytes)::float8 rav
                   from agent_metric_samples group by 1, 2) s
          on s.agent_id = r.agent_id and s.b = r.bucket and r.resolution = '1m'
        where (r.resolution = '1m' or r.resolution is null)
          and (r.samples is distinct from s.n or r.cpu_min is distinct from s.mn
            or abs(r.cpu_avg - s.av) > 1e-9 or r.cpu_max is distinct from s.mx
            or r.cpu_last is distinct from s.l or r.rss_max is distinct from s.rmx
            or abs(r.rss_avg - s.rav) > 1e-6 or r.agent_id is null or s.agent_id is null)",
    )
    .await;
    assert_eq!(mismatches, 0);
    // The hour rollup equals the raw data of that hour.
    let hour = count(
        &db,
        &format!(
            "
        select count(*) from agent_metric_rollups r
        join (select agent_id, count(*) n, avg(cpu_percent) av, max(cpu_percent) mx,
                     (array_agg(cpu_percent order by at desc))[1] l
              from agent_metric_samples where at >= '{0}'::timestamptz - interval '1 hour'
                and at < '{0}' group by 1) s on s.agent_id = r.agent_id
        where r.resolution = '1h' and r.bucket = '{0}'::timestamptz - interval '1 hour'
          and r.samples = s.n and abs(r.cpu_avg - s.av) < 1e-9 and r.cpu_max = s.mx
          and r.cpu_last = s.l",
            now.to_rfc3339()
        ),
    )
    .await;
    assert_eq!(hour, 2);
    assert_eq!(
        rollup(&db.pool, now).await.unwrap(),
        0,
        "nothing left to roll up"
    );

    // Live heartbeats: one of an agent silent for 8 days, one recent.
    for (agent, age_days) in [("gone", 8), ("here", 0)] {
        sqlx::query("insert into agent_heartbeats (agent_id, last_seen) values ($1, $2)")
            .bind(agent)
            .bind(now - chrono::Duration::days(age_days))
            .execute(&db.pool)
            .await
            .unwrap();
    }
    let removed = retain(
        &db.pool,
        &Retention {
            batch: 1,
            ..Retention::default()
        },
        now,
    )
    .await
    .unwrap();
    assert_eq!(
        removed,
        Removed {
            samples: 4,
            rollups: 4,
            logs: 0,
            heartbeats: 1,
        }
    );
    let kept: Vec<String> = sqlx::query_scalar("select agent_id from agent_heartbeats")
        .fetch_all(&db.pool)
        .await
        .unwrap();
    assert_eq!(kept, ["here"]);
    assert_eq!(
        count(&db, "select count(*) from agent_metric_samples").await,
        72
    );
    let oldest: DateTime<Utc> = sqlx::query_scalar("select min(bucket) from agent_metric_rollups")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(oldest, now - chrono::Duration::seconds(8 * day));
    streams.cleanup().await;
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn log_search_finds_lines_by_text_and_level_and_retention_drops_old_ones() {
    let db = TestDb::new().await;
    let streams = Streams::new().await;
    let js = streams.js();
    let now = Utc::now();
    let ago = |s: i64| now - chrono::Duration::seconds(s);
    let lines = [
        line("web", ago(60), LogLevel::Info, "GET /health 200 in 3ms"),
        line(
            "web",
            ago(50),
            LogLevel::Error,
            "connection refused by db-1:5432",
        ),
        line(
            "web",
            ago(40),
            LogLevel::Warn,
            "retrying CONNECTION to db-1",
        ),
        line("api", ago(30), LogLevel::Error, "connection reset by peer"),
        line("api", ago(20), LogLevel::Info, "100%_done \\ ok"),
        line(
            "web",
            ago(8 * 86_400),
            LogLevel::Error,
            "connection refused long ago",
        ),
    ];
    for l in &lines {
        let subject = streams
            .telemetry
            .logs_subject(&l.agent_id, l.level.as_str());
        js.publish(subject, serde_json::to_vec(l).unwrap().into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    let cancel = CancellationToken::new();
    let projector = streams.projector(&db, streams.config(), &cancel);
    assert!(
        eventually(Duration::from_secs(30), || async {
            count(&db, "select count(*) from agent_logs").await == 6
        })
        .await
    );
    cancel.cancel();
    projector.await.unwrap();

    let search = |q: LogQuery| {
        let pool = db.pool.clone();
        async move {
            search_logs(&pool, &LogQuery { limit: 100, ..q })
                .await
                .unwrap()
                .into_iter()
                .map(|r| r.line)
                .collect::<Vec<_>>()
        }
    };
    let text = |t: &str| Some(t.to_owned());
    assert_eq!(
        search(LogQuery {
            text: text("connection"),
            agent_id: Some("web".into()),
            ..Default::default()
        })
        .await,
        [
            "retrying CONNECTION to db-1",
            "connection refused by db-1:5432",
            "connection refused long ago"
        ]
    );
    assert_eq!(
        search(LogQuery {
            text: text("connection"),
            levels: vec!["error".into()],
            since: Some(ago(3600)),
            ..Default::default()
        })
        .await,
        [
            "connection reset by peer",
            "connection refused by db-1:5432"
        ]
    );
    assert_eq!(
        search(LogQuery {
            text: text("%_done \\"),
            ..Default::default()
        })
        .await,
        ["100%_done \\ ok"]
    );
    assert!(
        search(LogQuery {
            text: text("_one"),
            ..Default::default()
        })
        .await
        .is_empty()
    );

    let removed = retain(&db.pool, &Retention::default(), now).await.unwrap();
    assert_eq!(
        removed,
        Removed {
            samples: 0,
            rollups: 0,
            logs: 1,
            heartbeats: 0,
        }
    );
    assert_eq!(
        search(LogQuery {
            text: text("refused"),
            ..Default::default()
        })
        .await,
        ["connection refused by db-1:5432"]
    );
    streams.cleanup().await;
    db.cleanup().await;
}

/// A durable consumer left by an earlier version (explicit acks, one per
/// message) is replaced by one acking each batch once, which starts after
/// the checkpoint in Postgres: nothing is written twice, nothing skipped,
/// and once caught up nothing is left unacknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_old_explicit_ack_consumer_is_replaced_and_resumes_after_the_checkpoint() {
    use async_nats::jetstream::consumer::{AckPolicy, pull};
    let db = TestDb::new().await;
    let streams = Streams::new().await;
    let js = streams.js();
    let config = streams.config();
    let name = format!("{}_metrics", config.consumer_prefix);
    let publish = |s: MetricSample| {
        let js = js.clone();
        let subject = streams.telemetry.metrics_subject(&s.agent_id);
        async move {
            js.publish(subject, serde_json::to_vec(&s).unwrap().into())
                .await
                .unwrap()
                .await
                .unwrap()
                .sequence
        }
    };
    let base = at(Utc::now().timestamp() / 60 * 60 - 600);
    // Five samples "already written" by the old version: the checkpoint
    // says so, and their rows are not in the table (so a re-read shows).
    let mut last = 0;
    for i in 0..5 {
        last = publish(sample("old", base + chrono::Duration::seconds(i), 1.0, 1)).await;
    }
    let stream = js
        .get_stream(&streams.telemetry.metrics_stream)
        .await
        .unwrap();
    stream
        .create_consumer(pull::Config {
            durable_name: Some(name.clone()),
            ack_policy: AckPolicy::Explicit,
            ..Default::default()
        })
        .await
        .unwrap();
    sqlx::query(
        "insert into projection_consumers (name, stream, stream_sequence) values ($1, $2, $3)",
    )
    .bind(&name)
    .bind(&streams.telemetry.metrics_stream)
    .bind(i64::try_from(last).unwrap())
    .execute(&db.pool)
    .await
    .unwrap();
    for i in 0..7 {
        publish(sample("new", base + chrono::Duration::seconds(i), 2.0, 2)).await;
    }

    let cancel = CancellationToken::new();
    let projector = streams.projector(&db, config, &cancel);
    assert!(
        eventually(Duration::from_secs(30), || async {
            count(
                &db,
                "select count(*) from agent_metric_samples where agent_id = 'new'",
            )
            .await
                == 7
        })
        .await
    );
    assert_eq!(
        count(
            &db,
            "select count(*) from agent_metric_samples where agent_id = 'old'"
        )
        .await,
        0,
        "messages at or before the checkpoint are not delivered again"
    );
    let mut info = stream.consumer_info(&name).await.unwrap();
    assert_eq!(info.config.ack_policy, AckPolicy::All);
    // Every delivered batch is acknowledged (by its last message).
    assert!(
        eventually(Duration::from_secs(10), || {
            let stream = stream.clone();
            let name = name.clone();
            async move {
                let info = stream.consumer_info(&name).await.unwrap();
                info.num_ack_pending == 0 && info.num_pending == 0
            }
        })
        .await
    );
    // A new sample after the switch goes through the replaced consumer.
    let next = publish(sample("new", base + chrono::Duration::seconds(30), 3.0, 3)).await;
    assert!(
        eventually(Duration::from_secs(30), || async {
            count(
                &db,
                "select count(*) from agent_metric_samples where agent_id = 'new'",
            )
            .await
                == 8
        })
        .await
    );
    assert!(
        eventually(Duration::from_secs(10), || {
            let stream = stream.clone();
            let name = name.clone();
            async move {
                let info = stream.consumer_info(&name).await.unwrap();
                info.ack_floor.stream_sequence == next
            }
        })
        .await
    );
    info = stream.consumer_info(&name).await.unwrap();
    assert_eq!(info.num_ack_pending, 0);
    cancel.cancel();
    projector.await.unwrap();
    streams.cleanup().await;
    db.cleanup().await;
}
