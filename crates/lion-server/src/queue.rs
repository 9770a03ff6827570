//! The bounded request queue and the model worker: one OS thread owns the [`Backend`] and runs
//! batches built dynamically from the queue.
//!
//! The batcher takes the oldest request, then keeps taking requests of the same kind (and the same
//! generation options) until the batch holds `max_batch` items or `max_wait` has passed since the
//! first; a request that does not fit starts the next batch, so order is kept. Requests whose
//! caller has gone (timed out) are dropped before the model runs. When every sender is gone
//! (server shut down), the worker finishes what is queued and exits.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use tokio::sync::oneshot;

use crate::backend::{
    Backend, BackendError, BackendResult, CaptionRequest, CaptionResponse, GenerationOptions,
    GroundRequest, GroundResponse, TagsRequest, TagsResponse, TaskKind, VqaRequest, VqaResponse,
};
use crate::budget::Reservation;
use crate::config::BatchConfig;
use crate::metrics::Metrics;

type Reply<T> = oneshot::Sender<BackendResult<T>>;

/// One queued request with the channel its answer goes back on.
pub enum Job {
    Embed {
        texts: Vec<String>,
        reply: Reply<Vec<Vec<f32>>>,
    },
    Caption {
        req: CaptionRequest,
        reply: Reply<CaptionResponse>,
    },
    Vqa {
        req: VqaRequest,
        reply: Reply<VqaResponse>,
    },
    Ground {
        req: GroundRequest,
        reply: Reply<GroundResponse>,
    },
    Tags {
        req: TagsRequest,
        reply: Reply<TagsResponse>,
    },
}

/// Jobs batch together only when their keys are equal.
#[derive(Debug, Clone, Copy, PartialEq)]
enum BatchKey {
    Embed,
    Caption(GenerationOptions),
    Vqa(GenerationOptions),
    Ground(GenerationOptions),
    Tags(Option<f32>, Option<usize>),
}

impl Job {
    pub fn kind(&self) -> TaskKind {
        match self {
            Job::Embed { .. } => TaskKind::Embed,
            Job::Caption { .. } => TaskKind::Caption,
            Job::Vqa { .. } => TaskKind::Vqa,
            Job::Ground { .. } => TaskKind::Ground,
            Job::Tags { .. } => TaskKind::Tags,
        }
    }

    fn key(&self) -> BatchKey {
        match self {
            Job::Embed { .. } => BatchKey::Embed,
            Job::Caption { req, .. } => BatchKey::Caption(req.options),
            Job::Vqa { req, .. } => BatchKey::Vqa(req.options),
            Job::Ground { req, .. } => BatchKey::Ground(req.options),
            Job::Tags { req, .. } => BatchKey::Tags(req.threshold, req.max_tags),
        }
    }

    /// Items this job adds to a batch.
    fn size(&self) -> usize {
        match self {
            Job::Embed { texts, .. } => texts.len(),
            _ => 1,
        }
    }

    /// The caller stopped waiting (timed out or disconnected).
    fn abandoned(&self) -> bool {
        match self {
            Job::Embed { reply, .. } => reply.is_closed(),
            Job::Caption { reply, .. } => reply.is_closed(),
            Job::Vqa { reply, .. } => reply.is_closed(),
            Job::Ground { reply, .. } => reply.is_closed(),
            Job::Tags { reply, .. } => reply.is_closed(),
        }
    }
}

/// A job in the channel, with the decoded-image bytes it holds (released when the worker is
/// done with it or skips it).
struct Queued {
    job: Job,
    hold: Option<Reservation>,
}

/// Why a job could not be queued.
#[derive(Debug, PartialEq, Eq)]
pub enum EnqueueError {
    /// The queue holds `capacity` jobs already.
    Full { capacity: usize },
    /// The worker has stopped.
    Closed,
}

/// The sending side: cheap to share between request handlers.
pub struct Queue {
    tx: SyncSender<Queued>,
    capacity: usize,
    metrics: Arc<Metrics>,
    alive: Arc<AtomicBool>,
}

impl Queue {
    /// Never blocks: a full queue is an immediate error (the caller answers 429).
    pub fn try_push(&self, job: Job) -> Result<(), EnqueueError> {
        self.try_push_holding(job, None)
    }

    /// [`Queue::try_push`] for a job that holds part of the decoded-image budget: `hold` is
    /// released when the worker has run or skipped the job.
    pub fn try_push_holding(
        &self,
        job: Job,
        hold: Option<Reservation>,
    ) -> Result<(), EnqueueError> {
        // Count first so the worker's decrement can never run before the increment.
        self.metrics.enqueued();
        match self.tx.try_send(Queued { job, hold }) {
            Ok(()) => Ok(()),
            Err(e) => {
                self.metrics.dequeued();
                Err(match e {
                    TrySendError::Full(_) => EnqueueError::Full {
                        capacity: self.capacity,
                    },
                    TrySendError::Disconnected(_) => EnqueueError::Closed,
                })
            }
        }
    }

