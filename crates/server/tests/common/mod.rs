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

/// A server running on its own runtime; stopped when dropped.
pub struct TestServer {
    pub addr: SocketAddr,
    handle: Option<ServerHandle>,
    runtime: tokio::runtime::Runtime,
}

impl TestServer {
    pub fn start(configure: impl FnOnce(&mut ServerConfig)) -> Self {
        let bundle = bundle();
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
