//! TLS for tests: a throwaway PKI made with the openssl CLI (a CA, a server certificate for
//! 127.0.0.1 and localhost, a client certificate, and an unrelated CA), and `redis-server`
//! processes that speak only TLS (`--port 0 --tls-port P`): a server, a Sentinel watching
//! one, a three-master Cluster. Free loopback ports, never 6379; every process is killed and
//! reaped on drop, also when a test panics. Readiness is polled over TLS (PING, then our own
//! process id in `INFO server`), never slept for.

use std::fs::File;
use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use redis::{ClientTlsConfig, TlsCertificates};

/// How long a process may take to answer over TLS after it was spawned.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a Cluster may take to agree that it is complete.
const CLUSTER_TIMEOUT: Duration = Duration::from_secs(20);
const POLL: Duration = Duration::from_millis(10);
/// Fresh ports tried when the one picked was taken before redis bound it.
const PORT_ATTEMPTS: usize = 20;
/// The machine's own Redis and Sentinel live here; tests must never talk to them.
const RESERVED_PORTS: [u16; 2] = [6379, 26379];
/// The master name the TLS Sentinel monitors.
pub const MASTER_NAME: &str = "llmcache-tls";

/// A CA, a server and a client certificate signed by it, and a second CA that signed nothing
/// we use. Files live in a temp dir removed on drop.
pub struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    /// Make the keys and certificates (P-256, valid for two days).
    pub fn generate() -> Pki {
        let dir = tempfile::Builder::new()
            .prefix("llm-cache-pki-")
            .tempdir()
            .expect("temp dir for the test PKI");
        let pki = Pki { dir };
        pki.make_ca("ca", "llm-cache test CA");
        pki.make_ca("other-ca", "an unrelated CA");
        // The server certificate is also redis' client certificate towards other nodes
        // (cluster bus, sentinel to master), hence clientAuth too.
        pki.make_leaf(
            "server",
            "localhost",
            "subjectAltName=IP:127.0.0.1,DNS:localhost\n\
             extendedKeyUsage=serverAuth,clientAuth\n",
        );
        pki.make_leaf(
            "client",
            "llm-cache test client",
            "extendedKeyUsage=clientAuth\n",
        );
        pki
    }

    /// A file of the PKI, such as `ca.crt` or `server.key`.
    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }

    fn read(&self, file: &str) -> Vec<u8> {
        std::fs::read(self.path(file)).unwrap_or_else(|e| panic!("read {file}: {e}"))
    }

    /// The CA that signed the server and client certificates, PEM.
    pub fn ca(&self) -> Vec<u8> {
        self.read("ca.crt")
    }

    /// A CA that signed neither, PEM.
    pub fn other_ca(&self) -> Vec<u8> {
        self.read("other-ca.crt")
    }

    /// The client certificate, PEM.
    pub fn client_cert(&self) -> Vec<u8> {
        self.read("client.crt")
    }

    /// The client certificate's private key, PEM.
    pub fn client_key(&self) -> Vec<u8> {
        self.read("client.key")
    }

    /// The server certificate, PEM (a certificate that does not go with `client.key`).
    pub fn server_cert(&self) -> Vec<u8> {
        self.read("server.crt")
    }

    /// What a test client trusts and presents: our CA, the client certificate.
    pub fn client_certificates(&self) -> TlsCertificates {
        TlsCertificates {
            client_tls: Some(ClientTlsConfig {
                client_cert: self.client_cert(),
                client_key: self.client_key(),
            }),
            root_cert: Some(self.ca()),
        }
    }

    /// `redis-server` settings for TLS with the server certificate, as `(name, value)`.
    fn server_settings(&self, auth_clients: bool) -> Vec<(String, String)> {
        let file = |f: &str| self.path(f).display().to_string();
        vec![
            ("tls-cert-file".into(), file("server.crt")),
            ("tls-key-file".into(), file("server.key")),
            ("tls-ca-cert-file".into(), file("ca.crt")),
            (
                "tls-auth-clients".into(),
                if auth_clients { "yes" } else { "no" }.into(),
            ),
        ]
    }

    fn make_ca(&self, name: &str, subject: &str) {
        self.openssl(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.crt"),
            "-days",
            "2",
            "-subj",
            &format!("/CN={subject}"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ]);
    }

    fn make_leaf(&self, name: &str, subject: &str, extensions: &str) {
        let ext = format!("{name}.ext");
        std::fs::write(
            self.path(&ext),
            format!("basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n{extensions}"),
        )
        .expect("write the extensions file");
        self.openssl(&[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
            "-subj",
            &format!("/CN={subject}"),
        ]);
        self.openssl(&[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            &format!("{name}.crt"),
            "-days",
            "2",
            "-extfile",
            &ext,
        ]);
    }

    fn openssl(&self, args: &[&str]) {
        let out = Command::new("openssl")
            .current_dir(self.dir.path())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("run the openssl CLI (is it installed?): {e}"));
        assert!(
            out.status.success(),
            "openssl {args:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// A `redis-server` (or `redis-server --sentinel`) that listens on a TLS port only.
pub struct TlsRedis {
    child: Option<Child>,
    port: u16,
    certs: TlsCertificates,
    dir: tempfile::TempDir,
}

impl TlsRedis {
    /// A server with no persistence; `auth_clients` makes it require a client certificate.
    /// `extra` settings come after the defaults, as `--name value` arguments.
    pub fn start(pki: &Pki, auth_clients: bool, extra: &[&str]) -> TlsRedis {
        let needs_bus = extra.contains(&"--cluster-enabled");
        let settings = pki.server_settings(auth_clients);
        let extra: Vec<String> = extra.iter().map(|a| (*a).to_owned()).collect();
        spawn_ready(pki, "llm-cache-tls-redis-", needs_bus, |port, dir| {
            let mut cmd = Command::new("redis-server");
            cmd.args(["--port", "0", "--tls-port", &port.to_string()])
                .args(["--bind", "127.0.0.1", "--protected-mode", "no"])
                .args(["--save", "", "--appendonly", "no"])
                .arg("--dir")
                .arg(dir);
            for (name, value) in &settings {
                cmd.arg(format!("--{name}")).arg(value);
            }
            cmd.args(&extra);
            cmd
        })
    }

    /// A Sentinel (TLS to its clients and to the master) monitoring the TLS master on
    /// `master_port` as [`MASTER_NAME`], quorum 1.
    pub fn sentinel(pki: &Pki, master_port: u16) -> TlsRedis {
        let settings = pki.server_settings(false);
        spawn_ready(pki, "llm-cache-tls-sentinel-", false, |port, dir| {
            let mut conf = format!(
                "port 0\ntls-port {port}\nbind 127.0.0.1\nprotected-mode no\ndir {}\n\
                 tls-replication yes\n",
                dir.display()
            );
            for (name, value) in &settings {
                conf.push_str(&format!("{name} {value}\n"));
            }
            conf.push_str(&format!(
                "sentinel monitor {MASTER_NAME} 127.0.0.1 {master_port} 1\n\
                 sentinel down-after-milliseconds {MASTER_NAME} 5000\n"
            ));
            let path = dir.join("sentinel.conf");
            std::fs::write(&path, conf).expect("write sentinel.conf");
            let mut cmd = Command::new("redis-server");
            cmd.arg(path).arg("--sentinel");
            cmd
        })
    }

    /// The TLS port (never 6379).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `rediss://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("rediss://127.0.0.1:{}", self.port)
    }

    /// A blocking TLS connection (our CA, the client certificate; 5 s timeouts) for tests
    /// that look behind the cache's back.
    pub fn conn(&self) -> redis::Connection {
        let timeout = Duration::from_secs(5);
        let conn = connect(&self.url(), &self.certs, timeout)
            .unwrap_or_else(|e| panic!("connect over TLS to port {}: {e}", self.port));
        conn.set_read_timeout(Some(timeout))
            .expect("set read timeout");
        conn
    }

    /// Everything the process wrote to stdout/stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("redis.log")).unwrap_or_default()
    }

    /// SIGKILL the process and reap it; a no-op when it is already dead.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Three TLS cluster masters (`tls-cluster yes`, no replicas), joined with `redis-cli --tls
