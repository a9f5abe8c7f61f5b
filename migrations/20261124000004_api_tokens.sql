-- API tokens for automation (api/src/auth/tokens.rs, docs/security.md).
-- Only the SHA-256 of a token is stored: the token itself is shown once,
-- when it is created. Revoked tokens are kept (revoked_at set) for audit.
create table api_tokens
(
    id           uuid primary key,
    name         text        not null,
    role         text        not null check (role in ('viewer', 'operator', 'admin')),
    hash         text        not null unique,
    -- first characters of the token, to recognise it in listings
    prefix       text        not null,
    created_by   text        not null,
    created_at   timestamptz not null default now(),
    expires_at   timestamptz,
    revoked_at   timestamptz,
    last_used_at timestamptz
);
