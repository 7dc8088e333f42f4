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
    /// What the request names is not there or not runnable: the field and why.
    #[error("{field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    /// The workflow of the run to repeat no longer exists.
    #[error("{0}")]
    WorkflowGone(String),
    #[error(transparent)]
    Db(#[from] rusqlite::Error),
}

/// Which workflow a run runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Which {
    /// The one the machine is bound to now.
    Bound,
    /// The one a past online run of the machine ran.
    Rerun(i64),
    /// One by name.
    Named(String),
}

/// The workflow `which` names for machine `m`, which must be opted into
/// online runs.
fn resolve(
    c: &rusqlite::Connection,
    m: &machines::Machine,
    which: &Which,
    store: &WorkflowStore,
) -> Result<String, StartError> {
    let mac = m.mac;
    let bound = match (&m.workflow, m.provisioning_mode.as_str()) {
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
    match which {
        Which::Bound => Ok(bound),
        Which::Rerun(id) => {
            let invalid = |reason: String| StartError::Invalid { field: "rerun", reason };
            let run = runs::get(c, *id)?.ok_or_else(|| invalid(format!("no run {id}")))?;
            if run.mac != mac.to_string() {
                return Err(invalid(format!("run {id} is a run of {}, not of {mac}", run.mac)));
            }
            if run.mode != "online" {
                return Err(invalid(format!(
                    "run {id} ran {} in the live environment; only an online run can be run again \
                     against the booted machine",
                    run.workflow
                )));
            }
            if !store.exists(&run.workflow) {
                return Err(StartError::WorkflowGone(format!(
                    "run {id}'s workflow {} no longer exists; add it again on the Workflows page, \
                     or run another workflow",
                    run.workflow
                )));
            }
            Ok(run.workflow)
        }
        Which::Named(name) => {
            if !store.exists(name) {
                return Err(StartError::Invalid {
                    field: "workflow",
                    reason: format!("no workflow {name:?}"),
                });
            }
            Ok(name.clone())
        }
    }
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
    /// The steps ran on the machine under a checked host key (see
    /// [`Outcome::reached`]).
    reached: bool,
}

impl Done {
    fn failed(reason: String) -> Done {
        Done {
            status: "failed",
            reason: Some(reason),
            steps: vec![],
            artifacts: BTreeMap::new(),
            reached: false,
        }
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
        self.start_workflow(mac, Which::Bound, actor, why).await
    }

    /// Queue a run of `which` workflow on `mac`, an online machine; its id.
    pub async fn start_workflow(
        self: &Arc<Self>,
        mac: MacAddr,
        which: Which,
        actor: Actor,
        why: &str,
    ) -> Result<i64, StartError> {
        let why = why.to_string();
        let store = WorkflowStore::new(&self.config.paths.state_dir);
        let id = self
            .db
            .write(move |c| -> Result<i64, StartError> {
                let m = machines::get(c, mac)?.ok_or(StartError::NoMachine(mac))?;
                let workflow = resolve(c, &m, &which, &store)?;
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
            _ = token.cancelled() => {
                // What cijoe wrote before it was stopped is the report.
                let dir = runs::dir(&self.config.paths.state_dir, mac, id);
                if dir.join("out.log").exists() {
                    pack(&dir, id).await;
                }
                return;
            }
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
                    reached: done.reached,
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
        let name = match self.db.read(move |c| runs::get(c, id)).await {
            Ok(Some(r)) => r.workflow,
            Ok(None) => return Done::failed(format!("run {id} is gone ({mac} was deleted)")),
            Err(e) => return Done::failed(format!("cannot read run {id}: {e}")),
        };
        let wf = match WorkflowStore::new(&self.config.paths.state_dir).get(&name) {
            Ok(w) => w,
            Err(e) => return Done::failed(format!("workflow {name} cannot be read: {e}")),
        };
        // The address is read again for every attempt: a system booted from
        // its disk may have a new lease, learnt when it is next seen.
        let db = self.db.clone();
        let target = move || {
            let db = db.clone();
            async move {
                match db.read(move |c| machines::get(c, mac)).await {
                    Ok(Some(m)) => ssh_target(&m),
                    Ok(None) => Target::Gone(format!("{mac} was deleted")),
                    Err(e) => Target::Gone(format!("cannot read {mac}: {e}")),
                }
            }
        };
        let (host, port) =
            match wait_for_ssh(target, self.config.cijoe.ssh_wait, Duration::from_secs(1)).await {
                Ok(at) => at,
                Err(why) => return Done::failed(why),
            };
        let m = match self.db.read(move |c| machines::get(c, mac)).await {
            Ok(Some(m)) => m,
            Ok(None) => return Done::failed(format!("{mac} was deleted")),
            Err(e) => return Done::failed(format!("cannot read {mac}: {e}")),
        };
        let user = m.ssh_user.clone().unwrap_or_else(|| "root".into());
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
                ("BTY_SSH_VERIFIED".into(), files.verified.display().to_string()),
            ],
        };
        let outcome = cijoe::run(&spec).await;
        let mut done = Done {
            status: if outcome.status == "passed" { "passed" } else { "failed" },
            reason: outcome.reason,
            steps: outcome.steps,
            artifacts: BTreeMap::new(),
            reached: true,
        };
        let ran = done.status == "passed" || done.steps.iter().any(|s| s.status != "skipped");
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
            // The steps cijoe counts as failed never reached the machine.
            done.reached = false;
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
        } else if !files.learned.exists() && !files.verified.exists() {
            // The hook said nothing: cijoe's SSH connections went unchecked
            // (or none was made). A run that did anything is not trusted.
            if ran {
                done.status = "failed";
                done.reason = Some(PINNING_OFF.into());
            }
            done.reached = false;
        } else if let Ok(learned) = std::fs::read_to_string(&files.learned) {
            // Pinned once the connection carried a step: first successful contact.
            if pinned.is_none() && ran {
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
        done.artifacts = pack(&dir, id).await;
        done
    }
}

/// Why a run whose host-key hook never reported fails.
const PINNING_OFF: &str = "host-key pinning did not engage; refusing to run without it: cijoe's SSH \
     connections were not checked against the pinned host key (the start-up hook in \
     PYTHONPATH reported nothing), so the run is not trusted. Check that [cijoe] command \
     is a Python cijoe that honours PYTHONPATH and uses paramiko";

/// Pack the run's `out/` (with cijoe's log) into `report.tar.gz`; the
/// digests of its artifacts.
async fn pack(dir: &Path, id: i64) -> BTreeMap<String, String> {
    let out = dir.join("out");
    let _ = std::fs::create_dir_all(&out);
    let _ = std::fs::copy(dir.join("out.log"), out.join("bty-cijoe.log"));
    let a = dir.join("report.tar.gz");
    let packed = tokio::task::spawn_blocking(move || {
        let digests = runs::artifact_digests(&out);
        (bty_core::provision::pack(&out, &a), digests)
    })
    .await;
    match packed {
        Ok((packed, digests)) => {
            if let Err(e) = packed {
                tracing::warn!(run = id, "cannot pack the run's report: {e}");
            }
            digests
        }
        Err(_) => BTreeMap::new(),
    }
}

/// Where a machine's SSH server is, as its record says now.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    At(String, u16),
    /// Not known yet: why.
    NoAddress(String),
    /// Never: why (the machine was deleted).
    Gone(String),
}

fn ssh_target(m: &machines::Machine) -> Target {
    match m.ssh_host.clone().or(m.last_seen_ip.clone()) {
        Some(host) => Target::At(host, m.ssh_port.unwrap_or(22)),
        None => Target::NoAddress(format!(
            "{} has no address: it was never seen on the network; set its SSH host on its page",
            m.mac
        )),
    }
}

struct HostKeyFiles {
    known: PathBuf,
    learned: PathBuf,
    refused: PathBuf,
    verified: PathBuf,
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
        HostKeyFiles {
            known,
            learned: dir.join("host_key.learned"),
            refused: dir.join("host_key.refused"),
            verified: dir.join("host_key.verified"),
        },
    ))
}

