//! The gatekeeper: decides, for each job, whether its author may run here — trusted → run;
//! blocked → refuse; unknown → ask the owner once through a [`Prompter`] (jobs of the same
//! author waiting at the same time share the one answer), or refuse when no one can be asked.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rjs_signer::keys::validate_key_name;
use rjs_signer::{Fingerprint, Limits, PublicKey};
use rjs_wire::node::RefusalCode;
use tokio::sync::watch;

use super::store::{AuthorRef, TrustError, TrustStatus, TrustStore};
use crate::config::{NodeConfig, UnknownAuthorPolicy};

/// What the gatekeeper needs to know about a job (from its verified bundle).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobRequest {
    /// The key the bundle is signed with (its fingerprint is derived from it).
    pub key: PublicKey,
    /// The signer's self-declared name (from the signature entry; not proof of anything).
    pub signer_name: String,
    /// The bundle's manifest name.
    pub bundle_name: String,
    /// The limits the manifest asks for.
    pub limits: Limits,
}

/// The gatekeeper's verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Run,
    /// `code` is [`RefusalCode::Blocked`] or [`RefusalCode::Untrusted`].
    Refuse {
        code: RefusalCode,
        reason: String,
    },
}

impl Decision {
    fn refuse(code: RefusalCode, reason: impl Into<String>) -> Decision {
        Decision::Refuse {
            code,
            reason: reason.into(),
        }
    }
}

/// The owner's answer to the trust prompt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// Run this job; ask again next time.
    Once,
    /// Trust the author from now on (persisted), and run.
    Always,
    /// Block the author from now on (persisted), and refuse.
    Never,
    /// Refuse this job; ask again next time.
    Refuse,
}

/// What the prompt shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Question {
    pub signer_name: String,
    pub fingerprint: Fingerprint,
    pub bundle_name: String,
    pub limits: Limits,
}

/// How a prompt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PromptOutcome {
    Answered(Answer),
    /// No answer before the deadline.
    TimedOut,
    /// The prompt could not be shown or read (terminal gone, node in the background…).
    Failed(String),
}

/// Something that can ask the owner. `ask` blocks and must return by `deadline`; the
/// gatekeeper calls it on a blocking thread, one question at a time.
pub trait Prompter: Send + Sync + 'static {
    fn ask(&self, question: &Question, deadline: Instant) -> PromptOutcome;
}

const NO_TERMINAL: &str = "no one can be asked (no terminal attached)";
/// A question is not shown with less time than this left (or half the timeout, if less):
/// the decision is then a timeout without flashing a prompt nobody can answer.
const MIN_PROMPT_TIME: Duration = Duration::from_secs(3);

/// Decides, for each job, whether its author may run here. Cheap to clone (shared state).
#[derive(Clone)]
pub struct Gatekeeper {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<TrustStore>,
    prompter: Option<Arc<dyn Prompter>>,
    /// Why no one is asked when `prompter` is `None`.
    no_prompter: String,
    timeout: Duration,
    /// Questions in flight, by author: later jobs of the same author wait for the answer.
    pending: Mutex<HashMap<PublicKey, watch::Receiver<Option<Decision>>>>,
    /// One prompt on the terminal at a time.
    terminal: tokio::sync::Mutex<()>,
    prompts: AtomicU64,
}

impl std::fmt::Debug for Gatekeeper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gatekeeper")
            .field("store", &self.inner.store.path())
            .field("can_ask", &self.can_ask())
            .field("timeout", &self.inner.timeout)
            .finish()
    }
}

impl Gatekeeper {
    /// A gatekeeper over `store`. With `prompter` `None`, unknown authors are refused.
    /// `timeout` bounds each decision that needs the owner (waiting for the terminal included).
    pub fn new(
        store: Arc<TrustStore>,
        prompter: Option<Arc<dyn Prompter>>,
        timeout: Duration,
    ) -> Gatekeeper {
        Self::build(store, prompter, timeout, NO_TERMINAL)
    }

    fn build(
        store: Arc<TrustStore>,
        prompter: Option<Arc<dyn Prompter>>,
        timeout: Duration,
        no_prompter: &str,
    ) -> Gatekeeper {
        Gatekeeper {
            inner: Arc::new(Inner {
                store,
                prompter,
                no_prompter: no_prompter.to_string(),
                timeout,
                pending: Mutex::new(HashMap::new()),
                terminal: tokio::sync::Mutex::new(()),
                prompts: AtomicU64::new(0),
            }),
        }
    }

