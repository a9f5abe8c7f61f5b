//! The supervisor benchmark: restart latency (with the floor, supervisord and
//! PM2 measured the same way), bulk start/stop of many agents, and the idle
//! overhead of one supervisor process (with supervisord alongside).
//!
//! Every figure comes from the same tiny agent: a few lines of C, compiled
//! into the bench's temporary directory, that appends `start <realtime ns>
//! <pid>` at entry, sleeps 50 ms, appends `exit <realtime ns> <pid>` and exits
//! 1 (or, with `- sleep <marker>`, waits for a signal forever). A restart gap
//! is an `exit` stamp to the next `start` stamp.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use async_nats::jetstream::consumer::push::OrderedConfig;
use futures::StreamExt;
use hdrhistogram::Histogram;
use opmas::println_out as out;

use crate::common::{Servers, drop_db, meta, write_path};
use opmas_domain::{AgentCommand, AgentEvent, AgentId, AgentSpec, RestartMode};
use opmas_store::{AgentStore, StreamSettings, TelemetrySettings};
use opmas_supervisor::{Config, Supervisor};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

/// Options of `bench supervisor`.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    servers: Servers,
    /// Restarts measured for the floor, OPMAS and PM2.
    #[arg(long, default_value_t = 300)]
    restarts: usize,
    /// Restarts measured for supervisord (about 1 s each).
    #[arg(long, default_value_t = 30)]
    supervisord_restarts: usize,
    /// Agents of the bulk and overhead phases.
    #[arg(long, default_value_t = 500)]
    agents: usize,
    /// Seconds of each CPU measurement window.
    #[arg(long, default_value_t = 30)]
    window: u64,
    /// Skip installing and measuring supervisord and PM2.
    #[arg(long)]
    no_peers: bool,
    /// Skip the overhead phase.
    #[arg(long)]
    no_overhead: bool,
    /// Run only the overhead phase.
    #[arg(long, conflicts_with = "no_overhead")]
    only_overhead: bool,
    /// Bulk rounds (start all, stop all): the first starts agents that never
    /// ran (their log directories and files are created), the others start
    /// them again.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    bulk_rounds: u32,
    /// Where the in-process supervisor keeps agent logs (a directory of
    /// the bench's own is made inside and removed at the end; default: the
    /// bench's temporary directory). Agent starts create a directory and
    /// three files each, so the file system shows in the bulk figure.
    #[arg(long)]
    log_dir: Option<PathBuf>,
}

const AGENT_C: &str = r#"
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
static void stamp(const char *path, const char *what) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    char line[96];
    int n = snprintf(line, sizeof line, "%s %lld %d\n", what,
                     (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec, (int)getpid());
    int fd = open(path, O_WRONLY | O_APPEND | O_CREAT, 0644);
    if (fd >= 0) { (void)!write(fd, line, n); close(fd); }
}
int main(int argc, char **argv) {
    if (argc > 2 && strcmp(argv[2], "sleep") == 0) {
        if (strcmp(argv[1], "-") != 0) stamp(argv[1], "start");
        for (;;) pause();
    }
    if (argc < 2) return 2;
    stamp(argv[1], "start");
    usleep(50000);
    stamp(argv[1], "exit");
    return 1;
}
"#;

/// What the bench created and must remove, even on error.
struct Ctx {
    args: Args,
    dir: PathBuf,
    /// Parent of the in-process supervisor's log directory.
    logs: PathBuf,
    agent: PathBuf,
    tag: String,
    client: async_nats::Client,
    admin: PgPool,
    dbs: Mutex<Vec<String>>,
    streams: Mutex<Vec<String>>,
}

/// A database and streams of their own.
struct Env {
    pool: PgPool,
    url: String,
    settings: StreamSettings,
    telemetry: TelemetrySettings,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let tmp = tempfile::Builder::new()
        .prefix("opmas-bench-sup-")
        .tempdir()?;
    let dir = tmp.path().to_path_buf();
    let agent = compile_agent(&dir).await?;
    let logs_tmp = match &args.log_dir {
        Some(parent) => Some(
            tempfile::Builder::new()
                .prefix("opmas-bench-logs-")
                .tempdir_in(parent)?,
        ),
        None => None,
    };
    let logs = logs_tmp
        .as_ref()
        .map_or_else(|| dir.clone(), |t| t.path().to_path_buf());
    let admin = opmas_store::db::connect(&args.servers.database_url, 2).await?;
    let client = async_nats::connect(&args.servers.nats_url).await?;
    let ctx = Ctx {
        args,
        dir,
        logs,
        agent,
        tag: uuid::Uuid::new_v4().simple().to_string()[..8].to_string(),
        client,
        admin,
        dbs: Mutex::default(),
        streams: Mutex::default(),
    };
    let result = phases(&ctx).await;
    // Clean up whatever happened: processes first, then databases and streams.
    sweep(&ctx.dir, "");
    let js = async_nats::jetstream::new(ctx.client.clone());
    let streams = std::mem::take(&mut *lock(&ctx.streams));
    for s in streams {
        let _ = js.delete_stream(&s).await;
    }
    let dbs = std::mem::take(&mut *lock(&ctx.dbs));
    for db in dbs {
        if let Err(err) = drop_db(&ctx.admin, &db).await {
            eprintln!("cannot drop database {db}: {err}");
        }
    }
    drop(logs_tmp);
    drop(tmp);
    result
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

async fn compile_agent(dir: &Path) -> anyhow::Result<PathBuf> {
    let src = dir.join("agent.c");
    let bin = dir.join("agent");
    std::fs::write(&src, AGENT_C)?;
    let status = tokio::process::Command::new("cc")
        .args(["-O2", "-o"])
        .arg(&bin)
        .arg(&src)
        .status()
        .await
        .context("the tiny agent needs a C compiler (cc)")?;
    if !status.success() {
        bail!("cc failed to build the tiny agent: {status}");
    }
    Ok(bin)
}

impl Ctx {
    async fn env(&self, name: &str) -> anyhow::Result<Env> {
        let db = format!("opmas_bench_{}_{name}", self.tag);
        lock(&self.dbs).push(db.clone());
        let pool = self.args.servers.fresh_db(&self.admin, &db, 48).await?;
        let url = self.args.servers.url_of(&db)?;
        let tag = format!("bench_{}_{name}", self.tag);
        let settings = StreamSettings::isolated(&tag);
        let telemetry = TelemetrySettings::isolated(&tag);
        lock(&self.streams).extend([
            settings.name.clone(),
            telemetry.metrics_stream.clone(),
            telemetry.logs_stream.clone(),
        ]);
        Ok(Env {
            pool,
            url,
            settings,
            telemetry,
        })
    }

