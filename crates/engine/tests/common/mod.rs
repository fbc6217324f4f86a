//! Helpers shared by the engine's speculative-decoding tests.

#![allow(dead_code)]

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;

use qinfer_engine::counters::Counters;
use qinfer_engine::engine::{
    CacheHook, Ended, Engine, EngineModel, Gone, Out, Request, SchedulerConfig, Sink,
};
use qinfer_engine::generate::GenerateOptions;

/// A sink that keeps what a request ended with (and fails the test on a failed request).
#[derive(Clone, Default)]
pub struct Collect(pub Rc<RefCell<Option<Ended>>>);

impl Collect {
    /// The output ids of the ended request.
    pub fn ids(&self) -> Vec<u32> {
        self.0.borrow().as_ref().expect("ended").ids.clone()
    }
}

impl Sink for Collect {
    fn send(&mut self, out: Out) -> Result<(), Gone> {
        if let Out::Failed(m) = out {
            panic!("request failed: {m}");
        }
        Ok(())
    }

    fn is_closed(&self) -> bool {
        false
    }

    fn ended(&mut self, ended: Ended) {
        *self.0.borrow_mut() = Some(ended);
    }
}

/// Runs `requests` together through an engine on `model` with `config`; returns each one's
/// output ids and the engine's counters.
pub fn run(
    model: EngineModel<'_>,
    config: SchedulerConfig,
    requests: &[(Vec<u32>, GenerateOptions)],
) -> (Vec<Vec<u32>>, Arc<Counters>) {
    let counters = Arc::new(Counters::default());
    let mut e = Engine::new(model, config, CacheHook::default(), counters.clone());
    let sinks: Vec<Collect> = requests
        .iter()
        .map(|(p, o)| {
            let sink = Collect::default();
            e.submit(Request::new(p.clone(), o.clone(), sink.clone()));
            sink
        })
        .collect();
    e.run_until_idle();
    (sinks.iter().map(Collect::ids).collect(), counters)
}