/// Wait until an SSH server greets where `target` says the machine is
/// (asked again before every attempt), at most `wait`, `pause` between
/// attempts; where it answered.
async fn wait_for_ssh<F, Fut>(mut target: F, wait: Duration, pause: Duration) -> Result<(String, u16), String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Target>,
{
    let deadline = Instant::now() + wait;
    let mut last: String;
    loop {
        match target().await {
            Target::Gone(why) => return Err(why),
            Target::NoAddress(why) => last = why,
            Target::At(host, port) => {
                let attempt = tokio::time::timeout(Duration::from_secs(5), async {
                    let mut s = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
                    let mut buf = [0u8; 64];
                    let n = s.read(&mut buf).await?;
                    Ok::<_, std::io::Error>(buf[..n].starts_with(b"SSH-"))
                })
                .await;
                let why = match attempt {
                    Ok(Ok(true)) => return Ok((host, port)),
                    Ok(Ok(false)) => "something answered that is not an SSH server".to_string(),
                    Ok(Err(e)) => e.to_string(),
                    Err(_) => "no greeting within 5 s".to_string(),
                };
                last = format!(
                    "no SSH server answered on {host}:{port} within {} s ({why}); \
                     is the machine up, and does its image run sshd?",
                    wait.as_secs()
                );
            }
        }
        if Instant::now() >= deadline {
            return Err(last);
        }
        tokio::time::sleep(pause).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A port nothing listens on (refused at once).
    fn dead_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
    }

    /// A listener that greets like an SSH server.
    async fn fake_sshd() -> u16 {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                use tokio::io::AsyncWriteExt;
                let _ = s.write_all(b"SSH-2.0-fake\r\n").await;
            }
        });
        port
    }

    #[tokio::test]
    async fn the_address_is_read_again_for_every_attempt() {
        // The machine first has no address, then the old lease, then it is
        // seen at its new one.
        let (old, new) = (dead_port(), fake_sshd().await);
        let asked = Arc::new(AtomicUsize::new(0));
        let a = asked.clone();
        let target = move || {
            let n = a.fetch_add(1, Ordering::SeqCst);
            async move {
                match n {
                    0 => Target::NoAddress("no address yet".into()),
                    1 | 2 => Target::At("127.0.0.1".into(), old),
                    _ => Target::At("127.0.0.1".into(), new),
                }
            }
        };
        let at = wait_for_ssh(target, Duration::from_secs(20), Duration::from_millis(10)).await;
        assert_eq!(at, Ok(("127.0.0.1".to_string(), new)));
        assert_eq!(asked.load(Ordering::SeqCst), 4);
    }

    #[tokio::test]
    async fn waiting_ends_with_the_last_reason_or_at_once_for_a_deleted_machine() {
        let none = || async { Target::NoAddress("52:54:00:00:00:01 has no address".into()) };
        let why = wait_for_ssh(none, Duration::from_millis(50), Duration::from_millis(10)).await.unwrap_err();
        assert!(why.contains("has no address"), "{why}");
        let port = dead_port();
        let dead = move || async move { Target::At("127.0.0.1".into(), port) };
        let why = wait_for_ssh(dead, Duration::from_millis(50), Duration::from_millis(10)).await.unwrap_err();
        assert!(why.contains(&format!("no SSH server answered on 127.0.0.1:{port}")), "{why}");
        let started = Instant::now();
        let gone = || async { Target::Gone("52:54:00:00:00:01 was deleted".into()) };
        let why = wait_for_ssh(gone, Duration::from_secs(60), Duration::from_secs(1)).await.unwrap_err();
        assert!(why.contains("was deleted") && started.elapsed() < Duration::from_secs(5), "{why}");
    }

    #[test]
    fn the_target_is_the_ssh_host_else_the_last_seen_ip() {
        let c = migrated();
        let mac: MacAddr = "52:54:00:00:00:01".parse().unwrap();
        let m = || machines::get(&c, mac).unwrap().unwrap();
        assert!(matches!(ssh_target(&m()), Target::NoAddress(_)));
        c.execute("UPDATE machines SET last_seen_ip = '10.0.0.7'", []).unwrap();
        assert_eq!(ssh_target(&m()), Target::At("10.0.0.7".into(), 22));
        c.execute("UPDATE machines SET ssh_host = 'node7', ssh_port = 2222", []).unwrap();
        assert_eq!(ssh_target(&m()), Target::At("node7".into(), 2222));
    }

    fn migrated() -> rusqlite::Connection {
        let c = rusqlite::Connection::open_in_memory().unwrap();
        for m in crate::db::MIGRATIONS {
            c.execute_batch(m).unwrap();
        }
        for mac in ["52:54:00:00:00:01", "52:54:00:00:00:02"] {
            c.execute(
                "INSERT INTO machines (mac, provisioning_mode, workflow, created_at, updated_at)
                 VALUES (?1, 'cijoe-online', 'now', 'now', 'now')",
                [mac],
            )
            .unwrap();
        }
        c
    }

    #[test]
    fn a_run_again_runs_that_runs_workflow_while_it_exists() {
        let c = migrated();
        let state = tempfile::tempdir().unwrap();
        let store = WorkflowStore::new(state.path());
        let task = "doc: t\nsteps:\n- name: s\n  run: echo hi\n";
        for w in ["now", "then"] {
            store.put(w, task, None).unwrap();
        }
        let (a, b): (MacAddr, MacAddr) =
            ("52:54:00:00:00:01".parse().unwrap(), "52:54:00:00:00:02".parse().unwrap());
        let then = runs::queue(&c, a, "then", None, Actor::System, "test").unwrap();
        let other = runs::queue(&c, b, "then", None, Actor::System, "test").unwrap();
        let fin = runs::FinishedRun { mac: a, workflow: "then", image: None, mode: "offline", keep: 20 };
        let (offline, _) = runs::record(&c, &fin, "passed", None, &[]).unwrap();
        let m = machines::get(&c, a).unwrap().unwrap();
        let r = |w: Which| resolve(&c, &m, &w, &store);
        assert_eq!(r(Which::Bound).unwrap(), "now");
        assert_eq!(r(Which::Rerun(then)).unwrap(), "then");
        assert_eq!(r(Which::Named("then".into())).unwrap(), "then");
        let invalid = |e: StartError| match e {
            StartError::Invalid { field, reason } => format!("{field}: {reason}"),
            e => panic!("{e:?}"),
        };
        assert!(invalid(r(Which::Rerun(9999)).unwrap_err()).contains("rerun: no run 9999"));
        assert!(invalid(r(Which::Rerun(other)).unwrap_err()).contains("not of 52:54:00:00:00:01"));
        assert!(invalid(r(Which::Rerun(offline)).unwrap_err()).contains("only an online run"));
        assert!(invalid(r(Which::Named("nope".into())).unwrap_err()).starts_with("workflow: "));
        store.delete("then").unwrap();
        match r(Which::Rerun(then)) {
            Err(StartError::WorkflowGone(why)) => {
                assert!(why.contains("workflow then no longer exists"), "{why}")
            }
            other => panic!("{other:?}"),
        }
        // A machine not opted into online runs is refused whatever is asked.
        c.execute("UPDATE machines SET provisioning_mode = 'none'", []).unwrap();
        let m = machines::get(&c, a).unwrap().unwrap();
        assert!(matches!(
            resolve(&c, &m, &Which::Named("now".into()), &store),
            Err(StartError::NotOnline(_))
        ));
    }

    /// A stand-in for paramiko: what the hook patches and how
    /// `SSHClient.connect` consults the known keys and the policy.
    const FAKE_PARAMIKO: &str = r#"