    fn stamps(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.stamps"))
    }
}

fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or_default()
}

/// The crashing agent's spec: restarts at once, never gives up.
fn crash_spec(agent: &Path, stamps: &Path) -> AgentSpec {
    let mut spec = AgentSpec {
        agent_type: "bench".into(),
        command: agent.display().to_string(),
        args: vec![stamps.display().to_string()],
        ..AgentSpec::default()
    };
    spec.restart.mode = RestartMode::Always;
    spec.restart.initial_delay_ms = 0;
    spec.restart.max_delay_ms = 1_000;
    spec.restart.multiplier = 1.0;
    spec.restart.jitter = 0.0;
    spec.restart.intensity = 100_000;
    spec.restart.period_ms = 60_000;
    spec.heartbeat.enabled = false;
    spec
}

/// An idle agent that honours SIGTERM (stamps its start into `stamps` unless `-`).
fn sleeper_spec(agent: &Path, stamps: &str, marker: &str) -> AgentSpec {
    let mut spec = AgentSpec {
        agent_type: "bench".into(),
        command: agent.display().to_string(),
        args: vec![stamps.into(), "sleep".into(), marker.into()],
        ..AgentSpec::default()
    };
    spec.stop_grace_ms = 5_000;
    spec.heartbeat.enabled = false;
    spec
}

async fn phases(ctx: &Ctx) -> anyhow::Result<()> {
    let args = &ctx.args;
    out(&format!(
        "bench supervisor: {} restarts ({} for supervisord), {} agents, {} s windows, {} cores",
        args.restarts,
        args.supervisord_restarts,
        args.agents,
        args.window,
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    ));
    out("tiny agent: C, appends start/exit stamps (CLOCK_REALTIME), runs 50 ms, exits 1");
    if args.only_overhead {
        return overhead(ctx).await;
    }

    // 1. Restart latency.
    let floor = floor(ctx, args.restarts).await?;
    print_gaps("floor (tokio: wait, spawn again)", &floor);

    let env = ctx.env("main").await?;
    let cancel = CancellationToken::new();
    let result = opmas_phases(ctx, &env, &cancel, &floor).await;
    cancel.cancel();
    // Let the relay and the supervisor see the cancellation before the pool closes.
    tokio::time::sleep(Duration::from_millis(300)).await;
    env.pool.close().await;
    result?;

    // 3. Overhead of one supervisor process.
    if !args.no_overhead {
        overhead(ctx).await?;
    }
    Ok(())
}

async fn opmas_phases(
    ctx: &Ctx,
    env: &Env,
    cancel: &CancellationToken,
    floor: &Gaps,
) -> anyhow::Result<()> {
    let store = write_path(&env.pool, &ctx.client, &env.settings, cancel);
    let mut config = Config::new(
        format!("bench-{}", ctx.tag),
        ctx.args.servers.nats_url.clone(),
    );
    config.log_dir = ctx.logs.join("logs");
    config.stream = env.settings.clone();
    config.telemetry = env.telemetry.clone();
    config.heartbeat_prefix = format!("opmas_bench_{}.heartbeat", ctx.tag);
    config.control_prefix = format!("opmas_bench_{}.control", ctx.tag);
    let supervisor = Supervisor::new(store.clone(), ctx.client.clone(), config)?;
    tokio::spawn(supervisor.run(cancel.clone()));
    // Let it create its consumer before the first command.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let (gaps, durable) = opmas_restarts(ctx, env, &store).await?;
    print_gaps("OPMAS (in-process supervisor, group commit 64)", &gaps);
    print_ratio("OPMAS / floor", &gaps, floor);
    out(&format!(
        "OPMAS exit stamp -> ProcessExited + ProcessStarted durable: recorded_at (transaction start, a lower bound) p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms; seen on JetStream (after commit, an upper bound) p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms ({} restarts)",
        ms(&durable.0, 0.5),
        ms(&durable.0, 0.99),
        durable.0.max() as f64 / 1000.0,
        ms(&durable.1, 0.5),
        ms(&durable.1, 0.99),
        durable.1.max() as f64 / 1000.0,
        durable.1.len()
    ));

    if !ctx.args.no_peers {
        match pm2(ctx, ctx.args.restarts).await {
            Ok(g) => {
                print_gaps("PM2", &g);
                print_ratio("PM2 / OPMAS", &g, &gaps);
            }
            Err(err) => out(&format!("PM2: not measured: {err:#}")),
        }
        match supervisord_restarts(ctx, ctx.args.supervisord_restarts).await {
            Ok(g) => {
                print_gaps("supervisord", &g);
                print_ratio("supervisord / OPMAS", &g, &gaps);
            }
            Err(err) => out(&format!("supervisord: not measured: {err:#}")),
        }
    }

    // 2. Bulk start and stop.
    bulk(ctx, env, &store).await
}

