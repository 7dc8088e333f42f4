//! Online CIJOE runs: bty-web runs a machine's workflow against the booted
//! machine over SSH, with its own ed25519 key and the machine's pinned host
//! key. Runs are queued, one at a time per machine, at most
//! `[cijoe] max_parallel` at once, each waiting (bounded) for the machine's
//! SSH port, then bounded by `[cijoe] timeout_seconds`; an operator may
//! cancel one. Queued after a `cijoe-online` machine's flash is done, or
//! by an operator.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bty_core::mac::MacAddr;
use serde_json::json;
use tokio::io::AsyncReadExt;
use tokio_util::sync::CancellationToken;

use crate::audit::{self, Actor, NewEvent};
use crate::cijoe::{self, BtyValues, RunSpec, SshTransport, StepResult};
use crate::config::Config;
use crate::db::Db;
use crate::machines;
use crate::runs::{self, Outcome};
use crate::ssh_identity::{self, SshIdentity};
use crate::workflows::WorkflowStore;

/// The Python start-up hook that pins host keys in cijoe's transport.
const PIN_SHIM: &str = include_str!("cijoe_shim/sitecustomize.py");

/// Why a run cannot be queued.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("no machine {0}")]
    NoMachine(MacAddr),
    #[error("{0}")]
    NotOnline(String),
    #[error(transparent)]
    Db(#[from] rusqlite::Error),
}

pub struct OnlineRunner {
    db: Db,
    config: Arc<Config>,
    identity: SshIdentity,
    shim_dir: PathBuf,
    global: Arc<tokio::sync::Semaphore>,
    per_machine: Mutex<HashMap<MacAddr, Arc<tokio::sync::Mutex<()>>>>,
    cancels: Mutex<HashMap<i64, CancellationToken>>,
    changed: Box<dyn Fn(MacAddr) + Send + Sync>,
}

/// A run's result before it is stored.
struct Done {
    status: &'static str,
    reason: Option<String>,
    steps: Vec<StepResult>,
    artifacts: BTreeMap<String, String>,
}

