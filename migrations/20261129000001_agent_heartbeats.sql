-- Live heartbeats: the last heartbeat the supervisor saw from each agent,
-- carried in its metric samples. Not event-sourced (a heartbeat is not an
-- event; only its loss and return are), so replay leaves it alone.
create table agent_heartbeats (
    agent_id  text primary key,
    last_seen timestamptz not null
);
