//! The broker under test: a `sluice serve` child process on a fixed port and data
//! directory, which the verifier kills (SIGKILL), pauses (SIGSTOP/SIGCONT) and restarts.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use rustix::process::{kill_process, Pid, Signal};
use sluice_client::topics::metadata_request;
use sluice_client::{ClientError, Connection};
use tokio::process::{Child, Command};

/// How long one readiness probe (connect + ApiVersions + Metadata) may take.
const PROBE_TIMEOUT_MS: u64 = 2_000;
/// Pause between readiness probes.
const PROBE_INTERVAL_MS: u64 = 100;
/// How long a SIGTERM'd broker may take to finish before it is killed.
const TERMINATE_TIMEOUT_MS: u64 = 30_000;

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("cannot start {bin}: {source}")]
    Spawn { bin: String, source: std::io::Error },
    #[error("cannot open the broker's log file {path}: {source}")]
    LogFile {
        path: String,
        source: std::io::Error,
    },
    #[error("the broker exited ({status}) while starting; its output is in {log}")]
    Exited { status: String, log: String },
    #[error("the broker did not serve within {timeout_ms} ms (last error: {last}); its output is in {log}")]
    NotReady {
        timeout_ms: u64,
        last: String,
        log: String,
    },
    #[error("cannot signal the broker (pid {pid}) with {signal}: {source}")]
    Signal {
        pid: u32,
        signal: &'static str,
        source: std::io::Error,
    },
    #[error("the broker exited on its own ({status}); its output is in {log}")]
    Died { status: String, log: String },
    #[error("waiting for the broker to exit: {0}")]
    Wait(std::io::Error),
}

/// A `sluice serve` child process.
pub struct BrokerProcess {
    bin: PathBuf,
    address: String,
    log_dir: PathBuf,
    output_path: PathBuf,
    settings: Vec<(String, String)>,
    /// In a cluster: this node's id (the readiness probe waits until Metadata lists it,
    /// i.e. it is registered and unfenced) and its `--node-id`/quorum arguments.
    node_id: Option<i32>,
    extra_args: Vec<String>,
    child: Option<Child>,
    /// Starts so far (1 after the first).
    pub starts: u32,
}

impl BrokerProcess {
    pub fn new(
        bin: PathBuf,
        address: String,
        log_dir: PathBuf,
        output_path: PathBuf,
        settings: Vec<(String, String)>,
    ) -> BrokerProcess {
        BrokerProcess {
            bin,
            address,
            log_dir,
            output_path,
            settings,
            node_id: None,
            extra_args: Vec::new(),
            child: None,
            starts: 0,
        }
    }

    /// Makes this process node `node_id` of a cluster: `extra_args` (the node id and
    /// quorum flags) go on every start, and readiness waits for the node's registration.
    pub fn with_node(mut self, node_id: i32, extra_args: Vec<String>) -> BrokerProcess {
        self.node_id = Some(node_id);
        self.extra_args = extra_args;
        self
    }

    pub fn node_id(&self) -> Option<i32> {
        self.node_id
    }

    pub fn address(&self) -> &str {
        &self.address
    }

    fn log_name(&self) -> String {
        self.output_path.display().to_string()
    }

    /// Starts the broker (its stdout and stderr appended to the output file) and waits
    /// until it answers ApiVersions and Metadata.
    pub async fn start(&mut self, timeout: Duration) -> Result<(), BrokerError> {
        self.spawn()?;
        self.wait_ready(timeout).await
    }

