//! A real `redis-server` per test, on a free loopback port, in its own temp dir, with fault
//! controls (kill, pause, resume, restart). Never touches the machine's port 6379, and
//! never leaves a process behind: Drop resumes, kills and reaps it, also when a test panics.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::sleep;
use std::time::{Duration, Instant};

/// How long a server may take to answer PING after it was spawned.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause between readiness probes.
const POLL_INTERVAL: Duration = Duration::from_millis(10);
/// How many fresh ports `start` tries when the one it picked was taken before redis bound it.
const PORT_ATTEMPTS: usize = 20;
/// Redis Cluster listens on `port + 10000` for its bus.
const CLUSTER_BUS_OFFSET: u16 = 10_000;
/// The machine's own Redis (e.g. the apt service) lives here; tests must never talk to it.
const RESERVED_PORT: u16 = 6379;

/// A `redis-server` child process owned by one test.
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    args: Vec<String>,
    dir: tempfile::TempDir,
    log_path: PathBuf,
    paused: AtomicBool,
}

/// Why one spawn did not become a ready server.
enum StartFailure {
    /// Someone else bound the port between our probe and redis' bind: try another.
    PortInUse,
    /// Anything else; carries a description for the panic message.
    Other(String),
}

impl RedisServer {
    /// Starts a server with the default test configuration (no persistence).
    pub fn start() -> RedisServer {
        Self::start_with_args(&[])
    }

    /// Starts a server with extra `redis-server` arguments, appended after the defaults so
    /// they can override them (e.g. `&["--maxmemory", "1mb"]`).
    pub fn start_with_args(args: &[&str]) -> RedisServer {
        let dir = tempfile::Builder::new()
            .prefix("llm-cache-redis-")
            .tempdir()
            .expect("create temp dir for redis-server");
        let log_path = dir.path().join("redis.log");
        let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        let needs_bus = args
            .iter()
            .any(|a| a.trim_start_matches('-') == "cluster-enabled");
        let mut server = RedisServer {
            child: None,
            port: 0,
            args,
            dir,
            log_path,
            paused: AtomicBool::new(false),
        };
        let mut last = String::new();
        for _ in 0..PORT_ATTEMPTS {
            server.port = pick_free_port(needs_bus);
            match server.spawn_and_wait() {
                Ok(()) => return server,
                Err(StartFailure::PortInUse) => last = server.log(),
                Err(StartFailure::Other(why)) => panic!("{why}"),
            }
        }
        panic!("redis-server: no free port after {PORT_ATTEMPTS} attempts; last log:\n{last}");
    }

