//! Online CIJOE runs against a real SSH server (OpenSSH's sshd on loopback,
//! as root): the server's key authorised, the first passing run the
//! baseline, a later failure a drift tripwire naming the step, a changed
//! host key refused, the queue (one run at a time per machine) and cancel.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use common::TestServer;
use serde_json::{json, Value};

const MAC: &str = "52:54:00:55:4e:01";

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn cijoe_command() -> String {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../checks/out/cijoe/bin/cijoe");
    assert!(p.exists(), "cijoe is needed for this test: checks/deps.sh installs it into checks/out/cijoe/");
    p.display().to_string()
}

/// sshd on 127.0.0.1 with its own host key and authorised keys; killed on drop.
struct Sshd {
    dir: PathBuf,
    child: Option<Child>,
}

impl Sshd {
    fn start(dir: &Path, port: u16, host_key: &str, authorized: &str) -> Sshd {
        std::fs::create_dir_all(dir).unwrap();
        let hk = dir.join(host_key);
        if !hk.exists() {
            let st = Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", ""])
                .arg("-f")
                .arg(&hk)
                .status();
            assert!(st.unwrap().success());
        }
        std::fs::write(dir.join("authorized_keys"), authorized).unwrap();
        let cfg = dir.join("sshd_config");
        std::fs::write(
            &cfg,
            format!(
                "Port {port}\nListenAddress 127.0.0.1\nHostKey {}\nAuthorizedKeysFile {}\nPasswordAuthentication no\n\
                 KbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\nStrictModes no\nUsePAM no\n\
                 PidFile {}\n",
                hk.display(),
                dir.join("authorized_keys").display(),
                dir.join("sshd.pid").display()
            ),
        )
        .unwrap();
        // sshd's privilege-separation directory, as its package makes it.
        std::fs::create_dir_all("/run/sshd").unwrap();
        let child = Command::new("/usr/sbin/sshd")
            .args(["-D", "-e", "-f"])
            .arg(&cfg)
            .stderr(std::fs::File::create(dir.join("sshd.log")).unwrap())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "sshd did not start: {}",
                std::fs::read_to_string(dir.join("sshd.log")).unwrap()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Sshd { dir: dir.to_path_buf(), child: Some(child) }
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        self.stop();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

async fn put_workflow(s: &TestServer, t: &str, task: &str) {
    put_named(s, t, "check", task).await
}

async fn put_named(s: &TestServer, t: &str, name: &str, task: &str) {
    let r = reqwest::Client::new()
        .put(s.url(&format!("/workflows/{name}")))
        .bearer_auth(t)
        .body(task.to_string())
        .send()
        .await;
    let r = r.unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
}

async fn start_run(s: &TestServer, t: &str) -> i64 {
    start_on(s, t, MAC).await
}

async fn start_on(s: &TestServer, t: &str, mac: &str) -> i64 {
    let r = post_runs(s, t, mac, None).await;
    assert_eq!(r.status(), 202);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["status"], "queued");
    v["run"].as_i64().unwrap()
}

/// `POST /machines/{mac}/runs`, with a JSON body or none.
async fn post_runs(s: &TestServer, t: &str, mac: &str, body: Option<Value>) -> reqwest::Response {
    let r = reqwest::Client::new().post(s.url(&format!("/machines/{mac}/runs"))).bearer_auth(t);
    let r = match body {
        Some(b) => r.json(&b),
        None => r,
    };
    r.send().await.unwrap()
}

/// Queue a run with a body; its id.
async fn start_with(s: &TestServer, t: &str, body: Value) -> i64 {
    let r = post_runs(s, t, MAC, Some(body.clone())).await;
    let status = r.status();
    let v: Value = r.json().await.unwrap();
    assert_eq!(status, 202, "{body}: {v}");
    v["run"].as_i64().unwrap()
}

/// The pid of the cijoe running `task` (its process group's leader).
fn cijoe_pid(task: &Path) -> Option<i32> {
    use std::os::unix::ffi::OsStrExt;
    let want = task.as_os_str().as_bytes();
    for e in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else { continue };
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else { continue };
        if cmd.split(|b| *b == 0).any(|a| a == want) && process_group(pid) == Some(pid) {
            return Some(pid);
        }
    }
    None
}