    /// Whether the worker thread is still running.
    pub fn worker_alive(&self) -> bool {
        self.alive.load(Ordering::SeqCst)
    }
}

/// Clears the `alive` flag when the worker ends, by return or by panic.
struct AliveGuard(Arc<AtomicBool>);
impl Drop for AliveGuard {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

/// Starts the worker thread that owns `backend`. The thread ends once the returned [`Queue`] (and
/// every other sender) is dropped and the queue is drained.
pub fn spawn_worker(
    backend: Box<dyn Backend>,
    cfg: BatchConfig,
    metrics: Arc<Metrics>,
) -> std::io::Result<(Queue, JoinHandle<()>)> {
    let (tx, rx) = mpsc::sync_channel::<Queued>(cfg.queue_capacity.max(1));
    let alive = Arc::new(AtomicBool::new(true));
    let guard = AliveGuard(alive.clone());
    let worker_metrics = metrics.clone();
    let capacity = cfg.queue_capacity.max(1);
    let handle = std::thread::Builder::new()
        .name("lion-model".into())
        .spawn(move || {
            let _guard = guard;
            Worker {
                backend,
                cfg,
                metrics: worker_metrics,
            }
            .run(rx)
        })?;
    Ok((
        Queue {
            tx,
            capacity,
            metrics,
            alive,
        },
        handle,
    ))
}

struct Worker {
    backend: Box<dyn Backend>,
    cfg: BatchConfig,
    metrics: Arc<Metrics>,
}

impl Worker {
    fn run(mut self, rx: mpsc::Receiver<Queued>) {
        let max_batch = self.cfg.max_batch.max(1);
        let mut carry: Option<Queued> = None;
        loop {
            let Queued { job: first, hold } = match carry.take() {
                Some(j) => j,
                None => match rx.recv() {
                    Ok(j) => {
                        self.metrics.dequeued();
                        j
                    }
                    Err(_) => break,
                },
            };
            let key = first.key();
            let mut size = first.size();
            let mut batch = vec![first];
            // Released (dropped) when the batch is done.
            let mut holds: Vec<Reservation> = hold.into_iter().collect();
            let deadline = Instant::now() + self.cfg.max_wait;
            while size < max_batch {
                let now = Instant::now();
                // Past the deadline, still take what is already queued, without waiting.
                let next = if now >= deadline {
                    rx.try_recv().ok()
                } else {
                    // Timeout or disconnected: the batch is complete.
                    rx.recv_timeout(deadline - now).ok()
                };
                let Some(next) = next else { break };
                self.metrics.dequeued();
                if next.job.key() != key || size + next.job.size() > max_batch {
                    carry = Some(next);
                    break;
                }
                size += next.job.size();
                batch.push(next.job);
                holds.extend(next.hold);
            }
            batch.retain(|j| !j.abandoned());
            if !batch.is_empty() {
                self.run_batch(batch);
            }
            drop(holds);
        }
        tracing::debug!("model worker: queue closed, exiting");
    }

    fn run_batch(&mut self, batch: Vec<Job>) {
        let kind = batch[0].kind();
        let items: usize = batch.iter().map(Job::size).sum();
        let t0 = Instant::now();
        // Recorded before any reply goes out, so a client that got its answer sees its batch
        // in /metrics.
        let metrics = self.metrics.clone();
        let done = || metrics.batch_done(kind.name(), items, t0.elapsed());
        match kind {
            TaskKind::Embed => {
                let mut texts = Vec::with_capacity(items);
                let mut replies = Vec::with_capacity(batch.len());
                for job in batch {
                    if let Job::Embed { texts: t, reply } = job {
                        replies.push((t.len(), reply));
                        texts.extend(t);
                    }
                }
                let backend = &mut self.backend;
                let out = guarded(|| backend.embed(&texts)).and_then(|e| check_len(e, items));
                done();
                match out {
                    Ok(embs) => {
                        let mut it = embs.into_iter();
                        for (n, reply) in replies {
                            let _ = reply.send(Ok(it.by_ref().take(n).collect()));
                        }
                    }
                    Err(e) => {
                        for (_, reply) in replies {
                            let _ = reply.send(Err(e.clone()));
                        }
                    }
                }
            }
            TaskKind::Caption => {
                let (reqs, replies) = split(batch, |j| match j {
                    Job::Caption { req, reply } => Some((req, reply)),
                    _ => None,
                });
                let backend = &mut self.backend;
                let out = guarded(|| backend.caption(&reqs));
                done();
                answer(out, replies);
            }
            TaskKind::Vqa => {
                let (reqs, replies) = split(batch, |j| match j {
                    Job::Vqa { req, reply } => Some((req, reply)),
                    _ => None,
                });
                let backend = &mut self.backend;
                let out = guarded(|| backend.vqa(&reqs));
                done();
                answer(out, replies);
            }
            TaskKind::Ground => {
                let (reqs, replies) = split(batch, |j| match j {
                    Job::Ground { req, reply } => Some((req, reply)),
                    _ => None,
                });
                let backend = &mut self.backend;
                let out = guarded(|| backend.ground(&reqs));
                done();
                answer(out, replies);
            }
            TaskKind::Tags => {
                let (reqs, replies) = split(batch, |j| match j {
                    Job::Tags { req, reply } => Some((req, reply)),
                    _ => None,
                });
                let backend = &mut self.backend;
                let out = guarded(|| backend.tags(&reqs));
                done();
                answer(out, replies);
            }
        }
    }
}

/// Runs a backend call, turning a panic into an error for this batch only.
fn guarded<T>(f: impl FnOnce() -> BackendResult<T>) -> BackendResult<T> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(p) => {
            let msg = crate::listener::panic_message(p.as_ref());
            tracing::error!("model panicked: {msg}");
            Err(BackendError::Inference(format!(
                "the model panicked: {msg}"
            )))
        }
    }
}