    /// The TCP port the server listens on (never 6379).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// `127.0.0.1:<port>`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The process id of the running server, `None` once killed.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The server's working directory (removed on Drop).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Everything the current server process wrote to stdout/stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// SIGKILLs the server and reaps it. Clients see connection resets / refused connects.
    /// A no-op if it is already dead.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SIGKILL works on a stopped process too; no SIGCONT needed.
            let _ = child.kill();
            let _ = child.wait();
        }
        self.paused.store(false, Ordering::SeqCst);
    }

    /// SIGSTOPs the server: connections stay open but nothing is answered (a hung Redis).
    /// Returns once the kernel reports the process as stopped.
    pub fn pause(&self) {
        let pid = self.running_pid("pause");
        signal(pid, "-STOP");
        self.paused.store(true, Ordering::SeqCst);
        wait_for_state(pid, |stopped| stopped);
    }

    /// SIGCONTs a paused server; queued commands are then answered.
    pub fn resume(&self) {
        let pid = self.running_pid("resume");
        signal(pid, "-CONT");
        self.paused.store(false, Ordering::SeqCst);
        wait_for_state(pid, |stopped| !stopped);
    }

    /// Kills the server if it is running, then starts it again on the same port with the
    /// same arguments (an empty dataset) and waits until it answers PING.
    pub fn restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            match self.spawn_and_wait() {
                Ok(()) => return,
                Err(StartFailure::PortInUse) if Instant::now() < deadline => {
                    sleep(Duration::from_millis(100));
                }
                Err(StartFailure::PortInUse) => panic!(
                    "redis-server: port {} stayed taken; cannot restart. log:\n{}",
                    self.port,
                    self.log()
                ),
                Err(StartFailure::Other(why)) => panic!("{why}"),
            }
        }
    }

    /// A raw multiplexed connection (5 s connect and response timeouts) for tests that
    /// write garbage or inspect keys behind the cache's back.
    pub async fn conn(&self) -> redis::aio::MultiplexedConnection {
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(5)))
            .set_response_timeout(Some(Duration::from_secs(5)));
        self.client()
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .unwrap_or_else(|e| panic!("connect to redis-server at {}: {e}", self.addr()))
    }

    /// A raw blocking connection (5 s timeouts).
    pub fn sync_conn(&self) -> redis::Connection {
        let timeout = Duration::from_secs(5);
        let conn = self
            .client()
            .get_connection_with_timeout(timeout)
            .unwrap_or_else(|e| panic!("connect to redis-server at {}: {e}", self.addr()));
        conn.set_read_timeout(Some(timeout))
            .expect("set read timeout");
        conn.set_write_timeout(Some(timeout))
            .expect("set write timeout");
        conn
    }

    /// Runs `redis-cli -h 127.0.0.1 -p <port> <args...>` and returns its stdout, trimmed.
    /// Panics if redis-cli cannot be run or exits non-zero.
    /// Keys under `prefix` that hold a lease marker now (a fetch under way): a lease lives
    /// in its entry's key as a 21-byte value starting `LLMC\xfe` until the value replaces it.
    pub fn leases_held(&self, prefix: &str) -> usize {
        let keys = self.redis_cli(&["--scan", "--pattern", &format!("{prefix}:*")]);
        keys.lines()
            .filter(|k| !k.is_empty())
            .filter(|k| self.redis_cli(&["STRLEN", k]) == "21")
            .count()
    }

    /// Calls of the commands that touch cache keys (`get`, `mget`, `set`, `evalsha`, `eval`,
    /// `exists`, `unlink`, `del`) since the last `CONFIG RESETSTAT`, from `INFO
    /// commandstats`, as `"name=calls"` sorted by name.
    pub fn data_commands(&self) -> Vec<String> {
        data_commands(&self.redis_cli(&["INFO", "commandstats"]))
    }

    pub fn redis_cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run redis-cli");
        assert!(
            out.status.success(),
            "redis-cli {args:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim_end().to_owned()
    }

    fn client(&self) -> redis::Client {
        redis::Client::open(self.url()).expect("valid redis url")
    }

    fn running_pid(&self, what: &str) -> u32 {
        self.pid()
            .unwrap_or_else(|| panic!("{what}: redis-server on port {} is not running", self.port))
    }

    /// Spawns redis-server on `self.port` and waits until it is the one answering PING.
    fn spawn_and_wait(&mut self) -> Result<(), StartFailure> {
        let log = File::create(&self.log_path).expect("create redis log file");
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .args(["--protected-mode", "no"])
            // Lets tests use DEBUG SLEEP / DEBUG SET-ACTIVE-EXPIRE from loopback.
            .args(["--enable-debug-command", "local"])
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log file handle"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn redis-server (is it installed?): {e}"));
        self.child = Some(child);
        self.paused.store(false, Ordering::SeqCst);

        let result = self.wait_ready();
        if result.is_err() {
            self.kill();
        }
        result
    }

    fn wait_ready(&mut self) -> Result<(), StartFailure> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let child = self.child.as_mut().expect("just spawned");
        let pid = child.id();
        loop {
            if let Some(status) = child.try_wait().expect("poll redis-server") {
                let log = std::fs::read_to_string(&self.log_path).unwrap_or_default();
                if log.contains("Address already in use") {
                    return Err(StartFailure::PortInUse);
                }
                return Err(StartFailure::Other(format!(
                    "redis-server on port {} exited with {status} before it was ready. log:\n{log}",
                    self.port
                )));
            }
            match probe(self.port) {
                Some(p) if p == pid => return Ok(()),
                // Another process answers on our port: ours cannot bind it and will exit.
                Some(_) => return Err(StartFailure::PortInUse),
                None => {}
            }
            if Instant::now() >= deadline {
                let log = std::fs::read_to_string(&self.log_path).unwrap_or_default();
                return Err(StartFailure::Other(format!(
                    "redis-server on port {} did not answer PING within {READY_TIMEOUT:?}. log:\n{log}",
                    self.port
                )));
            }
            sleep(POLL_INTERVAL);
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(child) = &self.child
            && self.paused.load(Ordering::SeqCst)
        {
            signal(child.id(), "-CONT");
        }
        self.kill();
    }
}

