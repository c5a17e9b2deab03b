//! The node's job pipeline, shared by the job server and `rjs-compute run`:
//! verify → group → limits → trust → idle → slot → sandbox → signed answer.
//! Nothing of a job runs before every check has passed.

use std::sync::Arc;

use rjs_signer::VerifyLimits;
use rjs_signer::answer::{self, Ending, LimitKind, ResultDoc};
use rjs_signer::bundle::hex;
use rjs_wire::node::RefusalCode;

use crate::bundles::{BundleCache, ReadyBundle};
use crate::config::NodeConfig;
use crate::identity::NodeIdentity;
use crate::job::{TaskResult, TaskSpec};
use crate::sandbox::{Sandbox, Slot};
use crate::trust::{Decision, Gatekeeper, JobRequest};

/// Answers whose stdout, stderr and out/ files total at most this are built on the calling
/// thread rather than on the blocking pool.
const INLINE_ANSWER_BYTES: u64 = 16 << 10;

/// A job the node will not run, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub code: RefusalCode,
    pub reason: String,
}

impl Refusal {
    fn new(code: RefusalCode, reason: impl Into<String>) -> Self {
        Refusal {
            code,
            reason: reason.into(),
        }
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "refused ({}): {}", self.code.as_str(), self.reason)
    }
}

/// A job that passed every check and holds a slot.
pub struct Admitted {
    slot: Slot,
    task: TaskSpec,
    signer: String,
}

impl Admitted {
    pub fn task(&self) -> &TaskSpec {
        &self.task
    }
    /// `name fingerprint` of the bundle's signer.
    pub fn signer(&self) -> &str {
        &self.signer
    }
}

/// A signed answer archive and its one-line outcome.
#[derive(Debug, Clone)]
pub struct Answer {
    pub bytes: Vec<u8>,
    pub outcome: String,
    pub result: TaskResult,
}

