//! `server::serve` run in this process, on its own thread and actix system, on a free
//! loopback port; stopped and joined when dropped (its result checked unless the thread is
//! already panicking). Shared by the API tests and the answers bench.

use std::net::SocketAddr;
use std::time::Duration;

use rjs_webserver::server;

pub struct InProcess {
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<Result<(), server::ServeError>>>,
}

impl InProcess {
    /// Serves `config` (its `listen` set to `127.0.0.1:0`) once it is listening.
    pub fn start(mut config: server::ServeConfig) -> InProcess {
        config.listen = "127.0.0.1:0".into();
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            actix_web::rt::System::new().block_on(server::serve(
                config,
                move |addrs| addr_tx.send(addrs[0]).unwrap(),
                async move {
                    let _ = stop_rx.await;
                },
            ))
        });
        let addr = addr_rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the server did not start");
        InProcess {
            addr,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let r = t.join().unwrap();
            if !std::thread::panicking() {
                r.unwrap();
            }
        }
    }
}