/// Restart gaps in µs.
struct Gaps(Histogram<u64>);

fn hist() -> Histogram<u64> {
    Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).unwrap_or_else(|_| {
        // Unreachable with these bounds; keep a usable histogram anyway.
        Histogram::<u64>::new(3).unwrap_or_else(|_| unreachable!())
    })
}

fn ms(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

fn print_gaps(who: &str, g: &Gaps) {
    out(&format!(
        "restart gap, {who}: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms ({} restarts)",
        ms(&g.0, 0.5),
        ms(&g.0, 0.99),
        g.0.max() as f64 / 1000.0,
        g.0.len()
    ));
}

fn print_ratio(what: &str, a: &Gaps, b: &Gaps) {
    out(&format!(
        "  ratio {what}: p50 {:.2}x, p99 {:.2}x",
        ms(&a.0, 0.5) / ms(&b.0, 0.5),
        ms(&a.0, 0.99) / ms(&b.0, 0.99)
    ));
}

#[derive(Clone, Copy)]
struct Stamp {
    start: bool,
    ns: i64,
    pid: u32,
}

fn read_stamps(path: &Path) -> Vec<Stamp> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            let start = match it.next()? {
                "start" => true,
                "exit" => false,
                _ => return None,
            };
            Some(Stamp {
                start,
                ns: it.next()?.parse().ok()?,
                pid: it.next()?.parse().ok()?,
            })
        })
        .collect()
}

fn starts(path: &Path) -> usize {
    read_stamps(path).iter().filter(|s| s.start).count()
}

/// (exit, next start) pairs, at most `limit`.
fn restarts(stamps: &[Stamp], limit: usize) -> Vec<(Stamp, Stamp)> {
    stamps
        .windows(2)
        .filter(|w| !w[0].start && w[1].start)
        .map(|w| (w[0], w[1]))
        .take(limit)
        .collect()
}

fn gaps_of(path: &Path, limit: usize) -> anyhow::Result<Gaps> {
    let mut h = hist();
    for (exit, start) in restarts(&read_stamps(path), limit) {
        h.record(((start.ns - exit.ns).max(1) / 1000) as u64)?;
    }
    if h.is_empty() {
        bail!("no restarts recorded in {}", path.display());
    }
    Ok(Gaps(h))
}

/// Waits until `path` holds `n` start stamps, at most `timeout`.
async fn wait_starts(path: &Path, n: usize, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let got = starts(path);
        if got >= n {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{got} of {n} starts after {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The floor: one tokio task waits for the agent and spawns it again.
async fn floor(ctx: &Ctx, n: usize) -> anyhow::Result<Gaps> {
    let stamps = ctx.stamps("floor");
    for _ in 0..=n {
        tokio::process::Command::new(&ctx.agent)
            .arg(&stamps)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .await?;
    }
    gaps_of(&stamps, n)
}

/// The crashing agent under the in-process supervisor; returns the gaps and
/// (exit stamp → both facts' `recorded_at`, exit stamp → both facts on JetStream).
async fn opmas_restarts(
    ctx: &Ctx,
    env: &Env,
    store: &AgentStore,
) -> anyhow::Result<(Gaps, (Histogram<u64>, Histogram<u64>))> {
    let n = ctx.args.restarts;
    let id = format!("crash-{}", ctx.tag);
    let stamps = ctx.stamps("opmas");
    store
        .execute(
            &id,
            AgentCommand::Register {
                agent_id: AgentId::parse(&id)?,
                spec: crash_spec(&ctx.agent, &stamps),
            },
            meta(),
        )
        .await?;
    // Arrival time on JetStream of each of the agent's events, by sequence.
    let js = async_nats::jetstream::new(ctx.client.clone());
    let stream = js.get_stream(&env.settings.name).await?;
    let consumer = stream
        .create_consumer(OrderedConfig {
            deliver_subject: ctx.client.new_inbox(),
            filter_subject: env.settings.agent_filter(&id),
            deliver_policy: async_nats::jetstream::consumer::DeliverPolicy::New,
            headers_only: true,
            ..OrderedConfig::default()
        })
        .await?;
    let mut messages = consumer.messages().await?;
    let arrivals: Arc<Mutex<HashMap<i64, i64>>> = Arc::default();
    let seen = arrivals.clone();
    let reader_cancel = CancellationToken::new();
    let stop_reader = reader_cancel.clone();
    let reader = tokio::spawn(async move {
        loop {
            let msg = tokio::select! {
                () = stop_reader.cancelled() => break,
                m = messages.next() => m,
            };
            let Some(Ok(msg)) = msg else { break };
            let at = now_ns();
            let seq = msg
                .headers
                .as_ref()
                .and_then(|h| h.get(opmas_store::stream::headers::SEQUENCE))
                .and_then(|v| v.as_str().parse::<i64>().ok());
            if let Some(seq) = seq {
                lock(&seen).insert(seq, at);
            }
        }
    });

    store.execute(&id, AgentCommand::Start, meta()).await?;
    let waited = wait_starts(
        &stamps,
        n + 1,
        Duration::from_secs(30) + Duration::from_millis(200) * n as u32,
    )
    .await;
    store.execute(&id, AgentCommand::Stop, meta()).await?;
    waited?;
    // Let the last facts reach the stream.
    tokio::time::sleep(Duration::from_secs(1)).await;
    reader_cancel.cancel();
    let _ = reader.await;

    let rows: Vec<(i64, String, i64)> = sqlx::query_as(
        "select sequence, payload::text, (extract(epoch from recorded_at) * 1000000)::bigint \
         from events where aggregate_id = $1 and event_type in ('ProcessStarted', 'ProcessExited')",
    )
    .bind(&id)
    .fetch_all(&env.pool)
    .await?;
    let arrivals = lock(&arrivals).clone();
    // pid → (recorded_at µs, arrival ns) of its ProcessStarted and ProcessExited.
    let mut started = HashMap::new();
    let mut exited = HashMap::new();
    for (seq, payload, recorded_us) in rows {
        let arrival = arrivals.get(&seq).copied();
        match serde_json::from_str::<AgentEvent>(&payload)? {
            AgentEvent::ProcessStarted { identity, .. } => {
                started.insert(identity.pid, (recorded_us, arrival));
            }
            AgentEvent::ProcessExited { pid, .. } => {
                exited.insert(pid, (recorded_us, arrival));
            }
            _ => {}
        }
    }
    let (mut lower, mut upper) = (hist(), hist());
    let all = read_stamps(&stamps);
    let pairs = restarts(&all, n);
    for (exit, start) in &pairs {
        let (Some(e), Some(s)) = (exited.get(&exit.pid), started.get(&start.pid)) else {
            continue;
        };
        let recorded = e.0.max(s.0) * 1000;
        lower.record(((recorded - exit.ns).max(1000) / 1000) as u64)?;
        if let (Some(ea), Some(sa)) = (e.1, s.1) {
            upper.record(((ea.max(sa) - exit.ns).max(1000) / 1000) as u64)?;
        }
    }
    if lower.len() < pairs.len() as u64 {
        out(&format!(
            "  note: {} of {} restarts have both facts in the store",
            lower.len(),
            pairs.len()
        ));
    }
    Ok((gaps_of(&stamps, n)?, (lower, upper)))
}

/// Runs `program args` in its own process group, in `dir`, with `env`.
fn spawn_group(
    program: &Path,
    args: &[&str],
    env: &[(&str, String)],
    log: &Path,
) -> anyhow::Result<tokio::process::Child> {
    let log = std::fs::File::create(log)?;
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0)
        .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    Ok(cmd.spawn()?)
}

/// SIGKILL to a process group (by the `kill` program: no libc here).
fn kill_group(pid: Option<u32>) {
    if let Some(pid) = pid {
        let _ = std::process::Command::new("kill")
            .args(["-KILL", "--", &format!("-{pid}")])
            .stderr(Stdio::null())
            .status();
    }
}

fn signal(pid: u32, sig: &str) {
    let _ = std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .stderr(Stdio::null())
        .status();
}

/// SIGKILL to every process whose command line mentions `dir` (and `marker`).
fn sweep(dir: &Path, marker: &str) -> usize {
    let dir = dir.display().to_string();
    let me = std::process::id();
    let mut killed = 0;
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0;
    };
    for entry in entries.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline);
        if cmdline.contains(&dir) && cmdline.contains(marker) {
            signal(pid, "-KILL");
            killed += 1;
        }
    }
    killed
}

