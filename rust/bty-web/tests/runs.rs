//! Offline CIJOE runs as the live environment reports them: the real cijoe
//! run against a directory standing in for the flashed root, its output
//! archived and posted with the flash offer's token; the run, its steps, its
//! tripwire and its archive on the server.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use bty_web::cijoe::{self, BtyValues, RunSpec};
use common::TestServer;
use serde_json::{json, Value};

const MAC: &str = "52:54:00:cc:00:01";

fn cijoe_command() -> String {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../checks/out/cijoe/bin/cijoe");
    assert!(p.exists(), "cijoe is needed for this test: checks/deps.sh installs it into checks/out/cijoe/");
    p.display().to_string()
}

/// Run `task` with real cijoe against `root`; the tar.gz of its output.
async fn offline_run(work: &Path, task: &str) -> (Vec<u8>, i32) {
    let root = work.join("target");
    std::fs::create_dir_all(root.join("etc")).unwrap();
    std::fs::write(work.join("task.yaml"), task).unwrap();
    let values =
        BtyValues { mac: MAC.into(), target_root: Some(root.display().to_string()), ..Default::default() };
    std::fs::write(work.join("bty.toml"), cijoe::bty_config(&values, None)).unwrap();
    let spec = RunSpec {
        command: cijoe_command(),
        task: work.join("task.yaml"),
        configs: vec![work.join("bty.toml")],
        output: work.join("run/out"),
        timeout: Duration::from_secs(60),
        env: vec![],
    };
    let outcome = cijoe::run(&spec).await;
    let tar = work.join("report.tar.gz");
    let st = std::process::Command::new("tar")
        .arg("czf")
        .arg(&tar)
        .arg("-C")
        .arg(&spec.output)
        .arg(".")
        .status()
        .unwrap();
    assert!(st.success());
    (std::fs::read(tar).unwrap(), outcome.exit_code.unwrap_or(-1))
}

async fn post_report(s: &TestServer, token: Option<&str>, body: Vec<u8>, exit: i32) -> (u16, Value) {
    let mut r = reqwest::Client::new().post(s.url(&format!("/pxe/{MAC}/cijoe?exit={exit}"))).body(body);
    if let Some(t) = token {
        r = r.header("X-Bty-Offer-Token", t);
    }
    let r = r.send().await.unwrap();
    let code = r.status().as_u16();
    (code, r.json().await.unwrap_or(Value::Null))
}

