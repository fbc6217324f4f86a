//! The engine thread: an [`Engine`] on a dedicated thread, fed by a command channel.
//!
//! Architecture invariant: the model runs on one engine thread; callers on other threads (the
//! server's HTTP tasks) never call it. They submit a [`Request`] whose [`Sink`] carries the
//! [`Out`](crate::engine::Out) messages back; a sink that closes (client gone) frees the
//! sequence at the next step. The queue limit is enforced here, at submission, so a caller
//! learns at once that it must retry.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::thread::JoinHandle;

use crate::counters::Counters;
use crate::engine::{CacheHook, Engine, Request, SchedulerConfig, Sink};
use crate::generate::ModelBundle;
use crate::prompt_cache::PromptCache;

/// Why a request was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubmitError {
    /// The queue is full; retry later.
    QueueFull,
    /// The engine is shutting down.
    ShuttingDown,
}

enum Command<S> {
    Submit(Box<Request<S>>),
    /// Refuse new work; finish what runs.
    Drain,
    /// Cancel everything and stop the thread.
    Stop,
}

/// The handle other threads hold.
pub struct Scheduler<S> {
    tx: mpsc::Sender<Command<S>>,
    counters: Arc<Counters>,
    config: SchedulerConfig,
}

impl<S> Clone for Scheduler<S> {
    fn clone(&self) -> Self {
        Scheduler {
            tx: self.tx.clone(),
            counters: self.counters.clone(),
            config: self.config.clone(),
        }
    }
}

impl<S> std::fmt::Debug for Scheduler<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scheduler")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

const SHUTTING_DOWN: &str = "the server is shutting down";

impl<S: Sink + Send + 'static> Scheduler<S> {
    /// Starts the engine thread for `bundle`; it counts into `counters`.
    pub fn start(
        bundle: Arc<ModelBundle>,
        config: SchedulerConfig,
        counters: Arc<Counters>,
        prompt_cache: Option<Arc<PromptCache>>,
    ) -> (Scheduler<S>, JoinHandle<()>) {
        let (tx, rx) = mpsc::channel();
        let engine_config = config.clone();
        let engine_counters = counters.clone();
        let handle = std::thread::Builder::new()
            .name("qinfer-engine".into())
            .spawn(move || {
                let engine = Engine::new(
                    bundle.engine_model(),
                    engine_config,
                    CacheHook::new(prompt_cache),
                    engine_counters,
                );
                run(engine, &rx);
            })
            .expect("spawning the engine thread");
        (
            Scheduler {
                tx,
                counters,
                config,
            },
            handle,
        )
    }

    /// Queues a request, or refuses it when the queue is full.
    pub fn submit(&self, req: Request<S>) -> Result<(), SubmitError> {
        let waiting = &self.counters.queue_depth;
        let n = waiting.fetch_add(1, Ordering::SeqCst);
        if n >= self.config.max_queue as u64 {
            waiting.fetch_sub(1, Ordering::SeqCst);
            return Err(SubmitError::QueueFull);
        }
        self.tx.send(Command::Submit(Box::new(req))).map_err(|_| {
            waiting.fetch_sub(1, Ordering::SeqCst);
            SubmitError::ShuttingDown
        })
    }

    /// Stops accepting work; running requests finish.
    pub fn drain(&self) {
        let _ = self.tx.send(Command::Drain);
    }

    /// Cancels everything and ends the engine thread.
    pub fn stop(&self) {
        let _ = self.tx.send(Command::Stop);
    }

    pub fn config(&self) -> &SchedulerConfig {
        &self.config
    }
}

/// The engine thread's loop: commands between steps, blocking only when idle.
fn run<S: Sink>(mut engine: Engine<'_, S>, rx: &mpsc::Receiver<Command<S>>) {
    let mut draining = false;
    // Handles a command; false to stop the thread.
    let mut command = |engine: &mut Engine<'_, S>, cmd: Command<S>| match cmd {
        Command::Submit(req) => {
            if draining {
                engine.refuse(*req, SHUTTING_DOWN);
            } else {
                engine.enqueue(*req);
            }
            true
        }
        Command::Drain => {
            draining = true;
            engine.refuse_queued(SHUTTING_DOWN);
            true
        }
        Command::Stop => {
            engine.refuse_queued(SHUTTING_DOWN);
            engine.cancel_running();
            false
        }
    };
    loop {
        if engine.is_idle() {
            match rx.recv() {
                Ok(cmd) => {
                    if !command(&mut engine, cmd) {
                        return;
                    }
                }
                Err(_) => return,
            }
        }
        loop {
            match rx.try_recv() {
                Ok(cmd) => {
                    if !command(&mut engine, cmd) {
                        return;
                    }
                }
                Err(mpsc::TryRecvError::Empty) => break,
                Err(mpsc::TryRecvError::Disconnected) => {
                    if engine.is_idle() {
                        return;
                    }
                    break;
                }
            }
        }
        engine.step();
    }
}
