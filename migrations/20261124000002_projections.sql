-- Read models (projections/, docs/projections.md).
--
-- Event-sourced models: agent_status, agent_status_history,
-- agent_recovery_attempts, agent_errors, agent_error_groups, agent_configs.
-- They are written together, in one transaction per batch, and share one
-- checkpoint per agent: agent_status.last_sequence. Every column is derived
-- from events (created_at/updated_at are the `recorded_at` of the events that
-- created/last changed a row), so `opmas replay` rebuilds them identically
-- and `opmas replay --check` can compare checksums of whole rows.
-- Telemetry models (agent_metric_*, agent_logs) come from the OPMAS_METRICS
-- and OPMAS_LOGS streams and are checkpointed by stream sequence in
-- projection_consumers.

create extension if not exists pg_trgm;

create table agent_status
(
    agent_id          text primary key,
    -- checkpoint of every event-sourced read model for this agent
    last_sequence     bigint      not null,
    last_event_type   text        not null,
    registered        boolean     not null,
    deregistered      boolean     not null,
    agent_type        text,
    package_version   text,
    desired_state     text        not null,
    status            text        not null,
    health            text        not null,
    recovery_status   text        not null,
    recovery_attempts integer     not null,
    node              text,
    pid               bigint,
    started_at        timestamptz,
    restart_count     bigint      not null,
    heartbeat_lost    boolean     not null,
    last_heartbeat_at timestamptz,
    last_error        text,
    spec_version      integer     not null,
    config_version    integer     not null,
    -- the folded `opmas_domain::Agent`
    state             jsonb       not null,
    created_at        timestamptz not null,
    updated_at        timestamptz not null
);
create index on agent_status (status);
create index on agent_status (node);

create table agent_status_history
(
    agent_id       text        not null,
    sequence       bigint      not null,
    event_type     text        not null,
    from_status    text,
    to_status      text        not null,
    from_desired   text,
    to_desired     text        not null,
    reason         text,
    actor          text        not null,
    correlation_id text,
    at             timestamptz not null,
    created_at     timestamptz not null,
    primary key (agent_id, sequence)
);
create index on agent_status_history (at);

create table agent_recovery_attempts
(
    agent_id           text        not null,
    -- sequence of the RecoveryTriggered event
    sequence           bigint      not null,
    attempt            integer     not null,
    strategy           text        not null,
    reason             text        not null,
    actor              text        not null,
    started_at         timestamptz not null,
    completed_sequence bigint,
    completed_at       timestamptz,
    -- in_progress, succeeded, failed
    outcome            text        not null,
    error              text,
    created_at         timestamptz not null,
    updated_at         timestamptz not null,
    primary key (agent_id, sequence)
);
create index on agent_recovery_attempts (outcome) where outcome = 'in_progress';

create table agent_errors
(
    agent_id    text        not null,
    sequence    bigint      not null,
    severity    text        not null,
    category    text        not null,
    error_type  text        not null,
    message     text        not null,
    context     jsonb       not null,
    -- category + type + message with numbers and ids masked: repeats share it
    fingerprint text        not null,
    actor       text        not null,
    at          timestamptz not null,
    created_at  timestamptz not null,
    primary key (agent_id, sequence)
);
create index on agent_errors (agent_id, at);
create index on agent_errors (fingerprint, at);
create index on agent_errors (at);

create table agent_error_groups
(
    agent_id       text        not null,
    fingerprint    text        not null,
    severity       text        not null,
    category       text        not null,
    error_type     text        not null,
    first_message  text        not null,
    count          bigint      not null,
    first_seen     timestamptz not null,
    last_seen      timestamptz not null,
    first_sequence bigint      not null,
    last_sequence  bigint      not null,
    created_at     timestamptz not null,
    updated_at     timestamptz not null,
    primary key (agent_id, fingerprint)
);
create index on agent_error_groups (fingerprint);
create index on agent_error_groups (last_seen);

create table agent_configs
(
    agent_id         text        not null,
    version          integer     not null,
    config           jsonb       not null,
    -- [{"path": "/a/b", "from": old, "to": new}], missing sides omitted
    diff             jsonb       not null,
    previous_version integer,
    rolled_back_to   integer,
    event_type       text        not null,
    sequence         bigint      not null,
    actor            text        not null,
    at               timestamptz not null,
    created_at       timestamptz not null,
    primary key (agent_id, version)
);

-- Stream consumers: stream-sequence checkpoint (telemetry) and lag.
create table projection_consumers
(
    name            text primary key,
    stream          text        not null,
    stream_sequence bigint      not null default 0,
    pending         bigint      not null default 0,
    processed       bigint      not null default 0,
    created_at      timestamptz not null default now(),
    updated_at      timestamptz not null default now()
);

create table agent_metric_samples
(
    agent_id    text             not null,
    at          timestamptz      not null,
    node        text             not null,
    pid         bigint           not null,
    cpu_percent double precision not null,
    rss_bytes   bigint           not null,
    threads     bigint           not null,
    open_fds    bigint           not null,
    created_at  timestamptz      not null default now(),
    primary key (agent_id, at)
);
-- retention and time ranges over an append-mostly table
create index on agent_metric_samples using brin (at);

-- resolution '1m' or '1h'; avg of 1h rows is weighted by samples
create table agent_metric_rollups
(
    agent_id    text             not null,
    resolution  text             not null check (resolution in ('1m', '1h')),
    bucket      timestamptz      not null,
    samples     bigint           not null,
    cpu_min     double precision not null,
    cpu_avg     double precision not null,
    cpu_max     double precision not null,
    cpu_last    double precision not null,
    rss_min     double precision not null,
    rss_avg     double precision not null,
    rss_max     double precision not null,
    rss_last    double precision not null,
    threads_min double precision not null,
    threads_avg double precision not null,
    threads_max double precision not null,
    threads_last double precision not null,
    fds_min     double precision not null,
    fds_avg     double precision not null,
    fds_max     double precision not null,
    fds_last    double precision not null,
    last_at     timestamptz      not null,
    created_at  timestamptz      not null default now(),
    updated_at  timestamptz      not null default now(),
    primary key (agent_id, resolution, bucket)
);
create index on agent_metric_rollups (resolution, bucket);

-- minute buckets that received samples since they were last rolled up
create table agent_metric_dirty
(
    bucket     timestamptz primary key,
    created_at timestamptz not null default now()
);

create table agent_logs
(
    -- the OPMAS_LOGS stream sequence: a redelivered line is the same row
    stream_sequence bigint primary key,
    agent_id        text        not null,
    at              timestamptz not null,
    level           text        not null,
    stream          text        not null,
    node            text        not null,
    pid             bigint      not null,
    line            text        not null,
    dropped_before  bigint      not null,
    created_at      timestamptz not null default now()
);
create index on agent_logs (agent_id, at);
create index on agent_logs using brin (at);
create index on agent_logs using gin (line gin_trgm_ops);