fn check_len<T>(v: Vec<T>, want: usize) -> BackendResult<Vec<T>> {
    if v.len() == want {
        Ok(v)
    } else {
        Err(BackendError::Inference(format!(
            "the model returned {} results for {want} inputs",
            v.len()
        )))
    }
}

/// Splits jobs of one kind into requests and reply channels.
fn split<R, T>(
    batch: Vec<Job>,
    f: impl Fn(Job) -> Option<(R, Reply<T>)>,
) -> (Vec<R>, Vec<Reply<T>>) {
    batch.into_iter().filter_map(f).unzip()
}

fn answer<T>(out: BackendResult<Vec<T>>, replies: Vec<Reply<T>>) {
    match out.and_then(|v| check_len(v, replies.len())) {
        Ok(v) => {
            for (r, reply) in v.into_iter().zip(replies) {
                let _ = reply.send(Ok(r));
            }
        }
        Err(e) => {
            for reply in replies {
                let _ = reply.send(Err(e.clone()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Capabilities;
    use std::sync::Mutex;
    use std::time::Duration;

    /// Embeds a text as `[len]`, records batch sizes, optionally sleeps.
    struct Recorder {
        batches: Arc<Mutex<Vec<usize>>>,
        sleep: Duration,
        panic_on: Option<String>,
    }

    impl Backend for Recorder {
        fn capabilities(&self) -> Capabilities {
            Capabilities {
                embed: true,
                ..Default::default()
            }
        }
        fn embed(&mut self, texts: &[String]) -> BackendResult<Vec<Vec<f32>>> {
            if self
                .panic_on
                .as_deref()
                .is_some_and(|p| texts.iter().any(|t| t == p))
            {
                panic!("boom");
            }
            self.batches.lock().unwrap().push(texts.len());
            std::thread::sleep(self.sleep);
            Ok(texts.iter().map(|t| vec![t.len() as f32]).collect())
        }
    }

    type Started = (Queue, JoinHandle<()>, Arc<Mutex<Vec<usize>>>, Arc<Metrics>);

    fn start(max_batch: usize, max_wait_ms: u64, cap: usize, sleep_ms: u64) -> Started {
        let batches = Arc::new(Mutex::new(Vec::new()));
        let metrics = Arc::new(Metrics::new(cap));
        let (q, h) = spawn_worker(
            Box::new(Recorder {
                batches: batches.clone(),
                sleep: Duration::from_millis(sleep_ms),
                panic_on: Some("panic".into()),
            }),
            BatchConfig {
                max_batch,
                max_wait: Duration::from_millis(max_wait_ms),
                queue_capacity: cap,
            },
            metrics.clone(),
        )
        .unwrap();
        (q, h, batches, metrics)
    }

    fn embed_job(texts: &[&str]) -> (Job, oneshot::Receiver<BackendResult<Vec<Vec<f32>>>>) {
        let (tx, rx) = oneshot::channel();
        (
            Job::Embed {
                texts: texts.iter().map(|s| s.to_string()).collect(),
                reply: tx,
            },
            rx,
        )
    }

    #[test]
    fn queued_jobs_are_batched_up_to_max_batch_and_answered_in_order() {
        // A slow first batch lets the others pile up in the queue.
        let (q, h, batches, metrics) = start(4, 50, 16, 100);
        let mut rxs = Vec::new();
        for i in 0..9 {
            let text = "x".repeat(i + 1);
            let (job, rx) = embed_job(&[&text]);
            q.try_push(job).unwrap();
            rxs.push(rx);
        }
        for (i, rx) in rxs.into_iter().enumerate() {
            let r = rx.blocking_recv().unwrap().unwrap();
            assert_eq!(r, vec![vec![(i + 1) as f32]]);
        }
        drop(q);
        h.join().unwrap();
        let b = batches.lock().unwrap().clone();
        assert_eq!(b.iter().sum::<usize>(), 9);
        assert!(b.iter().all(|&n| n <= 4), "{b:?}");
        assert!(b.iter().any(|&n| n > 1), "no batching happened: {b:?}");
        assert_eq!(metrics.queue_depth(), 0);
    }

    #[test]
    fn multi_text_jobs_are_split_back_per_request() {
        let (q, h, batches, _) = start(8, 30, 8, 0);
        let (j1, r1) = embed_job(&["a", "bb"]);
        let (j2, r2) = embed_job(&["ccc"]);
        q.try_push(j1).unwrap();
        q.try_push(j2).unwrap();
        assert_eq!(
            r1.blocking_recv().unwrap().unwrap(),
            vec![vec![1.0], vec![2.0]]
        );
        assert_eq!(r2.blocking_recv().unwrap().unwrap(), vec![vec![3.0]]);
        drop(q);
        h.join().unwrap();
        assert_eq!(batches.lock().unwrap().iter().sum::<usize>(), 3);
    }

    #[test]
    fn full_queue_is_an_immediate_error() {
        let (q, h, _, _) = start(1, 0, 2, 200);
        let mut rxs = Vec::new();
        let mut full = 0;
        for _ in 0..8 {
            let (job, rx) = embed_job(&["x"]);
            match q.try_push(job) {
                Ok(()) => rxs.push(rx),
                Err(EnqueueError::Full { capacity }) => {
                    assert_eq!(capacity, 2);
                    full += 1
                }
                Err(e) => panic!("{e:?}"),
            }
        }
        // At most one is being run and two wait; the rest were refused.
        assert!(full >= 5, "only {full} refused");
        for rx in rxs {
            assert!(rx.blocking_recv().unwrap().is_ok());
        }
        drop(q);
        h.join().unwrap();
    }

    #[test]
    fn a_panicking_batch_fails_alone_and_the_worker_goes_on() {
        let (q, h, _, _) = start(1, 0, 4, 0);
        let (j1, r1) = embed_job(&["panic"]);
        q.try_push(j1).unwrap();
        let e = r1.blocking_recv().unwrap().unwrap_err();
        assert!(e.to_string().contains("panicked"), "{e}");
        let (j2, r2) = embed_job(&["ok"]);
        q.try_push(j2).unwrap();
        assert_eq!(r2.blocking_recv().unwrap().unwrap(), vec![vec![2.0]]);
        assert!(q.worker_alive());
        drop(q);
        h.join().unwrap();
    }

    #[test]
    fn abandoned_jobs_are_skipped_and_worker_exits_when_queue_drops() {
        let (q, h, batches, _) = start(1, 0, 8, 100);
        let (j1, r1) = embed_job(&["first"]);
        q.try_push(j1).unwrap();
        let (j2, r2) = embed_job(&["gone"]);
        q.try_push(j2).unwrap();
        drop(r2); // caller timed out while the first batch runs
        let (j3, r3) = embed_job(&["third"]);
        q.try_push(j3).unwrap();
        drop(q); // shutdown: queued work still finishes
        assert!(r1.blocking_recv().unwrap().is_ok());
        assert!(r3.blocking_recv().unwrap().is_ok());
        h.join().unwrap();
        assert_eq!(*batches.lock().unwrap(), vec![1, 1]);
    }

    #[test]
    fn kinds_are_not_mixed_and_unsupported_kinds_answer_not_loaded() {
        let (q, h, _, _) = start(8, 20, 8, 0);
        let (tx, rx) = oneshot::channel();
        q.try_push(Job::Vqa {
            req: VqaRequest {
                image: image::RgbImage::new(1, 1),
                question: "q".into(),
                tags: None,
                options: GenerationOptions::lion_defaults(5),
                stream: None,
            },
            reply: tx,
        })
        .unwrap();
        let (j, r) = embed_job(&["abc"]);
        q.try_push(j).unwrap();
        assert_eq!(
            rx.blocking_recv().unwrap().unwrap_err(),
            BackendError::NotLoaded {
                kind: TaskKind::Vqa
            }
        );
        assert_eq!(r.blocking_recv().unwrap().unwrap(), vec![vec![3.0]]);
        drop(q);
        h.join().unwrap();
    }
}