/// --cluster create`, with `cluster-require-full-coverage no`.
pub struct TlsCluster {
    pub nodes: Vec<TlsRedis>,
}

impl TlsCluster {
    pub fn start(pki: &Pki) -> TlsCluster {
        let nodes: Vec<TlsRedis> = (0..3)
            .map(|_| {
                TlsRedis::start(
                    pki,
                    false,
                    &[
                        &super::topology::CLUSTER_NODE_ARGS[..],
                        &["--tls-cluster", "yes"],
                    ]
                    .concat(),
                )
            })
            .collect();
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port()))
            .collect();
        let ca = pki.path("ca.crt");
        super::topology::create_cluster(
            &addrs,
            &["--tls".as_ref(), "--cacert".as_ref(), ca.as_os_str()],
        );
        let start = Instant::now();
        for n in &nodes {
            let mut conn = n.conn();
            loop {
                let info: String = redis::cmd("CLUSTER")
                    .arg("INFO")
                    .query(&mut conn)
                    .expect("CLUSTER INFO");
                if info.contains("cluster_state:ok") && info.contains("cluster_known_nodes:3") {
                    break;
                }
                assert!(
                    start.elapsed() < CLUSTER_TIMEOUT,
                    "the TLS cluster did not come together in {CLUSTER_TIMEOUT:?}: {info}"
                );
                sleep(POLL);
            }
        }
        TlsCluster { nodes }
    }

    /// `rediss://127.0.0.1:<port>` of every node.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(TlsRedis::url).collect()
    }
}

