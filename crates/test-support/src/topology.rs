//! Redis topologies for scale-out tests, from real processes on free loopback ports: a
//! Sentinel group (one master, one replica, three sentinels) and a Cluster of three masters.
//! Everything is killed on drop. Readiness is polled (bounded), never slept for.

use std::fs::File;
use std::future::Future;
use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use super::redis::RedisServer;

/// How long a topology may take to come together.
const SETUP_LIMIT: Duration = Duration::from_secs(20);
const POLL: Duration = Duration::from_millis(20);
/// The master name the Sentinel group monitors.
pub const MASTER_NAME: &str = "llmcache";

/// Poll an async condition until it holds; fails the test with `what` after `limit`.
pub async fn eventually_async<F, Fut>(what: &str, limit: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    while !cond().await {
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Blocking poll used while a topology is set up (outside any runtime's hot path).
/// `redis-cli [client_args] --cluster create ADDRS` with one master per node; panics with
/// redis-cli's output when it fails.
pub fn create_cluster(addrs: &[String], client_args: &[&std::ffi::OsStr]) {
    let out = Command::new("redis-cli")
        .args(client_args)
        .arg("--cluster")
        .arg("create")
        .args(addrs)
        .args(["--cluster-replicas", "0", "--cluster-yes"])
        .stdin(Stdio::null())
        .output()
        .expect("run redis-cli --cluster create");
    assert!(
        out.status.success(),
        "redis-cli {client_args:?} --cluster create failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < SETUP_LIMIT,
            "timed out after {SETUP_LIMIT:?} waiting for: {what}"
        );
        sleep(POLL);
    }
}

/// One request over a fresh connection (RESP2 inline), its reply as text lines.
pub fn command(port: u16, args: &[&str]) -> Option<String> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let timeout = Duration::from_millis(500);
    let mut stream = TcpStream::connect_timeout(&addr, timeout).ok()?;
    stream.set_read_timeout(Some(timeout)).ok()?;
    stream.set_write_timeout(Some(timeout)).ok()?;
    let mut req = format!("*{}\r\n", args.len());
    for a in args {
        req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    stream.write_all(req.as_bytes()).ok()?;
    let mut reader = BufReader::new(stream);
    let mut out = String::new();
    read_reply(&mut reader, &mut out)?;
    Some(out)
}

fn read_reply(r: &mut impl BufRead, out: &mut String) -> Option<()> {
    let mut line = String::new();
    r.read_line(&mut line).ok()?;
    let line = line.trim_end();
    let (kind, rest) = line.split_at(1);
    match kind {
        "+" | "-" | ":" => {
            out.push_str(line);
            out.push('\n');
        }
        "$" => {
            let n: i64 = rest.parse().ok()?;
            if n >= 0 {
                let mut buf = vec![0; n as usize + 2];
                std::io::Read::read_exact(r, &mut buf).ok()?;
                out.push_str(&String::from_utf8_lossy(&buf[..n as usize]));
                out.push('\n');
            }
        }
        "*" => {
            let n: i64 = rest.parse().ok()?;
            for _ in 0..n.max(0) {
                read_reply(r, out)?;
            }
        }
        _ => return None,
    }
    Some(())
}

fn free_port() -> u16 {
    loop {
        let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind 127.0.0.1:0");
        let port = l.local_addr().expect("local addr").port();
        if port != 6379 && port != 26379 {
            return port;
        }
    }
}

/// A `redis-server --sentinel` process.
pub struct Sentinel {
    child: Option<Child>,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Sentinel {
    fn start(master_port: u16, down_after_ms: u64, failover_timeout_ms: u64) -> Sentinel {
        for _ in 0..20 {
            let dir = tempfile::Builder::new()
                .prefix("llm-cache-sentinel-")
                .tempdir()
                .expect("temp dir");
            let port = free_port();
            let conf = dir.path().join("sentinel.conf");
            std::fs::write(
                &conf,
                format!(
                    "port {port}\nbind 127.0.0.1\nprotected-mode no\ndir {dir}\n\
                     sentinel monitor {MASTER_NAME} 127.0.0.1 {master_port} 2\n\
                     sentinel down-after-milliseconds {MASTER_NAME} {down_after_ms}\n\
                     sentinel failover-timeout {MASTER_NAME} {failover_timeout_ms}\n\
                     sentinel parallel-syncs {MASTER_NAME} 1\n",
                    dir = dir.path().display()
                ),
            )
            .expect("write sentinel.conf");
            let log = File::create(dir.path().join("sentinel.log")).expect("log file");
            let child = Command::new("redis-server")
                .arg(&conf)
                .arg("--sentinel")
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("log handle"))
                .stderr(log)
                .spawn()
                .expect("spawn redis-server --sentinel");
            let mut s = Sentinel {
                child: Some(child),
                port,
                _dir: dir,
            };
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(5) {
                let exited = s
                    .child
                    .as_mut()
                    .is_some_and(|c| c.try_wait().ok().flatten().is_some());
                if exited {
                    break; // most likely the port was taken meanwhile: try another
                }
                if command(port, &["PING"]).is_some_and(|r| r.starts_with("+PONG")) {
                    return s;
                }
                sleep(POLL);
            }
            s.kill();
        }
        panic!("could not start a sentinel in 20 attempts");
    }

    /// The sentinel's port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:<port>`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Kill the sentinel (a no-op when already dead).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The master's port as this sentinel names it now.
    pub fn master_port(&self) -> Option<u16> {
        let reply = command(
            self.port,
            &["SENTINEL", "get-master-addr-by-name", MASTER_NAME],
        )?;
        reply.lines().nth(1)?.parse().ok()
    }
}

impl Drop for Sentinel {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One master, one replica, three sentinels (quorum 2), all on loopback.
pub struct SentinelGroup {
    pub master: RedisServer,
    pub replica: RedisServer,
    pub sentinels: Vec<Sentinel>,
}

impl SentinelGroup {
    /// Start the group and wait until the replica is in sync and every sentinel knows the
    /// replica and the two other sentinels (so a failover can happen).
    pub fn start(down_after_ms: u64, failover_timeout_ms: u64) -> SentinelGroup {
        let master = RedisServer::start();
        let mport = master.port().to_string();
        let replica = RedisServer::start_with_args(&["--replicaof", "127.0.0.1", &mport]);
        wait_until("the replica to sync with the master", || {
            command(replica.port(), &["INFO", "replication"])
                .is_some_and(|i| i.contains("master_link_status:up"))
        });
        let sentinels: Vec<Sentinel> = (0..3)
            .map(|_| Sentinel::start(master.port(), down_after_ms, failover_timeout_ms))
            .collect();
        for s in &sentinels {
            wait_until(
                "every sentinel to see the replica and the other sentinels",
                || {
                    let replicas = command(s.port, &["SENTINEL", "replicas", MASTER_NAME]);
                    let others = command(s.port, &["SENTINEL", "sentinels", MASTER_NAME]);
                    replicas.is_some_and(|r| r.contains(&replica.port().to_string()))
                        && others.is_some_and(|o| o.matches("127.0.0.1").count() >= 2)
                },
            );
        }
        SentinelGroup {
            master,
            replica,
            sentinels,
        }
    }

    /// The sentinels' addresses, `host:port`.
    pub fn addrs(&self) -> Vec<String> {
        self.sentinels.iter().map(Sentinel::addr).collect()
    }

    /// Whether the sentinels (a majority of them) name the replica as master now.
    pub fn promoted(&self) -> bool {
        let rport = self.replica.port();
        self.sentinels
            .iter()
            .filter(|s| s.master_port() == Some(rport))
            .count()
            >= 2
            && command(rport, &["ROLE"]).is_some_and(|r| r.starts_with("master"))
    }
}

/// Three cluster masters (no replicas), `cluster-require-full-coverage no` so a dead node
/// takes only its own slots away.
/// What every node of a test cluster runs with (one-second node timeout, partial coverage
/// allowed so that a killed node's slots only miss).
pub const CLUSTER_NODE_ARGS: [&str; 8] = [
    "--cluster-enabled",
    "yes",
    "--cluster-config-file",
    "nodes.conf",
    "--cluster-node-timeout",
    "1000",
    "--cluster-require-full-coverage",
    "no",
];

pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    pub fn start() -> RedisCluster {
        let nodes: Vec<RedisServer> = (0..3)
            .map(|_| RedisServer::start_with_args(&CLUSTER_NODE_ARGS))
            .collect();
        let addrs: Vec<String> = nodes.iter().map(RedisServer::addr).collect();
        create_cluster(&addrs, &[]);
        for n in &nodes {
            wait_until("every node to see the cluster ok", || {
                command(n.port(), &["CLUSTER", "INFO"]).is_some_and(|i| {
                    i.contains("cluster_state:ok") && i.contains("cluster_known_nodes:3")
                })
            });
        }
        RedisCluster { nodes }
    }

    /// `host:port` of every node.
    pub fn addrs(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::addr).collect()
    }

    /// The index of the node that serves `key`'s slot.
    pub fn owner(&self, key: &str) -> usize {
        let slot: u16 = command(self.nodes[0].port(), &["CLUSTER", "KEYSLOT", key])
            .and_then(|r| r.trim().trim_start_matches(':').parse().ok())
            .expect("CLUSTER KEYSLOT");
        let slots = command(self.nodes[0].port(), &["CLUSTER", "SLOTS"]).expect("CLUSTER SLOTS");
        // Flattened: start, end, host, port, id, [start, end, host, port, id ...]
        let lines: Vec<&str> = slots.lines().collect();
        for chunk in lines.chunks(5) {
            let start: u16 = chunk[0].trim_start_matches(':').parse().expect("start");
            let end: u16 = chunk[1].trim_start_matches(':').parse().expect("end");
            let port: u16 = chunk[3].trim_start_matches(':').parse().expect("port");
            if (start..=end).contains(&slot) {
                return self
                    .nodes
                    .iter()
                    .position(|n| n.port() == port)
                    .expect("owner among our nodes");
            }
        }
        panic!("slot {slot} is not served");
    }

    /// Keys stored on node `i`.
    pub fn dbsize(&self, i: usize) -> u64 {
        command(self.nodes[i].port(), &["DBSIZE"])
            .and_then(|r| r.trim().trim_start_matches(':').parse().ok())
            .unwrap_or(0)
    }
}