/// A live (not zombie) process's group.
fn process_group(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    if fields.first() == Some(&"Z") {
        return None;
    }
    fields.get(2)?.parse().ok()
}

/// The live processes in group `pgid`.
fn group_members(pgid: i32) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<i32>().ok())
        .filter(|pid| process_group(*pid) == Some(pgid))
        .collect()
}

async fn wait_run(s: &TestServer, t: &str, id: i64, until: &[&str]) -> Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let run = s.authed_json(t, &format!("/runs/{id}")).await;
        if until.contains(&run["status"].as_str().unwrap()) {
            return run;
        }
        assert!(Instant::now() < deadline, "run {id} stayed {}", run["status"]);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn online_runs_baseline_drift_host_keys_queue_and_cancel() {
    if !is_root() || !Path::new("/usr/sbin/sshd").exists() {
        eprintln!("skipping the online provisioning test: it needs root and sshd (checks/deps.sh)");
        return;
    }
    let cijoe = cijoe_command();
    let work = tempfile::tempdir().unwrap();
    let s = TestServer::start_with(|c| {
        c.cijoe.command = cijoe.clone();
        c.cijoe.timeout = Duration::from_secs(60);
        c.cijoe.ssh_wait = Duration::from_secs(10);
    })
    .await;
    let t = s.token().await;

    // The public key an image authorises, behind the login.
    assert_eq!(reqwest::get(s.url("/cijoe/ssh-public-key")).await.unwrap().status(), 401);
    let r = reqwest::Client::new().get(s.url("/cijoe/ssh-public-key")).bearer_auth(&t).send().await.unwrap();
    let public = r.text().await.unwrap();
    assert!(public.starts_with("ssh-ed25519 "), "{public}");

    let port = free_port();
    let mut sshd = Sshd::start(&work.path().join("sshd"), port, "host_a", &public);
    let flag = work.path().join("flag");
    std::fs::write(&flag, "present").unwrap();
    put_workflow(
        &s,
        &t,
        &format!(
            "doc: online\nsteps:\n- name: marker\n  run: test -e {}\n- name: packages\n  run: echo {{{{ config.bty.mac }}}} on {{{{ config.bty.host }}}}\n",
            flag.display()
        ),
    )
    .await;
    s.pxe_boot(MAC).await;
    let (code, v) = s
        .put_machine(
            &t,
            MAC,
            json!({"policy": "local", "provisioning_mode": "cijoe-online", "workflow": "check",
                   "ssh_host": "127.0.0.1", "ssh_port": port}),
        )
        .await;
    assert!(code == 200 || code == 201, "{v}");

    // The first passing run is the baseline; the host key is pinned.
    let first = start_run(&s, &t).await;
    let run = wait_run(&s, &t, first, &["passed", "failed"]).await;
    assert_eq!(run["status"], "passed", "{run}");
    assert_eq!(run["mode"], "online");
    assert_eq!(run["baseline"], true, "{run}");
    assert!(run["steps"][1]["output"].as_str().unwrap().contains(&format!("{MAC} on 127.0.0.1")), "{run}");
    assert!(!s.events(&t, "provisioning.host_key_pinned").await.is_empty());
    let archive = reqwest::Client::new()
        .get(s.url(&format!("/runs/{first}/report")))
        .bearer_auth(&t)
        .send()
        .await
        .unwrap();
    assert_eq!(archive.status(), 200);

    // The machine drifts: the step that passed in the baseline fails now.
    std::fs::remove_file(&flag).unwrap();
    let second = start_run(&s, &t).await;
    let run = wait_run(&s, &t, second, &["passed", "failed"]).await;
    assert_eq!((run["status"].as_str(), run["baseline"].as_bool()), (Some("failed"), Some(false)), "{run}");
    let drift = s.events(&t, "provisioning.drifted").await;
    let summary = drift[0]["summary"].as_str().unwrap();
    assert!(
        summary.contains(&format!("{MAC} drifted from its known-good baseline at step `marker`")),
        "{summary}"
    );
    std::fs::write(&flag, "present").unwrap();

    // A new host key on the same address is refused, and says so.
    sshd.stop();
    let mut sshd = Sshd::start(&sshd.dir.clone(), port, "host_b", &public);
    let third = start_run(&s, &t).await;
    let run = wait_run(&s, &t, third, &["passed", "failed"]).await;
    assert_eq!(run["status"], "failed", "{run}");
    assert!(run["reason"].as_str().unwrap().contains("host key of 127.0.0.1"), "{run}");
    assert!(!s.events(&t, "provisioning.host_key_changed").await.is_empty());
    // No step ran: that says nothing of the machine's state, so no drift.
    assert_eq!(s.events(&t, "provisioning.drifted").await.len(), 1);
    // An operator who knows the machine was reinstalled forgets the old key.
    let r = reqwest::Client::new()
        .delete(s.url(&format!("/machines/{MAC}/ssh-host-key")))
        .bearer_auth(&t)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let fourth = start_run(&s, &t).await;
    assert_eq!(wait_run(&s, &t, fourth, &["passed", "failed"]).await["status"], "passed");

    // One run at a time per machine; cancel a running and a queued one.
    put_workflow(&s, &t, "doc: slow\nsteps:\n- name: wait\n  run: sleep 90\n").await;
    let slow = start_run(&s, &t).await;
    wait_run(&s, &t, slow, &["running"]).await;
    let behind = start_run(&s, &t).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(s.authed_json(&t, &format!("/runs/{behind}")).await["status"], "queued");
    let run_dir = s.state_dir().join("cijoe").join(MAC.replace(':', "-"));
    let task = run_dir.join(slow.to_string()).join("task.yaml");
    let deadline = Instant::now() + Duration::from_secs(30);
    let pgid = loop {
        if let Some(pid) = cijoe_pid(&task) {
            break pid;
        }
        assert!(Instant::now() < deadline, "no cijoe process runs {}", task.display());
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    for id in [behind, slow] {
        let r = reqwest::Client::new()
            .delete(s.url(&format!("/runs/{id}")))
            .bearer_auth(&t)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    }
    for id in [behind, slow] {
        assert_eq!(s.authed_json(&t, &format!("/runs/{id}")).await["status"], "cancelled");
    }
    // Cancelling killed cijoe and everything in its process group.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !group_members(pgid).is_empty() {
        assert!(Instant::now() < deadline, "cijoe's group {pgid} lives on: {:?}", group_members(pgid));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The cancelled running run keeps what cijoe wrote; the queued one has
    // no archive, says why, and its page offers no download.
    let report =
        |id: i64| reqwest::Client::new().get(s.url(&format!("/runs/{id}/report"))).bearer_auth(&t).send();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !run_dir.join(slow.to_string()).join("report.tar.gz").exists() {
        assert!(Instant::now() < deadline, "the cancelled run's output was not packed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(report(slow).await.unwrap().status(), 200);
    let r = report(behind).await.unwrap();
    assert_eq!(r.status(), 404);
    let why = r.text().await.unwrap();
    assert!(why.contains(&format!("run {behind} has no report archive")), "{why}");
    let (ui, _) = s.login().await;
    let page = ui.get(s.url(&format!("/ui/runs/{behind}"))).send().await.unwrap().text().await.unwrap();
    assert!(
        !page.contains(&format!("/runs/{behind}/report")) && page.contains("no report archive"),
        "{page}"
    );
    let page = ui.get(s.url(&format!("/ui/runs/{slow}"))).send().await.unwrap().text().await.unwrap();
    assert!(page.contains(&format!("/runs/{slow}/report")), "{page}");
    let r =
        reqwest::Client::new().delete(s.url(&format!("/runs/{first}"))).bearer_auth(&t).send().await.unwrap();
    assert_eq!(r.status(), 409, "a finished run cannot be cancelled");

    // The operator promotes another passed run; a failed one cannot be.
    let put = |run: i64| {
        reqwest::Client::new()
            .put(s.url(&format!("/machines/{MAC}/baseline")))
            .bearer_auth(&t)
            .json(&json!({"run": run}))
            .send()
    };
    assert_eq!(put(second).await.unwrap().status(), 422);
    assert_eq!(put(fourth).await.unwrap().status(), 200);
    assert_eq!(s.authed_json(&t, &format!("/runs/{fourth}")).await["baseline"], true);

    // Running again runs the past run's workflow, not the one bound now.
    put_workflow(&s, &t, "doc: check\nsteps:\n- name: check\n  run: echo check\n").await;
    put_named(&s, &t, "other", "doc: other\nsteps:\n- name: other\n  run: echo other\n").await;
    let (code, v) = s
        .put_machine(
            &t,
            MAC,
            json!({"policy": "local", "provisioning_mode": "cijoe-online", "workflow": "other",
                   "ssh_host": "127.0.0.1", "ssh_port": port}),
        )
        .await;
    assert!(code == 200 || code == 201, "{v}");
    let workflow_of = |id: i64| {
        let (s, t) = (&s, &t);
        async move {
            let run = wait_run(s, t, id, &["passed", "failed"]).await;
            assert_eq!(run["status"], "passed", "{run}");
            run["workflow"].as_str().unwrap().to_string()
        }
    };
    assert_eq!(workflow_of(start_with(&s, &t, json!({"rerun": fourth})).await).await, "check");
    assert_eq!(workflow_of(start_run(&s, &t).await).await, "other");
    assert_eq!(workflow_of(start_with(&s, &t, json!({"workflow": "check"})).await).await, "check");
    // The run page's "Run again" does the same.
    let (ui, csrf) = s.login().await;
    let r = ui
        .post(s.url(&format!("/ui/machines/{MAC}/runs")))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("csrf_token={csrf}&rerun={fourth}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let again: i64 = r.url().path().strip_prefix("/ui/runs/").unwrap().parse().unwrap();
    assert_eq!(workflow_of(again).await, "check");
    let page = ui.get(s.url(&format!("/ui/runs/{fourth}"))).send().await.unwrap().text().await.unwrap();
    assert!(page.contains(&format!("name=\"rerun\" value=\"{fourth}\"")), "{page}");
    // A workflow that is gone, or none, is refused.
    let r = reqwest::Client::new().delete(s.url("/workflows/check")).bearer_auth(&t).send().await.unwrap();
    assert_eq!(r.status(), 204);
    let r = post_runs(&s, &t, MAC, Some(json!({"rerun": fourth}))).await;
    assert_eq!(r.status(), 409);
    let why = r.json::<Value>().await.unwrap()["error"].as_str().unwrap().to_string();
    assert!(why.contains("workflow check no longer exists"), "{why}");
    for (body, field) in [
        (json!({"workflow": "nope"}), "workflow"),
        (json!({"rerun": 999_999}), "rerun"),
        (json!({"rerun": fourth, "workflow": "other"}), "rerun"),
        (json!({"run": 1}), "run"),
    ] {
        let r = post_runs(&s, &t, MAC, Some(body.clone())).await;
        assert_eq!(r.status(), 422, "{body}");
        assert_eq!(r.json::<Value>().await.unwrap()["field"], field, "{body}");
    }

    // A machine not opted in cannot be run against.
    let (code, _) = s.put_machine(&t, MAC, json!({"policy": "local", "provisioning_mode": "none"})).await;
    assert!(code == 200 || code == 201);
    let r = reqwest::Client::new()
        .post(s.url(&format!("/machines/{MAC}/runs")))
        .bearer_auth(&t)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);
    sshd.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_parallel_holds_other_machines_runs_queued_and_a_run_without_ssh_has_no_archive() {
    if !is_root() || !Path::new("/usr/sbin/sshd").exists() {
        eprintln!("skipping the online provisioning test: it needs root and sshd (checks/deps.sh)");
        return;
    }
    let work = tempfile::tempdir().unwrap();
    // cijoe, or, once `unhook` exists, cijoe without bty's start-up hook.
    let unhook = work.path().join("unhook");
    let wrapper = work.path().join("cijoe");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nif [ -e {} ]; then unset PYTHONPATH; fi\nexec {} \"$@\"\n",
            unhook.display(),
            cijoe_command()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&wrapper, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let cijoe = wrapper.display().to_string();
    let s = TestServer::start_with(|c| {
        c.cijoe.command = cijoe.clone();
        c.cijoe.timeout = Duration::from_secs(60);
        c.cijoe.ssh_wait = Duration::from_secs(2);
        c.cijoe.max_parallel = 1;
    })
    .await;
    let t = s.token().await;
    let r = reqwest::Client::new().get(s.url("/cijoe/ssh-public-key")).bearer_auth(&t).send().await.unwrap();
    let public = r.text().await.unwrap();
    let port = free_port();
    let mut sshd = Sshd::start(&work.path().join("sshd"), port, "host_a", &public);
    // The runs wait for this file, so the first holds the one slot.
    let gate = work.path().join("gate");
    put_workflow(
        &s,
        &t,
        &format!("doc: gate\nsteps:\n- name: gate\n  run: timeout 60 sh -c 'until test -e {}; do sleep 0.1; done'\n", gate.display()),
    )
    .await;
    let (a, b, c) = ("52:54:00:55:4e:0a", "52:54:00:55:4e:0b", "52:54:00:55:4e:0c");
    for (mac, p) in [(a, port), (b, port), (c, free_port())] {
        s.pxe_boot(mac).await;
        let (code, v) = s
            .put_machine(
                &t,
                mac,
                json!({"policy": "local", "provisioning_mode": "cijoe-online", "workflow": "check",
                       "ssh_host": "127.0.0.1", "ssh_port": p}),
            )
            .await;
        assert!(code == 200 || code == 201, "{v}");
    }
    let first = start_on(&s, &t, a).await;
    wait_run(&s, &t, first, &["running"]).await;
    let second = start_on(&s, &t, b).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let run = s.authed_json(&t, &format!("/runs/{second}")).await;
    assert_eq!((run["status"].as_str(), &run["started_at"]), (Some("queued"), &Value::Null), "{run}");
    std::fs::write(&gate, "open").unwrap();
    let one = wait_run(&s, &t, first, &["passed", "failed"]).await;
    assert_eq!(one["status"], "passed", "{one}");
    let two = wait_run(&s, &t, second, &["passed", "failed"]).await;
    assert_eq!(two["status"], "passed", "{two}");
    assert!(two["started_at"].as_str().unwrap() >= one["finished_at"].as_str().unwrap(), "{one} {two}");

    // No SSH server: the run fails waiting, with no archive to offer.
    let none = start_on(&s, &t, c).await;
    let run = wait_run(&s, &t, none, &["passed", "failed"]).await;
    assert_eq!(run["status"], "failed", "{run}");
    assert!(run["reason"].as_str().unwrap().contains("no SSH server answered on 127.0.0.1:"), "{run}");
    let r = reqwest::Client::new()
        .get(s.url(&format!("/runs/{none}/report")))
        .bearer_auth(&t)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let why = r.text().await.unwrap();
    assert!(why.contains("has no report archive: it ended (failed: no SSH server answered"), "{why}");
    let (ui, _) = s.login().await;
    let page = ui.get(s.url(&format!("/ui/runs/{none}"))).send().await.unwrap().text().await.unwrap();
    assert!(!page.contains(&format!("/runs/{none}/report")) && page.contains("no report archive"), "{page}");

    // A cijoe that never loads the pinning hook connects unchecked: the
    // run fails, and is neither drift nor a baseline.
    std::fs::write(&unhook, "").unwrap();
    let unchecked = start_on(&s, &t, a).await;
    let run = wait_run(&s, &t, unchecked, &["passed", "failed"]).await;
    assert_eq!(run["status"], "failed", "{run}");
    assert!(run["reason"].as_str().unwrap().starts_with("host-key pinning did not engage"), "{run}");
    assert_eq!(run["steps"][0]["status"], "passed", "{run}");
    assert_eq!(s.authed_json(&t, &format!("/runs/{first}")).await["baseline"], true);
    assert!(s.events(&t, "provisioning.drifted").await.is_empty());
    sshd.stop();
}