/// Live (non-zombie) processes whose command line contains all of `parts`.
fn count_procs(parts: &[&str]) -> usize {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0;
    };
    entries
        .flatten()
        .filter(|e| {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
                return false;
            };
            let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
                return false;
            };
            let cmdline = String::from_utf8_lossy(&cmdline);
            parts.iter().all(|p| cmdline.contains(p))
                && std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .is_ok_and(|s| !s.contains(") Z "))
        })
        .count()
}

async fn run_quiet(cmd: &mut tokio::process::Command, what: &str) -> anyhow::Result<String> {
    let output = tokio::time::timeout(Duration::from_secs(300), cmd.output())
        .await
        .with_context(|| format!("{what}: timed out"))??;
    if !output.status.success() {
        let err = String::from_utf8_lossy(&output.stderr);
        let tail: Vec<&str> = err.lines().rev().take(5).collect();
        bail!("{what}: {}: {}", output.status, tail.join(" | "));
    }
    Ok(String::from_utf8_lossy(&output.stdout).to_string())
}

/// PM2 installed with npm into the temporary directory; its daemon's home there too.
async fn pm2(ctx: &Ctx, n: usize) -> anyhow::Result<Gaps> {
    let prefix = ctx.dir.join("pm2");
    std::fs::create_dir_all(&prefix)?;
    std::fs::write(prefix.join("package.json"), "{}")?;
    run_quiet(
        tokio::process::Command::new("npm")
            .args(["install", "--no-audit", "--no-fund", "--silent", "--prefix"])
            .arg(&prefix)
            .arg("pm2"),
        "npm install pm2",
    )
    .await?;
    let pm2 = prefix.join("node_modules/pm2/bin/pm2");
    let home = ctx.dir.join("pm2home");
    let version = run_quiet(
        tokio::process::Command::new("node")
            .arg(&pm2)
            .arg("--version")
            .env("PM2_HOME", &home),
        "pm2 --version",
    )
    .await?;
    let stamps = ctx.stamps("pm2");
    let eco = prefix.join("ecosystem.json");
    std::fs::write(
        &eco,
        serde_json::json!({ "apps": [{
            "name": "tiny",
            "script": ctx.agent,
            "args": [stamps],
            "interpreter": "none",
            "autorestart": true,
            "restart_delay": 0,
            "max_restarts": 1_000_000,
            "min_uptime": 0,
        }]})
        .to_string(),
    )?;
    let version = version
        .lines()
        .last()
        .unwrap_or_default()
        .trim()
        .to_string();
    out(&format!(
        "PM2 {version} (npm; autorestart, restart_delay 0, min_uptime 0, max_restarts 1000000)"
    ));
    let result = async {
        run_quiet(
            tokio::process::Command::new("node")
                .arg(&pm2)
                .arg("start")
                .arg(&eco)
                .env("PM2_HOME", &home)
                .process_group(0),
            "pm2 start",
        )
        .await?;
        wait_starts(
            &stamps,
            n + 1,
            Duration::from_secs(30) + Duration::from_millis(200) * n as u32,
        )
        .await
    }
    .await;
    let _ = run_quiet(
        tokio::process::Command::new("node")
            .arg(&pm2)
            .arg("kill")
            .env("PM2_HOME", &home),
        "pm2 kill",
    )
    .await;
    sweep(&home, "");
    result?;
    gaps_of(&stamps, n)
}

