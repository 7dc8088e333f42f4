//! The real cijoe (checks/deps.sh installs the pinned version into
//! checks/out/cijoe/) run against a directory standing in for a flashed root
//! filesystem, as the offline mode runs it.

use std::path::PathBuf;
use std::time::Duration;

use bty_control::cijoe::{self, BtyValues, RunSpec};

fn cijoe_command() -> String {
    if let Ok(c) = std::env::var("BTY_TEST_CIJOE") {
        return c;
    }
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../checks/out/cijoe/bin/cijoe");
    assert!(p.exists(), "cijoe is needed for this test: checks/deps.sh installs it into checks/out/cijoe/");
    p.display().to_string()
}

struct Run {
    _dir: tempfile::TempDir,
    root: PathBuf,
    spec: RunSpec,
}

fn setup(task: &str, timeout: Duration) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("target");
    std::fs::create_dir_all(root.join("etc")).unwrap();
    std::fs::write(dir.path().join("task.yaml"), task).unwrap();
    let values = BtyValues {
        mac: "52:54:00:aa:00:01".into(),
        image: Some("debian".into()),
        target_root: Some(root.display().to_string()),
        ..Default::default()
    };
    std::fs::write(dir.path().join("bty.toml"), cijoe::bty_config(&values, None)).unwrap();
    let spec = RunSpec {
        command: cijoe_command(),
        task: dir.path().join("task.yaml"),
        configs: vec![dir.path().join("bty.toml")],
        output: dir.path().join("run/out"),
        timeout,
        env: vec![],
    };
    Run { root, spec, _dir: dir }
}

#[tokio::test]
async fn a_passing_workflow_writes_into_the_target_and_reports_each_step() {
    let r = setup(
        "doc: set the hostname\nsteps:\n- name: hostname\n  run: |\n    sh -c 'echo {{ config.bty.mac }} > {{ config.bty.target_root }}/etc/hostname'\n- name: show\n  run: cat {{ config.bty.target_root }}/etc/hostname\n",
        Duration::from_secs(60),
    );
    let out = cijoe::run(&r.spec).await;
    assert_eq!(out.status, "passed", "{out:?}");
    assert_eq!(std::fs::read_to_string(r.root.join("etc/hostname")).unwrap().trim(), "52:54:00:aa:00:01");
    let names: Vec<(&str, &str)> = out.steps.iter().map(|s| (s.name.as_str(), s.status.as_str())).collect();
    assert_eq!(names, [("hostname", "passed"), ("show", "passed")]);
    assert!(out.steps[1].output.contains("52:54:00:aa:00:01"), "{:?}", out.steps[1]);
    assert!(r.spec.output.join("task.state").exists());
}

#[tokio::test]
async fn a_failing_step_fails_the_run_by_name_and_later_steps_are_skipped() {
    let r = setup(
        "doc: x\nsteps:\n- name: first\n  run: echo one\n- name: packages\n  run: sh -c 'echo no network >&2; exit 3'\n- name: last\n  run: echo never\n",
        Duration::from_secs(60),
    );
    // The workflow's own config, before bty's.
    let mut r = r;
    let cfg = r.spec.task.with_file_name("workflow.toml");
    std::fs::write(&cfg, "[cijoe.task]\nfail_fast = true\n").unwrap();
    r.spec.configs.insert(0, cfg);
    let out = cijoe::run(&r.spec).await;
    assert_eq!(out.status, "failed");
    assert_eq!(out.exit_code, Some(5), "{out:?}");
    assert!(out.reason.as_deref().unwrap().contains("step `packages` failed"), "{out:?}");
    let st: Vec<&str> = out.steps.iter().map(|s| s.status.as_str()).collect();
    assert_eq!(st, ["passed", "failed", "skipped"]);
    assert!(out.steps[1].output.contains("no network"), "{:?}", out.steps[1]);
}

#[tokio::test]
async fn a_workflow_past_its_timeout_is_stopped_with_everything_it_started() {
    let r = setup(
        "doc: x\nsteps:\n- name: hangs\n  run: sh -c 'echo $$ > {{ config.bty.target_root }}/pid; sleep 300'\n",
        Duration::from_secs(4),
    );
    let t = std::time::Instant::now();
    let out = cijoe::run(&r.spec).await;
    assert!(t.elapsed() < Duration::from_secs(30));
    assert_eq!(out.status, "failed");
    assert!(out.reason.as_deref().unwrap().contains("timed out after 4 s"), "{out:?}");
    let pid: i32 = std::fs::read_to_string(r.root.join("pid")).unwrap().trim().parse().unwrap();
    std::thread::sleep(Duration::from_millis(200));
    // Gone, or a zombie waiting for whoever inherited it.
    let alive = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|s| s.rsplit_once(") ").is_some_and(|(_, rest)| !rest.starts_with('Z')));
    assert!(!alive, "the step's sleep was killed with the run");
}

#[tokio::test]
async fn a_missing_cijoe_is_a_failed_run_that_says_so() {
    let mut r = setup("doc: x\nsteps:\n- name: a\n  run: echo a\n", Duration::from_secs(10));
    r.spec.command = "/nonexistent/cijoe".into();
    let out = cijoe::run(&r.spec).await;
    assert_eq!(out.status, "failed");
    assert!(out.reason.as_deref().unwrap().contains("cijoe is not installed"), "{out:?}");
}