/// Asks the OS for a free loopback port; never 6379. With `needs_bus`, the cluster bus
/// port (`port + 10000`) must exist and be free too.
fn pick_free_port(needs_bus: bool) -> u16 {
    loop {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind 127.0.0.1:0");
        let port = listener.local_addr().expect("local addr").port();
        if port == RESERVED_PORT {
            continue;
        }
        if needs_bus {
            let Some(bus) = port.checked_add(CLUSTER_BUS_OFFSET) else {
                continue;
            };
            if bus == RESERVED_PORT || TcpListener::bind((Ipv4Addr::LOCALHOST, bus)).is_err() {
                continue;
            }
        }
        return port;
    }
}

/// Sends `PING` and `INFO server` over a fresh TCP connection; returns the `process_id` of
/// whoever answered, or `None` if nothing usable answered yet.
fn probe(port: u16) -> Option<u32> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let timeout = Duration::from_millis(500);
    let mut stream = TcpStream::connect_timeout(&addr, timeout).ok()?;
    stream.set_read_timeout(Some(timeout)).ok()?;
    stream.set_write_timeout(Some(timeout)).ok()?;
    stream.write_all(b"PING\r\nINFO server\r\n").ok()?;
    let mut reader = BufReader::new(stream);

    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    if line != "+PONG\r\n" {
        return None; // e.g. -LOADING while a dataset is still being read
    }
    line.clear();
    reader.read_line(&mut line).ok()?;
    let len: usize = line.strip_prefix('$')?.trim_end().parse().ok()?;
    let mut body = vec![0; len];
    reader.read_exact(&mut body).ok()?;
    String::from_utf8_lossy(&body)
        .lines()
        .find_map(|l| l.strip_prefix("process_id:"))
        .and_then(|pid| pid.trim().parse().ok())
}

fn signal(pid: u32, sig: &str) {
    let status = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill {sig} {pid} failed: {status}");
}

/// Waits (bounded) until `/proc/<pid>/stat` reports the process stopped or not, so that
/// `pause()` returning means the server really no longer answers.
fn wait_for_state(pid: u32, want: impl Fn(bool) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            return; // no procfs (or the process is gone): nothing to wait for
        };
        // Field 3, after the parenthesised command name, is the state; 'T' means stopped.
        let state = stat
            .rsplit(')')
            .next()
            .and_then(|rest| rest.split_whitespace().next());
        if want(state == Some("T")) {
            return;
        }
        sleep(Duration::from_millis(1));
    }
}

/// The data-command calls in an `INFO commandstats` text; see [`RedisServer::data_commands`].
pub fn data_commands(info: &str) -> Vec<String> {
    const DATA: [&str; 8] = [
        "get", "mget", "set", "evalsha", "eval", "exists", "unlink", "del",
    ];
    let mut out: Vec<String> = info
        .lines()
        .filter_map(|l| {
            let (name, rest) = l.trim().strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = rest.strip_prefix("calls=")?.split(',').next()?;
            DATA.contains(&name).then(|| format!("{name}={calls}"))
        })
        .collect();
    out.sort();
    out
}
