//! One SDK check process (tests/python/sdk_check.py, tests/node/sdk_check.mjs) running its
//! scenarios as they are sent (`--serve`, one a line, one JSON line back each), so the
//! interpreter and the SDK are loaded once per test.

use std::path::Path;
use std::process::Stdio;

use crate::support::served::Served;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

pub struct Sdk {
    child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
}

impl Sdk {
    /// `program script --serve` against `front`, with `OPENAI_API_KEY` = `key` and `envs`.
    pub fn start(
        program: &Path,
        script: &str,
        front: &Served,
        key: &str,
        envs: &[(&str, &str)],
    ) -> Sdk {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join(script);
        let mut child = Command::new(program)
            .arg(script)
            .arg("--serve")
            .env("LLM_CACHE_BASE_URL", front.v1())
            .env("OPENAI_API_KEY", key)
            .env_remove("OPENAI_BASE_URL")
            .envs(envs.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("run {}: {e}", program.display()));
        let stdin = child.stdin.take().unwrap();
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        Sdk {
            child,
            stdin,
            lines,
        }
    }

    /// Start scenario `name` with `args`.
    pub async fn send(&mut self, name: &str, args: &[&str]) {
        let line = format!("{name} {}\n", args.join(" "));
        self.stdin.write_all(line.as_bytes()).await.unwrap();
        self.stdin.flush().await.unwrap();
    }

    /// The result of the scenario sent last; fails the test with the script's traceback.
    pub async fn result(&mut self) -> Value {
        let line = match self.lines.next_line().await.unwrap() {
            Some(line) => line,
            None => panic!("the SDK check exited: {:?}", self.child.wait().await),
        };
        let value: Value = serde_json::from_str(&line).expect("one JSON line");
        if let Some(failed) = value.get("failed") {
            panic!(
                "the scenario failed in the SDK check:\n{}",
                failed.as_str().unwrap_or_default()
            );
        }
        value
    }

    pub async fn run(&mut self, name: &str, args: &[&str]) -> Value {
        self.send(name, args).await;
        self.result().await
    }
}
