//! NATS URLs as OPMAS takes them: one URL or a comma-separated list of a
//! cluster's servers, with credentials in the URL (`nats://user:password@host`
//! or `nats://token@host`), which async-nats does not read by itself.

use std::io;
use std::str::FromStr;

use async_nats::{ConnectOptions, ServerAddr};

/// The servers of `urls` and `options` with the credentials the first URL
/// that has any carries.
pub fn prepare(
    urls: &str,
    options: ConnectOptions,
) -> io::Result<(ConnectOptions, Vec<ServerAddr>)> {
    let servers = urls
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(ServerAddr::from_str)
        .collect::<io::Result<Vec<_>>>()?;
    if servers.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "no NATS server in the URL",
        ));
    }
    let options = match servers.iter().find(|s| s.username().is_some()) {
        Some(s) => {
            let user = decode(s.username().unwrap_or_default());
            match s.password() {
                Some(password) => options.user_and_password(user, decode(password)),
                None => options.token(user),
            }
        }
        None => options,
    };
    Ok((options, servers))
}

/// Connects with [`prepare`].
pub async fn connect(
    urls: &str,
    options: ConnectOptions,
) -> Result<async_nats::Client, async_nats::ConnectError> {
    let (options, servers) = prepare(urls, options).map_err(|e| {
        async_nats::ConnectError::with_source(async_nats::ConnectErrorKind::ServerParse, e)
    })?;
    options.connect(servers).await
}

/// Percent-decoding of URL user info (`p%40ss` is `p@ss`).
fn decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Ok(v) = u8::from_str_radix(&text[i + 1..i + 3], 16)
        {
            out.push(v);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn lists_credentials_and_errors() {
        let (_, servers) =
            prepare("nats://a:4222, nats://b:4223,c", ConnectOptions::new()).unwrap();
        let hosts: Vec<(String, u16)> = servers
            .iter()
            .map(|s| (s.host().to_owned(), s.port()))
            .collect();
        assert_eq!(
            hosts,
            [("a".into(), 4222), ("b".into(), 4223), ("c".into(), 4222)]
        );
        assert!(prepare("", ConnectOptions::new()).is_err());
        assert!(prepare("http://x", ConnectOptions::new()).is_err());
        assert_eq!(decode("p%40ss%3a1"), "p@ss:1");
        assert_eq!(decode("plain%"), "plain%");
    }
}