    /// The node's gatekeeper: the store at `<data>/trust.json`, the configured timeout, and
    /// the terminal prompt when `unknown_authors = "ask"` and a terminal is attached
    /// ([`crate::prompt::TerminalPrompter::detect`]).
    pub fn for_node(config: &NodeConfig) -> Result<Gatekeeper, TrustError> {
        let store = Arc::new(TrustStore::open(&config.data_dir)?);
        let (prompter, why): (Option<Arc<dyn Prompter>>, &str) = match config.unknown_authors {
            UnknownAuthorPolicy::Refuse => (
                None,
                "unknown authors are refused (unknown_authors = \"refuse\")",
            ),
            UnknownAuthorPolicy::Ask => match crate::prompt::TerminalPrompter::detect() {
                Some(p) => (Some(Arc::new(p)), NO_TERMINAL),
                None => (None, NO_TERMINAL),
            },
        };
        Ok(Self::build(store, prompter, config.prompt_timeout, why))
    }

    pub fn store(&self) -> &Arc<TrustStore> {
        &self.inner.store
    }

    /// Whether unknown authors can be asked about (else they are refused).
    pub fn can_ask(&self) -> bool {
        self.inner.prompter.is_some()
    }

    /// How many prompts have been shown so far.
    pub fn prompts_shown(&self) -> u64 {
        self.inner.prompts.load(Ordering::Relaxed)
    }

    /// Decides for one job. Returns at once for trusted and blocked authors and when no one
    /// can be asked; otherwise within the prompt timeout. Must be called inside a tokio
    /// runtime. Cancelling the returned future does not cancel a prompt on screen (its
    /// answer still counts, for other jobs and when persisted).
    pub async fn decide(&self, req: &JobRequest) -> Decision {
        let fp = req.key.fingerprint();
        match self.inner.store.status(&req.key) {
            Ok(TrustStatus::Trusted) => return Decision::Run,
            Ok(TrustStatus::Blocked) => return blocked(fp),
            Ok(TrustStatus::Unknown) => {}
            Err(e) => return store_failed(&e),
        }
        let Some(prompter) = self.inner.prompter.clone() else {
            return Decision::refuse(
                RefusalCode::Untrusted,
                format!(
                    "author {} ({fp}) is not trusted on this node and {}",
                    crate::prompt::sanitize(&req.signer_name, 64),
                    self.inner.no_prompter
                ),
            );
        };
        let mut rx = {
            let mut pending = self.inner.pending.lock().unwrap_or_else(|e| e.into_inner());
            match pending.get(&req.key) {
                Some(rx) => rx.clone(),
                None => {
                    let (tx, rx) = watch::channel(None);
                    pending.insert(req.key, rx.clone());
                    let inner = self.inner.clone();
                    let req = req.clone();
                    tokio::spawn(async move {
                        let key = req.key;
                        let decision = inner.clone().ask(req, prompter).await;
                        let mut pending = inner.pending.lock().unwrap_or_else(|e| e.into_inner());
                        pending.remove(&key);
                        tx.send_replace(Some(decision));
                    });
                    rx
                }
            }
        };
        match rx.wait_for(Option::is_some).await {
            Ok(d) => d.clone().unwrap_or_else(|| prompt_failed("no decision")),
            Err(_) => prompt_failed("the prompt task ended without an answer"),
        }
    }
}

fn blocked(fp: Fingerprint) -> Decision {
    Decision::refuse(
        RefusalCode::Blocked,
        format!("author {fp} is blocked on this node"),
    )
}

fn store_failed(e: &TrustError) -> Decision {
    Decision::refuse(
        RefusalCode::Untrusted,
        format!(
            "the node's trust store cannot be read: {}",
            rjs_cmd::chain(e)
        ),
    )
}

fn prompt_failed(why: &str) -> Decision {
    Decision::refuse(
        RefusalCode::Untrusted,
        format!("could not ask the node's owner: {why}"),
    )
}

impl Inner {
    fn timed_out(&self) -> Decision {
        Decision::refuse(
            RefusalCode::Untrusted,
            format!("no answer within {} s", self.timeout.as_secs_f64().round()),
        )
    }