    /// Starts the process without waiting: the nodes of a new cluster serve only once a
    /// quorum of them runs, so all are spawned before any is waited for.
    pub fn spawn(&mut self) -> Result<(), BrokerError> {
        let log_error = |source| BrokerError::LogFile {
            path: self.log_name(),
            source,
        };
        let output = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.output_path)
            .map_err(log_error)?;
        let errors = output.try_clone().map_err(log_error)?;
        let mut command = Command::new(&self.bin);
        command
            .arg("serve")
            .arg("--listen")
            .arg(&self.address)
            .arg("--data-dir")
            .arg(&self.log_dir)
            .stdin(std::process::Stdio::null())
            .stdout(output)
            .stderr(errors)
            .env("NO_COLOR", "1")
            .kill_on_drop(true);
        command.args(&self.extra_args);
        for (key, value) in &self.settings {
            command.arg("--set").arg(format!("{key}={value}"));
        }
        let child = command.spawn().map_err(|source| BrokerError::Spawn {
            bin: self.bin.display().to_string(),
            source,
        })?;
        self.child = Some(child);
        self.starts += 1;
        Ok(())
    }

    /// Probes until the broker serves: a connection (with ApiVersions) and a Metadata
    /// round trip (that lists this node, in a cluster).
    pub async fn wait_ready(&mut self, timeout: Duration) -> Result<(), BrokerError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.child = None;
                    return Err(BrokerError::Exited {
                        status: status.to_string(),
                        log: self.log_name(),
                    });
                }
            }
            let last = match probe(&self.address).await {
                Ok(listed) => match self.node_id {
                    Some(id) if !listed.contains(&id) => {
                        format!("node {id} is not registered yet (brokers {listed:?})")
                    }
                    _ => return Ok(()),
                },
                Err(error) => error.to_string(),
            };
            if Instant::now() >= deadline {
                return Err(BrokerError::NotReady {
                    timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
                    last,
                    log: self.log_name(),
                });
            }
            tokio::time::sleep(Duration::from_millis(PROBE_INTERVAL_MS)).await;
        }
    }

    /// Fails if the broker exited without being told to (a crash of its own).
    pub fn check_alive(&mut self) -> Result<(), BrokerError> {
        let Some(child) = self.child.as_mut() else {
            return Ok(());
        };
        match child.try_wait() {
            Ok(Some(status)) => {
                self.child = None;
                Err(BrokerError::Died {
                    status: status.to_string(),
                    log: self.log_name(),
                })
            }
            Ok(None) => Ok(()),
            Err(error) => Err(BrokerError::Wait(error)),
        }
    }

    fn signal(&self, signal: Signal, name: &'static str) -> Result<(), BrokerError> {
        let Some(raw) = self.child.as_ref().and_then(Child::id) else {
            return Ok(());
        };
        let Some(pid) = i32::try_from(raw).ok().and_then(Pid::from_raw) else {
            return Ok(());
        };
        kill_process(pid, signal).map_err(|errno| BrokerError::Signal {
            pid: raw,
            signal: name,
            source: errno.into(),
        })
    }

    /// SIGKILL, then reaps the process.
    pub async fn kill(&mut self) -> Result<(), BrokerError> {
        self.signal(Signal::KILL, "SIGKILL")?;
        if let Some(mut child) = self.child.take() {
            child.wait().await.map_err(BrokerError::Wait)?;
        }
        Ok(())
    }

    /// SIGSTOP: the process freezes with its sockets open.
    pub fn pause(&self) -> Result<(), BrokerError> {
        self.signal(Signal::STOP, "SIGSTOP")
    }

    /// SIGCONT after [`BrokerProcess::pause`].
    pub fn resume(&self) -> Result<(), BrokerError> {
        self.signal(Signal::CONT, "SIGCONT")
    }

    /// SIGTERM (a clean shutdown); SIGKILL if it takes longer than 30 s.
    pub async fn terminate(&mut self) -> Result<(), BrokerError> {
        self.signal(Signal::TERM, "SIGTERM")?;
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        match tokio::time::timeout(Duration::from_millis(TERMINATE_TIMEOUT_MS), child.wait()).await
        {
            Ok(result) => result.map(|_| ()).map_err(BrokerError::Wait),
            Err(_) => {
                tracing::warn!("the broker did not stop within 30 s of SIGTERM; killing it");
                self.child = Some(child);
                self.kill().await
            }
        }
    }
}

/// One readiness probe: connect (which negotiates versions with ApiVersions), then a
/// Metadata request for all topics; returns the node ids of the brokers it lists.
pub async fn probe(address: &str) -> Result<Vec<i32>, ClientError> {
    let timeout = Duration::from_millis(PROBE_TIMEOUT_MS);
    let attempt = async {
        let mut connection = Connection::connect(address, timeout).await?;
        let (_, response) = connection
            .send(1..=12, &metadata_request(None, false))
            .await?;
        Ok(response.brokers.iter().map(|b| b.node_id.0).collect())
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .map_err(|_| ClientError::Timeout(timeout, "a readiness probe".into()))?
}

/// A port nothing listens on right now (the OS's choice for an ephemeral bind).
pub fn free_port() -> std::io::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}