impl Done {
    fn failed(reason: String) -> Done {
        Done { status: "failed", reason: Some(reason), steps: vec![], artifacts: BTreeMap::new() }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl OnlineRunner {
    /// Make (or load) the server's SSH key and install the pinning hook;
    /// runs a previous server left unfinished are marked failed.
    pub async fn new(
        db: Db,
        config: Arc<Config>,
        changed: Box<dyn Fn(MacAddr) + Send + Sync>,
    ) -> anyhow::Result<Arc<OnlineRunner>> {
        let state = config.paths.state_dir.clone();
        let identity = ssh_identity::load_or_create(&state)?;
        let shim_dir = state.join("cijoe").join("python");
        std::fs::create_dir_all(&shim_dir)?;
        std::fs::write(shim_dir.join("sitecustomize.py"), PIN_SHIM)?;
        db.write(runs::fail_unfinished).await?;
        let swept = runs::sweep_incoming(&state);
        if swept > 0 {
            tracing::info!("removed {swept} half-received run report(s) a stopped server left");
        }
        Ok(Arc::new(OnlineRunner {
            db,
            global: Arc::new(tokio::sync::Semaphore::new(config.cijoe.max_parallel.max(1))),
            config,
            identity,
            shim_dir,
            per_machine: Mutex::new(HashMap::new()),
            cancels: Mutex::new(HashMap::new()),
            changed,
        }))
    }

    pub fn identity(&self) -> &SshIdentity {
        &self.identity
    }

    /// Queue a run of the machine's workflow; its id.
    pub async fn start(self: &Arc<Self>, mac: MacAddr, actor: Actor, why: &str) -> Result<i64, StartError> {
        let why = why.to_string();
        let id = self
            .db
            .write(move |c| -> Result<i64, StartError> {
                let m = machines::get(c, mac)?.ok_or(StartError::NoMachine(mac))?;
                let workflow = match (&m.workflow, m.provisioning_mode.as_str()) {
                    (Some(w), "cijoe-online") => w.clone(),
                    _ => {
                        return Err(StartError::NotOnline(format!(
                            "{mac} is not bound to an online workflow (provisioning mode {}{}); \
                             choose cijoe-online and a workflow on its page",
                            m.provisioning_mode,
                            m.workflow.as_deref().map(|w| format!(", workflow {w}")).unwrap_or_default()
                        )))
                    }
                };
                Ok(runs::queue(c, mac, &workflow, m.image.as_deref(), actor, &why)?)
            })
            .await?;
        let token = CancellationToken::new();
        lock(&self.cancels).insert(id, token.clone());
        let me = self.clone();
        tokio::spawn(async move {
            me.execute(id, mac, token).await;
            lock(&me.cancels).remove(&id);
            (me.changed)(mac);
        });
        (self.changed)(mac);
        Ok(id)
    }

    /// Cancel a queued or running run: its status before, None when it had
    /// finished already.
    pub async fn cancel(&self, id: i64, actor: Actor) -> rusqlite::Result<Option<String>> {
        let was = self.db.write(move |c| runs::cancel(c, id, actor)).await?;
        if was.is_some() {
            if let Some(t) = lock(&self.cancels).get(&id) {
                t.cancel();
            }
        }
        Ok(was)
    }

    async fn execute(self: &Arc<Self>, id: i64, mac: MacAddr, token: CancellationToken) {
        let machine_lock = lock(&self.per_machine).entry(mac).or_default().clone();
        let _turn = tokio::select! {
            g = machine_lock.lock_owned() => g,
            _ = token.cancelled() => return,
        };
        let _permit = tokio::select! {
            p = self.global.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
            _ = token.cancelled() => return,
        };
        match self.db.write(move |c| runs::start(c, id)).await {
            Ok(true) => {}
            _ => return,
        }
        (self.changed)(mac);
        let done = tokio::select! {
            d = self.run(id, mac) => d,
            // The record already says cancelled; dropping the run kills cijoe.
            _ = token.cancelled() => return,
        };
        let keep = self.config.cijoe.keep_runs;
        let state = self.config.paths.state_dir.clone();
        let finished = self
            .db
            .write(move |c| {
                let o = Outcome {
                    status: done.status,
                    reason: done.reason.as_deref(),
                    steps: &done.steps,
                    artifacts: &done.artifacts,
                };
                runs::finish(c, id, &o, keep)
            })
            .await;
        match finished {
            Ok(f) => {
                for old in f.pruned {
                    let _ = tokio::fs::remove_dir_all(runs::dir(&state, mac, old)).await;
                }
            }
            Err(e) => tracing::error!(run = id, "cannot record the online run: {e}"),
        }
    }

    /// One run, start to end; never panics, always an outcome.
    async fn run(&self, id: i64, mac: MacAddr) -> Done {
        let m = match self.db.read(move |c| machines::get(c, mac)).await {
            Ok(Some(m)) => m,
            Ok(None) => return Done::failed(format!("{mac} was deleted")),
            Err(e) => return Done::failed(format!("cannot read {mac}: {e}")),
        };
        let Some(name) = m.workflow.clone() else {
            return Done::failed(format!("{mac} has no workflow any more"));
        };
        let wf = match WorkflowStore::new(&self.config.paths.state_dir).get(&name) {
            Ok(w) => w,
            Err(e) => return Done::failed(format!("workflow {name} cannot be read: {e}")),
        };
        let Some(host) = m.ssh_host.clone().or(m.last_seen_ip.clone()) else {
            return Done::failed(format!(
                "{mac} has no address: it was never seen on the network; set its SSH host on its page"
            ));
        };
        let port = m.ssh_port.unwrap_or(22);
        let user = m.ssh_user.clone().unwrap_or_else(|| "root".into());
        if let Err(why) = wait_for_ssh(&host, port, self.config.cijoe.ssh_wait).await {
            return Done::failed(why);
        }
        let dir = runs::dir(&self.config.paths.state_dir, mac, id);
        let pinned = self.db.read(move |c| runs::host_key(c, mac)).await.ok().flatten();
        let prepared = prepare(&dir, &wf, &m, &self.identity, (&host, port, &user), pinned.as_deref());
        let (configs, files) = match prepared {
            Ok(v) => v,
            Err(e) => return Done::failed(format!("cannot prepare the run in {}: {e}", dir.display())),
        };
        let mut pythonpath = self.shim_dir.display().to_string();
        if let Ok(p) = std::env::var("PYTHONPATH") {
            pythonpath = format!("{pythonpath}:{p}");
        }
        let spec = RunSpec {
            command: self.config.cijoe.command.clone(),
            task: dir.join("task.yaml"),
            configs,
            output: dir.join("out"),
            timeout: self.config.cijoe.timeout,
            env: vec![
                ("PYTHONPATH".into(), pythonpath),
                ("BTY_SSH_KNOWN_HOSTS".into(), files.known.display().to_string()),
                ("BTY_SSH_LEARNED".into(), files.learned.display().to_string()),
                ("BTY_SSH_REFUSED".into(), files.refused.display().to_string()),
            ],
        };
        let outcome = cijoe::run(&spec).await;
        let mut done = Done {
            status: if outcome.status == "passed" { "passed" } else { "failed" },
            reason: outcome.reason,
            steps: outcome.steps,
            artifacts: BTreeMap::new(),
        };
        if let Ok(offered) = std::fs::read_to_string(&files.refused) {
            let fp = |k: &str| ssh_identity::fingerprint(k).unwrap_or_else(|| "an unreadable key".into());
            let why = format!(
                "the SSH host key of {host}:{port} changed (pinned {}, offered {}); the run was stopped. \
                 If the machine was reinstalled outside bty, forget its pinned key on its page",
                pinned.as_deref().map(fp).unwrap_or_default(),
                fp(&offered)
            );
            done.status = "failed";
            done.reason = Some(why.clone());
            let _ = self
                .db
                .write(move |c| {
                    audit::insert(
                        c,
                        &NewEvent::new(
                            "provisioning.host_key_changed",
                            Actor::System,
                            format!("{mac}: {why}"),
                        )
                        .machine(mac)
                        .details(json!({"run": id, "offered": offered.trim()})),
                    )
                })
                .await;
        } else if let Ok(learned) = std::fs::read_to_string(&files.learned) {
            // Pinned once the connection carried a step: first successful contact.
            if pinned.is_none() && done.steps.iter().any(|s| s.status != "skipped") {
                let key = learned.trim().to_string();
                let fp = ssh_identity::fingerprint(&key).unwrap_or_default();
                let _ = self
                    .db
                    .write(move |c| {
                        runs::set_host_key(c, mac, Some(&key))?;
                        audit::insert(
                            c,
                            &NewEvent::new(
                                "provisioning.host_key_pinned",
                                Actor::System,
                                format!("{mac}: SSH host key {fp} pinned on first contact"),
                            )
                            .machine(mac)
                            .details(json!({"run": id, "fingerprint": fp})),
                        )
                    })
                    .await;
            }
        }
        let out = dir.join("out");
        let _ = std::fs::create_dir_all(&out);
        let _ = std::fs::copy(dir.join("out.log"), out.join("bty-cijoe.log"));
        let (o, a) = (out.clone(), dir.join("report.tar.gz"));
        let packed = tokio::task::spawn_blocking(move || {
            let digests = runs::artifact_digests(&o);
            (bty_core::provision::pack(&o, &a), digests)
        })
        .await;
        if let Ok((packed, digests)) = packed {
            if let Err(e) = packed {
                tracing::warn!(run = id, "cannot pack the run's report: {e}");
            }
            done.artifacts = digests;
        }
        done
    }
}

struct HostKeyFiles {
    known: PathBuf,
    learned: PathBuf,
    refused: PathBuf,
}

/// The run's directory: task, the workflow's config, bty's config (with
/// the SSH transport) and the known-hosts file of the pinned key.
fn prepare(
    dir: &Path,
    wf: &crate::workflows::Workflow,
    m: &machines::Machine,
    identity: &SshIdentity,
    (host, port, user): (&str, u16, &str),
    pinned: Option<&str>,
) -> std::io::Result<(Vec<PathBuf>, HostKeyFiles)> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("task.yaml"), &wf.task)?;
    let mut configs = vec![];
    if let Some(c) = &wf.config {
        std::fs::write(dir.join("config.toml"), c)?;
        configs.push(dir.join("config.toml"));
    }
    let values = BtyValues {
        mac: m.mac.to_string(),
        image: m.image.clone(),
        digest: None,
        target_root: None,
        target_disk: None,
        host: Some(host.to_string()),
    };
    let ssh = SshTransport {
        host: host.to_string(),
        port,
        user: user.to_string(),
        key_file: identity.key_file.clone(),
    };
    std::fs::write(dir.join("bty.toml"), cijoe::bty_config(&values, Some(&ssh)))?;
    configs.push(dir.join("bty.toml"));
    // paramiko's known-hosts names: the host, or [host]:port off port 22.
    let name = if port == 22 { host.to_string() } else { format!("[{host}]:{port}") };
    let known = dir.join("known_hosts");
    std::fs::write(&known, pinned.map(|k| format!("{name} {}\n", k.trim())).unwrap_or_default())?;
    Ok((
        configs,
        HostKeyFiles { known, learned: dir.join("host_key.learned"), refused: dir.join("host_key.refused") },
    ))
}

/// Wait until an SSH server greets on `host:port`, at most `wait`.
async fn wait_for_ssh(host: &str, port: u16, wait: Duration) -> Result<(), String> {
    let deadline = Instant::now() + wait;
    let mut last: String;
    loop {
        let attempt = tokio::time::timeout(Duration::from_secs(5), async {
            let mut s = tokio::net::TcpStream::connect((host, port)).await?;
            let mut buf = [0u8; 64];
            let n = s.read(&mut buf).await?;
            Ok::<_, std::io::Error>(buf[..n].starts_with(b"SSH-"))
        })
        .await;
        match attempt {
            Ok(Ok(true)) => return Ok(()),
            Ok(Ok(false)) => last = "something answered that is not an SSH server".into(),
            Ok(Err(e)) => last = e.to_string(),
            Err(_) => last = "no greeting within 5 s".into(),
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "no SSH server answered on {host}:{port} within {} s ({last}); is the machine up, and does its image run sshd?",
                wait.as_secs()
            ));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
