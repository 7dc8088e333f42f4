//! The offline CIJOE step as the live environment runs it, on real parts:
//! as root, an image with an ESP and an ext4 root is flashed onto a loop
//! device with `bty flash`, the flash is reported done, and `bty provision`
//! (what `bty agent` runs next) fetches the workflow with the offer token,
//! mounts the written root with /dev, /proc and /sys bound inside, runs real
//! cijoe against it, unmounts and uploads the output. A passing run, a
//! failing step, a timeout and a missing cijoe; the flash stays done in
//! every case.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::TestServer;
use serde_json::{json, Value};

const MAC: &str = "52:54:00:0f:f1:1e";

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn cijoe_command() -> String {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../checks/out/cijoe/bin/cijoe");
    assert!(p.exists(), "cijoe is needed for this test: checks/deps.sh installs it into checks/out/cijoe/");
    p.display().to_string()
}

fn bty_binary() -> PathBuf {
    let p = Path::new(env!("CARGO_BIN_EXE_bty-web")).with_file_name("bty");
    assert!(p.exists(), "{} is needed: build the workspace (cargo test --workspace)", p.display());
    p
}

fn sh(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A loop device that scans partitions; detached on drop.
struct LoopDev(String);

impl Drop for LoopDev {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.0).status();
    }
}

/// A 48 MiB GPT image: an 8 MiB ESP and an ext4 root with the x86-64 root type.
fn root_image(dir: &Path) -> PathBuf {
    let img = dir.join("disk.img");
    std::fs::File::create(&img).unwrap().set_len(48 << 20).unwrap();
    sh(Command::new("sgdisk").args(["-o", "-n1:2048:+8M", "-t1:ef00", "-n2:0:0", "-t2:8304"]).arg(&img));
    let head = std::fs::read(&img).unwrap();
    let table = bty_core::partition::read_table(&head[..1 << 20]).unwrap().unwrap();
    let root = &table.partitions[1];
    sh(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-L", "root", "-E"])
        .arg(format!("offset={}", root.start_bytes))
        .arg(&img)
        .arg(format!("{}k", root.size_bytes / 1024)));
    img
}

fn mounted_under(dir: &Path) -> Vec<String> {
    let d = dir.display().to_string();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(str::to_string))
        .filter(|m| m.starts_with(&d))
        .collect()
}

async fn put_workflow(s: &TestServer, t: &str, task: &str) {
    let r = reqwest::Client::new()
        .put(s.url("/workflows/site"))
        .bearer_auth(t)
        .body(task.to_string())
        .send()
        .await;
    let r = r.unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
}

/// Bind the machine (a fresh offer), PXE-boot it and report the flash done:
/// the offer token the live environment then holds.
async fn flashed(s: &TestServer, t: &str) -> String {
    let body = json!({"policy": "flash-once", "image": "local-img", "target_disk_serial": "disk0",
        "provisioning_mode": "cijoe-offline", "workflow": "site"});
    let (code, v) = s.put_machine(t, MAC, body).await;
    assert!(code == 200 || code == 201, "{v}");
    let (offer, token) = s.pxe_boot(MAC).await;
    assert_eq!(offer, "flash");
    let token = token.unwrap();
    let (code, v) = s.report(&format!("/pxe/{MAC}/done"), &token, json!({"status": "done"})).await;
    assert_eq!(code, 204, "{v}");
    token
}

struct Provision<'a> {
    server: &'a TestServer,
    dev: &'a str,
    target: PathBuf,
    work: PathBuf,
}

impl Provision<'_> {
    async fn run(&self, token: &str, cijoe: &str) -> (i32, String) {
        let mut cmd = Command::new(bty_binary());
        cmd.args(["provision", "--disk", self.dev, "--mac", MAC, "--server", &self.server.url("")])
            .arg("--cijoe")
            .arg(cijoe)
            .arg("--target-root")
            .arg(&self.target)
            .arg("--work-dir")
            .arg(&self.work)
            .env("BTY_OFFER_TOKEN", token);
        let out = tokio::task::spawn_blocking(move || cmd.output().unwrap()).await.unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(
            mounted_under(&self.target).is_empty(),
            "left mounted: {:?}\n{stderr}",
            mounted_under(&self.target)
        );
        (out.status.code().unwrap_or(-1), stderr)
    }
}