/// supervisord installed with pip into the temporary directory.
struct Supervisord {
    python: PathBuf,
    path: PathBuf,
    version: String,
}

async fn supervisord_install(ctx: &Ctx) -> anyhow::Result<Supervisord> {
    let target = ctx.dir.join("sv");
    if !target.join("supervisor").exists() {
        run_quiet(
            tokio::process::Command::new("pip3")
                .args(["install", "-q", "--disable-pip-version-check", "--target"])
                .arg(&target)
                .arg("supervisor"),
            "pip install supervisor",
        )
        .await?;
    }
    let python = run_quiet(
        tokio::process::Command::new("python3").args(["-c", "import sys; print(sys.executable)"]),
        "python3",
    )
    .await?;
    let python = PathBuf::from(python.trim());
    let version = run_quiet(
        tokio::process::Command::new(&python)
            .args(["-c", "import supervisor.options as o; print(o.VERSION)"])
            .env("PYTHONPATH", &target),
        "supervisor version",
    )
    .await
    .unwrap_or_default();
    Ok(Supervisord {
        python,
        path: target,
        version: version.trim().to_string(),
    })
}

impl Supervisord {
    /// Runs supervisord (foreground, own process group) with `programs`.
    fn start(&self, dir: &Path, programs: &str) -> anyhow::Result<tokio::process::Child> {
        std::fs::create_dir_all(dir)?;
        let conf = dir.join("supervisord.conf");
        let d = dir.display();
        std::fs::write(
            &conf,
            format!(
                "[supervisord]\nnodaemon=true\nlogfile={d}/supervisord.log\npidfile={d}/supervisord.pid\nchildlogdir={d}\n\n\
                 [unix_http_server]\nfile={d}/supervisor.sock\n\n\
                 [rpcinterface:supervisor]\nsupervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface\n\n\
                 {programs}"
            ),
        )?;
        let script = self.path.join("bin/supervisord");
        spawn_group(
            &self.python,
            &[
                &script.display().to_string(),
                "-c",
                &conf.display().to_string(),
            ],
            &[("PYTHONPATH", self.path.display().to_string())],
            &dir.join("stdout.txt"),
        )
    }

    /// SIGTERM (it stops its programs), then SIGKILL to what is left.
    async fn stop(child: &mut tokio::process::Child, dir: &Path) {
        if let Some(pid) = child.id() {
            signal(pid, "-TERM");
        }
        let _ = tokio::time::timeout(Duration::from_secs(20), child.wait()).await;
        kill_group(child.id());
        let _ = child.kill().await;
        sweep(dir, "");
    }
}

async fn supervisord_restarts(ctx: &Ctx, n: usize) -> anyhow::Result<Gaps> {
    let sv = supervisord_install(ctx).await?;
    out(&format!(
        "supervisord {} (pip; startsecs=0, autorestart=true, startretries=100000)",
        sv.version
    ));
    let stamps = ctx.stamps("supervisord");
    let dir = ctx.dir.join("sv-restart");
    let mut child = sv.start(
        &dir,
        &format!(
            "[program:tiny]\ncommand={} {}\nautorestart=true\nstartsecs=0\nstartretries=100000\n",
            ctx.agent.display(),
            stamps.display()
        ),
    )?;
    let waited = wait_starts(
        &stamps,
        n + 1,
        Duration::from_secs(30) + Duration::from_millis(1_500) * n as u32,
    )
    .await;
    Supervisord::stop(&mut child, &dir).await;
    waited?;
    gaps_of(&stamps, n)
}

/// Agents `prefix-0..n` registered with `spec`.
async fn register_all(
    store: &AgentStore,
    prefix: &str,
    n: usize,
    spec: &AgentSpec,
) -> anyhow::Result<Vec<String>> {
    let ids: Vec<String> = (0..n).map(|i| format!("{prefix}-{i}")).collect();
    futures::stream::iter(ids.iter().map(|id| {
        let spec = spec.clone();
        async move {
            let cmd = AgentCommand::Register {
                agent_id: AgentId::parse(id)?,
                spec,
            };
            store.execute(id, cmd, meta()).await?;
            anyhow::Ok(())
        }
    }))
    .buffer_unordered(32)
    .collect::<Vec<_>>()
    .await
    .into_iter()
    .collect::<anyhow::Result<Vec<()>>>()?;
    Ok(ids)
}

/// Issues `cmd` to all `ids` at once; returns when every command committed.
async fn command_all(store: &AgentStore, ids: &[String], cmd: AgentCommand) -> anyhow::Result<()> {
    let results = futures::future::join_all(ids.iter().map(|id| {
        let cmd = cmd.clone();
        async move { store.execute_with_retry(id, cmd, meta(), 20).await }
    }))
    .await;
    for r in results {
        r?;
    }
    Ok(())
}

