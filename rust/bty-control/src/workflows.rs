//! CIJOE workflows kept by the server: `<state>/workflows/NAME.yaml` (the
//! cijoe task) and, optionally, `NAME.toml` (a cijoe config merged under
//! the one bty writes for a run).
//!
//! A task is checked when it is stored, because cijoe's own integrity check
//! (`cijoe -i`) cannot judge a task that uses `{{ config.… }}` values: it
//! fails every such task with "'config' is undefined". The rules are the
//! ones cijoe applies when it loads a task: a mapping with `doc` and a
//! non-empty `steps` list; every step a mapping with a `name` and either
//! `uses: PACKAGE.SCRIPT` or `run:` commands, and `with:` a mapping.
//! Names must be unique (cijoe numbers its output directories by step, and
//! bty's reports and baselines name steps).

use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_yaml_ng::Value as Yaml;

/// Largest task or config accepted.
pub const MAX_WORKFLOW_BYTES: usize = 256 << 10;
const MAX_NAME: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum WorkflowError {
    /// A problem with what was submitted: which part, and why.
    #[error("{part}: {reason}")]
    Invalid { part: &'static str, reason: String },
    #[error("no workflow named {0:?}")]
    NotFound(String),
    #[error("{0}")]
    Io(String),
}

fn invalid(part: &'static str, reason: impl Into<String>) -> WorkflowError {
    WorkflowError::Invalid { part, reason: reason.into() }
}

/// A workflow as `GET /workflows` lists it.
#[derive(Debug, Clone, Serialize)]
pub struct WorkflowInfo {
    pub name: String,
    /// The task's `doc`, first line.
    pub doc: String,
    pub steps: Vec<String>,
    pub has_config: bool,
    pub updated_at: Option<String>,
}

/// A workflow in full (`GET /workflows/{name}`).
#[derive(Debug, Clone, Serialize)]
pub struct Workflow {
    #[serde(flatten)]
    pub info: WorkflowInfo,
    pub task: String,
    pub config: Option<String>,
}

/// What a valid task holds that bty uses.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskSummary {
    pub doc: String,
    pub steps: Vec<String>,
}

/// Workflow names: letters, digits, `_` and `-`, starting with a letter or digit.
pub fn check_name(name: &str) -> Result<(), WorkflowError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        && name.as_bytes()[0].is_ascii_alphanumeric();
    if ok {
        Ok(())
    } else {
        Err(invalid(
            "name",
            format!("{name:?}: use letters, digits, `_` and `-` (at most {MAX_NAME}, starting with a letter or digit)"),
        ))
    }
}

/// Check a cijoe task as cijoe would load it; its `doc` and step names.
pub fn check_task(text: &str) -> Result<TaskSummary, WorkflowError> {
    if text.len() > MAX_WORKFLOW_BYTES {
        return Err(invalid("task", format!("larger than {MAX_WORKFLOW_BYTES} bytes")));
    }
    let doc: Yaml = serde_yaml_ng::from_str(text).map_err(|e| invalid("task", format!("not YAML: {e}")))?;
    let Yaml::Mapping(top) = doc else {
        return Err(invalid("task", "must be a mapping with `doc` and `steps` (a cijoe task)"));
    };
    let text_of = |v: Option<&Yaml>| v.and_then(Yaml::as_str).map(str::to_string);
    let Some(doc) = text_of(top.get("doc")) else {
        return Err(invalid(
            "task",
            "`doc` is missing or not text: cijoe requires a description of the task",
        ));
    };
    for k in top.keys() {
        let k = k.as_str().unwrap_or("?");
        if !["doc", "steps"].contains(&k) {
            return Err(invalid(
                "task",
                format!("unknown top-level key `{k}` (a task has `doc` and `steps`)"),
            ));
        }
    }
    let steps = match top.get("steps") {
        Some(Yaml::Sequence(s)) if !s.is_empty() => s,
        Some(Yaml::Sequence(_)) | None => return Err(invalid("task", "`steps` is missing or empty")),
        Some(_) => return Err(invalid("task", "`steps` must be a list")),
    };
    let mut names: Vec<String> = Vec::new();
    for (i, step) in steps.iter().enumerate() {
        let n = i + 1;
        let Yaml::Mapping(step) = step else {
            return Err(invalid("task", format!("step {n} is not a mapping (`name` and `uses` or `run`)")));
        };
        let Some(name) = text_of(step.get("name")) else {
            return Err(invalid("task", format!("step {n} has no `name`")));
        };
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') {
            return Err(invalid(
                "task",
                format!("step {n}: name {name:?} must be letters, digits, `_` and `-` (cijoe names directories after it)"),
            ));
        }
        if names.contains(&name) {
            return Err(invalid("task", format!("step {n}: the name `{name}` is used twice")));
        }
        for k in step.keys() {
            let k = k.as_str().unwrap_or("?");
            if !["name", "uses", "run", "with"].contains(&k) {
                return Err(invalid(
                    "task",
                    format!("step `{name}`: unknown key `{k}` (name, uses, run, with)"),
                ));
            }
        }
        match (step.get("uses"), step.get("run")) {
            (Some(_), Some(_)) => {
                return Err(invalid("task", format!("step `{name}`: `uses` and `run` together; give one")));
            }
            (None, None) => return Err(invalid("task", format!("step `{name}`: give `uses` or `run`"))),
            (Some(u), None) => {
                let ok = u.as_str().is_some_and(|u| {
                    let mut parts = u.split('.');
                    let (pkg, script) = (parts.next(), parts.next());
                    parts.next().is_none()
                        && [pkg, script].iter().all(|p| {
                            p.is_some_and(|p| {
                                !p.is_empty() && p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                            })
                        })
                });
                if !ok {
                    return Err(invalid(
                        "task",
                        format!("step `{name}`: `uses` must be PACKAGE.SCRIPT (e.g. core.cmdrunner)"),
                    ));
                }
            }
            (None, Some(r)) => {
                if r.as_str().is_none_or(|r| r.trim().is_empty()) {
                    return Err(invalid(
                        "task",
                        format!("step `{name}`: `run` must be the commands, one per line"),
                    ));
                }
            }
        }
        if step.get("with").is_some_and(|w| !w.is_mapping()) {
            return Err(invalid("task", format!("step `{name}`: `with` must be a mapping")));
        }
        names.push(name);
    }
    Ok(TaskSummary {
        doc: doc.lines().find(|l| !l.trim().is_empty()).unwrap_or("").trim().to_string(),
        steps: names,
    })
}