async fn latest_run(s: &TestServer, t: &str) -> Value {
    let runs = s.authed_json(t, &format!("/machines/{MAC}/runs")).await;
    let id = runs[0]["id"].as_i64().expect("a run");
    s.authed_json(t, &format!("/runs/{id}")).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_offline_step_provisions_a_flashed_loop_device() {
    if !is_root() {
        eprintln!("skipping the offline provisioning test: it needs root (loop devices, mount)");
        return;
    }
    let cijoe = cijoe_command();
    let work = tempfile::tempdir().unwrap();
    let img = root_image(work.path());
    let backing = work.path().join("backing.img");
    std::fs::File::create(&backing).unwrap().set_len(64 << 20).unwrap();
    let dev =
        LoopDev(sh(Command::new("losetup").args(["-P", "-f", "--show"]).arg(&backing)).trim().to_string());
    sh(Command::new(bty_binary()).arg("flash").arg(&img).arg(&dev.0).args(["--yes", "--verify"]));

    let s = TestServer::start_with(|c| c.cijoe.timeout = Duration::from_secs(10)).await;
    let t = s.token().await;
    let p = Provision {
        server: &s,
        dev: &dev.0,
        target: work.path().join("target"),
        work: work.path().join("w"),
    };

    // A passing workflow writes into the flashed filesystem; /proc is there.
    put_workflow(
        &s,
        &t,
        "doc: offline\nsteps:\n- name: stamp\n  run: |\n    sh -c 'echo {{ config.bty.mac }} {{ config.bty.image }} > {{ config.bty.target_root }}/etc-bty'\n    test -e {{ config.bty.target_root }}/proc/self/status\n- name: show\n  run: cat {{ config.bty.target_root }}/etc-bty\n",
    )
    .await;
    let token = flashed(&s, &t).await;
    let (code, err) = p.run(&token, &cijoe).await;
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("GPT root partition type"), "the console says which root was chosen: {err}");
    let run = latest_run(&s, &t).await;
    assert_eq!(
        (&run["status"], &run["mode"], &run["workflow"]),
        (&json!("passed"), &json!("offline"), &json!("site"))
    );
    let steps: Vec<(&str, &str)> = run["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["name"].as_str().unwrap(), s["status"].as_str().unwrap()))
        .collect();
    assert_eq!(steps, [("stamp", "passed"), ("show", "passed")]);
    assert!(run["steps"][1]["output"].as_str().unwrap().contains(&format!("{MAC} local-img")), "{run}");
    // Read back from the loop device itself: at the root partition's offset.
    let head = std::fs::read(&img).unwrap();
    let start = bty_core::partition::read_table(&head[..1 << 20]).unwrap().unwrap().partitions[1].start_bytes;
    let written =
        sh(Command::new("debugfs").args(["-R", "cat /etc-bty"]).arg(format!("{}?offset={start}", dev.0)));
    assert_eq!(written.trim(), format!("{MAC} local-img"));
    // The archive holds cijoe's output and bty's own notes.
    let id = run["id"].as_i64().unwrap();
    let archive = reqwest::Client::new()
        .get(s.url(&format!("/runs/{id}/report")))
        .bearer_auth(&t)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let list_dir = work.path().join("unpacked");
    std::fs::create_dir_all(&list_dir).unwrap();
    std::fs::write(work.path().join("r.tar.gz"), &archive).unwrap();
    let listing = sh(Command::new("tar").arg("tzf").arg(work.path().join("r.tar.gz")));
    for f in ["task.state", "bty-cijoe.log", "bty-offline.txt"] {
        assert!(listing.lines().any(|l| l.ends_with(f)), "{f} missing from {listing}");
    }
    // The token is spent: the run's report was the offer's last.
    let (code, err) = p.run(&token, &cijoe).await;
    assert_eq!(code, 1);
    assert!(err.contains("403"), "{err}");
    let m = s.authed_json(&t, &format!("/machines/{MAC}")).await;
    assert_eq!(m["last_flash_status"], "done");

    // A failing step is a failed run on a flashed machine.
    put_workflow(
        &s,
        &t,
        "doc: offline\nsteps:\n- name: broken\n  run: \"false\"\n- name: after\n  run: echo never\n",
    )
    .await;
    let token = flashed(&s, &t).await;
    let (code, _) = p.run(&token, &cijoe).await;
    assert_eq!(code, 1);
    let run = latest_run(&s, &t).await;
    assert_eq!(run["status"], "failed");
    assert!(run["reason"].as_str().unwrap().contains("`broken`"), "{run}");
    assert_eq!(s.authed_json(&t, &format!("/machines/{MAC}")).await["last_flash_status"], "done");
    assert!(!s.events(&t, "provisioning.failed").await.is_empty());

    // A workflow that outlives [cijoe] timeout_seconds is stopped.
    put_workflow(&s, &t, "doc: offline\nsteps:\n- name: forever\n  run: sleep 600\n").await;
    let token = flashed(&s, &t).await;
    let started = std::time::Instant::now();
    let (code, _) = p.run(&token, &cijoe).await;
    assert_eq!(code, 1);
    assert!(started.elapsed() < Duration::from_secs(60), "{:?}", started.elapsed());
    let run = latest_run(&s, &t).await;
    assert!(run["reason"].as_str().unwrap().contains("timed out after 10 s"), "{run}");

    // No cijoe in the live environment: a failed run that says so.
    let token = flashed(&s, &t).await;
    let (code, _) = p.run(&token, "/nonexistent/cijoe").await;
    assert_eq!(code, 1);
    let run = latest_run(&s, &t).await;
    assert!(run["reason"].as_str().unwrap().contains("cijoe is not installed"), "{run}");

    assert!(mounted_under(work.path()).is_empty());
    drop(dev);
}