/// Waits until `n` events of the `event_types` of agents `prefix-*` are committed.
async fn wait_events(
    pool: &PgPool,
    prefix: &str,
    event_types: &[&str],
    n: i64,
    timeout: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let got: i64 = sqlx::query_scalar(
            "select count(*) from events where event_type = any($1) and aggregate_id like $2",
        )
        .bind(event_types)
        .bind(format!("{prefix}-%"))
        .fetch_one(pool)
        .await?;
        if got >= n {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{got} of {n} {event_types:?} after {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Counts the events of `event_types` of agents `prefix-*` as they arrive
/// on JetStream (after their commit and the relay: an upper bound on when
/// they were durable). Cheaper for the machine under test than polling
/// Postgres, which shares the same 2 cores.
struct Arrivals {
    count: tokio::sync::watch::Receiver<usize>,
    task: tokio::task::JoinHandle<()>,
}

impl Arrivals {
    async fn watch(
        ctx: &Ctx,
        env: &Env,
        prefix: &str,
        event_types: &[&str],
    ) -> anyhow::Result<Self> {
        let js = async_nats::jetstream::new(ctx.client.clone());
        let stream = js.get_stream(&env.settings.name).await?;
        let consumer = stream
            .create_consumer(OrderedConfig {
                deliver_subject: ctx.client.new_inbox(),
                // One filter of all events (nats-server 2.9 has no
                // `filter_subjects`); the type is checked below.
                filter_subject: format!("{}.agent.>", env.settings.subject_prefix),
                deliver_policy: async_nats::jetstream::consumer::DeliverPolicy::New,
                headers_only: true,
                ..OrderedConfig::default()
            })
            .await?;
        let mut messages = consumer.messages().await?;
        let (tx, count) = tokio::sync::watch::channel(0usize);
        let prefix = format!("{prefix}-");
        let types: Vec<String> = event_types.iter().map(|t| (*t).to_owned()).collect();
        let task = tokio::spawn(async move {
            use opmas_store::stream::headers::{AGENT_ID, EVENT_TYPE};
            while let Some(Ok(msg)) = messages.next().await {
                let Some(h) = msg.headers.as_ref() else {
                    continue;
                };
                let ours = h
                    .get(AGENT_ID)
                    .is_some_and(|v| v.as_str().starts_with(&prefix))
                    && h.get(EVENT_TYPE)
                        .is_some_and(|v| types.iter().any(|t| t == v.as_str()));
                if ours {
                    tx.send_modify(|n| *n += 1);
                }
            }
        });
        Ok(Self { count, task })
    }

    async fn reach(&mut self, n: usize, timeout: Duration) -> anyhow::Result<()> {
        let reached = tokio::time::timeout(timeout, self.count.wait_for(|c| *c >= n))
            .await
            .is_ok_and(|r| r.is_ok());
        if !reached {
            bail!(
                "{} of {n} events seen after {timeout:?}",
                *self.count.borrow()
            );
        }
        Ok(())
    }
}

impl Drop for Arrivals {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Phase 2, bulk: all agents from stopped to running (every `ProcessStarted` committed)
/// and back to stopped (every `ProcessStopped` committed).
async fn bulk(ctx: &Ctx, env: &Env, store: &AgentStore) -> anyhow::Result<()> {
    let n = ctx.args.agents;
    let prefix = format!("bulk-{}", ctx.tag);
    let marker = format!("bulk{}", ctx.tag);
    let stamps = ctx.stamps("bulk");
    let spec = sleeper_spec(&ctx.agent, &stamps.display().to_string(), &marker);
    let ids = register_all(store, &prefix, n, &spec).await?;
    let floor = fs_floor(&ctx.logs.join(format!("fs-floor-{}", ctx.tag)), n)?;
    out(&format!(
        "  bulk file-system floor: {n} directories and {} empty files (what the supervisor makes for a first start) created in {:.3} s, with no process",
        n * 3,
        floor.as_secs_f64()
    ));
    // A warm-up round would hide the first spawn of each worker; measure cold.
    let mut rounds = Vec::new();
    let result = async {
        for round in 1..=ctx.args.bulk_rounds {
        // Dirty pages of the previous round written out now, not during the timing.
        let _ = std::process::Command::new("sync").status();
        let mut arrivals = Arrivals::watch(ctx, env, &prefix, &["ProcessStarted"]).await?;
        let t = Instant::now();
        let t_ns = now_ns();
        command_all(store, &ids, AgentCommand::Start).await?;
        let issued = t.elapsed();
        arrivals.reach(n, Duration::from_secs(120)).await?;
        let started = t.elapsed();
        // Seen on JetStream means committed: the store agrees.
        wait_events(&env.pool, &prefix, &["ProcessStarted"], i64::from(round) * n as i64, Duration::from_secs(1)).await?;
        let running = count_procs(&[&marker, "sleep"]);
        // Parts: when the processes began (their own stamps), when the facts were committed.
        let execs: Vec<i64> = read_stamps(&stamps)
            .iter()
            .map(|s| s.ns - t_ns)
            .filter(|ns| *ns >= 0)
            .collect();
        let (first_exec, last_exec) = (
            execs.iter().min().copied().unwrap_or_default(),
            execs.iter().max().copied().unwrap_or_default(),
        );
        let (first_fact, last_fact): (i64, i64) = sqlx::query_as(
            "select (extract(epoch from min(recorded_at)) * 1000000)::bigint, \
                    (extract(epoch from max(recorded_at)) * 1000000)::bigint \
             from events where event_type = 'ProcessStarted' and aggregate_id like $1 \
             and recorded_at >= to_timestamp($2::double precision / 1e9)",
        )
        .bind(format!("{prefix}-%"))
        .bind(t_ns as f64)
        .fetch_one(&env.pool)
        .await?;
        out(&format!(
            "  bulk start parts (from the first Start issued): processes began {:.3} .. {:.3} s ({} stamps); ProcessStarted recorded_at {:.3} .. {:.3} s",
            first_exec as f64 / 1e9,
            last_exec as f64 / 1e9,
            execs.len(),
            (first_fact * 1000 - t_ns) as f64 / 1e9,
            (last_fact * 1000 - t_ns) as f64 / 1e9,
        ));
        let mut arrivals = Arrivals::watch(ctx, env, &prefix, &["ProcessExited", "ProcessStopped"]).await?;
        let t = Instant::now();
        command_all(store, &ids, AgentCommand::Stop).await?;
        let stop_issued = t.elapsed();
        arrivals.reach(n, Duration::from_secs(120)).await?;
        let stopped = t.elapsed();
        wait_events(&env.pool, &prefix, &["ProcessExited", "ProcessStopped"], i64::from(round) * n as i64, Duration::from_secs(1)).await?;
        let left = count_procs(&[&marker, "sleep"]);
        let what = if round == 1 { "first start" } else { "started again" };
        out(&format!(
            "bulk, {n} agents, round {round} ({what}): stopped -> all ProcessStarted durable and on JetStream {:.3} s (Start commands committed after {:.3} s; {running} processes alive); \
             all stopped facts durable and on JetStream (ProcessExited, or ProcessStopped) {:.3} s (Stop commands committed after {:.3} s; {left} processes left)",
            started.as_secs_f64(),
            issued.as_secs_f64(),
            stopped.as_secs_f64(),
            stop_issued.as_secs_f64()
        ));
        rounds.push((started, stopped));
        }
        anyhow::Ok(())
    }
    .await;
    if let Some(((first, _), again)) = rounds.split_first()
        && !again.is_empty()
    {
        let secs = |d: &Duration| d.as_secs_f64();
        let max_start = again.iter().map(|r| secs(&r.0)).fold(0.0, f64::max);
        let max_stop = rounds.iter().map(|r| secs(&r.1)).fold(0.0, f64::max);
        out(&format!(
            "bulk, {n} agents, {} rounds: first start {:.3} s, later starts at most {max_start:.3} s; stops at most {max_stop:.3} s",
            rounds.len(),
            secs(first),
        ));
    }
    sweep(&ctx.dir, &marker);
    result
}

/// Time to create, beside the supervisor's logs, what a first start of `n`
/// agents creates: a directory and three files each (stdout, stderr,
/// config). Left in place until the end: deleting makes the next creates
/// slower on file systems that skip recently freed inodes.
fn fs_floor(dir: &Path, n: usize) -> anyhow::Result<Duration> {
    let t = Instant::now();
    for i in 0..n {
        let agent = dir.join(format!("a{i}"));
        std::fs::create_dir_all(&agent)?;
        for name in ["stdout.log", "stderr.log", "config.json"] {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(agent.join(name))?;
        }
    }
    Ok(t.elapsed())
}

/// CPU (percent of one core) and RSS of `pid` over `window`.
struct Usage {
    cpu_percent: f64,
    rss_kb: u64,
    hwm_kb: u64,
    /// Of the RSS: anonymous memory (heap, stacks) and file pages (the
    /// binary's code and data read from disk).
    anon_kb: u64,
    file_kb: u64,
}

fn cpu_ticks(pid: u32) -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let close = stat.rfind(')').context("stat")?;
    let f: Vec<&str> = stat[close + 1..].split_whitespace().collect();
    Ok(f.get(11).context("utime")?.parse::<u64>()? + f.get(12).context("stime")?.parse::<u64>()?)
}

fn status_kb(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

async fn usage(pid: u32, window: Duration) -> anyhow::Result<Usage> {
    let hz = std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .trim()
                .parse::<f64>()
                .ok()
        })
        .unwrap_or(100.0);
    let (t0, c0) = (Instant::now(), cpu_ticks(pid)?);
    tokio::time::sleep(window).await;
    let (t1, c1) = (Instant::now(), cpu_ticks(pid)?);
    Ok(Usage {
        cpu_percent: (c1 - c0) as f64 / hz / (t1 - t0).as_secs_f64() * 100.0,
        rss_kb: status_kb(pid, "VmRSS:"),
        hwm_kb: status_kb(pid, "VmHWM:"),
        anon_kb: status_kb(pid, "RssAnon:"),
        file_kb: status_kb(pid, "RssFile:"),
    })
}

fn print_usage(who: &str, u: &Usage) {
    out(&format!(
        "overhead, {who}: CPU {:.2} % of one core, RSS {:.1} MB (peak {:.1} MB; anonymous {:.1} MB, file {:.1} MB)",
        u.cpu_percent,
        u.rss_kb as f64 / 1024.0,
        u.hwm_kb as f64 / 1024.0,
        u.anon_kb as f64 / 1024.0,
        u.file_kb as f64 / 1024.0
    ));
}

/// Phase 3, overhead: one `opmas supervisor` process with idle agents: heartbeats every 1 s
/// and sampling every 5 s, then no heartbeats and sampling every 30 s; and
/// supervisord with as many idle programs.
async fn overhead(ctx: &Ctx) -> anyhow::Result<()> {
    let opmas = std::env::current_exe()?
        .parent()
        .context("exe dir")?
        .join("opmas");
    if !opmas.exists() {
        out(&format!(
            "overhead: not measured: {} missing (cargo build --release --bin opmas)",
            opmas.display()
        ));
        return Ok(());
    }
    let window = Duration::from_secs(ctx.args.window);
    for (name, heartbeats, sample) in [("hb", true, "5s"), ("quiet", false, "30s")] {
        let u = opmas_overhead(ctx, &opmas, name, heartbeats, sample, window).await?;
        print_usage(
            &format!(
                "opmas supervisor, {} idle agents, {}, sampling every {sample}",
                ctx.args.agents,
                if heartbeats {
                    "heartbeats every 1 s"
                } else {
                    "heartbeats off"
                }
            ),
            &u,
        );
    }
    if !ctx.args.no_peers {
        match supervisord_overhead(ctx, window).await {
            Ok(u) => print_usage(
                &format!("supervisord, {} idle programs", ctx.args.agents),
                &u,
            ),
            Err(err) => out(&format!("overhead, supervisord: not measured: {err:#}")),
        }
    }
    Ok(())
}

async fn opmas_overhead(
    ctx: &Ctx,
    opmas: &Path,
    name: &str,
    heartbeats: bool,
    sample: &str,
    window: Duration,
) -> anyhow::Result<Usage> {
    let n = ctx.args.agents;
    let env = ctx.env(name).await?;
    let cancel = CancellationToken::new();
    let dir = ctx.dir.join(format!("ov-{name}"));
    std::fs::create_dir_all(&dir)?;
    let node = format!("ov-{name}-{}", ctx.tag);
    let marker = format!("ov{name}{}", ctx.tag);
    let result = async {
        let store = write_path(&env.pool, &ctx.client, &env.settings, &cancel);
        let t = &env.telemetry;
        let mut child = spawn_group(
            opmas,
            &[
                "supervisor",
                "--node",
                &node,
                "--log-dir",
                &dir.join("logs").display().to_string(),
            ],
            &[
                ("OPMAS_DATABASE_URL", env.url.clone()),
                ("OPMAS_DB_MAX_CONNECTIONS", "8".into()),
                ("OPMAS_NATS_URL", ctx.args.servers.nats_url.clone()),
                ("OPMAS_EVENTS_STREAM", env.settings.name.clone()),
                (
                    "OPMAS_EVENTS_SUBJECT_PREFIX",
                    env.settings.subject_prefix.clone(),
                ),
                ("OPMAS_METRICS_STREAM", t.metrics_stream.clone()),
                ("OPMAS_METRICS_SUBJECT_PREFIX", t.metrics_prefix.clone()),
                ("OPMAS_LOGS_STREAM", t.logs_stream.clone()),
                ("OPMAS_LOGS_SUBJECT_PREFIX", t.logs_prefix.clone()),
                ("OPMAS_SAMPLE_INTERVAL", sample.into()),
                ("OPMAS_LOG", "warn".into()),
            ],
            &dir.join("supervisor.log"),
        )?;
        let pid = child.id().context("supervisor pid")?;
        let inner = async {
            tokio::time::sleep(Duration::from_secs(2)).await;
            let mut spec = sleeper_spec(&ctx.agent, "-", &marker);
            spec.node = Some(node.clone());
            if heartbeats {
                spec.heartbeat.enabled = true;
                spec.heartbeat.interval_ms = 1_000;
                spec.heartbeat.timeout_ms = 5_000;
                spec.heartbeat.startup_grace_ms = 10_000;
            }
            let prefix = format!("ov-{name}-{}", ctx.tag);
            let ids = register_all(&store, &prefix, n, &spec).await?;
            // One task sends every agent's heartbeat each second (the default prefix).
            let beat_cancel = cancel.child_token();
            if heartbeats {
                let (client, ids, stop) = (ctx.client.clone(), ids.clone(), beat_cancel.clone());
                tokio::spawn(async move {
                    let mut tick = tokio::time::interval(Duration::from_secs(1));
                    for _ in 0..100_000 {
                        tokio::select! {
                            () = stop.cancelled() => break,
                            _ = tick.tick() => {}
                        }
                        for id in &ids {
                            let _ = client
                                .publish(format!("opmas.heartbeat.{id}"), "{}".into())
                                .await;
                        }
                        let _ = client.flush().await;
                    }
                });
            }
            let t0 = Instant::now();
            command_all(&store, &ids, AgentCommand::Start).await?;
            wait_events(&env.pool, &prefix, &["ProcessStarted"], n as i64, Duration::from_secs(120))
                .await?;
            let started = t0.elapsed();
            // Settle: startup work and the first samples are not idle time.
            tokio::time::sleep(Duration::from_secs(10)).await;
            let u = usage(pid, window).await?;
            beat_cancel.cancel();
            let lost: i64 = sqlx::query_scalar(
                "select count(*) from events where event_type = 'HeartbeatLost'",
            )
            .fetch_one(&env.pool)
            .await?;
            out(&format!(
                "  ({n} agents running {:.2} s after Start, as a separate process; {} alive; {lost} HeartbeatLost events)",
                started.as_secs_f64(),
                count_procs(&[&marker, "sleep"])
            ));
            anyhow::Ok(u)
        }
        .await;
        signal(pid, "-TERM");
        let _ = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;
        kill_group(Some(pid));
        inner
    }
    .await;
    sweep(&ctx.dir, &marker);
    cancel.cancel();
    tokio::time::sleep(Duration::from_millis(300)).await;
    env.pool.close().await;
    result
}

async fn supervisord_overhead(ctx: &Ctx, window: Duration) -> anyhow::Result<Usage> {
    let sv = supervisord_install(ctx).await?;
    let marker = format!("sv{}", ctx.tag);
    let mut programs = String::new();
    for i in 0..ctx.args.agents {
        programs.push_str(&format!(
            "[program:s{i}]\ncommand={} - sleep {marker}\nautorestart=true\nstartsecs=0\n\n",
            ctx.agent.display()
        ));
    }
    let dir = ctx.dir.join("sv-idle");
    let mut child = sv.start(&dir, &programs)?;
    let result = async {
        let pid = child.id().context("supervisord pid")?;
        let deadline = Instant::now() + Duration::from_secs(120);
        let t0 = Instant::now();
        while count_procs(&[&marker, "sleep"]) < ctx.args.agents {
            if Instant::now() > deadline {
                bail!("supervisord did not start all programs in 120 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let started = t0.elapsed();
        tokio::time::sleep(Duration::from_secs(10)).await;
        let u = usage(pid, window).await?;
        out(&format!(
            "  (supervisord started {} programs in {:.2} s)",
            ctx.args.agents,
            started.as_secs_f64()
        ));
        Ok(u)
    }
    .await;
    Supervisord::stop(&mut child, &dir).await;
    sweep(&ctx.dir, &marker);
    result
}
