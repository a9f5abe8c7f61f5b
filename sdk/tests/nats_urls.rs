//! NATS URLs with credentials and server lists, against a real nats-server
//! that requires a password.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

fn nats_server() -> String {
    ["/usr/sbin/nats-server", "/usr/bin/nats-server"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .unwrap_or("nats-server")
        .to_owned()
}

#[tokio::test]
async fn credentials_in_the_url_and_server_lists_connect() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("nats.conf");
    std::fs::write(
        &conf,
        format!(
            "listen: 127.0.0.1:{port}\nauthorization {{ user: agent, password: \"p@ss:word\" }}\n"
        ),
    )
    .unwrap();
    let mut server = tokio::process::Command::new(nats_server())
        .arg("-c")
        .arg(&conf)
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let url = format!("nats://agent:p%40ss%3Aword@127.0.0.1:{port}");
    let mut connected = None;
    for _ in 0..50 {
        let options = async_nats::ConnectOptions::new().connection_timeout(Duration::from_secs(1));
        if let Ok(c) = opmas_sdk::nats::connect(&url, options).await {
            connected = Some(c);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let client = connected.expect("the password in the URL is used");
    client.publish("x", "y".into()).await.unwrap();
    client.flush().await.unwrap();

    // A list: an unreachable first server, then the real one.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let list = format!("nats://127.0.0.1:{dead}, {url}");
    let client = opmas_sdk::nats::connect(&list, async_nats::ConnectOptions::new())
        .await
        .expect("the second server of the list");
    client.flush().await.unwrap();

    let wrong = format!("nats://agent:nope@127.0.0.1:{port}");
    let refused = opmas_sdk::nats::connect(
        &wrong,
        async_nats::ConnectOptions::new().connection_timeout(Duration::from_secs(2)),
    )
    .await;
    assert!(refused.is_err(), "a wrong password is refused");
    let bad = opmas_sdk::nats::connect("http://x", async_nats::ConnectOptions::new()).await;
    assert!(bad.is_err());
    server.kill().await.unwrap();
}