fn connect(
    url: &str,
    certs: &TlsCertificates,
    timeout: Duration,
) -> redis::RedisResult<redis::Connection> {
    redis::Client::build_with_tls(url, certs.clone())?.get_connection_with_timeout(timeout)
}

/// Spawn what `command` builds on a free port until one is ours, and wait until it answers
/// PING over TLS with its own process id.
fn spawn_ready(
    pki: &Pki,
    prefix: &str,
    needs_bus: bool,
    command: impl Fn(u16, &Path) -> Command,
) -> TlsRedis {
    let mut last_log = String::new();
    for _ in 0..PORT_ATTEMPTS {
        let dir = tempfile::Builder::new()
            .prefix(prefix)
            .tempdir()
            .expect("temp dir for redis-server");
        let port = pick_free_port(needs_bus);
        let log = File::create(dir.path().join("redis.log")).expect("create the log file");
        let child = command(port, dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone the log file handle"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn redis-server (is it installed?): {e}"));
        let mut server = TlsRedis {
            child: Some(child),
            port,
            certs: pki.client_certificates(),
            dir,
        };
        match wait_ready(&mut server) {
            Ok(()) => return server,
            Err(Some(log)) => last_log = log, // the port was taken: try another
            Err(None) => panic!(
                "redis-server on TLS port {port} did not become ready. log:\n{}",
                server.log()
            ),
        }
    }
    panic!("redis-server: no free port after {PORT_ATTEMPTS} attempts; last log:\n{last_log}");
}

/// `Err(Some(log))` when the port was taken, `Err(None)` on any other failure.
fn wait_ready(server: &mut TlsRedis) -> Result<(), Option<String>> {
    let deadline = Instant::now() + READY_TIMEOUT;
    let pid = server.child.as_ref().expect("just spawned").id();
    loop {
        let child = server.child.as_mut().expect("just spawned");
        if child.try_wait().expect("poll redis-server").is_some() {
            let log = server.log();
            server.kill();
            return Err(log.contains("Address already in use").then_some(log));
        }
        match probe(&server.url(), &server.certs) {
            Some(p) if p == pid => return Ok(()),
            Some(_) => {
                // Someone else answers on our port: ours cannot bind it.
                let log = server.log();
                server.kill();
                return Err(Some(log));
            }
            None => {}
        }
        if Instant::now() >= deadline {
            return Err(None);
        }
        sleep(POLL);
    }
}

/// The `process_id` of whoever answers PING and `INFO server` over TLS at `url`.
fn probe(url: &str, certs: &TlsCertificates) -> Option<u32> {
    let timeout = Duration::from_millis(500);
    let mut conn = connect(url, certs, timeout).ok()?;
    conn.set_read_timeout(Some(timeout)).ok()?;
    let pong: String = redis::cmd("PING").query(&mut conn).ok()?;
    if pong != "PONG" {
        return None;
    }
    let info: String = redis::cmd("INFO").arg("server").query(&mut conn).ok()?;
    info.lines()
        .find_map(|l| l.strip_prefix("process_id:"))
        .and_then(|pid| pid.trim().parse().ok())
}

/// Ask the OS for a free loopback port, never a reserved one; with `needs_bus`, the cluster
/// bus port (`port + 10000`) must be free too.
fn pick_free_port(needs_bus: bool) -> u16 {
    loop {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind 127.0.0.1:0");
        let port = listener.local_addr().expect("local addr").port();
        if RESERVED_PORTS.contains(&port) {
            continue;
        }
        if needs_bus {
            let Some(bus) = port.checked_add(10_000) else {
                continue;
            };
            if RESERVED_PORTS.contains(&bus)
                || TcpListener::bind((Ipv4Addr::LOCALHOST, bus)).is_err()
            {
                continue;
            }
        }
        return port;
    }
}
