//! Checks the test harness itself: a real redis-server per test, and its fault controls.

use llm_cache_test_support as support;

use std::process::Command;
use std::time::Duration;

use redis::AsyncCommands;
use support::redis::RedisServer;

fn pid_alive(pid: u32) -> bool {
    Command::new("kill")
        .args(["-0", &pid.to_string()])
        .stderr(std::process::Stdio::null())
        .status()
        .expect("run kill -0")
        .success()
}

#[tokio::test]
async fn set_get_pause_resume_kill_restart_drop() {
    let mut server = RedisServer::start();
    assert_ne!(server.port(), 6379);
    assert_eq!(server.url(), format!("redis://127.0.0.1:{}", server.port()));
    assert_eq!(server.addr(), format!("127.0.0.1:{}", server.port()));

    let mut conn = server.conn().await;
    let () = conn.set("k", "v").await.unwrap();
    let got: String = conn.get("k").await.unwrap();
    assert_eq!(got, "v");
    assert_eq!(server.redis_cli(&["GET", "k"]), "v");

    // A paused server keeps the socket open but answers nothing.
    server.pause();
    let stalled =
        tokio::time::timeout(Duration::from_millis(200), conn.get::<_, String>("k")).await;
    assert!(stalled.is_err(), "GET answered while paused: {stalled:?}");
    server.resume();
    let got: String = conn.get("k").await.unwrap();
    assert_eq!(got, "v");

    // Killed: the port refuses; restarted on the same port with an empty dataset.
    let port = server.port();
    let old_pid = server.pid().unwrap();
    server.kill();
    assert!(server.pid().is_none());
    assert!(!pid_alive(old_pid));
    assert!(std::net::TcpStream::connect(server.addr()).is_err());
    server.restart();
    assert_eq!(server.port(), port);
    let mut conn = server.conn().await;
    let gone: Option<String> = conn.get("k").await.unwrap();
    assert_eq!(gone, None);

    // Restart of a running server also works.
    server.restart();
    let mut sync = server.sync_conn();
    let () = redis::cmd("SET")
        .arg("s")
        .arg("1")
        .query(&mut sync)
        .unwrap();
    let n: i64 = redis::cmd("GET").arg("s").query(&mut sync).unwrap();
    assert_eq!(n, 1);

    // Drop reaps the process, even while paused.
    let pid = server.pid().unwrap();
    server.pause();
    drop(server);
    assert!(
        !pid_alive(pid),
        "redis-server {pid} outlived its RedisServer"
    );
}

#[test]
fn extra_args_are_applied() {
    let server = RedisServer::start_with_args(&["--maxmemory", "1mb"]);
    let out = server.redis_cli(&["CONFIG", "GET", "maxmemory"]);
    assert_eq!(out, "maxmemory\n1048576");
    assert_eq!(server.redis_cli(&["CONFIG", "GET", "save"]), "save");
}

#[test]
fn panicking_test_leaves_no_process() {
    let pid = std::sync::Mutex::new(None);
    let result = std::panic::catch_unwind(|| {
        let server = RedisServer::start();
        *pid.lock().unwrap() = server.pid();
        panic!("test body fails");
    });
    assert!(result.is_err());
    let pid = pid.into_inner().unwrap().unwrap();
    assert!(!pid_alive(pid));
}

#[test]
fn many_servers_in_parallel_get_distinct_ports() {
    let servers: Vec<_> = (0..8)
        .map(|_| std::thread::spawn(RedisServer::start))
        .map(|h| h.join().unwrap())
        .collect();
    let mut ports: Vec<_> = servers.iter().map(RedisServer::port).collect();
    ports.sort_unstable();
    ports.dedup();
    assert_eq!(ports.len(), servers.len());
    for s in &servers {
        assert_eq!(s.redis_cli(&["PING"]), "PONG");
    }
}
