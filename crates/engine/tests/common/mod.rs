//! Helpers shared by the engine's speculative-decoding tests.

#![allow(dead_code)]

use std::cell::RefCell;
use std::rc::Rc;

use qinfer_engine::engine::{Ended, Gone, Out, Sink};

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