/// Check a workflow's cijoe config. `[bty]` is what bty writes for a run, so
/// a workflow may not set it; and a password in a transport is refused (the
/// server's key is the one way in).
pub fn check_config(text: &str) -> Result<(), WorkflowError> {
    if text.len() > MAX_WORKFLOW_BYTES {
        return Err(invalid("config", format!("larger than {MAX_WORKFLOW_BYTES} bytes")));
    }
    let t: toml::Table = toml::from_str(text).map_err(|e| invalid("config", format!("not TOML: {e}")))?;
    if t.contains_key("bty") {
        return Err(invalid(
            "config",
            "`[bty]` is written by bty for each run (target, disk, MAC, image); remove it",
        ));
    }
    let transports = t.get("cijoe").and_then(|c| c.get("transport")).and_then(|t| t.as_table());
    for (name, tr) in transports.into_iter().flatten() {
        if tr.get("password").is_some() {
            return Err(invalid(
                "config",
                format!("[cijoe.transport.{name}] has a password: online runs use the server's SSH key, never a password"),
            ));
        }
    }
    Ok(())
}

/// The workflows directory.
#[derive(Debug, Clone)]
pub struct WorkflowStore {
    dir: PathBuf,
}

impl WorkflowStore {
    pub fn new(state_dir: &Path) -> WorkflowStore {
        WorkflowStore { dir: state_dir.join("workflows") }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn task_path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.yaml"))
    }

    fn config_path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.toml"))
    }

    /// The task and config files of `name`, for a run.
    pub fn files(&self, name: &str) -> Result<(PathBuf, Option<PathBuf>), WorkflowError> {
        check_name(name)?;
        let task = self.task_path(name);
        if !task.is_file() {
            return Err(WorkflowError::NotFound(name.to_string()));
        }
        let config = self.config_path(name);
        Ok((task, config.is_file().then_some(config)))
    }

    pub fn exists(&self, name: &str) -> bool {
        check_name(name).is_ok() && self.task_path(name).is_file()
    }

    pub fn list(&self) -> Vec<WorkflowInfo> {
        self.all().into_iter().map(|w| w.info).collect()
    }

    /// Every workflow in full, by name.
    pub fn all(&self) -> Vec<Workflow> {
        let mut names: Vec<String> = std::fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().to_str()?.strip_suffix(".yaml").map(str::to_string))
            .filter(|n| check_name(n).is_ok())
            .collect();
        names.sort();
        names.into_iter().filter_map(|n| self.get(&n).ok()).collect()
    }

    pub fn get(&self, name: &str) -> Result<Workflow, WorkflowError> {
        let (task_path, config_path) = self.files(name)?;
        let task = std::fs::read_to_string(&task_path)
            .map_err(|e| WorkflowError::Io(format!("{}: {e}", task_path.display())))?;
        let config = config_path
            .map(std::fs::read_to_string)
            .transpose()
            .map_err(|e| WorkflowError::Io(e.to_string()))?;
        // A file changed by hand may no longer be valid; it is shown anyway.
        let summary =
            check_task(&task).unwrap_or(TaskSummary { doc: "(not a valid task)".into(), steps: vec![] });
        let updated_at = std::fs::metadata(&task_path)
            .and_then(|m| m.modified())
            .ok()
            .map(|t| crate::clock::rfc3339(time::OffsetDateTime::from(t)));
        Ok(Workflow {
            info: WorkflowInfo {
                name: name.to_string(),
                doc: summary.doc,
                steps: summary.steps,
                has_config: config.is_some(),
                updated_at,
            },
            task,
            config,
        })
    }

    /// Store (or replace) a workflow after checking it. `config: None`
    /// removes a config kept from before. True when it is new.
    pub fn put(&self, name: &str, task: &str, config: Option<&str>) -> Result<bool, WorkflowError> {
        check_name(name)?;
        check_task(task)?;
        if let Some(c) = config {
            check_config(c)?;
        }
        let io =
            |e: std::io::Error| WorkflowError::Io(format!("cannot write into {}: {e}", self.dir.display()));
        std::fs::create_dir_all(&self.dir).map_err(io)?;
        let created = !self.task_path(name).exists();
        write_atomically(&self.task_path(name), task.as_bytes()).map_err(io)?;
        match config {
            Some(c) => write_atomically(&self.config_path(name), c.as_bytes()).map_err(io)?,
            None => match std::fs::remove_file(self.config_path(name)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io(e)),
                _ => {}
            },
        }
        Ok(created)
    }

    pub fn delete(&self, name: &str) -> Result<(), WorkflowError> {
        self.files(name)?;
        let io = |e: std::io::Error| WorkflowError::Io(e.to_string());
        std::fs::remove_file(self.task_path(name)).map_err(io)?;
        let _ = std::fs::remove_file(self.config_path(name));
        Ok(())
    }
}

