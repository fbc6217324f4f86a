//! The server's side of the engine thread ([`qinfer_engine::scheduler`]): a request's
//! [`Sink`] is a tokio channel to its HTTP task, and its admission is a one-shot message.
//! Dropping the receiver (a disconnected client, a dropped handler future) cancels the
//! request.

use std::time::Duration;

use qinfer_engine::engine::{Gone, Request, Sink};
use tokio::sync::mpsc::UnboundedSender;
use tokio::sync::oneshot;

pub use qinfer_engine::engine::{Admission, Out, SchedulerConfig, Summary};
pub use qinfer_engine::scheduler::SubmitError;

/// The handle HTTP tasks hold.
pub type Scheduler = qinfer_engine::scheduler::Scheduler<ChannelSink>;

/// One generation request as the HTTP side submits it.
pub type GenRequest = Request<ChannelSink>;

/// Where the engine reports a request: its HTTP task's channels.
#[derive(Debug)]
pub struct ChannelSink {
    pub out: UnboundedSender<Out>,
    /// Told how the prompt cache served the prompt, as soon as the request is admitted.
    pub admitted: Option<oneshot::Sender<Admission>>,
}

impl Sink for ChannelSink {
    fn send(&mut self, out: Out) -> Result<(), Gone> {
        self.out.send(out).map_err(|_| Gone)
    }

    fn is_closed(&self) -> bool {
        self.out.is_closed()
    }

    fn admitted(&mut self, admission: &Admission) {
        if let Some(tx) = self.admitted.take() {
            let _ = tx.send(admission.clone());
        }
    }
}

/// How long a client should wait before retrying a refused request.
pub const RETRY_AFTER: Duration = Duration::from_secs(1);