async fn bound_server(mode: &str) -> (TestServer, String, String) {
    let s = TestServer::start().await;
    let t = s.token().await;
    let r = reqwest::Client::new()
        .put(s.url("/workflows/hostname"))
        .bearer_auth(&t)
        .body("doc: x\nsteps:\n- name: a\n  run: echo a\n")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let mut body = json!({"policy": "flash-once", "image": "local-img", "target_disk_serial": "disk0"});
    if mode != "none" {
        body["provisioning_mode"] = json!(mode);
        body["workflow"] = json!("hostname");
    }
    let (code, v) = s.put_machine(&t, MAC, body).await;
    assert_eq!(code, 201, "{v}");
    let (offer, token) = s.pxe_boot(MAC).await;
    assert_eq!(offer, "flash");
    (s, t, token.expect("a flash offer carries a token"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offline_run_is_recorded_with_its_steps_and_archive() {
    let (s, t, offer) = bound_server("cijoe-offline").await;
    let work = tempfile::tempdir().unwrap();
    let task = "doc: x\nsteps:\n- name: hostname\n  run: |\n    sh -c 'echo lab > {{ config.bty.target_root }}/etc/hostname'\n    cat {{ config.bty.target_root }}/etc/hostname\n- name: packages\n  run: echo installed\n";
    let (archive, exit) = offline_run(work.path(), task).await;
    assert_eq!(exit, 0);
    assert_eq!(std::fs::read_to_string(work.path().join("target/etc/hostname")).unwrap(), "lab\n");

    // Only the live environment of the current flash offer may report.
    let (code, _) = post_report(&s, None, archive.clone(), 0).await;
    assert_eq!(code, 403);
    let (code, _) = post_report(&s, Some("not-the-token"), archive.clone(), 0).await;
    assert_eq!(code, 403);
    let (code, v) = post_report(&s, Some(&offer), archive.clone(), 0).await;
    assert_eq!(code, 201, "{v}");
    assert_eq!(v["status"], "passed", "{v}");
    let id = v["run"].as_i64().unwrap();

    let runs = s.authed_json(&t, &format!("/machines/{MAC}/runs")).await;
    assert_eq!(runs.as_array().unwrap().len(), 1, "{runs}");
    let run = s.authed_json(&t, &format!("/runs/{id}")).await;
    assert_eq!(
        (&run["mode"], &run["workflow"], &run["status"]),
        (&json!("offline"), &json!("hostname"), &json!("passed"))
    );
    let steps: Vec<(&str, &str)> = run["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["name"].as_str().unwrap(), s["status"].as_str().unwrap()))
        .collect();
    assert_eq!(steps, [("hostname", "passed"), ("packages", "passed")]);
    assert!(run["steps"][0]["output"].as_str().unwrap().contains("lab"), "{run}");
    let r = reqwest::Client::new()
        .get(s.url(&format!("/runs/{id}/report")))
        .bearer_auth(&t)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-disposition"].to_str().unwrap().contains("attachment"));
    assert!(r.bytes().await.unwrap() == archive, "the archive as it arrived");
    assert_eq!(s.events(&t, "provisioning.passed").await.len(), 1);
    // The run is behind the operator login.
    assert_eq!(reqwest::get(s.url(&format!("/runs/{id}/report"))).await.unwrap().status(), 401);

    // Deleting the machine takes its runs and their files.
    let dir = s.state_dir().join("cijoe").join(MAC.replace(':', "-"));
    assert!(dir.join(id.to_string()).is_dir());
    let r = reqwest::Client::new()
        .delete(s.url(&format!("/machines/{MAC}")))
        .bearer_auth(&t)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    assert!(!dir.exists(), "{} is left behind", dir.display());
    assert_eq!(
        reqwest::Client::new()
            .get(s.url(&format!("/runs/{id}")))
            .bearer_auth(&t)
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_workflow_is_a_tripwire_and_leaves_the_flash_alone() {
    let (s, t, offer) = bound_server("cijoe-offline").await;
    let work = tempfile::tempdir().unwrap();
    let (archive, exit) = offline_run(
        work.path(),
        "doc: x\nsteps:\n- name: ok\n  run: echo ok\n- name: packages\n  run: sh -c 'exit 4'\n",
    )
    .await;
    assert_eq!(exit, 5);
    let before = s.authed_json(&t, &format!("/machines/{MAC}")).await["state"].clone();
    let (code, v) = post_report(&s, Some(&offer), archive, exit).await;
    assert_eq!((code, &v["status"]), (201, &json!("failed")), "{v}");
    assert!(v["reason"].as_str().unwrap().contains("step `packages` failed"), "{v}");
    let failed = s.events(&t, "provisioning.failed").await;
    assert_eq!(failed.len(), 1);
    assert!(failed[0]["summary"].as_str().unwrap().contains("packages"), "{failed:?}");
    let m = s.authed_json(&t, &format!("/machines/{MAC}")).await;
    assert_eq!(m["state"], before, "the machine's flash state is not the workflow's business");
    // The offer is still open: the flash's own done is accepted after it.
    let r = reqwest::Client::new()
        .post(s.url(&format!("/pxe/{MAC}/done")))
        .header("X-Bty-Offer-Token", &offer)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(s.authed_json(&t, &format!("/machines/{MAC}")).await["last_flash_status"], "done");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_reports_are_refused_and_leave_nothing() {
    let (s, t, offer) = bound_server("cijoe-offline").await;
    // A path out of the run's directory.
    let work = tempfile::tempdir().unwrap();
    let py = r#"
import io, sys, tarfile
buf = io.BytesIO()
with tarfile.open(fileobj=buf, mode="w:gz") as t:
    data = b"owned"
    i = tarfile.TarInfo("../../../../escaped"); i.size = len(data)
    t.addfile(i, io.BytesIO(data))
sys.stdout.buffer.write(buf.getvalue())
"#;
    let evil = std::process::Command::new("python3").arg("-c").arg(py).output().unwrap().stdout;
    let (code, v) = post_report(&s, Some(&offer), evil, 0).await;
    assert_eq!(code, 422, "{v}");
    assert!(v.to_string().contains("outside"), "{v}");
    let state = s.state_dir();
    assert!(!state.join("escaped").exists() && !state.parent().unwrap().join("escaped").exists());
    // Not an archive.
    let (code, _) = post_report(&s, Some(&offer), b"hello".to_vec(), 0).await;
    assert_eq!(code, 422);
    assert!(s.authed_json(&t, &format!("/machines/{MAC}/runs")).await.as_array().unwrap().is_empty());
    let leftovers: Vec<_> = std::fs::read_dir(state.join("cijoe").join(MAC.replace(':', "-")))
        .map(|d| d.filter_map(|e| e.ok()).collect())
        .unwrap_or_default();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    drop(work);

    // A machine not bound to an offline workflow cannot report one.
    let (s2, _, offer2) = bound_server("none").await;
    let (code, v) = post_report(&s2, Some(&offer2), b"x".to_vec(), 0).await;
    assert_eq!(code, 403, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_machine_back_at_pxe_without_its_workflow_report_has_a_failed_run() {
    let (s, t, offer) = bound_server("cijoe-offline").await;
    let (code, v) = s.report(&format!("/pxe/{MAC}/done"), &offer, json!({"status": "done"})).await;
    assert_eq!(code, 204, "{v}");
    // The live environment died in the workflow; the machine PXE-boots its disk.
    let (next, _) = s.pxe_boot(MAC).await;
    assert_eq!(next, "local");
    let runs = s.authed_json(&t, &format!("/machines/{MAC}/runs")).await;
    assert_eq!(runs.as_array().unwrap().len(), 1, "{runs}");
    assert_eq!(runs[0]["status"], "failed");
    assert!(runs[0]["reason"].as_str().unwrap().contains("before the live environment reported"), "{runs}");
    let m = s.authed_json(&t, &format!("/machines/{MAC}")).await;
    assert_eq!((m["last_flash_status"].as_str(), m["state"].as_str()), (Some("done"), Some("flashed")));
    // The token is spent; a late report is refused; a later boot adds nothing.
    let (code, _) = post_report(&s, Some(&offer), vec![], 0).await;
    assert_eq!(code, 403);
    s.pxe_boot(MAC).await;
    assert_eq!(s.authed_json(&t, &format!("/machines/{MAC}/runs")).await.as_array().unwrap().len(), 1);
}