/// Saves and deletions one at a time (a save reads the config it keeps).
pub static EDITS: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("workflow");
    let tmp = path.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TASK: &str = "doc: |\n  Set the hostname\n  and more\nsteps:\n- name: hostname\n  run: |\n    echo lab > {{ config.bty.target_root }}/etc/hostname\n- name: info\n  uses: core.get\n  with:\n    src: /etc/os-release\n";

    fn reason(r: Result<TaskSummary, WorkflowError>) -> String {
        r.unwrap_err().to_string()
    }

    #[test]
    fn a_task_is_checked_as_cijoe_loads_it() {
        let s = check_task(TASK).unwrap();
        assert_eq!(
            s,
            TaskSummary { doc: "Set the hostname".into(), steps: vec!["hostname".into(), "info".into()] }
        );
        for (text, says) in [
            ("steps: [\n", "not YAML"),
            ("- a\n", "must be a mapping"),
            ("steps:\n- name: a\n  run: x\n", "`doc` is missing"),
            ("doc: x\nsteps: []\n", "missing or empty"),
            ("doc: x\nsteps:\n- run: x\n", "step 1 has no `name`"),
            ("doc: x\nsteps:\n- name: a b\n  run: x\n", "must be letters"),
            ("doc: x\nsteps:\n- name: a\n  run: x\n- name: a\n  run: y\n", "used twice"),
            ("doc: x\nsteps:\n- name: a\n", "give `uses` or `run`"),
            ("doc: x\nsteps:\n- name: a\n  run: x\n  uses: core.cmdrunner\n", "together"),
            ("doc: x\nsteps:\n- name: a\n  uses: nodot\n", "PACKAGE.SCRIPT"),
            ("doc: x\nsteps:\n- name: a\n  run: x\n  with: [1]\n", "`with` must be a mapping"),
            ("doc: x\nsteps:\n- name: a\n  run: x\n  retries: 3\n", "unknown key `retries`"),
            ("doc: x\nsteps:\n- name: a\n  run: x\nextra: 1\n", "unknown top-level key `extra`"),
        ] {
            let got = reason(check_task(text));
            assert!(got.contains(says), "{text:?}: {got}");
        }
    }

    #[test]
    fn a_config_may_not_set_bty_or_a_password() {
        check_config("[cijoe.task]\nfail_fast = true\n").unwrap();
        let e = check_config("[bty]\ntarget_root = '/'\n").unwrap_err().to_string();
        assert!(e.contains("[bty]"), "{e}");
        let e =
            check_config("[cijoe.transport.ssh]\nhostname = 'x'\npassword = 'p'\n").unwrap_err().to_string();
        assert!(e.contains("password"), "{e}");
        assert!(check_config("[x\n").unwrap_err().to_string().contains("not TOML"));
    }

    #[test]
    fn the_store_keeps_checks_replaces_and_deletes() {
        let dir = tempfile::tempdir().unwrap();
        let s = WorkflowStore::new(dir.path());
        assert!(s.list().is_empty());
        assert!(s.put("hostname", TASK, Some("[cijoe.task]\nfail_fast = true\n")).unwrap());
        assert!(!s.put("hostname", TASK, None).unwrap(), "replaced");
        let w = s.get("hostname").unwrap();
        assert_eq!((w.info.has_config, w.info.steps.len()), (false, 2));
        assert!(matches!(s.put("../x", TASK, None), Err(WorkflowError::Invalid { part: "name", .. })));
        assert!(matches!(s.put("bad", "doc: x\n", None), Err(WorkflowError::Invalid { part: "task", .. })));
        assert!(!s.exists("bad"), "a refused workflow leaves no file");
        assert_eq!(s.list().len(), 1);
        s.delete("hostname").unwrap();
        assert!(matches!(s.get("hostname"), Err(WorkflowError::NotFound(_))));
    }
}
