//! `/workflows` and the machine fields that name one: stored after the
//! checks cijoe applies when it loads a task, refused with the part and the
//! reason, and held while machines use them.

mod common;

use common::TestServer;
use serde_json::{json, Value};

const TASK: &str = "doc: |\n  Set the hostname\nsteps:\n- name: hostname\n  run: |\n    echo lab > {{ config.bty.target_root }}/etc/hostname\n";
const MAC: &str = "52:54:00:aa:00:01";

async fn send(
    s: &TestServer,
    token: &str,
    method: reqwest::Method,
    path: &str,
    body: Option<(&str, String)>,
) -> (u16, Value) {
    let mut r = reqwest::Client::new().request(method, s.url(path)).bearer_auth(token);
    if let Some((kind, b)) = body {
        r = r.header("content-type", kind).body(b);
    }
    let r = r.send().await.unwrap();
    let code = r.status().as_u16();
    (code, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workflows_are_checked_stored_listed_and_held_while_bound() {
    let s = TestServer::start().await;
    let t = s.token().await;
    use reqwest::Method as M;
    // The task YAML as the body (curl -T task.yaml).
    let (code, body) =
        send(&s, &t, M::PUT, "/workflows/hostname", Some(("application/yaml", TASK.into()))).await;
    assert_eq!(code, 201, "{body}");
    assert_eq!(body["steps"], json!(["hostname"]));
    assert_eq!(body["doc"], "Set the hostname");
    // JSON with a config; replaced, 200.
    let (code, body) = send(
        &s,
        &t,
        M::PUT,
        "/workflows/hostname",
        Some((
            "application/json",
            json!({"task": TASK, "config": "[cijoe.task]\nfail_fast = true\n"}).to_string(),
        )),
    )
    .await;
    assert_eq!((code, &body["has_config"]), (200, &json!(true)), "{body}");
    let w = s.authed_json(&t, "/workflows/hostname").await;
    assert_eq!(w["task"], TASK);
    assert!(w["config"].as_str().unwrap().contains("fail_fast"));
    let list = s.authed_json(&t, "/workflows").await;
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");

    for (name, kind, text, field, says) in [
        ("bad", "application/yaml", "steps: [\n".to_string(), "task", "not YAML"),
        (
            "bad",
            "application/yaml",
            "doc: x\nsteps:\n- name: a\n".to_string(),
            "task",
            "give `uses` or `run`",
        ),
        (
            "bad",
            "application/json",
            json!({"task": TASK, "config": "[bty]\nx = 1\n"}).to_string(),
            "config",
            "[bty]",
        ),
        (
            "bad",
            "application/json",
            json!({"task": TASK, "config": "[cijoe.transport.ssh]\npassword = 'x'\n"}).to_string(),
            "config",
            "password",
        ),
        ("a.b", "application/yaml", TASK.to_string(), "name", "letters"),
    ] {
        let (code, body) =
            send(&s, &t, M::PUT, &format!("/workflows/{name}"), Some((kind, text.clone()))).await;
        assert_eq!(code, 422, "{text}: {body}");
        assert_eq!(body["field"], field, "{body}");
        assert!(
            body["error"].as_str().unwrap_or_default().contains(says) || body.to_string().contains(says),
            "{body}"
        );
    }
    assert_eq!(
        s.authed_json(&t, "/workflows").await.as_array().unwrap().len(),
        1,
        "nothing refused was stored"
    );

    // A cijoe mode needs a workflow, and the workflow must exist.
    let (code, body) =
        s.put_machine(&t, MAC, json!({"policy": "tui", "provisioning_mode": "cijoe-offline"})).await;
    assert_eq!((code, body["field"].as_str()), (422, Some("workflow")), "{body}");
    let (code, body) = s
        .put_machine(
            &t,
            MAC,
            json!({"policy": "tui", "provisioning_mode": "cijoe-online", "workflow": "nope"}),
        )
        .await;
    assert_eq!((code, body["field"].as_str()), (422, Some("workflow")), "{body}");
    let (code, body) = s
        .put_machine(
            &t,
            MAC,
            json!({"policy": "tui", "provisioning_mode": "cijoe-online", "workflow": "hostname",
            "ssh_host": "10.0.0.5", "ssh_port": 2222, "ssh_user": "bty"}),
        )
        .await;
    assert!(code == 200 || code == 201, "{body}");
    let m = s.authed_json(&t, &format!("/machines/{MAC}")).await;
    assert_eq!(
        (&m["workflow"], &m["ssh_port"], &m["ssh_user"]),
        (&json!("hostname"), &json!(2222), &json!("bty")),
        "{m}"
    );

    // Held while bound.
    let (code, body) = send(&s, &t, M::DELETE, "/workflows/hostname", None).await;
    assert_eq!(code, 409, "{body}");
    assert!(body.to_string().contains(MAC), "{body}");
    s.put_machine(&t, MAC, json!({"policy": "tui"})).await;
    let (code, _) = send(&s, &t, M::DELETE, "/workflows/hostname", None).await;
    assert_eq!(code, 204);
    let (code, _) = send(&s, &t, M::GET, "/workflows/hostname", None).await;
    assert_eq!(code, 404);
    assert_eq!(s.events(&t, "workflow.saved").await.len(), 2);
    assert_eq!(s.events(&t, "workflow.deleted").await.len(), 1);
    // Behind the operator login.
    let r = reqwest::get(s.url("/workflows")).await.unwrap();
    assert_eq!(r.status(), 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_workflows_page_adds_shows_refuses_and_deletes() {
    let s = TestServer::start().await;
    let (c, csrf) = s.login().await;
    let post = |path: &str, pairs: &[(&str, &str)]| {
        let body: Vec<String> = pairs
            .iter()
            .map(|(k, v)| {
                format!(
                    "{k}={}",
                    v.bytes()
                        .map(|b| if b.is_ascii_alphanumeric() {
                            (b as char).to_string()
                        } else {
                            format!("%{b:02X}")
                        })
                        .collect::<String>()
                )
            })
            .collect();
        c.post(s.url(path))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body.join("&"))
            .send()
    };
    let r =
        post("/ui/workflows", &[("csrf_token", &csrf), ("name", "hostname"), ("task", TASK), ("config", "")])
            .await
            .unwrap();
    assert_eq!(r.status(), 200, "followed to the page");
    let html = r.text().await.unwrap();
    assert!(
        html.contains("Workflow saved")
            && html.contains("Set the hostname")
            && html.contains("<code>hostname</code>"),
        "{html}"
    );
    assert!(html.contains("config.bty.target_root"), "the task is shown in full");
    // Refused, the reason next to the field and the text kept.
    let r = post(
        "/ui/workflows",
        &[("csrf_token", &csrf), ("name", "broken"), ("task", "doc: x\nsteps:\n- name: a\n"), ("config", "")],
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 422);
    let html = r.text().await.unwrap();
    assert!(
        html.contains("id=\"task-error\"") && html.contains("give <code>uses</code> or <code>run</code>"),
        "{html}"
    );
    assert!(html.contains("- name: a"), "the submitted task is kept");
    // Without the CSRF token: refused.
    let r = post("/ui/workflows/hostname/delete", &[("csrf_token", "x")]).await.unwrap();
    assert_eq!(r.status(), 403);
    let r = post("/ui/workflows/hostname/delete", &[("csrf_token", &csrf)]).await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().contains("No workflows yet"));
}
