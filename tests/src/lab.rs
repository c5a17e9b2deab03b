//! A lookup server played by the test: it leases jobs from a real web server over mutual TLS,
//! gives them back with reasons, and posts answers it builds and signs as a node would
//! (`rjs_signer::answer::build_answer`), so that a test decides what every answer holds and
//! when it arrives.

use anyhow::{Context, Result, bail};
use rjs_signer::answer::{Ending, ResultDoc, build_answer};
use rjs_signer::keys::KeyPair;
use rjs_signer::manifest::Limits;
use rjs_wire::api;
use serde_json::json;

use crate::WebServer;

pub struct Lab<'a> {
    ws: &'a WebServer,
    client: reqwest::blocking::Client,
    /// The node key answers are signed with.
    pub node_key: KeyPair,
    pub node_id: String,
}

/// What one answer holds.
pub struct AnswerSpec<'a> {
    pub ending: Ending,
    pub stdout: &'a [u8],
    pub stderr: &'a [u8],
    /// (path under `out/`, bytes).
    pub files: Vec<(String, Vec<u8>)>,
}

impl<'a> Lab<'a> {
    /// Enrols lookup `name` at `ws`.
    pub fn enrol(ws: &'a WebServer, name: &str) -> Result<Self> {
        let creds = ws.add_lookup(name)?;
        Ok(Lab {
            ws,
            client: ws.lookup_client(&creds)?,
            node_key: KeyPair::generate(),
            node_id: "node-7".into(),
        })
    }

    fn post(&self, path: &str, body: serde_json::Value) -> Result<serde_json::Value> {
        let r = self.client.post(self.ws.url(path)).json(&body).send()?;
        if !r.status().is_success() {
            bail!("{path}: {} {}", r.status(), r.text().unwrap_or_default());
        }
        Ok(r.json()?)
    }

    /// Leases up to `max` jobs (any group), in task order.
    pub fn lease(&self, max: u32) -> Result<Vec<api::Lease>> {
        let v = self.post(
            "/lookup/v1/lease",
            json!({"max": max, "groups": [], "lease_secs": 600}),
        )?;
        let mut leases: Vec<api::Lease> = serde_json::from_value(v["leases"].clone())?;
        leases.sort_by_key(|l| (l.job_id, l.task));
        Ok(leases)
    }

    /// Tells the web server why held jobs wait.
    pub fn waiting(&self, jobs: &[(i64, &str)]) -> Result<()> {
        let jobs: Vec<_> = jobs
            .iter()
            .map(|(id, why)| json!({"job_id": id, "reason": why}))
            .collect();
        self.post("/lookup/v1/waiting", json!({ "jobs": jobs }))?;
        Ok(())
    }

    /// Builds, signs and posts the answer of `lease`.
    pub fn answer(&self, lease: &api::Lease, spec: &AnswerSpec<'_>) -> Result<Vec<u8>> {
        let result = ResultDoc {
            format: 1,
            bundle_sha256: lease.bundle_id.clone(),
            job_name: "job".into(),
            task_index: lease.task,
            task_count: lease.tasks,
            node_id: self.node_id.clone(),
            node_mflops: 2500,
            ending: spec.ending.clone(),
            limits_hit: vec![],
            limits: Limits::default(),
            started_at: crate::now() - 1,
            finished_at: crate::now(),
            wall_ms: 812,
            cpu_ms: 790,
            stdout_bytes: spec.stdout.len() as u64,
            stderr_bytes: spec.stderr.len() as u64,
            output_bytes: spec.files.iter().map(|(_, d)| d.len() as u64).sum(),
            missing_outputs: vec![],
        };
        let bytes = build_answer(
            &result,
            spec.stdout,
            spec.stderr,
            &spec.files,
            &self.node_key,
            crate::now(),
        )
        .context("building the answer")?;
        let r = self
            .client
            .put(
                self.ws
                    .url(&format!("/lookup/v1/jobs/{}/answer", lease.job_id)),
            )
            .header(api::H_OUTCOME, result.summary())
            .header(api::H_NODE, &self.node_id)
            .body(bytes.clone())
            .send()?;
        if !r.status().is_success() {
            bail!(
                "answer of job {}: {} {}",
                lease.job_id,
                r.status(),
                r.text().unwrap_or_default()
            );
        }
        Ok(bytes)
    }
}
