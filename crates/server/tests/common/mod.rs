//! Starting a server on a random localhost port around the built-in demo model (the real
//! Qwen tokenizer and Qwen3.6 template; tiny random weights, so a token costs milliseconds).

#![allow(dead_code)]

pub mod http;

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use qinfer_engine::generate::ModelBundle;
use qinfer_server::{Server, ServerConfig, ServerHandle};

pub const MODEL: &str = "qinfer-demo";

pub fn bundle() -> Arc<ModelBundle> {
    static B: OnceLock<Arc<ModelBundle>> = OnceLock::new();
    B.get_or_init(|| Arc::new(ModelBundle::demo().expect("demo bundle")))
        .clone()
}

/// The demo bundle on the GPU backend (the best adapter: lavapipe in CI); `None`, saying so
/// on stderr, where no adapter can be made at all.
pub fn gpu_bundle() -> Option<Arc<ModelBundle>> {
    static B: OnceLock<Option<Arc<ModelBundle>>> = OnceLock::new();
    B.get_or_init(|| match qinfer_gpu::Gpu::open(qinfer_gpu::Pick::Best) {
        Ok(g) => {
            let mut b = ModelBundle::demo().expect("demo bundle");
            b.model = b
                .model
                .clone()
                .with_backend(Arc::new(g))
                .expect("the demo model on the GPU");
            Some(Arc::new(b))
        }
        Err(e) => {
            let mut err = std::io::stderr().lock();
            let _ = std::io::Write::write_all(
                &mut err,
                format!("SKIPPED: GPU server tests: {e}\n").as_bytes(),
            );
            None
        }
    })
    .clone()
}

/// A server running on its own runtime; stopped when dropped.
pub struct TestServer {
    pub addr: SocketAddr,
    handle: Option<ServerHandle>,
    runtime: tokio::runtime::Runtime,
}

impl TestServer {
    pub fn start(configure: impl FnOnce(&mut ServerConfig)) -> Self {
        Self::start_with(bundle(), configure)
    }

    /// A server around `bundle` (e.g. [`gpu_bundle`]).
    pub fn start_with(bundle: Arc<ModelBundle>, configure: impl FnOnce(&mut ServerConfig)) -> Self {
        let mut config = ServerConfig::for_bundle(&bundle, MODEL);
        configure(&mut config);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let (addr, handle) = runtime
            .block_on(Server::new(bundle, config).spawn("127.0.0.1:0".parse().unwrap()))
            .expect("bind");
        TestServer {
            addr,
            handle: Some(handle),
            runtime,
        }
    }

    pub fn shutdown(mut self) {
        if let Some(h) = self.handle.take() {
            self.runtime.block_on(h.shutdown()).unwrap();
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(h) = self.handle.take() {
            let _ = self.runtime.block_on(h.shutdown());
        }
    }
}