class SSHException(Exception): pass
class BadHostKeyException(SSHException):
    def __init__(self, hostname, key, expected): self.key = key
class MissingHostKeyPolicy: pass
class AutoAddPolicy(MissingHostKeyPolicy):
    def missing_host_key(self, client, hostname, key): pass
class Key:
    def __init__(self, b64): self.b64 = b64
    def get_name(self): return "ssh-ed25519"
    def get_base64(self): return self.b64
OFFERED = Key("AAAAserver")
class Transport:
    def get_remote_server_key(self): return OFFERED
class SSHClient:
    def __init__(self): self.policy = AutoAddPolicy(); self.known = {}; self.t = None
    def set_missing_host_key_policy(self, p): self.policy = p
    def load_host_keys(self, path):
        for line in open(path):
            name, kind, b64 = line.split()
            self.known[name] = b64
    def get_transport(self): return self.t
    def connect(self, hostname, **kw):
        self.t = Transport()
        if hostname not in self.known:
            self.policy.missing_host_key(self, hostname, OFFERED)
        elif self.known[hostname] != OFFERED.b64:
            raise BadHostKeyException(hostname, OFFERED, None)
        if kw.get("password") == "wrong":
            raise SSHException("Authentication failed.")
"#;

    /// Run `script` under the hook with paramiko importable only once the
    /// script puts it on `sys.path` (as a wrapped interpreter does after
    /// start-up); which markers the hook wrote.
    fn under_hook(pinned: &str, script: &str) -> Option<(std::process::Output, [Option<String>; 3])> {
        let d = tempfile::tempdir().unwrap();
        let (shim, late) = (d.path().join("shim"), d.path().join("late"));
        std::fs::create_dir_all(late.join("paramiko")).unwrap();
        std::fs::create_dir_all(&shim).unwrap();
        std::fs::write(shim.join("sitecustomize.py"), PIN_SHIM).unwrap();
        std::fs::write(late.join("paramiko/__init__.py"), FAKE_PARAMIKO).unwrap();
        std::fs::write(d.path().join("known_hosts"), pinned).unwrap();
        let marker = |n: &str| d.path().join(n);
        let out = std::process::Command::new("python3")
            .arg("-c")
            .arg(format!("import sys\n{}", script.replace("LATE", &late.display().to_string())))
            .env("PYTHONPATH", &shim)
            .env("BTY_SSH_KNOWN_HOSTS", d.path().join("known_hosts"))
            .env("BTY_SSH_LEARNED", marker("learned"))
            .env("BTY_SSH_REFUSED", marker("refused"))
            .env("BTY_SSH_VERIFIED", marker("verified"))
            .output();
        let out = match out {
            Ok(o) => o,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                eprintln!("skipping: no python3");
                return None;
            }
            Err(e) => panic!("python3: {e}"),
        };
        let read = |n: &str| std::fs::read_to_string(marker(n)).ok();
        Some((out, [read("learned"), read("refused"), read("verified")]))
    }

    const CONNECT: &str =
        "try:\n    import paramiko\n    print('imported too early')\nexcept ImportError:\n    pass\n\
        sys.path.append('LATE')\nimport paramiko\nc = paramiko.SSHClient()\n\
        c.set_missing_host_key_policy(paramiko.AutoAddPolicy())\nc.connect('10.0.0.7')\n";

    #[test]
    fn the_hook_pins_paramiko_once_it_is_importable() {
        let key = "ssh-ed25519 AAAAserver\n";
        // First contact: learned.
        let Some((out, [learned, refused, verified])) = under_hook("", CONNECT) else { return };
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success() && stdout.is_empty(), "{out:?}");
        assert_eq!((learned.as_deref(), refused, verified), (Some(key), None, None));
        // The pinned key met again: verified.
        let (out, markers) = under_hook(&format!("10.0.0.7 {key}"), CONNECT).unwrap();
        assert!(out.status.success(), "{out:?}");
        assert_eq!(markers, [None, None, Some(key.to_string())]);
        // A login refused after the key was checked: verified all the same.
        let (out, markers) = under_hook(
            &format!("10.0.0.7 {key}"),
            &CONNECT.replace("'10.0.0.7'", "'10.0.0.7', password='wrong'"),
        )
        .unwrap();
        assert!(!out.status.success(), "{out:?}");
        assert_eq!(markers, [None, None, Some(key.to_string())]);
        // Another key: refused, and the connection fails.
        let (out, markers) = under_hook("10.0.0.7 ssh-ed25519 AAAApinned\n", CONNECT).unwrap();
        assert!(!out.status.success(), "{out:?}");
        assert_eq!(markers, [None, Some(key.to_string()), None]);
        // Pinned under another name (the policy is asked): still judged.
        let (out, markers) = under_hook("[10.0.0.7]:2222 ssh-ed25519 AAAApinned\n", CONNECT).unwrap();
        assert!(!out.status.success(), "{out:?}");
        assert_eq!(markers, [None, Some(key.to_string()), None]);
    }
}
