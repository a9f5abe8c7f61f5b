-- The event store. `events` and `snapshots` keep the postgres-es 0.5 layout
-- (its repository can read them), with two additions: `recorded_at` on events
-- (audit time ranges) and snapshots keyed by aggregate alone (one row each,
-- upserted in the same statement as the events; see docs/adr/0002).
create table events
(
    aggregate_type text                         not null,
    aggregate_id   text                         not null,
    sequence       bigint check (sequence >= 0) not null,
    event_type     text                         not null,
    event_version  text                         not null,
    payload        json                         not null,
    metadata       json                         not null,
    recorded_at    timestamptz                  not null default now(),
    primary key (aggregate_type, aggregate_id, sequence)
);

create table snapshots
(
    aggregate_type   text                                 not null,
    aggregate_id     text                                 not null,
    last_sequence    bigint check (last_sequence >= 0)    not null,
    current_snapshot bigint check (current_snapshot >= 0) not null,
    payload          json                                 not null,
    primary key (aggregate_type, aggregate_id)
);

-- Transactional outbox (no NOTIFY in here: a notifying transaction takes a
-- global lock at commit, which halved command throughput; writers poke the
-- relay after commit instead, see docs/adr/0003). One row per committed event, written by a trigger in
-- the same transaction as the event insert, deleted by the relay once
-- JetStream has acknowledged the publish. `id` follows insertion order, and an
-- agent's event N+1 can only be inserted after N committed, so ordering by id
-- keeps per-agent order.
create table outbox
(
    id             bigserial primary key,
    aggregate_type text        not null,
    aggregate_id   text        not null,
    sequence       bigint      not null,
    -- set by `opmas events verify --repair`: publish under a fresh message id
    -- so that the stream's duplicate window does not drop the re-publication
    repair         boolean     not null default false,
    created_at     timestamptz not null default now()
);

create function opmas_outbox_capture() returns trigger
    language plpgsql as
$$
begin
    insert into outbox (aggregate_type, aggregate_id, sequence)
    select aggregate_type, aggregate_id, sequence
    from new_events
    order by aggregate_id, sequence;
    return null;
end
$$;

create trigger events_to_outbox
    after insert
    on events
    referencing new table as new_events
    for each statement
execute function opmas_outbox_capture();

-- Relay bookkeeping: one row per relay name (the active relay holds an
-- advisory lock; this row is what operators and `opmas events verify` read).
create table relay_state
(
    relay_name        text primary key,
    published_total   bigint      not null default 0,
    last_published_at timestamptz,
    last_error        text,
    last_error_at     timestamptz,
    updated_at        timestamptz not null default now()
);