    /// One question: wait for the terminal, re-check the store, ask, persist.
    async fn ask(self: Arc<Self>, req: JobRequest, prompter: Arc<dyn Prompter>) -> Decision {
        let deadline = tokio::time::Instant::now() + self.timeout;
        let Ok(guard) = tokio::time::timeout_at(deadline, self.terminal.lock()).await else {
            return self.timed_out();
        };
        let inner = self.clone();
        let std_deadline = deadline.into_std();
        let result =
            tokio::task::spawn_blocking(move || inner.ask_blocking(&req, &*prompter, std_deadline))
                .await;
        drop(guard);
        result.unwrap_or_else(|_| prompt_failed("the prompt panicked"))
    }

    fn ask_blocking(
        &self,
        req: &JobRequest,
        prompter: &dyn Prompter,
        deadline: Instant,
    ) -> Decision {
        let fp = req.key.fingerprint();
        // The owner may have decided meanwhile (an earlier prompt, `rjs-compute trust add`).
        match self.store.status(&req.key) {
            Ok(TrustStatus::Trusted) => return Decision::Run,
            Ok(TrustStatus::Blocked) => return blocked(fp),
            Ok(TrustStatus::Unknown) => {}
            Err(e) => return store_failed(&e),
        }
        let enough = MIN_PROMPT_TIME.min(self.timeout / 2);
        if deadline.saturating_duration_since(Instant::now()) < enough {
            return self.timed_out();
        }
        let question = Question {
            signer_name: req.signer_name.clone(),
            fingerprint: fp,
            bundle_name: req.bundle_name.clone(),
            limits: req.limits,
        };
        self.prompts.fetch_add(1, Ordering::Relaxed);
        // The name stored with "always"/"never": the self-declared one if it is a valid key
        // name (verified bundles guarantee it), else none.
        let name = validate_key_name(&req.signer_name)
            .is_ok()
            .then_some(req.signer_name.as_str());
        match prompter.ask(&question, deadline) {
            PromptOutcome::Answered(Answer::Once) => Decision::Run,
            PromptOutcome::Answered(Answer::Always) => {
                if let Err(e) = self.store.add(&req.key, name.unwrap_or("unnamed")) {
                    tracing::error!(
                        "could not record {fp} as trusted (running this job anyway, as answered): {}",
                        rjs_cmd::chain(&e)
                    );
                }
                Decision::Run
            }
            PromptOutcome::Answered(Answer::Never) => {
                if let Err(e) = self.store.block(&AuthorRef::Key(req.key), name) {
                    tracing::error!("could not record {fp} as blocked: {}", rjs_cmd::chain(&e));
                }
                Decision::refuse(
                    RefusalCode::Blocked,
                    format!("the node's owner blocked author {fp}"),
                )
            }
            PromptOutcome::Answered(Answer::Refuse) => {
                Decision::refuse(RefusalCode::Untrusted, "the node's owner refused this job")
            }
            PromptOutcome::TimedOut => self.timed_out(),
            PromptOutcome::Failed(why) => prompt_failed(&why),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trust::store::tests::key;
    use crate::trust::{TRUST_FILE, TrustStatus};
    use std::path::Path;
    use std::sync::atomic::AtomicUsize;

    fn limits() -> Limits {
        Limits {
            time_ms: 60_000,
            memory_bytes: 256 << 20,
            output_bytes: 64 << 20,
            stdout_bytes: 1 << 20,
        }
    }

    fn req(seed: u8) -> JobRequest {
        JobRequest {
            key: key(seed),
            signer_name: format!("author{seed}"),
            bundle_name: "mandelbrot".into(),
            limits: limits(),
        }
    }
    /// A prompter that counts questions, waits a little (so concurrent jobs pile up), and
    /// gives a fixed answer (or none: sleeps to the deadline).
    struct Fake {
        answer: Option<Answer>,
        asked: AtomicUsize,
        delay: Duration,
    }

    impl Fake {
        fn new(answer: Option<Answer>) -> Arc<Fake> {
            Arc::new(Fake {
                answer,
                asked: AtomicUsize::new(0),
                delay: Duration::from_millis(200),
            })
        }
    }

    impl Prompter for Fake {
        fn ask(&self, _q: &Question, deadline: Instant) -> PromptOutcome {
            self.asked.fetch_add(1, Ordering::SeqCst);
            match self.answer {
                Some(a) => {
                    std::thread::sleep(self.delay);
                    PromptOutcome::Answered(a)
                }
                None => {
                    std::thread::sleep(deadline.saturating_duration_since(Instant::now()));
                    PromptOutcome::TimedOut
                }
            }
        }
    }

    fn gatekeeper(dir: &Path, fake: &Arc<Fake>, timeout: Duration) -> Gatekeeper {
        let store = Arc::new(TrustStore::open(dir).unwrap());
        Gatekeeper::new(store, Some(fake.clone() as Arc<dyn Prompter>), timeout)
    }

    async fn decide_many(g: &Gatekeeper, r: &JobRequest, n: usize) -> Vec<Decision> {
        let handles: Vec<_> = (0..n)
            .map(|_| {
                let g = g.clone();
                let r = r.clone();
                tokio::spawn(async move { g.decide(&r).await })
            })
            .collect();
        let mut out = Vec::new();
        for h in handles {
            out.push(h.await.unwrap());
        }
        out
    }
    /// A temporary data directory and a gatekeeper over it whose prompter gives `answer`.
    fn asking(
        answer: Option<Answer>,
        timeout: Duration,
    ) -> (tempfile::TempDir, Arc<Fake>, Gatekeeper) {
        let dir = tempfile::tempdir().unwrap();
        let fake = Fake::new(answer);
        let g = gatekeeper(dir.path(), &fake, timeout);
        (dir, fake, g)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_jobs_of_one_author_share_one_answer() {
        let (dir, fake, g) = asking(Some(Answer::Always), Duration::from_secs(10));
        let decisions = decide_many(&g, &req(1), 8).await;
        assert!(
            decisions.iter().all(|d| *d == Decision::Run),
            "{decisions:?}"
        );
        assert_eq!(fake.asked.load(Ordering::SeqCst), 1);
        // Persisted: later jobs (and a new gatekeeper = restart) do not ask.
        assert_eq!(g.decide(&req(1)).await, Decision::Run);
        let g2 = gatekeeper(dir.path(), &fake, Duration::from_secs(10));
        assert_eq!(g2.decide(&req(1)).await, Decision::Run);
        assert_eq!(fake.asked.load(Ordering::SeqCst), 1);
        assert_eq!(g.prompts_shown(), 1);
        let entry = g.store().get(&key(1).fingerprint()).unwrap().unwrap();
        assert_eq!(entry.name, "author1");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn never_blocks_and_persists() {
        let (dir, fake, g) = asking(Some(Answer::Never), Duration::from_secs(10));
        let decisions = decide_many(&g, &req(2), 4).await;
        for d in &decisions {
            assert!(
                matches!(
                    d,
                    Decision::Refuse {
                        code: RefusalCode::Blocked,
                        ..
                    }
                ),
                "{d:?}"
            );
        }
        assert_eq!(fake.asked.load(Ordering::SeqCst), 1);
        let g2 = gatekeeper(dir.path(), &fake, Duration::from_secs(10));
        let d = g2.decide(&req(2)).await;
        assert!(
            matches!(&d, Decision::Refuse { code: RefusalCode::Blocked, reason } if reason.contains("is blocked")),
            "{d:?}"
        );
        assert_eq!(fake.asked.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn once_and_refuse_are_not_persisted() {
        let dir = tempfile::tempdir().unwrap();
        let once = Fake::new(Some(Answer::Once));
        let g = gatekeeper(dir.path(), &once, Duration::from_secs(10));
        assert_eq!(g.decide(&req(3)).await, Decision::Run);
        assert_eq!(g.decide(&req(3)).await, Decision::Run);
        assert_eq!(once.asked.load(Ordering::SeqCst), 2, "asked again");
        let refuse = Fake::new(Some(Answer::Refuse));
        let g = gatekeeper(dir.path(), &refuse, Duration::from_secs(10));
        let d = g.decide(&req(3)).await;
        assert_eq!(
            d,
            Decision::Refuse {
                code: RefusalCode::Untrusted,
                reason: "the node's owner refused this job".into()
            }
        );
        assert_eq!(g.store().status(&key(3)).unwrap(), TrustStatus::Unknown);
        assert!(!dir.path().join(TRUST_FILE).exists());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn no_answer_times_out_for_every_waiter() {
        let (_dir, fake, g) = asking(None, Duration::from_secs(1));
        let start = Instant::now();
        let decisions = decide_many(&g, &req(4), 3).await;
        let took = start.elapsed();
        assert!(
            took >= Duration::from_millis(900) && took < Duration::from_secs(5),
            "{took:?}"
        );
        for d in decisions {
            assert_eq!(
                d,
                Decision::Refuse {
                    code: RefusalCode::Untrusted,
                    reason: "no answer within 1 s".into()
                }
            );
        }
        assert_eq!(fake.asked.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn different_authors_are_asked_one_after_the_other() {
        let dir = tempfile::tempdir().unwrap();
        struct Serial {
            inside: AtomicUsize,
            overlap: AtomicUsize,
        }
        impl Prompter for Serial {
            fn ask(&self, _q: &Question, _d: Instant) -> PromptOutcome {
                if self.inside.fetch_add(1, Ordering::SeqCst) > 0 {
                    self.overlap.fetch_add(1, Ordering::SeqCst);
                }
                std::thread::sleep(Duration::from_millis(100));
                self.inside.fetch_sub(1, Ordering::SeqCst);
                PromptOutcome::Answered(Answer::Once)
            }
        }
        let p = Arc::new(Serial {
            inside: AtomicUsize::new(0),
            overlap: AtomicUsize::new(0),
        });
        let store = Arc::new(TrustStore::open(dir.path()).unwrap());
        let g = Gatekeeper::new(
            store,
            Some(p.clone() as Arc<dyn Prompter>),
            Duration::from_secs(10),
        );
        let (r5, r6, r7) = (req(5), req(6), req(7));
        let (a, b, c) = tokio::join!(g.decide(&r5), g.decide(&r6), g.decide(&r7));
        assert_eq!((a, b, c), (Decision::Run, Decision::Run, Decision::Run));
        assert_eq!(p.overlap.load(Ordering::SeqCst), 0);
        assert_eq!(g.prompts_shown(), 3);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn no_prompt_flashed_with_too_little_time_left() {
        // Author 5's question takes most of the timeout; author 6, waiting for the terminal
        // meanwhile, would have under half the timeout left: refused as timed out, unasked.
        let dir = tempfile::tempdir().unwrap();
        let fake = Arc::new(Fake {
            answer: Some(Answer::Once),
            asked: AtomicUsize::new(0),
            delay: Duration::from_millis(1500),
        });
        let g = gatekeeper(dir.path(), &fake, Duration::from_secs(2));
        let first = {
            let g = g.clone();
            tokio::spawn(async move { g.decide(&req(5)).await })
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        let second = g.decide(&req(6)).await;
        assert_eq!(first.await.unwrap(), Decision::Run);
        assert_eq!(
            second,
            Decision::Refuse {
                code: RefusalCode::Untrusted,
                reason: "no answer within 2 s".into()
            }
        );
        assert_eq!(fake.asked.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn trusted_blocked_and_unaskable() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(TrustStore::open(dir.path()).unwrap());
        store.add(&key(1), "alice").unwrap();
        store.block(&AuthorRef::Key(key(2)), None).unwrap();
        let g = Gatekeeper::new(store.clone(), None, Duration::from_secs(10));
        assert!(!g.can_ask());
        assert_eq!(g.decide(&req(1)).await, Decision::Run);
        assert!(matches!(
            g.decide(&req(2)).await,
            Decision::Refuse {
                code: RefusalCode::Blocked,
                ..
            }
        ));
        let d = g.decide(&req(3)).await;
        assert!(
            matches!(&d, Decision::Refuse { code: RefusalCode::Untrusted, reason } if reason.contains("not trusted") && reason.contains("no terminal")),
            "{d:?}"
        );
        // A blocked author is never asked about, even with a prompter.
        let fake = Fake::new(Some(Answer::Always));
        let g = Gatekeeper::new(
            store,
            Some(fake.clone() as Arc<dyn Prompter>),
            Duration::from_secs(10),
        );
        assert!(matches!(
            g.decide(&req(2)).await,
            Decision::Refuse {
                code: RefusalCode::Blocked,
                ..
            }
        ));
        assert_eq!(fake.asked.load(Ordering::SeqCst), 0);
    }
}
