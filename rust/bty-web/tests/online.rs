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
    let r = reqwest::Client::new()
        .put(s.url("/workflows/check"))
        .bearer_auth(t)
        .body(task.to_string())
        .send()
        .await;
    let r = r.unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
}

async fn start_run(s: &TestServer, t: &str) -> i64 {
    let r = reqwest::Client::new()
        .post(s.url(&format!("/machines/{MAC}/runs")))
        .bearer_auth(t)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["status"], "queued");
    v["run"].as_i64().unwrap()
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