/// Everything a node needs to take jobs.
pub struct Node {
    pub config: NodeConfig,
    pub identity: NodeIdentity,
    pub mflops: u64,
    pub gatekeeper: Gatekeeper,
    pub sandbox: Sandbox,
    pub bundles: BundleCache,
    pub verify_limits: VerifyLimits,
}

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("loading the node identity")]
    Identity(#[from] crate::identity::IdentityError),
    #[error("measuring the node's speed")]
    Bench(#[from] crate::bench::BenchError),
    #[error("opening the trust store")]
    Trust(#[from] crate::trust::TrustError),
    #[error("starting the sandbox")]
    Sandbox(#[from] crate::sandbox::SandboxError),
    #[error("opening the bundle cache")]
    Bundles(#[from] rjs_signer::fsutil::FileError),
    #[error("a start-up task failed: {0}")]
    Join(String),
}

/// How to start a [`Node`] beyond its configuration.
#[derive(Debug, Clone, Default)]
pub struct StartOptions {
    /// Node id [default: derived from the node key].
    pub node_id: Option<String>,
    /// Measure the speed again even if a result is stored.
    pub rebench: bool,
    /// Worker executable [default: this executable].
    pub worker_exe: Option<std::path::PathBuf>,
}

impl Node {
    /// Loads (or creates) the identity, loads (or measures) the speed, opens the trust store
    /// and the bundle cache, and starts the sandbox's workers.
    pub async fn start(mut config: NodeConfig, opts: StartOptions) -> Result<Node, StartError> {
        rjs_signer::fsutil::create_private_dir(&config.data_dir)?;
        // Workers get absolute paths whatever their working directory.
        config.data_dir = std::fs::canonicalize(&config.data_dir)
            .map_err(|e| rjs_signer::fsutil::FileError::io("resolving", &config.data_dir, e))?;
        let identity = NodeIdentity::load_or_create(&config.data_dir, opts.node_id.as_deref())?;
        let data = config.data_dir.clone();
        let rebench = opts.rebench;
        let bench = tokio::task::spawn_blocking(move || crate::bench::load_or_run(&data, rebench))
            .await
            .map_err(|e| StartError::Join(e.to_string()))??;
        let gatekeeper = Gatekeeper::for_node(&config)?;
        let mut sc = crate::sandbox::SandboxConfig::new(config.data_dir.clone());
        sc.slots = config.slots;
        sc.max_memory_bytes = config.limits.max_memory_bytes.min(4 << 30);
        sc.worker_exe = opts.worker_exe;
        sc.scratch_in = config.scratch_dir.clone();
        sc.nice = config.job_nice;
        sc.compile_timeout = config.compile_timeout;
        let sandbox = Sandbox::start(sc).await?;
        let bundles = BundleCache::open(&config.data_dir.join("bundles"), 64, 1 << 30)?;
        Ok(Node {
            identity,
            mflops: bench.result.mflops.round().max(0.0) as u64,
            gatekeeper,
            sandbox,
            bundles,
            verify_limits: VerifyLimits::default(),
            config,
        })
    }

    /// Checks a job, in order: the bundle verifies (and is `expected_sha` if given), the
    /// task exists, the group is served, the limits fit, the owner trusts the author, the PC
    /// is idle (if asked), a slot is free. On success the verified bundle is cached: on disk
    /// (if it is not there yet) and ready in memory (see [`Node::admit_ready`]).
    pub async fn admit(
        &self,
        bundle: Arc<Vec<u8>>,
        expected_sha: Option<&str>,
        task_index: u32,
    ) -> Result<Admitted, Refusal> {
        let bytes = bundle.clone();
        let limits = self.verify_limits;
        let verified = tokio::task::spawn_blocking(move || {
            let id = rjs_signer::bundle_id(&bytes);
            rjs_signer::verify_bytes(&bytes, &limits).map(|b| ReadyBundle::new(id, b))
        })
        .await
        .map_err(|e| Refusal::new(RefusalCode::Unavailable, format!("verifier failed: {e}")))?;
        let ready = verified.map_err(|e| {
            Refusal::new(
                RefusalCode::InvalidBundle,
                format!("{}: {}", e.rule(), rjs_cmd::chain(&e)),
            )
        })?;
        if let Some(expected) = expected_sha
            && expected != ready.sha_hex()
        {
            return Err(Refusal::new(
                RefusalCode::InvalidBundle,
                format!(
                    "the bundle's SHA-256 is {}, not the offered {expected}",
                    ready.sha_hex()
                ),
            ));
        }
        let ready = Arc::new(ready);
        let admitted = self.admit_ready(&ready, task_index).await?;
        // Keep the bundle so the next task of it need not be sent (nor verified) again.
        if let Err(e) = self.bundles.put(ready.sha_hex(), &bundle) {
            tracing::warn!(error = %rjs_cmd::chain(&e), "could not cache the bundle");
        }
        self.bundles.keep_ready(ready);
        Ok(admitted)
    }

    /// [`admit`](Self::admit) for a bundle already verified (from
    /// [`BundleCache::ready`]): every check but the verification, in the same order.
    pub async fn admit_ready(
        &self,
        ready: &Arc<ReadyBundle>,
        task_index: u32,
    ) -> Result<Admitted, Refusal> {
        let m = ready.manifest();
        if task_index >= m.tasks {
            return Err(Refusal::new(
                RefusalCode::BadRequest,
                format!(
                    "task {task_index} does not exist: the bundle has {} tasks",
                    m.tasks
                ),
            ));
        }
        if !self.config.accepts_group(&m.group) {
            return Err(Refusal::new(
                RefusalCode::WrongGroup,
                format!(
                    "the job's group {} is not within this node's groups {}",
                    m.group,
                    self.config.groups.join(", ")
                ),
            ));
        }
        self.config
            .accepts(&m.limits)
            .map_err(|why| Refusal::new(RefusalCode::OverLimits, why))?;
        if m.limits.memory_bytes > self.sandbox.max_memory_bytes() {
            return Err(Refusal::new(
                RefusalCode::OverLimits,
                format!(
                    "the job asks for {} bytes of memory; this node's sandbox allows {}",
                    m.limits.memory_bytes,
                    self.sandbox.max_memory_bytes()
                ),
            ));
        }
        let signer = ready.signer();
        let decision = self
            .gatekeeper
            .decide(&JobRequest {
                key: signer.public_key,
                signer_name: signer.name.clone(),
                bundle_name: m.name.clone(),
                limits: m.limits,
            })
            .await;
        if let Decision::Refuse { code, reason } = decision {
            return Err(Refusal::new(code, reason));
        }
        self.config
            .idle
            .check(self.sandbox.busy())
            .map_err(|why| Refusal::new(RefusalCode::NotIdle, why))?;
        let slot = self.sandbox.try_acquire().ok_or_else(|| {
            Refusal::new(
                RefusalCode::NoFreeSlot,
                format!("all {} slots are busy", self.sandbox.slots()),
            )
        })?;
        let signer = format!("{} {}", signer.name, signer.fingerprint);
        let task = ready.task(task_index);
        Ok(Admitted { slot, task, signer })
    }

    /// Runs an admitted job in the sandbox and signs its answer. Whatever the job does, the
    /// result is an answer; only a failure to build the archive itself is an error.
    pub async fn execute(&self, admitted: Admitted) -> Result<Answer, ExecuteError> {
        let phase = tokio::sync::watch::channel(crate::sandbox::TaskPhase::Preparing).0;
        self.execute_watched(admitted, phase).await
    }

    /// [`execute`](Self::execute), telling `phase` where the task is (compiling, running).
    pub async fn execute_watched(
        &self,
        admitted: Admitted,
        phase: tokio::sync::watch::Sender<crate::sandbox::TaskPhase>,
    ) -> Result<Answer, ExecuteError> {
        let Admitted { slot, task, .. } = admitted;
        let (bundle_sha256, job_name, task_index, task_count, limits) = (
            hex(&task.bundle_sha256),
            task.name.clone(),
            task.task_index,
            task.task_count,
            task.limits,
        );
        let outputs = task.outputs.clone();
        let started_at = rjs_signer::unix_now();
        let mut result = self.sandbox.run_watched(slot, task, phase).await.0;
        let finished_at = rjs_signer::unix_now().max(started_at);
        // The answer format refuses messages beyond its bound and a limit ending that is not
        // listed among the limits hit: normalise here.
        result.ending = match result.ending {
            Ending::Trap { message } => Ending::Trap {
                message: answer::clip_message(&message),
            },
            Ending::Limit { limit, message } => Ending::Limit {
                limit,
                message: answer::clip_message(&message),
            },
            Ending::Crash { message } => Ending::Crash {
                message: answer::clip_message(&message),
            },
            e @ Ending::Exit { .. } => e,
        };
        if let Ending::Limit { limit, .. } = &result.ending
            && !result.limits_hit.contains(limit)
        {
            result.limits_hit.push(*limit);
        }
        let output_bytes: u64 = result.out_files.iter().map(|(_, d)| d.len() as u64).sum();
        let names: Vec<&str> = result.out_files.iter().map(|(n, _)| n.as_str()).collect();
        let missing_outputs = rjs_signer::manifest::missing_outputs(&outputs, &names);
        let doc = ResultDoc {
            format: answer::RESULT_FORMAT,
            bundle_sha256,
            job_name,
            task_index,
            task_count,
            node_id: self.identity.id.to_string(),
            node_mflops: self.mflops,
            ending: result.ending.clone(),
            limits_hit: dedup(&result.limits_hit),
            limits,
            started_at,
            finished_at,
            wall_ms: result.wall_ms,
            cpu_ms: result.cpu_ms,
            stdout_bytes: result.stdout.len() as u64,
            stderr_bytes: result.stderr.len() as u64,
            output_bytes,
            missing_outputs,
        };
        let outcome = doc.summary();
        let key = self.identity.key.clone();
        let payload = result.stdout.len() as u64 + result.stderr.len() as u64 + output_bytes;
        let build = move || {
            let bytes = answer::build_answer(
                &doc,
                &result.stdout,
                &result.stderr,
                &result.out_files,
                &key,
                finished_at,
            );
            (bytes, result)
        };
        // Deflating and signing can take a while for large outputs: off the async threads. A
        // small answer is built here (tens of µs), which costs less than the hop.
        let (bytes, result) = if payload <= INLINE_ANSWER_BYTES {
            build()
        } else {
            tokio::task::spawn_blocking(build)
                .await
                .map_err(|e| ExecuteError::Join(e.to_string()))?
        };
        Ok(Answer {
            bytes: bytes?,
            outcome,
            result,
        })
    }
}

/// Why an admitted job produced no answer archive (the job itself always ends in one).
#[derive(Debug, thiserror::Error)]
pub enum ExecuteError {
    #[error("building the answer archive")]
    Answer(#[from] answer::AnswerError),
    #[error("the answer builder task failed: {0}")]
    Join(String),
}

fn dedup(limits: &[LimitKind]) -> Vec<LimitKind> {
    let mut out = Vec::with_capacity(limits.len());
    for l in limits {
        if !out.contains(l) {
            out.push(*l);
        }
    }
    out
}
